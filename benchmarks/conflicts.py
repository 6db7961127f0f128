"""Conflicts and contexts: how reconciliation tells an update from a contradiction from two
preferences that both hold, and how a message is matched to a preference's context.

Labelled sets, written for this project before any threshold was tuned (figures are in
sample): ``benchmarks/data/conflict_pairs.json`` (45 pairs: supersede / conflict /
independent) and ``benchmarks/data/context_cases.json`` (13 preferences, 34 messages).

Conflicts: each pair is a fresh user in a SQLite store on the real embedder: the older
preference stored, the newer one decided (:func:`personalign.memory.reconcile.decide`, the
change cue read by the extractor's rule) and applied; a decision is right when it matches the
label (``add`` counts as independent) and the store ends as the label says (supersede: the
old one superseded; conflict: both active and one open conflict; independent: both active,
no conflict). The baseline is reconciliation as it was before conflicts
(``ReconcileConfig(conflicts=False)``), in the same run.

Contexts: extraction (the context the rules find, against the label), then for each scoped
preference and message whether it applies, by keyword, by embedding (at the default
threshold, and the best threshold in sample) and by either. With ``--data`` holding PrefEval,
also how many of its explicit preferences get a context and how many of those the matcher
would hold back from their own question (a cost measured on data nothing was tuned on).

    python benchmarks/conflicts.py [--json] [--embedder minilm]
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from personalign.backends.embedders import Embedder, load_embedder
from personalign.backends.stores.sqlite import SQLiteStore
from personalign.config import load_settings
from personalign.constraints.context import extract_context
from personalign.eval.bench import emit, parser
from personalign.memory.extract import Candidate
from personalign.memory.reconcile import ReconcileConfig, apply, decide
from personalign.memory.rules import signals_change
from personalign.memory.scope import ContextMatcher, ScopeConfig

DATA = Path(__file__).resolve().parent / "data"
LABELS = ("supersede", "conflict", "independent")


def _load(name: str, key: str) -> list[dict[str, Any]]:
    path = DATA / name
    if not path.is_file():
        raise SystemExit(f"missing {path}: the labelled set of this benchmark")
    items: list[dict[str, Any]] = json.loads(path.read_text())[key]
    return items


def _state_ok(store: SQLiteStore, user: str, label: str, written: Any) -> bool:
    active = store.list(user=user)
    open_conflicts = store.conflicts(user=user)
    if label == "supersede":
        return len(active) == 1 and written is not None and active[0].id == written.id
    if label == "conflict":
        return len(active) == 2 and len(open_conflicts) == 1
    return len(active) == 2 and not open_conflicts


def measure_conflicts(embedder: Embedder, pairs: list[dict[str, Any]]) -> dict[str, float]:
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="personalign-conflicts-") as tmp:
        store = SQLiteStore(Path(tmp) / "memory.db", embedder)
        try:
            for name, cfg in (
                ("conflicts", ReconcileConfig()),
                ("baseline", ReconcileConfig(conflicts=False)),
            ):
                right = {lab: 0 for lab in LABELS}
                state = 0
                false_conflicts = 0
                t0 = time.perf_counter()
                for i, pair in enumerate(pairs):
                    user = f"{name}{i}"
                    store.add(pair["old"], user=user)
                    cand = Candidate(
                        text=pair["new"],
                        source_turn_ids=[f"{pair['id']}:new"],
                        reason="benchmark",
                        change=signals_change(pair["new"]),
                    )
                    d = decide(store, cand, user=user, config=cfg)
                    got = "independent" if d.action == "add" else d.action
                    right[pair["label"]] += got == pair["label"]
                    if pair["label"] == "independent" and got == "conflict":
                        false_conflicts += 1
                    written = apply(store, d, user=user, source="benchmark")
                    state += _state_ok(store, user, pair["label"], written)
                n = {lab: sum(p["label"] == lab for p in pairs) for lab in LABELS}
                figures[f"{name}_accuracy"] = sum(right.values()) / len(pairs)
                for lab in LABELS:
                    figures[f"{name}_{lab}_recall"] = right[lab] / n[lab] if n[lab] else 0.0
                figures[f"{name}_store_state_accuracy"] = state / len(pairs)
                figures[f"{name}_false_conflicts_on_independent"] = float(false_conflicts)
                figures[f"{name}_ms_per_pair"] = 1000 * (time.perf_counter() - t0) / len(pairs)
        finally:
            store.close()
    figures["conflict_pairs"] = float(len(pairs))
    return figures


def measure_contexts(embedder: Embedder, cases: list[dict[str, Any]]) -> dict[str, float]:
    figures: dict[str, float] = {}
    figures["context_extraction_accuracy"] = sum(
        extract_context(c["preference"]) == c["extract"] for c in cases
    ) / len(cases)
    items = [
        (c["extract"], m, m in c["applies"])
        for c in cases
        if c["extract"]
        for m in c["applies"] + c["not"]
    ]
    figures["context_messages"] = float(len(items))
    default = ScopeConfig()

    def score(mode: str, threshold: float) -> tuple[float, float, float]:
        matcher = ContextMatcher(embedder, ScopeConfig(mode=mode, context_cosine=threshold))  # type: ignore[arg-type]
        got = [matcher.match(m, [ctx])[ctx].applies for ctx, m, _ in items]
        tp = sum(g and y for g, (_, _, y) in zip(got, items, strict=True))
        fp = sum(g and not y for g, (_, _, y) in zip(got, items, strict=True))
        pos = sum(y for _, _, y in items)
        acc = sum(g == y for g, (_, _, y) in zip(got, items, strict=True)) / len(items)
        return acc, tp / pos if pos else 0.0, fp / (len(items) - pos) if len(items) > pos else 0.0

    for mode in ("keyword", "embedding", "either"):
        acc, recall, fpr = score(mode, default.context_cosine)
        figures[f"context_{mode}_accuracy"] = acc
        figures[f"context_{mode}_recall"] = recall
        figures[f"context_{mode}_false_positive_rate"] = fpr
    best = max(
        (score("embedding", t / 100)[0], t / 100) for t in range(20, 70, 5)
    )  # in-sample sweep
    figures["context_embedding_best_accuracy_in_sample"] = best[0]
    figures["context_embedding_best_threshold_in_sample"] = best[1]
    figures["context_cosine_default"] = default.context_cosine
    matcher = ContextMatcher(embedder)
    t0 = time.perf_counter()
    for ctx, m, _ in items:
        matcher.match(m, [ctx])
    figures["context_match_ms_per_message"] = 1000 * (time.perf_counter() - t0) / len(items)
    return figures


def measure_prefeval_cost(embedder: Embedder, data: Path) -> dict[str, float]:
    """What scoping costs on data it was not tuned on: PrefEval's explicit preferences that
    get a context, and how many of those the matcher would hold back from their own question
    (each question is meant to be answered with its preference)."""
    files = sorted((data / "prefeval" / "explicit_preference").glob("*.json"))
    if not files:
        return {}
    pairs = [(x["preference"], x["question"]) for f in files for x in json.loads(f.read_text())]
    matcher = ContextMatcher(embedder)
    scoped = [(c, q) for p, q in pairs if (c := extract_context(p))]
    held = sum(not matcher.match(q, [c])[c].applies for c, q in scoped)
    return {
        "prefeval_explicit_preferences": float(len(pairs)),
        "prefeval_with_a_context": float(len(scoped)),
        "prefeval_held_back_from_own_question": float(held),
    }


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--embedder", default="minilm", help="minilm, hashing or a model folder")
    args = p.parse_args()
    embedder = load_embedder(args.embedder, load_settings().cache_dir)
    figures: dict[str, float | int | str] = {}
    figures.update(measure_conflicts(embedder, _load("conflict_pairs.json", "pairs")))
    figures.update(measure_contexts(embedder, _load("context_cases.json", "cases")))
    figures.update(measure_prefeval_cost(embedder, args.data))
    figures["embedder"] = embedder.name
    emit(figures, title="conflicts and contexts (in sample)", as_json=args.json)


if __name__ == "__main__":
    main()
