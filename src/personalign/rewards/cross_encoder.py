"""The default preference reward model: a MiniLM cross-encoder fine-tuned with LoRA
(:class:`CrossEncoderRewardModel`), re-exported by :mod:`personalign.rewards.preference_rm`.

onnxruntime and the classifier are imported lazily, in :meth:`CrossEncoderRewardModel.load`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from personalign.errors import ModelNotAvailableError
from personalign.rewards.base import min_over_preferences

if TYPE_CHECKING:
    from personalign.backends.finetuned import TextClassifier

CROSS_ENCODER_ARTIFACT = Path(__file__).with_name("artifacts") / "preference_rm.safetensors"
COMPLIANT, VIOLATING = "compliant", "violating"
"""The cross-encoder's labels (``label_names`` order: violating, compliant)."""


QUANTIZE_CROSS_ENCODER = False
"""Whether the cross-encoder runs its int8 export by default. ``benchmarks/reward_model.py
--cross-validate`` measures both: int8 scores 4 best-of-4 candidates in 0.09 s instead of
0.15 s at the same accuracy alone (0.686 vs 0.684), but the ensemble with the feature model
dropped from 0.777 to 0.766, so float32 stays the default."""


def cross_encoder_input(preference: str, prompt: str) -> str:
    """Segment A of the cross-encoder's input: the preference, then the user's prompt."""
    return f"{preference.strip()} {prompt.strip()}".strip()


class CrossEncoderRewardModel:
    """The default reward model: a MiniLM cross-encoder reads (preference + prompt, response)
    and says whether the response respects the preference.

    all-MiniLM-L6-v2 fine-tuned with LoRA (:mod:`personalign.backends.finetuned`) on PrefEval
    MCQ and choice-based groups plus hard negatives, with a class-balanced pointwise loss
    (compliant vs violating) and a listwise loss ranking the compliant answer first in its
    group (``scripts/train_reward_model.py``). The score of one preference is
    ``P(compliant)``; several preferences score the minimum over them; none scores 1. Runs on
    onnxruntime (the artifact is merged and exported to ONNX in the cache on first use).
    """

    def __init__(self, classifier: TextClassifier, meta: dict[str, object] | None = None) -> None:
        labels = tuple(classifier.labels)
        if COMPLIANT not in labels:
            raise ModelNotAvailableError(
                f"the reward classifier has labels {labels}, expected {COMPLIANT!r} among them"
            )
        self.classifier = classifier
        self._column = labels.index(COMPLIANT)
        self.meta = dict(meta or {})

    @classmethod
    def load(
        cls,
        cache_dir: Path,
        path: Path | None = None,
        *,
        num_threads: int | None = None,
        quantize: bool = QUANTIZE_CROSS_ENCODER,
    ) -> CrossEncoderRewardModel:
        """The trained cross-encoder at ``path`` (default: the shipped artifact), exported to
        ONNX under ``cache_dir`` on first use; ``quantize``: its dynamically int8-quantized
        export (:data:`QUANTIZE_CROSS_ENCODER`)."""
        from personalign.backends.finetuned import FinetunedClassifier

        path = Path(path or CROSS_ENCODER_ARTIFACT)
        if not path.is_file():
            raise ModelNotAvailableError(
                f"no reward model at {path}: run scripts/train_reward_model.py"
            )
        clf = FinetunedClassifier.load(path, cache_dir, num_threads=num_threads, quantize=quantize)
        return cls(clf, dict(clf.meta))

    def score(
        self, preferences: Sequence[str], prompt: str, responses: Sequence[str]
    ) -> np.ndarray:
        """Compliance in [0, 1], the minimum over ``preferences`` (1 if none)."""

        def pairs(prefs: list[str], resps: list[str]) -> np.ndarray:
            firsts = [cross_encoder_input(p, prompt) for p in prefs for _ in resps]
            proba = self.classifier.predict_proba(firsts, resps * len(prefs))  # one run
            return np.asarray(proba, dtype=np.float64)[:, self._column]

        return min_over_preferences(preferences, responses, pairs)
