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
from typing import Any, ClassVar

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
from personalign.backends.stores.base import Hits
from personalign.backends.stores.hybrid import (
    Candidate,
    dense_query,
    named_in_query,
    query_terms,
    rank,
)
from personalign.backends.stores.postgres_migrations import MIGRATIONS
from personalign.backends.stores.sql import ACTIVE_NOW, COLUMNS, FIELDS, SQLStore, search_args
from personalign.config import RetrievalConfig
from personalign.errors import BackendError, ConfigError, ConflictError
from personalign.types import Event, Kind, Preference, Profile, SearchHit, utcnow

Conn = Connection[DictRow]

_ACTIVE_AT = (
    "valid_from <= %(t)s AND (valid_to IS NULL OR valid_to > %(t)s) "
    "AND recorded_at <= %(t)s AND (superseded_at IS NULL OR superseded_at > %(t)s)"
)
_MIGRATION_LOCK = 0x70657273_6D656D  # pg_advisory_xact_lock key for schema migrations


def _ts_query(terms: list[str]) -> str | None:
    """A ``to_tsquery`` OR of ``terms`` (each quoted; ``\\w`` tokens hold no quotes)."""
    if not terms:
        return None
    return " | ".join(f"'{t}'" for t in terms)


def _row_to_pref(row: DictRow) -> Preference:
    return Preference.model_validate({f: row[f] for f in FIELDS})


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


class PostgresStore(SQLStore):
    """:class:`MemoryStore` on PostgreSQL + pgvector. Safe to share across threads.

    ``url`` is a ``postgresql://`` URL or libpq conninfo; tables live in the first schema of
    its ``search_path``. ``pool_size`` bounds the connections this store opens.
    """

    _SEQ: ClassVar[str] = "seq"
    _BODY: ClassVar[str] = "body::text AS body"
    _JSON_ARG: ClassVar[str] = "?::json"
    _LOCK: ClassVar[str] = " FOR UPDATE"
    _USER_ORDER: ClassVar[str] = 'user_id COLLATE "C"'
    _VECTOR_DTYPE: ClassVar[Any] = np.float32

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

    # -- the primitives of SQLStore ----------------------------------------------------

    def _read(self) -> Any:
        return self._tx()

    def _write(self) -> Any:
        return self._tx()

    def _x(self, conn: Conn, sql: str, args: Sequence[Any] = ()) -> psycopg.Cursor[DictRow]:
        return conn.execute(sql.replace("?", "%s"), args)

    def _xmany(self, conn: Conn, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with conn.cursor() as cur:
            cur.executemany(sql.replace("?", "%s"), rows)

    def _t(self, dt: datetime) -> datetime:
        return dt

    def _j(self, value: Any) -> Json:
        return Json(value)

    def _pref(self, row: DictRow) -> Preference:
        return _row_to_pref(row)

    def _event_of(self, row: DictRow) -> Event:
        return Event.model_validate(dict(row))

    def _profile_of(self, row: DictRow) -> Profile:
        return Profile.model_validate(row)

    def _vector_columns(self, user: str, vector: np.ndarray) -> dict[str, Any]:
        return {"embedding": vector, "embedder": self.embedder.name}

    def _begin_erase(self, conn: Conn, user: str) -> None:
        # Transaction-local: the append-only triggers let this transaction delete the user.
        conn.execute("SELECT set_config('personalign.erasing', %s, true)", (user,))

    # -- search --------------------------------------------------------------------------

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
        query, cfg, now = search_args(query, user=user, k=k, config=config, as_of=as_of)
        where = f"user_id = %(u)s AND ({ACTIVE_NOW if as_of is None else _ACTIVE_AT})"
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
                f"SELECT seq, {COLUMNS}, embedding <=> %(q)s AS d FROM memories "
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
