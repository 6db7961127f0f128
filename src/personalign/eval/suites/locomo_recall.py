"""Suite ``locomo_recall``: are all the evidence turns of a question among the top 10 items?

Protocol: every ``locomo/locomo*.json`` file under the data folder; for each conversation a
fresh user; each session is ingested with :func:`~personalign.memory.ingest.add_messages` and
the embedded extractor (both speakers' turns as user turns, named by ``speakers``, an image
caption appended as ``[shares a photo of ...]``, the session date as the message time). For
each category 1-4 question with evidence: search the question (k=10, default retrieval
settings); success when every evidence ``dia_id`` is a source of a returned item.

Baselines computed in the same run over the same turns (``Speaker: text``): BM25 (``\\w+``
lower-cased tokens, k1=1.2, b=0.75), MiniLM cosine, and their reciprocal-rank fusion (k=60).
"""

from __future__ import annotations

import collections
import json
import math
import re
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from personalign.backends.embedders import Embedder, load_embedder
from personalign.backends.stores.sqlite import SQLiteStore
from personalign.config import RetrievalConfig, load_settings
from personalign.eval.suites._prefdata import CachingEmbedder
from personalign.memory.extract import EmbeddedExtractor
from personalign.memory.ingest import add_messages
from personalign.types import Message

K = 10
_TOKEN = re.compile(r"\w+")


def conversations(data_dir: Path) -> list[dict[str, Any]]:
    """Every conversation of every ``locomo/locomo*.json`` file under ``data_dir``."""
    files = sorted((data_dir / "locomo").glob("locomo*.json"))
    if not files:
        raise FileNotFoundError(f"no locomo/locomo*.json under {data_dir}: pass --data")
    out: list[dict[str, Any]] = []
    for f in files:
        out.extend(json.loads(f.read_text()))
    return out


def _date(text: str | None) -> datetime | None:
    """``"1:56 pm on 8 May, 2023"`` as a UTC datetime (``None`` if it does not parse)."""
    if not text:
        return None
    try:
        return datetime.strptime(text.strip(), "%I:%M %p on %d %B, %Y").replace(tzinfo=UTC)
    except ValueError:
        return None


def sessions(conv: dict[str, Any]) -> list[tuple[datetime | None, list[dict[str, Any]]]]:
    """The conversation's sessions in order: (date, turns)."""
    c = conv["conversation"]
    keys = sorted(
        (k for k in c if re.fullmatch(r"session_\d+", k) and isinstance(c[k], list)),
        key=lambda k: int(k.split("_")[1]),
    )
    return [(_date(c.get(f"{k}_date_time")), c[k]) for k in keys]


def turn_text(turn: dict[str, Any]) -> str:
    """A turn's text, with its image caption if it shares a photo."""
    text = str(turn.get("text", "")).strip()
    if turn.get("blip_caption"):
        text += f" [shares a photo of {turn['blip_caption']}]"
    return text


def questions(conv: dict[str, Any]) -> list[dict[str, Any]]:
    """Category 1-4 questions that have evidence."""
    return [q for q in conv["qa"] if q.get("category") in (1, 2, 3, 4) and q.get("evidence")]


def _evidence(q: dict[str, Any]) -> set[str]:
    return {str(e).strip() for e in q["evidence"]}


class _BM25:
    """Okapi BM25 over tokenized documents (numpy; the README baseline's settings)."""

    def __init__(self, docs: list[list[str]], k1: float = 1.2, b: float = 0.75) -> None:
        self.tfs = [collections.Counter(d) for d in docs]
        n = len(docs)
        df = collections.Counter(t for d in docs for t in set(d))
        self.idf = {t: math.log(1 + (n - c + 0.5) / (c + 0.5)) for t, c in df.items()}
        lengths = np.array([len(d) for d in docs], dtype=np.float64)
        self.norm = k1 * (1 - b + b * lengths / max(lengths.mean(), 1e-9))
        self.k1 = k1

    def scores(self, query: list[str]) -> np.ndarray:
        out = np.zeros(len(self.tfs))
        for i, tf in enumerate(self.tfs):
            out[i] = sum(
                self.idf[t] * tf[t] * (self.k1 + 1) / (tf[t] + self.norm[i])
                for t in query
                if t in tf
            )
        return out


def _ranks(scores: np.ndarray) -> np.ndarray:
    order = np.argsort(-scores, kind="stable")
    r = np.empty(len(scores))
    r[order] = np.arange(1, len(scores) + 1)
    return r


def measure(
    data_dir: Path,
    embedder: Embedder,
    *,
    limit_conversations: int | None = None,
    limit_questions: int | None = None,
    config: RetrievalConfig | None = None,
) -> dict[str, float]:
    """Recall of all evidence in the top 10 for personalign and the three baselines."""
    t0 = time.perf_counter()
    cached = CachingEmbedder(embedder)
    extractor = EmbeddedExtractor(cached)
    hits_ok: dict[str, list[bool]] = collections.defaultdict(list)
    n_turns = 0
    ingest_s = 0.0
    convs = conversations(data_dir)[:limit_conversations]
    with tempfile.TemporaryDirectory(prefix="personalign-locomo-") as tmp:
        store = SQLiteStore(Path(tmp) / "memory.db", cached)
        try:
            for ci, conv in enumerate(convs):
                user = f"locomo{ci}"
                all_turns: list[dict[str, Any]] = []
                t1 = time.perf_counter()
                for date, turns in sessions(conv):
                    msgs = [
                        Message(role="user", content=turn_text(t), id=str(t["dia_id"]), at=date)
                        for t in turns
                        if turn_text(t)
                    ]
                    speakers = {str(t["dia_id"]): str(t["speaker"]) for t in turns}
                    add_messages(store, msgs, user=user, extractor=extractor, speakers=speakers)
                    all_turns.extend(turns)
                ingest_s += time.perf_counter() - t1
                n_turns += len(all_turns)
                ids = [str(t["dia_id"]) for t in all_turns]
                docs = [f"{t['speaker']}: {turn_text(t)}" for t in all_turns]
                bm25 = _BM25([_TOKEN.findall(d.lower()) for d in docs])
                vecs = cached.embed(docs)
                qs = questions(conv)[:limit_questions]
                qvecs = cached.embed([q["question"] for q in qs])
                for q, qv in zip(qs, qvecs, strict=True):
                    ev = _evidence(q)
                    cat = q["category"]
                    found = store.search(q["question"], user=user, k=K, config=config)
                    sources = {s for h in found for s in h.source_turn_ids}
                    b = bm25.scores(_TOKEN.findall(q["question"].lower()))
                    d = vecs @ qv
                    fused = 1 / (60 + _ranks(b)) + 1 / (60 + _ranks(d))
                    for name, ok in (
                        ("all_evidence", ev <= sources),
                        (
                            "baseline_bm25",
                            ev <= {ids[i] for i in np.argsort(-b, kind="stable")[:K]},
                        ),
                        (
                            "baseline_minilm",
                            ev <= {ids[i] for i in np.argsort(-d, kind="stable")[:K]},
                        ),
                        (
                            "baseline_rrf",
                            ev <= {ids[i] for i in np.argsort(-fused, kind="stable")[:K]},
                        ),
                    ):
                        hits_ok[name].append(ok)
                        hits_ok[f"{name}_cat{cat}"].append(ok)
        finally:
            store.close()
    figures: dict[str, float] = {}
    for name in ("all_evidence", "baseline_bm25", "baseline_minilm", "baseline_rrf"):
        figures[f"{name}_at{K}"] = float(np.mean(hits_ok[name])) if hits_ok[name] else 0.0
    for cat in (1, 2, 3, 4):
        vals = hits_ok[f"all_evidence_cat{cat}"]
        figures[f"all_evidence_at{K}_cat{cat}"] = float(np.mean(vals)) if vals else 0.0
    for name in ("baseline_bm25", "baseline_minilm", "baseline_rrf"):
        base = figures[f"{name}_at{K}"]
        if base > 0:
            figures[f"ratio_vs_{name}"] = figures[f"all_evidence_at{K}"] / base
    figures["questions"] = float(len(hits_ok["all_evidence"]))
    figures["conversations"] = float(len(convs))
    figures["turns"] = float(n_turns)
    figures["ingest_s_per_100_turns_cached"] = 100 * ingest_s / n_turns if n_turns else 0.0
    figures["seconds"] = round(time.perf_counter() - t0, 1)
    return figures


def run(data_dir: Path, *, quick: bool) -> dict[str, float]:
    """The ``personalign eval`` entry point (``quick``: the first conversation only)."""
    embedder = load_embedder("minilm", load_settings().cache_dir)
    return measure(data_dir, embedder, limit_conversations=1 if quick else None)
