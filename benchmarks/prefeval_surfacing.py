"""PrefEval surfacing: after N unrelated turns, is the item's preference in the top 5?

Variants explicit / choice / persona, N = 10, 100, 300; junk rows per 100 filler turns;
ingestion seconds per 100 turns. The shipped classifier was trained on these dev topics, so
the ``cv_*`` figures (leave-3-topics-out cross-validation) are the honest ones. See
``personalign.eval.suites.prefeval_surfacing`` for the protocol.

``--extractor offline,llm`` (the default) measures both extractors in the same run: the
offline one (embedded classifier + rules) and the LLM extractor of the ``[extractor]``
settings (or ``--extractor-model openai:NAME --extractor-url URL``), figures ``llm_*``. With
no extractor model configured the LLM figures are left out (a note says so), never guessed.

    python benchmarks/prefeval_surfacing.py [--json] [--limit-per-topic 10] [--no-cv]
        [--extractor offline,llm] [--extractor-model openai:NAME --extractor-url URL]
"""

from __future__ import annotations

import sys

from personalign.backends.embedders import load_embedder
from personalign.config import load_settings
from personalign.eval.bench import emit, parser
from personalign.eval.suites.prefeval_surfacing import NS, measure

EXTRACTORS = ("offline", "llm")


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--limit-per-topic", type=int, default=None, help="items per topic")
    p.add_argument("--n", default=",".join(map(str, NS)), help="comma-separated N values")
    p.add_argument("--no-cv", action="store_true", help="skip the cross-validated figures")
    p.add_argument("--embedder", default="minilm", help="minilm or a model folder")
    p.add_argument(
        "--extractor", default="offline,llm", help="comma-separated: offline, llm (if configured)"
    )
    p.add_argument("--extractor-model", default=None, help="default: setting extractor.model")
    p.add_argument("--extractor-url", default=None, help="default: setting extractor.base_url")
    args = p.parse_args()
    chosen = [x.strip() for x in args.extractor.split(",") if x.strip()]
    unknown = [x for x in chosen if x not in EXTRACTORS]
    if unknown or not chosen:
        p.error(f"--extractor takes {', '.join(EXTRACTORS)}; got {args.extractor!r}")
    settings = load_settings()
    given = {"model": args.extractor_model, "base_url": args.extractor_url}
    cfg = settings.extractor.model_copy(update={k: v for k, v in given.items() if v})
    settings = settings.model_copy(update={"extractor": cfg})
    embedder = load_embedder(args.embedder, settings.cache_dir)
    llm = None
    notes = [
        "shipped classifier trained on these dev topics; cv_* = trained on 9 topics, "
        "tested on the other 3"
    ]
    if "llm" in chosen:
        from personalign.memory.llm_extract import extractor_from_settings

        llm = extractor_from_settings(settings, embedder)
        if llm is None:
            notes.append("no LLM extractor configured ([extractor] model): llm_* figures absent")
            print(f"note: {notes[-1]}", file=sys.stderr)
        else:
            notes.append(f"llm_* = LLM extractor {cfg.model} with the offline fallback")
    if "offline" not in chosen and llm is None:
        p.error("nothing to measure: --extractor llm needs an extractor model")
    figures: dict[str, float | int | str] = dict(
        measure(
            args.data,
            embedder,
            ns=[int(x) for x in args.n.split(",")],
            limit_per_topic=args.limit_per_topic,
            cross_validate=not args.no_cv and "offline" in chosen,
            llm=llm,
            offline="offline" in chosen,
        )
    )
    figures["embedder"] = embedder.name
    figures["extractors"] = ",".join(["offline"] * ("offline" in chosen) + ["llm"] * bool(llm))
    figures["note"] = "; ".join(notes)
    emit(figures, title="PrefEval preference surfacing (top 5)", as_json=args.json)


if __name__ == "__main__":
    main()
