"""One SQLite connection per thread, every one tracked, so that ``close()`` closes them all.

``sqlite3`` connections are not shared between threads here: each thread gets its own (WAL
lets them read while another writes). They are opened with ``check_same_thread=False`` only
so that the closing thread may close the others', and the connection of a thread that has
ended is closed when the next one is opened (nothing else can use it).
"""

from __future__ import annotations

import sqlite3
import threading
import weakref
from collections.abc import Callable


class ThreadConnections:
    """Per-thread connections made by ``connect`` (which must pass
    ``check_same_thread=False``)."""

    def __init__(self, connect: Callable[[], sqlite3.Connection]) -> None:
        self._connect = connect
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: dict[sqlite3.Connection, weakref.ref[threading.Thread]] = {}

    def get(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        conn = self._connect()
        self._local.conn = conn
        with self._lock:
            self._close_orphans()
            self._open[conn] = weakref.ref(threading.current_thread())
        return conn

    def _close_orphans(self) -> None:
        for conn, thread in list(self._open.items()):
            alive = thread()
            if alive is None or not alive.is_alive():
                conn.close()
                del self._open[conn]

    @property
    def count(self) -> int:
        """Connections open now."""
        with self._lock:
            return len(self._open)

    def close(self) -> None:
        """Close every thread's connection; a later :meth:`get` opens a new one."""
        with self._lock:
            for conn in self._open:
                conn.close()
            self._open.clear()
            self._local = threading.local()
