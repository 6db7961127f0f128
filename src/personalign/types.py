"""Records shared by every layer.

Times are timezone-aware UTC datetimes. Ids are opaque strings. A search score is documented
on :class:`SearchHit`.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from personalign.errors import ValidationError

Kind = Literal["explicit", "implicit", "episode"]
"""``explicit``: the user said it. ``implicit``: inferred from choices, persona, feedback.
``episode``: a raw turn the user wrote, kept so that nothing said is lost (episodic memory)."""

PREFERENCE_KINDS: tuple[Kind, ...] = ("explicit", "implicit")
MAX_TEXT_CHARS = 4000
_USER_RE = re.compile(r"^[A-Za-z0-9_.@:+-]{1,128}$")


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


def check_user(user: str) -> str:
    """Return ``user`` if it is a valid user id, else raise :class:`ValidationError`."""
    if not isinstance(user, str) or not _USER_RE.match(user):
        raise ValidationError(
            f"invalid user id {user!r}: use 1-128 characters from letters, digits and _.@:+-"
        )
    return user


def check_text(text: str, *, what: str = "text", max_chars: int = MAX_TEXT_CHARS) -> str:
    """Strip ``text`` and reject empty or oversized input with a clear message."""
    if not isinstance(text, str):
        raise ValidationError(f"{what} must be a string, got {type(text).__name__}")
    stripped = text.strip()
    if not stripped:
        raise ValidationError(f"{what} is empty")
    if len(stripped) > max_chars:
        raise ValidationError(f"{what} is {len(stripped)} characters; the limit is {max_chars}")
    return stripped


def check_texts(texts: Sequence[str], *, what: str) -> list[str]:
    """``texts`` as a list, refusing a bare string or non-string items (``what`` names the
    caller in the message, e.g. ``embed()``)."""
    if isinstance(texts, str):
        raise ValidationError(f"{what} takes a sequence of strings, not a single string")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise ValidationError(f"{what}: item {i} is {type(t).__name__}, expected str")
    return out


def check_weights(weights: dict[str, float]) -> dict[str, float]:
    """Validate dimension weights: names like identifiers, values finite and in [0, 1]."""
    if not isinstance(weights, dict) or not weights:
        raise ValidationError("weights must be a non-empty mapping of dimension -> weight")
    out: dict[str, float] = {}
    for name, w in weights.items():
        if not isinstance(name, str) or not re.match(r"^[a-z][a-z0-9_]{0,63}$", name):
            raise ValidationError(f"bad dimension name {name!r}: use lower-case identifiers")
        if isinstance(w, bool) or not isinstance(w, int | float) or not 0.0 <= float(w) <= 1.0:
            raise ValidationError(f"weight of {name!r} must be a number in [0, 1], got {w!r}")
        out[name] = float(w)
    return out


class PreferenceIn(BaseModel):
    """What a caller supplies to store a memory."""

    model_config = ConfigDict(extra="forbid")

    text: str
    kind: Kind = "explicit"
    topic: str | None = None
    dimension: str | None = None
    tags: list[str] = Field(default_factory=list)
    strength: float = Field(default=1.0, ge=0.0, le=1.0)
    source: str | None = None
    source_turn_ids: list[str] = Field(default_factory=list)
    valid_from: datetime | None = None
    flags: list[str] = Field(default_factory=list)
    meta: dict[str, Any] = Field(default_factory=dict)


class Preference(BaseModel):
    """One stored memory version.

    ``valid_from``/``valid_to`` are world time (when the preference held for the user);
    ``recorded_at``/``superseded_at`` are system time (when we learned it, when a newer version
    replaced it). A record is *active* when it is neither superseded nor forgotten.
    ``root_id`` is shared by all versions of one preference; ``previous_id`` links versions.
    """

    id: str
    user_id: str
    text: str
    kind: Kind
    topic: str | None = None
    dimension: str | None = None
    tags: list[str] = Field(default_factory=list)
    strength: float = 1.0
    source: str | None = None
    source_turn_ids: list[str] = Field(default_factory=list)
    valid_from: datetime
    valid_to: datetime | None = None
    recorded_at: datetime
    superseded_at: datetime | None = None
    superseded_by: str | None = None
    root_id: str
    previous_id: str | None = None
    flags: list[str] = Field(default_factory=list)
    meta: dict[str, Any] = Field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.superseded_at is None and self.valid_to is None

    def revised(self, text: str) -> PreferenceIn:
        """A new version with ``text`` and this version's other fields (flags are not
        carried over: they describe the old text)."""
        return PreferenceIn(
            text=text,
            kind=self.kind,
            topic=self.topic,
            dimension=self.dimension,
            tags=self.tags,
            strength=self.strength,
            source=self.source,
            source_turn_ids=self.source_turn_ids,
            meta=self.meta,
        )


class SearchHit(BaseModel):
    """A search result.

    ``score`` is the fused score: higher is better, comparable only within one result list.
    ``signals`` holds each signal's raw value: ``dense`` is cosine similarity in [-1, 1];
    ``bm25`` is full-text relevance, higher is better (SQLite: FTS5 BM25 negated; PostgreSQL:
    ``ts_rank_cd``); ``recency`` is exp(-age / half-life * ln 2) in (0, 1]; ``entity`` is 1
    when the record is tagged with a name the query mentions; ``preference`` is 1 for an
    extracted preference (not a raw turn). ``matched`` lists the signals among dense, bm25,
    entity and preference that selected this record.
    """

    record: Preference
    score: float
    signals: dict[str, float] = Field(default_factory=dict)
    matched: list[str] = Field(default_factory=list)

    @property
    def source_turn_ids(self) -> list[str]:
        return self.record.source_turn_ids


class Event(BaseModel):
    """One entry of the append-only event log: who did what to which record, when and why."""

    id: int
    user_id: str
    at: datetime
    action: str
    record_id: str | None = None
    actor: str = "user"
    reason: str | None = None
    payload: dict[str, Any] = Field(default_factory=dict)


Role = Literal["system", "user", "assistant"]


class Message(BaseModel):
    """A chat turn. ``id`` links extracted preferences back to the turn they came from."""

    role: Role
    content: str
    id: str | None = None
    at: datetime | None = None


class UsedPreference(BaseModel):
    """A memory that was put in front of the model for a reply, and why."""

    id: str
    text: str
    kind: Kind
    score: float
    matched: list[str] = Field(default_factory=list)
    source_turn_ids: list[str] = Field(default_factory=list)
    context: str | None = None
    """The context the preference is scoped to ("cook for my kids"), matched by the message;
    ``None`` for a preference that holds everywhere."""


class Exchange(BaseModel):
    """One logged request/reply: what the model saw, what it said, and what shaped it."""

    id: str
    user_id: str
    at: datetime
    messages: list[Message]
    """The full prompt sent to the model (system prompt and memory block included)."""
    response: str
    model: str
    method: str
    """How the reply was personalized: ``plain``, ``prompt``, or a decoding method name."""
    options: dict[str, Any] = Field(default_factory=dict)
    preferences: list[UsedPreference] = Field(default_factory=list)
    latency_ms: float
    retrieval_ms: float = 0.0
    meta: dict[str, Any] = Field(default_factory=dict)


class Profile(BaseModel):
    """One version of a user's weights over preference dimensions (newest is current).

    ``weights`` maps a dimension name to a weight in [0, 1]; ``uncertainty`` (optional) maps a
    dimension to the posterior standard deviation when the weights were estimated from feedback.
    ``source``: ``user`` (set by hand), ``feedback`` (estimated), or ``default``.
    """

    id: int
    user_id: str
    at: datetime
    weights: dict[str, float]
    uncertainty: dict[str, float] = Field(default_factory=dict)
    source: str = "user"
    reason: str | None = None


FeedbackKind = Literal["rating", "pairwise", "edit", "critique", "override"]
"""``rating``: thumbs (``scale="thumbs"``, value -1 or 1) or stars (``scale="stars"``, 1-5) on
one reply. ``pairwise``: ``chosen`` was preferred over ``rejected`` (answers to ``prompt``).
``edit``: ``text`` is the user's corrected version of the reply. ``critique``: ``text`` says
what was wrong. ``override``: the user set their dimension ``weights`` by hand."""
FEEDBACK_KINDS: tuple[FeedbackKind, ...] = ("rating", "pairwise", "edit", "critique", "override")
RatingScale = Literal["thumbs", "stars"]


class FeedbackIn(BaseModel):
    """What a caller supplies to record feedback; fields a ``kind`` needs are checked here.

    ``exchange_id`` links the feedback to the logged exchange it is about (required for
    ``rating``, ``edit`` and ``critique`` unless ``response`` holds the reply that was judged).
    ``source`` says where it came from (``cli``, ``chat``, ``api``, ``calibrate``).
    """

    model_config = ConfigDict(extra="forbid")

    kind: FeedbackKind
    exchange_id: str | None = None
    value: float | None = None
    scale: RatingScale | None = None
    prompt: str | None = None
    response: str | None = None
    """The reply judged (``rating``/``edit``/``critique``) when there is no exchange."""
    chosen: str | None = None
    rejected: str | None = None
    text: str | None = None
    weights: dict[str, float] = Field(default_factory=dict)
    source: str = "user"
    meta: dict[str, Any] = Field(default_factory=dict)

    def __init__(self, **data: Any) -> None:
        super().__init__(**data)
        self._check()

    def _check(self) -> None:
        """Raise :class:`ValidationError` unless the fields ``kind`` needs are set and valid."""
        for name in ("prompt", "response", "chosen", "rejected", "text"):
            v = getattr(self, name)
            if v is not None:
                setattr(self, name, check_text(v, what=f"feedback {name}", max_chars=20_000))
        if self.exchange_id is not None and not re.match(r"^[0-9a-f]{32}$", self.exchange_id):
            raise ValidationError(f"bad exchange id {self.exchange_id!r}: expected 32 hex")
        need_reply = self.exchange_id is None and self.response is None
        if self.kind == "rating":
            if self.scale is None or self.value is None:
                raise ValidationError("a rating needs scale ('thumbs' or 'stars') and value")
            ok = (
                self.value in (-1.0, 1.0)
                if self.scale == "thumbs"
                else self.value in (1.0, 2.0, 3.0, 4.0, 5.0)
            )
            if not ok:
                allowed = "-1 or 1" if self.scale == "thumbs" else "1, 2, 3, 4 or 5"
                raise ValidationError(f"a {self.scale} rating is {allowed}, got {self.value!r}")
            if need_reply:
                raise ValidationError("a rating needs exchange_id (or the rated response)")
        elif self.kind == "pairwise":
            if self.chosen is None or self.rejected is None:
                raise ValidationError("a pairwise choice needs chosen and rejected")
            if self.chosen == self.rejected:
                raise ValidationError("chosen and rejected are the same text")
        elif self.kind in ("edit", "critique"):
            if self.text is None:
                raise ValidationError(f"{self.kind} needs text")
            if need_reply:
                raise ValidationError(f"{self.kind} needs exchange_id (or the response)")
        elif self.kind == "override":
            self.weights = check_weights(self.weights)

    @property
    def label(self) -> float | None:
        """A rating as a probability that the reply beats a typical one: thumbs 0/1, stars
        ``(value - 1) / 4``; None for other kinds."""
        if self.kind != "rating" or self.value is None:
            return None
        return (self.value + 1.0) / 2.0 if self.scale == "thumbs" else (self.value - 1.0) / 4.0


class Feedback(FeedbackIn):
    """One stored feedback record (append-only; erased only with the user)."""

    model_config = ConfigDict(extra="forbid")

    id: str
    user_id: str
    at: datetime

    @classmethod
    def new(cls, fb: FeedbackIn, *, user: str) -> Feedback:
        """A new record of ``fb`` for ``user``, with a fresh id, recorded now."""
        fields = fb.model_dump(include=set(FeedbackIn.model_fields))
        return cls(**fields, id=new_id(), user_id=user, at=utcnow())


ConflictStatus = Literal["open", "resolved", "moot"]
Resolution = Literal["older", "newer", "both"]


class Conflict(BaseModel):
    """Two active preferences of one user that contradict, neither an explicit update of the
    other (see :mod:`personalign.memory.reconcile`). Both stay active until the user resolves
    it: keep one (the other is superseded, kept as history) or keep both.

    ``status``: ``open`` while both are active and it is unresolved; ``resolved`` once the
    user decided (``resolution``: which one was kept, or ``both``); ``moot`` when one side
    was updated or forgotten since, so there is nothing left to decide. ``older_text`` and
    ``newer_text`` are the two preferences' texts (read from the memories)."""

    id: str
    user_id: str
    created_at: datetime
    older_id: str
    newer_id: str
    older_text: str = ""
    newer_text: str = ""
    score: float | None = None
    reason: str | None = None
    status: ConflictStatus = "open"
    resolution: Resolution | None = None
    resolved_at: datetime | None = None
    resolved_by: str | None = None

    @property
    def kept_ids(self) -> list[str]:
        """The ids the resolution kept active (empty while unresolved)."""
        return {
            "older": [self.older_id],
            "newer": [self.newer_id],
            "both": [self.older_id, self.newer_id],
            None: [],
        }[self.resolution]
