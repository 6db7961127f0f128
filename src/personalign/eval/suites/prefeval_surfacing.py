"""Suite ``prefeval_surfacing``: does the right preference surface after N unrelated turns?

Protocol (PrefEval, ICLR 2025): for each item, a fresh user; ingest the preference
conversation, then N unrelated user turns (with their assistant replies) from the MT-Bench-101
*filler* half, both with :func:`~personalign.memory.ingest.add_messages` and the embedded
extractor; then search the item's question (k=5, default retrieval settings). Success: a hit
whose source turns include the item's preference turn(s) (explicit: the preference turn;
choice: the request and the pick; persona: the turn that states the preference).

Figures: ``<variant>_n<N>_at5`` for the shipped extractor (trained on every dev topic, so on
these items: optimistic), ``cv_<variant>_n<N>_at5`` leave-topics-out cross-validation (the
classifier retrained on 9 topics and measured on the other 3, for each of 4 folds: the honest
figure), ``baseline_<variant>_n<N>_at5`` plain MiniLM cosine over the raw user turns, and
``junk_per_100_turns``: preference rows written from filler turns, per 100 filler turns.
``ingest_s_per_100_turns``: ingestion time with the embedded extractor and no embedding cache.
With an LLM extractor (``measure(..., llm=...)``, the ``[extractor]`` settings), the same
protocol through it gives ``llm_<variant>_n<N>_at5``, ``llm_extraction_recall_*``,
``llm_junk_per_100_turns`` and ``llm_fallbacks`` (conversations the offline extractor read
because the LLM's reply was unusable); without one, no ``llm_*`` figure exists.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from personalign.backends.embedders import Embedder, load_embedder
from personalign.backends.stores.sqlite import SQLiteStore
from personalign.config import RetrievalConfig, load_settings
from personalign.eval.suites._prefdata import (
    VARIANTS,
    CachingEmbedder,
    Variant,
    filler_messages,
    load_items,
    mtbench_dialogues,
    preference_conversation,
    topics,
)
from personalign.memory.extract import (
    EmbeddedExtractor,
    Extractor,
    SentenceClassifier,
    split_sentences,
)
from personalign.memory.ingest import add_messages
from personalign.training.extractor import fit_classifier

NS: tuple[int, ...] = (10, 100, 300)
K = 5
FOLDS = 4


def _seed(*parts: object) -> int:
    h = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=4).digest()
    return int.from_bytes(h, "little")


def surfacing(
    data_dir: Path,
    embedder: Embedder,
    classifier: SentenceClassifier,
    *,
    topic_names: Sequence[str],
    ns: Sequence[int] = NS,
    variants: Sequence[Variant] = VARIANTS,
    limit_per_topic: int | None = None,
    config: RetrievalConfig | None = None,
    prefix: str = "",
    extractor: Extractor | None = None,
) -> dict[str, float]:
    """Surfacing rates (and counts for the junk figure) for ``topic_names``, with
    ``extractor`` (default: the embedded one over ``classifier``)."""
    extractor = extractor or EmbeddedExtractor(embedder, classifier)
    dialogues = mtbench_dialogues(data_dir, "filler")
    _warm(embedder, dialogues)
    figures: dict[str, float] = {}
    junk = 0
    filler_turns = 0
    for variant in variants:
        for n in ns:
            ok: list[bool] = []
            base: list[bool] = []
            extracted: list[bool] = []
            for topic in topic_names:
                items = load_items(data_dir, variant, topic)[:limit_per_topic]
                with tempfile.TemporaryDirectory(prefix="personalign-prefeval-") as tmp:
                    store = SQLiteStore(Path(tmp) / "memory.db", embedder)
                    try:
                        for idx, item in enumerate(items):
                            user = f"{variant}-{n}-{idx}"
                            pid = f"{topic}:{idx}"
                            msgs, gold = preference_conversation(item, variant, pid)
                            fill = filler_messages(
                                dialogues, n, seed=_seed(topic, idx, n), prefix=pid
                            )
                            first = add_messages(store, msgs, user=user, extractor=extractor)
                            later = add_messages(store, fill, user=user, extractor=extractor)
                            junk += sum(1 for d in later.decisions if d.record is not None)
                            filler_turns += sum(1 for m in fill if m.role == "user")
                            extracted.append(
                                any(
                                    d.record is not None and gold & set(d.record.source_turn_ids)
                                    for d in first.decisions
                                )
                            )
                            hits = store.search(item["question"], user=user, k=K, config=config)
                            ok.append(any(gold & set(h.source_turn_ids) for h in hits))
                            base.append(_baseline(embedder, item["question"], msgs + fill, gold))
                    finally:
                        store.close()
            figures[f"{prefix}{variant}_n{n}_at{K}"] = float(np.mean(ok)) if ok else 0.0
            if not prefix:
                figures[f"baseline_{variant}_n{n}_at{K}"] = float(np.mean(base)) if base else 0.0
            if prefix != "cv_":
                figures[f"{prefix}extraction_recall_{variant}_n{n}"] = (
                    float(np.mean(extracted)) if extracted else 0.0
                )
            figures[f"{prefix}items_{variant}_n{n}"] = float(len(ok))
    figures[f"{prefix}junk_rows"] = float(junk)
    figures[f"{prefix}filler_turns"] = float(filler_turns)
    return figures


def _warm(embedder: Embedder, dialogues: Sequence[Sequence[tuple[str, str]]]) -> None:
    """Embed every filler turn and sentence once, in large batches (for a caching embedder)."""
    if isinstance(embedder, CachingEmbedder):
        texts = {u.strip() for d in dialogues for u, _ in d}
        texts |= {s for t in texts for s in split_sentences(t)}
        embedder.embed(sorted(texts, key=len))


def _baseline(embedder: Embedder, question: str, msgs: Sequence[object], gold: set[str]) -> bool:
    """Plain MiniLM cosine over the raw user turns: is a gold turn in the top K?"""
    turns = [m for m in msgs if getattr(m, "role", "") == "user"]
    vecs = embedder.embed([m.content for m in turns])  # type: ignore[attr-defined]
    q = embedder.embed([question])[0]
    top = np.argsort(-(vecs @ q), kind="stable")[:K]
    return any(turns[int(i)].id in gold for i in top)  # type: ignore[attr-defined]


def ingest_cost(data_dir: Path, embedder: Embedder, *, turns: int = 200) -> float:
    """Seconds per 100 user turns through ``add_messages`` (embedded extractor, no cache)."""
    extractor = EmbeddedExtractor(embedder)
    fill = filler_messages(mtbench_dialogues(data_dir, "filler"), turns, seed=7, prefix="cost")
    embedder.embed(["warm up"])
    extractor.topics.tag(embedder.embed(["warm up"]))
    with tempfile.TemporaryDirectory(prefix="personalign-cost-") as tmp:
        store = SQLiteStore(Path(tmp) / "memory.db", embedder)
        try:
            t0 = time.perf_counter()
            add_messages(store, fill, user="cost", extractor=extractor)
            seconds = time.perf_counter() - t0
        finally:
            store.close()
    return seconds / turns * 100


def measure(
    data_dir: Path,
    embedder: Embedder,
    *,
    ns: Sequence[int] = NS,
    limit_per_topic: int | None = None,
    cross_validate: bool = True,
    config: RetrievalConfig | None = None,
    llm: Extractor | None = None,
    offline: bool = True,
) -> dict[str, float]:
    """Every figure of the suite (see the module docstring); ``llm``: also measure this
    extractor (``llm_*`` figures); ``offline=False``: only ``llm`` (no CV, no baseline)."""
    t0 = time.perf_counter()
    cached = CachingEmbedder(embedder)
    names = topics(data_dir)
    figures: dict[str, float] = {}
    if offline:
        figures = _offline(data_dir, cached, names, ns, limit_per_topic, cross_validate, config)
        figures["ingest_s_per_100_turns"] = ingest_cost(data_dir, embedder)
    if llm is not None:
        seen = getattr(llm, "fallbacks", 0)
        found = surfacing(
            data_dir,
            cached,
            SentenceClassifier.load(),
            topic_names=names,
            ns=ns,
            limit_per_topic=limit_per_topic,
            config=config,
            prefix="llm_",
            extractor=llm,
        )
        junk, turns = found.pop("llm_junk_rows"), found.pop("llm_filler_turns")
        figures.update(found)
        figures["llm_junk_per_100_turns"] = 100 * junk / turns if turns else 0.0
        figures["llm_fallbacks"] = float(getattr(llm, "fallbacks", 0) - seen)
    figures["limit_per_topic"] = float(limit_per_topic or 0)
    figures["seconds"] = round(time.perf_counter() - t0, 1)
    return figures


def _offline(
    data_dir: Path,
    cached: CachingEmbedder,
    names: list[str],
    ns: Sequence[int],
    limit_per_topic: int | None,
    cross_validate: bool,
    config: RetrievalConfig | None,
) -> dict[str, float]:
    """The embedded extractor's figures: shipped, cross-validated, baseline, junk."""
    figures = surfacing(
        data_dir,
        cached,
        SentenceClassifier.load(),
        topic_names=names,
        ns=ns,
        limit_per_topic=limit_per_topic,
        config=config,
    )
    junk, turns = figures.pop("junk_rows"), figures.pop("filler_turns")
    figures["junk_per_100_turns"] = 100 * junk / turns if turns else 0.0
    if cross_validate:
        folds = [names[i::FOLDS] for i in range(FOLDS)]
        per_fold = []
        for held_out in folds:
            clf = fit_classifier(cached, data_dir, [t for t in names if t not in held_out])
            per_fold.append(
                surfacing(
                    data_dir,
                    cached,
                    clf,
                    topic_names=held_out,
                    ns=ns,
                    limit_per_topic=limit_per_topic,
                    config=config,
                    prefix="cv_",
                )
            )
        for key in per_fold[0]:
            if key.startswith("cv_items_") or key in ("cv_junk_rows", "cv_filler_turns"):
                continue
            weights = [f[key.replace("cv_", "cv_items_", 1).rsplit("_at", 1)[0]] for f in per_fold]
            figures[key] = float(np.average([f[key] for f in per_fold], weights=weights))
        cv_junk = sum(f["cv_junk_rows"] for f in per_fold)
        cv_turns = sum(f["cv_filler_turns"] for f in per_fold)
        figures["cv_junk_per_100_turns"] = 100 * cv_junk / cv_turns if cv_turns else 0.0
    for variant in VARIANTS:
        for n in ns:
            b = figures.get(f"baseline_{variant}_n{n}_at{K}", 0.0)
            if b > 0:
                figures[f"ratio_{variant}_n{n}_vs_baseline"] = figures[f"{variant}_n{n}_at{K}"] / b
    return figures


def run(data_dir: Path, *, quick: bool) -> dict[str, float]:
    """The ``personalign eval`` entry point (``quick``: 5 items per topic)."""
    embedder = load_embedder("minilm", load_settings().cache_dir)
    return measure(data_dir, embedder, limit_per_topic=5 if quick else None)


def plot(figures: dict[str, float], out_dir: Path) -> list[Path]:
    """Surfacing@5 against N, one line per variant (shipped solid, cross-validated dashed,
    baseline dotted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    colors = {"explicit": "#4C72B0", "choice": "#DD8452", "persona": "#55A868"}
    for variant in VARIANTS:
        for prefix, style, label in (
            ("", "-", "shipped"),
            ("cv_", "--", "cross-validated"),
            ("baseline_", ":", "MiniLM baseline"),
            ("llm_", "-.", "LLM extractor"),
        ):
            pts = [
                (n, figures[f"{prefix}{variant}_n{n}_at{K}"])
                for n in NS
                if f"{prefix}{variant}_n{n}_at{K}" in figures
            ]
            if pts:
                ax.plot(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    style,
                    marker="o",
                    color=colors[variant],
                    label=f"{variant} ({label})",
                )
    ax.set_xscale("log")
    ax.set_xticks(list(NS), [str(n) for n in NS])
    ax.set_xlabel("unrelated turns between preference and question (N)")
    ax.set_ylabel(f"preference surfaced in top {K}")
    ax.set_ylim(0, 1.02)
    ax.set_title("PrefEval: preference surfacing vs N")
    ax.legend(fontsize=7, ncol=3, loc="lower left")
    fig.tight_layout()
    path = out_dir / "prefeval_surfacing_vs_n.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]
