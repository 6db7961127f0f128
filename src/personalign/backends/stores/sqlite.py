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
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from personalign.backends.embedders import Embedder
from personalign.backends.stores.base import Hits, Names
from personalign.backends.stores.hybrid import (
    Candidate,
    dense_query,
    entities,
    named_in_query,
    query_terms,
    rank,
)
from personalign.backends.stores.sql import ACTIVE_NOW, COLUMNS, SQLStore, search_args
from personalign.backends.stores.sqlite_conns import ThreadConnections
from personalign.backends.stores.sqlite_migrations import MIGRATIONS
from personalign.config import RetrievalConfig
from personalign.errors import BackendError
from personalign.types import Event, Kind, Preference, Profile, SearchHit, utcnow

_ACTIVE_AT = (
    "valid_from <= :t AND (valid_to IS NULL OR valid_to > :t) "
    "AND recorded_at <= :t AND (superseded_at IS NULL OR superseded_at > :t)"
)


def _ts(dt: datetime) -> str:
    """ISO-8601 UTC with microseconds: sorts lexicographically in time order."""
    return dt.astimezone(tz=utcnow().tzinfo).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


def _scope(user: str) -> str:
    """An FTS token that stands for the user, so a MATCH is restricted to one user's rows."""
    return "u" + hashlib.blake2b(user.encode(), digest_size=12).hexdigest()


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


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


class SQLiteStore(SQLStore):
    """:class:`MemoryStore` on one SQLite file. Safe to share across threads and processes."""

    _SEQ: ClassVar[str] = "rowid"

    def __init__(self, path: str | Path, embedder: Embedder) -> None:
        self.path = Path(path)
        self.embedder = embedder
        self._conns = ThreadConnections(self._open_conn)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._migrate()

    # -- connections and transactions ---------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        return self._conns.get()

    def _open_conn(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path, timeout=30.0, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as e:
            raise BackendError(f"cannot open memory database {self.path}: {e}") from e
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA secure_delete = ON")
        conn.execute("PRAGMA foreign_keys = ON")
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
        """Close every thread's connection (each thread has its own)."""
        self._conns.close()

    # -- the primitives of SQLStore ----------------------------------------------------

    def _read(self) -> contextlib.nullcontext[sqlite3.Connection]:
        return contextlib.nullcontext(self._conn())

    def _x(self, conn: sqlite3.Connection, sql: str, args: Sequence[Any] = ()) -> sqlite3.Cursor:
        return conn.execute(sql, args)

    def _xmany(self, conn: sqlite3.Connection, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        conn.executemany(sql, rows)

    def _t(self, dt: datetime) -> str:
        return _ts(dt)

    def _j(self, value: Any) -> str:
        return json.dumps(value)

    def _pref(self, row: sqlite3.Row) -> Preference:
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
            valid_to=_dt(row["valid_to"]),
            recorded_at=datetime.fromisoformat(row["recorded_at"]),
            superseded_at=_dt(row["superseded_at"]),
            superseded_by=row["superseded_by"],
            root_id=row["root_id"],
            previous_id=row["previous_id"],
            flags=json.loads(row["flags"]),
            meta=json.loads(row["meta"]),
        )

    def _event_of(self, row: sqlite3.Row) -> Event:
        return Event(
            id=row["id"],
            user_id=row["user_id"],
            at=datetime.fromisoformat(row["at"]),
            action=row["action"],
            record_id=row["record_id"],
            actor=row["actor"],
            reason=row["reason"],
            payload=json.loads(row["payload"]),
        )

    def _profile_of(self, row: sqlite3.Row) -> Profile:
        return Profile(
            id=row["id"],
            user_id=row["user_id"],
            at=datetime.fromisoformat(row["at"]),
            weights=json.loads(row["weights"]),
            uncertainty=json.loads(row["uncertainty"]),
            source=row["source"],
            reason=row["reason"],
        )

    def _vector_columns(self, user: str, vector: np.ndarray) -> dict[str, Any]:
        return {
            "embedding": np.asarray(vector, dtype=np.float32).tobytes(),
            "embedder": self.embedder.name,
            "scope": _scope(user),
        }

    def _begin_erase(self, conn: sqlite3.Connection, user: str) -> None:
        conn.execute("INSERT OR IGNORE INTO erasing (user_id) VALUES (?)", (user,))

    def _end_erase(self, conn: sqlite3.Connection, user: str) -> None:
        conn.execute("DELETE FROM erasing WHERE user_id = ?", (user,))

    def _compact(self) -> None:
        conn = self._conn()
        # Merge FTS segments so deleted terms leave the index, then rewrite the file.
        conn.execute("INSERT INTO memories_fts (memories_fts) VALUES ('optimize')")
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

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
        conn = self._conn()
        where = f"user_id = :u AND ({ACTIVE_NOW if as_of is None else _ACTIVE_AT})"
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
            r["rowid"]: self._pref(r)
            for r in conn.execute(
                f"SELECT rowid, {COLUMNS} FROM memories WHERE rowid IN ({marks})", chosen
            )
        }
        out = []
        for r in ranked:
            sig = {"dense": float(cos[by_rowid[r.key]]), **r.signals}
            out.append(SearchHit(record=recs[r.key], score=r.score, signals=sig, matched=r.matched))
        return out


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
