"""Training the preference reward models (the shipped artifacts and the CV folds).

* :func:`train_cross_encoder` — the MiniLM cross-encoder
  (:class:`~personalign.rewards.preference_rm.CrossEncoderRewardModel`) fine-tuned with LoRA
  (:func:`personalign.training.finetune.train_classifier`); recipe
  :class:`CrossEncoderConfig` (:data:`CROSS_ENCODER_RECIPE` as a dict), examples
  :func:`cross_encoder_examples`.
* :func:`train` — the embedded feature model
  (:class:`~personalign.rewards.preference_rm.EmbeddedRewardModel`; numpy, deterministic);
  recipe :class:`EmbeddedConfig`.
* :func:`train_probe` — the probe over a causal LM's hidden states
  (:class:`~personalign.rewards.lm_probe.LMProbeRewardModel`); recipe :class:`ProbeConfig`
  (:data:`PROBE_RECIPE` as a dict).
* :func:`fit_listwise`, :func:`fit_calibration` — the listwise linear ranker and its
  calibration that the embedded model and the probe share.

``scripts/train_reward_model.py`` builds the shipped artifacts with these.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from personalign.errors import ValidationError
from personalign.rewards.lm_probe import (
    FEATURES_VERSION,
    PROBE_LAYERS,
    LMProbeRewardModel,
    Triple,
    probe_features,
)
from personalign.rewards.preference_rm import (
    COMPLIANT,
    VIOLATING,
    EmbeddedRewardModel,
    _texts_needed,
    cross_encoder_input,
)
from personalign.training.recipe import data_sha256, recipe_meta

if TYPE_CHECKING:
    from personalign.backends.models.local import TransformersLM
    from personalign.training.finetune import TrainReport


def items_sha256(items: Sequence[tuple[str, str, Sequence[str]]]) -> str:
    """:func:`~personalign.training.recipe.data_sha256` of (preference, prompt, options)
    groups."""
    return data_sha256([[p, q, list(options)] for p, q, options in items])


# -- the shared listwise ranker (numpy, deterministic) ----------------------------------------


def fit_listwise(
    groups: np.ndarray, *, l2: float = 1e-3, epochs: int = 800, lr: float = 0.05
) -> np.ndarray:
    """Weights (F,) of a linear scorer ranking option 0 first in each group ``(N, K, F)``:
    full-batch Adam on the softmax cross-entropy over the K options, L2 ``l2``, from zeros."""
    x = np.asarray(groups, dtype=np.float64)  # (N, K, F)
    n, _, f = x.shape
    w, m, v = np.zeros(f), np.zeros(f), np.zeros(f)
    for t in range(1, epochs + 1):
        s = x @ w  # (N, K)
        p = np.exp(s - s.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        p[:, 0] -= 1.0  # d loss / d s
        g = np.einsum("nk,nkf->f", p, x) / n + l2 * w  # (F,)
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        w -= lr * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
    return w


def fit_calibration(z: np.ndarray) -> tuple[float, float]:
    """(scale, bias) of ``sigmoid(scale * z + bias)`` by class-balanced, unregularized
    logistic regression (scikit-learn) over ranker scores ``z`` of groups ``(N, K)`` whose
    first option is compliant and the others violating."""
    from personalign.extras import require

    require("train", ["sklearn"], what="fitting a logistic regression")
    from sklearn.linear_model import LogisticRegression

    z = np.asarray(z, dtype=np.float64)
    labels = np.zeros_like(z)
    labels[:, 0] = 1.0
    model = LogisticRegression(C=np.inf, class_weight="balanced", tol=1e-10, max_iter=1000)
    model.fit(z.reshape(-1, 1), labels.ravel())
    return float(model.coef_[0, 0]), float(model.intercept_[0])


# -- the fine-tuned cross-encoder -----------------------------------------------------------


@dataclass(frozen=True)
class CrossEncoderConfig:
    """Hyper-parameters of :func:`train_cross_encoder` (the shipped model and the CV folds)."""

    max_length: int = 128
    epochs: float = 1.0
    batch_size: int = 32
    lr: float = 5e-4
    lora_r: int = 8
    lora_alpha: int = 16
    listwise_weight: float = 1.0
    seed: int = 0


CROSS_ENCODER_RECIPE: dict[str, float | int] = dataclasses.asdict(CrossEncoderConfig())
""":class:`CrossEncoderConfig`'s defaults as a dict (in field order: the CV cache keys)."""


def cross_encoder_examples(
    items: Sequence[tuple[str, str, Sequence[str]]],
) -> tuple[list[str], list[str], list[str], np.ndarray]:
    """(texts, pairs, labels, weights) of (preference, prompt, options) groups whose first
    option is compliant: one example per option, the compliant one weighted ``K - 1`` so
    both classes weigh the same."""
    texts: list[str] = []
    pairs: list[str] = []
    labels: list[str] = []
    weights: list[float] = []
    for pref, prompt, options in items:
        first = cross_encoder_input(pref, prompt)
        for j, option in enumerate(options):
            texts.append(first)
            pairs.append(option)
            labels.append(VIOLATING if j else COMPLIANT)
            weights.append(1.0 if j else float(len(options) - 1))
    return texts, pairs, labels, np.array(weights)


def train_cross_encoder(
    items: Sequence[tuple[str, str, Sequence[str]]],
    out: Path,
    *,
    extra_meta: dict[str, object] | None = None,
    log: Callable[[str], None] | None = print,
    config: CrossEncoderConfig | None = None,
    **recipe: float | int,
) -> TrainReport:
    """Fine-tune the cross-encoder on (preference, prompt, options) groups of equal size
    (first option compliant) and write its artifact to ``out`` (needs torch and PEFT).
    ``recipe`` overrides ``config`` (default :class:`CrossEncoderConfig`); the artifact
    records both as its ``recipe``."""
    from personalign.training.finetune import train_classifier

    sizes = {len(options) for _, _, options in items}
    if len(sizes) != 1 or min(sizes) < 2:
        raise ValidationError(f"reward groups need one size >= 2 options, got sizes {sizes}")
    cfg = dataclasses.replace(config or CrossEncoderConfig(), **dict[str, Any](recipe))
    hp = dataclasses.asdict(cfg)
    texts, pairs, labels, weights = cross_encoder_examples(items)
    return train_classifier(
        texts,
        labels,
        out,
        pairs=pairs,
        label_names=[VIOLATING, COMPLIANT],
        sample_weight=weights,
        max_length=int(hp["max_length"]),
        epochs=float(hp["epochs"]),
        batch_size=int(hp["batch_size"]),
        lr=float(hp["lr"]),
        lora_r=int(hp["lora_r"]),
        lora_alpha=int(hp["lora_alpha"]),
        seed=int(hp["seed"]),
        group_size=sizes.pop(),
        listwise_weight=float(hp["listwise_weight"]),
        extra_meta={
            "task": "preference_reward",
            "recipe": recipe_meta(train_cross_encoder, cfg),
            **(extra_meta or {}),
        },
        log=log,
    )


# -- the embedded feature model (numpy, deterministic) ---------------------------------------


def feature_groups(
    rm: EmbeddedRewardModel, items: Sequence[tuple[str, str, Sequence[str]]]
) -> np.ndarray:
    """Feature groups ``(N, K, F)`` of (preference, prompt, K options) items, batch-embedded."""
    texts: list[str] = []
    for pref, prompt, options in items:
        texts += _texts_needed(pref, prompt, options)
    rm._cache.add(texts)
    return np.stack([rm.features(pref, prompt, options) for pref, prompt, options in items])


@dataclass(frozen=True)
class EmbeddedConfig:
    """Hyper-parameters of :func:`train` (the shipped ``preference_rm.npz``)."""

    embedder: str = "minilm"
    l2: float = 1e-3
    epochs: int = 800


def train(
    rm: EmbeddedRewardModel,
    items: Sequence[tuple[str, str, Sequence[str]]],
    *,
    l2: float = 1e-3,
    epochs: int = 800,
) -> EmbeddedRewardModel:
    """A model over ``rm``'s embedder trained on ``items`` (first option compliant)."""
    groups = feature_groups(rm, items)  # (N, K, F)
    w = fit_listwise(groups, l2=l2, epochs=epochs)
    ranker = EmbeddedRewardModel(rm.embedder, w)
    ranker._cache = rm._cache
    z = np.stack([ranker.logits(p, q, options) for p, q, options in items])  # (N, K)
    scale, bias = fit_calibration(z)
    trained = EmbeddedRewardModel(rm.embedder, w, bias=bias, scale=scale)
    trained._cache = rm._cache  # share the embedded texts
    return trained


# -- the LM probe ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeConfig:
    """Hyper-parameters of :func:`train_probe` (the shipped probe and the CV folds)."""

    l2: float = 0.1
    epochs: int = 400
    lr: float = 0.05


PROBE_RECIPE: dict[str, float | int] = dataclasses.asdict(ProbeConfig())
""":class:`ProbeConfig`'s defaults as a dict (in field order: the CV cache keys)."""


def train_probe(
    lm: TransformersLM,
    items: Sequence[tuple[str, str, Sequence[str]]],
    *,
    layers: Sequence[int] = PROBE_LAYERS,
    memo: dict[Triple, np.ndarray] | None = None,
    extra_meta: dict[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
    config: ProbeConfig | None = None,
    **recipe: float | int,
) -> LMProbeRewardModel:
    """Train a probe over ``lm``'s ``layers`` on (preference, prompt, options) groups of one
    size whose first option is compliant. ``recipe`` overrides ``config`` (default
    :class:`ProbeConfig`); the probe's meta records both as its ``recipe``."""
    sizes = {len(options) for _, _, options in items}
    if len(sizes) != 1 or min(sizes) < 2:
        raise ValidationError(f"probe groups need one size >= 2 options, got sizes {sizes}")
    cfg = dataclasses.replace(config or ProbeConfig(), **dict[str, Any](recipe))
    hp = dataclasses.asdict(cfg)
    k = sizes.pop()
    triples = [(p, q, o) for p, q, options in items for o in options]
    x = probe_features(lm, triples, memo, layers=layers, log=log).astype(np.float64)  # (N*K, F)
    mean, std = x.mean(axis=0), np.maximum(x.std(axis=0), 1e-6)
    groups = ((x - mean) / std).reshape(len(items), k, -1)  # (N, K, F)
    w = fit_listwise(groups, l2=float(hp["l2"]), epochs=int(hp["epochs"]), lr=float(hp["lr"]))
    z = groups @ w  # (N, K)
    scale, bias = fit_calibration(z)
    meta = {
        "model": lm.name,
        "features_version": FEATURES_VERSION,
        "layers": [int(x) for x in layers],
        "groups": len(items),
        "recipe": recipe_meta(train_probe, cfg, data=items_sha256(items)),
        "train_mcq_accuracy": round(float(np.mean(z.argmax(axis=1) == 0)), 4),
        **(extra_meta or {}),
    }
    return LMProbeRewardModel(lm, w, mean, std, scale=scale, bias=bias, layers=layers, meta=meta)
