"""Activation steering: per-dimension steering vectors from ranked preference pairs (CAA).

**Computing** (:func:`compute_steering`). For each pole (``"conciseness+"``, ...) and each
chosen decoder layer, the vector is contrastive activation addition's mean difference
(Rimsky et al., 2024)::

    v[pole][layer] = mean over pairs of (a(prompt + chosen) - a(prompt + rejected))

where ``a(prompt + reply)`` is the residual stream after decoder layer ``layer`` (the output
of ``model.layers[layer]``; layers are 0-based decoder-layer indices), **averaged over the
reply's tokens**. The tokens are ``lm.encode_chat([user: prompt]) + lm.encode(reply)``: the
chat template with its assistant generation prompt, then the reply, exactly the stream the
model sees while it generates that reply (the end-of-turn marker and a following turn are not
part of it). Why the mean over reply tokens rather than CAA's single answer-letter position:
these pairs are free-form replies, and steering is added at every position of a generated
reply, so the direction that matters is the average difference over reply positions; a
single last-token state would mostly encode how the reply ends. The vectors are read from the
base model (no adapter, no steering).

While reading, every layer's *typical hidden-state norm* (the median L2 norm of the residual
stream over all reply tokens read) is measured and stored with the vectors: the safety floor
below is a fraction of it.

**Applying** (the local backend, :class:`~personalign.backends.models.local.TransformersLM`).
``GenerationOptions.steering`` (pole -> strength pairs) makes every row of that request add
``delta[layer] = sum_p strength_p * v[p][layer]`` to its hidden state after each chosen layer,
at every position of the row: the prompt (prefill) and every generated token, so the KV cache
holds steered states and a decode passes the same steering on every step (like an adapter).
``forward(..., steering=...)`` takes one spec for all rows or one per row: in one pass, each
row gets its own delta (a ``(B, 1, hidden)`` tensor added by a forward hook on each chosen
layer) and rows without steering get none (their states are bit-identical to an unsteered
pass: nothing is added where no row is steered, and ``+ 0`` elsewhere). The summed per-row
delta is computed once per distinct set of row specs and cached, so a decoding step costs one
tensor add per steered layer.

**Safety floor.** A user's strength cannot push arbitrarily far: each layer's delta is
scaled down, when needed, so that ``||delta[layer]|| <= max_fraction / len(layers) *
norm[layer]``, i.e. a fixed fraction of that layer's typical hidden-state norm chosen so that
the additions summed over the steered layers (they accumulate in the residual stream) stay
within ``max_fraction`` (:data:`MAX_STEER_FRACTION`, fixed when the vectors are computed and
stored in their meta; the user's options cannot raise it). A steered reply is otherwise an
ordinary reply: the pipeline's reply check (:mod:`personalign.safety.replies`) judges every
steered reply exactly like any other before it is returned; steering changes nothing there.

**Why no library.** ``steering-vectors`` (0.12.2) was checked: its
``SteeringVector.patch_activations`` adds ``multiplier * vector.reshape(1, 1, -1)`` to the
whole batch (one multiplier for every row, no per-row steering), and it pins
``transformers<5`` (installing it would downgrade this environment's transformers 5), so it
is used neither for applying nor for computing. ``repeng``'s ``ControlModel`` likewise sets
one control vector for the whole model and computes vectors by PCA rather than CAA. The
hooks are a few lines in the local backend; the CAA mean is a masked mean over one batched
forward pass.

Vectors are saved as a directory (:meth:`SteeringVectors.save`): ``vectors.npz`` (one
``(len(layers), hidden_size)`` float32 array per pole) and ``steering.json`` (the meta, with
the npz file's SHA-256, written last: the commit point of an atomic save).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from personalign.backends.models.base import Steering, steering_spec
from personalign.errors import NotFoundError, ValidationError
from personalign.types import Message

if TYPE_CHECKING:
    from personalign.feedback.pairs import PreferencePair

FORMAT_VERSION = 1
"""The on-disk format of :meth:`SteeringVectors.save`."""
METHOD = "caa-mean-reply-tokens"
"""How the vectors were computed (see the module doc)."""
MAX_STEER_FRACTION = 0.4
"""Default safety cap: the added vectors, summed over the steered layers, are at most this
fraction of the typical hidden-state norm (each layer's at most ``MAX_STEER_FRACTION /
len(layers)`` of its layer's). Measured on SmolLM2-135M (``benchmarks/steering.py``,
conciseness pairs): a CAA vector at strength 1 is 0.11-0.16 of its layer's norm; replies stay
fluent up to about 0.45 added in total (three layers at strength 1, one layer at strength
2) and turn to repeated fragments from about 0.6 (one layer at 4, three at 2)."""
VECTORS_FILE = "vectors.npz"
META_FILE = "steering.json"


def default_layers(num_layers: int) -> tuple[int, ...]:
    """Three decoder layers around 40% of the depth (11, 12, 13 of SmolLM2-135M's 30).
    CAA found behaviour directions most steerable in the early-middle layers (layer 13 of
    Llama-2-7B's 32); on SmolLM2-135M the conciseness pairs' differences agree most with
    their mean in layers 11-14 (mean cosine 0.56-0.58, against 0.34-0.47 in layers 0-9;
    ``benchmarks/steering.py --scan``). Three layers rather than one spread the capped total
    (:data:`MAX_STEER_FRACTION`) over the band where the direction is most consistent."""
    if num_layers < 1:
        raise ValidationError(f"num_layers must be >= 1, got {num_layers}")
    mid = round(0.4 * num_layers)
    return tuple(x for x in range(mid - 1, mid + 2) if 0 <= x < num_layers)


@dataclass(frozen=True, eq=False)
class SteeringVectors:
    """Steering vectors of one model: per pole a float32 ``(len(layers), hidden_size)`` array
    (row ``i`` is the vector at decoder layer ``layers[i]``), plus what they were computed
    with: ``norms`` (each layer's typical hidden-state norm), ``pairs`` (pairs per pole),
    ``max_fraction`` (the safety cap, see the module doc)."""

    vectors: Mapping[str, np.ndarray]
    layers: tuple[int, ...]
    norms: tuple[float, ...]
    model: str
    hidden_size: int
    num_layers: int
    pairs: Mapping[str, int] = field(default_factory=dict)
    method: str = METHOD
    max_fraction: float = MAX_STEER_FRACTION
    version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        layers = tuple(int(x) for x in self.layers)
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "norms", tuple(float(x) for x in self.norms))
        if not layers or len(set(layers)) != len(layers):
            raise ValidationError(f"steering layers must be distinct and non-empty: {layers}")
        if not all(0 <= x < self.num_layers for x in layers):
            raise ValidationError(f"steering layers must be in [0, {self.num_layers}): {layers}")
        if len(self.norms) != len(layers) or not all(
            math.isfinite(n) and n > 0 for n in self.norms
        ):
            raise ValidationError(f"need one finite norm > 0 per layer, got {self.norms}")
        if not (math.isfinite(self.max_fraction) and self.max_fraction > 0):
            raise ValidationError(f"max_fraction must be finite and > 0: {self.max_fraction}")
        if not self.vectors:
            raise ValidationError("steering vectors need at least one pole")
        want = (len(layers), self.hidden_size)
        vecs: dict[str, np.ndarray] = {}
        for pole, v in self.vectors.items():
            arr = np.asarray(v, dtype=np.float32)
            if arr.shape != want:
                raise ValidationError(f"vector of pole {pole!r} has shape {arr.shape}, want {want}")
            if not np.isfinite(arr).all():
                raise ValidationError(f"vector of pole {pole!r} is not finite")
            vecs[str(pole)] = arr
        object.__setattr__(self, "vectors", vecs)
        object.__setattr__(self, "_deltas", {})

    @property
    def poles(self) -> tuple[str, ...]:
        return tuple(self.vectors)

    def vector(self, pole: str, layer: int) -> np.ndarray:
        """The ``(hidden_size,)`` vector of ``pole`` at decoder layer ``layer``."""
        self._check_pole(pole)
        if layer not in self.layers:
            raise ValidationError(f"no steering vector at layer {layer}; layers: {self.layers}")
        return self.vectors[pole][self.layers.index(layer)]

    def _check_pole(self, pole: str) -> None:
        if pole not in self.vectors:
            raise ValidationError(f"unknown steering pole {pole!r}: use one of {self.poles}")

    def check_model(self, hidden_size: int, num_layers: int) -> None:
        """Raise :class:`ValidationError` unless these vectors fit a model of that shape."""
        if hidden_size != self.hidden_size or num_layers != self.num_layers:
            raise ValidationError(
                f"steering vectors of {self.model!r} (hidden {self.hidden_size}, "
                f"{self.num_layers} layers) do not fit this model (hidden {hidden_size}, "
                f"{num_layers} layers)"
            )

    def cap(self) -> np.ndarray:
        """The most L2 norm each layer's added vector may have, ``(len(layers),)``."""
        return self.max_fraction / len(self.layers) * np.asarray(self.norms, dtype=np.float64)

    def delta(self, spec: Steering | Mapping[str, float]) -> np.ndarray | None:
        """The capped ``(len(layers), hidden_size)`` float32 vector one row adds:
        ``sum_p strength_p * v[p]`` per layer, each layer scaled down to at most
        ``max_fraction / len(layers) * norms[layer]`` in L2 norm (:meth:`cap`). None when
        nothing is added (no pole, or every strength 0). Unknown poles raise
        :class:`ValidationError`."""
        key = steering_spec(spec)
        cache: dict[Steering, np.ndarray | None] = self._deltas  # type: ignore[attr-defined]
        if key in cache:
            return cache[key]
        for pole, _ in key:
            self._check_pole(pole)
        out: np.ndarray | None = None
        if any(s != 0 for _, s in key):
            total = np.zeros((len(self.layers), self.hidden_size), dtype=np.float64)
            for pole, s in key:
                total += s * self.vectors[pole].astype(np.float64)
            norms = np.linalg.norm(total, axis=1)  # (L,)
            cap = self.cap()  # (L,)
            scale = np.where(norms > cap, cap / np.maximum(norms, 1e-30), 1.0)
            out = (total * scale[:, None]).astype(np.float32)
        if len(cache) < 256:
            cache[key] = out
        return out

    # -- files -------------------------------------------------------------------------------

    def meta(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "method": self.method,
            "model": self.model,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "layers": list(self.layers),
            "norms": list(self.norms),
            "max_fraction": self.max_fraction,
            "poles": list(self.poles),
            "pairs": dict(self.pairs),
        }

    def save(self, path: str | Path) -> Path:
        """Write the directory ``path`` (``vectors.npz`` then ``steering.json``, each written
        to a temporary file and renamed into place); return it."""
        out = Path(path).expanduser()
        out.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        arrays: dict[str, Any] = {f"v{i}": self.vectors[p] for i, p in enumerate(self.poles)}
        np.savez(buf, **arrays)
        data = buf.getvalue()
        meta = self.meta() | {"sha256": hashlib.sha256(data).hexdigest()}
        _atomic_write(out / VECTORS_FILE, data)
        _atomic_write(out / META_FILE, (json.dumps(meta, indent=1) + "\n").encode())
        return out

    @classmethod
    def load(cls, path: str | Path) -> SteeringVectors:
        """Read a directory written by :meth:`save`. Missing files raise
        :class:`NotFoundError`; unreadable, inconsistent or unknown-version files raise
        :class:`ValidationError`."""
        root = Path(path).expanduser()
        files = (root / META_FILE, root / VECTORS_FILE)
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise NotFoundError(f"steering vectors not found: missing {', '.join(missing)}")
        try:
            meta = json.loads(files[0].read_text())
            data = files[1].read_bytes()
            if not isinstance(meta, dict):
                raise ValueError("the meta is not a JSON object")
            if meta.get("version") != FORMAT_VERSION:
                raise ValueError(f"format version {meta.get('version')!r}, want {FORMAT_VERSION}")
            if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
                raise ValueError(f"{VECTORS_FILE} does not match the checksum in {META_FILE}")
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                vecs = {p: npz[f"v{i}"] for i, p in enumerate(meta["poles"])}
            return cls(
                vectors=vecs,
                layers=tuple(meta["layers"]),
                norms=tuple(meta["norms"]),
                model=str(meta["model"]),
                hidden_size=int(meta["hidden_size"]),
                num_layers=int(meta["num_layers"]),
                pairs={str(k): int(v) for k, v in meta["pairs"].items()},
                method=str(meta["method"]),
                max_fraction=float(meta["max_fraction"]),
            )
        except ValidationError as e:
            raise ValidationError(f"corrupt steering vectors in {root}: {e}") from e
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValidationError(f"corrupt steering vectors in {root}: {e}") from e


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- computing ---------------------------------------------------------------------------------


def pair_rows(lm: Any, pair: PreferencePair) -> tuple[list[int], list[int], int]:
    """Token ids of (prompt + chosen, prompt + rejected) and where the replies start
    (``encode_chat([user prompt]) + encode(reply)``: see the module doc)."""
    prompt = lm.encode_chat([Message(role="user", content=pair.prompt)])
    chosen, rejected = lm.encode(pair.chosen), lm.encode(pair.rejected)
    if not chosen or not rejected:
        raise ValidationError(f"a pair's replies must have tokens: {pair.prompt[:60]!r}")
    return prompt + chosen, prompt + rejected, len(prompt)


def compute_steering(
    lm: Any,
    pairs_by_pole: Mapping[str, Sequence[PreferencePair]],
    layers: Sequence[int] | None = None,
    *,
    max_pairs: int | None = None,
    batch_size: int = 8,
    max_fraction: float = MAX_STEER_FRACTION,
) -> SteeringVectors:
    """CAA steering vectors of every pole in ``pairs_by_pole`` at decoder ``layers``
    (default :func:`default_layers`) of the local model ``lm`` (a
    :class:`~personalign.backends.models.local.TransformersLM`); see the module doc.

    ``max_pairs``: use each pole's first ``max_pairs`` pairs (they come ranked, best first).
    ``max_fraction``: the safety cap stored with the vectors.
    """
    if not pairs_by_pole:
        raise ValidationError("compute_steering needs pairs for at least one pole")
    if max_pairs is not None and max_pairs < 1:
        raise ValidationError(f"max_pairs must be >= 1, got {max_pairs}")
    n_layers = int(lm.num_layers)
    picked = tuple(int(x) for x in (default_layers(n_layers) if layers is None else layers))
    if not picked or not all(0 <= x < n_layers for x in picked):
        raise ValidationError(f"steering layers must be in [0, {n_layers}), got {picked}")
    steering_spec([(p, 1.0) for p in pairs_by_pole])  # pole names: non-empty strings
    vectors: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    norm_samples: list[np.ndarray] = []  # (tokens, L) per batch
    for pole, pairs in pairs_by_pole.items():
        use = list(pairs)[:max_pairs] if max_pairs is not None else list(pairs)
        if not use:
            raise ValidationError(f"pole {pole!r} has no pairs")
        rows: list[list[int]] = []
        starts: list[int] = []
        for pair in use:
            chosen, rejected, start = pair_rows(lm, pair)
            rows += [chosen, rejected]
            starts += [start, start]
        means, norms = lm.reply_states(rows, starts, picked, batch_size=batch_size)
        diff = means[0::2] - means[1::2]  # (pairs, L, H)
        vectors[pole] = diff.mean(axis=0).astype(np.float32)
        counts[pole] = len(use)
        norm_samples.append(norms)
    typical = np.median(np.concatenate(norm_samples), axis=0)  # (L,)
    return SteeringVectors(
        vectors=vectors,
        layers=picked,
        norms=tuple(float(x) for x in typical),
        model=str(lm.name),
        hidden_size=int(lm.hidden_size),
        num_layers=n_layers,
        pairs=counts,
        max_fraction=max_fraction,
    )
