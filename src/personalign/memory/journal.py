"""The ingestion journal: turns acknowledged to the user but not yet in memory, on disk.

Before a reply is returned, the turn it will ingest is appended to the journal and fsync'd;
once ingested, it is done, and the file is truncated when nothing is outstanding. A process
killed in between (SIGKILL, power cut after the fsync) leaves its file behind, and the next
process that opens the same home replays it. So an acknowledged turn is never lost.

Layout: ``<home>/journal/<pid>-<random>.jsonl`` (one JSON entry a line) and a ``.lock`` beside
it that its process holds (``flock``) while alive, so that processes sharing a home (the
service and a ``personalign chat``) never take each other's entries: only files whose lock
is free (their process is gone) are adopted. Entries of an erased user are removed by
rewriting the file (write, fsync, rename), so their text leaves the journal too.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

Entry = dict[str, Any]
"""``{"id", "user", "turns": [message dicts], "at"}``."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read(path: Path) -> list[Entry]:
    """The entries of a journal file; a torn last line (killed mid-write, never fsync'd and
    so never acknowledged) is skipped."""
    out: list[Entry] = []
    try:
        lines = path.read_bytes().splitlines()
    except FileNotFoundError:
        return out
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and {"id", "user", "turns"} <= entry.keys():
            out.append(entry)
    return out


class Journal:
    """This process's journal file under ``directory`` (created on the first append)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._mutex = threading.Lock()
        self._entries: dict[str, Entry] = {}  # outstanding, in append order
        self._lines = 0  # lines in the file
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self._name = f"{os.getpid()}-{secrets.token_hex(4)}"

    @property
    def path(self) -> Path:
        return self.directory / f"{self._name}.jsonl"

    def _lock_path(self, name: str) -> Path:
        return self.directory / f"{name}.lock"

    def _ensure_open(self) -> int:
        if self._fd is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            lock_fd = os.open(self._lock_path(self._name), os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._lock_fd = lock_fd
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            _fsync_dir(self.directory)
        return self._fd

    def append(self, entries: list[Entry]) -> None:
        """Write ``entries`` and fsync: when this returns they survive a crash."""
        if not entries:
            return
        data = b"".join(json.dumps(e, ensure_ascii=False).encode() + b"\n" for e in entries)
        with self._mutex:
            fd = self._ensure_open()
            os.write(fd, data)
            os.fsync(fd)
            self._lines += len(entries)
            for e in entries:
                self._entries[e["id"]] = e

    def done(self, entry_id: str) -> None:
        """The entry is in memory (or dropped): truncate the file when nothing is outstanding,
        compact it when mostly done."""
        with self._mutex:
            self._entries.pop(entry_id, None)
            if self._fd is None:
                return
            if not self._entries:
                os.ftruncate(self._fd, 0)
                os.fsync(self._fd)
                self._lines = 0
            elif self._lines > 256 and self._lines > 4 * len(self._entries):
                self._rewrite()

    def drop_user(self, user: str) -> int:
        """Remove every entry of ``user`` (outstanding or done) from the file; return how many
        were outstanding."""
        with self._mutex:
            gone = [k for k, e in self._entries.items() if e["user"] == user]
            for k in gone:
                del self._entries[k]
            if self._fd is not None and self._lines:
                self._rewrite()
            return len(gone)

    def outstanding(self) -> list[Entry]:
        with self._mutex:
            return list(self._entries.values())

    def _rewrite(self) -> None:
        """Replace the file by the outstanding entries (write, fsync, rename, fsync dir)."""
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            for e in self._entries.values():
                f.write(json.dumps(e, ensure_ascii=False).encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        _fsync_dir(self.directory)
        if self._fd is not None:
            os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self._lines = len(self._entries)

    def adopt_orphans(self) -> list[Entry]:
        """Take over the files of processes that are gone: their entries are appended to this
        journal (fsync'd) before their files are removed; returns the entries."""
        if not self.directory.is_dir():
            return []
        adopted: list[Entry] = []
        names = {p.stem for p in self.directory.glob("*.jsonl")} - {self._name}
        for name in sorted(names):
            lock_fd = os.open(self._lock_path(name), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(lock_fd)
                continue  # its process is alive
            try:
                data = self.directory / f"{name}.jsonl"
                entries = _read(data)
                self.append(entries)  # ours now, on disk, before theirs goes
                data.unlink(missing_ok=True)
                self._lock_path(name).unlink(missing_ok=True)
                adopted.extend(entries)
            finally:
                os.close(lock_fd)
        if adopted:
            log.info("replaying %d acknowledged turns from an earlier process", len(adopted))
        return adopted

    def close(self) -> None:
        """Release the file: removed when nothing is outstanding, else left for the next
        start to replay."""
        with self._mutex:
            if self._fd is None:
                return
            os.close(self._fd)
            self._fd = None
            if not self._entries:
                self.path.unlink(missing_ok=True)
                self._lock_path(self._name).unlink(missing_ok=True)
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None
