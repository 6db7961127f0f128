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
see). ``*_unseen`` counts only items whose request is not among the deciding classifier's
training keys (on a folder of sets never seen: every item; left out when none). ``loso_*`` are the
whole-source hold-out figures of the broad model recorded at training time (each source
scored by a model trained without it, thresholds as calibrated on those scores);
``heldout_*`` the fine-tuned classifier's (two folds of sources, each scored by a model
trained on the other; ``calibrated_threshold_<decision>`` the thresholds it decides with):
the honest estimates on the shared data.

The shipped boundary (headline keys): the policy patterns plus the fine-tuned MiniLM/LoRA
classifier deciding harm at its thresholds per decision (calibrated on held-out sources and
recorded in its artifact; the policy's ``threshold``, ``request_threshold``,
``reply_threshold`` for an artifact without them), injection scored by it. ``with_numpy_*``:
the injection figures of the opt-in variant that also runs the int8 numpy injection model
(``load_boundary(..., injection_embedding=True)``).
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

from personalign.backends.embedders import MiniLMEmbedder
from personalign.config import GuardConfig, load_settings
from personalign.errors import ConfigError
from personalign.eval import boundary_sets as B
from personalign.eval.bench import emit, parser, percentile
from personalign.eval.suites.boundary import (
    HEADLINE,
    artifact_figures,
    evaluate,
    injection_figures,
    train_keys,
    write_report,
)
from personalign.safety.checkers import DEFAULT_ARTIFACT, DEFAULT_FINETUNED, Boundary, load_boundary
from personalign.safety.classifier import load_artifact
from personalign.safety.guard import guard_from_settings


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
    p.add_argument(
        "--guard-band",
        type=float,
        help="ask the guard only within this distance of the classifier's threshold",
    )
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
                    band=args.guard_band,
                )
            }
        )
    )
    kw = {"cache_dir": settings.cache_dir, "num_threads": args.threads}
    boundary = load_boundary(
        embedder, artifact=args.artifact, finetuned=args.finetuned, guard=guard, **kw
    )
    models, meta = load_artifact(args.artifact)
    figs, sweeps = evaluate(boundary, sets, train_keys(boundary))  # the deciding classifier's
    head = {
        k: figs[k]
        for k in [*HEADLINE, "injection_detection_rate", "injection_false_flag_rate"]
        if k in figs
    }
    # the opt-in variant: the numpy injection model beside the classifier (larger score)
    with_numpy = load_boundary(
        embedder, artifact=args.artifact, finetuned=args.finetuned, injection_embedding=True, **kw
    )
    for k, v in injection_figures(with_numpy, sets, detail=False).items():
        figs[f"with_numpy_{k}"] = v
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
    figs.update(artifact_figures(boundary))  # the deciding classifier's own hold-out
    harm = models.get("harm")
    loso = meta.get("heldout_source_figures", {})
    for k, v in loso.items():
        figs[f"loso_{k}"] = v
    if harm is not None and "thresholds" in harm.meta:
        for d, t in harm.meta["thresholds"].items():
            figs[f"broad_calibrated_threshold_{d}"] = t
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
