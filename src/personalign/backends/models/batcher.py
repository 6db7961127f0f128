"""Continuous batching for a local model: chats submitted from many threads share forward passes.

A :class:`Batcher` owns one worker thread. A request (a prompt's token ids and its
:class:`GenerationOptions`) is queued by :meth:`Batcher.submit`; when the worker is idle it
waits a short collection window (``window_s``) for more, then prefills the new prompts as one
left-padded batch. Each step then feeds every active row its last token in one forward pass;
requests that arrive meanwhile are prefilled and merged into the running batch (their KV cache
left-padded, :mod:`personalign.backends.models.kvstate`), and finished rows leave it.

Every request keeps its own sampling (temperature, top-p, its own seeded generator: a request
samples exactly as it would alone given the same logits), banned characters and words, its
JSON Schema, stop strings and token budget; its text is streamed back through its own queue
(:meth:`BatchRequest.deltas`). An error while handling one request's tokens fails that request
only; an error in a shared forward pass fails the requests in that pass, and the worker goes on.
Requests with different adapters never share a pass: a request whose adapter differs from the
running batch's waits until that batch drains. Requests with different activation steering
(``GenerationOptions.steering``) do share passes: every pass gives the engine each row's own
steering (the rows of that pass, in order), so a row keeps its steering however rows join and
leave around it.

The model side is the :class:`BatchEngine` protocol (implemented by ``TransformersLM``).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from personalign.backends.models.base import (
    Generation,
    GenerationOptions,
    Steering,
    find_stop,
    stream_safe_len,
)
from personalign.errors import BackendError

if TYPE_CHECKING:
    import torch


class BatchEngine(Protocol):
    """What the batcher needs from a model. ``lock`` guards the model (and its active adapter)
    against the model's other callers; the batcher holds it for each forward pass."""

    lock: threading.RLock
    name: str

    @property
    def eos_token_ids(self) -> frozenset[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def activate_adapter(self, name: str | None) -> float: ...

    def batch_prefill(
        self, prompts: list[list[int]], steering: Sequence[Steering] | None = None
    ) -> tuple[torch.Tensor, Any]:
        """(float32 next-token logits (B, vocab), batch KV) of left-padded prompts, each row
        with its ``steering``."""
        ...

    def batch_extend(
        self, tokens: list[int], kv: Any, steering: Sequence[Steering] | None = None
    ) -> tuple[torch.Tensor, Any]:
        """Feed one token per row (each with its ``steering``); (logits, KV)."""
        ...

    def batch_select(self, kv: Any, rows: list[int]) -> Any: ...

    def batch_merge(self, a: Any, b: Any) -> Any: ...

    def constrain_logits(
        self, options: GenerationOptions, histories: Sequence[Sequence[int]], logits: Any
    ) -> Any: ...

    def pick(self, logits: torch.Tensor, options: GenerationOptions, gen: Any) -> list[int]: ...


@dataclass
class _Done:
    generation: Generation


@dataclass(eq=False)
class BatchRequest:
    """One submitted chat: iterate :meth:`deltas` for its text; :attr:`generation` once done."""

    prompt: list[int]
    options: GenerationOptions
    budget: int
    gen: Any  # torch.Generator
    model: str
    start: float = field(default_factory=time.perf_counter)
    ids: list[int] = field(default_factory=list)
    text: str = ""
    reason: str = "length"
    steps: int = 0
    sent: int = 0
    finished: bool = False
    cancelled: bool = False
    last: int = -1
    generation: Generation | None = None
    out: queue.SimpleQueue[str | _Done | BaseException] = field(default_factory=queue.SimpleQueue)

    def deltas(self) -> Iterator[str]:
        """The reply's text deltas as they are decoded; raises the request's error, if any.
        Leaving the loop early cancels the request (its row leaves the batch)."""
        try:
            while True:
                item = self.out.get()
                if isinstance(item, _Done):
                    self.generation = item.generation
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.cancelled = True

    def result(self) -> Generation:
        """Wait for the whole reply."""
        for _ in self.deltas():
            pass
        assert self.generation is not None
        return self.generation

    def fail(self, error: BaseException) -> None:
        if not self.finished:
            self.finished = True
            self.out.put(error)


class Batcher:
    """Continuous batching over ``engine`` (see the module doc). ``max_batch`` rows at most;
    ``window_s``: how long an idle worker waits for more requests after the first."""

    def __init__(self, engine: BatchEngine, *, max_batch: int = 16, window_s: float = 0.005):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.engine = engine
        self.max_batch = max_batch
        self.window_s = window_s
        self.idle_s = 5.0
        self._cond = threading.Condition()
        self._pending: list[BatchRequest] = []
        self._closed = False
        self._thread: threading.Thread | None = None
        self._active: list[BatchRequest] = []
        self._kv: Any = None
        self._adapter: str | None = None
        self.passes = 0
        """Forward passes run (prefills and steps); for tests and benchmarks."""
        self.max_rows = 0
        """The most rows a pass has held."""

    def submit(self, prompt: list[int], options: GenerationOptions, budget: int) -> BatchRequest:
        """Queue a request (``budget``: its most new tokens) and return its handle."""
        import torch

        gen = torch.Generator()
        if options.seed is None:
            gen.seed()
        else:
            gen.manual_seed(options.seed)
        req = BatchRequest(list(prompt), options, budget, gen, self.engine.name)
        with self._cond:
            if self._closed:
                raise BackendError("the model was closed")
            self._pending.append(req)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="personalign-batcher", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()
        return req

    def close(self) -> None:
        """Stop the worker; queued and running requests fail with :class:`BackendError`."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=30)

    # -- the worker -----------------------------------------------------------------------

    def _take(self) -> list[BatchRequest] | None:
        """New requests to admit now: blocks (then waits the window) when nothing runs;
        None when the worker has been idle for ``idle_s`` (it then ends: a later submit starts
        a new one, and a model nobody uses any more can be freed)."""
        with self._cond:
            if not self._active:
                idle_until = time.perf_counter() + self.idle_s
                while not self._pending and not self._closed:
                    left = idle_until - time.perf_counter()
                    if left <= 0:
                        self._thread = None
                        return None
                    self._cond.wait(left)
                deadline = time.perf_counter() + self.window_s
                while not self._closed and len(self._pending) < self.max_batch:
                    left = deadline - time.perf_counter()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            if self._closed:
                return []
            room = self.max_batch - len(self._active)
            if not self._active and self._pending:
                self._adapter = self._pending[0].options.adapter
            self._pending = [r for r in self._pending if not r.cancelled]
            taken = [r for r in self._pending if r.options.adapter == self._adapter][:room]
            self._pending = [r for r in self._pending if r not in taken]
            return taken

    def _run(self) -> None:
        while True:
            new = self._take()
            if new is None:
                return
            if self._closed:
                break
            try:
                self._iteration(new)
            except BaseException as e:  # a shared pass failed: fail its requests, go on
                for r in self._active + new:
                    r.fail(e)
                self._active, self._kv = [], None
        err = BackendError("the model was closed")
        with self._cond:
            for r in self._active + self._pending:
                r.fail(err)
            self._active, self._pending, self._kv = [], [], None

    def _iteration(self, new: list[BatchRequest]) -> None:
        eng = self.engine
        logits: list[torch.Tensor] = []
        with eng.lock:
            if self._active:
                eng.activate_adapter(self._adapter)
                step, self._kv = eng.batch_extend(
                    [r.last for r in self._active],
                    self._kv,
                    [r.options.steering for r in self._active],
                )
                logits.append(step)
                self.passes += 1
            if new:
                try:
                    eng.activate_adapter(self._adapter)
                    first, kv = eng.batch_prefill(
                        [r.prompt for r in new], [r.options.steering for r in new]
                    )
                except Exception as e:  # e.g. the adapter cannot load: only these requests
                    for r in new:
                        r.fail(e)
                    new = []
                else:
                    self.passes += 1
                    logits.append(first)
                    self._kv = kv if not self._active else eng.batch_merge(self._kv, kv)
                    self._active = self._active + new
        if not self._active:
            return
        self.max_rows = max(self.max_rows, len(self._active))
        import torch

        rows = torch.cat(logits) if len(logits) > 1 else logits[0]
        for i, r in enumerate(self._active):
            try:
                self._advance(r, rows[i : i + 1])
            except Exception as e:
                r.fail(e)
        keep = [i for i, r in enumerate(self._active) if not r.finished]
        if len(keep) < len(self._active):
            self._active = [self._active[i] for i in keep]
            if keep:
                with eng.lock:
                    self._kv = eng.batch_select(self._kv, keep)
            else:
                self._kv = None

    def _advance(self, r: BatchRequest, logits: torch.Tensor) -> None:
        """Pick the row's next token and stream what is final of its text."""
        if r.cancelled:
            r.finished = True
            return
        eng, opts = self.engine, r.options
        if opts.constrained:
            logits = eng.constrain_logits(opts, [r.prompt + r.ids], logits)
        (tok,) = eng.pick(logits, opts, r.gen)
        r.steps += 1
        done = False
        if tok in eng.eos_token_ids:
            done, r.reason = True, "stop"
        else:
            r.ids.append(tok)
            r.last = tok
            r.text = eng.decode(r.ids)
            cut = find_stop(r.text, opts.stop)
            if cut >= 0:
                r.text, done, r.reason = r.text[:cut], True, "stop"
            elif r.steps >= r.budget:
                done = True
        if done and r.reason == "length":  # cut inside a multi-byte character
            r.text = r.text.rstrip("\ufffd")
        upto = len(r.text) if done else stream_safe_len(r.text, opts.stop)
        if upto > r.sent:
            r.out.put(r.text[r.sent : upto])
            r.sent = upto
        if done:
            r.finished = True
            seconds = time.perf_counter() - r.start
            gen = Generation(r.text, r.model, len(r.prompt), len(r.ids), r.reason, seconds)
            r.generation = gen
            r.out.put(_Done(gen))
