"""Admission checkers: every candidate preference is checked before it is stored.

Interface: :class:`Checker` (``check(texts) -> list[Verdict]``, batched, one verdict per text
in order). Implementations:

* :class:`PatternChecker` — the policy's per-category regular expressions (high precision).
* :class:`FinetunedChecker` — the boundary's classifier: all-MiniLM-L6-v2 fine-tuned with
  LoRA as one sequence classifier over the labels ``benign``, ``injection`` and the policy
  categories (``artifacts/boundary_minilm_lora.safetensors``, trained by
  ``scripts/train_boundary.py``; run with onnxruntime, see
  :mod:`personalign.backends.finetuned`). It also scores prompt injection, so one model run
  per text gives both the harm verdict and the injection flag.
* :class:`ClassifierChecker` — the earlier embedded classifier: a numpy model over the texts'
  frozen sentence embeddings (``artifacts/boundary_minilm.npz``). Used when the fine-tuned
  artifact is absent, and as the baseline in ``benchmarks/boundary.py``.
* :class:`~personalign.safety.guard.OpenAIGuardChecker` — an optional guard model
  (Llama-Guard style) behind an OpenAI-compatible server.
* :class:`Boundary` — runs several checkers in order (the first refusal wins) and adds the
  injection flag from an :class:`~personalign.safety.injection.InjectionDetector`. A last
  checker with a ``band`` (a guard configured with ``[guard] band``) is the second look of a
  two-stage gate: it decides, both ways, only the texts whose classifier score lies within
  ``band`` of the threshold it was compared with (:attr:`Verdict.threshold`).

:func:`load_boundary` builds the default: patterns, then the fine-tuned classifier (or the
embedded one), then (if given) a guard, with injection detection sharing the classifier's run.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from personalign.backends.embedders import Embedder, MiniLMEmbedder
from personalign.backends.finetuned import FinetunedClassifier, TextClassifier
from personalign.errors import ConfigError, RefusedError
from personalign.safety.classifier import EmbeddingClassifier, load_artifact
from personalign.safety.gate import apply_second_look, second_look_of
from personalign.safety.injection import INJECTION_FLAG, InjectionDetector
from personalign.safety.policy import Policy, load_policy
from personalign.safety.scoring import (
    PREFERENCE,
    REQUEST,
    admit_verdict,
    harm_indices,
    refuse_verdict,
    verdicts_from_probs,
)
from personalign.safety.verdict import Verdict
from personalign.types import check_texts

DEFAULT_ARTIFACT = Path(__file__).with_name("artifacts") / "boundary_minilm.npz"
#: The fine-tuned boundary classifier (MiniLM + LoRA; labels benign, injection, categories).
DEFAULT_FINETUNED = Path(__file__).with_name("artifacts") / "boundary_minilm_lora.safetensors"
BENIGN = "benign"
#: The artifact's injection model over int8 MiniLM vectors, run beside the fine-tuned model.
FAST_INJECTION = "injection_fast"
#: The fine-tuned classifier's prompt-injection label (flags, never refuses).
INJECTION_LABEL = "injection"


@runtime_checkable
class Checker(Protocol):
    """Checks candidate preferences. ``check`` returns one :class:`Verdict` per text, in order."""

    name: str

    def check(self, texts: Sequence[str]) -> list[Verdict]:
        """Return one verdict per text."""
        ...


class PatternChecker:
    """Refuses texts that match an enabled category's patterns (score 1.0)."""

    name = "patterns"

    def __init__(self, policy: Policy | None = None) -> None:
        """Use ``policy`` (the packaged policy by default)."""
        self.policy = policy or load_policy()

    def check(self, texts: Sequence[str]) -> list[Verdict]:
        """One verdict per text: refused on the first matching category, else admitted."""
        out = []
        for text in check_texts(texts, what="check()"):
            verdict = admit_verdict(self.name, self.policy)
            for cat in self.policy.enabled():
                hit = cat.match(text)
                if hit is not None:
                    verdict = refuse_verdict(
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
        self._harm_idx = harm_indices(model.classes, self.policy)

    def check(self, texts: Sequence[str], *, decision: str = PREFERENCE) -> list[Verdict]:
        """One verdict per text (one batched embedding call) for ``decision``."""
        items = check_texts(texts, what="check()")
        if not items:
            return []
        return self.check_vectors(self.embedder.embed(items), decision=decision)

    def check_vectors(self, vectors: np.ndarray, *, decision: str = PREFERENCE) -> list[Verdict]:
        """Verdicts from precomputed embeddings (rows in the order of the texts)."""
        return verdicts_from_probs(
            self.name,
            self.policy,
            self.model.predict_proba(vectors),
            self.model.classes,
            self._harm_idx,
            decision=decision,
            calibrated=self.model.meta.get("thresholds"),
        )


class FinetunedChecker:
    """The fine-tuned boundary classifier (see the module doc).

    Harm score = the summed probability of the enabled categories; refused when it reaches the
    decision's threshold: the one calibrated on whole-source hold-out scores when the artifact
    records it (never laxer than an always-on category's policy threshold), else the most
    likely category's policy threshold. :meth:`injection_scores` is p(``injection``), the
    scorer of the boundary's :class:`InjectionDetector`.
    """

    name = "classifier"

    def __init__(
        self, model: TextClassifier, *, policy: Policy | None = None, decides_harm: bool = True
    ) -> None:
        """Check that ``model`` has a ``benign`` label. ``decides_harm=False``: it never
        refuses (its harm score is kept in the verdict), it scores injection only (when the
        broad embedded harm model decides, see :func:`load_boundary`)."""
        self.model = model
        self.decides_harm = decides_harm
        self.policy = policy or load_policy()
        self.classes = model.labels
        if BENIGN not in self.classes:
            raise ConfigError("the fine-tuned safety classifier has no 'benign' label")
        self._harm_idx = harm_indices(self.classes, self.policy)
        self._inj = self.classes.index(INJECTION_LABEL) if INJECTION_LABEL in self.classes else None
        meta = getattr(model, "meta", None) or {}
        #: each decision's threshold as calibrated on whole-source hold-out scores at training
        #: time (the artifact's ``thresholds``); None: the policy's thresholds
        self.thresholds: dict[str, float] | None = (
            {str(k): float(v) for k, v in meta["thresholds"].items()}
            if isinstance(meta.get("thresholds"), dict)
            else None
        )

    @property
    def scores_injection(self) -> bool:
        """Whether the model has an ``injection`` label."""
        return self._inj is not None

    def probs(self, texts: Sequence[str]) -> np.ndarray:
        """Class probabilities, one row per text (one batched model run)."""
        return self.model.predict_proba(check_texts(texts, what="check()"))

    def check(self, texts: Sequence[str], *, decision: str = PREFERENCE) -> list[Verdict]:
        """One verdict per text."""
        items = check_texts(texts, what="check()")
        return self.check_probs(self.model.predict_proba(items), decision=decision) if items else []

    def check_probs(self, probs: np.ndarray, *, decision: str = PREFERENCE) -> list[Verdict]:
        """Verdicts from precomputed :meth:`probs` rows."""
        return verdicts_from_probs(
            self.name,
            self.policy,
            probs,
            self.classes,
            self._harm_idx,
            decision=decision,
            decides=self.decides_harm,
            calibrated=self.thresholds,
        )

    def injection_column(self, probs: np.ndarray) -> np.ndarray:
        """p(injection) from :meth:`probs` rows (zeros without an ``injection`` label)."""
        if self._inj is None:
            return np.zeros(len(probs), dtype=np.float32)
        out: np.ndarray = probs[:, self._inj].astype(np.float32)
        return out

    def injection_scores(self, texts: list[str]) -> np.ndarray:
        """p(injection) per text."""
        return self.injection_column(self.probs(texts)) if texts else np.zeros(0, np.float32)


def _embed_split(
    embedder: Embedder, items: list[str], extra: list[str]
) -> tuple[np.ndarray, np.ndarray | None]:
    """Embed ``items`` then ``extra`` (their sentences) in one batch: (item vectors, sentence
    vectors or None when there are none)."""
    both = embedder.embed(items + extra)
    return both[: len(items)], (both[len(items) :] if extra else None)


class Boundary:
    """Runs checkers in order, the first refusal wins; adds the ``injection`` flag.

    A checker only sees the texts that every earlier checker admitted. When the injection
    detector shares the classifier's embedder, each text is embedded once; when it embeds
    with its own model beside the fine-tuned classifier, the two models run at the same time
    (onnxruntime releases the GIL: on two cores a check costs the slower model, not both).
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
        self._side: ThreadPoolExecutor | None = None
        self._side_pid = 0  # a forked child needs its own worker thread

    def screen(self, texts: Sequence[str]) -> list[Verdict]:
        """Requests to answer: :meth:`check` with the request thresholds (a request that only
        mentions a sensitive subject is answered; intent to harm is refused)."""
        return self.check(texts, decision=REQUEST)

    def check(self, texts: Sequence[str], *, decision: str = PREFERENCE) -> list[Verdict]:
        """One verdict per text: admitted only when every checker admits it. ``decision``:
        :data:`PREFERENCE` (storing a preference, the default) or :data:`REQUEST`."""
        items = check_texts(texts, what="check()")
        shares = self._detector_shares_embedder()
        # the embedded classifier's vectors: beside the fine-tuned run when there is one
        beside = self._finetuned() is not None and self._classifier() is not None and items
        shared = self._pool().submit(self._shared_vectors, items, with_segments=shares)
        if not beside:
            shared.result()
        # the injection model's vectors: the classifier's when it shares that embedder, else
        # its own (embedded beside the fine-tuned model, or by the detector itself)
        pending_vectors = None if shares else self._injection_vectors(items)
        try:
            probs, inj_scores = self._shared_probs(items)
        finally:
            vectors, segment_vectors = shared.result()
            det_vectors, det_segments = (vectors, segment_vectors) if shares else (None, None)
            if pending_vectors is not None:
                det_vectors, det_segments = pending_vectors.result()
        verdicts: list[Verdict | None] = [None] * len(items)
        best: list[Verdict | None] = [None] * len(items)
        pending = list(range(len(items)))
        second = second_look_of(self.checkers)
        for checker in self.checkers:
            if not pending or checker is second:
                break
            if vectors is not None and isinstance(checker, ClassifierChecker):
                results = checker.check_vectors(vectors[pending], decision=decision)
            elif probs is not None and isinstance(checker, FinetunedChecker):
                results = checker.check_probs(probs[pending], decision=decision)
            elif isinstance(checker, ClassifierChecker | FinetunedChecker):
                results = checker.check([items[i] for i in pending], decision=decision)
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
        if second is not None:
            pending = apply_second_look(second, items, verdicts, best, pending)
        for i in pending:
            top = best[i]
            verdicts[i] = (
                top.model_copy(update={"checker": self.name})
                if top is not None
                else admit_verdict(self.name, self.policy)
            )
        if self.injection is not None:
            flags = self.injection.detect(items, det_vectors, det_segments, scores=inj_scores)
            for i, res in enumerate(flags):
                current = verdicts[i]
                if res.flagged and current is not None:
                    verdicts[i] = current.model_copy(
                        update={"flags": (*current.flags, INJECTION_FLAG)}
                    )
        return [v for v in verdicts if v is not None]

    def _classifier(self) -> ClassifierChecker | None:
        return next((c for c in self.checkers if isinstance(c, ClassifierChecker)), None)

    def _detector_shares_embedder(self) -> bool:
        """Whether the injection model reads the embedded classifier's vectors."""
        clf = self._classifier()
        det = self.injection
        return clf is not None and det is not None and det.embedder is clf.embedder

    def _shared_vectors(
        self, items: list[str], *, with_segments: bool
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Embed once (texts and, ``with_segments`` (the injection detector reads these
        vectors), their sentences) in a single batch.

        Returns (text vectors, sentence vectors); ``(None, None)`` without a classifier.
        """
        clf = self._classifier()
        if clf is None or not items:
            return None, None
        extra: list[str] = []
        if with_segments and self.injection is not None:
            extra, _ = self.injection.segments_to_embed(items)
        return _embed_split(clf.embedder, items, extra)

    def _injection_vectors(
        self, items: list[str]
    ) -> Future[tuple[np.ndarray, np.ndarray | None]] | None:
        """Start embedding ``items`` and their sentences for the injection detector's own
        model in a worker thread, while the fine-tuned classifier runs; None when there is
        nothing to overlap."""
        det = self.injection
        if det is None or det.embedder is None or det.model is None or not items:
            return None
        if not any(isinstance(c, FinetunedChecker) for c in self.checkers):
            return None
        extra, _ = det.segments_to_embed(items)
        return self._pool().submit(_embed_split, det.embedder, items, extra)

    def _pool(self) -> ThreadPoolExecutor:
        if self._side is None or self._side_pid != os.getpid():
            self._side = ThreadPoolExecutor(max_workers=2, thread_name_prefix="boundary")
            self._side_pid = os.getpid()
        return self._side

    def _finetuned(self) -> FinetunedChecker | None:
        return next((c for c in self.checkers if isinstance(c, FinetunedChecker)), None)

    def _shared_probs(self, items: list[str]) -> tuple[np.ndarray | None, np.ndarray | None]:
        """One fine-tuned run over the texts (and, when the injection detector scores with the
        same model, their sentences): (class probabilities of the texts, injection scores of
        the texts then sentences); ``(None, None)`` without a fine-tuned checker."""
        ft = next((c for c in self.checkers if isinstance(c, FinetunedChecker)), None)
        if ft is None or not items:
            return None, None
        scorer = self.injection.scorer if self.injection is not None else None
        shared = getattr(scorer, "__self__", None) is ft
        extra: list[str] = []
        if shared and self.injection is not None:
            extra, _ = self.injection.segments_to_embed(items)
        probs = ft.probs(items + extra)
        return probs[: len(items)], (ft.injection_column(probs) if shared else None)

    def admit(self, text: str) -> Verdict:
        """Check one text; raise :class:`RefusedError` (with the verdict) when it is refused."""
        verdict = self.check([text])[0]
        if not verdict.admitted:
            raise RefusedError(verdict.user_message or verdict.reason, verdict)
        return verdict


def injection_embedder(embedder: Embedder, model: EmbeddingClassifier | None) -> Embedder | None:
    """The embedder whose vectors the numpy injection ``model`` was trained on: ``embedder``
    itself, or the int8-quantized variant of a :class:`MiniLMEmbedder` (a second, faster
    session of the same model, on one thread: it runs beside the fine-tuned classifier; only
    when its export is cached or can be made, i.e. torch and onnx are installed); None without
    a model or when neither fits."""
    if model is None:
        return None
    wanted = model.meta.get("embedder", embedder.name)
    if wanted == embedder.name:
        return embedder
    if (
        isinstance(embedder, MiniLMEmbedder)
        and not embedder.quantize
        and wanted == embedder.name + MiniLMEmbedder.INT8_SUFFIX
    ):
        fast = MiniLMEmbedder(
            embedder.cache_dir,
            batch_size=embedder.batch_size,
            max_length=embedder.max_length,
            num_threads=1,
            quantize=True,
        )
        if fast.onnx_path.is_file() or all(find_spec(m) for m in ("torch", "onnx")):
            return fast
    return None


def load_boundary(
    embedder: Embedder | None,
    *,
    policy: Policy | None = None,
    artifact: Path | None = None,
    guard: Checker | None = None,
    finetuned: Path | bool = True,
    cache_dir: Path | None = None,
    num_threads: int | None = None,
    quantize: bool = True,
    injection_embedding: bool = False,
    broad: bool = False,
) -> Boundary:
    """The default boundary: patterns, the classifier, then ``guard`` if given.

    The classifier is the fine-tuned one (``finetuned``: its artifact, default
    :data:`DEFAULT_FINETUNED`, used when the file exists; ``False``: never), scoring harm and
    injection in one run, exported to ONNX on first use into ``cache_dir`` (default: the
    embedder's, else the settings'); ``num_threads``: its onnxruntime threads (default up to
    2); ``quantize``: run its dynamically int8-quantized export (default; about 3x faster,
    the figures in ``benchmarks/boundary.py`` are measured that way). Otherwise the embedded
    numpy classifiers of ``artifact`` over ``embedder``'s vectors. With the fine-tuned
    classifier, injection is scored by it alone (default: with the classifier retrained on
    every source, it flags 3% of users' answer-style wishes and 6% of clean emails, detecting
    0.82 of attacks), or with ``injection_embedding=True`` by both it and a numpy injection
    model, taking the larger score (detects 0.94, but flags 43% of answer-style wishes and 22%
    of clean emails; one more model run per check, beside the fine-tuned one: the artifact's
    :data:`FAST_INJECTION` model over the int8 MiniLM when ``embedder`` is MiniLM; left out
    when no embedder fits; see :func:`injection_embedder`). ``broad=True``: ``artifact``'s
    harm model (the broad one, :func:`is_broad`, thresholds calibrated on held-out sources)
    decides harm instead, over ``embedder``'s vectors embedded beside the fine-tuned run; the
    fine-tuned classifier and the numpy injection as above. With ``embedder=None`` both
    classifiers are left out (patterns only: for tests and emergencies, not for production).
    """
    policy = policy or load_policy()
    checkers: list[Checker] = [PatternChecker(policy)]
    injection = InjectionDetector(threshold=policy.injection_threshold)
    ft_path = DEFAULT_FINETUNED if finetuned is True else (finetuned or None)
    use_ft = ft_path is not None and (finetuned is not True or ft_path.is_file())
    models = load_artifact(artifact or DEFAULT_ARTIFACT)[0] if embedder is not None else {}
    harm = models.get("harm")
    ft_cache = Path()
    if use_ft and embedder is not None:
        ft_cache = cache_dir or getattr(embedder, "cache_dir", None) or _settings_cache()
    if broad and embedder is not None and harm is not None and is_broad(harm, embedder):
        # the broad harm model decides (its thresholds calibrated on held-out sources); the
        # fine-tuned classifier, when there, only scores injection beside the embedded one
        checkers.append(ClassifierChecker(embedder, harm, policy=policy))
        scorer = None
        if use_ft and ft_path is not None:
            ft = FinetunedChecker(
                FinetunedClassifier.load(
                    Path(ft_path), ft_cache, num_threads=num_threads, quantize=quantize
                ),
                policy=policy,
                decides_harm=False,
            )
            checkers.append(ft)
            scorer = ft.injection_scores if ft.scores_injection else None
        inj, inj_embedder = None, None
        if scorer is None:  # no fine-tuned run to overlap: the float32 model, shared vectors
            inj = models.get("injection")
            inj_embedder = injection_embedder(embedder, inj)
        elif injection_embedding:
            inj, inj_embedder = _pick_injection(models, embedder)
        injection = InjectionDetector(
            inj_embedder,
            inj if inj_embedder is not None else None,
            threshold=policy.injection_threshold,
            scorer=scorer,
        )
    elif embedder is not None and use_ft and ft_path is not None:
        ft = FinetunedChecker(
            FinetunedClassifier.load(
                Path(ft_path), ft_cache, num_threads=num_threads, quantize=quantize
            ),
            policy=policy,
        )
        checkers.append(ft)
        inj_model, inj_embedder = (
            _pick_injection(models, embedder) if injection_embedding else (None, None)
        )
        injection = InjectionDetector(
            inj_embedder,
            inj_model,
            threshold=policy.injection_threshold,
            scorer=ft.injection_scores if ft.scores_injection else None,
        )
    elif embedder is not None:
        if "harm" not in models:
            raise ConfigError("the safety artifact has no 'harm' model")
        checkers.append(ClassifierChecker(embedder, models["harm"], policy=policy))
        inj_embedder = injection_embedder(embedder, models.get("injection"))
        if inj_embedder is not None:
            injection = InjectionDetector(
                inj_embedder, models["injection"], threshold=policy.injection_threshold
            )
    if guard is not None:
        checkers.append(guard)
    return Boundary(checkers, policy=policy, injection=injection)


def _pick_injection(
    models: dict[str, EmbeddingClassifier], embedder: Embedder
) -> tuple[EmbeddingClassifier | None, Embedder | None]:
    """The numpy injection model run beside the fine-tuned classifier and its embedder: the
    fast variant (int8 MiniLM vectors) where it fits, else the float32 one; (None, None) when
    neither fits (they read MiniLM vectors only: with other embedders the fine-tuned model
    suffices)."""
    for key in (FAST_INJECTION, "injection"):
        model = models.get(key)
        inj_embedder = injection_embedder(embedder, model)
        if model is not None and inj_embedder is not None:
            return model, inj_embedder
    return None, None


def is_broad(model: EmbeddingClassifier, embedder: Embedder) -> bool:
    """Whether ``model`` is the broad harm model (calibrated thresholds recorded, trained by
    :func:`personalign.training.boundary.train_broad_harm`) over ``embedder``'s vectors."""
    return "thresholds" in model.meta and model.meta.get("embedder") == embedder.name


def _settings_cache() -> Path:
    from personalign.config import load_settings

    return load_settings().cache_dir


def artifact_info(artifact: Path | None = None) -> dict[str, Any]:
    """The metadata stored in the artifact (training sources, held-out figures, seed)."""
    _, meta = load_artifact(artifact or DEFAULT_ARTIFACT)
    return meta
