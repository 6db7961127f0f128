"""The server store: PostgreSQL with pgvector (>= 0.8), for many processes and machines.

Same semantics as :class:`~personalign.backends.stores.sqlite.SQLiteStore`: bitemporal
versions, supersede via update, forget, an append-only event log and immutable memory text
enforced by triggers, hybrid search fused by :data:`~personalign.backends.stores.fusion.FUSIONS`.

Connections come from a thread-safe pool (``psycopg_pool``); every verb runs in one
transaction, and every statement filters by ``user_id``. ``update``/``forget`` lock the row
(``SELECT ... FOR UPDATE``), so of two concurrent updates of one version exactly one wins.

Search signals: ``dense`` is cosine similarity (pgvector ``<=>``), ``bm25`` is
``ts_rank_cd`` over an English ``tsvector`` (GIN index) for an OR of the query's words,
``recency`` as in SQLite. Dense candidates: when the user has at most :attr:`exact_scan_max`
matching rows, an exact scan of those rows (found through the ``user_id`` index) — exact and
sub-millisecond for typical per-user sizes, and never starved by the filter; above that, the
HNSW index (cosine ops) with ``hnsw.iterative_scan = relaxed_order`` so that the filter on
user, validity and kind does not cut results short.

Erasure deletes every row of the user from every table in one transaction; PostgreSQL keeps
dead tuples (and the WAL) until VACUUM and checkpoints recycle them: run ``VACUUM`` (or
``VACUUM FULL``) if the bytes must leave the disk at once.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import numpy as np
import psycopg
from pgvector.psycopg.vector import register_vector_info
from psycopg import Connection
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import DictRow, dict_row
from psycopg.types import TypeInfo
from psycopg.types.json import Json
from psycopg_pool import ConnectionPool

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
    named_in_query,
    query_terms,
    rank,
)
from personalign.backends.stores.postgres_migrations import MIGRATIONS
from personalign.config import RetrievalConfig
from personalign.errors import (
    BackendError,
    ConfigError,
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

Conn = Connection[DictRow]

_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_FIELDS = (
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
_COLUMNS = ", ".join(_FIELDS)
_ACTIVE_AT = (
    "valid_from <= %(t)s AND (valid_to IS NULL OR valid_to > %(t)s) "
    "AND recorded_at <= %(t)s AND (superseded_at IS NULL OR superseded_at > %(t)s)"
)
_ACTIVE_NOW = "superseded_at IS NULL AND valid_to IS NULL"
_MIGRATION_LOCK = 0x70657273_6D656D  # pg_advisory_xact_lock key for schema migrations
USER_TABLES = ("memories", "events", "exchanges", "profiles", "feedback", "users")
"""Every table holding a user's data; ``erase_user`` deletes from each (users last)."""


def _check_id(record_id: str) -> str:
    if not isinstance(record_id, str) or not _ID_RE.match(record_id):
        raise ValidationError(f"bad memory id {record_id!r}: expected 32 hex characters")
    return record_id


def _ts_query(terms: list[str]) -> str | None:
    """A ``to_tsquery`` OR of ``terms`` (each quoted; ``\\w`` tokens hold no quotes)."""
    if not terms:
        return None
    return " | ".join(f"'{t}'" for t in terms)


def _row_to_pref(row: DictRow) -> Preference:
    return Preference.model_validate({f: row[f] for f in _FIELDS})


def _coerce(item: PreferenceIn | str) -> PreferenceIn:
    pin = PreferenceIn(text=item) if isinstance(item, str) else item
    return pin.model_copy(update={"text": check_text(pin.text, what="memory text")})


def _where(url: str) -> str:
    """``host:port/dbname`` of a URL or conninfo, without credentials, for messages."""
    try:
        d = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparsable database URL>"
    return f"{d.get('host', 'localhost')}:{d.get('port', 5432)}/{d.get('dbname', '')}"


def _configure(conn: Conn) -> None:
    """Per new pooled connection: UTC timestamps, numpy arrays as pgvector ``vector``."""
    conn.execute("SET TIME ZONE 'UTC'")
    register_vector_info(conn, TypeInfo.fetch(conn, "vector"))
    conn.commit()


class PostgresStore(MemoryStore):
    """:class:`MemoryStore` on PostgreSQL + pgvector. Safe to share across threads.

    ``url`` is a ``postgresql://`` URL or libpq conninfo; tables live in the first schema of
    its ``search_path``. ``pool_size`` bounds the connections this store opens.
    """

    exact_scan_max: int = 5000
    """Above this many matching rows of a user, dense search uses the HNSW index."""

    def __init__(
        self, url: str, embedder: Embedder, *, pool_size: int = 10, timeout: float = 30.0
    ) -> None:
        self.url = url
        self.embedder = embedder
        self._migrate(timeout)
        self._pool: ConnectionPool[Conn] = ConnectionPool(
            url,
            min_size=1,
            max_size=max(pool_size, 1),
            kwargs={"row_factory": dict_row},
            connection_class=Connection[DictRow],
            configure=_configure,
            timeout=timeout,
            open=False,
            name="personalign",
        )
        try:
            self._pool.open(wait=True, timeout=timeout)
        except psycopg.Error as e:
            self._pool.close()
            raise BackendError(f"cannot connect to PostgreSQL at {_where(url)}: {e}") from e

    # -- connections, transactions, migrations -----------------------------------------

    @contextmanager
    def _tx(self) -> Iterator[Conn]:
        """One pooled connection and one transaction: commit on success, else roll back."""
        try:
            with self._pool.connection() as conn:
                yield conn
        except psycopg.errors.UniqueViolation as e:
            raise ConflictError(f"already stored: {e.diag.message_detail or e}") from e
        except psycopg.Error as e:
            raise BackendError(f"PostgreSQL at {_where(self.url)}: {e}") from e

    def _migrate(self, timeout: float) -> None:
        try:
            conn = psycopg.connect(self.url, connect_timeout=max(int(timeout), 1))
        except psycopg.Error as e:
            raise BackendError(f"cannot connect to PostgreSQL at {_where(self.url)}: {e}") from e
        try:
            with conn:  # one transaction: commit on success
                conn.execute("SET LOCAL client_min_messages = warning")
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                if conn.execute("SELECT current_schema()").fetchone() in (None, (None,)):
                    raise ConfigError(
                        f"database at {_where(self.url)}: no schema of search_path exists"
                    )
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS _migrations "
                    "(name TEXT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL)"
                )
                done = {r[0] for r in conn.execute("SELECT name FROM _migrations")}
                for name, sql in MIGRATIONS:
                    if name in done:
                        continue
                    conn.execute(sql.replace("{dim}", str(int(self.embedder.dim))))
                    conn.execute("INSERT INTO _migrations VALUES (%s, %s)", (name, utcnow()))
                self._check_schema(conn)
        except psycopg.Error as e:
            raise BackendError(f"migrating PostgreSQL at {_where(self.url)}: {e}") from e
        finally:
            conn.close()

    def _check_schema(self, conn: Connection[Any]) -> None:
        row = conn.execute(
            "SELECT atttypmod FROM pg_attribute "
            "WHERE attrelid = 'memories'::regclass AND attname = 'embedding'"
        ).fetchone()
        dim = row[0] if row else None
        if dim != self.embedder.dim:
            raise ConfigError(
                f"database at {_where(self.url)} stores {dim}-dimensional vectors but embedder "
                f"{self.embedder.name!r} makes {self.embedder.dim}: use the embedder the "
                f"database was created with, or another database"
            )
        row = conn.execute(
            "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
        ).fetchone()
        version = tuple(int(p) for p in re.findall(r"\d+", row[0])[:2]) if row else (0, 0)
        if version < (0, 8):
            raise ConfigError(f"pgvector {row[0] if row else '?'} is too old: 0.8 or newer needed")

    def close(self) -> None:
        self._pool.close()

    # -- helpers ------------------------------------------------------------------------

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        vectors = self.embedder.embed(list(texts))
        if vectors.shape != (len(texts), self.embedder.dim):
            raise BackendError(f"embedder returned shape {vectors.shape} for {len(texts)} texts")
        return np.asarray(vectors, dtype=np.float32)

    def _ensure_user(self, conn: Conn, user: str, at: datetime) -> None:
        conn.execute(
            "INSERT INTO users (user_id, created_at) VALUES (%s, %s) ON CONFLICT DO NOTHING",
            (user, at),
        )

    def _event_row(
        self,
        *,
        user: str,
        action: str,
        record_id: str | None,
        actor: str,
        reason: str | None,
        payload: dict[str, Any],
        at: datetime,
    ) -> tuple[Any, ...]:
        return (user, at, action, record_id, actor, reason, Json(payload))

    def _events(self, conn: Conn, rows: Sequence[tuple[Any, ...]]) -> None:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO events (user_id, at, action, record_id, actor, reason, payload) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                rows,
            )

    def _memory_row(
        self,
        pin: PreferenceIn,
        *,
        rid: str,
        user: str,
        vector: np.ndarray,
        now: datetime,
        root_id: str | None = None,
        previous_id: str | None = None,
    ) -> tuple[Any, ...]:
        return (
            rid,
            user,
            pin.text,
            pin.kind,
            pin.topic,
            pin.dimension,
            Json(pin.tags),
            pin.strength,
            pin.source,
            Json(pin.source_turn_ids),
            pin.valid_from or now,
            now,
            root_id or rid,
            previous_id,
            Json(pin.flags),
            Json(pin.meta),
            vector,
            self.embedder.name,
        )

    def _insert(self, conn: Conn, rows: Sequence[tuple[Any, ...]]) -> None:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO memories (id, user_id, text, kind, topic, dimension, tags, strength, "
                "source, source_turn_ids, valid_from, recorded_at, root_id, previous_id, flags, "
                "meta, embedding, embedder) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                rows,
            )

    def _fetch(self, conn: Conn, record_id: str, user: str, *, lock: bool = False) -> Preference:
        row = conn.execute(
            f"SELECT {_COLUMNS} FROM memories WHERE id = %s AND user_id = %s"
            + (" FOR UPDATE" if lock else ""),
            (record_id, user),
        ).fetchone()
        if row is None:
            raise NotFoundError(f"no memory {record_id} for user {user!r}")
        return _row_to_pref(row)

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
        ids = [new_id() for _ in pins]
        with self._tx() as conn:
            self._ensure_user(conn, user, now)
            self._insert(
                conn,
                [
                    self._memory_row(pin, rid=rid, user=user, vector=vec, now=now)
                    for rid, pin, vec in zip(ids, pins, vectors, strict=True)
                ],
            )
            self._events(
                conn,
                [
                    self._event_row(
                        user=user,
                        action="add",
                        record_id=rid,
                        actor=actor,
                        reason=reason,
                        payload={"text": pin.text, "kind": pin.kind},
                        at=now,
                    )
                    for rid, pin in zip(ids, pins, strict=True)
                ],
            )
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM memories WHERE user_id = %s AND id = ANY(%s)",
                (user, ids),
            ).fetchall()
        by_id = {r["id"]: _row_to_pref(r) for r in rows}
        return [by_id[rid] for rid in ids]

    def get(self, record_id: str, *, user: str) -> Preference:
        check_user(user)
        _check_id(record_id)
        with self._tx() as conn:
            return self._fetch(conn, record_id, user)

    def list(
        self,
        *,
        user: str,
        include_history: bool = False,
        kinds: Sequence[Kind] | None = None,
        limit: int | None = None,
    ) -> Records:
        check_user(user)
        sql = f"SELECT {_COLUMNS} FROM memories WHERE user_id = %(u)s"
        params: dict[str, Any] = {"u": user}
        if not include_history:
            sql += f" AND {_ACTIVE_NOW}"
        if kinds:
            sql += " AND kind = ANY(%(kinds)s)"
            params["kinds"] = list(kinds)
        sql += " ORDER BY seq DESC"
        if limit is not None:
            sql += " LIMIT %(limit)s"
            params["limit"] = int(limit)
        with self._tx() as conn:
            return [_row_to_pref(r) for r in conn.execute(sql, params)]

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
        now = as_of or utcnow()
        where = f"user_id = %(u)s AND ({_ACTIVE_NOW if as_of is None else _ACTIVE_AT})"
        params: dict[str, Any] = {"u": user, "t": now, "n": cfg.candidates}
        if kinds:
            where += " AND kind = ANY(%(kinds)s)"
            params["kinds"] = list(kinds)
        with self._tx() as conn:
            n_rows = conn.execute(
                f"SELECT count(*) AS n FROM (SELECT 1 FROM memories WHERE {where} LIMIT %(cap)s) s",
                {**params, "cap": self.exact_scan_max + 1},
            ).fetchone()
            if n_rows is None or n_rows["n"] == 0:
                return []
            known = [
                r["name"]
                for r in conn.execute(
                    "SELECT DISTINCT lower(substring(t FROM '^(?:speaker|entity):(.+)$')) AS name "
                    "FROM memories, json_array_elements_text(tags) AS t "
                    f"WHERE {where} AND t ~ '^(speaker|entity):'",
                    params,
                )
            ]
            named = named_in_query(query, known, cfg)
            params["q"] = qvec = self._embed([dense_query(query, named)])[0]

            # dense: exact over a small user's rows, else HNSW with iterative filtering;
            # the best preferences always compete (a second, preference-only pass)
            exact = n_rows["n"] <= self.exact_scan_max
            if not exact:
                conn.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
                conn.execute(f"SET LOCAL hnsw.ef_search = {max(40, min(cfg.candidates, 1000))}")
            passes = [where]
            if cfg.preference_weight > 0:
                passes.append(f"{where} AND kind <> 'episode'")
            dense: dict[int, float] = {}
            for cond in passes:
                sql = (
                    "WITH c AS MATERIALIZED (SELECT seq, embedding <=> %(q)s AS d "
                    f"FROM memories WHERE {cond}) SELECT seq, d FROM c ORDER BY d, seq LIMIT %(n)s"
                    if exact
                    else f"SELECT seq, embedding <=> %(q)s AS d FROM memories WHERE {cond} "
                    "ORDER BY embedding <=> %(q)s LIMIT %(n)s"
                )
                dense.update({r["seq"]: 1.0 - float(r["d"]) for r in conn.execute(sql, params)})

            # full text: ts_rank_cd of an OR of the query's words
            bm25: dict[int, float] = {}
            tsq = _ts_query(query_terms(query, named))
            if tsq:
                for r in conn.execute(
                    "SELECT seq, ts_rank_cd(tsv, tq) AS s "
                    "FROM memories, to_tsquery('english', %(tsq)s) AS tq "
                    f"WHERE {where} AND tsv @@ tq ORDER BY s DESC, seq LIMIT %(n)s",
                    {**params, "tsq": tsq},
                ):
                    bm25[r["seq"]] = float(r["s"])

            meta = conn.execute(
                "SELECT seq, kind, tags, source_turn_ids, valid_from FROM memories "
                "WHERE user_id = %(u)s AND seq = ANY(%(seqs)s)",
                {"u": user, "seqs": list({**dense, **bm25})},
            ).fetchall()
            candidates = {
                r["seq"]: Candidate(
                    kind=r["kind"],
                    tags=r["tags"],
                    source_turn_ids=r["source_turn_ids"],
                    valid_from=r["valid_from"],
                )
                for r in meta
            }
            ranked = rank(candidates, dense, bm25, query=query, named=named, now=now, cfg=cfg, k=k)
            rows = conn.execute(
                f"SELECT seq, {_COLUMNS}, embedding <=> %(q)s AS d FROM memories "
                "WHERE user_id = %(u)s AND seq = ANY(%(seqs)s)",
                {"q": qvec, "u": user, "seqs": [hit.key for hit in ranked]},
            ).fetchall()
        by_seq = {row["seq"]: row for row in rows}
        out = []
        for hit in ranked:
            row = by_seq[hit.key]
            sig = {"dense": 1.0 - float(row["d"]), **hit.signals}
            out.append(
                SearchHit(
                    record=_row_to_pref(row), score=hit.score, signals=sig, matched=hit.matched
                )
            )
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
        rid = new_id()
        with self._tx() as conn:
            current = self._fetch(conn, record_id, user, lock=True)
            if not current.active:
                raise ConflictError(
                    f"memory {record_id} is not active (superseded or forgotten); "
                    f"update its newest version instead"
                )
            row = self._memory_row(
                pin,
                rid=rid,
                user=user,
                vector=vector,
                now=now,
                root_id=current.root_id,
                previous_id=current.id,
            )
            self._insert(conn, [row])
            conn.execute(
                "UPDATE memories SET superseded_at = %s, superseded_by = %s, valid_to = %s "
                "WHERE id = %s AND user_id = %s",
                (now, rid, pin.valid_from or now, record_id, user),
            )
            self._events(
                conn,
                [
                    self._event_row(
                        user=user,
                        action="supersede",
                        record_id=rid,
                        actor=actor,
                        reason=reason,
                        payload={"old_id": record_id, "old_text": current.text, "text": pin.text},
                        at=now,
                    )
                ],
            )
            return self._fetch(conn, rid, user)

    def forget(
        self, record_id: str, *, user: str, actor: str = "user", reason: str | None = None
    ) -> Preference:
        check_user(user)
        _check_id(record_id)
        now = utcnow()
        with self._tx() as conn:
            current = self._fetch(conn, record_id, user, lock=True)
            if not current.active:
                raise ConflictError(f"memory {record_id} is not active; nothing to forget")
            conn.execute(
                "UPDATE memories SET valid_to = %s WHERE id = %s AND user_id = %s",
                (now, record_id, user),
            )
            self._events(
                conn,
                [
                    self._event_row(
                        user=user,
                        action="forget",
                        record_id=record_id,
                        actor=actor,
                        reason=reason,
                        payload={"text": current.text},
                        at=now,
                    )
                ],
            )
            return self._fetch(conn, record_id, user)

    def history(self, record_id: str, *, user: str) -> Records:
        check_user(user)
        _check_id(record_id)
        with self._tx() as conn:
            rec = self._fetch(conn, record_id, user)
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM memories WHERE user_id = %s AND root_id = %s ORDER BY seq",
                (user, rec.root_id),
            )
            return [_row_to_pref(r) for r in rows]

    def events(self, *, user: str, limit: int | None = None) -> Events:
        check_user(user)
        cols = "id, user_id, at, action, record_id, actor, reason, payload"
        sql = f"SELECT {cols} FROM events WHERE user_id = %s ORDER BY id"
        args: list[Any] = [user]
        if limit is not None:
            sql = f"SELECT * FROM ({sql} DESC LIMIT %s) s ORDER BY id"
            args.append(int(limit))
        with self._tx() as conn:
            return [Event.model_validate(dict(r)) for r in conn.execute(sql, args)]

    def erase_user(self, *, user: str) -> int:
        check_user(user)
        with self._tx() as conn:
            # Transaction-local: the append-only triggers let this transaction delete the user.
            conn.execute("SELECT set_config('personalign.erasing', %s, true)", (user,))
            deleted = 0
            for table in USER_TABLES:
                cur = conn.execute(f"DELETE FROM {table} WHERE user_id = %s", (user,))
                deleted += cur.rowcount
        return deleted

    def log_exchange(self, exchange: Exchange, *, user: str) -> None:
        check_user(user)
        if exchange.user_id != user:
            raise ValidationError(f"exchange belongs to {exchange.user_id!r}, not {user!r}")
        with self._tx() as conn:
            self._ensure_user(conn, user, exchange.at)
            conn.execute(
                "INSERT INTO exchanges (id, user_id, at, model, method, latency_ms, "
                "retrieval_ms, body) VALUES (%s, %s, %s, %s, %s, %s, %s, %s::json)",
                (
                    exchange.id,
                    user,
                    exchange.at,
                    exchange.model,
                    exchange.method,
                    exchange.latency_ms,
                    exchange.retrieval_ms,
                    exchange.model_dump_json(),
                ),
            )

    def exchanges(self, *, user: str, limit: int | None = None) -> Exchanges:
        check_user(user)
        sql = "SELECT body::text AS body, seq FROM exchanges WHERE user_id = %s ORDER BY seq"
        args: list[Any] = [user]
        if limit is not None:
            sql = f"SELECT * FROM ({sql} DESC LIMIT %s) s ORDER BY seq"
            args.append(int(limit))
        with self._tx() as conn:
            return [Exchange.model_validate_json(r["body"]) for r in conn.execute(sql, args)]

    def get_exchange(self, exchange_id: str, *, user: str) -> Exchange:
        check_user(user)
        _check_id(exchange_id)
        with self._tx() as conn:
            row = conn.execute(
                "SELECT body::text AS body FROM exchanges WHERE id = %s AND user_id = %s",
                (exchange_id, user),
            ).fetchone()
        if row is None:
            raise NotFoundError(f"no exchange {exchange_id} for user {user!r}")
        return Exchange.model_validate_json(row["body"])

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
        with self._tx() as conn:
            self._ensure_user(conn, user, now)
            self._events(
                conn,
                [
                    self._event_row(
                        user=user,
                        action=action,
                        record_id=None,
                        actor=actor,
                        reason=reason,
                        payload=payload or {},
                        at=now,
                    )
                ],
            )

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
        with self._tx() as conn:
            self._ensure_user(conn, user, now)
            row = conn.execute(
                "INSERT INTO profiles (user_id, at, weights, uncertainty, source, reason) "
                "VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
                (user, now, Json(clean), Json(uncertainty or {}), source, reason),
            ).fetchone()
            self._events(
                conn,
                [
                    self._event_row(
                        user=user,
                        action="set_profile",
                        record_id=None,
                        actor=source,
                        reason=reason,
                        payload={"weights": clean},
                        at=now,
                    )
                ],
            )
        return Profile(
            id=int(row["id"]) if row else 0,
            user_id=user,
            at=now,
            weights=clean,
            uncertainty=uncertainty or {},
            source=source,
            reason=reason,
        )

    def profile_history(self, *, user: str) -> Profiles:
        check_user(user)
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT id, user_id, at, weights, uncertainty, source, reason FROM profiles "
                "WHERE user_id = %s ORDER BY id",
                (user,),
            )
            return [Profile.model_validate(r) for r in rows]

    def add_feedback(self, fb: FeedbackIn, *, user: str) -> Feedback:
        check_user(user)
        rec = Feedback.new(fb, user=user)
        now = rec.at
        with self._tx() as conn:
            if (
                rec.exchange_id is not None
                and not conn.execute(
                    "SELECT 1 FROM exchanges WHERE id = %s AND user_id = %s",
                    (rec.exchange_id, user),
                ).fetchone()
            ):
                raise NotFoundError(f"no exchange {rec.exchange_id} for user {user!r}")
            self._ensure_user(conn, user, now)
            conn.execute(
                "INSERT INTO feedback (id, user_id, at, kind, exchange_id, body) "
                "VALUES (%s, %s, %s, %s, %s, %s::json)",
                (rec.id, user, now, rec.kind, rec.exchange_id, rec.model_dump_json()),
            )
            self._events(
                conn,
                [
                    self._event_row(
                        user=user,
                        action="feedback",
                        record_id=rec.id,
                        actor=rec.source,
                        reason=None,
                        payload={"kind": rec.kind, "exchange_id": rec.exchange_id},
                        at=now,
                    )
                ],
            )
        return rec

    def feedback(self, *, user: str, limit: int | None = None) -> Feedbacks:
        check_user(user)
        sql = "SELECT body::text AS body, seq FROM feedback WHERE user_id = %s ORDER BY seq"
        args: list[Any] = [user]
        if limit is not None:
            sql = f"SELECT * FROM ({sql} DESC LIMIT %s) s ORDER BY seq"
            args.append(int(limit))
        with self._tx() as conn:
            return [Feedback.model_validate_json(r["body"]) for r in conn.execute(sql, args)]

    def has_user(self, *, user: str) -> bool:
        check_user(user)
        with self._tx() as conn:
            row = conn.execute("SELECT 1 FROM users WHERE user_id = %s", (user,)).fetchone()
        return row is not None

    def users(self) -> Names:
        with self._tx() as conn:
            rows = conn.execute('SELECT user_id FROM users ORDER BY user_id COLLATE "C"')
            return [r["user_id"] for r in rows]
