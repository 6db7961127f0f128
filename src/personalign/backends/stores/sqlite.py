"""The embedded default store: one SQLite file, WAL mode, FTS5 for BM25, vectors as blobs.

Concurrency: every write is one ``BEGIN IMMEDIATE`` transaction with a 30 s busy timeout, so
many processes can add and search at once; WAL lets readers run during writes. Durability:
``synchronous=NORMAL`` in WAL mode keeps every committed write across a process crash
(SIGKILL); power loss may lose the last transactions. Erasure: ``secure_delete`` zeroes freed
pages, then the FTS index is rebuilt, the file vacuumed and the WAL truncated, so an erased
user's text is gone from the bytes on disk.

Dense search loads the user's vectors and scores them with numpy; with per-user memory counts
in the thousands this is sub-millisecond and needs no extension.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from personalign.backends.embedders import Embedder
from personalign.backends.stores.base import (
    Events,
    Exchanges,
    Feedbacks,
    Hits,
    MemoryStore,
    Names,
    Profiles,
    Records,
)
from personalign.backends.stores.hybrid import (
    Candidate,
    dense_query,
    entities,
    named_in_query,
    query_terms,
    rank,
)
from personalign.backends.stores.sqlite_migrations import MIGRATIONS
from personalign.config import RetrievalConfig
from personalign.errors import (
    BackendError,
    ConflictError,
    NotFoundError,
    ValidationError,
)
from personalign.types import (
    Event,
    Exchange,
    Feedback,
    FeedbackIn,
    Kind,
    Preference,
    PreferenceIn,
    Profile,
    SearchHit,
    check_text,
    check_user,
    check_weights,
    new_id,
    utcnow,
)

_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_COLUMNS = (
    "id, user_id, text, kind, topic, dimension, tags, strength, source, source_turn_ids, "
    "valid_from, valid_to, recorded_at, superseded_at, superseded_by, root_id, previous_id, "
    "flags, meta"
)
_ACTIVE_AT = (
    "valid_from <= :t AND (valid_to IS NULL OR valid_to > :t) "
    "AND recorded_at <= :t AND (superseded_at IS NULL OR superseded_at > :t)"
)
_ACTIVE_NOW = "superseded_at IS NULL AND valid_to IS NULL"
USER_TABLES = ("memories", "events", "exchanges", "profiles", "feedback", "users")
"""Every table holding a user's data; ``erase_user`` deletes from each (users last)."""


def _ts(dt: datetime) -> str:
    """ISO-8601 UTC with microseconds: sorts lexicographically in time order."""
    return dt.astimezone(tz=utcnow().tzinfo).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


def _scope(user: str) -> str:
    """An FTS token that stands for the user, so a MATCH is restricted to one user's rows."""
    return "u" + hashlib.blake2b(user.encode(), digest_size=12).hexdigest()


def _check_id(record_id: str) -> str:
    if not isinstance(record_id, str) or not _ID_RE.match(record_id):
        raise ValidationError(f"bad memory id {record_id!r}: expected 32 hex characters")
    return record_id


def _fts_query(terms: list[str]) -> str | None:
    """An FTS5 OR-query of ``terms`` (see :func:`hybrid.query_terms`)."""
    if not terms:
        return None
    return " OR ".join('"' + t.replace('"', "") + '"' for t in terms)


def _top(values: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` largest values (all indices when there are at most ``n``)."""
    if n >= len(values):
        return np.arange(len(values))
    return np.argpartition(-values, n - 1)[:n]


def _row_to_pref(row: sqlite3.Row) -> Preference:
    return Preference(
        id=row["id"],
        user_id=row["user_id"],
        text=row["text"],
        kind=row["kind"],
        topic=row["topic"],
        dimension=row["dimension"],
        tags=json.loads(row["tags"]),
        strength=row["strength"],
        source=row["source"],
        source_turn_ids=json.loads(row["source_turn_ids"]),
        valid_from=datetime.fromisoformat(row["valid_from"]),
        valid_to=datetime.fromisoformat(row["valid_to"]) if row["valid_to"] else None,
        recorded_at=datetime.fromisoformat(row["recorded_at"]),
        superseded_at=(
            datetime.fromisoformat(row["superseded_at"]) if row["superseded_at"] else None
        ),
        superseded_by=row["superseded_by"],
        root_id=row["root_id"],
        previous_id=row["previous_id"],
        flags=json.loads(row["flags"]),
        meta=json.loads(row["meta"]),
    )


def _coerce(item: PreferenceIn | str) -> PreferenceIn:
    pin = PreferenceIn(text=item) if isinstance(item, str) else item
    return pin.model_copy(update={"text": check_text(pin.text, what="memory text")})


class SQLiteStore(MemoryStore):
    """:class:`MemoryStore` on one SQLite file. Safe to share across threads and processes."""

    def __init__(self, path: str | Path, embedder: Embedder) -> None:
        self.path = Path(path)
        self.embedder = embedder
        self._local = threading.local()
        self._all_conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._migrate()

    # -- connections and transactions ---------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            except sqlite3.Error as e:
                raise BackendError(f"cannot open memory database {self.path}: {e}") from e
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout = 30000")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA secure_delete = ON")
            conn.execute("PRAGMA foreign_keys = ON")
            self._local.conn = conn
            with self._lock:
                self._all_conns.append(conn)
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")

    def _migrate(self) -> None:
        with self._write() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT)"
            )
            done = {r[0] for r in conn.execute("SELECT name FROM _migrations")}
            for name, sql in MIGRATIONS:
                if name in done:
                    continue
                for stmt in _split_sql(sql):
                    conn.execute(stmt)
                conn.execute("INSERT INTO _migrations VALUES (?, ?)", (name, _ts(utcnow())))

    def close(self) -> None:
        with self._lock:
            for conn in self._all_conns:
                with contextlib.suppress(sqlite3.ProgrammingError):  # closed in its thread
                    conn.close()
            self._all_conns.clear()
        self._local = threading.local()

    # -- helpers ------------------------------------------------------------------------

    def _event(
        self,
        conn: sqlite3.Connection,
        *,
        user: str,
        action: str,
        record_id: str | None,
        actor: str,
        reason: str | None,
        payload: dict[str, Any],
        at: datetime,
    ) -> None:
        conn.execute(
            "INSERT INTO events (user_id, at, action, record_id, actor, reason, payload) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (user, _ts(at), action, record_id, actor, reason, json.dumps(payload)),
        )

    def _insert(
        self,
        conn: sqlite3.Connection,
        pin: PreferenceIn,
        *,
        user: str,
        vector: np.ndarray,
        now: datetime,
        root_id: str | None = None,
        previous_id: str | None = None,
    ) -> str:
        rid = new_id()
        conn.execute(
            f"INSERT INTO memories ({_COLUMNS}, embedding, embedder, scope) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                rid,
                user,
                pin.text,
                pin.kind,
                pin.topic,
                pin.dimension,
                json.dumps(pin.tags),
                pin.strength,
                pin.source,
                json.dumps(pin.source_turn_ids),
                _ts(pin.valid_from or now),
                None,
                _ts(now),
                None,
                None,
                root_id or rid,
                previous_id,
                json.dumps(pin.flags),
                json.dumps(pin.meta),
                np.asarray(vector, dtype=np.float32).tobytes(),
                self.embedder.name,
                _scope(user),
            ),
        )
        return rid

    def _fetch(self, conn: sqlite3.Connection, record_id: str, user: str) -> Preference:
        row = conn.execute(
            f"SELECT {_COLUMNS} FROM memories WHERE id = ? AND user_id = ?", (record_id, user)
        ).fetchone()
        if row is None:
            raise NotFoundError(f"no memory {record_id} for user {user!r}")
        return _row_to_pref(row)

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        vectors = self.embedder.embed(list(texts))
        if vectors.shape != (len(texts), self.embedder.dim):
            raise BackendError(f"embedder returned shape {vectors.shape} for {len(texts)} texts")
        return vectors

    # -- verbs --------------------------------------------------------------------------

    def add_many(
        self,
        items: Sequence[PreferenceIn | str],
        *,
        user: str,
        actor: str = "user",
        reason: str | None = None,
    ) -> Records:
        check_user(user)
        pins = [_coerce(i) for i in items]
        if not pins:
            return []
        vectors = self._embed([p.text for p in pins])
        now = utcnow()
        with self._write() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO users (user_id, created_at) VALUES (?, ?)", (user, _ts(now))
            )
            ids = []
            for pin, vec in zip(pins, vectors, strict=True):
                rid = self._insert(conn, pin, user=user, vector=vec, now=now)
                self._event(
                    conn,
                    user=user,
                    action="add",
                    record_id=rid,
                    actor=actor,
                    reason=reason,
                    payload={"text": pin.text, "kind": pin.kind},
                    at=now,
                )
                ids.append(rid)
            return [self._fetch(conn, rid, user) for rid in ids]

    def get(self, record_id: str, *, user: str) -> Preference:
        check_user(user)
        return self._fetch(self._conn(), _check_id(record_id), user)

    def list(
        self,
        *,
        user: str,
        include_history: bool = False,
        kinds: Sequence[Kind] | None = None,
        limit: int | None = None,
    ) -> Records:
        check_user(user)
        sql = f"SELECT {_COLUMNS} FROM memories WHERE user_id = ?"
        args: list[Any] = [user]
        if not include_history:
            sql += f" AND {_ACTIVE_NOW}"
        if kinds:
            sql += f" AND kind IN ({','.join('?' * len(kinds))})"
            args.extend(kinds)
        sql += " ORDER BY rowid DESC"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        return [_row_to_pref(r) for r in self._conn().execute(sql, args)]

    def search(
        self,
        query: str,
        *,
        user: str,
        k: int = 10,
        kinds: Sequence[Kind] | None = None,
        config: RetrievalConfig | None = None,
        as_of: datetime | None = None,
    ) -> Hits:
        check_user(user)
        query = check_text(query, what="query")
        if k < 1:
            raise ValidationError(f"k must be at least 1, got {k}")
        cfg = config or RetrievalConfig()
        conn = self._conn()
        now = as_of or utcnow()
        where = f"user_id = :u AND ({_ACTIVE_NOW if as_of is None else _ACTIVE_AT})"
        params: dict[str, Any] = {"u": user, "t": _ts(now)}
        if kinds:
            names = [f":k{i}" for i in range(len(kinds))]
            where += f" AND kind IN ({','.join(names)})"
            params.update({f"k{i}": kind for i, kind in enumerate(kinds)})

        rows = conn.execute(
            f"SELECT rowid, embedding, valid_from, kind, tags, source_turn_ids FROM memories "
            f"WHERE {where}",
            params,
        ).fetchall()
        if not rows:
            return []
        known = {e for r in rows if r["tags"] != "[]" for e in entities(json.loads(r["tags"]))}
        named = named_in_query(query, known, cfg)
        qvec = self._embed([dense_query(query, named)])[0]
        matrix = np.frombuffer(b"".join(r["embedding"] for r in rows), dtype=np.float32)
        cos = matrix.reshape(len(rows), -1) @ qvec  # (n,) cosine: rows and query are unit
        top = _top(cos, cfg.candidates)
        is_pref = np.fromiter((r["kind"] != "episode" for r in rows), dtype=bool, count=len(rows))
        if cfg.preference_weight > 0 and is_pref.any():  # the best preferences always compete
            pref_idx = np.flatnonzero(is_pref)
            top = np.union1d(top, pref_idx[_top(cos[pref_idx], cfg.candidates)])
        by_rowid = {r["rowid"]: i for i, r in enumerate(rows)}
        dense = {int(rows[i]["rowid"]): float(cos[i]) for i in top}

        # full text: BM25 within the user's scope token
        bm25: dict[int, float] = {}
        fts = _fts_query(query_terms(query, named))
        if fts:
            hits = conn.execute(
                "SELECT rowid, -bm25(memories_fts, 0.0, 1.0) AS s FROM memories_fts "
                "WHERE memories_fts MATCH :q ORDER BY bm25(memories_fts, 0.0, 1.0) LIMIT :n",
                {"q": f'scope:"{_scope(user)}" AND text:({fts})', "n": cfg.candidates * 4},
            ).fetchall()
            for h in hits:
                if h["rowid"] in by_rowid and len(bm25) < cfg.candidates:
                    bm25[int(h["rowid"])] = float(h["s"])

        candidates = {
            rowid: Candidate(
                kind=rows[by_rowid[rowid]]["kind"],
                tags=json.loads(rows[by_rowid[rowid]]["tags"]),
                source_turn_ids=json.loads(rows[by_rowid[rowid]]["source_turn_ids"]),
                valid_from=datetime.fromisoformat(rows[by_rowid[rowid]]["valid_from"]),
            )
            for rowid in {**dense, **bm25}
        }
        ranked = rank(candidates, dense, bm25, query=query, named=named, now=now, cfg=cfg, k=k)
        chosen = [r.key for r in ranked]
        marks = ",".join("?" * len(chosen))
        recs = {
            r["rowid"]: _row_to_pref(r)
            for r in conn.execute(
                f"SELECT rowid, {_COLUMNS} FROM memories WHERE rowid IN ({marks})", chosen
            )
        }
        out = []
        for r in ranked:
            sig = {"dense": float(cos[by_rowid[r.key]]), **r.signals}
            out.append(SearchHit(record=recs[r.key], score=r.score, signals=sig, matched=r.matched))
        return out

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
        _check_id(record_id)
        old = self.get(record_id, user=user)
        pin = old.revised(new) if isinstance(new, str) else new
        pin = _coerce(pin)
        vector = self._embed([pin.text])[0]
        now = utcnow()
        with self._write() as conn:
            current = self._fetch(conn, record_id, user)
            if not current.active:
                raise ConflictError(
                    f"memory {record_id} is not active (superseded or forgotten); "
                    f"update its newest version instead"
                )
            rid = self._insert(
                conn,
                pin,
                user=user,
                vector=vector,
                now=now,
                root_id=current.root_id,
                previous_id=current.id,
            )
            new_start = _ts(pin.valid_from or now)
            conn.execute(
                "UPDATE memories SET superseded_at = ?, superseded_by = ?, valid_to = ? "
                "WHERE id = ?",
                (_ts(now), rid, new_start, record_id),
            )
            self._event(
                conn,
                user=user,
                action="supersede",
                record_id=rid,
                actor=actor,
                reason=reason,
                payload={"old_id": record_id, "old_text": current.text, "text": pin.text},
                at=now,
            )
            return self._fetch(conn, rid, user)

    def forget(
        self, record_id: str, *, user: str, actor: str = "user", reason: str | None = None
    ) -> Preference:
        check_user(user)
        _check_id(record_id)
        now = utcnow()
        with self._write() as conn:
            current = self._fetch(conn, record_id, user)
            if not current.active:
                raise ConflictError(f"memory {record_id} is not active; nothing to forget")
            conn.execute("UPDATE memories SET valid_to = ? WHERE id = ?", (_ts(now), record_id))
            self._event(
                conn,
                user=user,
                action="forget",
                record_id=record_id,
                actor=actor,
                reason=reason,
                payload={"text": current.text},
                at=now,
            )
            return self._fetch(conn, record_id, user)

    def history(self, record_id: str, *, user: str) -> Records:
        rec = self.get(record_id, user=user)
        rows = self._conn().execute(
            f"SELECT {_COLUMNS} FROM memories WHERE user_id = ? AND root_id = ? ORDER BY rowid",
            (user, rec.root_id),
        )
        return [_row_to_pref(r) for r in rows]

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
            conn.execute(
                "INSERT OR IGNORE INTO users (user_id, created_at) VALUES (?, ?)", (user, _ts(now))
            )
            self._event(
                conn,
                user=user,
                action=action,
                record_id=None,
                actor=actor,
                reason=reason,
                payload=payload or {},
                at=now,
            )

    def events(self, *, user: str, limit: int | None = None) -> Events:
        check_user(user)
        sql = "SELECT * FROM events WHERE user_id = ? ORDER BY id"
        args: list[Any] = [user]
        if limit is not None:
            sql = f"SELECT * FROM ({sql} DESC LIMIT ?) ORDER BY id"
            args.append(int(limit))
        return [
            Event(
                id=r["id"],
                user_id=r["user_id"],
                at=datetime.fromisoformat(r["at"]),
                action=r["action"],
                record_id=r["record_id"],
                actor=r["actor"],
                reason=r["reason"],
                payload=json.loads(r["payload"]),
            )
            for r in self._conn().execute(sql, args)
        ]

    def erase_user(self, *, user: str) -> int:
        check_user(user)
        with self._write() as conn:
            conn.execute("INSERT OR IGNORE INTO erasing (user_id) VALUES (?)", (user,))
            deleted = 0
            for table in USER_TABLES:
                deleted += conn.execute(f"DELETE FROM {table} WHERE user_id = ?", (user,)).rowcount
            conn.execute("DELETE FROM erasing WHERE user_id = ?", (user,))
        conn = self._conn()
        # Merge FTS segments so deleted terms leave the index, then rewrite the file.
        conn.execute("INSERT INTO memories_fts (memories_fts) VALUES ('optimize')")
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return deleted

    def log_exchange(self, exchange: Exchange, *, user: str) -> None:
        check_user(user)
        if exchange.user_id != user:
            raise ValidationError(f"exchange belongs to {exchange.user_id!r}, not {user!r}")
        with self._write() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO users (user_id, created_at) VALUES (?, ?)",
                (user, _ts(exchange.at)),
            )
            conn.execute(
                "INSERT INTO exchanges (id, user_id, at, model, method, latency_ms, "
                "retrieval_ms, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    exchange.id,
                    user,
                    _ts(exchange.at),
                    exchange.model,
                    exchange.method,
                    exchange.latency_ms,
                    exchange.retrieval_ms,
                    exchange.model_dump_json(),
                ),
            )

    def exchanges(self, *, user: str, limit: int | None = None) -> Exchanges:
        check_user(user)
        sql = "SELECT body, rowid FROM exchanges WHERE user_id = ? ORDER BY rowid"
        args: list[Any] = [user]
        if limit is not None:
            sql = f"SELECT * FROM ({sql} DESC LIMIT ?) ORDER BY rowid"
            args.append(int(limit))
        return [Exchange.model_validate_json(r[0]) for r in self._conn().execute(sql, args)]

    def get_exchange(self, exchange_id: str, *, user: str) -> Exchange:
        check_user(user)
        _check_id(exchange_id)
        row = (
            self._conn()
            .execute("SELECT body FROM exchanges WHERE id = ? AND user_id = ?", (exchange_id, user))
            .fetchone()
        )
        if row is None:
            raise NotFoundError(f"no exchange {exchange_id} for user {user!r}")
        return Exchange.model_validate_json(row[0])

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
            conn.execute(
                "INSERT OR IGNORE INTO users (user_id, created_at) VALUES (?, ?)", (user, _ts(now))
            )
            cur = conn.execute(
                "INSERT INTO profiles (user_id, at, weights, uncertainty, source, reason) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (user, _ts(now), json.dumps(clean), json.dumps(uncertainty or {}), source, reason),
            )
            self._event(
                conn,
                user=user,
                action="set_profile",
                record_id=None,
                actor=source,
                reason=reason,
                payload={"weights": clean},
                at=now,
            )
            pid = cur.lastrowid
        return Profile(
            id=int(pid or 0),
            user_id=user,
            at=now,
            weights=clean,
            uncertainty=uncertainty or {},
            source=source,
            reason=reason,
        )

    def profile_history(self, *, user: str) -> Profiles:
        check_user(user)
        rows = self._conn().execute("SELECT * FROM profiles WHERE user_id = ? ORDER BY id", (user,))
        return [
            Profile(
                id=r["id"],
                user_id=r["user_id"],
                at=datetime.fromisoformat(r["at"]),
                weights=json.loads(r["weights"]),
                uncertainty=json.loads(r["uncertainty"]),
                source=r["source"],
                reason=r["reason"],
            )
            for r in rows
        ]

    def add_feedback(self, fb: FeedbackIn, *, user: str) -> Feedback:
        check_user(user)
        rec = Feedback.new(fb, user=user)
        now = rec.at
        with self._write() as conn:
            if (
                rec.exchange_id is not None
                and not conn.execute(
                    "SELECT 1 FROM exchanges WHERE id = ? AND user_id = ?", (rec.exchange_id, user)
                ).fetchone()
            ):
                raise NotFoundError(f"no exchange {rec.exchange_id} for user {user!r}")
            conn.execute(
                "INSERT OR IGNORE INTO users (user_id, created_at) VALUES (?, ?)", (user, _ts(now))
            )
            conn.execute(
                "INSERT INTO feedback (id, user_id, at, kind, exchange_id, body) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (rec.id, user, _ts(now), rec.kind, rec.exchange_id, rec.model_dump_json()),
            )
            self._event(
                conn,
                user=user,
                action="feedback",
                record_id=rec.id,
                actor=rec.source,
                reason=None,
                payload={"kind": rec.kind, "exchange_id": rec.exchange_id},
                at=now,
            )
        return rec

    def feedback(self, *, user: str, limit: int | None = None) -> Feedbacks:
        check_user(user)
        sql = "SELECT body, rowid FROM feedback WHERE user_id = ? ORDER BY rowid"
        args: list[Any] = [user]
        if limit is not None:
            sql = f"SELECT * FROM ({sql} DESC LIMIT ?) ORDER BY rowid"
            args.append(int(limit))
        return [Feedback.model_validate_json(r[0]) for r in self._conn().execute(sql, args)]

    def has_user(self, *, user: str) -> bool:
        check_user(user)
        row = self._conn().execute("SELECT 1 FROM users WHERE user_id = ?", (user,)).fetchone()
        return row is not None

    def users(self) -> Names:
        return [r[0] for r in self._conn().execute("SELECT user_id FROM users ORDER BY user_id")]


def _split_sql(script: str) -> Names:
    """Split a migration into statements, keeping trigger bodies (BEGIN ... END;) whole."""
    out: list[str] = []
    buf: list[str] = []
    for line in script.strip().splitlines():
        buf.append(line)
        joined = "\n".join(buf).strip()
        if joined.endswith(";") and sqlite3.complete_statement(joined):
            out.append(joined)
            buf = []
    if "\n".join(buf).strip():
        out.append("\n".join(buf).strip())
    return out
