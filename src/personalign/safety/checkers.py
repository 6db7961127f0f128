"""Admission checkers: every candidate preference is checked before it is stored.

Interface: :class:`Checker` (``check(texts) -> list[Verdict]``, batched, one verdict per text
in order). Implementations:

* :class:`PatternChecker` — the policy's per-category regular expressions (high precision).
* :class:`ClassifierChecker` — the embedded classifier: a numpy model over the texts' sentence
  embeddings (weights in ``artifacts/boundary_minilm.npz``, trained by
  ``scripts/train_boundary.py``).
* :class:`~personalign.safety.guard.OpenAIGuardChecker` — an optional guard model
  (Llama-Guard style) behind an OpenAI-compatible server.
* :class:`Boundary` — runs several checkers in order (the first refusal wins) and adds the
  injection flag from an :class:`~personalign.safety.injection.InjectionDetector`.

:func:`load_boundary` builds the default: patterns, then the classifier, then (if given) a
guard, with injection detection sharing the classifier's embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from personalign.backends.embedders import Embedder
from personalign.errors import ConfigError, RefusedError, ValidationError
from personalign.safety.classifier import EmbeddingClassifier, load_artifact
from personalign.safety.injection import INJECTION_FLAG, InjectionDetector
from personalign.safety.policy import Policy, load_policy
from personalign.safety.verdict import NONE, Verdict

DEFAULT_ARTIFACT = Path(__file__).with_name("artifacts") / "boundary_minilm.npz"
BENIGN = "benign"


@runtime_checkable
class Checker(Protocol):
    """Checks candidate preferences. ``check`` returns one :class:`Verdict` per text, in order."""

    name: str

    def check(self, texts: Sequence[str]) -> list[Verdict]:
        """Return one verdict per text."""
        ...


def _texts(texts: Sequence[str]) -> list[str]:
    """``texts`` as a list of strings, refusing a bare string or non-strings."""
    if isinstance(texts, str):
        raise ValidationError("check() takes a sequence of texts, not a single string")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise ValidationError(f"check(): item {i} is {type(t).__name__}, expected str")
    return out


def _admit(checker: str, policy: Policy, score: float = 0.0) -> Verdict:
    return Verdict(
        admitted=True,
        category=NONE,
        score=float(min(max(score, 0.0), 1.0)),
        reason="no policy category applies",
        checker=checker,
        policy_version=policy.version,
    )


def _refuse(checker: str, policy: Policy, category: str, score: float, reason: str) -> Verdict:
    return Verdict(
        admitted=False,
        category=category,
        score=float(min(max(score, 0.0), 1.0)),
        reason=reason,
        checker=checker,
        policy_version=policy.version,
        user_message=policy.message_for(category),
    )


class PatternChecker:
    """Refuses texts that match an enabled category's patterns (score 1.0)."""

    name = "patterns"

    def __init__(self, policy: Policy | None = None) -> None:
        """Use ``policy`` (the packaged policy by default)."""
        self.policy = policy or load_policy()

    def check(self, texts: Sequence[str]) -> list[Verdict]:
        """One verdict per text: refused on the first matching category, else admitted."""
        out = []
        for text in _texts(texts):
            verdict = _admit(self.name, self.policy)
            for cat in self.policy.enabled():
                hit = cat.match(text)
                if hit is not None:
                    verdict = _refuse(
                        self.name,
                        self.policy,
                        cat.name,
                        1.0,
                        f"{cat.description} (matched {hit[:60]!r})",
                    )
                    break
            out.append(verdict)
        return out


class ClassifierChecker:
    """The embedded classifier: harm score = 1 - p(benign) over the text's embedding.

    The category is the most likely enabled harmful class; the text is refused when the score
    reaches that category's policy threshold.
    """

    name = "classifier"

    def __init__(
        self,
        embedder: Embedder,
        model: EmbeddingClassifier,
        *,
        policy: Policy | None = None,
    ) -> None:
        """Check that ``model`` fits ``embedder`` (same dimension; same name when recorded)."""
        self.embedder = embedder
        self.model = model
        self.policy = policy or load_policy()
        if model.dim != embedder.dim:
            raise ConfigError(
                f"the safety classifier expects {model.dim}-dimensional embeddings but the "
                f"embedder {embedder.name!r} gives {embedder.dim}"
            )
        trained_on = model.meta.get("embedder")
        if trained_on and trained_on != embedder.name:
            raise ConfigError(
                f"the safety classifier was trained on {trained_on!r} embeddings, not "
                f"{embedder.name!r}: use that embedder or retrain (scripts/train_boundary.py)"
            )
        if BENIGN not in model.classes:
            raise ConfigError("the safety classifier has no 'benign' class")
        self._benign = model.classes.index(BENIGN)
        enabled = {c.name for c in self.policy.enabled()}
        self._harm_idx = [i for i, c in enumerate(model.classes) if c != BENIGN and c in enabled]

    def check(self, texts: Sequence[str]) -> list[Verdict]:
        """One verdict per text (one batched embedding call)."""
        items = _texts(texts)
        if not items:
            return []
        return self.check_vectors(self.embedder.embed(items))

    def check_vectors(self, vectors: np.ndarray) -> list[Verdict]:
        """Verdicts from precomputed embeddings (rows in the order of the texts)."""
        probs = self.model.predict_proba(vectors)
        out = []
        for row in probs:
            harm_probs = row[self._harm_idx] if self._harm_idx else np.zeros(1)
            # Disabled categories count as benign: they cannot cause a refusal.
            score = float(harm_probs.sum())
            if not self._harm_idx:
                out.append(_admit(self.name, self.policy))
                continue
            cat = self.model.classes[self._harm_idx[int(np.argmax(harm_probs))]]
            threshold = self.policy.threshold_for(cat)
            if score >= threshold:
                description = self.policy.categories[cat].description
                out.append(
                    _refuse(
                        self.name,
                        self.policy,
                        cat,
                        score,
                        f"{description} (classifier score {score:.2f} >= {threshold:.2f})",
                    )
                )
            else:
                out.append(_admit(self.name, self.policy, score))
        return out


class Boundary:
    """Runs checkers in order, the first refusal wins; adds the ``injection`` flag.

    A checker only sees the texts that every earlier checker admitted. When the injection
    detector shares the classifier's embedder, each text is embedded once.
    """

    name = "boundary"

    def __init__(
        self,
        checkers: Sequence[Checker],
        *,
        policy: Policy | None = None,
        injection: InjectionDetector | None = None,
    ) -> None:
        """Combine ``checkers`` (at least one) with an optional injection detector."""
        if not checkers:
            raise ConfigError("Boundary needs at least one checker")
        self.checkers = list(checkers)
        self.policy = policy or load_policy()
        self.injection = injection

    def check(self, texts: Sequence[str]) -> list[Verdict]:
        """One verdict per text: admitted only when every checker admits it."""
        items = _texts(texts)
        vectors, segment_vectors = self._shared_vectors(items)
        verdicts: list[Verdict | None] = [None] * len(items)
        best: list[Verdict | None] = [None] * len(items)
        pending = list(range(len(items)))
        for checker in self.checkers:
            if not pending:
                break
            if vectors is not None and isinstance(checker, ClassifierChecker):
                results = checker.check_vectors(vectors[pending])
            else:
                results = checker.check([items[i] for i in pending])
            still = []
            for i, v in zip(pending, results, strict=True):
                if not v.admitted:
                    verdicts[i] = v
                else:
                    prev = best[i]
                    if prev is None or v.score > prev.score:
                        best[i] = v
                    still.append(i)
            pending = still
        for i in pending:
            top = best[i]
            verdicts[i] = (
                top.model_copy(update={"checker": self.name})
                if top is not None
                else _admit(self.name, self.policy)
            )
        if self.injection is not None:
            flags = self.injection.detect(items, vectors, segment_vectors)
            for i, res in enumerate(flags):
                current = verdicts[i]
                if res.flagged and current is not None:
                    verdicts[i] = current.model_copy(
                        update={"flags": (*current.flags, INJECTION_FLAG)}
                    )
        return [v for v in verdicts if v is not None]

    def _shared_vectors(self, items: list[str]) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Embed once (texts and, for injection, their sentences) in a single batch.

        Returns (text vectors, sentence vectors); ``(None, None)`` without a classifier.
        """
        clf = next((c for c in self.checkers if isinstance(c, ClassifierChecker)), None)
        if clf is None or not items:
            return None, None
        extra: list[str] = []
        if self.injection is not None and self.injection.embedder is clf.embedder:
            extra, _ = self.injection.segments_to_embed(items)
        both = clf.embedder.embed(items + extra)
        return both[: len(items)], (both[len(items) :] if extra else None)

    def admit(self, text: str) -> Verdict:
        """Check one text; raise :class:`RefusedError` (with the verdict) when it is refused."""
        verdict = self.check([text])[0]
        if not verdict.admitted:
            raise RefusedError(verdict.user_message or verdict.reason, verdict)
        return verdict


def load_boundary(
    embedder: Embedder | None,
    *,
    policy: Policy | None = None,
    artifact: Path | None = None,
    guard: Checker | None = None,
) -> Boundary:
    """The default boundary: patterns, the embedded classifier, then ``guard`` if given.

    With ``embedder=None`` the classifier and the injection classifier are left out
    (patterns only: for tests and emergencies, not for production).
    """
    policy = policy or load_policy()
    checkers: list[Checker] = [PatternChecker(policy)]
    injection = InjectionDetector(threshold=policy.injection_threshold)
    if embedder is not None:
        models, _ = load_artifact(artifact or DEFAULT_ARTIFACT)
        if "harm" not in models:
            raise ConfigError("the safety artifact has no 'harm' model")
        checkers.append(ClassifierChecker(embedder, models["harm"], policy=policy))
        if "injection" in models:
            injection = InjectionDetector(
                embedder, models["injection"], threshold=policy.injection_threshold
            )
    if guard is not None:
        checkers.append(guard)
    return Boundary(checkers, policy=policy, injection=injection)


def artifact_info(artifact: Path | None = None) -> dict[str, Any]:
    """The metadata stored in the artifact (training sources, held-out figures, seed)."""
    _, meta = load_artifact(artifact or DEFAULT_ARTIFACT)
    return meta
