"""JSON replies by construction: a JSON Schema compiled by xgrammar into a token mask.

The JSON is compact (no free whitespace between tokens), so a token budget holds more of it.

:class:`JsonGrammar` masks, at each decoding step, every token that cannot continue a JSON
value valid against the schema (and, once the value is complete, everything but the stop
tokens), so even the embedded 135M model answers ``GenerationOptions.json_schema`` with
JSON the caller's validation accepts. It is stateless for its callers: a row is identified
by its token history (prompt and reply so far), as ``constrain_logits`` receives it; the
grammar state of each row lives in a bounded cache keyed by that history, advanced by one
token per step, and replayed from the prompt when two rows share a parent (best-of-n rows
forking) or when it was evicted.

xgrammar is optional (``personalign[grammar]``); without it :func:`json_grammar` raises
:class:`~personalign.errors.BackendError` naming the extra, and the local backend decodes
unmasked (warning once) and leaves the JSON to the caller's validation and repair, as it
does without a logits backend. xgrammar and torch are imported lazily.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Collection, Sequence
from typing import Any

from personalign.errors import BackendError

log = logging.getLogger(__name__)
_WARNED: list[bool] = []

MAX_ROWS = 4096
"""Grammar states (one per live row) and prompts remembered; the oldest are dropped first."""
MAX_REPLAY = 4096
"""How far back a forked row looks for its prompt (reply tokens)."""


class JsonGrammar:
    """The token mask of one JSON Schema for one tokenizer (see the module doc)."""

    def __init__(self, compiled: Any, info: Any, xgr: Any) -> None:
        self._compiled = compiled
        self._info = info
        self._xgr = xgr
        self._lock = threading.Lock()
        self._rows: OrderedDict[int, tuple[Any, int]] = OrderedDict()  # history -> state
        self._prompts: OrderedDict[int, int] = OrderedDict()  # prompt hash -> its length

    def _matcher(self, history: tuple[int, ...]) -> Any:
        """The grammar state after ``history``: the parent row's advanced by one token, else
        replayed from the longest known prompt that starts ``history`` (a forked row), else a
        fresh state (``history`` is a new prompt)."""
        parent = self._rows.pop(hash(history[:-1]), None) if history else None
        if parent is not None:
            matcher, plen = parent
            if not matcher.is_terminated():
                matcher.accept_token(history[-1])
        else:
            matcher, plen = self._replayed(history)
        # twin rows (same history) share a key: their states are equal, either one serves
        self._rows[hash(history)] = (matcher, plen)
        while len(self._rows) > MAX_ROWS:
            self._rows.popitem(last=False)
        return matcher

    def _replayed(self, history: tuple[int, ...]) -> tuple[Any, int]:
        """A fresh state advanced through the reply part of ``history``, after the longest
        remembered prompt it starts with; when the rest is not a reply the grammar accepts
        (the prompt was only a prefix of a new prompt), ``history`` is a new prompt."""
        for k in range(len(history) - 1, max(-1, len(history) - 1 - MAX_REPLAY), -1):
            if hash(history[:k]) in self._prompts:
                matcher = self._xgr.GrammarMatcher(self._compiled)
                if all(
                    not matcher.is_terminated() and matcher.accept_token(t) for t in history[k:]
                ):
                    return matcher, k
                break
        self._prompts[hash(history)] = len(history)
        while len(self._prompts) > MAX_ROWS:
            self._prompts.popitem(last=False)
        return self._xgr.GrammarMatcher(self._compiled), len(history)

    def mask(self, histories: Sequence[Sequence[int]], logits: Any) -> Any:
        """``logits`` (rows, vocab; a torch tensor, changed in place and returned) with every
        token the grammar forbids after each row's history set to -inf."""
        import torch

        rows = len(histories)
        bitmask = self._xgr.allocate_token_bitmask(rows, self._info.vocab_size)
        with self._lock:
            for i, h in enumerate(histories):
                self._matcher(tuple(int(t) for t in h)).fill_next_token_bitmask(bitmask, i)
        vocab = logits.shape[-1]
        with torch.inference_mode():
            view = logits[:, : self._info.vocab_size] if vocab > self._info.vocab_size else logits
            work = view.float() if view.dtype != torch.float32 else view
            self._xgr.apply_token_bitmask_inplace(work, bitmask)
            if work is not view:
                view.copy_(work)
        return logits


_CACHE: dict[tuple[int, str], JsonGrammar] = {}
_CACHE_LOCK = threading.Lock()
_INFO: dict[int, Any] = {}


def have_xgrammar() -> bool:
    """Whether xgrammar can be imported (warns once, naming the extra, when it cannot)."""
    try:
        import xgrammar  # noqa: F401
    except ImportError:
        pass
    else:
        return True
    if not _WARNED:
        _WARNED.append(True)
        log.warning(
            "json_schema is not enforced while decoding: pip install 'personalign[grammar]'"
        )
    return False


def json_grammar(
    tokenizer: Any, vocab_size: int, schema: str, stop_ids: Collection[int]
) -> JsonGrammar:
    """The :class:`JsonGrammar` of ``schema`` (JSON text of a JSON Schema) for ``tokenizer``,
    compiled once per (tokenizer, schema); a clear error for a schema xgrammar rejects."""
    try:
        import xgrammar as xgr
    except ImportError as e:
        raise BackendError(
            "JSON-constrained decoding needs xgrammar: pip install 'personalign[grammar]'"
        ) from e
    key = (id(tokenizer), schema)
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
        info = _INFO.get(id(tokenizer))
        if info is None:
            info = xgr.TokenizerInfo.from_huggingface(
                tokenizer, vocab_size=vocab_size, stop_token_ids=sorted(stop_ids)
            )
            _INFO[id(tokenizer)] = info
        try:
            compiled = xgr.GrammarCompiler(info).compile_json_schema(schema, any_whitespace=False)
        except Exception as e:  # xgrammar raises RuntimeError/ValueError for a bad schema
            raise BackendError(f"json_schema cannot be compiled into a grammar: {e}") from e
        if len(_CACHE) > 64:
            _CACHE.clear()
        _CACHE[key] = JsonGrammar(compiled, info, xgr)
        return _CACHE[key]
