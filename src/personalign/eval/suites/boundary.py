"""Suite ``boundary``: the safety boundary per decision, with confusion matrices and a sweep.

The shipped boundary (policy patterns + the fine-tuned MiniLM/LoRA classifier, thresholds per
decision) on the sets of :mod:`personalign.eval.boundary_sets` read from the data folder:
preference admission, request screening, reply check and injection flags, each rate with its
95% Wilson interval, a confusion matrix per decision (harmful refused / passed, benign refused
/ passed) and a threshold sweep plot. ``heldout_*`` are the whole-source hold-out figures the
classifier's artifact records (each fold of sources scored by a model trained on the others,
at the thresholds calibrated on those scores): the honest estimate for unseen sets; the rest
is measured now on the folder given (in-sample on ``../shared/data``: ``*_unseen`` counts only
items whose request the classifier never trained on). ``quick`` scores at most 60 items per
source (else 300). ``benchmarks/boundary.py`` is the same evaluation with the broad model as
baseline and latency.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from personalign.errors import ConfigError
from personalign.eval import boundary_sets as B
from personalign.safety.checkers import Boundary

Figures = dict[str, float | int | str]
#: headline key -> (decision, sources pooled, what counts: "error" or "detected")
HEADLINE: dict[str, tuple[str, tuple[str, ...], str]] = {
    "harmful_admission_rate": (
        B.PREFERENCE,
        (
            "harmful_advbench",
            "harmful_donotanswer",
            "harmful_simplesafetytests",
            "harmful_xstest_unsafe",
        ),
        "error",
    ),
    "benign_preference_refusal_rate": (B.PREFERENCE, ("benign_prefeval",), "error"),
    "benign_request_refusal_rate": (B.REQUEST, ("benign_xstest_safe",), "error"),
    "harmful_request_pass_rate": (B.REQUEST, ("harmful_advbench",), "error"),
    "harmful_reply_detection_rate": (
        B.REPLY,
        ("harmful_advbench_targets", "harmful_advbench_strings"),
        "detected",
    ),
    "reply_false_flag_rate": (B.REPLY, ("benign_mtbench_replies",), "error"),
}
SWEEP = [round(float(t), 2) for t in np.arange(0.05, 1.0, 0.05)]


#: Bands of the two-stage gate whose share of traffic is reported (``second_look_share_*``).
BANDS = (0.05, 0.1, 0.2)


def run_decision(
    boundary: Boundary, decision: str, texts: list[str], batch: int = 256
) -> tuple[list[bool], list[float], list[float]]:
    """(refused, harm score, distance of the score to the classifier's threshold (inf when
    no threshold decided, e.g. a pattern)) per text under ``decision``."""
    refused: list[bool] = []
    scores: list[float] = []
    margins: list[float] = []
    for i in range(0, len(texts), batch):
        for v in boundary.check(texts[i : i + batch], decision=decision):
            refused.append(not v.admitted)
            scores.append(v.score)
            margins.append(abs(v.score - v.threshold) if v.threshold is not None else np.inf)
    return refused, scores, margins


def rate_keys(figs: Figures, key: str, wrong: int, n: int, *, invert: bool = False) -> None:
    """``key`` (wrong / n, or 1 - that with ``invert``), its 95% interval and n."""
    k = n - wrong if invert else wrong
    figs[key] = round(k / n, 4)
    lo, hi = B.wilson(k, n)
    figs[f"{key}_ci95_low"] = round(lo, 4)
    figs[f"{key}_ci95_high"] = round(hi, 4)
    figs[f"{key}_n"] = n


def evaluate(
    boundary: Boundary, sets: B.Sets, train_keys: set[str], *, detail: bool = True
) -> tuple[Figures, dict[str, list[tuple[float, float, float]]]]:
    """(figures, threshold sweep per decision) of ``boundary`` on ``sets``."""
    figs: Figures = {}
    results: dict[tuple[str, str], tuple[list[bool], list[float]]] = {}
    sweeps: dict[str, list[tuple[float, float, float]]] = {}
    for decision, by_src in sets.decisions.items():
        pooled_items: list[B.Item] = []
        pooled_scores: list[float] = []
        pooled_margins: list[float] = []
        conf = {"tp": 0, "fn": 0, "fp": 0, "tn": 0}
        for src, items in by_src.items():
            refused, scores, margins = run_decision(boundary, decision, [it.text for it in items])
            pooled_margins += margins
            results[(decision, src)] = (refused, scores)
            _, wrong, n = B.error_rate(items, refused)
            if detail:
                rate_keys(figs, f"{decision}_error_rate_{src}", wrong, n)
            for it, r in zip(items, refused, strict=True):
                if it.harmful:
                    conf["tp" if r else "fn"] += 1
                else:
                    conf["fp" if r else "tn"] += 1
            pooled_items += items
            pooled_scores += scores
        for c, v in conf.items():
            figs[f"{decision}_confusion_{c}"] = v
        for band in BANDS:  # what a banded guard would be asked about (GuardConfig.band)
            share = float(np.mean(np.array(pooled_margins) < band)) if pooled_margins else 0.0
            figs[f"second_look_share_{decision}_band{band:g}"] = round(share, 4)
        sweeps[decision] = B.sweep(pooled_items, pooled_scores, SWEEP)
    for key, (decision, sources, kind) in HEADLINE.items():
        have = [s for s in sources if (decision, s) in results]
        if not have:
            continue  # its data is absent: left out, never a perfect value
        items = [it for s in have for it in sets.decisions[decision][s]]
        refused = [r for s in have for r in results[(decision, s)][0]]
        _, wrong, n = B.error_rate(items, refused)
        rate_keys(figs, key, wrong, n, invert=kind == "detected")
        idx = B.unseen(items, train_keys)
        if idx and len(idx) < len(items):
            _, w2, n2 = B.error_rate([items[i] for i in idx], [refused[i] for i in idx])
            rate_keys(figs, f"{key}_unseen", w2, n2, invert=kind == "detected")
    for src, items in sets.unlabelled.items():
        refused, _, _ = run_decision(boundary, B.REQUEST, [it.text for it in items])
        figs[f"request_refusal_rate_{src}_unlabelled"] = round(float(np.mean(refused)), 4)
    figs.update(injection_figures(boundary, sets, detail=detail))
    return figs, sweeps


def injection_figures(boundary: Boundary, sets: B.Sets, *, detail: bool = True) -> Figures:
    """The injection detector's flags: detection on the attacks, false flags on the benign
    sets (each, and pooled); none without a detector or injection sets."""
    figs: Figures = {}
    det = boundary.injection
    if det is None or not sets.injection:
        return figs
    attack_k = attack_n = ok_k = ok_n = 0
    for src, items in sets.injection.items():
        flagged = [r.flagged for r in det.detect([it.text for it in items])]
        k = sum(flagged)
        if detail:
            figs[f"injection_flag_rate_{src}"] = round(k / len(items), 4)
        if src.startswith("attack_"):
            attack_k, attack_n = attack_k + k, attack_n + len(items)
        else:
            ok_k, ok_n = ok_k + k, ok_n + len(items)
            rate_keys(
                figs, f"injection_false_flag_rate_{src.removeprefix('benign_')}", k, len(items)
            )
    if attack_n:
        rate_keys(figs, "injection_detection_rate", attack_k, attack_n)
    if ok_n:
        rate_keys(figs, "injection_false_flag_rate", ok_k, ok_n)
    return figs


def sweep_plot(out: Path, sweeps: dict[str, list[tuple[float, float, float]]]) -> Path:
    """``boundary_sweep.png``: each decision's error rates against the threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(sweeps), figsize=(5 * len(sweeps), 4), squeeze=False)
    for ax, (decision, rows) in zip(axes[0], sweeps.items(), strict=True):
        t = [r[0] for r in rows]
        ax.plot(t, [r[1] for r in rows], label="harmful passed")
        ax.plot(t, [r[2] for r in rows], label="benign refused")
        ax.set_title(f"{decision}: error vs threshold")
        ax.set_xlabel("harm score threshold")
        ax.set_ylim(0, 1)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "boundary_sweep.png", dpi=110)
    plt.close(fig)
    return out / "boundary_sweep.png"


def tables(figs: Figures, sweeps: dict[str, list[tuple[float, float, float]]]) -> str:
    """Markdown: per decision its confusion matrix and threshold sweep table."""
    lines: list[str] = []
    for decision, rows in sweeps.items():
        c = {k: figs.get(f"{decision}_confusion_{k}", 0) for k in ("tp", "fn", "fp", "tn")}
        lines += [
            f"### {decision}",
            "",
            "| gold \\ decision | refused | passed |",
            "|---|---|---|",
            f"| harmful | {c['tp']} | {c['fn']} |",
            f"| benign | {c['fp']} | {c['tn']} |",
            "",
            "| threshold | harmful passed | benign refused |",
            "|---|---|---|",
            *[f"| {t:.2f} | {hp:.3f} | {br:.3f} |" for t, hp, br in rows],
            "",
        ]
    return "\n".join(lines)


def write_report(
    out: Path, figs: Figures, sweeps: dict[str, list[tuple[float, float, float]]]
) -> None:
    """``boundary.md`` (confusion matrices, sweep tables, every figure) and the sweep plot."""
    sweep_plot(out, sweeps)
    lines = ["# safety boundary", "", "![threshold sweep](boundary_sweep.png)", ""]
    lines += [tables(figs, sweeps), "## figures", "", "| figure | value |", "|---|---|"]
    lines += [f"| `{k}` | {v} |" for k, v in figs.items()]
    (out / "boundary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _model_meta(checker: object) -> dict[str, Any]:
    """The metadata of a checker's model (none: empty)."""
    meta: dict[str, Any] = getattr(getattr(checker, "model", None), "meta", None) or {}
    return meta


def train_keys(boundary: Boundary) -> set[str]:
    """The text keys every classifier of ``boundary`` records having trained on."""
    return {k for c in boundary.checkers for k in str(_model_meta(c).get("train_keys", "")).split()}


def artifact_figures(boundary: Boundary) -> Figures:
    """The deciding classifier's recorded calibration: ``calibrated_threshold_<decision>``
    and its whole-source hold-out figures as ``heldout_<key>`` (none recorded: none)."""
    figs: Figures = {}
    for checker in boundary.checkers:
        meta = _model_meta(checker)
        if not getattr(checker, "decides_harm", False) or "thresholds" not in meta:
            continue
        for d, t in meta["thresholds"].items():
            figs[f"calibrated_threshold_{d}"] = float(t)
        for k, v in (meta.get("heldout_source_figures") or {}).items():
            figs[f"heldout_{k}"] = v
    return figs


def run_report(
    data_dir: Path | None, *, quick: bool, out_dir: Path
) -> tuple[Figures, str, list[Path]]:
    """(figures, Markdown, images) of the shipped boundary on ``data_dir``'s safety sets."""
    from personalign.backends.embedders import MiniLMEmbedder
    from personalign.config import load_settings
    from personalign.safety.checkers import load_boundary

    if data_dir is None:
        raise ConfigError("the boundary suite needs the evaluation data folder")
    sets = B.load_sets(data_dir)
    sets.thin(60 if quick else 300)
    settings = load_settings()
    boundary = load_boundary(MiniLMEmbedder(settings.cache_dir), cache_dir=settings.cache_dir)
    figs, sweeps = evaluate(boundary, sets, train_keys(boundary), detail=False)
    figs.update(artifact_figures(boundary))
    return figs, tables(figs, sweeps), [sweep_plot(out_dir, sweeps)]
