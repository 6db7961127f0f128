"""The :class:`LanguageModel` interface shared by every model backend.

Two levels:

* **Chat level** — :meth:`LanguageModel.generate`, :meth:`~LanguageModel.stream`,
  :meth:`~LanguageModel.generate_batch` and :meth:`~LanguageModel.logprobs` take
  :class:`~personalign.types.Message` lists; every backend implements generation.
* **Token level** (local backends only, ``supports_logits``) — :meth:`~LanguageModel.encode_chat`,
  :meth:`~LanguageModel.encode`, :meth:`~LanguageModel.decode` and the KV-cached step API
  :meth:`~LanguageModel.forward`, on which decoding-time methods (mixing the next-token logits of
  several contexts) write their own loop::

      rows = [lm.encode_chat(with_profile), lm.encode_chat(without_profile)]
      logits, state = lm.forward(rows)              # logits: (2, vocab) float32
      for _ in range(max_new_tokens):
          mixed = 1.5 * logits[0] - 0.5 * logits[1]  # any rule over the rows
          token = int(mixed.argmax())
          if token in lm.eos_token_ids:
              break
          logits, state = lm.forward([[token], [token]], state)

Backends that cannot do something raise :class:`~personalign.errors.BackendError` saying so.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

import numpy as np

from personalign.errors import BackendError, ValidationError
from personalign.types import Message

Context = Sequence[Message] | str
"""A chat (the chat template is applied, with the generation prompt) or a raw text prompt."""

Steering = tuple[tuple[str, float], ...]
"""Activation steering of one row: ``((pole, strength), ...)``; ``()`` is none (see
:mod:`personalign.generation.steering`)."""


def steering_spec(spec: Mapping[str, float] | Sequence[tuple[str, float]] | None) -> Steering:
    """``spec`` (pole -> strength, as a mapping or pairs; None: none) as a :data:`Steering`:
    a tuple of ``(pole, float strength)``, strengths finite, each pole once."""
    if spec is None:
        return ()
    items = list(spec.items()) if isinstance(spec, Mapping) else list(spec)
    out: list[tuple[str, float]] = []
    for item in items:
        if not isinstance(item, tuple | list) or len(item) != 2:
            raise ValidationError(f"steering must be (pole, strength) pairs, got {item!r}")
        pole, strength = item
        if not isinstance(pole, str) or not pole.strip():
            raise ValidationError(f"steering pole must be a non-empty string, got {pole!r}")
        if isinstance(strength, bool) or not isinstance(strength, int | float):
            raise ValidationError(f"steering strength of {pole!r} must be a number: {strength!r}")
        if not math.isfinite(strength):
            raise ValidationError(f"steering strength of {pole!r} must be finite, got {strength}")
        out.append((pole, float(strength)))
    poles = [p for p, _ in out]
    if len(set(poles)) != len(poles):
        raise ValidationError(f"steering names a pole twice: {poles}")
    return tuple(out)


@dataclass(frozen=True)
class GenerationOptions:
    """How to generate. ``temperature == 0`` is greedy decoding.

    ``seed`` makes sampling reproducible (same model, same inputs, same batch). ``stop`` strings
    end the reply and are not included in it. ``adapter`` names a per-user adapter: the OpenAI
    backend sends it as the model name (as vLLM serves LoRA adapters); the local backend loads
    it from its adapter store (:class:`BackendError` when it has none). ``steering``: pole ->
    strength pairs of activation steering (:mod:`personalign.generation.steering`), local
    backend only (``supports_steering``; the others raise :class:`BackendError`).
    """

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: Sequence[str] = ()
    """Stored as a tuple; a single string counts as one stop string."""
    adapter: str | None = None
    banned_chars: str = ""
    """No generated token may contain one of these characters (``","`` for "no commas")."""
    banned_words: Sequence[str] = ()
    """No generated token sequence may spell one of these words (as a whole word, lower,
    capitalized or after a space). Enforced while decoding by backends with logits; the
    others leave them to the caller's verification (see :mod:`personalign.constraints`)."""
    json_schema: str | None = None
    """The reply must be JSON valid against this JSON Schema (its JSON text; ``'{"type":
    "object"}'`` for any object). The local backend masks every token that would leave the
    schema (xgrammar, :mod:`~personalign.backends.models.grammar`); an OpenAI-compatible
    server gets it as ``response_format``; the caller still validates the reply."""
    steering: Steering = ()
    """Pole -> strength pairs (a mapping is accepted and stored as pairs); strengths finite."""

    @property
    def constrained(self) -> bool:
        """Whether a decoding loop must mask tokens (banned characters or words, a schema)."""
        return bool(self.banned_chars or self.banned_words or self.json_schema is not None)

    def __post_init__(self) -> None:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        object.__setattr__(self, "stop", stop)
        words = (
            (self.banned_words,) if isinstance(self.banned_words, str) else tuple(self.banned_words)
        )
        object.__setattr__(self, "banned_words", words)
        object.__setattr__(self, "steering", steering_spec(self.steering))
        if self.json_schema is not None:
            try:
                json.loads(self.json_schema)
            except (TypeError, ValueError) as e:
                raise ValidationError(f"json_schema must be JSON text of a schema: {e}") from e
        if not isinstance(self.banned_chars, str):
            raise ValidationError(f"banned_chars must be a string, got {self.banned_chars!r}")
        if any(not isinstance(w, str) or not w.strip() for w in words):
            raise ValidationError(f"banned words must be non-empty strings, got {words!r}")
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int):
            raise ValidationError(f"max_new_tokens must be an int, got {self.max_new_tokens!r}")
        if self.max_new_tokens <= 0:
            raise ValidationError(f"max_new_tokens must be > 0, got {self.max_new_tokens}")
        if not self.temperature >= 0:
            raise ValidationError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValidationError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int)
        ):
            raise ValidationError(f"seed must be an int or None, got {self.seed!r}")
        if any(not isinstance(s, str) or not s for s in stop):
            raise ValidationError(f"stop strings must be non-empty strings, got {stop!r}")
        if self.adapter is not None and not self.adapter.strip():
            raise ValidationError("adapter name is empty")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class Generation:
    """One reply. ``finish_reason``: ``stop`` (end of turn or a stop string), ``length``
    (``max_new_tokens`` reached), or whatever a remote server reports."""

    text: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    seconds: float


@dataclass(frozen=True)
class ContinuationScore:
    """Log-probability (natural log) of ``continuation`` as the assistant reply.

    ``sum_logprob`` is the total over its ``num_tokens`` tokens (<= 0);
    ``mean_logprob = sum_logprob / num_tokens``.
    """

    continuation: str
    sum_logprob: float
    mean_logprob: float
    num_tokens: int


@dataclass(eq=False)
class DecodeState:
    """KV-cache handle returned by :meth:`LanguageModel.forward`; pass it back to extend the rows.

    ``tokens[i]`` is row ``i``'s full (unpadded) token history. The cache is updated in place,
    so a state is *consumed* when passed to ``forward``: use the returned one from then on.
    ``data`` is backend-private.
    """

    tokens: list[list[int]]
    data: Any = None
    consumed: bool = field(default=False, repr=False)

    @property
    def batch_size(self) -> int:
        return len(self.tokens)

    @property
    def lengths(self) -> list[int]:
        return [len(t) for t in self.tokens]

    def take(self) -> Any:
        """Mark this state consumed and return its backend data (for backends)."""
        if self.consumed:
            raise BackendError(
                "this DecodeState was already passed to forward(); use the state it returned"
            )
        self.consumed = True
        return self.data


class LanguageModel(ABC):
    """A chat language model. ``name`` identifies it in :class:`Generation` records."""

    name: str
    supports_logits: bool = False
    """True when the token-level API (``encode*``, ``forward``, ``next_token_logits``) works."""

    @property
    def supports_steering(self) -> bool:
        """True when ``GenerationOptions.steering`` and ``forward(..., steering=...)`` work (the
        local backend with steering vectors set); the others raise :class:`BackendError`."""
        return False

    concurrent: bool = False
    """True when several threads may call :meth:`generate`, :meth:`stream` and
    :meth:`generate_batch` at once and gain from it (a remote server, a batching local
    model): the HTTP service then runs that many chats together
    (``[service] max_concurrent_chats``); False: one chat at a time."""

    # -- chat level -------------------------------------------------------------------------

    @abstractmethod
    def generate(self, messages: Sequence[Message], *, options: GenerationOptions) -> Generation:
        """Generate the assistant reply to ``messages``."""

    @abstractmethod
    def stream(
        self,
        messages: Sequence[Message],
        *,
        options: GenerationOptions,
        on_done: Callable[[Generation], None] | None = None,
    ) -> Iterator[str]:
        """Yield the reply as text deltas; joined they equal ``generate(...).text`` (greedy).
        ``on_done`` receives the whole reply as a :class:`Generation` (token counts, finish
        reason) once the stream is exhausted."""

    def generate_batch(
        self, conversations: Sequence[Sequence[Message]], *, options: GenerationOptions
    ) -> list[Generation]:
        """Generate one reply per conversation (local backends batch them, left-padded)."""
        return [self.generate(c, options=options) for c in conversations]

    def logprobs(
        self, messages: Sequence[Message], continuations: Sequence[str]
    ) -> list[ContinuationScore]:
        """Score each continuation as the assistant reply to ``messages``, in input order."""
        raise self.unsupported("logprobs")

    # -- token level ------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Width of the logits rows."""
        raise self.unsupported("vocab_size")

    @property
    def eos_token_ids(self) -> frozenset[int]:
        """Token ids that end an assistant turn."""
        raise self.unsupported("eos_token_ids")

    def encode_chat(self, messages: Sequence[Message]) -> list[int]:
        """Token ids of ``messages`` with the chat template and the generation prompt applied."""
        raise self.unsupported("encode_chat")

    def encode(self, text: str) -> list[int]:
        """Token ids of raw ``text``, without special tokens."""
        raise self.unsupported("encode")

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``, special tokens dropped."""
        raise self.unsupported("decode")

    def forward(
        self,
        input_ids: Sequence[Sequence[int]],
        past: DecodeState | None = None,
        *,
        adapter: RowAdapters = None,
        steering: RowSteering = None,
    ) -> tuple[np.ndarray, DecodeState]:
        """One KV-cached step.

        ``past is None`` (prefill): ``input_ids`` holds B prompts of any lengths >= 1.
        Otherwise: B rows (B = ``past.batch_size``) of k >= 1 new tokens each, the same k for
        all rows, appended to each row. Returns the logits at each row's last position, a
        float32 array of shape ``(B, vocab_size)``, and the new state (``past`` is consumed).
        ``adapter``: the per-user adapter the rows run with (None: the base model), or one
        per row (:func:`row_adapters`); pass the same on every step of a decode, since the
        cache holds the states the adapted model computed. ``steering`` likewise: one
        :data:`Steering` for every row or one per row (:func:`row_steering`).
        """
        raise self.unsupported("forward")

    def select_rows(self, state: DecodeState, rows: Sequence[int]) -> DecodeState:
        """A state whose row ``i`` continues row ``rows[i]`` of ``state`` (consumed): repeat an
        index to fork a row (candidates sharing one prefill), leave one out to drop it.

        This default re-prefills the selected histories; KV-cached backends select cache rows.
        """
        picked, _ = select_state_rows(state, rows)
        _, out = self.forward([list(state.tokens[i]) for i in picked])
        return out

    def next_token_logits(self, contexts: Sequence[Context]) -> np.ndarray:
        """Next-token logits ``(len(contexts), vocab_size)`` float32 for a batch of contexts."""
        if not contexts:
            raise ValidationError("next_token_logits needs at least one context")
        logits, _ = self.forward([self.encode_context(c) for c in contexts])
        return logits

    def encode_context(self, context: Context) -> list[int]:
        """``encode`` a raw string prompt, ``encode_chat`` a message list."""
        if isinstance(context, str):
            return self.encode(context)
        return self.encode_chat(context)

    # -- misc -------------------------------------------------------------------------------

    def unsupported(self, what: str) -> BackendError:
        """The error for an operation this backend cannot do."""
        return BackendError(f"{what} is not supported by the {type(self).__name__} backend")

    def close(self) -> None:  # noqa: B027 (optional hook, no-op by default)
        """Release resources (network clients). Idempotent."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


RowAdapters = str | Sequence[str | None] | None
"""``forward``'s ``adapter``: one adapter name (or None) for every row, or one per row."""


def row_adapters(adapter: RowAdapters, rows: int) -> list[str | None]:
    """``adapter`` as one name (or None) per row of a batch of ``rows``."""
    if adapter is None or isinstance(adapter, str):
        return [adapter] * rows
    names = list(adapter)
    if len(names) != rows:
        raise ValidationError(f"{len(names)} adapters for a batch of {rows} rows")
    return names


RowSteering = Steering | Mapping[str, float] | Sequence[Steering | None] | None
"""``forward``'s ``steering``: one spec (pairs or a mapping; None or ``()``: none) for every
row, or one per row (each a spec or None)."""


def _is_pair(x: object) -> bool:
    return isinstance(x, tuple | list) and len(x) == 2 and isinstance(x[0], str)


def row_steering(steering: RowSteering, rows: int) -> list[Steering]:
    """``steering`` as one checked :data:`Steering` per row of a batch of ``rows``."""
    if steering is None or isinstance(steering, Mapping):
        return [steering_spec(steering)] * rows
    items: list[Any] = list(steering)
    if not items or all(_is_pair(x) for x in items):
        return [steering_spec(items)] * rows
    if len(items) != rows:
        raise ValidationError(f"{len(items)} steering specs for a batch of {rows} rows")
    return [steering_spec(x) for x in items]


def refuse_steering(lm: LanguageModel, steering: RowSteering, rows: int = 1) -> None:
    """For backends without steering: raise :class:`BackendError` if any row asks for it."""
    if any(row_steering(steering, rows)):
        raise BackendError(
            f"activation steering is not supported by the {type(lm).__name__} backend: "
            "use the local model (TransformersLM) with steering vectors"
        )


def select_state_rows(state: DecodeState, rows: Sequence[int]) -> tuple[list[int], Any]:
    """For backends' ``select_rows``: check ``rows`` against ``state``, consume it, and return
    the row indices and the state's data."""
    picked = [int(i) for i in rows]
    if not picked:
        raise ValidationError("select_rows needs at least one row index")
    bad = [i for i in picked if not 0 <= i < state.batch_size]
    if bad:
        raise ValidationError(f"row indices {bad} out of range for a batch of {state.batch_size}")
    return picked, state.take()


def find_stop(text: str, stop: Sequence[str]) -> int:
    """Index of the earliest stop string in ``text``, or -1."""
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    return min(hits) if hits else -1


def stream_safe_len(text: str, stop: Sequence[str]) -> int:
    """How much of a growing ``text`` can be emitted now: hold back a trailing partial stop
    string and a trailing incomplete character (``\\ufffd`` from a split multi-byte token)."""
    n = len(text)
    while n > 0 and text[n - 1] == "\ufffd":
        n -= 1
    hold = 0
    for s in stop:
        for k in range(min(len(s) - 1, n), hold, -1):
            if text[n - k : n] == s[:k]:
                hold = k
                break
    return n - hold


def check_messages(messages: Sequence[Message]) -> list[Message]:
    """Reject an empty conversation or non-Message items."""
    msgs = list(messages)
    if not msgs:
        raise ValidationError("messages is empty: give at least one message")
    for m in msgs:
        if not isinstance(m, Message):
            raise ValidationError(f"expected Message items, got {type(m).__name__}")
    return msgs
