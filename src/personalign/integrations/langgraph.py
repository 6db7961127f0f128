"""``PersonalignStore``: LangGraph long-term memory (a ``BaseStore``) over the personalign
memory, so an agent gets personalign's boundary, supersession and hybrid retrieval by
swapping its store (``graph.compile(store=PersonalignStore.open())``).

How the key-value model maps (the pure parts are in :mod:`personalign.integrations.kv`):

* **Users.** One label of every namespace names the personalign user: the position of
  ``"{user_id}"`` in the ``namespace`` template (default ``("memories", "{user_id}")``: the
  second label). With ``app="myapp"`` the user id stored is ``myapp:<label>``, the
  service's convention for an application's users. The template itself is the namespace in
  which the user's preferences written outside LangGraph (chat extraction, the CLI, the
  service) appear, each keyed by its root id. A user id holding a period cannot be a
  namespace label, so such users are out of LangGraph's reach.
* **Put.** The value's text (``value["text"]``, else ``"content"``, else ``"memory"``; for a
  value with none of them, the value's JSON) becomes one explicit preference; the other
  fields are kept beside it and returned by ``get``. Every write passes the boundary, the
  other fields' strings included (each as its own text,
  :func:`~personalign.integrations.kv.admission_texts`): a harmful value raises
  :class:`~personalign.errors.RefusedError`, nothing is stored and the refusal is in the
  user's event log. A put to an existing key writes a new version that supersedes the old
  one (kept in history, :meth:`PersonalignStore.history`); a put of the value the key
  already holds writes nothing. Text is stored stripped of surrounding whitespace.
* **Delete** ends the preference's validity (``personalign memory forget``): LangGraph no
  longer sees it, personalign's history keeps it until ``erase_user``.
* **Search.** With a ``query``: personalign's hybrid search (dense, full text, recency,
  preference prior) of each user the prefix covers, best first, ``SearchItem.score`` the
  fused score (higher is better; merged across users when the prefix spans several). Without:
  every item under the prefix, grouped by namespace, oldest first (the order keys were first
  put; namespaces in the order of their oldest item, as LangGraph's in-memory store lists
  them). ``filter``, ``limit`` and ``offset`` apply as in LangGraph's own stores; the
  ``index`` argument of a put is ignored (the text is always indexed); TTLs are not supported.
* **Cost.** A get reads the key's last known record by id (checked still active and at that
  address; else, and for a put of a new key, a scan of the user's preferences); a search
  without query and ``list_namespaces`` scan the preferences of the users they cover.
* **Batches** run their reads in order on the state before the batch, then its puts (the last
  put to a key wins), in order; a refused put raises and the puts after it do not run.
  ``abatch`` runs the same code in a worker thread.
* Extraction: :meth:`PersonalignStore.add_messages` hands a conversation (LangChain messages
  or personalign ones) to personalign's extraction and reconciliation.
* ``created_at`` is when the key was first put, ``updated_at`` when its current version was.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

try:
    from langgraph.store.base import (
        BaseStore,
        GetOp,
        InvalidNamespaceError,
        Item,
        ListNamespacesOp,
        Op,
        PutOp,
        Result,
        SearchItem,
        SearchOp,
        validate_op_namespace,
    )
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "personalign.integrations.langgraph needs LangGraph: pip install 'personalign[langgraph]'"
    ) from e

from pydantic import ValidationError as PydanticValidationError

from personalign.errors import ConfigError, NotFoundError, ValidationError
from personalign.integrations.kv import (
    META_KEY,
    TEXT_FIELDS,
    USER_LABEL,
    Entry,
    admission_texts,
    matches_filter,
    matches_path,
    split_value,
    user_index,
)
from personalign.types import PREFERENCE_KINDS, Message, Preference, PreferenceIn, check_user

if TYPE_CHECKING:
    from personalign.backends.embedders import Embedder
    from personalign.config import Settings
    from personalign.memory import Memory

ACTOR = "langgraph"
_CACHE_LIMIT = 50_000
_ItemT = TypeVar("_ItemT", bound=Item)
_ROLES = {"human": "user", "user": "user", "ai": "assistant", "assistant": "assistant"}


class PersonalignStore(BaseStore):
    """A LangGraph ``BaseStore`` over a personalign :class:`~personalign.memory.Memory` (see
    the module doc for the mapping). ``memory`` must be guarded (its writes pass the
    boundary): :func:`personalign.pipeline.open_guarded_memory`, or use :meth:`open`."""

    supports_ttl = False

    def __init__(
        self,
        memory: Memory,
        *,
        namespace: tuple[str, ...] = ("memories", USER_LABEL),
        app: str | None = None,
        text_fields: Sequence[str] = TEXT_FIELDS,
        owns_memory: bool = False,
    ) -> None:
        if not callable(getattr(memory.store, "admit", None)):
            raise ConfigError(
                "PersonalignStore needs a memory whose writes pass the boundary: open it with "
                "personalign.pipeline.open_guarded_memory, or use PersonalignStore.open()"
            )
        self.user_index = user_index(namespace)
        self.namespace = tuple(namespace)
        if app is not None and (":" in app or "." in app):
            raise ValidationError(f"bad app {app!r}: it may hold neither ':' nor '.'")
        if app is not None:
            check_user(f"{app}:x")
        self.app = app
        if isinstance(text_fields, str) or not text_fields:
            raise ValidationError("text_fields must be a non-empty sequence of field names")
        self.text_fields = tuple(text_fields)
        self.memory = memory
        self.owns_memory = owns_memory
        self._entries: dict[str, Entry] = {}  # record id -> entry (versions never change)
        self._where: dict[tuple[str, tuple[str, ...], str], str] = {}  # address -> record id

    @classmethod
    def open(
        cls,
        settings: Settings | None = None,
        embedder: Embedder | None = None,
        **options: Any,
    ) -> PersonalignStore:
        """The store over the guarded memory that ``settings`` (default: from the
        environment and config file) point to; :meth:`close` closes it. ``options`` are
        the constructor's keywords."""
        from personalign.pipeline import open_guarded_memory

        return cls(open_guarded_memory(settings, embedder), owns_memory=True, **options)

    def close(self) -> None:
        """Close the memory if this store opened it."""
        if self.owns_memory:
            self.memory.close()

    def __enter__(self) -> PersonalignStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- users and namespaces --------------------------------------------------------------

    def _label(self, namespace: tuple[str, ...]) -> str:
        """The user label of ``namespace`` (checked as a personalign user id)."""
        if len(namespace) <= self.user_index:
            raise InvalidNamespaceError(
                f"namespace {namespace!r} has no label at position {self.user_index}, where "
                f"PersonalignStore reads the personalign user (template {self.namespace!r})"
            )
        label = namespace[self.user_index]
        try:
            check_user(self._user(label))
        except ValidationError as e:
            raise InvalidNamespaceError(f"namespace {namespace!r}: {e}") from e
        return label

    def _user(self, label: str) -> str:
        return f"{self.app}:{label}" if self.app else label

    def _labels(self, pattern: Sequence[str] = ()) -> list[str]:
        """The user labels a namespace prefix ``pattern`` covers: the one it names, else every
        user of the memory (of ``app``) that can be a namespace label."""
        if len(pattern) > self.user_index and pattern[self.user_index] != "*":
            return [self._label(tuple(pattern))]
        head = f"{self.app}:" if self.app else ""
        users = [u[len(head) :] for u in self.memory.users() if u.startswith(head)]
        return [u for u in users if u and "." not in u]

    def home(self, label: str) -> tuple[str, ...]:
        """The namespace of ``label``'s preferences written outside LangGraph."""
        return tuple(label if x == USER_LABEL else x for x in self.namespace)

    # -- records as items ------------------------------------------------------------------

    def _entry(self, record: Preference, label: str) -> Entry:
        """Where ``record`` lives for LangGraph: its own entry, else the newest among its
        earlier versions (a supersession from chat keeps the key), else its home and root id."""
        cached = self._entries.get(record.id)
        if cached is not None:
            return cached
        entry = Entry.from_meta(record.meta)
        if entry is None and record.previous_id is None:
            entry = Entry(self.home(label), record.root_id, "text", _described(record))
        elif entry is None or (entry.created_at is None and record.previous_id is not None):
            # a later version (from chat, or revised by personalign) of an older item
            versions = self.memory.history(record.id, user=self._user(label))
            ids = [v.id for v in versions]
            older = versions[: ids.index(record.id)] if record.id in ids else versions
            if entry is None:
                metas = (Entry.from_meta(v.meta) for v in reversed(older))
                entry = next((e for e in metas if e is not None), None) or Entry(
                    self.home(label), record.root_id, "text", _described(record)
                )
            if entry.created_at is None:
                created = versions[0].recorded_at.isoformat()
                entry = Entry(entry.namespace, entry.key, entry.field, entry.rest, created)
        if len(self._entries) >= _CACHE_LIMIT:
            self._entries.clear()
        self._entries[record.id] = entry
        return entry

    @staticmethod
    def _item(entry: Entry, record: Preference, cls: type[_ItemT], **extra: Any) -> _ItemT:
        created = (
            datetime.fromisoformat(entry.created_at) if entry.created_at else record.recorded_at
        )
        return cls(
            namespace=entry.namespace,
            key=entry.key,
            value=entry.value(record.text),
            created_at=created,
            updated_at=record.recorded_at,
            **extra,
        )

    def _scan(self, label: str) -> list[tuple[Entry, Preference]]:
        """The user's active preferences with their entries, newest first."""
        records = self.memory.list(user=self._user(label), kinds=PREFERENCE_KINDS)
        return [(self._entry(r, label), r) for r in records]

    def _find(self, namespace: tuple[str, ...], key: str) -> tuple[Entry, Preference] | None:
        """The active record at ``namespace``/``key``: the one last seen there when it is
        still active (one read by id), else a scan of the user's preferences."""
        label = self._label(namespace)
        seen = self._where.get((label, namespace, key))
        if seen is not None:
            try:
                record = self.memory.get(seen, user=self._user(label))
            except NotFoundError:  # erased
                record = None
            if record is not None and record.active:
                entry = self._entry(record, label)
                if entry.namespace == namespace and entry.key == key:
                    return entry, record
        found = None
        if len(self._where) >= _CACHE_LIMIT:
            self._where.clear()
        fresh: dict[tuple[str, tuple[str, ...], str], str] = {}
        for entry, record in self._scan(label):  # newest first: the newest wins a tie
            fresh.setdefault((label, entry.namespace, entry.key), record.id)
            if found is None and entry.namespace == namespace and entry.key == key:
                found = entry, record
        self._where.pop((label, namespace, key), None)
        self._where.update(fresh)
        return found

    def record(self, namespace: tuple[str, ...], key: str) -> Preference | None:
        """The personalign record an item is, for personalign's own verbs (constraints)."""
        found = self._find(tuple(namespace), str(key))
        return found[1] if found else None

    def history(self, namespace: tuple[str, ...], key: str) -> list[Item]:
        """Every version of the item at ``namespace``/``key``, oldest first (empty when the
        key holds nothing now)."""
        namespace = tuple(namespace)
        found = self._find(namespace, str(key))
        if found is None:
            return []
        label = self._label(namespace)
        versions = self.memory.history(found[1].id, user=self._user(label))
        return [self._item(self._entry(v, label), v, Item) for v in versions]

    # -- the ops ---------------------------------------------------------------------------

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        """Run ``ops``: reads in order, then the puts (see the module doc)."""
        ops = list(ops)
        results: list[Result] = [None] * len(ops)
        puts: dict[tuple[tuple[str, ...], str], PutOp] = {}
        for i, op in enumerate(ops):
            validate_op_namespace(op)
            if isinstance(op, GetOp):
                found = self._find(tuple(op.namespace), str(op.key))
                results[i] = self._item(*found, Item) if found else None
            elif isinstance(op, SearchOp):
                results[i] = self._search(op)
            elif isinstance(op, ListNamespacesOp):
                results[i] = self._list_namespaces(op)
            elif isinstance(op, PutOp):
                address = (tuple(op.namespace), str(op.key))
                puts.pop(address, None)
                puts[address] = op
            else:
                raise ValidationError(f"unknown store operation {type(op).__name__}")
        for op in puts.values():
            self._put(op)
        return results

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        """:meth:`batch` in a worker thread."""
        return await asyncio.to_thread(self.batch, list(ops))

    def _put(self, op: PutOp) -> None:
        namespace, key = tuple(op.namespace), str(op.key)
        if not namespace:
            raise InvalidNamespaceError("Namespace cannot be empty.")
        if namespace[0] == "langgraph":
            raise InvalidNamespaceError(f'Root label for namespace cannot be "langgraph": {op}')
        if op.ttl is not None:
            raise NotImplementedError("TTL is not supported by PersonalignStore; use ttl=None")
        label = self._label(namespace)
        user = self._user(label)
        where = f"langgraph {'/'.join(namespace)}/{key}"
        found = self._find(namespace, key)
        if op.value is None:
            if found is not None:
                self.memory.forget(found[1].id, user=user, actor=ACTOR, reason=f"{where}: delete")
            return
        text, field, rest = split_value(op.value, self.text_fields)
        if found is not None and found[0].value(found[1].text) == Entry(
            namespace, key, field, rest
        ).value(text.strip()):
            return  # the key already holds this value
        if field is not None and (extra := admission_texts(rest)):
            self.memory.store.admit(extra, user=user, actor=ACTOR)  # type: ignore[attr-defined]
        if found is None:
            entry = Entry(namespace, key, field, rest)
            pin = PreferenceIn(text=text, source=ACTOR, meta={META_KEY: entry.to_meta()})
            new = self.memory.add(pin, user=user, actor=ACTOR, reason=f"{where}: put")
            self._where[(label, namespace, key)] = new.id
            return
        old_entry, old = found
        created = self._item(old_entry, old, Item).created_at.isoformat()
        entry = Entry(namespace, key, field, rest, created)
        pin = PreferenceIn(
            text=text,
            kind=old.kind,
            topic=old.topic,
            dimension=old.dimension,
            tags=old.tags,
            source=ACTOR,
            meta={META_KEY: entry.to_meta()},
        )
        new = self.memory.update(
            old.id, pin, user=user, actor=ACTOR, reason=f"{where}: new version"
        )
        self._where[(label, namespace, key)] = new.id

    def _search(self, op: SearchOp) -> list[SearchItem]:
        prefix = tuple(op.namespace_prefix)
        if op.limit < 0 or op.offset < 0:
            raise ValidationError(f"limit and offset must be >= 0, got {op.limit}, {op.offset}")
        want = op.offset + op.limit
        if want == 0:
            return []
        if op.query:
            hits = [it for u in self._labels(prefix) for it in self._query(u, prefix, op, want)]
            hits.sort(key=lambda it: -(it.score or 0.0))
            return hits[op.offset : want]
        items = [
            self._item(entry, record, SearchItem)
            for label in self._labels(prefix)
            for entry, record in self._scan(label)
            if entry.namespace[: len(prefix)] == prefix
        ]
        first: dict[tuple[str, ...], datetime] = {}
        for it in items:  # a namespace's place: when its oldest item was put
            first[it.namespace] = min(first.get(it.namespace, it.created_at), it.created_at)
        found = [it for it in items if matches_filter(it.value, op.filter)]
        found.sort(key=lambda it: (first[it.namespace], it.namespace, it.created_at, it.key))
        return found[op.offset : want]

    def _query(
        self, label: str, prefix: tuple[str, ...], op: SearchOp, want: int
    ) -> list[SearchItem]:
        """The hybrid search's hits of one user under ``prefix`` that pass the filter, best
        first: at least ``want`` of them when the search has that many."""
        config = self.memory.settings.retrieval.model_copy(update={"dedupe_sources": False})
        k = max(want, 10)
        while True:
            hits = self.memory.store.search(
                str(op.query), user=self._user(label), k=k, kinds=PREFERENCE_KINDS, config=config
            )
            kept = []
            for hit in hits:
                entry = self._entry(hit.record, label)
                if entry.namespace[: len(prefix)] == prefix and matches_filter(
                    entry.value(hit.record.text), op.filter
                ):
                    kept.append(self._item(entry, hit.record, SearchItem, score=hit.score))
            if len(kept) >= want or len(hits) < k:
                return kept
            k *= 4

    def _list_namespaces(self, op: ListNamespacesOp) -> list[tuple[str, ...]]:
        if op.limit < 0 or op.offset < 0:
            raise ValidationError(f"limit and offset must be >= 0, got {op.limit}, {op.offset}")
        conditions = tuple(op.match_conditions or ())
        pins = [c.path for c in conditions if c.match_type == "prefix"]
        labels = self._labels(max(pins, key=len) if pins else ())
        spaces = {entry.namespace for label in labels for entry, _ in self._scan(label)}
        spaces = {
            ns for ns in spaces if all(matches_path(ns, c.match_type, c.path) for c in conditions)
        }
        if op.max_depth is not None:
            spaces = {ns[: op.max_depth] for ns in spaces}
        return sorted(spaces)[op.offset : op.offset + op.limit]

    # -- extraction ------------------------------------------------------------------------

    def add_messages(self, messages: Sequence[object], *, user_id: str) -> list[Item]:
        """Hand a conversation to personalign's extraction and reconciliation for the user
        ``user_id`` (a namespace label); return the items written (new preferences and new
        versions), in their namespaces. ``messages``: LangChain messages (human, ai,
        system; others are skipped), personalign :class:`~personalign.types.Message` or
        ``{"role", "content"}`` mappings. Every user turn is also kept as an episode, which
        LangGraph does not see."""
        label = self._label(self.home(user_id))
        turns = [m for m in (_as_message(x) for x in messages) if m is not None]
        result = self.memory.add_messages(turns, user=self._user(label))
        written = result.records("add") + result.records("supersede")
        return [self._item(self._entry(r, label), r, Item) for r in written]

    async def aadd_messages(self, messages: Sequence[object], *, user_id: str) -> list[Item]:
        """:meth:`add_messages` in a worker thread."""
        return await asyncio.to_thread(self.add_messages, list(messages), user_id=user_id)


def _described(record: Preference) -> dict[str, Any]:
    """The fields beside the text of a preference written outside LangGraph."""
    out: dict[str, Any] = {"kind": record.kind}
    if record.topic:
        out["topic"] = record.topic
    return out


def _as_message(m: object) -> Message | None:
    """A personalign message from a LangChain message, a mapping or a Message (``None`` for
    a LangChain tool or function message)."""
    if isinstance(m, Message):
        return m
    if isinstance(m, Mapping):
        try:
            return Message.model_validate({"role": m.get("role"), "content": m.get("content")})
        except PydanticValidationError as e:
            raise ValidationError(f"bad message {dict(m)!r}: {e.errors()[0]['msg']}") from e
    kind = getattr(m, "type", None)
    if not isinstance(kind, str) or not hasattr(m, "content"):
        raise ValidationError(
            f"add_messages takes LangChain messages, personalign Messages or role/content "
            f"mappings, got {type(m).__name__}"
        )
    if kind not in _ROLES and kind != "system":
        return None
    text = getattr(m, "text", None)
    content = text if isinstance(text, str) else str(getattr(m, "content", ""))
    msg_id = getattr(m, "id", None)
    return Message(
        role=_ROLES.get(kind, "system"),  # type: ignore[arg-type]
        content=content,
        id=f"lc:{msg_id}" if isinstance(msg_id, str) and msg_id else None,
    )


__all__ = ["PersonalignStore"]
