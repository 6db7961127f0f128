"""Activation steering on the local model (tiny random Llama): CAA vectors from preference
pairs, their files, per-row application in forward / the batcher / the decoding methods, the
norm cap, and the backends without steering."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from personalign.backends.models.base import GenerationOptions
from personalign.errors import BackendError, NotFoundError, ValidationError
from personalign.feedback.pairs import PreferencePair
from personalign.generation.steering import (
    META_FILE,
    VECTORS_FILE,
    SteeringVectors,
    compute_steering,
    default_layers,
    pair_rows,
)
from personalign.types import Message

SHORT = ["Use fresh beans.", "Go to bed early.", "Layers of sums.", "Oats and fruit."]
LONG = [
    "Making good coffee starts with fresh whole beans, ground just before brewing, and water "
    "just off the boil, poured slowly over the grounds.",
    "Sleeping better comes from a fixed bedtime, no caffeine after lunch, a dark cool room "
    "and no screens for an hour before bed.",
    "A neural network is a stack of layers of weighted sums and nonlinearities whose weights "
    "are fit to examples by gradient descent.",
    "A healthy breakfast combines protein, fibre and fat, such as oats cooked in milk with "
    "berries, nuts and a side of yogurt.",
]
PROMPTS = ["Coffee?", "How can I sleep better?", "What is a neural network?", "Breakfast?"]
CHAT = [Message(role="user", content="Tell me about the sea")]
OTHER = [Message(role="user", content="What is a good name for a cat that likes boxes?")]


def make_pairs() -> dict[str, list[PreferencePair]]:
    plus = [
        PreferencePair(p, s, lg, "ranked", 1.0)
        for p, s, lg in zip(PROMPTS, SHORT, LONG, strict=True)
    ]
    minus = [
        PreferencePair(p, lg, s, "ranked", 1.0)
        for p, s, lg in zip(PROMPTS, SHORT, LONG, strict=True)
    ]
    return {"conciseness+": plus, "conciseness-": minus[:3]}


@pytest.fixture(scope="module")
def vectors(tiny_lm: Any) -> SteeringVectors:
    """Vectors at both layers with a cap loose enough that strengths change greedy tokens."""
    return compute_steering(tiny_lm, make_pairs(), layers=(0, 1), max_fraction=100.0)


@pytest.fixture
def lm(tiny_lm: Any, vectors: SteeringVectors) -> Iterator[Any]:
    tiny_lm.steering = vectors
    yield tiny_lm
    tiny_lm.steering = None


def test_vectors_have_the_right_shapes_and_meta(vectors: SteeringVectors, tiny_lm: Any) -> None:
    assert vectors.poles == ("conciseness+", "conciseness-")
    assert vectors.layers == (0, 1)
    for v in vectors.vectors.values():
        assert v.shape == (2, tiny_lm.hidden_size) and v.dtype == np.float32
    assert vectors.pairs == {"conciseness+": 4, "conciseness-": 3}
    assert vectors.hidden_size == tiny_lm.hidden_size and vectors.num_layers == 2
    assert vectors.model == tiny_lm.name and len(vectors.norms) == 2
    assert all(n > 0 for n in vectors.norms)
    assert default_layers(30) == (11, 12, 13) and default_layers(2) == (0, 1)
    assert compute_steering(tiny_lm, make_pairs()).layers == default_layers(2)


def test_vectors_are_the_caa_mean_of_reply_token_states(
    vectors: SteeringVectors, tiny_lm: Any
) -> None:
    """Layer 0's vector equals a direct computation: each row alone (no padding), the
    transformers hidden state after decoder layer 0, averaged over the reply's tokens."""
    import torch

    def reply_mean(ids: list[int], start: int) -> np.ndarray:
        with torch.inference_mode():
            out = tiny_lm._model(input_ids=torch.tensor([ids]), output_hidden_states=True)
        return out.hidden_states[1][0, start:].float().mean(0).numpy()

    for pole, pairs in make_pairs().items():
        diffs = []
        for pair in pairs:
            chosen, rejected, start = pair_rows(tiny_lm, pair)
            diffs.append(reply_mean(chosen, start) - reply_mean(rejected, start))
        want = np.mean(diffs, axis=0)
        assert np.allclose(vectors.vector(pole, 0), want, atol=1e-5)
    # the pairs of "-" are those of "+" reversed (the first three): the vectors are opposite
    three = compute_steering(
        tiny_lm, {"p": make_pairs()["conciseness+"][:3]}, layers=(0, 1), max_fraction=100.0
    )
    assert np.allclose(three.vectors["p"], -vectors.vectors["conciseness-"], atol=1e-5)


def test_save_load_round_trip_and_bad_files(vectors: SteeringVectors, tmp_path: Path) -> None:
    out = vectors.save(tmp_path / "sv")
    back = SteeringVectors.load(out)
    assert back.meta() == vectors.meta()
    for pole in vectors.poles:
        assert np.array_equal(back.vectors[pole], vectors.vectors[pole])
    assert not list(out.glob(".*tmp"))  # no temporary files left
    with pytest.raises(NotFoundError):
        SteeringVectors.load(tmp_path / "nowhere")
    data = (out / VECTORS_FILE).read_bytes()
    (out / VECTORS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValidationError, match="corrupt"):
        SteeringVectors.load(out)
    (out / VECTORS_FILE).write_bytes(data)
    (out / META_FILE).write_text("{not json")
    with pytest.raises(ValidationError, match="corrupt"):
        SteeringVectors.load(out)


def test_vectors_of_another_shape_are_refused(tiny_lm: Any, vectors: SteeringVectors) -> None:
    other = SteeringVectors(
        vectors={"x": np.zeros((1, 32), dtype=np.float32)},
        layers=(0,),
        norms=(1.0,),
        model="other",
        hidden_size=32,
        num_layers=2,
    )
    with pytest.raises(ValidationError, match="do not fit"):
        tiny_lm.steering = other
    with pytest.raises(ValidationError, match="shape"):
        SteeringVectors({"x": np.zeros((2, 32))}, (0,), (1.0,), "m", 32, 2)


def test_strength_zero_is_exactly_unsteered_and_nonzero_changes_the_logits(lm: Any) -> None:
    ids = lm.encode_chat(CHAT)
    plain, _ = lm.forward([ids])
    zero, _ = lm.forward([ids], steering={"conciseness+": 0.0})
    steered, _ = lm.forward([ids], steering={"conciseness+": 2.0})
    assert np.array_equal(plain, zero)
    assert not np.allclose(plain, steered, atol=1e-3)
    both, _ = lm.forward([ids], steering=(("conciseness+", 2.0), ("conciseness-", 1.0)))
    assert not np.allclose(both, steered, atol=1e-3)  # the second pole adds its vector


def test_per_row_steering_in_one_batch_equals_each_row_alone(lm: Any) -> None:
    a, b = lm.encode_chat(CHAT), lm.encode_chat(OTHER)  # different lengths: left padding
    spec = (("conciseness+", 3.0),)
    mixed, state = lm.forward([a, b, a], steering=[None, spec, ()])
    alone_a, sa = lm.forward([a])
    alone_b, sb = lm.forward([b], steering=spec)
    assert np.allclose(mixed[0], alone_a[0], atol=1e-4)
    assert np.allclose(mixed[1], alone_b[0], atol=1e-4)
    assert np.allclose(mixed[2], alone_a[0], atol=1e-4)
    assert not np.allclose(alone_b[0], lm.forward([b])[0][0], atol=1e-3)  # steering matters
    step, _ = lm.forward([[7], [7], [7]], state, steering=[(), spec, ()])
    step_a, _ = lm.forward([[7]], sa)
    step_b, _ = lm.forward([[7]], sb, steering=spec)
    assert np.allclose(step[0], step_a[0], atol=1e-4)
    assert np.allclose(step[1], step_b[0], atol=1e-4)


def test_generate_stream_and_batch_honour_steering(lm: Any) -> None:
    plain = GenerationOptions(max_new_tokens=8)
    opts = GenerationOptions(max_new_tokens=8, steering={"conciseness+": 4.0})
    steered = lm.generate(CHAT, options=opts)  # through the batcher
    assert steered.text != lm.generate(CHAT, options=plain).text
    assert "".join(lm.stream(CHAT, options=opts)) == steered.text
    assert lm.generate_batch([CHAT], options=opts)[0].text == steered.text  # no batcher


def test_batcher_runs_requests_with_different_steering_together(lm: Any) -> None:
    specs = [{}, {"conciseness+": 4.0}, {"conciseness-": 4.0}, {"conciseness+": -2.0}]
    options = [GenerationOptions(max_new_tokens=10, steering=s) for s in specs]
    chats = [CHAT, OTHER, CHAT, OTHER]
    alone = [lm.generate_batch([c], options=o)[0].text for c, o in zip(chats, options, strict=True)]
    assert len(set(alone)) >= 3  # the steering makes different replies
    batcher = lm._batcher
    batcher.window_s, batcher.max_rows = 0.5, 0
    try:
        got: list[str] = [""] * 4
        gate = threading.Barrier(4)

        def run(i: int) -> None:
            gate.wait()
            got[i] = lm.generate(chats[i], options=options[i]).text

        threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        batcher.window_s = 0.005
    assert batcher.max_rows >= 2  # they shared passes
    assert got == alone


def test_steering_composes_with_an_adapter(tiny_lm: Any, vectors: SteeringVectors, tmp_path):
    pytest.importorskip("peft")
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from personalign.backends.models.local import TransformersLM
    from personalign.feedback.adapters import AdapterStore
    from personalign.generation.decoding import DecodingConfig, personalized_generate

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm.path)
    cfg = LoraConfig(r=4, target_modules=["q_proj", "v_proj", "up_proj"], init_lora_weights=False)
    peft_model = get_peft_model(model, cfg)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.mul_(20.0)
    peft_model.save_pretrained(tmp_path / "ann")
    files = ("adapter_model.safetensors", "adapter_config.json")
    store = AdapterStore(tmp_path / "store")
    store.save("ann", {f: (tmp_path / "ann" / f).read_bytes() for f in files}, {"base": "tiny"})
    with TransformersLM(
        tiny_lm.path, dtype="float32", adapters=store, batching=False, steering=vectors
    ) as lm:
        ids = lm.encode_chat(CHAT)
        spec = {"conciseness+": 3.0}
        both, _ = lm.forward([ids], adapter="ann", steering=spec)
        adapted, _ = lm.forward([ids], adapter="ann")
        steered, _ = lm.forward([ids], steering=spec)
        assert not np.allclose(both, adapted, atol=1e-3)
        assert not np.allclose(both, steered, atol=1e-3)
        mixed, _ = lm.forward([ids, ids], adapter=["ann", None], steering=[spec, None])
        plain, _ = lm.forward([ids])
        assert np.allclose(mixed[0], both[0], atol=1e-4)
        assert np.allclose(mixed[1], plain[0], atol=1e-4)
        texts = {}
        for s in ({}, {"conciseness+": 30.0}):
            out = personalized_generate(
                lm,
                OTHER,
                CHAT,
                config=DecodingConfig(method="contrastive", strength=1.0),
                options=GenerationOptions(max_new_tokens=6, adapter="ann", steering=s),
            )
            texts[bool(s)] = out.text
        assert texts[True] != texts[False]


def test_contrastive_steers_the_personal_row_only(lm: Any) -> None:
    """The documented rows: the personal row steered, the plain row not."""
    from personalign.generation.decoding import DecodingConfig, contrastive, personalized_generate

    spec = {"conciseness+": 4.0}
    personal, _ = lm.forward([lm.encode_chat(CHAT)], steering=spec)
    plain, _ = lm.forward([lm.encode_chat(OTHER)])
    plain_steered, _ = lm.forward([lm.encode_chat(OTHER)], steering=spec)
    want = int(np.argmax(contrastive(personal[0], plain[0], 4.0)))
    other = int(np.argmax(contrastive(personal[0], plain_steered[0], 4.0)))
    assert want != other  # which rows are steered matters here
    out = personalized_generate(
        lm,
        OTHER,
        CHAT,
        config=DecodingConfig(method="contrastive", strength=4.0),
        options=GenerationOptions(max_new_tokens=1, steering=spec),
    )
    assert out.text == lm.decode([want])
    for method in ("mod", "reward_guided", "best_of_n", "prompt"):
        personalized_generate(
            lm,
            OTHER,
            CHAT,
            config=DecodingConfig(method=method, strength=1.0, n=2, top_k=2, every=2),  # type: ignore[arg-type]
            options=GenerationOptions(max_new_tokens=4, steering=spec),
            reward=_LengthReward(),  # type: ignore[arg-type]
        )


class _LengthReward:
    def score(self, preferences: Any, prompt: str, responses: Any) -> list[float]:
        return [len(r) / 100 for r in responses]


def test_the_norm_cap_holds(tiny_lm: Any) -> None:
    capped = compute_steering(tiny_lm, make_pairs(), layers=(0, 1))  # the default cap
    cap = capped.cap()
    assert np.allclose(cap, capped.max_fraction / 2 * np.asarray(capped.norms))
    for s in (1e3, -1e6):
        d = capped.delta({"conciseness+": s, "conciseness-": s / 3})
        assert d is not None
        assert np.all(np.linalg.norm(d, axis=1) <= cap * (1 + 1e-5))
        assert np.allclose(np.linalg.norm(d, axis=1), cap, rtol=1e-4)  # scaled to the cap
    small = capped.delta({"conciseness+": 1e-3})
    assert small is not None and np.all(np.linalg.norm(small, axis=1) < cap)
    assert capped.delta({"conciseness+": 0.0}) is None
    tiny_lm.steering = capped
    try:
        ids = tiny_lm.encode_chat(CHAT)
        big, _ = tiny_lm.forward([ids], steering={"conciseness+": 1e4})
        huge, _ = tiny_lm.forward([ids], steering={"conciseness+": 1e9})
        assert np.allclose(big, huge, atol=1e-5)  # both at the cap: the same addition
    finally:
        tiny_lm.steering = None


def test_backends_without_steering_raise(tmp_path: Path) -> None:
    from personalign.backends.models.openai_compat import OpenAICompatLM
    from personalign.generation.decoding import DecodingConfig, personalized_generate
    from personalign.testing import FakeLM

    opts = GenerationOptions(max_new_tokens=4, steering={"conciseness+": 1.0})
    fake = FakeLM()
    assert not fake.supports_steering
    with pytest.raises(BackendError, match="steering"):
        fake.generate(CHAT, options=opts)
    with pytest.raises(BackendError, match="steering"):
        list(fake.stream(CHAT, options=opts))
    with pytest.raises(BackendError, match="steering"):
        fake.forward([fake.encode_chat(CHAT)], steering={"x": 1.0})
    with pytest.raises(BackendError, match="steering"):
        personalized_generate(fake, OTHER, CHAT, config=DecodingConfig(), options=opts)
    assert fake.generate(CHAT, options=GenerationOptions(steering={})).text  # none asked
    remote = OpenAICompatLM("m", base_url="http://127.0.0.1:9/v1", api_key="k", max_retries=0)
    assert not remote.supports_steering
    with pytest.raises(BackendError, match="steering"):
        remote.generate(CHAT, options=opts)


def test_bad_steering_input_is_refused(lm: Any, tiny_lm: Any) -> None:
    ids = lm.encode_chat(CHAT)
    with pytest.raises(ValidationError, match="unknown steering pole"):
        lm.forward([ids], steering={"verbosity+": 1.0})
    with pytest.raises(ValidationError, match="unknown steering pole"):
        lm.generate(CHAT, options=GenerationOptions(steering={"verbosity+": 1.0}))
    with pytest.raises(ValidationError, match="unknown steering pole"):
        lm.generate_batch([CHAT], options=GenerationOptions(steering={"verbosity+": 1.0}))
    for bad in (float("nan"), float("inf"), "1", True):
        with pytest.raises(ValidationError):
            GenerationOptions(steering={"conciseness+": bad})  # type: ignore[dict-item]
    with pytest.raises(ValidationError):
        GenerationOptions(steering=(("conciseness+", 1.0), ("conciseness+", 2.0)))
    with pytest.raises(ValidationError, match="rows"):
        lm.forward([ids, ids], steering=[{"conciseness+": 1.0}])
    with pytest.raises(ValidationError, match="layers"):
        compute_steering(tiny_lm, make_pairs(), layers=(2,))
    with pytest.raises(ValidationError, match="layers"):
        compute_steering(tiny_lm, make_pairs(), layers=(-1,))
    with pytest.raises(ValidationError):
        compute_steering(tiny_lm, {})
    with pytest.raises(ValidationError, match="no pairs"):
        compute_steering(tiny_lm, {"p": []})
    with pytest.raises(ValidationError, match="layer"):
        lm.steering.vector("conciseness+", 5)
    opts = GenerationOptions(steering={"conciseness+": 1.0})
    assert hash(opts) == hash(GenerationOptions(steering=(("conciseness+", 1),)))
    lm.steering = None
    assert not lm.supports_steering
    with pytest.raises(BackendError, match="no steering vectors"):
        lm.generate(CHAT, options=opts)


class _ReplyRecorder:
    """Admits requests and refuses every reply, recording the replies it was shown."""

    name = "recorder"

    def __init__(self) -> None:
        self.replies: list[str] = []

    def check(self, texts: Any, decision: str = "request") -> list[Any]:
        from personalign.safety.verdict import Verdict

        if decision == "reply":
            self.replies += list(texts)
        refuse = decision == "reply"
        return [
            Verdict(
                admitted=not refuse,
                category="harm" if refuse else "none",
                score=1.0 if refuse else 0.0,
                reason="test",
                checker=self.name,
                policy_version="test",
            )
            for _ in texts
        ]


@pytest.mark.parametrize("method", ["prompt", "contrastive"])
def test_a_steered_reply_goes_through_the_reply_check(lm: Any, tmp_path: Path, method: str):
    from personalign.config import load_settings
    from personalign.pipeline import PersonalizeOptions, Personalizer, open_guarded_memory
    from personalign.pipeline_parts import REFUSAL
    from personalign.testing import CueExtractor, HashingEmbedder

    settings = load_settings(home=tmp_path, embedder="hashing")
    memory = open_guarded_memory(settings, HashingEmbedder(), extractor=CueExtractor())
    checker = _ReplyRecorder()
    pz = Personalizer(memory, lm, checker=checker)
    gen = GenerationOptions(max_new_tokens=6, steering={"conciseness+": 4.0})
    opts = PersonalizeOptions(method=method, generation=gen, ingest=False)  # type: ignore[arg-type]
    reply = pz.respond("Tell me about the sea", user="ann", options=opts)
    assert reply.text == REFUSAL
    assert reply.exchange.options["steering"] == {"conciseness+": 4.0}  # recorded for /why
    steered_text = checker.replies[-1]  # the checker saw the steered reply itself
    plain = pz.respond(
        "Tell me about the sea",
        user="ann",
        options=PersonalizeOptions(
            method=method,  # type: ignore[arg-type]
            generation=GenerationOptions(max_new_tokens=6),
            ingest=False,
        ),
    )
    assert "steering" not in plain.exchange.options
    assert steered_text.strip() and steered_text != plain.text  # (this plain reply is blank)
