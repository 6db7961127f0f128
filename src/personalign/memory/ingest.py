"""Ingestion: from ordinary conversation to reconciled preferences plus episodic memory.

:func:`add_messages` does, for one user:

1. gives every message without an id one (``msg:<uuid>``), so records link back to turns;
2. asks the extractor for candidates (:mod:`personalign.memory.extract`);
3. reconciles each candidate against the user's active preferences, in turn order, and
   applies the decision (:mod:`personalign.memory.reconcile`): add, supersede, merge,
   conflict (both kept, the pair stored for the user to resolve) or skip;
4. stores every non-empty user turn as a raw ``episode`` record with
   ``source_turn_ids=[turn id]`` and ``valid_from`` = the message time, so nothing the user
   said is lost. An episode whose turn produced a merge (no preference row written) is added
   with a ``reason`` naming the merge, so every decision reaches the event log.

Episode text is the turn, prefixed with ``"<speaker>: "`` when ``speakers`` names one
(multi-party chats), followed by ``"\\n(in reply to <speaker>: ...)"`` with up to
``context_chars`` of the previous message when that is another user turn, so that short
answers ("Yes, last Sunday!") stay findable by what they answer. Assistant replies are not
used as context: they are long, and matching them would surface the assistant's words.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from personalign.backends.stores import MemoryStore
from personalign.errors import RefusedError
from personalign.memory.extract import Candidate, Extractor
from personalign.memory.reconcile import Action, ReconcileConfig, apply, decide
from personalign.types import Message, Preference, PreferenceIn, check_user

EPISODE_REASON = "episode: raw user turn (episodic memory)"


@dataclass(frozen=True)
class IngestDecision:
    """One reconciled candidate: ``record`` is the row written (``None`` for merge/skip),
    ``target`` the active preference merged into or superseded."""

    action: Action
    reason: str
    candidate: Candidate
    record: Preference | None = None
    target: Preference | None = None


@dataclass
class IngestResult:
    """What :func:`add_messages` did: the decisions, the episode records, and ``notes`` (for
    example an LLM extractor's recorded failure)."""

    decisions: list[IngestDecision] = field(default_factory=list)
    episodes: list[Preference] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def records(self, action: Action) -> list[Preference]:
        """The rows written by decisions of ``action`` (``add``, ``supersede``, ``conflict``)."""
        return [d.record for d in self.decisions if d.action == action and d.record is not None]

    @property
    def counts(self) -> dict[str, int]:
        out = {"add": 0, "merge": 0, "supersede": 0, "conflict": 0, "skip": 0}
        out["episode"] = len(self.episodes)
        for d in self.decisions:
            out[d.action] += 1
        return out


def with_ids(messages: Sequence[Message]) -> list[Message]:
    """Copies of ``messages`` where each message without an id gets ``msg:<uuid>``."""
    return [m if m.id else m.model_copy(update={"id": f"msg:{uuid.uuid4().hex}"}) for m in messages]


def episode_text(
    msgs: Sequence[Message], i: int, *, speakers: Mapping[str, str], context_chars: int
) -> str:
    """The stored text of user turn ``i``: speaker prefix, turn, and a short reply context."""
    m = msgs[i]
    name = speakers.get(m.id or "")
    text = f"{name}: {m.content.strip()}" if name else m.content.strip()
    if context_chars > 0 and i > 0 and msgs[i - 1].role == "user":
        prev = msgs[i - 1]
        prev_name = speakers.get(prev.id or "") or prev.role
        ctx = " ".join(prev.content.split())
        if ctx:
            ctx = ctx if len(ctx) <= context_chars else ctx[:context_chars].rsplit(" ", 1)[0] + "…"
            text += f"\n(in reply to {prev_name}: {ctx})"
    return text


def add_messages(
    target: object,
    messages: Sequence[Message],
    *,
    user: str,
    extractor: Extractor,
    speakers: Mapping[str, str] | None = None,
    context_chars: int = 150,
    config: ReconcileConfig | None = None,
    source: str = "conversation",
) -> IngestResult:
    """Extract, reconcile and store the preferences in ``messages``; keep every user turn.

    ``target`` is a :class:`~personalign.memory.api.Memory` or a
    :class:`~personalign.backends.stores.MemoryStore`. ``speakers`` maps message ids to speaker
    names (stored as a ``speaker:<name>`` tag and a text prefix).
    """
    check_user(user)
    store = getattr(target, "store", target)
    if not isinstance(store, MemoryStore):
        raise TypeError(
            f"add_messages needs a Memory or a MemoryStore, got {type(target).__name__}"
        )
    names = dict(speakers or {})
    msgs = with_ids(messages)
    result = IngestResult()
    failures = getattr(extractor, "failures", None)
    seen_failures = len(failures) if isinstance(failures, list) else 0
    candidates = extractor.extract(msgs)
    if isinstance(failures, list) and len(failures) > seen_failures:
        result.notes.extend(f"extractor {extractor.name}: {f}" for f in failures[seen_failures:])
    merges: dict[str, list[str]] = {}
    for cand in candidates:
        decision = decide(store, cand, user=user, config=config)
        try:
            speaker = names.get(cand.source_turn_ids[-1]) if cand.source_turn_ids else None
            record = apply(
                store,
                decision,
                user=user,
                source=f"{source}:{extractor.name}",
                tags=[f"speaker:{speaker.lower()}"] if speaker else None,
            )
        except RefusedError as e:  # the boundary recorded the refusal; keep going
            result.decisions.append(
                IngestDecision("skip", f"refused by the boundary: {e}", cand, None, None)
            )
            continue
        result.decisions.append(
            IngestDecision(decision.action, decision.reason, cand, record, decision.target)
        )
        if decision.action in ("merge", "skip"):
            for tid in cand.source_turn_ids[-1:]:
                merges.setdefault(tid, []).append(f"{decision.action}: {decision.reason}")

    plain: list[PreferenceIn] = []
    for i, m in enumerate(msgs):
        if m.role != "user" or not m.content.strip():
            continue
        tid = m.id or ""
        name = names.get(tid)
        pin = PreferenceIn(
            text=episode_text(msgs, i, speakers=names, context_chars=context_chars),
            kind="episode",
            source=source,
            source_turn_ids=[tid],
            valid_from=m.at,
            tags=[f"speaker:{name.lower()}"] if name else [],
            meta={"turn_text": m.content} if context_chars > 0 or name else {},
        )
        if tid in merges:
            reason = f"{EPISODE_REASON}; " + "; ".join(merges[tid])
            _add_episodes(store, [pin], user=user, reason=reason, into=result)
        else:
            plain.append(pin)
    _add_episodes(store, plain, user=user, reason=EPISODE_REASON, into=result)
    return result


def _add_episodes(
    store: MemoryStore, pins: list[PreferenceIn], *, user: str, reason: str, into: IngestResult
) -> None:
    """Store raw turns in one batch; if the boundary refuses one, store the others one by one
    (a refused turn stays out of searchable memory; its refusal is in the event log)."""
    if not pins:
        return
    try:
        into.episodes.extend(store.add_many(pins, user=user, actor="extractor", reason=reason))
        return
    except RefusedError:
        pass
    for pin in pins:
        try:
            into.episodes.append(store.add(pin, user=user, actor="extractor", reason=reason))
        except RefusedError as e:
            into.notes.append(f"episode refused by the boundary: {e}")
