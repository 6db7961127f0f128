"""Train the embedded extractor's sentence classifier and write its artifact.

Reproducible: the data split is a fixed hash, training is deterministic Newton steps (no random
initialisation), weights are rounded to 6 decimals. Trains on every PrefEval topic under
``--data`` plus the MT-Bench-101 *train* half (see ``personalign.training.extractor``);
the filler half, used by the benchmarks, is never trained on.

    python scripts/train_extractor.py [--data ../shared/data] [--out PATH] [--topics a,b,...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from personalign.backends.embedders import load_embedder
from personalign.config import load_settings
from personalign.eval.bench import DEFAULT_DATA
from personalign.eval.suites._prefdata import topics
from personalign.memory.extract import ARTIFACT
from personalign.training.extractor import ExtractorConfig, fit_classifier


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="evaluation data folder")
    p.add_argument("--out", type=Path, default=ARTIFACT, help="artifact path (JSON)")
    p.add_argument("--topics", default=None, help="comma-separated topics (default: all)")
    p.add_argument("--embedder", default=ExtractorConfig.embedder, help="embedder name")
    args = p.parse_args()
    chosen = args.topics.split(",") if args.topics else topics(args.data)
    config = ExtractorConfig(embedder=args.embedder)
    embedder = load_embedder(config.embedder, load_settings().cache_dir)
    t0 = time.perf_counter()
    clf = fit_classifier(embedder, args.data, chosen, config=config)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(clf.to_json(), indent=1) + "\n")
    print(
        f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB) in "
        f"{time.perf_counter() - t0:.0f} s: threshold {clf.threshold:.3f}, {clf.meta}"
    )


if __name__ == "__main__":
    main()
