"""Faster linear layers for CPU inference of the local model: int8 weights (opt-in).

Decoding one token of SmolLM2-135M on a CPU is a chain of matrix-vector products whose time is
spent reading the weights (bfloat16: 270 MB per token; the 49152 x 576 output layer alone is
57 MB, ~6-8 ms of a ~40 ms step). :func:`quantize_linears` turns each ``nn.Linear`` into an
:class:`Int8Linear`: weight-only int8 (per output channel, half of bfloat16's bytes), run by
PyTorch's own CPU kernel ``aten._weight_int8pack_mm`` with bfloat16 activations, for inputs of
at most :data:`SMALL_ROWS` rows (a decoding step of one chat). Activations are not quantized:
dynamic int8 activations (``quantized::linear_dynamic``) were faster still but agreed with the
bfloat16 model's top token on only ~66% of positions, this on ~96% (float32 vs bfloat16: ~98%;
``int8_top1_agreement`` in ``benchmarks/model_throughput.py``).

The original weight stays the module's ``weight``: with gradients enabled (training), off the
CPU, or for more rows it is used as before, and PEFT's LoRA wraps an :class:`Int8Linear` like
any ``nn.Linear`` (it is one), so per-user adapters still apply on top of the int8 base.

torch is imported lazily, inside functions, so importing this module is cheap.
"""

from __future__ import annotations

from typing import Any

SMALL_ROWS = 2
"""Inputs of at most this many rows (one decoding step of one or two chats) use the int8
weight; larger ones (prefill, a batch of chats) the bfloat16 one, which is as fast there."""


def _int8_linear_class() -> type:
    import torch

    class Int8Linear(torch.nn.Linear):
        """An ``nn.Linear`` whose small-batch inference on CPU runs an int8 copy of its
        weight (per output channel scales) with bfloat16 activations."""

        def pack(self) -> None:
            w = self.weight.detach().float()
            scale = w.abs().amax(dim=1).clamp(min=1e-8) / 127
            self._q = (w / scale[:, None]).round().clamp(-127, 127).to(torch.int8).contiguous()
            self._scale = scale.to(torch.bfloat16)
            self._bias = None if self.bias is None else self.bias.detach().to(torch.bfloat16)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            rows = x.numel() // self.in_features
            if torch.is_grad_enabled() or x.device.type != "cpu" or rows > SMALL_ROWS:
                return super().forward(x)
            flat = x.reshape(rows, self.in_features).to(torch.bfloat16)
            out = torch._weight_int8pack_mm(flat, self._q, self._scale)
            if self._bias is not None:
                out = out + self._bias
            return out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    return Int8Linear


_CLASS: type | None = None


def int8_linear_class() -> type:
    """The :class:`Int8Linear` class (built on first use, so torch loads lazily)."""
    global _CLASS
    if _CLASS is None:
        _CLASS = _int8_linear_class()
    return _CLASS


def quantize_linears(model: Any) -> int:
    """Turn every ``nn.Linear`` of ``model`` (the output layer included) into an int8
    :class:`Int8Linear` in place, keeping its parameters (tied weights stay tied); return how
    many were converted."""
    import torch

    cls = int8_linear_class()
    count = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            module.__class__ = cls
            module.pack()  # type: ignore[operator]
            count += 1
    return count
