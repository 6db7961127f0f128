"""Token choice for :class:`~personalign.backends.models.local.TransformersLM`: sampling
(greedy, temperature, top-p) and the logits processor that bans characters and words.

torch and transformers are imported lazily, inside functions, so importing this module is cheap.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING, Any

from personalign.backends.models.base import GenerationOptions

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
