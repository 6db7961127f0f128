""":class:`ChatGate`: how many chats generate at once in one service process.

A model that can serve several requests together (``LanguageModel.concurrent``: an
OpenAI-compatible server, the fake model, a batching local model) gets a bounded semaphore of
``[service] max_concurrent_chats``; one that cannot (the plain local model: one forward pass
at a time) gets one chat at a time. There is no process-wide lock beyond this: retrieval and
the memory run outside the gate, and a chat for a remote model never waits for another
beyond the limit.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from personalign.backends.models.base import LanguageModel


class ChatGate:
    """Admission of chats to the model (see the module doc). ``model``: returns the model
    now (read at each :meth:`hold`, so a model swapped or made concurrent later is
    honoured)."""

    def __init__(self, model: Callable[[], LanguageModel], limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self._model = model
        self.limit = limit
        self._exclusive = threading.Lock()
        self._shared = threading.BoundedSemaphore(limit)
        self._count = threading.Lock()
        self.active = 0
        """Chats holding the gate now."""
        self.peak = 0
        """The most chats that held it at once (for tests and ``/v1/status``)."""

    def concurrent(self) -> bool:
        """Whether the model now may run several chats at once."""
        return bool(getattr(self._model(), "concurrent", False))

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Wait for a place, keep it for the block (a stream: until it ends or is closed)."""
        gate = self._shared if self.concurrent() else self._exclusive
        with gate:
            with self._count:
                self.active += 1
                self.peak = max(self.peak, self.active)
            try:
                yield
            finally:
                with self._count:
                    self.active -= 1
