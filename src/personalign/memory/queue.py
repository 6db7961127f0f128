"""Background ingestion that loses nothing and leaks nothing.

:class:`IngestionQueue` runs the turns a reply acknowledged through
:meth:`~personalign.memory.api.Memory.add_messages` on one background thread, after the reply:

* **Journaled.** Each turn is written to the :class:`~personalign.memory.journal.Journal`
  (fsync'd) before the reply returns, and replayed by the next process after a crash; a
  replayed turn already in memory (its turn id stored as an episode) is not added twice.
* **Retried, then recorded.** A failing ingestion is retried ``max_attempts`` times with
  exponential backoff (``backoff_s``, doubled each time); then it is logged, kept in the journal
  (replayed at the next start, or by :meth:`retry_failed`), listed by :meth:`status`, and
  raised once by :meth:`flush` as :class:`~personalign.errors.IngestionError`.
* **Erase wins.** :meth:`erase` stops new requests of the user (:meth:`hold` waits), waits for
  those in progress and for the user's queued turns (dropped unless already running), runs the
  erase, and removes the user's journal entries: nothing of the user is written after it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from personalign.errors import IngestionError
from personalign.memory.ingest import with_ids
from personalign.types import Message, new_id, utcnow

if TYPE_CHECKING:
    from personalign.memory.api import Memory
    from personalign.memory.journal import Entry, Journal

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class IngestionFailure:
    """A turn that could not be ingested after every attempt (it stays in the journal)."""

    entry: str
    user: str | None
    turn_ids: tuple[str, ...]
    error: str
    attempts: int
    at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {
            "entry": self.entry,
            "turn_ids": list(self.turn_ids),
            "error": self.error,
            "attempts": self.attempts,
            "at": self.at.isoformat(),
        }


class IngestionQueue:
    """One background ingestion thread over ``memory``, journaled in ``journal`` (None: not
    journaled)."""

    def __init__(
        self,
        memory: Memory,
        journal: Journal | None = None,
        *,
        max_attempts: int = 3,
        backoff_s: float = 0.5,
    ) -> None:
        self.memory = memory
        self.journal = journal
        self.max_attempts = max(1, max_attempts)
        self.backoff_s = backoff_s
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest")
        self._cond = threading.Condition()
        self._pending: dict[Future[object], str | None] = {}
        self._entries: dict[str, Entry] = {}  # failed entries, for retry_failed
        self._failures: dict[str, IngestionFailure] = {}
        self._unreported: list[IngestionFailure] = []
        self._active: Counter[str] = Counter()
        self._epochs: Counter[str] = Counter()  # erases begun, per user
        self._erasing: set[str] = set()

    # -- submitting ----------------------------------------------------------------------

    def turns(self, turns: Sequence[Message], *, user: str) -> str | None:
        """Journal ``turns`` (fsync'd) and queue them; return the entry id, or None when the
        user is being erased (then nothing is kept)."""
        entry: Entry = {
            "id": new_id(),
            "user": user,
            "turns": [m.model_dump(mode="json") for m in with_ids(turns)],
            "at": utcnow().isoformat(),
        }
        with self._cond:
            if user in self._erasing:
                log.info("a turn of a user being erased was dropped")
                return None
        if self.journal is not None:
            self.journal.append([entry])
        self._submit(entry)
        return str(entry["id"])

    def task(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` on the ingestion thread (not journaled); :meth:`flush` waits for it."""
        self._track(self._pool.submit(self._run_task, fn), None)

    def replay(self) -> int:
        """Queue the entries of earlier processes that never finished (see the journal)."""
        if self.journal is None:
            return 0
        entries = self.journal.adopt_orphans()
        seen: dict[str, set[str]] = {}
        for entry in entries:
            self._track(self._pool.submit(self._run_entry, entry, seen), entry["user"])
        return len(entries)

    def _submit(self, entry: Entry) -> None:
        self._track(self._pool.submit(self._run_entry, entry, None), entry["user"])

    def _track(self, fut: Future[object], user: str | None) -> None:
        with self._cond:
            self._pending[fut] = user
        fut.add_done_callback(self._done)

    def _done(self, fut: Future[object]) -> None:
        with self._cond:
            self._pending.pop(fut, None)
            self._cond.notify_all()

    # -- running -------------------------------------------------------------------------

    def _run_task(self, fn: Callable[[], object]) -> None:
        try:
            fn()
        except Exception as e:
            log.error("background task failed: %s", e)
            self._record(IngestionFailure(new_id(), None, (), repr(e), 1, utcnow()))

    def _run_entry(self, entry: Entry, seen: dict[str, set[str]] | None) -> None:
        user: str = entry["user"]
        turns = [Message.model_validate(m) for m in entry["turns"]]
        ids = tuple(m.id or "" for m in turns if m.role == "user")
        if seen is not None and self._already_stored(user, ids, seen):
            self._finish(entry)
            return
        error: Exception | None = None
        for attempt in range(1, self.max_attempts + 1):
            if self._erasing_now(user):
                return  # dropped: erase removes its journal entry
            try:
                self.memory.add_messages(turns, user=user)
            except Exception as e:  # retried, then recorded: never dropped silently
                error = e
                log.warning("ingesting a turn failed (attempt %d): %s", attempt, e)
                if attempt < self.max_attempts:
                    self._sleep(self.backoff_s * 2 ** (attempt - 1), user)
                continue
            self._finish(entry)
            return
        log.error("ingesting a turn failed after %d attempts: %s", self.max_attempts, error)
        failure = IngestionFailure(
            str(entry["id"]), user, ids, repr(error), self.max_attempts, utcnow()
        )
        with self._cond:
            self._entries[failure.entry] = entry
        self._record(failure)

    def _already_stored(self, user: str, ids: tuple[str, ...], seen: dict[str, set[str]]) -> bool:
        if user not in seen:
            stored: set[str] = set()
            if self.memory.store.has_user(user=user):
                for r in self.memory.store.list(user=user, include_history=True, kinds=["episode"]):
                    stored.update(r.source_turn_ids)
            seen[user] = stored
        return bool(ids) and all(i in seen[user] for i in ids)

    def _finish(self, entry: Entry) -> None:
        with self._cond:
            self._failures.pop(str(entry["id"]), None)
            self._entries.pop(str(entry["id"]), None)
        if self.journal is not None:
            self.journal.done(str(entry["id"]))

    def _record(self, failure: IngestionFailure) -> None:
        with self._cond:
            self._failures[failure.entry] = failure
            self._unreported.append(failure)

    def _erasing_now(self, user: str) -> bool:
        with self._cond:
            return user in self._erasing

    def _sleep(self, seconds: float, user: str) -> None:
        """Back off, waking early when the user is being erased."""
        deadline = time.monotonic() + seconds
        with self._cond:
            while user not in self._erasing and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)

    # -- requests and erasure ------------------------------------------------------------

    @contextmanager
    def hold(self, user: str) -> Iterator[None]:
        """Around a request that reads or writes ``user``'s data: waits while the user is being
        erased, and an erase waits for it."""
        with self._cond:
            while user in self._erasing:
                self._cond.wait()
            self._active[user] += 1
        try:
            yield
        finally:
            with self._cond:
                self._active[user] -= 1
                if self._active[user] <= 0:
                    del self._active[user]
                self._cond.notify_all()

    def epoch(self, user: str) -> int:
        """How many erases of ``user`` have begun: what was read of the user while this stayed
        the same was read with no erase in between (a plan made before a request's
        :meth:`hold` is made again inside it when this changed)."""
        with self._cond:
            return self._epochs[user]

    def erase(self, user: str, erase: Callable[[], T]) -> T:
        """Run ``erase`` (the store's erase of ``user``) once nothing of the user is in flight,
        then drop the user's journal entries and failures (see the module doc)."""
        with self._cond:
            while user in self._erasing:  # one erase of a user at a time
                self._cond.wait()
            self._erasing.add(user)
            self._epochs[user] += 1
            self._cond.notify_all()  # wake a backoff of the user's
            try:
                while self._active.get(user):
                    self._cond.wait()
                mine = [f for f, u in self._pending.items() if u == user]
            except BaseException:
                self._erasing.discard(user)
                raise
        try:
            wait(mine)  # queued ones return at once: the user is being erased
            result = erase()
            with self._cond:
                for key in [k for k, f in self._failures.items() if f.user == user]:
                    del self._failures[key]
                    self._entries.pop(key, None)
                self._unreported = [f for f in self._unreported if f.user != user]
            if self.journal is not None:
                self.journal.drop_user(user)
            return result
        finally:
            with self._cond:
                self._erasing.discard(user)
                self._cond.notify_all()

    # -- waiting, status -----------------------------------------------------------------

    def flush(self, *, user: str | None = None, check: bool = True) -> None:
        """Wait until every queued turn (of ``user``, or everyone's) is done; with ``check``,
        raise the failures not raised before as :class:`IngestionError`."""
        while True:
            with self._cond:
                futs = [f for f, u in self._pending.items() if user is None or u == user]
            if not futs:
                break
            wait(futs)
        if not check:
            return
        with self._cond:
            mine = [f for f in self._unreported if user is None or f.user == user]
            self._unreported = [f for f in self._unreported if f not in mine]
        if mine:
            raise IngestionError(mine)

    def status(self, user: str) -> dict[str, Any]:
        """``{"pending": turns queued or running, "failed": [failures]}`` for ``user``."""
        with self._cond:
            pending = sum(1 for u in self._pending.values() if u == user)
            failed = [f.as_dict() for f in self._failures.values() if f.user == user]
        return {"pending": pending, "failed": failed}

    def retry_failed(self, user: str | None = None) -> int:
        """Queue the failed turns (of ``user``) again; return how many."""
        with self._cond:
            again = [e for k, e in self._entries.items() if user is None or e["user"] == user]
            for e in again:
                self._entries.pop(str(e["id"]), None)
                self._failures.pop(str(e["id"]), None)
        for e in again:
            self._submit(e)
        return len(again)

    def close(self) -> None:
        """Finish what is queued, stop the thread, release the journal (kept on disk when
        failed turns remain, for the next start)."""
        try:
            self.flush(check=False)
        finally:
            self._pool.shutdown(wait=True)
            if self.journal is not None:
                self.journal.close()
