"""The conflict verbs of :class:`~personalign.backends.stores.sql.SQLStore`, written once for
SQLite and PostgreSQL over the same primitives (``_read``, ``_write``, ``_x``, ...).

A conflict row names two memory versions of one user; its status is read from them: ``open``
while both are active and it is unresolved, ``moot`` once either was updated or forgotten.
Resolving it in favour of one side supersedes the other by the kept one (``superseded_by``
names it; the text stays in history) in the same transaction that marks it resolved. A
resolved conflict cannot change again (a trigger in each backend refuses it).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

from personalign.backends.stores.base import Conflicts, MemoryStore
from personalign.errors import ConflictError, NotFoundError, ValidationError
from personalign.types import Conflict, Preference, check_user, new_id, utcnow

_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_ACTIVE = "(%s.superseded_at IS NULL AND %s.valid_to IS NULL)"
_SELECT = (
    "SELECT c.id, c.user_id, c.created_at, c.older_id, c.newer_id, c.score, c.reason, "
    "c.resolution, c.resolved_at, c.resolved_by, a.text AS older_text, b.text AS newer_text, "
    f"{_ACTIVE % ('a', 'a')} AS older_active, {_ACTIVE % ('b', 'b')} AS newer_active "
    "FROM conflicts c "
    "JOIN memories a ON a.id = c.older_id AND a.user_id = c.user_id "
    "JOIN memories b ON b.id = c.newer_id AND b.user_id = c.user_id "
    "WHERE c.user_id = ?"
)


def _check(value: str, what: str) -> str:
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise ValidationError(f"bad {what} {value!r}: expected 32 hex characters")
    return value


def conflict_of(row: Any) -> Conflict:
    """A row of :data:`_SELECT` as a :class:`Conflict`, its status read from both sides."""
    if row["resolution"] is not None:
        status = "resolved"
    elif row["older_active"] and row["newer_active"]:
        status = "open"
    else:
        status = "moot"
    fields = [
        "id",
        "user_id",
        "created_at",
        "older_id",
        "newer_id",
        "score",
        "reason",
        "resolution",
        "resolved_at",
        "resolved_by",
        "older_text",
        "newer_text",
    ]
    return Conflict.model_validate({**{f: row[f] for f in fields}, "status": status})


class SQLConflicts(MemoryStore):
    """:class:`~personalign.backends.stores.base.ConflictLog` over SQLStore's primitives."""

    _SEQ: ClassVar[str]
    _LOCK: ClassVar[str] = ""

    if TYPE_CHECKING:  # provided by SQLStore

        def _read(self) -> AbstractContextManager[Any]: ...
        def _write(self) -> AbstractContextManager[Any]: ...
        def _x(self, conn: Any, sql: str, args: Sequence[Any] = ()) -> Any: ...
        def _t(self, dt: datetime) -> Any: ...
        def _events(self, conn: Any, *rows: Any) -> None: ...
        def _fetch(
            self, conn: Any, record_id: str, user: str, *, lock: bool = False
        ) -> Preference: ...
        def _active(self, conn: Any, record_id: str, user: str, doing: str) -> Preference: ...

    def _conflict(self, conn: Any, conflict_id: str, user: str) -> Conflict:
        row = self._x(conn, _SELECT + " AND c.id = ?", (user, conflict_id)).fetchone()
        if row is None:
            raise NotFoundError(f"no conflict {conflict_id} for user {user!r}")
        return conflict_of(row)

    def add_conflict(
        self,
        older_id: str,
        newer_id: str,
        *,
        user: str,
        score: float | None = None,
        reason: str | None = None,
        actor: str = "extractor",
    ) -> Conflict:
        check_user(user)
        _check(older_id, "memory id")
        _check(newer_id, "memory id")
        if older_id == newer_id:
            raise ValidationError("a conflict needs two different memories")
        now = utcnow()
        cid = new_id()
        with self._write() as conn:
            doing = "; a conflict is between two active preferences"
            older = self._active(conn, older_id, user, doing)
            newer = self._active(conn, newer_id, user, doing)
            self._x(
                conn,
                "INSERT INTO conflicts (id, user_id, created_at, older_id, newer_id, score, "
                "reason) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (cid, user, self._t(now), older_id, newer_id, score, reason),
            )
            payload = {
                "conflict_id": cid,
                "older_id": older_id,
                "newer_id": newer_id,
                "older_text": older.text,
                "newer_text": newer.text,
                "score": score,
            }
            self._events(conn, (user, "conflict", newer_id, actor, reason, payload, now))
            return self._conflict(conn, cid, user)

    def conflicts(self, *, user: str, include_closed: bool = False) -> Conflicts:
        check_user(user)
        with self._read() as conn:
            rows = self._x(conn, _SELECT + f" ORDER BY c.{self._SEQ}", (user,)).fetchall()
        found = [conflict_of(r) for r in rows]
        return found if include_closed else [c for c in found if c.status == "open"]

    def get_conflict(self, conflict_id: str, *, user: str) -> Conflict:
        check_user(user)
        _check(conflict_id, "conflict id")
        with self._read() as conn:
            return self._conflict(conn, conflict_id, user)

    def resolve_conflict(
        self,
        conflict_id: str,
        *,
        user: str,
        keep: str | None,
        actor: str = "user",
        reason: str | None = None,
    ) -> Conflict:
        check_user(user)
        _check(conflict_id, "conflict id")
        now = utcnow()
        with self._write() as conn:
            locked = self._x(
                conn,
                "SELECT id FROM conflicts WHERE id = ? AND user_id = ?" + self._LOCK,
                (conflict_id, user),
            ).fetchone()
            if locked is None:
                raise NotFoundError(f"no conflict {conflict_id} for user {user!r}")
            c = self._conflict(conn, conflict_id, user)
            if keep is not None and keep not in (c.older_id, c.newer_id):
                raise ValidationError(
                    f"--keep must be {c.older_id} or {c.newer_id} (the two sides of conflict "
                    f"{conflict_id}), got {keep!r}"
                )
            if c.status != "open":
                why = "resolved" if c.status == "resolved" else "moot (a side changed since)"
                raise ConflictError(f"conflict {conflict_id} is {why}: nothing to resolve")
            superseded = None
            if keep is not None:
                superseded = c.newer_id if keep == c.older_id else c.older_id
                self._active(conn, superseded, user, "")  # locks the row
                self._x(
                    conn,
                    "UPDATE memories SET superseded_at = ?, superseded_by = ?, valid_to = ? "
                    "WHERE id = ? AND user_id = ?",
                    (self._t(now), keep, self._t(now), superseded, user),
                )
            resolution = "both" if keep is None else "older" if keep == c.older_id else "newer"
            self._x(
                conn,
                "UPDATE conflicts SET resolution = ?, resolved_at = ?, resolved_by = ? "
                "WHERE id = ? AND user_id = ?",
                (resolution, self._t(now), actor, conflict_id, user),
            )
            payload = {
                "conflict_id": conflict_id,
                "resolution": resolution,
                "kept": [keep] if keep else [c.older_id, c.newer_id],
                "superseded": superseded,
            }
            self._events(conn, (user, "resolve_conflict", keep, actor, reason, payload, now))
            return self._conflict(conn, conflict_id, user)
