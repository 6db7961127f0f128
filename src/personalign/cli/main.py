"""Root of the ``personalign`` command. Heavy libraries load only inside the commands that
need them, so ``personalign --help`` and the memory commands never import torch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from personalign import __version__
from personalign.cli import (
    boundary,
    chat,
    experts,
    feedback,
    mcp,
    memory,
    memory_profile,
    prior,
    service,
)
from personalign.cli._common import state
from personalign.cli.eval import eval_command

app = typer.Typer(
    name="personalign",
    help="Make any LLM personal to each of its users, inside universal values.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
memory_profile.register(memory.app)
app.add_typer(memory.app, name="memory", help="Store, search, supersede and erase preferences.")
app.command("eval")(eval_command)
app.command()(chat.chat)
app.command()(chat.ask)
app.command()(chat.logs)
app.command()(service.serve)
app.add_typer(service.keys_app, name="keys")
app.command("mcp")(mcp.mcp_command)
app.add_typer(
    boundary.app, name="boundary", help="Check texts against the universal-values boundary."
)
app.add_typer(feedback.app, name="feedback", help="Rate, compare, edit or critique answers.")
feedback.profile_app.command("prior")(prior.prior)
app.add_typer(feedback.profile_app, name="profile", help="See or set your dimension weights.")
app.command()(feedback.calibrate)
feedback.train_app.command("experts")(experts.experts)
app.add_typer(
    feedback.train_app, name="train", help="Train per-user adapters and style experts with DPO."
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"personalign {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    home: Annotated[
        Path | None,
        typer.Option(
            "--home",
            help="Data directory (default: $PERSONALIGN_HOME or ~/.local/share/personalign).",
        ),
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", help="TOML config file.")] = None,
    embedder: Annotated[
        str | None,
        typer.Option("--embedder", help="'minilm' (default), 'hashing', or a model directory."),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show version.")
    ] = False,
) -> None:
    """Global options."""
    state.home, state.config, state.embedder = home, config, embedder
    state._settings = None


def main() -> None:
    app()


if __name__ == "__main__":
    main()
