"""``personalign train experts``: one LoRA expert per style pole, for soups.

The base model samples answers once; each pole (``conciseness+``, ``conciseness-``, ...) gets
best-vs-worst pairs by the measured dimension and a DPO-trained LoRA
(:mod:`personalign.training.experts`). Rerunning skips what is up to date and resumes what was
interrupted. The experts merge into per-user soups (:mod:`personalign.generation.soups`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from personalign.cli._common import errors, out, print_json, state

EXPERTS_DIR = "experts"
"""The default experts folder under the personalign home: ``<home>/experts``."""


@contextmanager
def _bars(enabled: bool) -> Iterator[Callable[[str, int, int], None] | None]:
    """Rich progress bars, one per stage (sampling, each expert's DPO steps); None when off."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TimeElapsedColumn

    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(file=sys.stderr),
    )
    tasks: dict[str, TaskID] = {}

    def report(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            label = "sampling batches" if stage == "sampling" else f"expert {stage} steps"
            tasks[stage] = bar.add_task(label, total=total)
        bar.update(tasks[stage], completed=done, total=total)

    with bar:
        yield report


def experts(
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", help="Experts folder (default: <home>/experts)."),
    ] = None,
    dimensions: Annotated[
        list[str] | None,
        typer.Option("--dimension", "--dimensions", "-d", help="Train these (default: all)."),
    ] = None,
    prompts: Annotated[
        int, typer.Option("--prompts", min=0, help="Use the first N prompts (0: all 64).")
    ] = 0,
    candidates: Annotated[int, typer.Option(min=2, help="Samples per prompt.")] = 6,
    min_pairs: Annotated[int, typer.Option(min=1, help="Pairs needed to train an expert.")] = 4,
    max_steps: Annotated[
        int, typer.Option(help="DPO steps per expert (-1: the recipe's epochs over its pairs).")
    ] = -1,
    gen_dtype: Annotated[
        str, typer.Option(help="Sampling dtype: bfloat16 (fast on CPU) or float32.")
    ] = "bfloat16",
    threads: Annotated[int, typer.Option(min=1, help="Torch threads.")] = 2,
    base_model: Annotated[
        str | None,
        typer.Option(help="smollm2 or a model folder (default: the configured model)."),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Train one LoRA expert per style pole (DPO on pairs ranked by the measured dimension),
    resumably, for per-user soups."""
    from personalign.rewards.dimensions import DIMENSION_NAMES
    from personalign.training.experts import ExpertsConfig, train_experts

    settings = state.settings()
    base = base_model or (settings.model if settings.model != "fake" else "smollm2")
    dims = [d.strip() for spec in dimensions or [] for d in spec.split(",") if d.strip()]
    dest = (out_dir or settings.home / EXPERTS_DIR).expanduser()
    with errors():
        cfg = ExpertsConfig(
            base_model=base,
            dimensions=tuple(dims) if dims else DIMENSION_NAMES,
            n_prompts=prompts,
            candidates=candidates,
            min_pairs=min_pairs,
            max_pairs=max(ExpertsConfig.max_pairs, min_pairs),
            gen_dtype=gen_dtype,
            max_steps=max_steps,
            threads=threads,
        )
        with _bars(progress and not json_out) as report:
            summary = train_experts(cfg, dest, cache_dir=settings.cache_dir, progress=report)
    if json_out:
        print_json(summary.to_dict())
        return
    table = Table(title=f"experts in {summary.out_dir}", title_justify="left")
    for col in ("expert", "status", "pairs", "steps", "loss first", "loss last", "acc", "s"):
        table.add_column(col, overflow="fold")
    for r in summary.experts:
        m = r.metrics

        def num(key: str, fmt: str = ".3f", m: dict[str, float] = m) -> str:
            return format(m[key], fmt) if key in m else ""

        table.add_row(
            r.pole,
            r.status if not r.message or r.status == "exists" else f"{r.status}: {r.message}",
            str(r.pairs),
            num("steps", ".0f"),
            num("loss_first"),
            num("loss_last"),
            num("reward_accuracy", ".2f"),
            f"{r.seconds:.0f}",
        )
    out.print(table)
    sampled = (
        f"sampled in {summary.sampling_seconds:.0f} s" if summary.sampled else "reused samples"
    )
    out.print(f"{summary.samples} samples of {summary.prompts} prompts ({sampled})")
