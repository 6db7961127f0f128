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
  check needs one run of it (harm verdict and injection score). About 17 minutes on one CPU
  thread (``OMP_NUM_THREADS=1``; 1 epoch over ~30k texts, batches of 32, 64 tokens; 945
  steps at ~1.07 s on a 2-core AVX2 machine running another job); the whole script ~26
  minutes.
* ``boundary_minilm.npz``: the earlier numpy softmax regressions over frozen MiniLM
  embeddings: ``harm`` and ``injection`` (float32 MiniLM vectors; seconds to train, minutes to
  embed), kept as the baseline the benchmark prints beside the fine-tuned boundary and used
  when the fine-tuned artifact is absent; and ``injection_fast``, the same injection model
  over the int8-quantized MiniLM's vectors (``--fast-injection-embedder``; ``none`` to skip),
  which runs beside the fine-tuned classifier in the shipped boundary (the faster session).

Reproducible: fixed seed, deterministic training (one thread), data read in sorted order. The
held-out protocol (:data:`personalign.training.safety_data.HELDOUT_PROTOCOL`) is stored in both
artifacts together with the keys of every training text, so that ``benchmarks/boundary.py``
scores only what the artifacts never saw. Prints the held-out figures of the numpy
classifiers alone (the benchmark measures the whole boundary: patterns + classifier).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from personalign.backends.embedders import load_embedder  # noqa: E402
from personalign.safety.checkers import (  # noqa: E402
    DEFAULT_ARTIFACT,
    DEFAULT_FINETUNED,
    FAST_INJECTION,
)
from personalign.safety.classifier import EmbeddingClassifier  # noqa: E402
from personalign.safety.injection import segments  # noqa: E402
from personalign.safety.policy import load_policy  # noqa: E402
from personalign.training import safety_data as D  # noqa: E402
from personalign.training.boundary import fit, save_artifact  # noqa: E402

CONTRAST_REPEAT = 3
"""Generated contrast pairs are few; they are repeated to weigh as much as a mid-size source."""


def _some_templates(reqs: list[D.Request], k: int, rng: random.Random) -> list[D.Example]:
    """Each request raw plus ``k`` random training templates (keeps benign chat turns cheap)."""
    names = [n for n in D.TRAIN_TEMPLATES if n != "raw"]
    out: list[D.Example] = []
    for r in reqs:
        pick = ["raw", *rng.sample(names, k)]
        out += D.as_preferences([r], {n: D.TRAIN_TEMPLATES[n] for n in pick})
    return out


def harm_training_set(data: Path, seed: int) -> tuple[list[D.Example], list[str]]:
    """(training examples, keys of the requests they were built from)."""
    rng = random.Random(seed)
    harmful = D.load_advbench(data)
    dna_harm, dna_sensitive = D.load_donotanswer(data)
    harmful += dna_harm
    contrast = D.contrast_requests()
    edgy_train, _ = D.edgy_split()
    examples = D.as_preferences(contrast, D.TRAIN_TEMPLATES) * CONTRAST_REPEAT
    examples += D.as_preferences(harmful, D.TRAIN_TEMPLATES)
    examples += D.as_preferences(dna_sensitive, D.TRAIN_TEMPLATES)
    examples += _some_templates(D.load_chat_turns(data), 2, rng)
    examples += D.as_is(D.load_personas(data))
    examples += D.as_is(edgy_train) + _some_templates(edgy_train, 2, rng)
    examples += D.as_is(D.load_conversation_turns(data))  # small talk and replies, as is
    # Prompt injections are flagged, not refused (unless they also ask for harm): the
    # CyberSecEval attacks of the training variants count as benign for the harm model.
    samples = D.load_injections(data)
    test = D.injection_test_variants(samples)
    examples += D.as_is(
        D.Request(x.text, D.BENIGN, "cyberseceval")
        for x in samples
        if x.source == "cyberseceval" and not D.is_injection_test(x, test)
    )
    keys = sorted({D.text_key(e.request) for e in examples})
    return examples, keys


def injection_training_set(data: Path) -> tuple[list[str], list[str], list[str]]:
    """(positive texts, negative texts, keys of the positives' attack texts)."""
    samples = D.load_injections(data)
    test = D.injection_test_variants(samples)
    pos = [
        s.text
        for s in samples
        if not D.is_injection_test(s, test) and not s.source.startswith("bipia_in_email")
    ]
    emails = D.load_benign_content(data)
    edgy_train, _ = D.edgy_split()
    _, dna_sensitive = D.load_donotanswer(data)
    neg = [r.text for r in D.load_personas(data, 2000) + D.load_chat_turns(data) + dna_sensitive]
    neg += [r.text for r in edgy_train]
    neg += [r.text for r in D.load_conversation_turns(data)]
    neg += [seg for e in emails[::2] for seg in segments(e.text)]
    neg += [e.text for e in emails[::2]]
    keys = sorted({D.text_key(t) for t in pos} | {D.text_key(e.text) for e in emails[::2]})
    return pos, neg, keys


INJECTION = "injection"
#: Share of the total loss weight of each side in the fine-tuned model's training set.
GROUP_WEIGHTS = {D.BENIGN: 0.45, "harm": 0.35, INJECTION: 0.20}


def finetune_training_set(
    data: Path, seed: int
) -> tuple[list[str], list[str], np.ndarray, list[str]]:
    """(texts, labels, weights, train keys) of the one fine-tuned boundary classifier.

    The harm set of :func:`harm_training_set` (its CyberSecEval attacks relabelled
    ``injection``) plus the texts of :func:`injection_training_set` it lacks (positives as
    ``injection``, negatives as ``benign``). Weights
    give benign, harmful and injection texts :data:`GROUP_WEIGHTS` of the total each.
    """
    examples, harm_keys = harm_training_set(data, seed)
    pos, neg, inj_keys = injection_training_set(data)
    pos_set = set(pos)
    texts = [e.text for e in examples]  # repeats kept (the contrast pairs weigh triple)
    labels = [
        INJECTION if e.text in pos_set or e.source == "cyberseceval" else e.label for e in examples
    ]
    seen = set(texts)
    for text, label in [(t, INJECTION) for t in pos] + [(t, D.BENIGN) for t in neg]:
        if text not in seen:
            seen.add(text)
            texts.append(text)
            labels.append(label)
    group = [lab if lab in (D.BENIGN, INJECTION) else "harm" for lab in labels]
    counts = Counter(group)
    weights = np.array([GROUP_WEIGHTS[g] / counts[g] for g in group], dtype=np.float64)
    weights *= len(texts) / weights.sum()  # mean weight 1
    keys = sorted(set(harm_keys) | set(inj_keys))
    return texts, labels, weights, keys


def _balanced(labels: list[str], positive: object) -> np.ndarray:
    """Weights that give the positive and the negative side half the total each."""
    is_pos = np.array([lab != positive for lab in labels])
    w = np.where(is_pos, 0.5 / max(1, is_pos.sum()), 0.5 / max(1, (~is_pos).sum()))
    return w.astype(np.float32)


def _embed(embedder: object, texts: list[str]) -> np.ndarray:
    unique = list(dict.fromkeys(texts))
    vectors = embedder.embed(unique)  # type: ignore[attr-defined]
    index = {t: i for i, t in enumerate(unique)}
    return np.asarray(vectors[[index[t] for t in texts]], dtype=np.float32)


def _fit_on(
    embedder: Any, texts: list[str], labels: list[str], classes: list[str], seed: int
) -> EmbeddingClassifier:
    """A softmax regression over ``embedder``'s vectors of ``texts``; ``classes[0]`` (the
    negative class) and the rest weigh half the total each; records the embedder's name."""
    model = fit(
        _embed(embedder, texts),
        labels,
        classes,
        l2=1e-4,
        epochs=500,
        lr=0.05,
        sample_weight=_balanced(labels, classes[0]),
        seed=seed,
    )
    model.meta = {"embedder": embedder.name}
    return model


def heldout_figures(
    embedder: object,
    harm: EmbeddingClassifier,
    injection: dict[str, tuple[object, EmbeddingClassifier]],
    data: Path,
) -> dict[str, float]:
    """Classifier-only figures on the held-out sets (threshold: the policy's per category)."""
    policy = load_policy()
    sst = D.load_simplesafetytests(data)
    xs_safe, xs_unsafe = D.load_xstest(data)
    _, edgy_test = D.edgy_split()
    figures: dict[str, float] = {}

    def refused(examples: list[D.Example]) -> np.ndarray:
        if not examples:
            return np.zeros(0, dtype=bool)
        p = harm.predict_proba(_embed(embedder, [e.text for e in examples]))
        b = harm.classes.index("benign")
        harm_idx = [i for i, c in enumerate(harm.classes) if c != "benign"]
        cats = [harm.classes[harm_idx[j]] for j in p[:, harm_idx].argmax(axis=1)]
        thr = np.array([policy.threshold_for(c) for c in cats])
        out: np.ndarray = (1.0 - p[:, b]) >= thr
        return out

    harmful = D.as_preferences(sst + xs_unsafe, D.EVAL_TEMPLATES)
    if harmful:
        figures["harmful_admission_rate"] = float(1.0 - refused(harmful).mean())
    for name, ex in (
        ("prefeval_false_refusal_rate", D.as_is(D.load_prefeval(data))),
        ("xstest_safe_false_refusal_rate", D.as_preferences(xs_safe, D.EVAL_TEMPLATES)),
        ("edgy_false_refusal_rate", D.as_is(edgy_test)),
        ("chat_false_refusal_rate", D.as_is(D.load_conversation_turns(data, part="test"))),
    ):
        if ex:
            figures[name] = float(refused(ex).mean())
    samples = D.load_injections(data)
    test = D.injection_test_variants(samples)
    held = [s for s in samples if D.is_injection_test(s, test) and s.injection]
    prefs = D.load_prefeval(data)
    for name, (inj_embedder, inj) in injection.items():  # name: the model's key
        k = inj.classes.index("inj")
        if held:
            p = inj.predict_proba(_embed(inj_embedder, [s.text for s in held]))[:, k]
            figures[f"{name}_detection_rate_whole_text"] = float((p >= 0.5).mean())
        if prefs:
            p = inj.predict_proba(_embed(inj_embedder, [r.text for r in prefs]))[:, k]
            figures[f"{name}_false_flag_rate_prefeval"] = float((p >= 0.5).mean())
    return {k2: round(v, 4) for k2, v in figures.items()}


def main(argv: list[str] | None = None) -> int:
    """Train, save, print figures."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=DEFAULT_ARTIFACT)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--embedder", default="minilm", help="the numpy harm model's vectors")
    ap.add_argument(
        "--fast-injection-embedder",
        default="minilm-int8",
        help="the vectors of the injection model run beside the fine-tuned one ('none': skip)",
    )
    ap.add_argument("--finetuned-out", type=Path, default=DEFAULT_FINETUNED)
    ap.add_argument("--skip-finetune", action="store_true", help="only the numpy baseline")
    ap.add_argument("--epochs", type=float, default=1.0, help="fine-tuning epochs")
    ap.add_argument("--max-length", type=int, default=64, help="fine-tuning max tokens")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for fine-tuning")
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
    t0 = time.time()
    embedder = load_embedder(args.embedder, args.cache_dir)
    policy = load_policy()

    examples, harm_keys = harm_training_set(args.data, args.seed)
    labels = [e.label for e in examples]
    print(f"harm: {len(examples)} examples {dict(Counter(labels).most_common())}", flush=True)
    classes = ["benign", *D.GOLD_CATEGORIES]
    harm = _fit_on(embedder, [e.text for e in examples], labels, classes, args.seed)

    pos, neg, inj_keys = injection_training_set(args.data)
    print(f"injection: {len(pos)} positives, {len(neg)} negatives", flush=True)
    inj_labels = ["inj"] * len(pos) + ["ok"] * len(neg)
    injection: dict[str, tuple[object, EmbeddingClassifier]] = {}
    inj_embedders = {"injection": embedder}
    if args.fast_injection_embedder != "none":
        fast = load_embedder(args.fast_injection_embedder, args.cache_dir)
        inj_embedders[FAST_INJECTION] = fast
    for name, inj_embedder in inj_embedders.items():
        inj = _fit_on(inj_embedder, pos + neg, inj_labels, ["ok", "inj"], args.seed)
        injection[name] = (inj_embedder, inj)

    figures = heldout_figures(embedder, harm, injection, args.data)
    meta = {
        "embedder": embedder.name,
        "injection_fast_embedder": inj_embedders.get(FAST_INJECTION, embedder).name,
        "dim": embedder.dim,
        "seed": args.seed,
        "policy_version_at_training": policy.version,
        "heldout_protocol": D.HELDOUT_PROTOCOL,
        "train_keys": " ".join(sorted(set(harm_keys) | set(inj_keys))),
        "heldout_figures_classifier_only": figures,
        "train_sizes": {"harm": len(examples), "injection": len(pos) + len(neg)},
    }
    models = {"harm": harm, **{name: model for name, (_, model) in injection.items()}}
    save_artifact(args.out, models, meta)
    size_kb = args.out.stat().st_size / 1024
    print(f"wrote {args.out} ({size_kb:.0f} kB) in {time.time() - t0:.0f}s")
    print("held-out figures (classifier alone; the benchmark measures the whole boundary):")
    for key, value in figures.items():
        print(f"  {key}: {value}")
    if not args.skip_finetune:
        finetune(args, meta)
    return 0


def finetune(args: argparse.Namespace, npz_meta: dict[str, object]) -> None:
    """Fine-tune the one MiniLM boundary classifier (LoRA) and write its artifact."""
    from personalign.training.finetune import train_classifier

    texts, labels, weights, keys = finetune_training_set(args.data, args.seed)
    names = [D.BENIGN, INJECTION, *D.GOLD_CATEGORIES]
    print(
        f"fine-tuning MiniLM (LoRA) on {len(texts)} texts {dict(Counter(labels).most_common())}",
        flush=True,
    )
    report = train_classifier(
        texts,
        labels,
        args.finetuned_out,
        label_names=names,
        sample_weight=weights,
        max_length=args.max_length,
        epochs=args.epochs,
        batch_size=32,
        lr=8e-4,
        lora_r=8,
        lora_alpha=16,
        seed=args.seed,
        threads=args.threads,
        log_every=100,
        extra_meta={
            "purpose": "personalign safety boundary: harm categories + prompt injection",
            "policy_version_at_training": npz_meta["policy_version_at_training"],
            "heldout_protocol": D.HELDOUT_PROTOCOL,
            "train_keys": " ".join(keys),
            "group_weights": GROUP_WEIGHTS,
        },
    )
    print(
        f"wrote {report.path} ({report.size_bytes / 1024:.0f} kB): {report.steps} steps in "
        f"{report.seconds:.0f}s, final loss {report.final_loss:.4f}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
