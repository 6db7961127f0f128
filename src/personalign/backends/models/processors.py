"""Token choice for :class:`~personalign.backends.models.local.TransformersLM`: sampling
(greedy, temperature, top-p) and the logits processor that bans characters and words.

torch and transformers are imported lazily, inside functions, so importing this module is cheap.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from personalign.backends.models.base import GenerationOptions, LanguageModel

if TYPE_CHECKING:
    import torch


def pick_tokens(
    logits: torch.Tensor, options: GenerationOptions, gen: torch.Generator
) -> list[int]:
    """One token per row of ``logits``: the argmax when ``options.greedy``, else a sample at
    ``options.temperature`` from the ``options.top_p`` nucleus."""
    import torch

    with torch.inference_mode():
        if options.greedy:
            return [int(t) for t in logits.argmax(-1).tolist()]
        scaled = logits / options.temperature
        if options.top_p < 1.0:
            sorted_logits, order = scaled.sort(dim=-1, descending=True)
            cum = sorted_logits.softmax(-1).cumsum(-1)
            drop = (cum - sorted_logits.softmax(-1)) >= options.top_p  # keeps the top token
            sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
            scaled = torch.full_like(scaled, float("-inf")).scatter(-1, order, sorted_logits)
        probs = scaled.softmax(-1)
        picked = torch.multinomial(probs, 1, generator=gen).squeeze(-1)
        return [int(t) for t in picked.tolist()]


def ban_processor(
    options: GenerationOptions,
    token_texts: Sequence[str],
    encode: Callable[[str], list[int]],
    eos: Collection[int],
) -> tuple[Any, int]:
    """transformers' ``NoBadWordsLogitsProcessor`` (``None`` if it would ban nothing) for the
    options' banned characters (every token whose text in ``token_texts`` holds one) and words
    (their token spellings through ``encode``), and the longest banned sequence's length."""
    from transformers import NoBadWordsLogitsProcessor

    seqs: list[list[int]] = []
    if options.banned_chars:
        seqs += [
            [i] for i, t in enumerate(token_texts) if any(c in t for c in options.banned_chars)
        ]
    for w in options.banned_words:
        for form in {w.lower(), w.capitalize(), w.upper()}:
            for spelled in (form, " " + form):
                ids = encode(spelled)
                if ids and ids not in seqs:
                    seqs.append(ids)
    return (
        NoBadWordsLogitsProcessor(seqs, eos_token_id=sorted(eos)) if seqs else None,
        max((len(x) for x in seqs), default=1),
    )


class BannedTokens(LanguageModel):
    """The ban on characters and words of :class:`GenerationOptions` for a transformers
    model: the class this is mixed into sets ``_tok`` (its tokenizer), ``_eos`` and
    ``_pad_id``."""

    _tok: Any
    _eos: frozenset[int]
    _pad_id: int

    def _ban_processor(self, options: GenerationOptions) -> Any:
        """transformers' ``NoBadWordsLogitsProcessor`` for the options' banned characters
        (every token whose text holds one) and words (their token spellings), cached per
        pair, with its longest banned sequence; ``None`` when nothing is banned."""
        if not options.banned_chars and not options.banned_words:
            return None
        key = (options.banned_chars, tuple(options.banned_words))
        cache: dict[Any, Any] = self.__dict__.setdefault("_ban_cache", {})
        if key not in cache:
            texts: list[str] | None = None
            if options.banned_chars:
                texts = self.__dict__.get("_token_texts")
                if texts is None:
                    texts = self._tok.batch_decode([[i] for i in range(len(self._tok))])
                    self.__dict__["_token_texts"] = texts
            if len(cache) > 32:
                cache.clear()
            cache[key] = ban_processor(options, texts or [], self.encode, self._eos)
        return cache[key]

    def constrain_logits(
        self, options: GenerationOptions, histories: Sequence[Sequence[int]], logits: Any
    ) -> Any:
        """``logits`` (rows, vocab; torch or numpy) with the tokens the options ban, and those
        that would leave the options' ``json_schema``, set to -inf for each row, given each
        row's token history (prompt and reply so far)."""
        import torch

        entry = self._ban_processor(options)
        grammar = None
        if options.json_schema is not None:
            from personalign.backends.models.grammar import have_xgrammar, json_grammar

            if have_xgrammar():  # without it the caller's validation is all there is
                grammar = json_grammar(self._tok, logits.shape[-1], options.json_schema, self._eos)
        if (entry is None or entry[0] is None) and grammar is None:
            return logits
        as_numpy = isinstance(logits, np.ndarray)
        scores = torch.from_numpy(logits.copy()) if as_numpy else logits
        with torch.inference_mode():
            if entry is not None and entry[0] is not None:
                proc, width = entry
                tails = [list(h)[-width:] for h in histories]
                width = min(len(t) for t in tails) or 1
                ids = [t[-width:] if t else [self._pad_id] for t in tails]
                scores = proc(torch.tensor(ids, dtype=torch.long).to(scores.device), scores)
            if grammar is not None:
                scores = grammar.mask(histories, scores)
        return scores.numpy() if as_numpy else scores
