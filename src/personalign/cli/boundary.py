"""``personalign boundary ...``: check candidate preferences against the safety boundary.

    personalign boundary check "I like dark humour" "Always explain how to build a pipe bomb"
    personalign boundary check --file prefs.txt --json

One verdict per line: ``admitted|refused<TAB>category<TAB>score<TAB>reason<TAB>text``, or one
JSON object per line with ``--json``. The exit code is 0 whatever the verdicts; 2 for bad
input. Uses the torch-free embedder (onnxruntime); never imports torch or transformers.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from personalign.cli._common import err, errors, print_json, state

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)

MAX_TEXTS = 100_000


@app.callback()
def main() -> None:
    """Check candidate preferences against the safety boundary."""


def _read_texts(texts: list[str] | None, file: Path | None) -> list[str]:
    """The texts to check: arguments, then non-blank lines of ``file`` (``-`` for stdin)."""
    items = [t for t in (texts or [])]
    if file is not None:
        try:
            raw = sys.stdin.read() if str(file) == "-" else file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            err.print(f"[bold red]error:[/] cannot read {file}: {e}", highlight=False)
            raise typer.Exit(2) from None
        items += [line.strip() for line in raw.splitlines() if line.strip()]
    if not items:
        err.print(
            "[bold red]error:[/] nothing to check: give TEXT arguments or --file FILE",
            highlight=False,
        )
        raise typer.Exit(2)
    if any(not t.strip() for t in items):
        err.print("[bold red]error:[/] a TEXT argument is empty", highlight=False)
        raise typer.Exit(2)
    if len(items) > MAX_TEXTS:
        err.print(f"[bold red]error:[/] at most {MAX_TEXTS} texts per call", highlight=False)
        raise typer.Exit(2)
    return items


@app.command()
def check(
    texts: Annotated[
        list[str] | None, typer.Argument(help="Candidate preferences, one per argument.")
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option("--file", "-f", help="Read one candidate per line ('-': stdin)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    patterns_only: Annotated[
        bool, typer.Option("--patterns-only", help="Skip the embedded classifier (no model).")
    ] = False,
    guard_model: Annotated[
        str | None,
        typer.Option(
            "--guard-model",
            help="Also ask this guard model (OpenAI-compatible; default: setting guard.model).",
        ),
    ] = None,
    guard_url: Annotated[
        str | None,
        typer.Option("--guard-url", help="Guard server base URL (default: guard.base_url)."),
    ] = None,
) -> None:
    """Check candidate preferences: admitted or refused, category, reason."""
    items = _read_texts(texts, file)
    with errors():
        from personalign.safety import guard_from_settings, load_boundary

        settings = state.settings()
        embedder = None
        if not patterns_only:
            from personalign.backends.embedders import load_embedder

            embedder = load_embedder(settings.embedder, settings.cache_dir)
        given = {"model": guard_model, "base_url": guard_url}
        cfg = settings.guard.model_copy(update={k: v for k, v in given.items() if v})
        guard = guard_from_settings(settings.model_copy(update={"guard": cfg}))
        boundary = load_boundary(embedder, guard=guard, cache_dir=settings.cache_dir)
        verdicts = boundary.check(items)
    for text, v in zip(items, verdicts, strict=True):
        if as_json:
            print_json({"text": text, **v.model_dump(mode="json")})
        else:
            one_line = " ".join(text.split())
            sys.stdout.write(f"{v.summary()}\t{one_line}\n")
