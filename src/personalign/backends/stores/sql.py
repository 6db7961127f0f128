"""``SQLStore``: the verbs SQLite and PostgreSQL share, written once over a few primitives.

A backend says how to open a read and a write transaction, how to execute a statement written
with ``?`` placeholders, how a timestamp and a JSON value are bound, how a row becomes a
record, and the few bits of SQL its dialect spells differently (class attributes). Search and
schema migrations stay in each backend: there the two engines really differ.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, ClassVar

import numpy as np

from personalign.backends.embedders import Embedder
from personalign.backends.stores.base import (
    Events,
    Exchanges,
    Feedbacks,
    Names,
    Profiles,
    Records,
)
from personalign.backends.stores.sql_conflicts import SQLConflicts
from personalign.backends.stores.timeline import ACTIVE_AT, check_as_of, check_time, prune_turns
from personalign.config import RetrievalConfig
from personalign.errors import BackendError, ConflictError, NotFoundError, ValidationError
from personalign.types import (
    Event,
    Exchange,
    Feedback,
    FeedbackIn,
    Kind,
    Preference,
    PreferenceIn,
    Profile,
    check_text,
    check_user,
    check_weights,
    new_id,
    utcnow,
)

_ID_RE = re.compile(r"^[0-9a-f]{32}$")
FIELDS = (
    "id",
    "user_id",
    "text",
    "kind",
    "topic",
    "dimension",
    "tags",
    "strength",
    "source",
    "source_turn_ids",
    "valid_from",
    "valid_to",
    "recorded_at",
    "superseded_at",
    "superseded_by",
    "root_id",
    "previous_id",
    "flags",
    "meta",
)
COLUMNS = ", ".join(FIELDS)
ACTIVE_NOW = "superseded_at IS NULL AND valid_to IS NULL"
USER_TABLES = ("memories", "events", "exchanges", "profiles", "feedback", "conflicts", "users")
"""Every table holding a user's data; ``erase_user`` deletes from each (users last)."""
_EVENT_COLUMNS = "user_id, at, action, record_id, actor, reason, payload"
EventRow = tuple[str, str, str | None, str, str | None, dict[str, Any], datetime]
"""An event to append: ``(user, action, record_id, actor, reason, payload, at)``."""


def check_id(record_id: str) -> str:
    if not isinstance(record_id, str) or not _ID_RE.match(record_id):
        raise ValidationError(f"bad memory id {record_id!r}: expected 32 hex characters")
    return record_id


def coerce(item: PreferenceIn | str) -> PreferenceIn:
    pin = PreferenceIn(text=item) if isinstance(item, str) else item
    return pin.model_copy(update={"text": check_text(pin.text, what="memory text")})


def search_args(
    query: str, *, user: str, k: int, config: RetrievalConfig | None, as_of: datetime | None
) -> tuple[str, RetrievalConfig, datetime]:
    """The checked query, the retrieval config and the time a search looks at."""
    check_user(user)
    query = check_text(query, what="query")
    if k < 1:
        raise ValidationError(f"k must be at least 1, got {k}")
    return query, config or RetrievalConfig(), check_time(as_of) if as_of else utcnow()


def _newest(sql: str, args: list[Any], order: str, limit: int | None) -> str:
    """``sql`` (ordered by ``order``) cut to the newest ``limit`` rows, still oldest first."""
    if limit is None:
        return sql
    args.append(int(limit))
    return f"SELECT * FROM ({sql} DESC LIMIT ?) s ORDER BY {order}"


class SQLStore(SQLConflicts):
    """Every verb but ``search``, over the primitives a SQL backend implements."""

    embedder: Embedder
    _SEQ: ClassVar[str]
    """The column that orders a table's rows as they were inserted."""
    _BODY: ClassVar[str] = "body"
    """Selects a JSON ``body`` column as text."""
    _JSON_ARG: ClassVar[str] = "?"
    """The placeholder of a JSON text bound to a ``body`` column."""
    _LOCK: ClassVar[str] = ""
    """Appended to a fetch that is followed by a write of the row, to lock it."""
    _USER_ORDER: ClassVar[str] = "user_id"
    """Sorts user ids by their bytes."""
    _VECTOR_DTYPE: ClassVar[Any] = None
    """The dtype embeddings are cast to (None: as the embedder made them)."""

    # -- primitives ----------------------------------------------------------------------

    @abc.abstractmethod
    def _read(self) -> AbstractContextManager[Any]:
        """A connection to read with."""

    @abc.abstractmethod
    def _write(self) -> AbstractContextManager[Any]:
        """A connection in a write transaction: committed on success, else rolled back."""

    @abc.abstractmethod
    def _x(self, conn: Any, sql: str, args: Sequence[Any] = ()) -> Any:
        """Execute ``sql`` (``?`` placeholders); a cursor."""

    @abc.abstractmethod
    def _xmany(self, conn: Any, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Execute ``sql`` (``?`` placeholders) once per row."""

    @abc.abstractmethod
    def _t(self, dt: datetime) -> Any:
        """A timestamp as bound."""

    @abc.abstractmethod
    def _j(self, value: Any) -> Any:
        """A JSON value as bound."""

    @abc.abstractmethod
    def _pref(self, row: Any) -> Preference:
        """A ``memories`` row (``COLUMNS``) as a record."""

    @abc.abstractmethod
    def _event_of(self, row: Any) -> Event:
        """An ``events`` row as an event."""

    @abc.abstractmethod
    def _profile_of(self, row: Any) -> Profile:
        """A ``profiles`` row as a profile."""

    @abc.abstractmethod
    def _vector_columns(self, user: str, vector: np.ndarray) -> dict[str, Any]:
        """The columns of a new memory besides :data:`FIELDS`: its embedding and the like."""

    def _begin_erase(self, conn: Any, user: str) -> None:
        """Let this transaction delete the user's append-only rows."""

    def _end_erase(self, conn: Any, user: str) -> None:
        """Undo :meth:`_begin_erase` before the transaction ends."""

    def _compact(self) -> None:
        """After an erasure: make the deleted bytes leave the disk."""

    # -- helpers -------------------------------------------------------------------------

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        vectors = self.embedder.embed(list(texts))
        if vectors.shape != (len(texts), self.embedder.dim):
            raise BackendError(f"embedder returned shape {vectors.shape} for {len(texts)} texts")
        return np.asarray(vectors, dtype=self._VECTOR_DTYPE)

    def _ensure_user(self, conn: Any, user: str, at: datetime) -> None:
        self._x(
            conn,
            "INSERT INTO users (user_id, created_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
            (user, self._t(at)),
        )

    def _events(self, conn: Any, *rows: EventRow) -> None:
        """Append events, each an :data:`EventRow`."""
        self._xmany(
            conn,
            f"INSERT INTO events ({_EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(u, self._t(at), a, r, by, why, self._j(data)) for u, a, r, by, why, data, at in rows],
        )

    def _insert(
        self,
        conn: Any,
        pins: Sequence[PreferenceIn],
        vectors: Sequence[np.ndarray],
        *,
        ids: Sequence[str],
        user: str,
        now: datetime,
        root_id: str | None = None,
        previous_id: str | None = None,
    ) -> None:
        rows = [
            {
                "id": rid,
                "user_id": user,
                "text": pin.text,
                "kind": pin.kind,
                "topic": pin.topic,
                "dimension": pin.dimension,
                "tags": self._j(pin.tags),
                "strength": pin.strength,
                "source": pin.source,
                "source_turn_ids": self._j(pin.source_turn_ids),
                "valid_from": self._t(pin.valid_from or now),
                "recorded_at": self._t(now),
                "root_id": root_id or rid,
                "previous_id": previous_id,
                "flags": self._j(pin.flags),
                "meta": self._j(pin.meta),
                **self._vector_columns(user, vec),
            }
            for rid, pin, vec in zip(ids, pins, vectors, strict=True)
        ]
        cols = list(rows[0])
        self._xmany(
            conn,
            f"INSERT INTO memories ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
            [tuple(r[c] for c in cols) for r in rows],
        )

    def _fetch(self, conn: Any, record_id: str, user: str, *, lock: bool = False) -> Preference:
        row = self._x(
            conn,
            f"SELECT {COLUMNS} FROM memories WHERE id = ? AND user_id = ?"
            + (self._LOCK if lock else ""),
            (record_id, user),
        ).fetchone()
        if row is None:
            raise NotFoundError(f"no memory {record_id} for user {user!r}")
        return self._pref(row)

    def _active(self, conn: Any, record_id: str, user: str, doing: str) -> Preference:
        """The version ``record_id``, locked, or ConflictError if it is not active."""
        current = self._fetch(conn, record_id, user, lock=True)
        if not current.active:
            raise ConflictError(f"memory {record_id} is not active{doing}")
        return current

    # -- records and revisions -----------------------------------------------------------

    def add_many(
        self,
        items: Sequence[PreferenceIn | str],
        *,
        user: str,
        actor: str = "user",
        reason: str | None = None,
    ) -> Records:
        check_user(user)
        pins = [coerce(i) for i in items]
        if not pins:
            return []
        vectors = self._embed([p.text for p in pins])
        now = utcnow()
        ids = [new_id() for _ in pins]
        with self._write() as conn:
            self._ensure_user(conn, user, now)
            self._insert(conn, pins, list(vectors), ids=ids, user=user, now=now)
            self._events(
                conn,
                *[
                    (user, "add", rid, actor, reason, {"text": pin.text, "kind": pin.kind}, now)
                    for rid, pin in zip(ids, pins, strict=True)
                ],
            )
            rows = self._x(
                conn,
                f"SELECT {COLUMNS} FROM memories WHERE user_id = ? "
                f"AND id IN ({','.join('?' * len(ids))})",
                (user, *ids),
            ).fetchall()
        by_id = {r["id"]: self._pref(r) for r in rows}
        return [by_id[rid] for rid in ids]

    def get(self, record_id: str, *, user: str) -> Preference:
        check_user(user)
        check_id(record_id)
        with self._read() as conn:
            return self._fetch(conn, record_id, user)

    def list(
        self,
        *,
        user: str,
        include_history: bool = False,
        kinds: Sequence[Kind] | None = None,
        limit: int | None = None,
        as_of: datetime | None = None,
    ) -> Records:
        check_user(user)
        sql = f"SELECT {COLUMNS} FROM memories WHERE user_id = ?"
        args: list[Any] = [user]
        if as_of is not None:
            sql += f" AND {ACTIVE_AT}"
            args.extend([self._t(check_as_of(as_of, include_history=include_history))] * 4)
        elif not include_history:
            sql += f" AND {ACTIVE_NOW}"
        if kinds:
            sql += f" AND kind IN ({','.join('?' * len(kinds))})"
            args.extend(kinds)
        sql += f" ORDER BY {self._SEQ} DESC"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        with self._read() as conn:
            return [self._pref(r) for r in self._x(conn, sql, args)]

    def update(
        self,
        record_id: str,
        new: PreferenceIn | str,
        *,
        user: str,
        actor: str = "user",
        reason: str | None = None,
    ) -> Preference:
        check_user(user)
        check_id(record_id)
        old = self.get(record_id, user=user)
        pin = coerce(old.revised(new) if isinstance(new, str) else new)
        vector = self._embed([pin.text])[0]
        now = utcnow()
        rid = new_id()
        with self._write() as conn:
            current = self._active(
                conn,
                record_id,
                user,
                " (superseded or forgotten); update its newest version instead",
            )
            self._insert(
                conn,
                [pin],
                [vector],
                ids=[rid],
                user=user,
                now=now,
                root_id=current.root_id,
                previous_id=current.id,
            )
            self._x(
                conn,
                "UPDATE memories SET superseded_at = ?, superseded_by = ?, valid_to = ? "
                "WHERE id = ? AND user_id = ?",
                (self._t(now), rid, self._t(pin.valid_from or now), record_id, user),
            )
            self._events(
                conn,
                (
                    user,
                    "supersede",
                    rid,
                    actor,
                    reason,
                    {"old_id": record_id, "old_text": current.text, "text": pin.text},
                    now,
                ),
            )
            return self._fetch(conn, rid, user)

    def forget(
        self, record_id: str, *, user: str, actor: str = "user", reason: str | None = None
    ) -> Preference:
        check_user(user)
        check_id(record_id)
        now = utcnow()
        with self._write() as conn:
            current = self._active(conn, record_id, user, "; nothing to forget")
            self._x(
                conn,
                "UPDATE memories SET valid_to = ? WHERE id = ? AND user_id = ?",
                (self._t(now), record_id, user),
            )
            self._events(
                conn, (user, "forget", record_id, actor, reason, {"text": current.text}, now)
            )
            return self._fetch(conn, record_id, user)

    def history(self, record_id: str, *, user: str) -> Records:
        check_user(user)
        check_id(record_id)
        with self._read() as conn:
            rec = self._fetch(conn, record_id, user)
            rows = self._x(
                conn,
                f"SELECT {COLUMNS} FROM memories WHERE user_id = ? AND root_id = ? "
                f"ORDER BY {self._SEQ}",
                (user, rec.root_id),
            )
            return [self._pref(r) for r in rows]

    # -- events, exchanges, profiles, feedback -------------------------------------------

    def record_event(
        self,
        *,
        user: str,
        action: str,
        actor: str = "system",
        reason: str | None = None,
        payload: dict[str, Any] | None = None,
    ) -> None:
        check_user(user)
        now = utcnow()
        with self._write() as conn:
            self._ensure_user(conn, user, now)
            self._events(conn, (user, action, None, actor, reason, payload or {}, now))

    def events(self, *, user: str, limit: int | None = None) -> Events:
        check_user(user)
        args: list[Any] = [user]
        sql = _newest(
            f"SELECT id, {_EVENT_COLUMNS} FROM events WHERE user_id = ? ORDER BY id",
            args,
            "id",
            limit,
        )
        with self._read() as conn:
            return [self._event_of(r) for r in self._x(conn, sql, args)]

    def log_exchange(self, exchange: Exchange, *, user: str) -> None:
        check_user(user)
        if exchange.user_id != user:
            raise ValidationError(f"exchange belongs to {exchange.user_id!r}, not {user!r}")
        with self._write() as conn:
            self._ensure_user(conn, user, exchange.at)
            self._x(
                conn,
                "INSERT INTO exchanges (id, user_id, at, model, method, latency_ms, "
                f"retrieval_ms, body) VALUES (?, ?, ?, ?, ?, ?, ?, {self._JSON_ARG})",
                (
                    exchange.id,
                    user,
                    self._t(exchange.at),
                    exchange.model,
                    exchange.method,
                    exchange.latency_ms,
                    exchange.retrieval_ms,
                    exchange.model_dump_json(),
                ),
            )

    def _bodies(self, table: str, user: str, limit: int | None) -> Names:
        """The JSON bodies of the user's rows of ``table``, oldest first."""
        check_user(user)
        args: list[Any] = [user]
        sql = _newest(
            f"SELECT {self._BODY}, {self._SEQ} FROM {table} WHERE user_id = ? ORDER BY {self._SEQ}",
            args,
            self._SEQ,
            limit,
        )
        with self._read() as conn:
            return [r["body"] for r in self._x(conn, sql, args)]

    def exchanges(self, *, user: str, limit: int | None = None) -> Exchanges:
        return [Exchange.model_validate_json(b) for b in self._bodies("exchanges", user, limit)]

    def get_exchange(self, exchange_id: str, *, user: str) -> Exchange:
        check_user(user)
        check_id(exchange_id)
        with self._read() as conn:
            row = self._x(
                conn,
                f"SELECT {self._BODY} FROM exchanges WHERE id = ? AND user_id = ?",
                (exchange_id, user),
            ).fetchone()
        if row is None:
            raise NotFoundError(f"no exchange {exchange_id} for user {user!r}")
        return Exchange.model_validate_json(row["body"])

    def set_profile(
        self,
        weights: dict[str, float],
        *,
        user: str,
        uncertainty: dict[str, float] | None = None,
        source: str = "user",
        reason: str | None = None,
    ) -> Profile:
        check_user(user)
        clean = check_weights(weights)
        now = utcnow()
        with self._write() as conn:
            self._ensure_user(conn, user, now)
            rows = self._x(
                conn,
                "INSERT INTO profiles (user_id, at, weights, uncertainty, source, reason) "
                "VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                (user, self._t(now), self._j(clean), self._j(uncertainty or {}), source, reason),
            ).fetchall()
            self._events(conn, (user, "set_profile", None, source, reason, {"weights": clean}, now))
        return Profile(
            id=int(rows[0]["id"]) if rows else 0,
            user_id=user,
            at=now,
            weights=clean,
            uncertainty=uncertainty or {},
            source=source,
            reason=reason,
        )

    def profile_history(self, *, user: str) -> Profiles:
        check_user(user)
        with self._read() as conn:
            rows = self._x(
                conn,
                "SELECT id, user_id, at, weights, uncertainty, source, reason FROM profiles "
                "WHERE user_id = ? ORDER BY id",
                (user,),
            )
            return [self._profile_of(r) for r in rows]

    def add_feedback(self, fb: FeedbackIn, *, user: str) -> Feedback:
        check_user(user)
        rec = Feedback.new(fb, user=user)
        now = rec.at
        with self._write() as conn:
            if (
                rec.exchange_id is not None
                and not self._x(
                    conn,
                    "SELECT 1 FROM exchanges WHERE id = ? AND user_id = ?",
                    (rec.exchange_id, user),
                ).fetchone()
            ):
                raise NotFoundError(f"no exchange {rec.exchange_id} for user {user!r}")
            self._ensure_user(conn, user, now)
            self._x(
                conn,
                "INSERT INTO feedback (id, user_id, at, kind, exchange_id, body) "
                f"VALUES (?, ?, ?, ?, ?, {self._JSON_ARG})",
                (rec.id, user, self._t(now), rec.kind, rec.exchange_id, rec.model_dump_json()),
            )
            self._events(
                conn,
                (
                    user,
                    "feedback",
                    rec.id,
                    rec.source,
                    None,
                    {"kind": rec.kind, "exchange_id": rec.exchange_id},
                    now,
                ),
            )
        return rec

    def feedback(self, *, user: str, limit: int | None = None) -> Feedbacks:
        return [Feedback.model_validate_json(b) for b in self._bodies("feedback", user, limit)]

    def prune(self, *, user: str, before: datetime, dry_run: bool = False) -> Records:
        return prune_turns(self, user=user, before=before, dry_run=dry_run, columns=COLUMNS)

    # -- users ---------------------------------------------------------------------------

    def erase_user(self, *, user: str) -> int:
        check_user(user)
        with self._write() as conn:
            self._begin_erase(conn, user)
            deleted = 0
            for table in USER_TABLES:
                deleted += self._x(conn, f"DELETE FROM {table} WHERE user_id = ?", (user,)).rowcount
            self._end_erase(conn, user)
        self._compact()
        return deleted

    def has_user(self, *, user: str) -> bool:
        check_user(user)
        with self._read() as conn:
            row = self._x(conn, "SELECT 1 FROM users WHERE user_id = ?", (user,)).fetchone()
        return row is not None

    def users(self) -> Names:
        with self._read() as conn:
            rows = self._x(conn, f"SELECT user_id FROM users ORDER BY {self._USER_ORDER}")
            return [r["user_id"] for r in rows]
