"""Preference-conditioned reward models: how well does a reply respect the user's preferences?

Interface: :class:`PreferenceRewardModel`. ``score(preferences, prompt, responses)`` returns
a float64 array ``(len(responses),)`` in [0, 1]: the estimated probability that each response
respects every preference (1 = compliant, 0 = violates), comparable across responses.

Implementations:

* :class:`CrossEncoderRewardModel` — all-MiniLM-L6-v2 fine-tuned with LoRA as a cross-encoder
  over (preference + prompt, response) pairs (:mod:`personalign.backends.finetuned`;
  torch-free onnxruntime at run time), trained offline by ``scripts/train_reward_model.py``
  (:mod:`personalign.training.reward_model`)
  (artifact ``rewards/artifacts/preference_rm.safetensors``).
* :class:`EnsembleRewardModel` — several models' mean log-odds. The shipped default
  (:func:`load_reward_model`) is the cross-encoder with the embedded feature model.
* :class:`EmbeddedRewardModel` — the earlier model: numpy only at run time, over
  all-MiniLM-L6-v2 embeddings of the preference's clauses and the response's sentences, with
  a small linear scorer (artifact ``rewards/artifacts/preference_rm.npz``). See its docstring
  for the features.
* :class:`JudgeRewardModel` — an LLM judge (any :class:`LanguageModel`, typically
  :class:`~personalign.backends.models.openai_compat.OpenAICompatLM`) with a violation
  prompt (:data:`JUDGE_TEMPLATE`, or PrefEval's ``check_violation.txt``): score 1 when the
  judge answers "No" (no violation), 0 for "Yes", NaN when the verdict cannot be parsed.
  :func:`judge_from_settings` builds the one ``settings.judge`` names; the chat pipeline then
  ranks best-of-N and reward-guided candidates with it instead of the embedded model.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from personalign.errors import ConfigError, ModelNotAvailableError, ValidationError
from personalign.rewards.base import (
    PreferenceRewardModel,
    check_inputs,
)
from personalign.rewards.cross_encoder import (  # noqa: F401  (re-exported)
    COMPLIANT,
    CROSS_ENCODER_ARTIFACT,
    QUANTIZE_CROSS_ENCODER,
    VIOLATING,
    CrossEncoderRewardModel,
    cross_encoder_input,
)
from personalign.rewards.lm_probe import LMProbeRewardModel
from personalign.text import split_sentences as text_split_sentences
from personalign.types import Message

if TYPE_CHECKING:
    from personalign.backends.embedders import Embedder
    from personalign.backends.models.base import GenerationOptions, LanguageModel
    from personalign.config import Settings


# -- LLM judge ---------------------------------------------------------------------------------

_ANSWER = re.compile(r"<answer>\s*\[?\s*(yes|no)\b", re.I)
_BARE = re.compile(r"^\W*(yes|no)\b", re.I)


def parse_verdict(text: str) -> bool | None:
    """The judge's Yes/No from ``<answer>Yes</answer>`` (or a reply starting with Yes/No);
    ``None`` when there is none."""
    m = _ANSWER.search(text) or _BARE.search(text.strip())
    return None if m is None else m.group(1).lower() == "yes"


JUDGE_TEMPLATE = """You check whether an assistant's reply goes against the user's stated
preference.

Answer "Yes" (a violation) when the reply recommends or does what the preference rules out,
without acknowledging the preference and without saying why.

Answer "No" when the reply respects the preference; when it acknowledges the preference and
explains how a conflicting suggestion fits it; or when nothing in it goes against the
preference.

User's preference: {preference}
User's question: {question}
Assistant's reply: {end_generation}

Answer in exactly this format:
<explanation>one short sentence</explanation>
<answer>Yes or No</answer>"""
"""The default judge prompt (PrefEval's violation criterion, in our words; its fields are
those of PrefEval's ``check_violation.txt``, which can be used instead)."""


JUDGE_MAX_CHARS = 8000
"""The judge reads the question and the reply up to this many characters each."""


class JudgeRewardModel:
    """An LLM judge with a violation prompt (:data:`JUDGE_TEMPLATE`, or PrefEval's
    ``check_violation.txt``).

    ``template`` has the fields ``{preference}``, ``{question}`` and ``{end_generation}``.
    Several preferences are joined with spaces into ``{preference}``.
    """

    def __init__(
        self,
        judge: LanguageModel,
        template: str,
        *,
        options: GenerationOptions | None = None,
    ) -> None:
        from personalign.backends.models.base import GenerationOptions

        for name in ("{preference}", "{question}", "{end_generation}"):
            if name not in template:
                raise ConfigError(f"judge template lacks the field {name}")
        self.judge = judge
        self.template = template
        self.options = options or GenerationOptions(max_new_tokens=200, temperature=0.0)

    @classmethod
    def from_prefeval(
        cls, judge: LanguageModel, prompts_dir: Path, *, options: GenerationOptions | None = None
    ) -> JudgeRewardModel:
        """Use ``<prompts_dir>/check_violation.txt`` (PrefEval's ``judge_prompts``)."""
        path = Path(prompts_dir) / "check_violation.txt"
        if not path.is_file():
            raise ConfigError(f"no judge prompt at {path}: pass PrefEval's judge_prompts folder")
        return cls(judge, path.read_text(), options=options)

    def prompt(self, preferences: Sequence[str], question: str, response: str) -> str:
        """The judge prompt for one response (``str.replace``, so braces in text are safe).

        Each field is :func:`~personalign.safety.injection.neutralize`-d first: stored
        preferences, the user's question and the reply are data to the judge, so none of them
        can close a tag of the template or forge an ``<answer>``."""
        from personalign.safety.injection import neutralize

        return (
            self.template.replace("{preference}", neutralize(" ".join(preferences)))
            .replace("{question}", neutralize(question, max_chars=JUDGE_MAX_CHARS))
            .replace("{end_generation}", neutralize(response, max_chars=JUDGE_MAX_CHARS))
        )

    def score(
        self, preferences: Sequence[str], prompt: str, responses: Sequence[str]
    ) -> np.ndarray:
        """1.0 for "no violation", 0.0 for "violation", NaN for an unparsable verdict."""
        prefs, resps = check_inputs(preferences, responses)
        if not prefs:
            return np.ones(len(resps))
        chats = [[Message(role="user", content=self.prompt(prefs, prompt, r))] for r in resps]
        replies = self.judge.generate_batch(chats, options=self.options)
        verdicts = [parse_verdict(g.text) for g in replies]
        return np.array([np.nan if v is None else float(not v) for v in verdicts])


def judge_from_settings(settings: Settings) -> JudgeRewardModel | None:
    """The LLM judge ``settings.judge`` names (None when none is set): its model loaded like
    the settings' ``model`` (``openai:<name>`` at ``judge.base_url``, default
    ``openai_base_url``), with ``judge.prompt``'s template or :data:`JUDGE_TEMPLATE`.
    Raises :class:`ConfigError` for a missing or malformed template file."""
    from personalign.backends.models import load_model
    from personalign.backends.models.base import GenerationOptions

    cfg = settings.judge
    if not cfg.model:
        return None
    template = JUDGE_TEMPLATE
    if cfg.prompt is not None:
        try:
            template = cfg.prompt.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"setting 'judge.prompt': cannot read {cfg.prompt}: {e}") from e
    from personalign.config import backend_auth

    base_url, api_key = backend_auth(settings, cfg.base_url, cfg.api_key)
    lm = load_model(
        settings.model_copy(
            update={"model": cfg.model, "openai_base_url": base_url, "openai_api_key": api_key}
        )
    )
    options = GenerationOptions(max_new_tokens=cfg.max_new_tokens, temperature=0.0)
    return JudgeRewardModel(lm, template, options=options)


# -- the embedded reward model -----------------------------------------------------------------

_NEG = re.compile(
    r"\b(avoid\w*|dislike\w*|hate\w*|despise\w*|detest\w*|loathe\w*|stand|fear\w*|phobia|"
    r"afraid|aversion|averse|allerg\w*|intoleran\w*|refus\w*|steer clear|stay away|never|not|"
    r"\w+n't|no longer|ineffective|boring|tedious|uncomfortable|against|limit\w*|reduce|"
    r"cut out|skip|without|free from|free of|rather not|opposed|tired of|turned off|annoy\w*|"
    r"frustrat\w*|overwhelm\w*|distract\w*|bother\w*|unable|cannot|no|too|sick of|struggle|"
    r"difficult|hard to|dread\w*|anxious|anxiety|nervous|wary|concern\w*|dizz\w*|nause\w*|"
    r"motion sickness|claustrophob\w*|uneasy)\b",
    re.I,
)
_SEP = re.compile(
    r"\s*(?:;|\.\s|:|,?\s+\b(?:so|but|because|since|while|whereas|due to|as I|as they|as it|"
    r"and prefer\w*|and instead|and would rather|and love|and enjoy|and like|and favor)\b|"
    r",\s*(?:preferring|opting|choosing|favoring|instead))\s*",
    re.I,
)
_CONTRAST = re.compile(r"\b(rather than|instead of|over)\b", re.I)
_WANTS = re.compile(r"prefer|rather|choose|opt|favor|love|like|enjoy", re.I)
_FILLER = re.compile(
    r"\b(i|i'm|i am|i've|i have|my|me|a|an|the|have|strong|strongly|absolutely|really|very|"
    r"deep|deeply|intense|severe|strictly|extremely|greatly|always|generally|usually|tend to|"
    r"try to|any|all|kind of|form of|type of|types of|find|feel|feels|get|gets|particularly|"
    r"especially|completely|totally|much|prefer\w*|love|like|enjoy|only|would|rather|fond of|"
    r"favor|want|to|of|for)\b",
    re.I,
)
_MARKED = re.compile(
    r"(\bfree\b|-free\b|\bwithout\b|\bno\b|\bnon-|\bavoid|\binstead\b|\bnot\b|n't\b)"
)
_STOP = frozenset(
    """
a an the and or of to in on for with at by from as is are was were be been being it its
this that these those i me my you your we our they their he she his her them do does did
not no nor but if then so than too very can could would should will just only also any all
some more most other such own same into over under about while during before after above
below up down out off again further once here there when where why how what which who
whom both each few many much per via use using used like prefer avoid dislike love enjoy
want strongly really absolutely have has had find get make try go take experience explore
visit consider
""".split()  # noqa: SIM905
)
_CONTENT = re.compile(r"[a-z][a-z'-]+")

FEATURE_NAMES: tuple[str, ...] = (
    "cos_pref",  # cosine(preference, response)
    "cos_prompt",  # cosine(prompt, response)
    "neg_clause",  # max cosine to an "avoid" clause of the preference
    "neg_object",  # ... to the clause's object (cue words removed)
    "pos_clause",  # max cosine to a "want" clause
    "pos_object",  # ... to its object
    "marked",  # the response has a negation / "-free" / "instead" marker (0/1)
    "marked_x_neg_object",
    "marked_x_neg_clause",
    "marked_x_cos_pref",
    "neg_word_max",  # max word-to-word cosine, response words vs avoided-object words
    "neg_word_recall",  # mean over avoided-object words of their best response-word cosine
    "neg_word_overlap",  # share of avoided-object words in the response (5-letter prefixes)
    "pos_word_max",
    "pos_word_recall",
    "pos_word_overlap",
    "marked_x_neg_word_max",
    "marked_x_neg_word_overlap",
)
"""The features of a (preference, prompt, response) triple, in the scorer's order."""

ARTIFACT = Path(__file__).with_name("artifacts") / "preference_rm.npz"


@dataclass(frozen=True)
class Clause:
    """A piece of a preference: ``polarity`` -1 (the user avoids ``obj``) or +1 (wants it)."""

    text: str
    obj: str
    polarity: int


def preference_clauses(preference: str) -> list[Clause]:
    """Split a preference into clauses and mark each as avoided (-1) or wanted (+1).

    Clauses split at ``;``, ``so``, ``but``, ``because``, ``and prefer``...; a clause with a
    negative cue (avoid, dislike, fear, allergic, not, ...) is avoided; in "prefer A over /
    rather than / instead of B", B is avoided. ``obj`` drops cue and filler words.
    """
    out: list[Clause] = []
    for part in _SEP.split(preference):
        part = (part or "").strip(" ,.\"'")
        if not part:
            continue
        m = _CONTRAST.search(part)
        pieces: list[tuple[str, int | None]] = [(part, None)]
        if m and _WANTS.search(part[: m.start()]):
            pieces = [(part[: m.start()], None), (part[m.end() :], -1)]
        for text, forced in pieces:
            negative = _NEG.search(text) or re.search(r"-free\b", text, re.I)
            polarity = forced if forced is not None else (-1 if negative else 1)
            obj = re.sub(r"\s+", " ", _FILLER.sub(" ", _NEG.sub(" ", text))).strip(" ,.")
            if obj:
                out.append(Clause(text.strip(), obj, polarity))
    return out


def content_words(text: str) -> list[str]:
    """Lower-cased content words (stop words and words under 3 letters dropped)."""
    return [w for w in _CONTENT.findall(text.lower()) if w not in _STOP and len(w) > 2]


def split_sentences(text: str, limit: int = 12) -> list[str]:
    """The response's sentences and lines (at most ``limit``, the first ones)."""
    parts = text_split_sentences(text, strip=" -*•\t")
    return [s for s in parts if len(content_words(s)) >= 2][:limit]


def _soft_match(resp: np.ndarray, obj: np.ndarray) -> tuple[float, float]:
    """(max, mean-over-object-words of the best match) of word cosines; (a, d), (b, d)."""
    if len(resp) == 0 or len(obj) == 0:
        return 0.0, 0.0
    sims = resp @ obj.T  # (a, b)
    return float(sims.max()), float(sims.max(axis=0).mean())


def _overlap(resp_words: Sequence[str], obj_words: Sequence[str]) -> float:
    if not obj_words:
        return 0.0
    prefixes = {w[:5] for w in resp_words}
    return sum(1 for w in obj_words if w[:5] in prefixes) / len(obj_words)


class _VectorCache:
    """Embeds texts once (preferences, words and options repeat)."""

    def __init__(self, embedder: Embedder, max_items: int = 200_000) -> None:
        self.embedder = embedder
        self.max_items = max_items
        self._vectors: dict[str, np.ndarray] = {}

    def add(self, texts: Sequence[str]) -> None:
        missing = list(dict.fromkeys(t for t in texts if t not in self._vectors))
        if not missing:
            return
        if len(self._vectors) + len(missing) > self.max_items:
            self._vectors.clear()
        for t, v in zip(missing, self.embedder.embed(missing), strict=True):
            self._vectors[t] = np.asarray(v, dtype=np.float32)

    def __getitem__(self, text: str) -> np.ndarray:
        return self._vectors[text]

    def stack(self, texts: Sequence[str], dim: int) -> np.ndarray:
        if not texts:
            return np.zeros((0, dim), dtype=np.float32)
        return np.stack([self._vectors[t] for t in texts])


def _texts_needed(preference: str, prompt: str, responses: Sequence[str]) -> list[str]:
    texts = [preference, prompt]
    for c in preference_clauses(preference):
        texts += [c.text, c.obj, *content_words(c.obj)]
    for r in responses:
        texts += [r, *split_sentences(r), *content_words(r)]
    return texts


def _features(cache: _VectorCache, dim: int, preference: str, prompt: str, text: str) -> np.ndarray:
    """The :data:`FEATURE_NAMES` vector (F,) of one (preference, prompt, text)."""
    r = cache[text]
    cos_pref, cos_prompt = float(cache[preference] @ r), float(cache[prompt] @ r)
    clauses = preference_clauses(preference)
    sims = {
        sign: [
            (float(cache[c.text] @ r), float(cache[c.obj] @ r))
            for c in clauses
            if c.polarity == sign
        ]
        for sign in (-1, 1)
    }
    neg_clause = max((a for a, _ in sims[-1]), default=0.0)
    neg_object = max((b for _, b in sims[-1]), default=0.0)
    pos_clause = max((a for a, _ in sims[1]), default=0.0)
    pos_object = max((b for _, b in sims[1]), default=0.0)
    marked = 1.0 if _MARKED.search(text) else 0.0
    words = content_words(text)
    resp_words = cache.stack(words, dim)  # (a, d)
    word_feats: list[float] = []
    for sign in (-1, 1):
        obj_words = [w for c in clauses if c.polarity == sign for w in content_words(c.obj)]
        best, recall = _soft_match(resp_words, cache.stack(obj_words, dim))
        word_feats += [best, recall, _overlap(words, obj_words)]
    return np.array(
        [
            cos_pref,
            cos_prompt,
            neg_clause,
            neg_object,
            pos_clause,
            pos_object,
            marked,
            marked * neg_object,
            marked * neg_clause,
            marked * cos_pref,
            *word_feats,
            marked * word_feats[0],
            marked * word_feats[2],
        ],
        dtype=np.float64,
    )


class EmbeddedRewardModel:
    """The default reward model: a linear scorer over :data:`FEATURE_NAMES` (MiniLM cosines
    between the response and the preference's avoided / wanted clauses, their objects and their
    words, with negation markers), squashed by a calibrated sigmoid.

    Scores are relative to the prompt itself scored as a response (a per-question baseline,
    which makes them comparable across questions). A multi-sentence response scores
    ``(z(whole) + min_s z(sentence)) / 2`` (one recommended item that violates the preference
    is enough to violate it); several preferences score the minimum over them. Runs on numpy
    plus the embedder; the weights are ``rewards/artifacts/preference_rm.npz``
    (``scripts/train_reward_model.py``).
    """

    def __init__(
        self,
        embedder: Embedder,
        weights: np.ndarray,
        *,
        bias: float = 0.0,
        scale: float = 1.0,
        meta: dict[str, object] | None = None,
    ) -> None:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (len(FEATURE_NAMES),):
            raise ValidationError(f"weights must have shape ({len(FEATURE_NAMES)},), got {w.shape}")
        self.embedder = embedder
        self.weights, self.bias, self.scale = w, float(bias), float(scale)
        self.meta = dict(meta or {})
        self._cache = _VectorCache(embedder)

    @classmethod
    def load(cls, embedder: Embedder, path: Path | None = None) -> EmbeddedRewardModel:
        """Load the trained scorer from ``path`` (default: the shipped artifact)."""
        path = Path(path or ARTIFACT)
        if not path.is_file():
            raise ModelNotAvailableError(
                f"no reward model at {path}: run scripts/train_reward_model.py"
            )
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            names = tuple(meta.get("features", ()))
            if names != FEATURE_NAMES:
                raise ModelNotAvailableError(
                    f"{path} was trained on other features: retrain it with "
                    "scripts/train_reward_model.py"
                )
            return cls(
                embedder,
                data["weights"],
                bias=float(data["bias"]),
                scale=float(data["scale"]),
                meta=meta,
            )

    @classmethod
    def embedded(cls, cache_dir: Path) -> EmbeddedRewardModel:
        """The shipped model over the MiniLM embedder in ``cache_dir``."""
        from personalign.backends.embedders import load_embedder

        return cls.load(load_embedder("minilm", cache_dir))

    def features(self, preference: str, prompt: str, texts: Sequence[str]) -> np.ndarray:
        """Feature rows ``(len(texts), F)`` of each text against one preference."""
        self._cache.add(_texts_needed(preference, prompt, texts))
        dim = int(self.embedder.dim)
        rows = [_features(self._cache, dim, preference, prompt, t) for t in texts]
        return np.stack(rows) if rows else np.zeros((0, len(FEATURE_NAMES)))

    def logits(self, preference: str, prompt: str, responses: Sequence[str]) -> np.ndarray:
        """Scores ``(len(responses),)`` against one preference, before calibration, relative
        to the score of the prompt itself taken as a response (a per-question baseline)."""
        self._cache.add(_texts_needed(preference, prompt, [*responses, prompt]))
        baseline = float(self.features(preference, prompt, [prompt])[0] @ self.weights)
        out = np.empty(len(responses))
        for i, response in enumerate(responses):
            whole = float(self.features(preference, prompt, [response])[0] @ self.weights)
            parts = split_sentences(response)
            if len(parts) > 1:
                worst = float((self.features(preference, prompt, parts) @ self.weights).min())
                whole = (whole + worst) / 2.0
            out[i] = whole - baseline
        return out

    def score(
        self, preferences: Sequence[str], prompt: str, responses: Sequence[str]
    ) -> np.ndarray:
        """Calibrated compliance in [0, 1], the minimum over ``preferences`` (1 if none)."""
        prefs, resps = check_inputs(preferences, responses)
        z = np.full(len(resps), np.inf)
        for p in prefs:
            z = np.minimum(z, self.logits(p, prompt, resps))
        if not prefs:
            return np.ones(len(resps))
        return 1.0 / (1.0 + np.exp(-(self.scale * z + self.bias)))


class EnsembleRewardModel:
    """Several reward models combined: the sigmoid of the ``weights``-weighted mean of their
    log-odds (a product of experts; equal weights by default). The cross-encoder and the
    embedded feature model err on different items, so together they rank better than either.
    """

    def __init__(
        self, models: Sequence[PreferenceRewardModel], weights: Sequence[float] | None = None
    ) -> None:
        if not models:
            raise ValidationError("an ensemble needs at least one reward model")
        w = np.ones(len(models)) if weights is None else np.asarray(weights, dtype=np.float64)
        if w.shape != (len(models),) or not np.all(np.isfinite(w)) or w.min() < 0 or w.sum() <= 0:
            raise ValidationError("ensemble weights: one finite weight >= 0 per model, sum > 0")
        self.models = list(models)
        self.weights = w / w.sum()

    def score(
        self, preferences: Sequence[str], prompt: str, responses: Sequence[str]
    ) -> np.ndarray:
        """Compliance in [0, 1] (1 with no preference)."""
        prefs, resps = check_inputs(preferences, responses)
        if not prefs:
            return np.ones(len(resps))
        z = np.zeros(len(resps))
        for w, model in zip(self.weights, self.models, strict=True):
            p = np.clip(np.asarray(model.score(preferences, prompt, responses)), 1e-6, 1 - 1e-6)
            z += w * np.log(p / (1 - p))
        return 1.0 / (1.0 + np.exp(-z))


def load_reward_model(
    cache_dir: Path, embedder: Embedder | None = None, lm: LanguageModel | None = None
) -> PreferenceRewardModel:
    """The shipped reward model: the cross-encoder and the embedded feature model over the
    MiniLM ``embedder`` as an :class:`EnsembleRewardModel` (the best by-topic CV figure,
    ``benchmarks/reward_model.py``); either alone when only it can run (no embedder given,
    or the cross-encoder's artifact or runtimes missing). Raises
    :class:`ModelNotAvailableError` when neither can.

    Opt-in: with ``lm`` the model the shipped LM probe was trained on (the embedded SmolLM2
    on the local backend), the probe over its hidden states joins the ensemble
    (:mod:`personalign.rewards.lm_probe`; by-topic CV 0.802 with it vs 0.777 without, no
    gain end to end, about 0.3 s more per 4 best-of-N candidates on one thread, so it is
    not the default)."""
    models: list[PreferenceRewardModel] = []
    error: ModelNotAvailableError | None = None
    try:
        models.append(CrossEncoderRewardModel.load(cache_dir))
    except ModelNotAvailableError as e:
        error = e
    if embedder is not None:
        models.append(EmbeddedRewardModel.load(embedder))
    if lm is not None and hasattr(lm, "hidden_states"):
        with contextlib.suppress(ModelNotAvailableError):  # the probe reads another model
            models.append(LMProbeRewardModel.load(lm))  # type: ignore[arg-type]
    if not models:
        assert error is not None
        raise error
    return models[0] if len(models) == 1 else EnsembleRewardModel(models)


def shipped_reward_model(cache_dir: Path) -> PreferenceRewardModel:
    """:func:`load_reward_model` over the MiniLM embedder in ``cache_dir`` (a module-level
    function, so ``functools.partial(shipped_reward_model, cache_dir)`` pickles for pool
    workers and Ray tasks)."""
    from personalign.backends.embedders import load_embedder

    return load_reward_model(cache_dir, load_embedder("minilm", cache_dir))
