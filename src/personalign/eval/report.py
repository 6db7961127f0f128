"""Run suites and write a Markdown report with PNG plots into a results folder."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from personalign.errors import ConfigError
from personalign.eval.suites import load_suite

Figures = dict[str, float]


def _bar_plot(title: str, figures: Mapping[str, float], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.4 * len(figures) + 1.2))
    names = list(figures)
    ax.barh(names, [figures[n] for n in names], color="#4C72B0")
    ax.invert_yaxis()
    ax.set_title(title)
    for i, n in enumerate(names):
        ax.text(figures[n], i, f" {figures[n]:.3g}", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def default_plots(suite: str, figures: Mapping[str, float], out_dir: Path) -> list[Path]:
    """Latencies (``*_ms``) in one chart, rates in [0, 1] in another."""
    numeric = {k: float(v) for k, v in figures.items() if isinstance(v, int | float)}
    groups = {
        "latency_ms": {k: v for k, v in numeric.items() if k.endswith("_ms")},
        "rates": {k: v for k, v in numeric.items() if 0.0 <= v <= 1.0 and not k.endswith("_ms")},
    }
    return [
        _bar_plot(f"{suite}: {g}", vals, out_dir / f"{suite}_{g}.png")
        for g, vals in groups.items()
        if vals
    ]


def run_suites(
    names: Sequence[str], *, data_dir: Path | None, out_dir: Path, quick: bool = False
) -> Path:
    """Run each suite, write ``report.md``, ``figures.json`` and PNGs; return the report path.

    ``data_dir``: the evaluation data folder; ``None`` runs only suites whose module sets
    ``NEEDS_DATA = False`` (their data ships with the package). A suite that needs the
    folder when it is missing is a :class:`ConfigError`, raised before anything runs."""
    modules = {n: load_suite(n) for n in names}  # fail on a bad name before running anything
    for name, mod in modules.items():
        if getattr(mod, "NEEDS_DATA", True) and (data_dir is None or not data_dir.is_dir()):
            where = f"{data_dir} is not a folder" if data_dir else "no data folder is set"
            raise ConfigError(
                f"suite {name!r} needs the evaluation data ({where}): pass --data DIR or set "
                "PERSONALIGN_EVAL_DATA (the 'eval_data' setting)"
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    sections = []
    all_figures: dict[str, Figures] = {}
    for name, mod in modules.items():
        t0 = time.perf_counter()
        extra = ""
        if hasattr(mod, "run_report"):
            figures, extra, images = mod.run_report(data_dir, quick=quick, out_dir=out_dir)
        else:
            figures = mod.run(data_dir, quick=quick)
            plot = getattr(mod, "plot", None)
            images = plot(figures, out_dir) if plot else default_plots(name, figures, out_dir)
        seconds = time.perf_counter() - t0
        all_figures[name] = figures
        rows = "\n".join(
            f"| `{k}` | {v:.4g} |" if isinstance(v, float) else f"| `{k}` | {v} |"
            for k, v in figures.items()
        )
        pics = "\n".join(f"![{p.stem}]({p.name})" for p in images)
        doc = (mod.__doc__ or "").strip().splitlines()
        sections.append(
            f"## {name}\n\n{doc[0] if doc else ''}\n\n"
            f"| figure | value |\n|---|---|\n{rows}\n\n{pics}\n\n{extra}\n_{seconds:.1f} s_\n"
        )
    (out_dir / "figures.json").write_text(json.dumps(all_figures, indent=2) + "\n")
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    header = (
        f"# personalign evaluation report\n\n{stamp}; data: `{data_dir or 'packaged only'}`; "
        f"{'quick' if quick else 'full'} run.\n\n"
    )
    report = out_dir / "report.md"
    report.write_text(header + "\n".join(sections))
    return report
