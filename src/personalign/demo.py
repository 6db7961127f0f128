"""The main job (``make demo``): one scripted user, several sessions, a changed preference,
and questions where the preferences matter. For each question it prints the plain and the
personalized answer side by side, with the verdict of each constraint's verifier on both
(the constraints compiled from what the user said: a length limit, bullet points, a closing
phrase, foods to avoid) and the preferences used, then the memory as the user sees it. Runs
offline on embedded defaults (SmolLM2-135M-Instruct, all-MiniLM-L6-v2, SQLite).

    python -m personalign.demo [--home DIR] [--max-tokens N]

It prints the demo and nothing else: one progress bar while the models load (the first run
also converts the embedded model and exports MiniLM to ONNX, into the model cache), and no
library warnings or log lines (:func:`quiet_libraries`).
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from personalign.constraints import Constraint, describe, from_meta, verify
from personalign.types import Message

if TYPE_CHECKING:
    from personalign.config import Settings
    from personalign.pipeline import Personalizer

USER = "sam"

# Each session: what the user said, in order. Preferences sit among unrelated turns.
SESSIONS: list[list[str]] = [
    [
        "Hi! Can you explain what a hash map is?",
        "By the way, I'm vegetarian: I don't eat meat or fish.",
        "What's the capital of Australia?",
        "How do I convert Celsius to Fahrenheit?",
    ],
    [
        "Write a haiku about autumn leaves.",
        "I prefer short answers: please keep your replies under 60 words.",
        "What is the difference between TCP and UDP?",
        "Summarize the plot of Hamlet in two sentences.",
    ],
    [
        "What causes the seasons on Earth?",
        "I love hiking in the mountains, I'd rather be outdoors than in a museum.",
        'From now on, please always end your answers with "Happy trails!"',
        "How many bones are in the human body?",
        "Give me a synonym for 'happy'.",
    ],
    [
        "Can you recommend a good book about history?",
        "Actually, I'm not vegetarian anymore: I started eating fish again, "
        "so I'm pescatarian now.",
        "What's a good way to learn touch typing?",
        "Lists are easier for me to read, so I like my answers as 3 bullet points.",
    ],
]

QUESTIONS = [
    "Can you suggest a dinner recipe for tonight?",
    "What should I do this weekend in Switzerland?",
    "How does a rainbow form?",
]


def _session_messages(texts: list[str], session: int) -> list[Message]:
    return [Message(role="user", content=t, id=f"s{session}:t{i}") for i, t in enumerate(texts)]


def _constraints(report: list[dict[str, object]]) -> list[Constraint]:
    return [Constraint.model_validate({"kind": c["kind"], "value": c["value"]}) for c in report]


def _verdict(passed: bool, asks: str, detail: str) -> str:
    mark = "[green]pass[/]" if passed else "[red]fail[/]"
    return f"{mark} {asks}" + (f" [dim]({detail})[/]" if detail and not passed else "")


LIBRARIES = (
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "huggingface_hub",
    "onnxruntime",
    "onnx",
    "tokenizers",
    "filelock",
)


def quiet_libraries() -> None:
    """Before torch is imported: offline, idle OpenMP threads sleep instead of spinning
    (spinning took the CPU from the other threads on a 2-core machine), and no warnings or
    log records below ERROR from the model libraries."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    pattern = "|".join(LIBRARIES)
    warnings.filterwarnings("ignore", module=rf"({pattern})(\.|$)")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for name in LIBRARIES:
        logging.getLogger(name).setLevel(logging.ERROR)


def open_with_progress(settings: Settings, console: Console) -> Personalizer:
    """The personalizer with every model it uses loaded, behind one transient progress bar:
    the language model (converted from the embedded GGUF on the first run), the embedder
    (exported to ONNX on the first run) and the safety boundary's classifiers."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from personalign.backends.models import EMBEDDED_MODEL, load_model
    from personalign.backends.models.embedded import ensure_embedded_model
    from personalign.pipeline import Personalizer

    bar = Progress(
        TextColumn("[bold]loading models[/] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,  # a log file gets the demo alone
    )
    with bar:
        task = bar.add_task("", total=3)
        bar.update(task, description="language model")
        if settings.model == EMBEDDED_MODEL:  # converted once into the cache, quietly
            ensure_embedded_model(settings.cache_dir, quiet=True)
        model = load_model(settings)
        bar.update(task, advance=1, description="embedder")
        p = Personalizer.open(settings, model=model)
        embedder = getattr(p.memory.store, "embedder", None)
        if embedder is not None:
            embedder.embed(["warm up"])
        bar.update(task, advance=1, description="safety boundary")
        if p.checker is not None:
            p.checker.check(["warm up"])
        bar.update(task, advance=1)
    return p


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--home", type=Path, default=None, help="data folder (default: temporary)")
    ap.add_argument("--max-tokens", type=int, default=120)
    args = ap.parse_args(argv)

    quiet_libraries()
    from personalign.backends.models.base import GenerationOptions
    from personalign.config import load_settings
    from personalign.pipeline import PersonalizeOptions

    console = Console()
    home = args.home or Path(tempfile.mkdtemp(prefix="personalign-demo-"))
    settings = load_settings(home=home)
    console.rule("[bold]personalign demo")
    console.print(f"data folder: {home}   model cache: {settings.cache_dir}")
    t_start = time.perf_counter()
    p = open_with_progress(settings, console)
    try:
        for i, texts in enumerate(SESSIONS, start=1):
            result = p.memory.add_messages(_session_messages(texts, i), user=USER)
            console.print(
                Panel(
                    "\n".join(f"[dim]{USER}>[/] {t}" for t in texts),
                    title=f"session {i}",
                    title_align="left",
                )
            )
            for d in result.decisions:
                console.print(
                    f"  [green]{d.action}[/] {d.candidate.text!r}  [dim]({d.reason})[/]",
                    highlight=False,
                )
        gen = GenerationOptions(max_new_tokens=args.max_tokens)
        for q in QUESTIONS:
            plain = p.respond(
                q,
                user=USER,
                options=PersonalizeOptions(method="plain", ingest=False, generation=gen),
            )
            personal = p.respond(
                q,
                user=USER,
                options=PersonalizeOptions(ingest=False, generation=gen),  # default method
            )
            table = Table(title=f"{USER}> {q}", title_justify="left", expand=True)
            table.add_column("plain", ratio=1, overflow="fold")
            how = personal.exchange.method
            table.add_column(f"personalized ({how})", ratio=1, overflow="fold")
            table.add_row(plain.text.strip(), personal.text.strip())
            report = personal.exchange.meta.get("constraints", [])
            checks = {c.constraint.kind: c for c in verify(plain.text, _constraints(report))}
            for c in report:
                before = checks[c["kind"]]
                table.add_row(
                    _verdict(before.passed, c["asks"], before.detail),
                    _verdict(c["passed"], c["asks"], c.get("detail", ""))
                    + ("" if c["passed_as_generated"] else " [dim](repaired)[/]"),
                )
            console.print(table)
            used = personal.preferences
            console.print(
                "  preferences used: "
                + ("; ".join(f"{u.text!r} ({u.score:.3f})" for u in used) if used else "none"),
                highlight=False,
            )
        console.rule(f"memory of {USER}, as the user sees it")
        prefs = p.memory.list(user=USER, include_history=True, kinds=["explicit", "implicit"])
        table = Table(expand=True)
        table.add_column("status", no_wrap=True)
        table.add_column("preference", ratio=1, overflow="fold")
        table.add_column("topic", no_wrap=True)
        table.add_column("applied as", ratio=1, overflow="fold")
        table.add_column("id", style="dim", no_wrap=True)
        for r in sorted(prefs, key=lambda r: not r.active):
            status = "active" if r.active else "[dim]superseded[/]"
            applied = " ".join(describe(c) for c in from_meta(r.meta, text=r.text) or [])
            table.add_row(status, r.text, r.topic or "", applied, r.id[:8])
        console.print(table)
        n_turns = len(p.memory.list(user=USER, kinds=["episode"]))
        console.print(f"{n_turns} raw turns kept as episodic memory (searchable, not shown).")
    finally:
        p.close()
    console.print(f"done in {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
