"""Memory store speed: add throughput and search latency with 100,000 memories, 1,000 users.

Texts are real persona sentences (``locomo/msc_personas_all.json`` under ``--data``); the
embedder is the real one (all-MiniLM-L6-v2) unless ``--embedder hashing``. Adds are batched
(``add_many``, embedding included); searches are single queries (query embedding included).
Targets: search p95 <= 20 ms, add >= 300 memories/s.

    python benchmarks/memory_speed.py [--json] [--memories 100000] [--users 1000]
"""

from __future__ import annotations

from pathlib import Path

from personalign.backends.embedders import load_embedder
from personalign.config import load_settings
from personalign.eval.bench import emit, parser
from personalign.eval.suites.memory_speed import measure


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--memories", type=int, default=100_000)
    p.add_argument("--users", type=int, default=1_000)
    p.add_argument("--batch", type=int, default=100, help="memories per add_many call")
    p.add_argument("--queries", type=int, default=1_000)
    p.add_argument("--embedder", default="minilm", help="minilm, hashing or a model folder")
    p.add_argument("--db", type=Path, default=None, help="database file (default: temporary)")
    args = p.parse_args()
    embedder = load_embedder(args.embedder, load_settings().cache_dir)
    figures: dict[str, float | int | str] = dict(
        measure(
            args.data,
            embedder,
            memories=args.memories,
            users=args.users,
            batch=args.batch,
            queries=args.queries,
            db=args.db,
        )
    )
    figures["embedder"] = embedder.name
    emit(figures, title="memory store speed (SQLite)", as_json=args.json)


if __name__ == "__main__":
    main()
