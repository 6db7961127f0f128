"""Which of a user's active preferences apply to one message.

Two things keep an active preference away from a reply:

* **its context does not hold.** A preference scoped to a context ("when I cook for my kids,
  nothing spicy"; :mod:`personalign.constraints.context`) applies, its constraints included,
  only when the message is in that context. :class:`ContextMatcher` decides: a keyword match
  (a word of the context in the message, stems compared) or an embedding match (the highest
  cosine between the message and the context's prototypes, the context itself and its
  :data:`HINTS`, at least ``context_cosine``). ``mode`` picks one or ``either`` (the
  default): on the labelled set of ``benchmarks/conflicts.py`` keywords alone found 22% of
  the messages in context, never a wrong one; embeddings 83%, with 6% false matches.
* **it is the older side of an open conflict.** Until the user resolves a conflict, the newer
  preference is applied and the older one is held back: the newer statement is the best
  guess of what the user wants now (as with supersession), and nothing is lost: both stay
  active and either can be kept (``personalign memory resolve``).

:class:`Scope` answers for one message and says why it held each preference back, for /why.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from personalign.backends.embedders import Embedder
from personalign.backends.stores.base import ConflictLog
from personalign.config import ContextConfig
from personalign.constraints.context import context_of
from personalign.types import Conflict, Preference

ContextMode = Literal["keyword", "embedding", "either"]

HINTS: dict[str, tuple[str, ...]] = {
    "coding": ("programming", "python code", "javascript", "sql query", "a bug in my code"),
    "code": ("programming", "python code", "javascript", "sql query", "a bug in my code"),
    "programming": ("coding", "python code", "javascript", "a bug in my code"),
    "math": ("math problem", "solve the equation", "calculus", "algebra", "geometry"),
    "maths": ("math problem", "solve the equation", "calculus", "algebra", "geometry"),
    "work": ("my job", "email to my manager", "message to a client", "my colleagues"),
    "office": ("my job", "email to my manager", "my colleagues"),
    "kids": ("my children", "my son", "my daughter", "family with kids"),
    "children": ("my kids", "my son", "my daughter", "family with kids"),
    "family": ("my kids", "my children", "my partner", "my parents"),
    "business": ("business trip", "work conference", "travel for work"),
    "travel": ("trip", "hotel", "flight", "vacation"),
    "traveling": ("trip", "hotel", "flight", "vacation"),
    "weekends": ("saturday", "sunday", "the weekend"),
    "weekend": ("saturday", "sunday", "the weekend"),
    "school": ("homework", "my teacher", "exam", "class"),
    "writing": ("essay", "story", "article", "blog post"),
}
"""Words a context may be named by and prototypes of what falls in it (generic, written by
hand): "coding questions" covers a question about a Python function."""

_GENERIC = frozenset(
    [
        "questions",
        "question",
        "queries",
        "tasks",
        "problems",
        "requests",
        "answers",
        "messages",
        "topics",
        "my",
        "the",
        "a",
        "an",
        "at",
        "for",
        "with",
        "on",
        "in",
        "when",
        "while",
        "whenever",
        "i",
        "we",
        "about",
    ]
)
_WORD_RE = re.compile(r"[a-z][a-z']*")


def _stem(word: str) -> str:
    for suffix in ("ing", "ies", "es", "s", "ed"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def context_words(context: str) -> set[str]:
    """The stems a keyword match looks for in a message: the context's own words, not the
    generic ones (hints only serve the embedding match: "message to a client" must not make
    every message about a message a work one)."""
    return {_stem(w) for w in _WORD_RE.findall(context.lower()) if w not in _GENERIC}


def prototypes(context: str) -> list[str]:
    """The texts a message is compared with: the context and its hints."""
    out = [context]
    for w in _WORD_RE.findall(context.lower()):
        out += [h for h in HINTS.get(w, ()) if h not in out]
    return out


ScopeConfig = ContextConfig
"""How a message is matched to a preference's context (the settings' ``[contexts]``)."""


@dataclass(frozen=True)
class ContextMatch:
    """Whether a message is in a context, by what (``keyword``, ``embedding``, ``none``)
    and the embedding score (the highest cosine to a prototype; None when not computed)."""

    applies: bool
    how: str
    score: float | None = None


class ContextMatcher:
    """Decides whether a message is in a context (see the module doc). Prototype vectors
    are cached (the newest ``cache`` contexts)."""

    def __init__(
        self, embedder: Embedder | None, config: ScopeConfig | None = None, *, cache: int = 512
    ) -> None:
        self.embedder = embedder
        self.config = config or ScopeConfig()
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._size = cache
        self._last: tuple[str, np.ndarray] | None = None  # the message last embedded
        self._lock = threading.Lock()  # one matcher serves concurrent requests

    def _protos(self, context: str) -> np.ndarray:
        with self._lock:
            if context in self._cache:
                self._cache.move_to_end(context)
                return self._cache[context]
        assert self.embedder is not None
        vectors = np.asarray(self.embedder.embed(prototypes(context)))
        with self._lock:
            self._cache[context] = vectors
            if len(self._cache) > self._size:
                self._cache.popitem(last=False)
        return vectors

    def match(self, message: str, contexts: Sequence[str]) -> dict[str, ContextMatch]:
        """For each context, whether ``message`` is in it."""
        mode = self.config.mode
        stems = {_stem(w) for w in _WORD_RE.findall(message.lower())}
        out: dict[str, ContextMatch] = {}
        todo = list(dict.fromkeys(contexts))
        vec = None
        if mode != "keyword" and self.embedder is not None and todo:
            last = self._last
            if last is None or last[0] != message:
                last = (message, np.asarray(self.embedder.embed([message]))[0])
                self._last = last
            vec = last[1]
        for ctx in todo:
            keyword = bool(stems & context_words(ctx)) if mode != "embedding" else False
            score = float((self._protos(ctx) @ vec).max()) if vec is not None else None
            dense = score is not None and score >= self.config.context_cosine
            if keyword:
                out[ctx] = ContextMatch(True, "keyword", score)
            elif dense:
                out[ctx] = ContextMatch(True, "embedding", score)
            else:
                out[ctx] = ContextMatch(False, "none", score)
        return out


@dataclass
class Scope:
    """Which preferences apply to one message. ``contexts``: each scoped preference's
    context and its match; ``held_back``: what was kept from the reply, and why."""

    message: str
    matcher: ContextMatcher
    open_conflicts: dict[str, Conflict] = field(default_factory=dict)
    """Open conflicts by their older side's id (the side held back)."""
    matches: dict[str, ContextMatch] = field(default_factory=dict)
    contexts: dict[str, str] = field(default_factory=dict)
    held_back: dict[str, dict[str, Any]] = field(default_factory=dict)

    def check(self, records: Sequence[Preference]) -> list[Preference]:
        """The records that apply (episodes always do: they have no context)."""
        scoped = {}
        for r in records:
            if r.kind != "episode":
                ctx = context_of(r.meta, text=r.text)
                if ctx is not None:
                    scoped[r.id] = ctx
        self.contexts.update(scoped)
        new = [c for c in scoped.values() if c not in self.matches]
        if new:
            self.matches.update(self.matcher.match(self.message, new))
        kept = []
        for r in records:
            conflict = self.open_conflicts.get(r.id)
            ctx = scoped.get(r.id)
            if conflict is not None:
                self.held_back[r.id] = {
                    "id": r.id,
                    "text": r.text,
                    "why": "conflict",
                    "conflict_id": conflict.id,
                    "newer_id": conflict.newer_id,
                    "detail": f"the older side of open conflict {conflict.id}: the newer "
                    f"preference {conflict.newer_id} applies until the user resolves it",
                }
            elif ctx is not None and not self.matches[ctx].applies:
                score = self.matches[ctx].score
                self.held_back[r.id] = {
                    "id": r.id,
                    "text": r.text,
                    "why": "context",
                    "context": ctx,
                    "score": score,
                    "detail": f"applies only in its context ({ctx!r}); the message is not in it",
                }
            else:
                kept.append(r)
        return kept

    def report(self) -> dict[str, Any]:
        """What /why shows: every scoped preference met (its context and whether the message
        matched it) and every preference held back; empty when there is neither."""
        if not self.contexts and not self.held_back:
            return {}
        return {
            "contexts": [
                {
                    "id": rid,
                    "context": ctx,
                    "applies": self.matches[ctx].applies,
                    "how": self.matches[ctx].how,
                    "score": self.matches[ctx].score,
                }
                for rid, ctx in self.contexts.items()
                if ctx in self.matches
            ],
            "held_back": list(self.held_back.values()),
        }


def scope_for(store: ConflictLog, message: str, *, user: str, matcher: ContextMatcher) -> Scope:
    """The :class:`Scope` of ``message`` for ``user`` (reads their open conflicts)."""
    conflicts = store.conflicts(user=user)
    return Scope(message, matcher, {c.older_id: c for c in conflicts})
