"""Train the safety boundary's classifiers and write the artifacts.

    .venv/bin/python scripts/train_boundary.py [--data ../shared/data] [--seed 0]
        [--out src/personalign/safety/artifacts/boundary_minilm.npz] [--embedder minilm]
        [--fast-injection-embedder minilm-int8]
        [--finetuned-out src/personalign/safety/artifacts/boundary_minilm_lora.safetensors]
        [--skip-finetune] [--epochs 1.0] [--max-length 64]

Two artifacts from the same training data:

* ``boundary_minilm_lora.safetensors`` (the boundary's classifier): all-MiniLM-L6-v2
  fine-tuned with LoRA (:mod:`personalign.backends.finetuned`) as ONE sequence classifier
  with the labels ``benign``, ``injection`` and the harm categories, so that an admission
  check needs one run of it (harm verdict and injection score). Trained on the broad rows
  (~39k texts, ~1,220 steps: about 17 minutes on one CPU thread), after two fold models on
  half the sources each (~10 minutes each) whose scores on the sources they never saw
  calibrate each decision's threshold (recorded in the artifact with the hold-out figures).
* ``boundary_minilm.npz``: ``harm``, the broad embedded harm model
  (:func:`personalign.training.boundary.train_broad_harm`: a softmax regression over frozen
  MiniLM vectors trained on every safety source, weighted by source, each decision's threshold
  calibrated on whole-source hold-out scores; ~30 minutes on a busy 2-core machine, most of it
  the 17 leave-one-source-out fits; ``--embedding-cache DIR`` keeps the vectors between runs),
  used with ``load_boundary(..., broad=True)`` and when the fine-tuned artifact is absent;
  ``injection`` (float32 vectors) and ``injection_fast``, the same injection model over the
  int8-quantized MiniLM's vectors (``--fast-injection-embedder``; ``none`` to skip), which runs
  beside the fine-tuned classifier in the shipped boundary (the faster session).

Reproducible: fixed seed, deterministic training (one thread), data read in sorted order. The
held-out protocol (:data:`personalign.training.boundary_sources.HELDOUT_PROTOCOL`) and the keys
of every training text are stored in the artifacts. Prints the whole-source hold-out figures
of the broad harm model (also stored: ``heldout_source_figures``, ``loso_*`` in
``benchmarks/boundary.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from personalign.backends.embedders import load_embedder  # noqa: E402
from personalign.safety.checkers import (  # noqa: E402
    DEFAULT_ARTIFACT,
    DEFAULT_FINETUNED,
    FAST_INJECTION,
)
from personalign.safety.classifier import EmbeddingClassifier  # noqa: E402
from personalign.safety.policy import load_policy  # noqa: E402
from personalign.training.boundary import (  # noqa: E402
    BoundaryConfig,
    FinetuneConfig,
    fit_embedded,
    injection_training_set,
    save_artifact,
    train_broad_harm,
    train_finetuned,
)
from personalign.training.boundary_sources import (  # noqa: E402
    HELDOUT_PROTOCOL,
    heldout_figures,
)
from personalign.training.recipe import recipe_meta  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Train, save, print figures."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=DEFAULT_ARTIFACT)
    ap.add_argument("--seed", type=int, default=BoundaryConfig.seed)
    ap.add_argument(
        "--embedder", default=BoundaryConfig.embedder, help="the numpy harm model's vectors"
    )
    ap.add_argument(
        "--fast-injection-embedder",
        default=BoundaryConfig.fast_injection_embedder,
        help="the vectors of the injection model run beside the fine-tuned one ('none': skip)",
    )
    ap.add_argument("--finetuned-out", type=Path, default=DEFAULT_FINETUNED)
    ap.add_argument("--skip-finetune", action="store_true", help="only the numpy baseline")
    ap.add_argument(
        "--epochs", type=float, default=FinetuneConfig.epochs, help="fine-tuning epochs"
    )
    ap.add_argument(
        "--max-length", type=int, default=FinetuneConfig.max_length, help="fine-tuning max tokens"
    )
    ap.add_argument("--threads", type=int, default=1, help="torch threads for fine-tuning")
    ap.add_argument(
        "--embedding-cache", type=Path, help="cache training texts' vectors here (development)"
    )
    ap.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(os.environ.get("PERSONALIGN_HOME", Path.home() / ".cache" / "personalign"))
        / "cache",
    )
    args = ap.parse_args(argv)
    if not (args.data / "safety").is_dir():
        print(f"error: no safety data under {args.data}", file=sys.stderr)
        return 2
    config = BoundaryConfig(
        embedder=args.embedder,
        fast_injection_embedder=args.fast_injection_embedder,
        seed=args.seed,
    )
    t0 = time.time()
    embedder = load_embedder(config.embedder, args.cache_dir)
    policy = load_policy()

    broad = train_broad_harm(
        embedder, args.data, config, cache=args.embedding_cache, log=lambda m: print(m, flush=True)
    )
    harm = broad.model
    figures = heldout_figures(broad.heldout, broad.thresholds)

    pos, neg, inj_keys = injection_training_set(args.data)
    print(f"injection: {len(pos)} positives, {len(neg)} negatives", flush=True)
    inj_labels = ["inj"] * len(pos) + ["ok"] * len(neg)
    injection: dict[str, tuple[object, EmbeddingClassifier]] = {}
    inj_embedders = {"injection": embedder}
    if config.fast_injection_embedder != "none":
        fast = load_embedder(config.fast_injection_embedder, args.cache_dir)
        inj_embedders[FAST_INJECTION] = fast
    for name, inj_embedder in inj_embedders.items():
        inj = fit_embedded(
            inj_embedder, pos + neg, inj_labels, ["ok", "inj"], config, cache=args.embedding_cache
        )
        injection[name] = (inj_embedder, inj)

    meta = {
        "embedder": embedder.name,
        "injection_fast_embedder": inj_embedders.get(FAST_INJECTION, embedder).name,
        "dim": embedder.dim,
        "seed": config.seed,
        "policy_version_at_training": policy.version,
        "heldout_protocol": HELDOUT_PROTOCOL,
        "train_keys": " ".join(sorted(set(broad.keys) | set(inj_keys))),
        "heldout_source_figures": figures,
        "thresholds": broad.thresholds,
        "train_sizes": {"harm": len(broad.rows), "injection": len(pos) + len(neg)},
        "recipe": recipe_meta(train_broad_harm, config, data=broad.data_sha256),
    }
    models = {"harm": harm, **{name: model for name, (_, model) in injection.items()}}
    save_artifact(args.out, models, meta)
    size_kb = args.out.stat().st_size / 1024
    print(f"wrote {args.out} ({size_kb:.0f} kB) in {time.time() - t0:.0f}s")
    print("whole-source hold-out figures (harm model alone, calibrated thresholds):")
    for key, value in figures.items():
        print(f"  {key}: {value}")
    if not args.skip_finetune:
        ft_config = dataclasses.replace(
            FinetuneConfig(), max_length=args.max_length, epochs=args.epochs, seed=args.seed
        )
        report = train_finetuned(
            args.data,
            args.finetuned_out,
            ft_config,
            threads=args.threads,
            extra_meta={"policy_version_at_training": policy.version},
            log=lambda m: print(m, flush=True),
        )
        print(
            f"wrote {report.path} ({report.size_bytes / 1024:.0f} kB): {report.steps} steps in "
            f"{report.seconds:.0f}s, final loss {report.final_loss:.4f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
