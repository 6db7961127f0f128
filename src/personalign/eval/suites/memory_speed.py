"""Suite ``memory_speed``: add throughput and search latency of the configured store.

Texts are real persona sentences from ``locomo/msc_personas_all.json``. Adds are batched
(``add_many``, embedding included); searches are single queries (query embedding included).
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from pathlib import Path

from personalign.backends.embedders import Embedder
from personalign.backends.stores.sqlite import SQLiteStore
from personalign.eval.bench import percentile


def persona_sentences(data: Path) -> list[str]:
    """Every distinct persona sentence of the MSC persona file under ``data``."""
    path = data / "locomo" / "msc_personas_all.json"
    if not path.exists():
        raise FileNotFoundError(f"missing {path}: pass the evaluation data folder")
    raw = json.loads(path.read_text())
    out: set[str] = set()
    for split in raw.values():
        for item in split:
            for key, sents in item.items():
                if key.startswith("Speaker"):
                    out.update(s.strip() for s in sents if s.strip())
    return sorted(out)


def measure(
    data: Path,
    embedder: Embedder,
    *,
    memories: int,
    users: int,
    batch: int = 100,
    queries: int = 1000,
    db: Path | None = None,
) -> dict[str, float]:
    """Fill a fresh SQLite store with ``memories`` over ``users``, then time searches."""
    rng = random.Random(0)
    sentences = persona_sentences(data)
    db = db or Path(tempfile.mkdtemp(prefix="personalign-bench-")) / "memory.db"
    embedder.embed(["warm up"])
    store = SQLiteStore(db, embedder)
    names = [f"user{u:04d}" for u in range(users)]
    per_user = memories // users
    t0 = time.perf_counter()
    added = 0
    for start in range(0, per_user, batch):  # users interleaved, as an app sees them
        for user in names:
            n = min(batch, per_user - start)
            store.add_many([rng.choice(sentences) for _ in range(n)], user=user)
            added += n
    add_s = time.perf_counter() - t0
    lat = []
    for q in (rng.choice(sentences) for _ in range(queries)):
        t = time.perf_counter()
        store.search(q, user=rng.choice(names), k=10)
        lat.append((time.perf_counter() - t) * 1000)
    emb = []
    for q in (rng.choice(sentences) for _ in range(200)):
        t = time.perf_counter()
        embedder.embed([q])
        emb.append((time.perf_counter() - t) * 1000)
    store.close()
    return {
        "memories": added,
        "users": users,
        "add_per_s": added / add_s,
        "search_p50_ms": percentile(lat, 50),
        "search_p95_ms": percentile(lat, 95),
        "query_embed_p50_ms": percentile(emb, 50),
    }


def run(data_dir: Path, *, quick: bool) -> dict[str, float]:
    from personalign.backends.embedders import load_embedder
    from personalign.config import load_settings

    embedder = load_embedder("minilm", load_settings().cache_dir)
    n = 10_000 if quick else 100_000
    return measure(data_dir, embedder, memories=n, users=n // 100)
