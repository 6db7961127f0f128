"""A user's adapter composes with every decoding method and constraint on the local model
(tiny random Llama + a LoRA with large weights), and ``/why`` names it only when used."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from personalign.backends.models.base import GenerationOptions
from personalign.config import load_settings
from personalign.errors import ValidationError
from personalign.feedback.adapters import AdapterStore
from personalign.generation.decoding import DecodingConfig, personalized_generate
from personalign.pipeline import PersonalizeOptions, Personalizer, open_guarded_memory
from personalign.testing import CueExtractor, HashingEmbedder
from personalign.types import Message

pytestmark = pytest.mark.slow

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
PLAIN = [Message(role="user", content="Tell me about the sea")]
PERSONAL = [
    Message(role="system", content="The user likes short answers about boats."),
    Message(role="user", content="Tell me about the sea"),
]


class LengthReward:
    """Rewards longer replies (a stand-in reward model: its ranking is not under test)."""

    def score(self, preferences: Any, prompt: str, responses: Any) -> list[float]:
        return [len(r) / 100 for r in responses]


def big_lora(tiny: Path, out: Path, seed: int = 0) -> dict[str, bytes]:
    """A LoRA on every projection with weights large enough to change greedy tokens."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(tiny)
    cfg = LoraConfig(
        r=4, target_modules=["q_proj", "v_proj", "o_proj", "up_proj"], init_lora_weights=False
    )
    peft_model = get_peft_model(model, cfg)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.mul_(20.0)
    peft_model.save_pretrained(out)
    return {f: (out / f).read_bytes() for f in ADAPTER_FILES}


@pytest.fixture(scope="module")
def store(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> AdapterStore:
    root = tmp_path_factory.mktemp("adapters")
    st = AdapterStore(root / "store")
    st.save("ann", big_lora(tiny, root / "ann"), {"base": "tiny"})
    st.save("zed", big_lora(tiny, root / "zed", seed=1), {"base": "tiny"})
    return st


@pytest.fixture(scope="module")
def lm(tiny: Path, store: AdapterStore) -> Any:
    from personalign.backends.models.local import TransformersLM

    model = TransformersLM(tiny, dtype="float32", adapters=store, batching=False)
    yield model
    model.close()


def test_a_mixed_batch_equals_each_row_alone(lm: Any) -> None:
    """forward with one adapter per row: adapted and base rows in one pass, KV-cached steps
    included, give the logits each row gets alone."""
    a, b = lm.encode_chat(PERSONAL), lm.encode_chat(PLAIN)
    mixed, state = lm.forward([a, b], adapter=["ann", None])
    alone_a, sa = lm.forward([a], adapter="ann")
    alone_b, sb = lm.forward([b])
    assert np.allclose(mixed[0], alone_a[0], atol=1e-4)
    assert np.allclose(mixed[1], alone_b[0], atol=1e-4)
    assert not np.allclose(alone_a[0], lm.forward([a])[0][0], atol=1e-2)  # the adapter matters
    step, _ = lm.forward([[7], [7]], state, adapter=["ann", None])
    step_a, _ = lm.forward([[7]], sa, adapter="ann")
    step_b, _ = lm.forward([[7]], sb)
    assert np.allclose(step[0], step_a[0], atol=1e-4)
    assert np.allclose(step[1], step_b[0], atol=1e-4)


METHODS = ["prompt", "best_of_n", "contrastive", "mod", "reward_guided"]


def _run(lm: Any, method: str, adapter: str | None, **opts: Any) -> str:
    options = GenerationOptions(max_new_tokens=10, seed=3, adapter=adapter, **opts)
    out = personalized_generate(
        lm,
        PLAIN,
        PERSONAL,
        config=DecodingConfig(method=method, strength=1.0, n=2, top_k=2, every=4),  # type: ignore[arg-type]
        options=options,
        preferences=["short answers"],
        reward=LengthReward(),  # type: ignore[arg-type]
    )
    return out.text


@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_with_the_adapter_and_it_changes_the_reply(lm: Any, method: str) -> None:
    base = _run(lm, method, None)
    adapted = _run(lm, method, "ann")
    assert adapted != base
    assert _run(lm, method, "ann") == adapted  # deterministic (seeded)


@pytest.mark.parametrize("method", ["contrastive", "mod", "reward_guided"])
def test_constraints_apply_with_the_adapter(lm: Any, method: str) -> None:
    banned = _run(lm, method, "ann", banned_chars="aeiou")
    assert banned and not any(c in banned for c in "aeiou")
    assert banned != _run(lm, method, None, banned_chars="aeiou")


def test_json_schema_masks_apply_with_the_adapter(lm: Any) -> None:
    pytest.importorskip("xgrammar")
    import json

    schema = json.dumps(
        {"type": "object", "properties": {"a": {"type": "boolean"}}, "required": ["a"]}
    )
    for method in ("contrastive", "mod", "reward_guided"):
        text = _run(lm, method, "ann", json_schema=schema)
        assert text.startswith("{"), (method, text)


def test_why_names_the_adapter_only_when_used(tiny: Path, store: AdapterStore, tmp_path: Path):
    from personalign.backends.models.local import TransformersLM

    settings = load_settings(home=tmp_path, embedder="hashing")
    memory = open_guarded_memory(settings, HashingEmbedder(), extractor=CueExtractor())
    model = TransformersLM(tiny, dtype="float32", adapters=store, batching=False)
    with Personalizer(memory, model, adapters=store) as pz:
        for user in ("ann", "bob"):
            pz.memory.add("I prefer tea over coffee", user=user)
        for method in ("plain", "prompt", "contrastive", "mod", "reward_guided"):
            opts = PersonalizeOptions(
                method=method,  # type: ignore[arg-type]
                generation=GenerationOptions(max_new_tokens=6),
            )
            with_adapter = pz.respond("Should I have tea?", user="ann", options=opts)
            without = pz.respond("Should I have tea?", user="bob", options=opts)
            assert with_adapter.exchange.meta["adapter"] == "ann@v0001"
            assert "adapter" not in without.exchange.meta
            assert with_adapter.exchange.method == method
            assert with_adapter.text != without.text  # the adapter made ann's reply


def test_contrastive_amplifies_the_adapted_personal_row_against_the_base_plain_row(lm: Any):
    """The documented rows: personal with the adapter, plain with the base model."""
    from personalign.generation.decoding import contrastive, decode, make_rule

    personal, _ = lm.forward([lm.encode_chat(PERSONAL)], adapter="ann")
    plain_base, _ = lm.forward([lm.encode_chat(PLAIN)])
    plain_adapted, _ = lm.forward([lm.encode_chat(PLAIN)], adapter="ann")
    want = int(np.argmax(contrastive(personal[0], plain_base[0], 4.0)))
    other = int(np.argmax(contrastive(personal[0], plain_adapted[0], 4.0)))
    assert want != other  # the choice of the plain row's model matters here
    options = GenerationOptions(max_new_tokens=1, adapter="ann")
    out = decode(
        lm,
        [PERSONAL, PLAIN],
        make_rule("contrastive", strength=4.0),
        options,
        adapters=["ann", None],
    )
    default = personalized_generate(
        lm,
        PLAIN,
        PERSONAL,
        config=DecodingConfig(method="contrastive", strength=4.0),
        options=options,
    )
    assert out.token_ids == [want] or (not out.token_ids and want in lm.eos_token_ids)
    assert default.text == out.text


def test_mod_over_experts_runs_each_objective_row_with_its_own_adapter(lm: Any) -> None:
    """MOD over experts: objective k's row runs adapter k; the mix is sum_k w_k log p_k."""
    from personalign.generation.decoding import log_softmax

    weights = {"a": 0.7, "b": 0.3}
    row_a, _ = lm.forward([lm.encode_chat(PLAIN)], adapter="ann")
    row_b, _ = lm.forward([lm.encode_chat(PLAIN)], adapter="zed")
    base, _ = lm.forward([lm.encode_chat(PLAIN)])
    mixed = 0.7 * log_softmax(row_a[0]) + 0.3 * log_softmax(row_b[0])
    want = int(np.argmax(mixed))
    options = GenerationOptions(max_new_tokens=1)
    out = personalized_generate(
        lm,
        PLAIN,
        PLAIN,
        config=DecodingConfig(method="mod", strength=0.0),
        options=options,
        objectives={"a": PLAIN, "b": PLAIN},
        objective_adapters={"a": "ann", "b": "zed"},
        weights=weights,
    )
    assert out.rows == 2
    assert out.details["objective_adapters"] == {"a": "ann", "b": "zed"}
    got = lm.encode(out.text)
    assert got[:1] == [want] or (not got and want in lm.eos_token_ids)
    # the same mix over the base model picks differently here: the experts decided the token
    assert int(np.argmax(log_softmax(base[0]))) != want or row_a.argmax() != base.argmax()
    with pytest.raises(ValidationError, match="unknown objectives"):
        personalized_generate(
            lm,
            PLAIN,
            PLAIN,
            config=DecodingConfig(method="mod", strength=0.0),
            options=options,
            objectives={"a": PLAIN},
            objective_adapters={"z": "ann"},
        )
