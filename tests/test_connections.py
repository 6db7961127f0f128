"""Every connection is closed on close(): the SQLite store's and the key store's, whichever
thread opened them, and the PostgreSQL pool."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import pytest

from personalign.backends.stores.sqlite import SQLiteStore
from personalign.service.keys import KeyStore
from personalign.testing import HashingEmbedder

pytestmark = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")


def open_files(path: Path) -> int:
    """File descriptors of this process on ``path`` or its -wal/-shm companions."""
    names = {str(path), f"{path}-wal", f"{path}-shm"}
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}") in names
        except OSError:
            continue
    return n


def _in_threads(fn, n: int = 4, *, keep_alive: bool = True) -> list[threading.Thread]:  # type: ignore[no-untyped-def]
    """Run ``fn`` in ``n`` threads; with ``keep_alive`` the threads stay alive until released."""
    release = threading.Event()
    ready = threading.Barrier(n + 1)

    def work() -> None:
        fn()
        ready.wait()
        if keep_alive:
            release.wait(10)

    threads = [threading.Thread(target=work) for _ in range(n)]
    for t in threads:
        t.start()
    ready.wait()
    threads[0].release = release  # type: ignore[attr-defined]
    return threads


def test_sqlite_store_closes_every_threads_connection(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = SQLiteStore(tmp_path / "memory.db", HashingEmbedder())
    store.add("I like tea", user="u")
    threads = _in_threads(lambda: store.list(user="u"))
    assert store._conns.count == 5 and open_files(tmp_path / "memory.db") >= 5
    conns = list(store._conns._open)
    store.close()  # from the main thread, while the other threads are still alive
    assert open_files(tmp_path / "memory.db") == 0 and store._conns.count == 0
    for conn in conns:
        with pytest.raises(sqlite3.ProgrammingError, match="closed"):
            conn.execute("SELECT 1")
    threads[0].release.set()  # type: ignore[attr-defined]
    for t in threads:
        t.join()
    assert [r.text for r in store.list(user="u")] == ["I like tea"]  # reopens on use
    store.close()
    assert open_files(tmp_path / "memory.db") == 0


def test_connections_of_ended_threads_do_not_pile_up(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = SQLiteStore(tmp_path / "memory.db", HashingEmbedder())
    for _ in range(20):
        for t in _in_threads(lambda: store.has_user(user="u"), 2, keep_alive=False):
            t.join()
    store.has_user(user="u")  # a new thread's connection closes the ended threads' ones
    assert store._conns.count <= 3
    store.close()
    assert open_files(tmp_path / "memory.db") == 0


def test_key_store_close(tmp_path) -> None:  # type: ignore[no-untyped-def]
    keys = KeyStore(tmp_path / "keys.db")
    _, key = keys.create(scope="admin")
    threads = _in_threads(lambda: keys.verify(key), 3)
    assert open_files(tmp_path / "keys.db") >= 4
    keys.close()
    assert open_files(tmp_path / "keys.db") == 0
    threads[0].release.set()  # type: ignore[attr-defined]
    for t in threads:
        t.join()
    with KeyStore(tmp_path / "keys.db") as again:
        assert again.verify(key).scope == "admin"
    assert open_files(tmp_path / "keys.db") == 0


def test_service_close_closes_keys_memory_and_ingestion(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from personalign.config import load_settings
    from personalign.pipeline import Personalizer, open_guarded_memory
    from personalign.service.app import create_app
    from personalign.testing import CueExtractor, FakeLM

    settings = load_settings(home=tmp_path, embedder="hashing")
    memory = open_guarded_memory(settings, HashingEmbedder(), extractor=CueExtractor())
    personalizer = Personalizer(memory, FakeLM(name="fake"))
    keys = KeyStore(tmp_path / "keys.db")
    _, key = keys.create(scope="admin")
    app = create_app(personalizer, keys)
    personalizer.respond("I prefer green tea", user="u")  # leaves ingestion queued
    _in_threads(lambda: (keys.verify(key), memory.list(user="u")), 2, keep_alive=False)
    app.state.service.close()
    assert open_files(tmp_path / "keys.db") == 0 and open_files(settings.db_path) == 0
    store = SQLiteStore(settings.db_path, HashingEmbedder())  # the turn was ingested first
    assert [r.text for r in store.list(user="u", kinds=["episode"])] == ["I prefer green tea"]
    store.close()


def test_postgres_pool_closed(pg_conninfo) -> None:  # type: ignore[no-untyped-def]
    from personalign.backends.stores.postgres import PostgresStore

    store = PostgresStore(pg_conninfo, HashingEmbedder(), pool_size=2)
    store.add("I like tea", user="u")
    assert not store._pool.closed
    store.close()
    assert store._pool.closed
