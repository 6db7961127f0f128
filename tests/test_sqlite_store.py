"""SQLite-specific guarantees: erasure on disk, append-only log, crash safety, concurrency."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from personalign.backends.stores.sqlite import SQLiteStore
from personalign.backends.stores.sqlite_migrations import MIGRATIONS


def _bytes_on_disk(db: Path) -> bytes:
    return b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))


def test_erased_user_text_is_gone_from_the_file(tmp_path, embedder):
    db = tmp_path / "memory.db"
    store = SQLiteStore(db, embedder)
    secrets = [f"zanzibarquokka secret number {i} of alice" for i in range(50)]
    recs = store.add_many(secrets, user="alice-zq")
    store.update(recs[0].id, "xylophonewombat newer secret", user="alice-zq")
    from personalign.types import Exchange, Message, new_id, utcnow

    store.log_exchange(
        Exchange(
            id=new_id(),
            user_id="alice-zq",
            at=utcnow(),
            messages=[Message(role="user", content="quagmirepelican question")],
            response="ok",
            model="fake",
            method="plain",
            latency_ms=1.0,
        ),
        user="alice-zq",
    )
    store.add_many([f"bob ordinary preference {i}" for i in range(50)], user="bob")
    raw = _bytes_on_disk(db)
    assert b"zanzibarquokka" in raw  # the check below can fail
    store.erase_user(user="alice-zq")
    raw = _bytes_on_disk(db)
    assert b"zanzibarquokka" not in raw
    assert b"xylophonewombat" not in raw
    assert b"quagmirepelican" not in raw
    assert b"alice-zq" not in raw
    assert b"bob ordinary preference" in raw
    assert len(store.search("ordinary preference", user="bob")) > 0
    store.close()


def test_event_log_and_versions_are_append_only(tmp_path, embedder):
    db = tmp_path / "memory.db"
    store = SQLiteStore(db, embedder)
    rec = store.add("likes tea", user="alice")
    conn = sqlite3.connect(db)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("UPDATE events SET action = 'x'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM events")
    with pytest.raises(sqlite3.DatabaseError, match="immutable"):
        conn.execute("UPDATE memories SET text = 'changed' WHERE id = ?", (rec.id,))
    conn.close()
    store.close()


def test_migrations_are_named_and_recorded_once(tmp_path, embedder):
    db = tmp_path / "memory.db"
    SQLiteStore(db, embedder).close()
    SQLiteStore(db, embedder).close()
    conn = sqlite3.connect(db)
    names = [r[0] for r in conn.execute("SELECT name FROM _migrations ORDER BY name")]
    assert names == [n for n, _ in MIGRATIONS]
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


_WRITER = textwrap.dedent(
    """
    import sys
    from personalign.backends.stores.sqlite import SQLiteStore
    from personalign.testing import HashingEmbedder
    store = SQLiteStore(sys.argv[1], HashingEmbedder())
    for i in range(1000):
        rec = store.add(f"preference {i} of the crash test", user="crash")
        sys.stdout.write(rec.id + "\\n")
        sys.stdout.flush()
    """
)


def test_sigkill_during_adds_loses_no_returned_add(tmp_path):
    db = tmp_path / "memory.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(db)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    returned = []
    for line in proc.stdout:
        returned.append(line.strip())
        if len(returned) == 300:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stored = {r[0] for r in conn.execute("SELECT id FROM memories")}
    conn.close()
    assert set(returned) <= stored
    assert len(stored) < 1000  # it really was killed mid-way


_WORKER = textwrap.dedent(
    """
    import sys
    from personalign.backends.stores.sqlite import SQLiteStore
    from personalign.testing import HashingEmbedder
    store = SQLiteStore(sys.argv[1], HashingEmbedder())
    me = sys.argv[2]
    for i in range(100):
        store.add(f"worker {me} preference {i}", user=f"user{i % 5}")
        store.search(f"preference {i}", user=f"user{(i + 1) % 5}", k=3)
    print("ok")
    """
)


def test_four_processes_add_and_search_at_once(tmp_path, embedder):
    db = tmp_path / "memory.db"
    SQLiteStore(db, embedder).close()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(db), str(w)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(4)
    ]
    deadline = time.time() + 240
    for p in procs:
        out, err = p.communicate(timeout=max(deadline - time.time(), 1))
        assert p.returncode == 0, err
        assert "locked" not in err
        assert out.strip() == "ok"
    store = SQLiteStore(db, embedder)
    total = sum(len(store.list(user=f"user{u}")) for u in range(5))
    assert total == 400
    store.close()
