"""LoCoMo evidence recall: for each category 1-4 question, are all its evidence turns sources
of the top 10 items? Target >= 0.75; baselines (BM25, MiniLM, their RRF over raw turns) are
computed in the same run. Data: every ``locomo/locomo*.json`` under ``--data``.

    python benchmarks/locomo_recall.py [--json] [--limit-conversations N]
"""

from __future__ import annotations

from personalign.backends.embedders import load_embedder
from personalign.config import load_settings
from personalign.eval.bench import emit, parser
from personalign.eval.suites.locomo_recall import measure


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--limit-conversations", type=int, default=None)
    p.add_argument("--limit-questions", type=int, default=None, help="per conversation")
    p.add_argument("--embedder", default="minilm", help="minilm or a model folder")
    args = p.parse_args()
    embedder = load_embedder(args.embedder, load_settings().cache_dir)
    figures: dict[str, float | int | str] = dict(
        measure(
            args.data,
            embedder,
            limit_conversations=args.limit_conversations,
            limit_questions=args.limit_questions,
        )
    )
    figures["embedder"] = embedder.name
    emit(figures, title="LoCoMo: all evidence in the top 10", as_json=args.json)


if __name__ == "__main__":
    main()
