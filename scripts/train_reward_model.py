"""Train the preference reward model and write its artifact.

The shipped model is all-MiniLM-L6-v2 fine-tuned with LoRA as a cross-encoder over
(preference + prompt, response) pairs (``personalign.rewards.preference_rm``:
``CrossEncoderRewardModel``, recipe ``CROSS_ENCODER_RECIPE``). Data, for every topic under
``--data`` (or ``--topics``): PrefEval MCQ (one compliant, three violating options per
preference), choice-based items (the aligned option against the other three) and our hard
negatives (the compliant option followed by a violating one). Training is seeded on one
thread, so the same data gives the same artifact (about 1-2 MB of float16 LoRA weights).

``--embedded`` instead retrains the embedded feature model (``preference_rm.npz``; numpy,
deterministic); ``--probe`` the LM probe over the embedded SmolLM2's hidden states
(``lm_probe.npz``; about 6 minutes on one thread, most of it reading the features).

    python scripts/train_reward_model.py [--data ../shared/data] [--out PATH] [--embedded|--probe]
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from personalign.eval.bench import parser
from personalign.eval.prefeval_tasks import load_mcq, reward_items, topics
from personalign.rewards.lm_probe import ARTIFACT as PROBE_ARTIFACT
from personalign.rewards.preference_rm import (
    ARTIFACT,
    CROSS_ENCODER_ARTIFACT,
    FEATURE_NAMES,
    EmbeddedRewardModel,
)
from personalign.training.recipe import recipe_meta
from personalign.training.reward_model import (
    CrossEncoderConfig,
    EmbeddedConfig,
    ProbeConfig,
    items_sha256,
    train,
    train_cross_encoder,
    train_probe,
)


def train_embedded(data: Path, names: list[str], out: Path) -> dict[str, object]:
    """The baseline embedded feature model (numpy, full-batch Adam from zero weights)."""
    from personalign.backends.embedders import load_embedder
    from personalign.config import load_settings

    config = EmbeddedConfig()
    base = EmbeddedRewardModel(
        load_embedder(config.embedder, load_settings().cache_dir), np.zeros(len(FEATURE_NAMES))
    )
    items = reward_items(data, names)
    rm = train(base, items, l2=config.l2, epochs=config.epochs)
    mcq = load_mcq(data, names)
    correct = [
        int(np.argmax(rm.score([it.preference], it.question, it.options))) == it.answer
        for it in mcq
    ]
    meta = {
        "features": list(FEATURE_NAMES),
        "embedder": rm.embedder.name,
        "topics": sorted(names),
        "groups": len(items),
        "l2": config.l2,
        "epochs": config.epochs,
        "train_mcq_accuracy": round(float(np.mean(correct)), 4),
        "recipe": recipe_meta(train, config, data=items_sha256(items)),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out,
        weights=rm.weights.astype(np.float64),
        bias=np.float64(rm.bias),
        scale=np.float64(rm.scale),
        meta=np.array(json.dumps(meta)),
    )
    return meta


def train_lm_probe(data: Path, names: list[str], out: Path) -> dict[str, object]:
    """The LM probe over the embedded SmolLM2 (bfloat16, as the pipeline runs it); the
    features are deterministic on one thread, the ranker is numpy (full-batch Adam)."""
    import torch

    from personalign.backends.models.local import TransformersLM
    from personalign.config import load_settings

    torch.set_num_threads(1)
    lm = TransformersLM.embedded(load_settings().cache_dir, quiet=True)
    items = reward_items(data, names)
    probe = train_probe(
        lm,
        items,
        extra_meta={"topics": sorted(names)},
        log=lambda m: print(m, flush=True),
        config=ProbeConfig(),
    )
    probe.save(out)
    return {**probe.meta, "bytes": out.stat().st_size}


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--out", type=Path, default=None, help="artifact path")
    p.add_argument("--topics", nargs="*", default=None, help="topics (default: all)")
    p.add_argument("--embedded", action="store_true", help="the baseline feature model")
    p.add_argument("--probe", action="store_true", help="the LM probe over SmolLM2's states")
    args = p.parse_args()
    names = args.topics or topics(args.data)
    start = time.perf_counter()
    if args.embedded:
        meta = train_embedded(args.data, names, args.out or ARTIFACT)
    elif args.probe:
        meta = train_lm_probe(args.data, names, args.out or PROBE_ARTIFACT)
    else:
        items = reward_items(args.data, names)
        config = CrossEncoderConfig()
        report = train_cross_encoder(
            items,
            args.out or CROSS_ENCODER_ARTIFACT,
            extra_meta={"topics": sorted(names), "groups": len(items)},
            config=config,
        )
        meta = {
            "topics": sorted(names),
            "groups": len(items),
            "recipe": report.meta["recipe"],
            "steps": report.steps,
            "final_loss": round(report.final_loss, 4),
            "bytes": report.size_bytes,
        }
    meta["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
