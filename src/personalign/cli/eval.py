"""``personalign eval SUITE...``: run benchmark suites, write a Markdown report with plots."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from personalign.cli._common import errors, out, state


def eval_command(
    suites: Annotated[list[str] | None, typer.Argument(help="Suite names (see --list).")] = None,
    data: Annotated[
        Path | None,
        typer.Option(help="Evaluation data folder (default: the eval_data setting)."),
    ] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Results folder (default results/<time>).")
    ] = None,
    quick: Annotated[bool, typer.Option(help="Smaller, faster runs.")] = False,
    list_suites: Annotated[bool, typer.Option("--list", help="List the suites.")] = False,
) -> None:
    """Run benchmark suites and write report.md, figures.json and PNG plots."""
    from personalign.eval.bench import eval_data_dir
    from personalign.eval.suites import SUITES

    if list_suites or not suites:
        for name in sorted(SUITES):
            out.print(name)
        return
    with errors():
        from personalign.eval.report import run_suites

        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        target = out_dir or Path("results") / stamp
        data_dir = eval_data_dir(data, state.settings().eval_data)
        report = run_suites(suites, data_dir=data_dir, out_dir=target, quick=quick)
    out.print(f"report: {report}")
