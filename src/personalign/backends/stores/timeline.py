"""Time in the SQL stores: the "active at" predicate of ``as_of``, and pruning raw turns.

Both engines bind timestamps through the store's ``_t`` (SQLite: fixed-width ISO-8601 text in
UTC, which sorts in time order; PostgreSQL: ``timestamptz``), so the SQL here is shared.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, Protocol

from personalign.errors import ValidationError
from personalign.types import Event, Preference, check_user, utcnow

ACTIVE_AT = (
    "valid_from <= ? AND (valid_to IS NULL OR valid_to > ?) "
    "AND recorded_at <= ? AND (superseded_at IS NULL OR superseded_at > ?)"
)
"""A version active at one moment (bind it four times): valid then, and already recorded
but not yet superseded then. ``search(as_of=...)`` uses the same condition."""

RAW_KINDS = ("episode",)
"""The kinds of raw records a retention period applies to."""


def check_time(value: datetime, *, what: str = "as_of") -> datetime:
    """``value`` if it is a timezone-aware datetime, else :class:`ValidationError`."""
    if not isinstance(value, datetime):
        raise ValidationError(f"{what} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValidationError(
            f"{what} {value.isoformat()} has no time zone: give one (e.g. +00:00 for UTC)"
        )
    return value


def check_as_of(value: datetime, *, include_history: bool = False) -> datetime:
    """``value`` checked by :func:`check_time`; ``include_history`` is refused with it."""
    if include_history:
        raise ValidationError("as_of lists what was active at one time: not with include_history")
    return check_time(value)


class _Primitives(Protocol):
    """What :func:`prune_turns` needs of a :class:`~personalign.backends.stores.sql.SQLStore`."""

    def _write(self) -> AbstractContextManager[Any]: ...
    def _x(self, conn: Any, sql: str, args: Sequence[Any] = ()) -> Any: ...
    def _t(self, dt: datetime) -> Any: ...
    def _j(self, value: Any) -> Any: ...
    def _pref(self, row: Any) -> Preference: ...
    def _event_of(self, row: Any) -> Event: ...
    def _begin_erase(self, conn: Any, user: str) -> None: ...
    def _end_erase(self, conn: Any, user: str) -> None: ...
    def _compact(self) -> None: ...


def _refused_turns(store: _Primitives, conn: Any, user: str, cutoff: Any) -> list[int]:
    """Ids of the user's refusal events before ``cutoff`` that hold a raw turn's text: a turn
    the boundary refused to store (``refuse`` of an episode) or to answer (``refuse_request``)."""
    rows = store._x(
        conn,
        "SELECT id, user_id, at, action, record_id, actor, reason, payload FROM events "
        "WHERE user_id = ? AND action IN ('refuse', 'refuse_request') AND at < ?",
        (user, cutoff),
    ).fetchall()
    events = [store._event_of(r) for r in rows]
    return [
        e.id for e in events if e.action == "refuse_request" or e.payload.get("kind") in RAW_KINDS
    ]


def prune_turns(
    store: _Primitives, *, user: str, before: datetime, dry_run: bool, columns: str
) -> list[Preference]:
    """:meth:`~personalign.backends.stores.base.RetentionStore.prune` over the primitives of a
    SQL store (``columns``: the ``memories`` columns a record is read from)."""
    check_user(user)
    cutoff = store._t(check_time(before, what="before"))
    kinds = ",".join("?" * len(RAW_KINDS))
    with store._write() as conn:
        rows = store._x(
            conn,
            f"SELECT {columns} FROM memories WHERE user_id = ? AND kind IN ({kinds}) "
            "AND recorded_at < ? ORDER BY recorded_at",
            (user, *RAW_KINDS, cutoff),
        ).fetchall()
        gone = [store._pref(r) for r in rows]
        refused = _refused_turns(store, conn, user, cutoff)
        if dry_run or not (gone or refused):
            return gone
        ids = [r.id for r in gone]
        store._begin_erase(conn, user)
        if refused:
            marks = ",".join("?" * len(refused))
            store._x(
                conn, f"DELETE FROM events WHERE user_id = ? AND id IN ({marks})", (user, *refused)
            )
        for start in range(0, len(ids), 500):  # bounded statements for large prunes
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            store._x(
                conn,
                f"DELETE FROM events WHERE user_id = ? AND record_id IN ({marks})",
                (user, *chunk),
            )
            store._x(
                conn,
                f"DELETE FROM memories WHERE user_id = ? AND id IN ({marks})",
                (user, *chunk),
            )
        store._end_erase(conn, user)
        now = utcnow()
        store._x(
            conn,
            "INSERT INTO events (user_id, at, action, record_id, actor, reason, payload) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                user,
                store._t(now),
                "prune",
                None,
                "retention",
                f"raw turns recorded before {before.isoformat()}",
                store._j(
                    {
                        "deleted": len(ids),
                        "refusals_deleted": len(refused),
                        "kinds": list(RAW_KINDS),
                    }
                ),
            ),
        )
    store._compact()
    return gone
