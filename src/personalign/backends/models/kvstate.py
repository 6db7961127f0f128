"""The KV cache of a left-padded batch for the local model (:mod:`.local`)
and the row operations continuous batching needs: keep some rows (finished requests leave),
merge two batches (requests that arrive mid-decoding join), and drop the leading columns that
every row pads.

A batch is ``(cache, mask, next_pos)``: transformers' ``DynamicCache`` of ``(B, heads, T, dim)``
key and value tensors per layer, a ``(B, T)`` attention mask that is 0 on each row's left
padding, and each row's next position id. Rows never have holes: padding is only on the left,
so a row's positions are its own (0 at its first real token) whatever the batch's width.

torch is imported lazily, inside functions, so importing this module is cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass
class KVState:
    """Backend data of a :class:`~personalign.backends.models.base.DecodeState`."""

    cache: Any
    mask: torch.Tensor  # (B, T) long, 0 on left padding
    next_pos: torch.Tensor  # (B,) long, position id of each row's next token


def _layers(cache: Any) -> list[Any]:
    """The cache's per-layer objects with ``keys`` and ``values`` tensors (transformers >= 4.56)."""
    layers = getattr(cache, "layers", None)
    if layers is None or not all(type(x).__name__ == "DynamicLayer" for x in layers):
        raise TypeError(f"{type(cache).__name__} has no per-layer key/value tensors to merge")
    return list(layers)


def can_merge(cache: Any) -> bool:
    """Whether :func:`merge` and :func:`trim` work on this cache type."""
    try:
        _layers(cache)
    except TypeError:
        return False
    return hasattr(cache, "reorder_cache")


def select(kv: KVState, rows: Sequence[int]) -> KVState:
    """The rows ``rows`` of ``kv`` (repeats fork a row), padding-only columns dropped. The
    cache is reordered in place."""
    import torch

    idx = torch.tensor(list(rows), dtype=torch.long, device=kv.mask.device)
    kv.cache.reorder_cache(idx)
    out = KVState(kv.cache, kv.mask[idx], kv.next_pos[idx])
    return trim(out) if can_merge(kv.cache) else out


def trim(kv: KVState) -> KVState:
    """``kv`` without the leading columns that are padding in every row (a long row left)."""
    real = kv.mask.any(dim=0).nonzero()
    first = int(real[0]) if len(real) else 0
    if first == 0:
        return kv
    for layer in _layers(kv.cache):
        if getattr(layer, "keys", None) is not None and layer.keys.dim() == 4:
            layer.keys = layer.keys[:, :, first:].contiguous()
            layer.values = layer.values[:, :, first:].contiguous()
    return KVState(kv.cache, kv.mask[:, first:], kv.next_pos)


def merge(a: KVState, b: KVState) -> KVState:
    """One batch of ``a``'s rows then ``b``'s, the narrower one padded on the left. ``a``'s
    cache object is reused (updated in place); ``b`` must not be used afterwards."""
    import torch

    width = max(a.mask.shape[1], b.mask.shape[1])

    def pad(t: torch.Tensor, dim: int) -> torch.Tensor:
        extra = width - t.shape[dim]
        if extra == 0:
            return t
        shape = list(t.shape)
        shape[dim] = extra
        return torch.cat([t.new_zeros(shape), t], dim=dim)

    la, lb = _layers(a.cache), _layers(b.cache)
    if len(la) != len(lb):
        raise ValueError("cannot merge caches with different layer counts")
    for x, y in zip(la, lb, strict=True):
        x.keys = torch.cat([pad(x.keys, 2), pad(y.keys, 2)], dim=0)
        x.values = torch.cat([pad(x.values, 2), pad(y.values, 2)], dim=0)
    mask = torch.cat([pad(a.mask, 1), pad(b.mask, 1)], dim=0)
    return KVState(a.cache, mask, torch.cat([a.next_pos, b.next_pos]))
