"""Supersession: scripted preference changes; success = only the newest is active and the old
one is in its history (target >= 0.95). Cases: the package data
``src/personalign/eval/data/supersession_cases.json``.

    python benchmarks/supersession.py [--json] [--limit N]
"""

from __future__ import annotations

from personalign.backends.embedders import load_embedder
from personalign.config import load_settings
from personalign.eval.bench import emit, parser
from personalign.eval.suites.supersession import load_cases, measure


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--limit", type=int, default=None, help="run only the first N cases")
    p.add_argument("--embedder", default="minilm", help="minilm or a model folder")
    args = p.parse_args()
    cases = load_cases()[: args.limit]
    embedder = load_embedder(args.embedder, load_settings().cache_dir)
    figures: dict[str, float | int | str] = dict(measure(embedder, cases))
    figures["embedder"] = embedder.name
    emit(figures, title="supersession (scripted preference changes)", as_json=args.json)


if __name__ == "__main__":
    main()
