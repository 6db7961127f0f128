"""PrefEval surfacing: after N unrelated turns, is the item's preference in the top 5?

Variants explicit / choice / persona, N = 10, 100, 300; junk rows per 100 filler turns;
ingestion seconds per 100 turns. The shipped classifier was trained on these dev topics, so
the ``cv_*`` figures (leave-3-topics-out cross-validation) are the honest ones. See
``personalign.eval.suites.prefeval_surfacing`` for the protocol.

    python benchmarks/prefeval_surfacing.py [--json] [--limit-per-topic 10] [--no-cv]
"""

from __future__ import annotations

from personalign.backends.embedders import load_embedder
from personalign.config import load_settings
from personalign.eval.bench import emit, parser
from personalign.eval.suites.prefeval_surfacing import NS, measure


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--limit-per-topic", type=int, default=None, help="items per topic")
    p.add_argument("--n", default=",".join(map(str, NS)), help="comma-separated N values")
    p.add_argument("--no-cv", action="store_true", help="skip the cross-validated figures")
    p.add_argument("--embedder", default="minilm", help="minilm or a model folder")
    args = p.parse_args()
    embedder = load_embedder(args.embedder, load_settings().cache_dir)
    figures: dict[str, float | int | str] = dict(
        measure(
            args.data,
            embedder,
            ns=[int(x) for x in args.n.split(",")],
            limit_per_topic=args.limit_per_topic,
            cross_validate=not args.no_cv,
        )
    )
    figures["embedder"] = embedder.name
    figures["note"] = (
        "shipped classifier trained on these dev topics; cv_* = trained on 9 topics, "
        "tested on the other 3"
    )
    emit(figures, title="PrefEval preference surfacing (top 5)", as_json=args.json)


if __name__ == "__main__":
    main()
