"""The shipped artifacts load with the runtime's loaders and match their recorded recipe.

Every artifact under ``src/personalign/**/artifacts/`` is listed in :data:`SHIPPED` with the
runtime loader that reads its metadata and the recipe (a function of
:mod:`personalign.training` and its frozen config dataclass) that builds it. An artifact
written since recipe recording (:func:`personalign.training.recipe.recipe_meta`) carries
``recipe = {module, function, config, data_sha256, versions}``: the module and function must
be the recipe's, the config its config's defaults, and where the evaluation data is present
(``../shared/data``) the hash of the examples the recipe builds from it must be the recorded
one. The artifacts in :data:`PREDATE_RECIPE` were trained before that and are not retrained
here (each takes 17 minutes or more to train): their hyper-parameters, data hash and library
versions are checked where they recorded them. A new artifact without a ``recipe`` fails
:func:`test_every_artifact_is_listed` or :func:`test_recipe_recorded`.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from personalign.backends.finetuned import read_artifact_meta
from personalign.eval.bench import DEFAULT_DATA
from personalign.memory.extract import ARTIFACT as EXTRACTOR_ARTIFACT
from personalign.memory.extract import SentenceClassifier
from personalign.rewards.lm_probe import ARTIFACT as PROBE_ARTIFACT
from personalign.rewards.lm_probe import LMProbeRewardModel
from personalign.rewards.preference_rm import (
    ARTIFACT as EMBEDDED_ARTIFACT,
)
from personalign.rewards.preference_rm import (
    CROSS_ENCODER_ARTIFACT,
    FEATURE_NAMES,
    EmbeddedRewardModel,
)
from personalign.safety.checkers import DEFAULT_ARTIFACT, DEFAULT_FINETUNED
from personalign.safety.classifier import load_artifact
from personalign.training import boundary, extractor, finetune, reward_model
from personalign.training.recipe import recipe_meta

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "personalign"


def _hyper(meta: dict[str, Any]) -> dict[str, Any]:
    """A fine-tuned artifact's recorded hyper-parameters (``train``, ``peft_config``)."""
    train, peft = meta["train"], meta["peft_config"]
    return {
        "max_length": meta["max_length"],
        "epochs": train["epochs"],
        "batch_size": train["batch_size"],
        "lr": train["lr"],
        "lora_r": peft["r"],
        "lora_alpha": peft["lora_alpha"],
        "seed": train["seed"],
        **({"listwise_weight": train["listwise_weight"]} if "listwise_weight" in train else {}),
    }


def _embedded_meta() -> dict[str, Any]:
    fake = SimpleNamespace(name="all-MiniLM-L6-v2", dim=384, embed=None)
    rm = EmbeddedRewardModel.load(fake, EMBEDDED_ARTIFACT)  # type: ignore[arg-type]
    assert rm.weights.shape == (len(FEATURE_NAMES),)
    with np.load(EMBEDDED_ARTIFACT, allow_pickle=False) as z:
        meta: dict[str, Any] = json.loads(str(z["meta"]))
    return meta


def _probe_meta() -> dict[str, Any]:
    fake = SimpleNamespace(name="smollm2-135m-instruct", hidden_size=576)
    probe = LMProbeRewardModel.load(fake, PROBE_ARTIFACT)  # type: ignore[arg-type]
    return probe.meta


@dataclass(frozen=True)
class Shipped:
    """A shipped artifact, its runtime loader (-> its metadata) and its recipe."""

    path: Path
    load: Callable[[], dict[str, Any]]
    function: Callable[..., Any]
    config: Any
    legacy: Callable[[dict[str, Any]], dict[str, Any]]
    """the hyper-parameters an artifact that predates recipe recording records"""


SHIPPED: dict[str, Shipped] = {
    "extractor_minilm.json": Shipped(
        EXTRACTOR_ARTIFACT,
        lambda: SentenceClassifier.load(EXTRACTOR_ARTIFACT).meta,
        extractor.fit_classifier,
        extractor.ExtractorConfig(),
        lambda m: {"l2": m["l2"], "max_negative_rate": m["max_negative_rate"]},
    ),
    "boundary_minilm.npz": Shipped(
        DEFAULT_ARTIFACT,
        lambda: load_artifact(DEFAULT_ARTIFACT)[1],
        boundary.train_broad_harm,
        boundary.BoundaryConfig(),
        lambda m: {"seed": m["seed"]},
    ),
    "boundary_minilm_lora.safetensors": Shipped(
        DEFAULT_FINETUNED,
        lambda: read_artifact_meta(DEFAULT_FINETUNED),
        boundary.train_finetuned,
        boundary.FinetuneConfig(),
        _hyper,
    ),
    "preference_rm.safetensors": Shipped(
        CROSS_ENCODER_ARTIFACT,
        lambda: read_artifact_meta(CROSS_ENCODER_ARTIFACT),
        reward_model.train_cross_encoder,
        reward_model.CrossEncoderConfig(),
        _hyper,
    ),
    "preference_rm.npz": Shipped(
        EMBEDDED_ARTIFACT,
        _embedded_meta,
        reward_model.train,
        reward_model.EmbeddedConfig(),
        lambda m: {"l2": m["l2"], "epochs": m["epochs"]},
    ),
    "lm_probe.npz": Shipped(
        PROBE_ARTIFACT,
        _probe_meta,
        reward_model.train_probe,
        reward_model.ProbeConfig(),
        lambda m: dict(m["recipe"]),  # the hyper-parameters alone, before recipe_meta
    ),
}

# Trained before recipe recording (it names no recipe module/function, nor library versions
# beyond torch's): none now. Drop a name from here when its artifact is retrained: it then
# records ``recipe`` and is checked in full. Retrained by their recipes, the extractor, the
# embedded reward model and the cross-encoder came out with the same weights (to 1e-6; the
# cross-encoder's float16 LoRA weights to one unit in the last place). The opt-in LM probe did
# not: SmolLM2's hidden states under today's libraries differ from those it was first trained
# on (in-sample MCQ accuracy 0.898 -> 0.901). The boundary's fine-tuned classifier was
# retrained on the broad sources by train_finetuned (its hold-out folds included).
PREDATE_RECIPE: frozenset[str] = frozenset()


def test_every_artifact_is_listed() -> None:
    found = {p.name for p in PACKAGE.glob("*/artifacts/*") if p.is_file()}
    assert found == set(SHIPPED)
    for name, shipped in SHIPPED.items():
        assert shipped.path.name == name and shipped.path.is_file()


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_recipe_recorded(name: str) -> None:
    shipped = SHIPPED[name]
    meta = shipped.load()
    recipe = meta.get("recipe")
    if name in PREDATE_RECIPE:
        assert not (isinstance(recipe, dict) and "module" in recipe), (
            f"{name} records its recipe now: remove it from PREDATE_RECIPE"
        )
        recorded = shipped.legacy(meta)
        defaults = dataclasses.asdict(shipped.config)
        assert recorded == {k: defaults[k] for k in recorded}
        return
    assert recipe == {
        **recipe_meta(shipped.function, shipped.config, data=recipe.get("data_sha256")),
        "versions": recipe["versions"],
    }
    assert recipe["module"].startswith("personalign.training.")
    assert {"python", "numpy"} <= set(recipe["versions"])
    # a fine-tuned artifact records its data's hash beside the recipe (finetune.data_hash)
    assert re.fullmatch(r"[0-9a-f]{64}", recipe.get("data_sha256", meta.get("data_sha256", "")))


DATA = DEFAULT_DATA


def _recorded_data(name: str) -> str:
    meta = SHIPPED[name].load()
    return str(meta["recipe"].get("data_sha256", meta.get("data_sha256")))


@pytest.mark.skipif(not (DATA / "prefeval").is_dir(), reason="needs ../shared/data")
def test_extractor_data_is_the_recorded_data() -> None:
    """The extractor's recipe, run on today's data, sees exactly the examples it trained on."""
    from personalign.eval.suites._prefdata import topics
    from personalign.training.recipe import data_sha256

    meta = SHIPPED["extractor_minilm.json"].load()
    texts, y = extractor.training_sentences(DATA, topics(DATA))
    assert meta["trained_on_topics"] == topics(DATA)
    assert data_sha256([texts, y.tolist()]) == _recorded_data("extractor_minilm.json")


@pytest.mark.skipif(not (DATA / "prefeval").is_dir(), reason="needs ../shared/data")
@pytest.mark.parametrize("name", ["preference_rm.npz", "lm_probe.npz"])
def test_reward_model_data_is_the_recorded_data(name: str) -> None:
    from personalign.eval.prefeval_tasks import reward_items, topics

    items = reward_items(DATA, topics(DATA))
    assert reward_model.items_sha256(items) == _recorded_data(name)


@pytest.mark.skipif(not (DATA / "prefeval").is_dir(), reason="needs ../shared/data")
def test_cross_encoder_data_is_the_recorded_data() -> None:
    from personalign.eval.prefeval_tasks import reward_items, topics

    texts, pairs, labels, weights = reward_model.cross_encoder_examples(
        reward_items(DATA, topics(DATA))
    )
    recorded = _recorded_data("preference_rm.safetensors")
    assert finetune.data_hash(texts, labels, pairs, weights) == recorded


@pytest.mark.skipif(not (DATA / "safety").is_dir(), reason="needs ../shared/data")
def test_boundary_data_is_the_recorded_data() -> None:
    """The broad harm model's recipe, run on today's data, builds exactly the rows it trained
    on (the source sets, their subsamples, templates and weights)."""
    from personalign.training import boundary_sources as S

    config = boundary.BoundaryConfig()
    sets = S.harm_sources(DATA, config.max_per_source, config.seed)
    rows = S.training_rows(
        sets, templates=config.train_templates, source_power=config.source_power, seed=config.seed
    )
    assert boundary.broad_data_sha256(rows) == _recorded_data("boundary_minilm.npz")
    harm = load_artifact(DEFAULT_ARTIFACT)[0]["harm"]
    assert harm.meta["recipe"]["data_sha256"] == _recorded_data("boundary_minilm.npz")


@pytest.mark.skipif(not (DATA / "safety").is_dir(), reason="needs ../shared/data")
def test_boundary_classifier_data_is_the_recorded_data() -> None:
    """The fine-tuned classifier's recipe, run on today's data, builds exactly the texts,
    labels and weights it trained on; it records its calibrated thresholds and hold-out."""
    texts, labels, weights, keys = boundary.finetune_training_set(
        DATA, boundary.FinetuneConfig().seed
    )
    meta = SHIPPED["boundary_minilm_lora.safetensors"].load()
    assert finetune.data_hash(texts, labels, None, weights) == meta["data_sha256"]
    assert meta["train_keys"].split() == keys
    assert set(meta["thresholds"]) == {"preference", "request", "reply"}
    assert meta["heldout_folds"] == [list(f) for f in boundary.FINETUNE_FOLDS]
    figures = meta["heldout_source_figures"]
    assert {"harmful_admission_rate", "benign_request_refusal_rate"} <= set(figures)


@pytest.mark.parametrize("name", ["boundary_minilm_lora.safetensors", "preference_rm.safetensors"])
def test_finetuned_records_data_and_versions(name: str) -> None:
    meta = SHIPPED[name].load()
    assert re.fullmatch(r"[0-9a-f]{64}", meta["data_sha256"])
    assert meta["n_train"] > 0
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", meta["train"]["torch"])
    assert re.fullmatch(r"[0-9a-f]{64}", meta["base_model"]["weights_sha256"])


def test_boundary_records_its_training_keys() -> None:
    for name in ("boundary_minilm.npz", "boundary_minilm_lora.safetensors"):
        keys = SHIPPED[name].load()["train_keys"].split()
        assert keys == sorted(keys) and len(keys) > 1000


def test_recipe_meta() -> None:
    meta = recipe_meta(extractor.fit_classifier, extractor.ExtractorConfig(l2=2.0))
    assert meta["module"] == "personalign.training.extractor"
    assert meta["function"] == "fit_classifier"
    assert meta["config"] == {"embedder": "minilm", "max_negative_rate": 0.01, "l2": 2.0}
    assert meta["versions"]["numpy"] == np.__version__
    assert "data_sha256" not in meta
    with_data = recipe_meta(extractor.fit_classifier, extractor.ExtractorConfig(), data="ab")
    assert with_data["data_sha256"] == "ab"


def test_data_sha256_is_order_sensitive() -> None:
    from personalign.training.recipe import data_sha256

    assert data_sha256([["a", "b"], [1, 0]]) == data_sha256([["a", "b"], [1, 0]])
    assert data_sha256([["a", "b"], [1, 0]]) != data_sha256([["b", "a"], [0, 1]])


def test_recipe_defaults_are_the_shared_dicts() -> None:
    assert (
        dataclasses.asdict(reward_model.CrossEncoderConfig()) == reward_model.CROSS_ENCODER_RECIPE
    )
    assert dataclasses.asdict(reward_model.ProbeConfig()) == reward_model.PROBE_RECIPE


def test_classifier_config_is_train_classifiers_defaults() -> None:
    params = inspect.signature(finetune.train_classifier).parameters
    config = dataclasses.asdict(finetune.ClassifierConfig())
    assert config == {k: params[k].default for k in config}
