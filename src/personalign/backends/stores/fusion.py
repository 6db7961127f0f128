"""Score fusion for hybrid search: small pure functions keyed by :data:`Fusion` name.

Each function takes the candidates' raw signals and returns fused scores (higher is better).
``signals[name]`` maps candidate index -> raw value for the candidates that signal ranked;
a candidate a signal did not rank is absent from that signal's dict.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from personalign.config import Fusion, RetrievalConfig

Signals = Mapping[str, Mapping[int, float]]
FusionFn = Callable[[Signals, int, RetrievalConfig], list[float]]


BINARY_SIGNALS = frozenset({"entity", "preference"})
"""Signals that are 1 for a match and absent otherwise (every match ranks first in RRF)."""


def _weights(cfg: RetrievalConfig) -> dict[str, float]:
    return {
        "dense": cfg.dense_weight,
        "bm25": cfg.bm25_weight,
        "recency": cfg.recency_weight,
        "entity": cfg.entity_weight,
        "preference": cfg.preference_weight,
    }


def rrf(signals: Signals, n: int, cfg: RetrievalConfig) -> list[float]:
    """Weighted reciprocal-rank fusion: sum over signals of w / (k + rank), rank from 1
    (every candidate a binary signal matched has rank 1)."""
    weights = _weights(cfg)
    scores = [0.0] * n
    for name, values in signals.items():
        w = weights.get(name, 0.0)
        ranked = sorted(values, key=lambda i: values[i], reverse=True)
        for rank, i in enumerate(ranked, start=1):
            scores[i] += w / (cfg.rrf_k + (1 if name in BINARY_SIGNALS else rank))
    return scores


def linear(signals: Signals, n: int, cfg: RetrievalConfig) -> list[float]:
    """Weighted sum of normalized signals: cosine clipped to [0, 1], BM25 divided by the best
    BM25 among candidates, recency and the binary signals as is."""
    weights = _weights(cfg)
    scores = [0.0] * n
    for name, values in signals.items():
        if not values:
            continue
        w = weights.get(name, 0.0)
        top = max(values.values()) if name == "bm25" else 1.0
        for i, v in values.items():
            norm = max(v, 0.0) / top if top > 0 else 0.0
            scores[i] += w * min(norm, 1.0)
    return scores


FUSIONS: dict[Fusion, FusionFn] = {"rrf": rrf, "linear": linear}
