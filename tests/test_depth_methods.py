"""The parameter and activation depths in the pipeline: the ``soup`` method (the experts merged
by the user's style weights), MOD's expert rows, and the ``steering`` method; on the tiny
random Llama with hand-made experts (LoRAs with large weights, so they change tokens)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from personalign.backends.models.base import GenerationOptions
from personalign.config import load_settings
from personalign.errors import ConfigError, ValidationError
from personalign.generation.soups import STEERING_FILE, pole_folder
from personalign.pipeline import PersonalizeOptions, Personalizer
from personalign.pipeline_parts import signed_style
from personalign.testing import HashingEmbedder

pytestmark = pytest.mark.slow

QUESTION = "How do I keep basil alive?"


@pytest.fixture(scope="module")
def experts_dir(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_adapters_everywhere import big_lora

    root = tmp_path_factory.mktemp("experts")
    for i, pole in enumerate(("conciseness+", "conciseness-", "structure+")):
        folder = root / pole_folder(pole)
        big_lora(tiny, folder, seed=10 + i)
        recipe = {"pole": pole, "hash": f"h{i}", "base_model_dir": str(tiny)}
        (folder / "recipe.json").write_text(json.dumps(recipe))
    _steering(tiny, root / STEERING_FILE)
    return root


def _steering(tiny: Path, dest: Path) -> None:
    from personalign.backends.models.local import TransformersLM
    from personalign.feedback.pairs import PreferencePair
    from personalign.generation.steering import compute_steering

    short, long = "Water it.", "Water it every morning, keep it warm and give it plenty of sun."
    pairs = [PreferencePair(QUESTION, short, long, "test", 1.0)] * 2
    lm = TransformersLM(tiny, dtype="float32", batching=False)
    try:
        compute_steering(lm, {"conciseness+": pairs, "formality-": pairs}).save(dest)
    finally:
        lm.close()


def _open(tiny: Path, home: Path, experts: Path | None) -> Personalizer:
    from personalign.backends.models.local import TransformersLM

    settings = load_settings(home=home, embedder="hashing", experts_dir=experts)
    model = TransformersLM(tiny, dtype="float32", batching=False)
    return Personalizer.open(settings, model=model, embedder=HashingEmbedder())


def _ask(pz: Personalizer, user: str, method: str) -> Any:
    opts = PersonalizeOptions(
        method=method,  # type: ignore[arg-type]
        ingest=False,
        generation=GenerationOptions(max_new_tokens=8),
    )
    return pz.respond(QUESTION, user=user, options=opts)


def test_signed_style_keeps_the_dimensions_a_user_leans_on() -> None:
    assert signed_style({"conciseness": 1.0, "structure": 0.5, "formality": 0.1}) == {
        "conciseness": 1.0,
        "formality": -0.8,
    }
    assert signed_style({"unknown": 1.0}) == {}


def test_soup_serves_the_merged_experts_and_why_names_it(
    tiny: Path, experts_dir: Path, tmp_path: Path
) -> None:
    with _open(tiny, tmp_path, experts_dir) as pz:
        assert pz.experts is not None and set(pz.experts.poles) == {
            "conciseness+",
            "conciseness-",
            "structure+",
        }
        pz.memory.store.set_profile({"conciseness": 1.0, "structure": 0.75}, user="ann")
        pz.memory.store.set_profile({"conciseness": 0.5}, user="bob")  # leans on nothing
        soup = _ask(pz, "ann", "soup")
        prompt = _ask(pz, "ann", "prompt")
        assert soup.exchange.method == "soup"
        assert soup.exchange.meta["adapter"] == "soup:conciseness+0.67,structure+0.33"
        assert soup.text != prompt.text  # the experts made the reply
        assert pz.experts.merges == 1
        again = _ask(pz, "ann", "soup")
        assert again.text == soup.text and pz.experts.merges == 1  # cached, not merged again
        neutral = _ask(pz, "bob", "soup")
        assert "adapter" not in neutral.exchange.meta  # no leaning: the base model answers
        assert neutral.text == _ask(pz, "bob", "prompt").text


def test_mod_runs_each_leaning_dimension_row_with_its_expert(
    tiny: Path, experts_dir: Path, tmp_path: Path
) -> None:
    with _open(tiny, tmp_path, experts_dir) as pz:
        pz.memory.store.set_profile({"conciseness": 0.1, "formality": 0.9}, user="ann")
        reply = _ask(pz, "ann", "mod")
        how = reply.exchange.meta["decoding"]
        # conciseness leans low (its "-" expert); formality has no expert: its row runs the base
        assert how["objective_adapters"] == {"conciseness": "expert:conciseness-"}


def test_steering_adds_the_leaning_poles_vectors(
    tiny: Path, experts_dir: Path, tmp_path: Path
) -> None:
    with _open(tiny, tmp_path, experts_dir) as pz:
        assert pz.model.supports_steering
        pz.memory.store.set_profile({"conciseness": 1.0, "formality": 0.2}, user="ann")
        steered = _ask(pz, "ann", "steering")
        prompt = _ask(pz, "ann", "prompt")
        assert steered.exchange.method == "steering"
        assert steered.exchange.meta["decoding"]["steering"] == {
            "conciseness+": 1.0,
            "formality-": 0.6,
        }
        assert "adapter" not in steered.exchange.meta and "steering" not in prompt.exchange.meta
        ids = [pz.model.encode_chat(steered.exchange.messages)]
        plain, _ = pz.model.forward(ids)
        spec = (("conciseness+", 1.0), ("formality-", 0.6))
        moved, _ = pz.model.forward(ids, steering=spec)
        assert not np.allclose(plain, moved)  # the loaded vectors act on the model


def test_soup_without_experts_is_a_clear_error(tiny: Path, tmp_path: Path) -> None:
    with _open(tiny, tmp_path, None) as pz:
        assert pz.experts is None
        pz.memory.store.set_profile({"conciseness": 1.0}, user="ann")
        for method in ("soup", "steering"):
            with pytest.raises(ValidationError, match="personalign train experts"):
                _ask(pz, "ann", method)


def test_an_experts_dir_with_no_expert_is_a_clear_error(tiny: Path, tmp_path: Path) -> None:
    empty = tmp_path / "none"
    empty.mkdir()
    with pytest.raises(ConfigError, match="holds no trained expert"):
        _open(tiny, tmp_path, empty)


@pytest.mark.parametrize("remote_root", [None, "/srv/experts"])
def test_a_vllm_server_serves_the_soup_as_one_lora(
    experts_dir: Path, tmp_path: Path, remote_root: str | None
) -> None:
    """On the OpenAI-compatible backend the soup is merged here and loaded on the server with
    /load_lora_adapter (from where the server sees the experts), then sent as ``model``."""
    from personalign.testing import ScriptedOpenAIServer

    def reply(model: str, messages: list[dict[str, str]]) -> str:
        return f"from {model}"

    with ScriptedOpenAIServer(reply, models=["base"], check_models=True) as server:
        settings = load_settings(
            home=tmp_path,
            embedder="hashing",
            model="openai:base",
            openai_base_url=server.base_url,
            experts_dir=experts_dir,
            openai_experts_dir=remote_root,
        )
        with Personalizer.open(settings, embedder=HashingEmbedder()) as pz:
            assert pz.experts is not None
            pz.memory.store.set_profile({"conciseness": 1.0, "structure": 0.75}, user="ann")
            got = _ask(pz, "ann", "soup")
            soup = pz.experts.soup({"conciseness": 1.0, "structure": 0.5})
            assert soup is not None
        name = "soup:conciseness+0.67,structure+0.33"
        served = f"{name}@{soup.name}"
        assert f"from {served}" in got.text and got.exchange.meta["adapter"] == name
        where = f"{remote_root}/soups/{soup.name}" if remote_root else str(soup)
        assert server.lora_loads == [{"lora_name": served, "lora_path": where}]
        assert [m for m, _ in server.requests] == [served]
