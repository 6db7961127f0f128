"""Query embeddings for a server: an LRU cache, and micro-batching across concurrent requests.

A chat embeds its message several times (memory search, the topic tagger, context matching,
the boundary), and concurrent requests each embed one short text. :class:`QueryEmbedder`
wraps an :class:`~personalign.backends.embedders.Embedder` so that:

* a call with at most ``max_batch`` texts is answered per text from an LRU cache of
  ``cache_size`` vectors (the text is embedded once, then reused);
* with ``batch``, the texts missing from the cache are handed to one background thread that
  embeds what concurrent callers queued in one call (continuous batching: whatever arrived
  while the previous batch ran, waiting at most ``window_ms`` for more, at most
  ``max_batch`` texts), and each caller gets its own rows back.

Larger calls (ingesting a conversation's sentences) go straight to the wrapped embedder.
Vectors are the wrapped embedder's (same ``name`` and ``dim``); a text embedded in a batch
may differ from the same text embedded alone by float rounding (padding), well under 1e-5.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np

from personalign.backends.embedders import Embedder
from personalign.types import check_texts


def unwrap(embedder: Any) -> Any:
    """The embedder inside any :class:`QueryEmbedder` wrappers (for type checks)."""
    while isinstance(embedder, QueryEmbedder):
        embedder = embedder.inner
    return embedder


class _Batcher:
    """One thread that embeds the texts concurrent callers queued, together."""

    def __init__(self, inner: Embedder, window_s: float, max_batch: int) -> None:
        self.inner = inner
        self.window_s = window_s
        self.max_batch = max_batch
        self._queue: queue.Queue[tuple[list[str], Future[np.ndarray]] | None] = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.batches = 0
        """Calls made to the wrapped embedder (for tests and benchmarks)."""

    def embed(self, texts: list[str]) -> np.ndarray:
        fut: Future[np.ndarray] = Future()
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="personalign-embed-batch", daemon=True
                )
                self._thread.start()
            self._queue.put((texts, fut))
        return fut.result()

    def _collect(self, first: tuple[list[str], Future[np.ndarray]]) -> list[Any]:
        batch = [first]
        count = len(first[0])
        deadline = time.monotonic() + self.window_s
        while count < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    item = self._queue.get(timeout=left)
                except queue.Empty:
                    break
            if item is None:
                self._queue.put(None)  # stop after this batch
                break
            batch.append(item)
            count += len(item[0])
        return batch

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = self._collect(first)
            unique = list(dict.fromkeys(t for texts, _ in batch for t in texts))
            try:
                vectors = self.inner.embed(unique)
            except BaseException as e:  # every waiting caller gets the failure
                for _, fut in batch:
                    fut.set_exception(e)
                continue
            self.batches += 1
            row = {t: i for i, t in enumerate(unique)}
            for texts, fut in batch:
                fut.set_result(vectors[[row[t] for t in texts]])

    def close(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is not None and thread.is_alive():
                self._queue.put(None)
        if thread is not None:
            thread.join(timeout=5)


class QueryEmbedder:
    """An :class:`Embedder` (same ``name``, ``dim`` and vectors) with a query cache and
    optional micro-batching; see the module doc. Thread-safe."""

    def __init__(
        self,
        inner: Embedder,
        *,
        cache_size: int = 2048,
        batch: bool = False,
        window_ms: float = 2.0,
        max_batch: int = 32,
    ) -> None:
        self.inner = inner
        self.name: str = inner.name
        self.dim: int = inner.dim
        self.cache_size = cache_size
        self.max_batch = max_batch
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._batcher = _Batcher(inner, window_ms / 1000.0, max_batch) if batch else None
        self.hits = 0
        self.misses = 0

    def __getattr__(self, name: str) -> Any:  # the wrapped embedder's other attributes
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    @property
    def batches(self) -> int:
        """Batched calls made to the wrapped embedder (0 without batching)."""
        return self._batcher.batches if self._batcher is not None else 0

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """``(len(texts), dim)`` unit rows, in input order."""
        items = check_texts(texts, what="embed()")
        if not items or len(items) > self.max_batch:
            return self.inner.embed(items)
        out = np.empty((len(items), self.dim), dtype=np.float32)
        missing: dict[str, list[int]] = {}
        with self._lock:
            for i, t in enumerate(items):
                vec = self._cache.get(t)
                if vec is None:
                    missing.setdefault(t, []).append(i)
                else:
                    self._cache.move_to_end(t)
                    out[i] = vec
            self.hits += len(items) - sum(len(v) for v in missing.values())
            self.misses += len(missing)
        if not missing:
            return out
        texts_missing = list(missing)
        if self._batcher is not None:
            vectors = self._batcher.embed(texts_missing)
        else:
            vectors = self.inner.embed(texts_missing)
        for t, vec in zip(texts_missing, vectors, strict=True):
            out[missing[t]] = vec
        if self.cache_size:
            with self._lock:
                for t, vec in zip(texts_missing, vectors, strict=True):
                    kept = np.array(vec, dtype=np.float32)
                    kept.setflags(write=False)
                    self._cache[t] = kept
                    self._cache.move_to_end(t)
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return out

    def close(self) -> None:
        """Stop the batching thread (a later call starts it again)."""
        if self._batcher is not None:
            self._batcher.close()


def query_embedder(embedder: Embedder, service: Any) -> Embedder:
    """``embedder`` wrapped as the ``[service]`` settings say (cache size, batching); itself
    when neither is on or it is wrapped already."""
    if isinstance(embedder, QueryEmbedder):
        return embedder
    if not service.embed_cache_size and not service.embed_batch:
        return embedder
    return QueryEmbedder(
        embedder,
        cache_size=service.embed_cache_size,
        batch=service.embed_batch,
        window_ms=service.embed_batch_window_ms,
        max_batch=service.embed_batch_max,
    )
