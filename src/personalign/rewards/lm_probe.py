"""A preference reward model read off the chat model's own hidden states (a linear probe).

The embedded SmolLM2-135M is asked whether a reply respects the user's preference
(:func:`probe_messages`). It is far too small to answer that question well in words (its
yes/no answer picks the compliant PrefEval MCQ option 31% of the time, chance is 25%), but
its hidden states at the question's last token after :data:`PROBE_LAYERS` carry the
answer: standardized, they are scored by a linear ranker trained listwise on the reward
model's groups (first option compliant; :func:`personalign.training.reward_model.train_probe`)
and calibrated to a probability. The language model stays frozen; the artifact is the
ranker (``rewards/artifacts/lm_probe.npz``, numpy training, deterministic, trained by
``scripts/train_reward_model.py --probe``).

Measured (``benchmarks/reward_model.py --cross-validate``, 4 by-topic folds): the probe
alone 0.699, like the MiniLM cross-encoder (0.684); with the cross-encoder and the feature
model 0.802 against 0.777 without it, but no gain on the end-to-end MCQ subset of
``benchmarks/decoding.py --probe`` (0.750 vs 0.771) and about 0.3 s more per 4 best-of-N
candidates (best-of-4 1.51x plain, over the 1.5x target). So it is opt-in: pass the
embedded model as ``lm`` to :func:`personalign.rewards.preference_rm.load_reward_model`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from personalign.errors import ModelNotAvailableError
from personalign.rewards.base import min_over_preferences
from personalign.types import Message

if TYPE_CHECKING:
    from personalign.backends.models.local import TransformersLM

PROBE_LAYERS: tuple[int, ...] = (10, 20, 30)
"""The layers whose last-token states are read (SmolLM2-135M has 30)."""
ARTIFACT = Path(__file__).with_name("artifacts") / "lm_probe.npz"
MAX_RESPONSE_CHARS = 1200
"""Replies are read up to this many characters (bounds the probe's cost on long replies)."""
SYSTEM = "You check whether an assistant's reply respects the user's stated preference."
FEATURES_VERSION = 2
"""Bump when the prompt or how its states are read changes (2: shared prefixes read once),
so that cached fold probes trained on older features are not reused."""

Triple = tuple[str, str, str]
"""(preference, prompt, response)."""


def probe_messages(preference: str, prompt: str, response: str) -> list[Message]:
    """The question put to the model; its hidden states at the end are the features."""
    reply = response.strip()[:MAX_RESPONSE_CHARS]
    return [
        Message(role="system", content=SYSTEM),
        Message(
            role="user",
            content=(
                f"My preference: {preference.strip()}\nMy question: {prompt.strip()}\n"
                f"The reply: {reply}\nDoes the reply respect my preference? Answer yes or no."
            ),
        ),
    ]


def probe_features(
    lm: TransformersLM,
    triples: Sequence[Triple],
    memo: dict[Triple, np.ndarray] | None = None,
    *,
    layers: Sequence[int] = PROBE_LAYERS,
    log: Callable[[str], None] | None = None,
) -> np.ndarray:
    """Features ``(len(triples), len(layers) * hidden)`` float32; ``memo`` keeps them across
    calls (training folds share most of their texts)."""
    memo = {} if memo is None else memo
    missing = list(dict.fromkeys(t for t in triples if t not in memo))
    step = 256
    for i in range(0, len(missing), step):
        chunk = missing[i : i + step]
        vectors = lm.hidden_states([probe_messages(*t) for t in chunk], layers)
        memo.update(zip(chunk, vectors, strict=True))
        if log is not None:
            log(f"probe features {min(i + step, len(missing))}/{len(missing)}")
    width = len(layers) * lm.hidden_size
    if not triples:
        return np.zeros((0, width), dtype=np.float32)
    return np.stack([memo[t] for t in triples])


class LMProbeRewardModel:
    """``P(compliant)`` from a linear probe over the chat model's hidden states; several
    preferences score the minimum over them, none scores 1 (as every reward model here)."""

    def __init__(
        self,
        lm: TransformersLM,
        weights: np.ndarray,
        mean: np.ndarray,
        std: np.ndarray,
        *,
        scale: float = 1.0,
        bias: float = 0.0,
        layers: Sequence[int] = PROBE_LAYERS,
        meta: dict[str, Any] | None = None,
    ) -> None:
        width = len(layers) * lm.hidden_size
        w = np.asarray(weights, dtype=np.float64)
        mu = np.asarray(mean, dtype=np.float64)
        sd = np.asarray(std, dtype=np.float64)
        if not (w.shape == mu.shape == sd.shape == (width,)):
            raise ModelNotAvailableError(
                f"the probe has {w.shape[0]} weights; {lm.name} layers {tuple(layers)} "
                f"give {width} features"
            )
        self.lm = lm
        self.weights, self.mean, self.std = w, mu, np.maximum(sd, 1e-6)
        self.scale, self.bias = float(scale), float(bias)
        self.layers = tuple(int(x) for x in layers)
        self.meta = dict(meta or {})

    def logits(
        self, triples: Sequence[Triple], memo: dict[Triple, np.ndarray] | None = None
    ) -> np.ndarray:
        """The ranker's raw scores (len(triples),) before calibration."""
        x = probe_features(self.lm, triples, memo, layers=self.layers).astype(np.float64)
        out: np.ndarray = ((x - self.mean) / self.std) @ self.weights
        return out

    def score(
        self, preferences: Sequence[str], prompt: str, responses: Sequence[str]
    ) -> np.ndarray:
        """Compliance in [0, 1], the minimum over ``preferences`` (1 if none)."""

        def pairs(prefs: list[str], resps: list[str]) -> np.ndarray:
            z = self.logits([(p, prompt, r) for p in prefs for r in resps])
            out: np.ndarray = 1.0 / (1.0 + np.exp(-(self.scale * z + self.bias)))
            return out

        return min_over_preferences(preferences, responses, pairs)

    def save(self, path: Path) -> None:
        """Write the probe (weights, standardization, calibration, meta) to ``path``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.npz")
        np.savez_compressed(
            tmp,
            weights=self.weights.astype(np.float32),
            mean=self.mean.astype(np.float32),
            std=self.std.astype(np.float32),
            calibration=np.array([self.scale, self.bias], dtype=np.float64),
            layers=np.array(self.layers, dtype=np.int64),
            meta=np.array(json.dumps(self.meta, sort_keys=True)),
        )
        tmp.replace(path)

    @classmethod
    def load(cls, lm: TransformersLM, path: Path | None = None) -> LMProbeRewardModel:
        """The probe at ``path`` (default: the shipped one) over ``lm``, which must be the
        model it was trained on (:class:`ModelNotAvailableError` otherwise)."""
        path = Path(path or ARTIFACT)
        if not path.is_file():
            raise ModelNotAvailableError(
                f"no probe at {path}: run scripts/train_reward_model.py --probe"
            )
        with np.load(path) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("model") != lm.name:
                raise ModelNotAvailableError(
                    f"the probe at {path} reads {meta.get('model')!r}'s hidden states, "
                    f"not {lm.name!r}'s"
                )
            scale, bias = (float(v) for v in z["calibration"])
            return cls(
                lm,
                z["weights"],
                z["mean"],
                z["std"],
                scale=scale,
                bias=bias,
                layers=[int(x) for x in z["layers"]],
                meta=meta,
            )
