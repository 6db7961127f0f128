"""FakeLM: a deterministic :class:`~personalign.backends.models.base.LanguageModel` with no
weights, for tests and dry runs (the ``fake`` model setting; :mod:`personalign.testing`
re-exports it)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from personalign.backends.models.base import (
    ContinuationScore,
    DecodeState,
    Generation,
    GenerationOptions,
    LanguageModel,
    RowAdapters,
    RowSteering,
    check_messages,
    find_stop,
    refuse_steering,
    row_adapters,
    select_state_rows,
)
from personalign.errors import BackendError, ValidationError
from personalign.types import Message

_FAKE_TEXT = (
    "<eos> <unk> <system> <user> <assistant> <eot> the a an is are was of to and in on for "
    "with you i it that this yes no not good bad paris london berlin france capital city "
    "coffee tea short long answer please thanks hello world echo like prefer want do can "
    "will be my your . , ? !"
)
_FAKE_WORDS: tuple[str, ...] = tuple(_FAKE_TEXT.split())


class FakeLM(LanguageModel):
    """A deterministic language model with no weights (a ``LanguageModel``).

    Replies: ``replies`` as a list is served in order (cycling), as a callable is called with
    the messages; by default the reply echoes the last user message as ``"echo: <text>"``.
    ``max_new_tokens`` counts whitespace words. The token level uses a fixed 58-word vocab
    (unknown words map to ``<unk>``, id 1; ``<eos>`` is id 0) and a fixed random bigram model,
    so ``forward``, ``next_token_logits`` and ``logprobs`` agree with each other.
    """

    supports_logits = True
    concurrent = True  # no shared state but a counter: chats may run together

    def __init__(
        self,
        replies: Sequence[str] | Callable[[list[Message]], str] | None = None,
        *,
        name: str = "fake-lm",
    ) -> None:
        """Make a fake model serving ``replies`` (see the class doc)."""
        self.name = name
        self._replies = replies
        self._served = 0
        self.calls: list[list[Message]] = []
        """Every conversation passed to generate/stream, in order (for assertions)."""
        self._vocab = {w: i for i, w in enumerate(_FAKE_WORDS)}
        rng = np.random.default_rng(0)
        v = len(_FAKE_WORDS)
        self._bigram = rng.normal(0.0, 2.0, size=(v, v)).astype(np.float32)
        self._context = rng.normal(0.0, 0.5, size=(v, v)).astype(np.float32)

    # chat level
    def _reply(self, messages: Sequence[Message]) -> str:
        msgs = check_messages(messages)
        self.calls.append(msgs)
        if callable(self._replies):
            return self._replies(msgs)
        if self._replies:
            reply = self._replies[self._served % len(self._replies)]
            self._served += 1
            return reply
        last = next((m.content for m in reversed(msgs) if m.role == "user"), "")
        return f"echo: {last}"

    def _finish(self, text: str, options: GenerationOptions) -> tuple[list[str], str]:
        refuse_steering(self, options.steering)
        if options.adapter is not None:
            raise BackendError(f"no adapter store configured: cannot apply {options.adapter!r}")
        reason = "stop"
        words = text.split(" ")
        if len(words) > options.max_new_tokens:
            words, reason = words[: options.max_new_tokens], "length"
        out = " ".join(words)
        cut = find_stop(out, options.stop)
        if cut >= 0:
            out, reason = out[:cut], "stop"
        pieces = out.split(" ")
        return [p if i == 0 else " " + p for i, p in enumerate(pieces)] if out else [], reason

    def generate(self, messages: Sequence[Message], *, options: GenerationOptions) -> Generation:
        """The scripted reply, cut at ``max_new_tokens`` words and at stop strings."""
        pieces, reason = self._finish(self._reply(messages), options)
        return Generation(
            text="".join(pieces),
            model=options.adapter or self.name,
            prompt_tokens=sum(len(m.content.split()) for m in messages),
            completion_tokens=len(pieces),
            finish_reason=reason,
            seconds=0.0,
        )

    def stream(
        self,
        messages: Sequence[Message],
        *,
        options: GenerationOptions,
        on_done: Callable[[Generation], None] | None = None,
    ) -> Iterator[str]:
        """The same text as :meth:`generate`, one word per delta."""
        pieces, reason = self._finish(self._reply(messages), options)
        yield from pieces
        if on_done is not None:
            prompt = sum(len(m.content.split()) for m in messages)
            on_done(Generation("".join(pieces), self.name, prompt, len(pieces), reason, 0.0))

    def generate_batch(
        self, conversations: Sequence[Sequence[Message]], *, options: GenerationOptions
    ) -> list[Generation]:
        """One :meth:`generate` per conversation."""
        return [self.generate(c, options=options) for c in conversations]

    # token level
    @property
    def vocab_size(self) -> int:
        """Number of words in the fixed vocab."""
        return len(_FAKE_WORDS)

    @property
    def eos_token_ids(self) -> frozenset[int]:
        """``{0}`` (``<eos>``)."""
        return frozenset({0})

    def encode(self, text: str) -> list[int]:
        """Lower-cased words and punctuation marks to ids (unknown: 1)."""
        words = re.findall(r"\w+|[^\w\s]", text.lower())
        return [self._vocab.get(w, 1) for w in words]

    def decode(self, ids: Sequence[int]) -> str:
        """Ids to space-joined words, special tokens dropped."""
        return " ".join(_FAKE_WORDS[i] for i in ids if i > 5)

    def encode_chat(self, messages: Sequence[Message]) -> list[int]:
        """``<role> words <eot>`` per message, then ``<assistant>``."""
        ids: list[int] = []
        for m in check_messages(messages):
            ids += [self._vocab[f"<{m.role}>"], *self.encode(m.content), self._vocab["<eot>"]]
        return [*ids, self._vocab["<assistant>"]]

    def _logits(self, tokens: Sequence[int]) -> np.ndarray:
        return self._bigram[tokens[-1]] + self._context[sum(tokens) % self.vocab_size]

    def forward(
        self,
        input_ids: Sequence[Sequence[int]],
        past: DecodeState | None = None,
        *,
        adapter: RowAdapters = None,
        steering: RowSteering = None,
    ) -> tuple[np.ndarray, DecodeState]:
        """Same contract as ``LanguageModel.forward``; the state is the token history.
        No adapters and no steering (:class:`BackendError`)."""
        refuse_steering(self, steering, len(input_ids))
        named = [a for a in row_adapters(adapter, len(input_ids)) if a is not None]
        if named:
            raise BackendError(f"no adapter store configured: cannot apply {named[0]!r}")
        rows = [[int(t) for t in r] for r in input_ids]
        if not rows or any(not r for r in rows):
            raise ValidationError("forward needs non-empty rows")
        if any(t < 0 or t >= self.vocab_size for r in rows for t in r):
            raise ValidationError(f"token id out of range [0, {self.vocab_size})")
        if past is None:
            tokens = rows
        else:
            if len(rows) != past.batch_size or len({len(r) for r in rows}) != 1:
                raise ValidationError("forward: one row per batch row, all the same length")
            past.take()
            tokens = [t + r for t, r in zip(past.tokens, rows, strict=True)]
        logits = np.stack([self._logits(t) for t in tokens]).astype(np.float32)
        return logits, DecodeState(tokens=tokens)

    def select_rows(self, state: DecodeState, rows: Sequence[int]) -> DecodeState:
        """Same contract as ``LanguageModel.select_rows``: the selected token histories."""
        picked, _ = select_state_rows(state, rows)
        return DecodeState(tokens=[list(state.tokens[i]) for i in picked])

    def logprobs(
        self, messages: Sequence[Message], continuations: Sequence[str]
    ) -> list[ContinuationScore]:
        """Sum/mean log-probability of each continuation under the bigram model."""
        prompt = self.encode_chat(messages)
        out = []
        for text in continuations:
            ids = self.encode(text)
            if not ids:
                raise ValidationError(f"continuation {text!r} has no tokens")
            total, hist = 0.0, list(prompt)
            for t in ids:
                lg = self._logits(hist).astype(np.float64)
                total += float(lg[t] - lg.max() - np.log(np.exp(lg - lg.max()).sum()))
                hist.append(t)
            out.append(ContinuationScore(text, total, total / len(ids), len(ids)))
        return out
