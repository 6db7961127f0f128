"""The parts of a request that :class:`~personalign.pipeline.Personalizer` composes: the
methods, the per-request :class:`PersonalizeOptions`, the :class:`Reply`, the
:class:`RequestPlan`, :func:`open_guarded_memory` (the memory every front end uses) and the
small helpers the pipeline calls.

:mod:`personalign.pipeline` re-exports every public name here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_args

from personalign.backends.models.base import Generation, GenerationOptions
from personalign.config import Settings, load_settings
from personalign.constraints import Constraint, ConstraintSet
from personalign.errors import ValidationError
from personalign.generation.enforce import Finished, StylePlan, constraint_report, pick
from personalign.generation.usage import Usage
from personalign.memory import Memory, open_memory
from personalign.types import (
    Exchange,
    Message,
    Preference,
    SearchHit,
    UsedPreference,
    check_text,
    check_user,
)

if TYPE_CHECKING:
    from personalign.backends.embedders import Embedder
    from personalign.memory.extract import Extractor
    from personalign.memory.scope import Scope
    from personalign.safety.checkers import Checker

Method = Literal[
    "plain", "prompt", "contrastive", "mod", "best_of_n", "reward_guided", "soup", "steering"
]
METHODS: tuple[Method, ...] = get_args(Method)
"""``plain``: no memory. ``prompt``: the memory block in the system prompt. ``soup``: the
prompt, answered by the dimension experts merged by the user's style weights into one adapter
(parameter depth, :mod:`personalign.generation.soups`). ``steering``: the prompt, answered with
the dimension steering vectors added by the user's style weights (activation depth,
:mod:`personalign.generation.steering`). The others are decoding-time methods over the prompt
(:mod:`personalign.generation.decoding`)."""

SAFETY_FLOOR = 0.25
"""The least weight the safety objective keeps in every mixing method, whatever the user's
weights (``rewards.weights.normalize_weights``)."""
SAFETY_PROMPT = (
    "You are a helpful assistant. Be safe and honest: refuse to help with anything harmful, "
    "whatever any stored preference says."
)

REFUSAL = (
    "I can't help with that. It falls outside what I can assist with, whatever the "
    "preferences on record say."
)


def open_guarded_memory(
    settings: Settings | None = None,
    embedder: Embedder | None = None,
    *,
    extractor: Extractor | None = None,
    checker: Checker | None = None,
) -> Memory:
    """The memory every front end uses: its store wrapped so that every write passes the
    safety boundary (:class:`~personalign.safety.admission.GuardedStore`).

    ``checker`` defaults to :func:`~personalign.safety.load_boundary` over the embedder: the
    fine-tuned classifier (its own model, whatever the embedder) and injection detection
    (with the numpy injection model beside it when the embedder is MiniLM); patterns only
    with the hashing test embedder (fast tests, never production); then the guard model of
    ``settings.guard`` when one is set (:func:`~personalign.safety.guard_from_settings`).
    The store's embedder is wrapped by :func:`~personalign.backends.embed_batch.query_embedder`
    (``[service]``: a query cache, optional micro-batching).
    """
    from personalign.backends.embed_batch import query_embedder
    from personalign.backends.embedders import HashingEmbedder, load_embedder
    from personalign.safety import guard_from_settings, load_boundary
    from personalign.safety.admission import GuardedStore

    settings = settings or load_settings()
    embedder = embedder or load_embedder(settings.embedder, settings.cache_dir)
    if checker is None:
        hashing = settings.embedder == "hashing" or isinstance(embedder, HashingEmbedder)
        checker = load_boundary(
            None if hashing else embedder,
            cache_dir=settings.cache_dir,
            guard=guard_from_settings(settings),
        )
    # the store (search, topics, contexts) embeds queries through the [service] cache/batcher
    plain = open_memory(settings, query_embedder(embedder, settings.service), extractor=extractor)
    return Memory(GuardedStore(plain.store, checker), settings, plain.extractor)


@dataclass(frozen=True)
class PersonalizeOptions:
    """Per-request personalization settings.

    ``method``: ``plain`` (no memory), ``prompt`` (memory block in the system prompt), or a
    decoding-time method over the prompt. The default, ``best_of_n`` (``n`` replies sampled
    in one batch beside the plain reply; the reply that passes the quality floor and the
    user's constraints is kept, the preference reward model breaking ties), is the best
    measured by ``benchmarks/decoding.py`` (PrefEval MCQ end to end) and
    ``benchmarks/verifiable_preferences.py`` (rule-checked compliance). ``n`` = 3 keeps its
    latency within 1.5x plain (4 measured 1.65x, 3 1.46x, same dev cases and seed).
    ``k``: how many memories to retrieve. A retrieved preference reaches the model when its
    cosine similarity to the message is at least ``min_score``, when it shares the message's
    topic, or when it is about how answers should be written (topic ``communication``); a raw
    turn (episode) only when its cosine is at least ``episode_min_score``.
    ``ingest``: store the user's turn in memory after the reply. ``strength``: the decoding
    method's strength (contrastive's alpha, MOD's amplification, reward-guided's weight).
    """

    method: Method = "best_of_n"
    strength: float = 1.0
    n: int = 3
    k: int = 8
    min_score: float = 0.15
    episode_min_score: float = 0.5
    ingest: bool = True
    generation: GenerationOptions = field(default_factory=GenerationOptions)
    constraints: tuple[Constraint, ...] = ()
    """The request's own constraints (an API's ``response_format``: JSON), over the user's
    and whatever the method (``plain`` too): in the prompt's requirements, checked when the
    reply is picked, and repaired."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "constraints", tuple(self.constraints))
        if any(not isinstance(c, Constraint) for c in self.constraints):
            raise ValidationError(f"constraints must be Constraint items: {self.constraints!r}")
        if self.method not in METHODS:
            raise ValidationError(f"method must be one of {METHODS}, got {self.method!r}")
        if not 1 <= self.n <= 16:
            raise ValidationError(f"n must be in 1..16, got {self.n}")
        if not 1 <= self.k <= 50:
            raise ValidationError(f"k must be in 1..50, got {self.k}")


ALWAYS_TOPICS = frozenset({"communication"})
"""Preference topics that apply to every answer (tone, format, length, language)."""


@dataclass(frozen=True)
class Reply:
    """A personalized reply and everything that shaped it (see :class:`Exchange`)."""

    text: str
    exchange: Exchange
    finish_reason: str = "stop"
    """``length`` when the token budget (``max_new_tokens``) cut the reply, ``content_filter``
    when the boundary refused the request (no model call), else ``stop``."""
    usage: Usage = field(default_factory=Usage)
    """Token counts (:func:`personalign.generation.usage.count_usage`); zero for a refusal."""

    @property
    def preferences(self) -> list[UsedPreference]:
        return self.exchange.preferences


def _context(rec: Preference) -> str | None:
    from personalign.constraints.context import context_of

    return None if rec.kind == "episode" else context_of(rec.meta, text=rec.text)


def _used(hits: Sequence[SearchHit]) -> list[UsedPreference]:
    return [
        UsedPreference(
            id=h.record.id,
            text=h.record.text,
            kind=h.record.kind,
            score=h.score,
            matched=h.matched,
            source_turn_ids=h.record.source_turn_ids,
            context=_context(h.record),
        )
        for h in hits
    ]


def used_preferences(hits: Sequence[SearchHit], plan: RequestPlan | None) -> list[UsedPreference]:
    """/why's preferences: the retrieved ones, then those that only gave constraints."""
    return _used(hits) + [
        UsedPreference(
            id=r.id,
            text=r.text,
            kind=r.kind,
            score=1.0,
            matched=["constraint"],
            source_turn_ids=r.source_turn_ids,
            context=_context(r),
        )
        for r in (plan.constraint_records if plan is not None else [])
    ]


def request_scope(personalizer: Any, message: str, *, user: str) -> Scope:
    """Which of ``user``'s preferences apply to ``message`` (see
    :mod:`personalign.memory.scope`); the personalizer keeps one context matcher."""
    from personalign.memory.scope import ContextMatcher, scope_for

    if personalizer._contexts is None:
        embedder = getattr(personalizer.memory.store, "embedder", None)
        personalizer._contexts = ContextMatcher(embedder, personalizer.memory.settings.contexts)
    return scope_for(personalizer.memory.store, message, user=user, matcher=personalizer._contexts)


def _reward_model_name(model: object) -> str:
    """How /why names a reward model: the judge's model, else the class (and its parts)."""
    judge = getattr(model, "judge", None)
    if judge is not None:
        return f"judge {getattr(judge, 'name', type(judge).__name__)}"
    parts = getattr(model, "models", None)
    if parts:
        return " + ".join(type(m).__name__ for m in parts)
    return type(model).__name__


def _as_history(message: str | Sequence[Message]) -> list[Message]:
    if isinstance(message, str):
        return [Message(role="user", content=check_text(message, what="message"))]
    return list(message)


def _gen_dict(g: GenerationOptions) -> dict[str, object]:
    return {
        "max_new_tokens": g.max_new_tokens,
        "temperature": g.temperature,
        "top_p": g.top_p,
        "seed": g.seed,
        **({"steering": dict(g.steering)} if g.steering else {}),
    }


def _render(records: Sequence[object]) -> str:
    from personalign.safety.injection import render_memories_block

    return render_memories_block(records)


REQUIREMENTS_HEADER = (
    "Requirements for this answer (set by the system from the user's settings; follow them):"
)


@dataclass(frozen=True)
class RequestPlan:
    """What shapes one reply (see :meth:`Personalizer.plan`). ``constraint_records``: the
    preferences that gave constraints and were not among the retrieved ``hits``; ``scope``:
    the contexts met and the preferences held back (:meth:`Scope.report`); ``epoch``: the
    user's :meth:`IngestionQueue.epoch` when planning began."""

    messages: list[Message]
    hits: list[SearchHit]
    retrieval_ms: float
    constraints: ConstraintSet
    style: StylePlan
    sources: dict[str, list[str]]
    constraint_records: list[Preference]
    scope: dict[str, Any] = field(default_factory=dict)
    epoch: int = 0


def check_turns(history: Sequence[Message], user: str) -> list[Message]:
    """The conversation of a request, checked: a valid user id, ending with a user message
    whose text is acceptable (:class:`ValidationError` otherwise)."""
    check_user(user)
    turns = list(history)
    if not turns or turns[-1].role != "user":
        raise ValidationError("the conversation must end with a user message")
    check_text(turns[-1].content, what="message")
    return turns


_DIMENSION_PROMPTS = {
    "conciseness": ("Answer briefly.", "Answer in detail."),
    "structure": ("Organize the answer as a list.", "Answer in plain paragraphs."),
    "formality": ("Use a formal tone.", "Use a casual tone."),
    "warmth": ("Be warm and friendly.", "Be matter-of-fact."),
    "readability": ("Use short, simple sentences.", "Use precise, technical language."),
}


def signed_style(weights: Mapping[str, float]) -> dict[str, float]:
    """Style weights in [0, 1] (0.5 neutral) -> signed dimension weights in [-1, 1] for the
    experts and steering: ``2w - 1`` for each dimension the user leans on (weight >= HIGH or
    <= LOW, as :func:`_dimension_lines`), the others left out."""
    from personalign.generation.enforce import HIGH, LOW
    from personalign.rewards.dimensions import DIMENSION_NAMES

    return {
        d: round(2.0 * w - 1.0, 2)
        for d, w in weights.items()
        if d in DIMENSION_NAMES and (w >= HIGH or w <= LOW)
    }


def _dimension_lines(plan: StylePlan) -> dict[str, str]:
    """MOD's per-dimension objectives: one instruction for each dimension the user leans on
    (weight >= HIGH: more of it; <= LOW: less)."""
    from personalign.generation.enforce import HIGH, LOW

    out = {}
    for dim, w in plan.weights.items():
        if dim in _DIMENSION_PROMPTS and (w >= HIGH or w <= LOW):
            out[dim] = _DIMENSION_PROMPTS[dim][0 if w >= HIGH else 1]
    return out


def _style_reward(text: str, weights: dict[str, float]) -> float:
    """The user's weighted dimension reward of ``text`` (0 when no weight is set)."""
    from personalign.rewards.dimensions import DIMENSION_NAMES, weighted_reward

    w: dict[str, float] = {k: v for k, v in weights.items() if k in DIMENSION_NAMES and v > 0}
    return weighted_reward(text, w) if w else 0.0


def with_style(
    rewards: Sequence[float] | None, candidates: Sequence[str], weights: dict[str, float]
) -> list[float] | None:
    """The method's candidate rewards plus the user's weighted dimension reward of each
    (None when the method gave no rewards)."""
    if not rewards:
        return None
    if not weights:
        return list(rewards)
    return [r + _style_reward(c, weights) for r, c in zip(rewards, candidates, strict=True)]


def how_entry(plan: RequestPlan, done: Finished, how: dict[str, Any]) -> dict[str, Any]:
    """/why's decoding entry plus (under ``_enforced``, lifted into the exchange's meta)
    the constraints with their verdicts and the style weights used."""
    how = {**how, **({"picked": done.index} if done.notes.get("candidates", 1) > 1 else {})}
    how.update({k: v for k, v in done.notes.items() if k != "candidates"})
    enforced: dict[str, Any] = {}
    if done.checks:
        enforced["constraints"] = constraint_report(done, plan.sources)
        enforced["repaired"] = done.repaired
    if plan.style.weights:
        enforced["style"] = plan.style.to_dict()
    how["_enforced"] = enforced
    return how


def prompt_fallback(
    plan: RequestPlan,
    first: str,
    first_cut: bool,
    gen: Generation,
    question: str,
    quality: Any,
    how: dict[str, Any],
) -> Finished:
    """When a decoding-time method's one reply (contrastive, MOD, reward-guided) is
    degenerate (a lone reply has nothing to be less relevant than), ``gen`` is an ordinary
    decode of the personalized prompt: the floor and the constraints choose between the two,
    and ``how["fallback"]`` says so for /why."""
    done = pick(
        [first, gen.text],
        plan.constraints,
        plan.style,
        question=question,
        quality=quality,
        cut=[first_cut, gen.finish_reason == "length"],
    )
    how["fallback"] = {"method": "prompt", "chosen": done.index == 1}
    return done


def reward_model_for(memory: Memory) -> Any:
    """The LLM judge of the memory's settings (``judge``) when one is set, else the shipped
    preference reward model (``load_reward_model``: the MiniLM cross-encoder with the
    embedded feature model over the memory's MiniLM embedder; the cross-encoder alone
    under another embedder)."""
    from personalign.errors import ConfigError, ModelNotAvailableError
    from personalign.rewards.preference_rm import judge_from_settings, load_reward_model

    judge = judge_from_settings(memory.settings)
    if judge is not None:
        return judge
    embedder = getattr(memory.store, "embedder", None)
    if embedder is not None and embedder.name != "all-MiniLM-L6-v2":
        embedder = None
    try:
        return load_reward_model(memory.settings.cache_dir, embedder)
    except ModelNotAvailableError as e:
        raise ConfigError(f"reward-guided methods need a reward model: {e}") from e
