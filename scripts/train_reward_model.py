"""Train the embedded preference reward model and write its artifact.

Data: PrefEval MCQ (one compliant, three violating options per preference), choice-based
items (aligned option vs the others) and our hard negatives (the compliant option followed by
a violating one), for every topic under ``--data`` (or ``--topics``). Features: all-MiniLM-L6-v2
(see ``personalign.rewards.preference_rm.FEATURE_NAMES``). Training is full-batch Adam from
zero weights, so it is deterministic: the same data gives the same artifact.

    python scripts/train_reward_model.py [--data ../shared/data] [--out PATH]
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from personalign.backends.embedders import load_embedder
from personalign.config import load_settings
from personalign.eval.bench import parser
from personalign.eval.prefeval_tasks import load_mcq, reward_items, topics
from personalign.rewards.preference_rm import (
    ARTIFACT,
    FEATURE_NAMES,
    EmbeddedRewardModel,
    train,
)

L2 = 1e-3
EPOCHS = 800


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--out", type=Path, default=ARTIFACT, help="artifact path (.npz)")
    p.add_argument("--topics", nargs="*", default=None, help="topics (default: all)")
    args = p.parse_args()
    names = args.topics or topics(args.data)
    start = time.perf_counter()
    base = EmbeddedRewardModel(
        load_embedder("minilm", load_settings().cache_dir), np.zeros(len(FEATURE_NAMES))
    )
    items = reward_items(args.data, names)
    rm = train(base, items, l2=L2, epochs=EPOCHS)
    mcq = load_mcq(args.data, names)
    correct = [
        int(np.argmax(rm.score([it.preference], it.question, it.options))) == it.answer
        for it in mcq
    ]
    meta = {
        "features": list(FEATURE_NAMES),
        "embedder": rm.embedder.name,
        "topics": sorted(names),
        "groups": len(items),
        "l2": L2,
        "epochs": EPOCHS,
        "train_mcq_accuracy": round(float(np.mean(correct)), 4),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out,
        weights=rm.weights.astype(np.float64),
        bias=np.float64(rm.bias),
        scale=np.float64(rm.scale),
        meta=np.array(json.dumps(meta)),
    )
    meta["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
