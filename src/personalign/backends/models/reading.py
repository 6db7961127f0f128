"""Reading the local model without generating: last-token hidden states (features for probes)
and continuation log-probs, for :class:`~personalign.backends.models.local.TransformersLM`
(``lm`` below; the caller holds its ``lock`` with the base model active).

torch is imported lazily, inside functions, so importing this module is cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from personalign.backends.models.base import ContinuationScore
from personalign.errors import ValidationError
from personalign.types import Message

MIN_SHARED_PREFIX = 8
"""Tokens a batch of contexts must share before :func:`last_states` reads them once for all
rows."""


def last_states(lm: Any, rows: list[list[int]], picked: list[int], share: bool) -> np.ndarray:
    """Hidden states after layers ``picked`` at each row's last token, concatenated; with
    ``share`` the rows' common prefix is read once and its KV cache forked to every row."""
    import torch

    kw: dict[str, Any] = {lm._keep_kw: 1} if lm._keep_kw else {}
    shared = next(
        (k for k, col in enumerate(zip(*rows, strict=False)) if len(set(col)) > 1),
        min(map(len, rows)),
    )  # the common prefix's length
    shared = min(shared, min(map(len, rows)) - 1)  # every row keeps a token of its own
    with torch.inference_mode():
        cache = None
        if share and len(rows) > 1 and shared >= MIN_SHARED_PREFIX:
            head = torch.tensor([rows[0][:shared]], dtype=torch.long, device=lm.device)
            pre = lm._model(
                input_ids=head,
                attention_mask=torch.ones_like(head),
                position_ids=torch.arange(shared, device=lm.device)[None],
                use_cache=True,
                **kw,
            )
            cache = pre.get("cache")
            if cache is None:
                cache = pre.get("past_key_values")
            if not hasattr(cache, "reorder_cache"):
                cache = None  # a cache type without row selection: read every row whole
        if cache is not None:
            cache.reorder_cache(torch.zeros(len(rows), dtype=torch.long, device=lm.device))
            ids, tail, pos = lm._padded([r[shared:] for r in rows])
            ones = torch.ones((len(rows), shared), dtype=torch.long, device=lm.device)
            res = lm._model(
                input_ids=ids,
                attention_mask=torch.cat([ones, tail], dim=1),
                position_ids=pos + shared,
                output_hidden_states=True,
                use_cache=True,
                **{lm._cache_kw: cache},
                **kw,
            )
        else:
            ids, mask, pos = lm._padded(rows)
            res = lm._model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=pos,
                output_hidden_states=True,
                use_cache=False,
                **kw,
            )
        last = [res.hidden_states[x][:, -1].float() for x in picked]
        return torch.cat(last, dim=-1).cpu().numpy()


def score_chunk(lm: Any, prompt: list[int], conts: list[list[int]], torch: Any) -> list[float]:
    """Sum log-probs of each continuation after ``prompt``: prefill once, fork the cache."""
    if len(prompt) + max(map(len, conts)) > lm._max_len:
        raise ValidationError(f"prompt + continuation exceed {lm._max_len} tokens")
    dev = lm.device
    ids = torch.tensor([prompt], device=dev)
    mask = torch.ones_like(ids)
    first, cache = lm._call(ids, mask, torch.arange(len(prompt), device=dev)[None], None, 1)
    first_lp = first[0, -1].log_softmax(-1)  # distribution of each continuation's 1st token
    sums = [float(first_lp[c[0]]) for c in conts]
    width = max(len(c) for c in conts)
    if width == 1:
        return sums
    b = len(conts)
    cache.batch_repeat_interleave(b)
    # Feed all but the last token of each continuation, right-padded.
    feed = torch.full((b, width - 1), lm._pad_id, dtype=torch.long)
    cmask = torch.zeros((b, width - 1), dtype=torch.long)
    for r, c in enumerate(conts):
        feed[r, : len(c) - 1] = torch.tensor(c[:-1])
        cmask[r, : len(c) - 1] = 1
    full_mask = torch.cat([torch.ones((b, len(prompt)), dtype=torch.long), cmask], 1).to(dev)
    pos = (len(prompt) + torch.arange(width - 1, device=dev))[None].expand(b, -1)
    logits, _ = lm._call(feed.to(dev), full_mask, pos, cache, keep=0)
    lp = logits.log_softmax(-1)  # (b, width - 1, vocab): position t predicts token t + 1
    for r, c in enumerate(conts):
        if len(c) > 1:
            target = torch.tensor(c[1:], device=dev)
            sums[r] += float(lp[r, : len(c) - 1].gather(-1, target[:, None]).sum())
    return sums


def score_continuations(
    lm: Any, messages: Sequence[Message], continuations: Sequence[str], chunk_tokens: int
) -> list[ContinuationScore]:
    """Sum/mean log-probability of each continuation as the reply to ``messages`` under the
    base model, continuations batched up to ``chunk_tokens`` tokens per forward pass."""
    import torch

    prompt = lm.encode_chat(messages)
    conts = [lm.encode(c) for c in continuations]
    for text, ids in zip(continuations, conts, strict=True):
        if not ids:
            raise ValidationError(f"continuation {text!r} has no tokens")
    scores: list[ContinuationScore] = []
    i = 0
    while i < len(conts):
        j = i + 1
        while j < len(conts) and (j - i + 1) * max(map(len, conts[i : j + 1])) <= chunk_tokens:
            j += 1
        with lm.lock:
            lm.activate_adapter(None)
            sums = score_chunk(lm, prompt, conts[i:j], torch)
        for k, total in enumerate(sums):
            n = len(conts[i + k])
            scores.append(ContinuationScore(continuations[i + k], total, total / n, n))
        i = j
    return scores
