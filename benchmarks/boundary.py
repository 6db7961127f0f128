"""Safety boundary: preference admission, request screening, reply check and injection flags.

Per decision and per source (:mod:`personalign.eval.boundary_sets` says which sets), each rate
with its 95% Wilson interval (``*_ci95_low``/``*_ci95_high``), a confusion matrix per decision
(``<decision>_confusion_{tp,fn,fp,tn}``: harmful refused, harmful passed, benign refused,
benign passed) and a threshold sweep (``--report DIR`` writes ``boundary.md`` and
``boundary_sweep.png`` there). Headline keys (the last line with ``--json``):
``harmful_admission_rate``, ``benign_preference_refusal_rate`` (PrefEval),
``benign_request_refusal_rate`` (XSTest safe prompts), ``harmful_request_pass_rate`` (AdvBench
goals as requests), ``harmful_reply_detection_rate`` (AdvBench harmful strings and targets),
``reply_false_flag_rate`` (MT-Bench-101 replies), ``injection_detection_rate``,
``injection_false_flag_rate`` (benign emails and PrefEval preferences), ``admission_p95_ms``.

The data contract: a figure whose data file is absent under ``--data`` is left out of the JSON
(never given a perfect value); a present but empty or unreadable file is an error (exit 2), and
so is a folder that holds none of the files.

In-sample vs held-out: on ``../shared/data`` the shipped boundary trained on nearly every
request (the preference figures use EVAL templates, wordings it never saw, on requests it did
see). ``*_unseen`` counts only items whose request is not among the artifact's training keys
(on a folder of sets never seen: every item; left out when none). ``loso_*`` are the
whole-source hold-out figures recorded at training time (each source scored by a model
trained without it, thresholds as calibrated on those scores): the honest estimate on the
shared data.

The shipped boundary (headline keys): the policy patterns plus the fine-tuned MiniLM/LoRA
classifier deciding harm at the policy's thresholds per decision (``threshold``,
``request_threshold``, ``reply_threshold``), injection scored by it and the int8 numpy model.
Compared in the same run (``broad_*``, ``--no-baseline`` skips it): the same boundary with the
broad embedded harm model deciding (``load_boundary(..., broad=True)``: trained on every
source, thresholds calibrated on whole-source hold-out scores). Latency: one text per
``check``, ``--threads`` onnxruntime threads per model, on whatever else the machine runs
(``load_average_1min`` beside it).

    python benchmarks/boundary.py [--data ../shared/data] [--json] [--report DIR]
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from personalign.backends.embedders import MiniLMEmbedder
from personalign.config import GuardConfig, load_settings
from personalign.errors import ConfigError
from personalign.eval import boundary_sets as B
from personalign.eval.bench import emit, parser, percentile
from personalign.safety.checkers import DEFAULT_ARTIFACT, DEFAULT_FINETUNED, Boundary, load_boundary
from personalign.safety.classifier import load_artifact
from personalign.safety.guard import guard_from_settings

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
SWEEP = np.round(np.arange(0.05, 1.0, 0.05), 2)


def run_decision(
    boundary: Boundary, decision: str, texts: list[str], batch: int = 256
) -> tuple[list[bool], list[float]]:
    """(refused, harm score) per text under ``decision``."""
    refused: list[bool] = []
    scores: list[float] = []
    for i in range(0, len(texts), batch):
        for v in boundary.check(texts[i : i + batch], decision=decision):
            refused.append(not v.admitted)
            scores.append(v.score)
    return refused, scores


def _rate_keys(figs: Figures, key: str, wrong: int, n: int, *, invert: bool = False) -> None:
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
        conf = {"tp": 0, "fn": 0, "fp": 0, "tn": 0}
        for src, items in by_src.items():
            refused, scores = run_decision(boundary, decision, [it.text for it in items])
            results[(decision, src)] = (refused, scores)
            _, wrong, n = B.error_rate(items, refused)
            if detail:
                _rate_keys(figs, f"{decision}_error_rate_{src}", wrong, n)
            for it, r in zip(items, refused, strict=True):
                if it.harmful:
                    conf["tp" if r else "fn"] += 1
                else:
                    conf["fp" if r else "tn"] += 1
            pooled_items += items
            pooled_scores += scores
        for c, v in conf.items():
            figs[f"{decision}_confusion_{c}"] = v
        sweeps[decision] = B.sweep(pooled_items, pooled_scores, SWEEP)
    for key, (decision, sources, kind) in HEADLINE.items():
        have = [s for s in sources if (decision, s) in results]
        if not have:
            continue  # its data is absent: left out, never a perfect value
        items = [it for s in have for it in sets.decisions[decision][s]]
        refused = [r for s in have for r in results[(decision, s)][0]]
        _, wrong, n = B.error_rate(items, refused)
        _rate_keys(figs, key, wrong, n, invert=kind == "detected")
        idx = B.unseen(items, train_keys)
        if idx and len(idx) < len(items):
            _, w2, n2 = B.error_rate([items[i] for i in idx], [refused[i] for i in idx])
            _rate_keys(figs, f"{key}_unseen", w2, n2, invert=kind == "detected")
    for src, items in sets.unlabelled.items():
        refused, _ = run_decision(boundary, B.REQUEST, [it.text for it in items])
        figs[f"request_refusal_rate_{src}_unlabelled"] = round(float(np.mean(refused)), 4)
    # injection --------------------------------------------------------------------------
    det = boundary.injection
    if det is not None and sets.injection:
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
                _rate_keys(
                    figs, f"injection_false_flag_rate_{src.removeprefix('benign_')}", k, len(items)
                )
        if attack_n:
            _rate_keys(figs, "injection_detection_rate", attack_k, attack_n)
        if ok_n:
            _rate_keys(figs, "injection_false_flag_rate", ok_k, ok_n)
    return figs, sweeps


def latency(boundaries: Sequence[Boundary], pool: list[str]) -> list[list[float]]:
    """Wall times (ms) of ``b.check([text])`` per boundary, taking turns on each text."""
    for b in boundaries:
        b.check(pool[:5])
    times: list[list[float]] = [[] for _ in boundaries]
    for text in pool:
        for b, out in zip(boundaries, times, strict=True):
            t = time.perf_counter()
            b.check([text])
            out.append((time.perf_counter() - t) * 1000.0)
    return times


def latency_pool(sets: B.Sets, n: int) -> list[str]:
    """Candidate preferences, every source in turn, at most ``n``."""
    by_src = list(sets.decisions.get(B.PREFERENCE, {}).values())
    pool: list[str] = []
    i = 0
    while len(pool) < n and any(i < len(items) for items in by_src):
        pool += [items[i].text for items in by_src if i < len(items)]
        i += 7
    return pool[:n]


def write_report(
    out: Path, figs: Figures, sweeps: dict[str, list[tuple[float, float, float]]]
) -> None:
    """``boundary.md`` (confusion matrices, sweep tables, per-source rates) and the sweep plot."""
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
    lines = ["# safety boundary", "", "![threshold sweep](boundary_sweep.png)", ""]
    for decision, rows in sweeps.items():
        c = {k: figs.get(f"{decision}_confusion_{k}", 0) for k in ("tp", "fn", "fp", "tn")}
        lines += [
            f"## {decision}",
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
    lines += ["## figures", "", "| figure | value |", "|---|---|"]
    lines += [f"| `{k}` | {v} |" for k, v in figs.items()]
    (out / "boundary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> int:
    """Run the benchmark and print the figures."""
    p = parser(__doc__ or "")
    p.add_argument("--artifact", type=Path, default=DEFAULT_ARTIFACT)
    p.add_argument("--finetuned", type=Path, default=DEFAULT_FINETUNED)
    p.add_argument("--no-baseline", action="store_true", help="skip the earlier boundary")
    p.add_argument("--latency-samples", type=int, default=300)
    p.add_argument("--threads", type=int, default=1, help="onnxruntime threads per model")
    p.add_argument("--report", type=Path, help="write boundary.md and the sweep plot here")
    p.add_argument(
        "--max-per-source",
        type=int,
        default=0,
        help="score every k-th item of a bigger source, at most this many (0: every item)",
    )
    p.add_argument("--guard-model", help="also ask this guard model (OpenAI-compatible)")
    p.add_argument("--guard-url", help="the guard server's base URL (default: settings)")
    p.add_argument("--guard-prompt-style", choices=["policy", "llama_guard_3"], default="policy")
    args = p.parse_args()
    try:
        sets = B.load_sets(args.data)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.max_per_source > 0:
        sets.thin(args.max_per_source)
    settings = load_settings()
    embedder = MiniLMEmbedder(settings.cache_dir, num_threads=args.threads)
    guard = guard_from_settings(
        settings.model_copy(
            update={
                "guard": GuardConfig(
                    model=args.guard_model,
                    base_url=args.guard_url,
                    prompt_style=args.guard_prompt_style,
                )
            }
        )
    )
    kw = {"cache_dir": settings.cache_dir, "num_threads": args.threads}
    boundary = load_boundary(
        embedder, artifact=args.artifact, finetuned=args.finetuned, guard=guard, **kw
    )
    models, meta = load_artifact(args.artifact)
    train_keys = set(str(meta.get("train_keys", "")).split())
    figs, sweeps = evaluate(boundary, sets, train_keys)
    head = {
        k: figs[k]
        for k in [*HEADLINE, "injection_detection_rate", "injection_false_flag_rate"]
        if k in figs
    }
    pool = latency_pool(sets, args.latency_samples)
    baseline = None
    if not args.no_baseline:
        baseline = load_boundary(
            embedder, artifact=args.artifact, finetuned=args.finetuned, broad=True, **kw
        )
        base_figs, _ = evaluate(baseline, sets, set(), detail=False)
        for k in [*HEADLINE, "injection_detection_rate", "injection_false_flag_rate"]:
            if k in base_figs:
                figs[f"broad_{k}"] = base_figs[k]
    if pool:
        times = latency([boundary] + ([baseline] if baseline else []), pool)
        figs["admission_p50_ms"] = round(percentile(times[0], 50), 3)
        figs["admission_p95_ms"] = round(percentile(times[0], 95), 3)
        if baseline is not None:
            figs["broad_admission_p95_ms"] = round(percentile(times[1], 95), 3)
        figs["load_average_1min"] = round(os.getloadavg()[0], 2)
        figs["cpu_count"] = os.cpu_count() or 0
    harm = models.get("harm")
    loso = meta.get("heldout_source_figures", {})
    for k, v in loso.items():
        figs[f"loso_{k}"] = v
    if harm is not None and "thresholds" in harm.meta:
        for d, t in harm.meta["thresholds"].items():
            figs[f"calibrated_threshold_{d}"] = t
    figs["policy_version"] = boundary.policy.version
    figs["threads"] = args.threads
    if guard is not None:
        figs["guard_model"] = guard.model
    if args.report is not None:
        write_report(args.report, figs, sweeps)
    if not args.json:
        print(json.dumps(head, indent=1))
    emit(figs, title="safety boundary", as_json=args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
