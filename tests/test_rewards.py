"""Rewards: style dimensions, weights with floors, preference reward models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from personalign.errors import ConfigError, ValidationError
from personalign.rewards import (
    DIMENSION_NAMES,
    DIMENSIONS,
    dimension_scores,
    normalize_weights,
    weighted_reward,
)
from personalign.rewards.preference_rm import (
    JudgeRewardModel,
    PreferenceRewardModel,
    parse_verdict,
)
from personalign.testing import FakeLM

LONG_FORMAL = (
    "The implementation of distributed consensus protocols necessitates careful consideration "
    "of asynchronous communication guarantees and considerable operational discipline. "
) * 4
CHATTY = "Hey! That's awesome, you're gonna love it. Yeah, super cool stuff!"
LISTED = "## Steps\n- boil water\n- add tea\n- wait\n\n**Notes**\n1. use a lid\n2. enjoy"
KIND = "I'm so sorry to hear that. I hope you feel better soon, and please take good care."
COLD = "That is wrong. It failed badly and the result is terrible."


# -- dimensions --------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=300))
def test_every_dimension_is_in_unit_interval(text: str) -> None:
    for name, score in dimension_scores(text).items():
        assert 0.0 <= score <= 1.0, (name, text)


@pytest.mark.parametrize(
    ("dimension", "high", "low"),
    [
        ("conciseness", "Yes.", LONG_FORMAL),
        ("readability", "The cat sat on the mat. It was fun.", LONG_FORMAL),
        ("warmth", KIND, COLD),
        ("structure", LISTED, LONG_FORMAL),
        ("formality", LONG_FORMAL, CHATTY),
    ],
)
def test_dimension_orders_examples(dimension: Any, high: str, low: str) -> None:
    fn = DIMENSIONS[dimension]
    assert fn(high) > fn(low) + 0.2


def test_dimension_definitions() -> None:
    assert set(DIMENSIONS) == set(DIMENSION_NAMES)
    assert DIMENSIONS["conciseness"]("") == 1.0
    assert DIMENSIONS["conciseness"](" ".join(["word"] * 100)) == pytest.approx(0.5)
    assert DIMENSIONS["structure"](LISTED) == 1.0
    assert DIMENSIONS["warmth"]("The table is brown.") == pytest.approx(0.5)
    assert DIMENSIONS["readability"]("") == 0.0


def test_weighted_reward() -> None:
    scores = dimension_scores(LISTED)
    assert weighted_reward(LISTED, {"structure": 1.0}) == pytest.approx(scores["structure"])
    both = weighted_reward(LISTED, {"structure": 3.0, "warmth": 1.0})
    assert both == pytest.approx(0.75 * scores["structure"] + 0.25 * scores["warmth"])
    # a fixed objective with a floor: its score counts for at least the floor
    r = weighted_reward(LISTED, {"structure": 1.0}, floors={"safety": 0.5}, extra={"safety": 0})
    assert r == pytest.approx(0.5 * scores["structure"])
    with pytest.raises(ValidationError, match="unknown objective"):
        weighted_reward(LISTED, {"charm": 1.0})


def test_textstat_needs_no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    assert 0 <= DIMENSIONS["readability"]("Reading is easy. Writing is fun.") <= 1
    assert 0 <= DIMENSIONS["warmth"]("Lovely!") <= 1


# -- weights -----------------------------------------------------------------------------------


def test_normalize_weights_examples() -> None:
    assert normalize_weights({"a": 1, "b": 3}) == {"a": 0.25, "b": 0.75}
    assert normalize_weights({"a": -2, "b": 0}) == {"a": 0.5, "b": 0.5}
    w = normalize_weights({"a": 1.0}, {"safety": 0.4})
    assert w == pytest.approx({"a": 0.6, "safety": 0.4})
    assert normalize_weights({}, {"safety": 0.3}) == pytest.approx({"safety": 1.0})


@pytest.mark.parametrize(
    ("weights", "floors"),
    [({}, {}), ({"a": float("nan")}, {}), ({"a": 1}, {"s": 1.5}), ({"a": 1}, {"s": 0.6, "t": 0.6})],
)
def test_normalize_weights_rejects(weights: dict[str, float], floors: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        normalize_weights(weights, floors)


@settings(max_examples=300, deadline=None)
@given(
    user=st.dictionaries(
        st.text(min_size=1, max_size=3),
        st.floats(min_value=-1e9, max_value=1e9, allow_nan=False),
        max_size=6,
    ),
    floors=st.dictionaries(
        st.sampled_from(["safety", "honesty"]), st.floats(0.0, 0.5), min_size=1, max_size=2
    ),
)
def test_floors_hold_whatever_the_user_weights(
    user: dict[str, float], floors: dict[str, float]
) -> None:
    w = normalize_weights(user, floors)
    for name, floor in floors.items():
        assert w[name] >= floor - 1e-12
    assert min(w.values()) >= 0 and sum(w.values()) == pytest.approx(1.0)


# -- the LLM judge -----------------------------------------------------------------------------

TEMPLATE = "Pref: {preference}\nQ: {question}\nA: {end_generation}\n<answer>[Yes/No]</answer>"


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        ("<explanation>It recommends meat.</explanation>\n<answer>Yes</answer>", True),
        ("<explanation>fine</explanation><answer> No </answer>", False),
        ("<answer>[No]</answer>", False),
        ("No, it respects it.", False),
        ("I cannot tell.", None),
    ],
)
def test_parse_verdict(text: str, verdict: bool | None) -> None:
    assert parse_verdict(text) is verdict


def test_judge_builds_prompts_and_scores() -> None:
    def reply(messages: list[Any]) -> str:
        return "<answer>Yes</answer>" if "steak" in messages[-1].content else "<answer>No</answer>"

    judge = FakeLM(replies=reply)
    rm = JudgeRewardModel(judge, TEMPLATE)
    assert isinstance(rm, PreferenceRewardModel)
    scores = rm.score(["I am vegetarian.", "{odd}"], "Dinner?", ["A steak.", "A salad {x}."])
    assert scores.tolist() == [0.0, 1.0]
    prompt = judge.calls[1][-1].content
    assert prompt == "Pref: I am vegetarian. {odd}\nQ: Dinner?\nA: A salad {x}.\n" + (
        "<answer>[Yes/No]</answer>"
    )
    unsure = JudgeRewardModel(FakeLM(replies=["hmm"]), TEMPLATE)
    assert np.isnan(unsure.score(["p"], "q", ["r"])[0])
    assert rm.score([], "q", ["a", "b"]).tolist() == [1.0, 1.0]


def test_judge_template_checks(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="end_generation"):
        JudgeRewardModel(FakeLM(), "{preference} {question}")
    with pytest.raises(ConfigError, match="judge prompt"):
        JudgeRewardModel.from_prefeval(FakeLM(), tmp_path)
    (tmp_path / "check_violation.txt").write_text(TEMPLATE)
    assert JudgeRewardModel.from_prefeval(FakeLM(), tmp_path).template == TEMPLATE


def test_prefeval_judge_prompt(data_dir: Path) -> None:
    rm = JudgeRewardModel.from_prefeval(FakeLM(), data_dir / "prefeval" / "judge_prompts")
    text = rm.prompt(["I avoid gluten."], "Where to eat in Rome?", "Try Roscioli's pasta.")
    assert "User's preference: I avoid gluten." in text and "Try Roscioli's pasta." in text
    assert "{" not in text.split("Here is the conversation:")[1]


# -- the embedded reward model -----------------------------------------------------------------


def test_preference_clauses() -> None:
    from personalign.rewards.preference_rm import preference_clauses

    clauses = preference_clauses(
        "I despise modern open-concept floor plans and prefer distinct, closed-off rooms."
    )
    assert [(c.obj, c.polarity) for c in clauses] == [
        ("modern open-concept floor plans", -1),
        ("distinct, closed-off rooms", 1),
    ]
    over = preference_clauses("I prefer learning through listening rather than reading.")
    assert [c.polarity for c in over] == [1, -1] and over[1].obj == "reading"
    assert [c.polarity for c in preference_clauses("I dislike spicy food.")] == [-1]


ITEMS = [
    ("I avoid spicy food.", "What should I eat?", ["A mild soup.", "A spicy curry.", "Hot wings."]),
    ("I hate coffee.", "What drink?", ["Green tea.", "An espresso coffee.", "A coffee latte."]),
    (
        "I dislike crowds.",
        "Where to go?",
        ["A quiet park.", "A crowded fair.", "Crowds at a mall."],
    ),
]


def test_embedded_model_trains_scores_and_roundtrips(tmp_path: Path) -> None:
    import json

    from personalign.rewards.preference_rm import FEATURE_NAMES, EmbeddedRewardModel
    from personalign.testing import HashingEmbedder
    from personalign.training.reward_model import train

    base = EmbeddedRewardModel(HashingEmbedder(), np.zeros(len(FEATURE_NAMES)))
    rm = train(base, ITEMS, epochs=200)
    assert isinstance(rm, PreferenceRewardModel)
    for pref, prompt, options in ITEMS:
        s = rm.score([pref], prompt, options)
        assert s.shape == (3,) and ((s >= 0) & (s <= 1)).all()
        assert int(np.argmax(s)) == 0
    both = rm.score(["I avoid spicy food.", "I hate coffee."], "q", ["A spicy coffee."])
    one = rm.score(["I avoid spicy food."], "q", ["A spicy coffee."])
    assert both[0] <= one[0] + 1e-12  # the minimum over preferences
    assert rm.score([], "q", ["x"]).tolist() == [1.0]
    long = rm.score(["I hate coffee."], "What drink?", ["Green tea is calm. Espresso coffee."])
    assert long.shape == (1,)
    path = tmp_path / "rm.npz"
    meta = json.dumps({"features": list(FEATURE_NAMES)})
    np.savez(path, weights=rm.weights, bias=rm.bias, scale=rm.scale, meta=np.array(meta))
    again = EmbeddedRewardModel.load(HashingEmbedder(), path)
    np.testing.assert_allclose(
        again.score(["I hate coffee."], "q", ["tea"]), rm.score(["I hate coffee."], "q", ["tea"])
    )


def test_shipped_artifact_loads() -> None:
    from personalign.rewards.preference_rm import ARTIFACT, EmbeddedRewardModel
    from personalign.testing import HashingEmbedder

    assert ARTIFACT.is_file() and ARTIFACT.stat().st_size < 5_000_000
    rm = EmbeddedRewardModel.load(HashingEmbedder())
    assert len(rm.meta["topics"]) >= 1  # type: ignore[arg-type]


def test_load_refuses_other_features(tmp_path: Path) -> None:
    import json

    from personalign.errors import ModelNotAvailableError
    from personalign.rewards.preference_rm import EmbeddedRewardModel
    from personalign.testing import HashingEmbedder

    path = tmp_path / "old.npz"
    np.savez(path, weights=np.zeros(3), bias=0.0, scale=1.0, meta=np.array(json.dumps({})))
    with pytest.raises(ModelNotAvailableError, match="retrain"):
        EmbeddedRewardModel.load(HashingEmbedder(), path)
    with pytest.raises(ModelNotAvailableError, match="train_reward_model"):
        EmbeddedRewardModel.load(HashingEmbedder(), tmp_path / "missing.npz")


def test_cross_encoder_scores_through_its_classifier() -> None:
    from personalign.errors import ModelNotAvailableError
    from personalign.rewards.preference_rm import CrossEncoderRewardModel, cross_encoder_input
    from personalign.testing import KeywordClassifier

    # the fake reads "violating" where a reply mentions coffee or spice
    clf = KeywordClassifier(
        ["compliant", "violating"], {"violating": ["espresso", "spicy curry", "hot wings"]}
    )
    rm = CrossEncoderRewardModel(clf)
    assert isinstance(rm, PreferenceRewardModel)
    s = rm.score(["I hate coffee."], "What drink?", ["Green tea.", "An espresso."])
    assert s.shape == (2,) and s[0] > 0.5 > s[1]
    both = rm.score(["I hate coffee.", "I avoid spicy food."], "q", ["tea", "A spicy curry."])
    assert both[1] < 0.5 and both[0] > 0.5  # the minimum over preferences
    assert rm.score([], "q", ["espresso"]).tolist() == [1.0]
    assert rm.score(["I hate coffee."], "q", []).shape == (0,)
    assert cross_encoder_input(" I hate coffee. ", "What drink?") == "I hate coffee. What drink?"
    with pytest.raises(ValidationError):
        rm.score("I hate coffee.", "q", ["tea"])  # type: ignore[arg-type]
    with pytest.raises(ModelNotAvailableError, match="compliant"):
        CrossEncoderRewardModel(KeywordClassifier(["a", "b"], {}))


def test_ensemble_averages_log_odds() -> None:
    from personalign.rewards.preference_rm import EnsembleRewardModel

    class Fixed:
        def __init__(self, p: list[float]) -> None:
            self.p = np.array(p)

        def score(self, preferences: Any, prompt: str, responses: Any) -> np.ndarray:
            return self.p

    rm = EnsembleRewardModel([Fixed([0.9, 0.5]), Fixed([0.1, 0.8])])
    assert isinstance(rm, PreferenceRewardModel)
    s = rm.score(["pref"], "q", ["a", "b"])
    assert s[0] == pytest.approx(0.5) and s[1] == pytest.approx(2 / 3)  # logit: (0 + ln 4) / 2
    weighted = EnsembleRewardModel([Fixed([0.9]), Fixed([0.1])], weights=[3, 1])
    assert weighted.score(["p"], "q", ["a"])[0] == pytest.approx(1 / (1 + np.exp(-np.log(9) / 2)))
    assert rm.score([], "q", ["a", "b"]).tolist() == [1.0, 1.0]
    with pytest.raises(ValidationError):
        EnsembleRewardModel([])
    with pytest.raises(ValidationError):
        EnsembleRewardModel([Fixed([0.5])], weights=[-1.0])


def test_cross_encoder_examples_balance_the_classes() -> None:
    from personalign.training.reward_model import cross_encoder_examples

    texts, pairs, labels, weights = cross_encoder_examples(ITEMS)
    assert len(texts) == len(pairs) == len(labels) == 9
    assert labels[:3] == ["compliant", "violating", "violating"]
    assert pairs[:3] == ITEMS[0][2] and texts[0] == "I avoid spicy food. What should I eat?"
    assert weights[:3].tolist() == [2.0, 1.0, 1.0]


def test_shipped_cross_encoder_artifact() -> None:
    from personalign.backends.finetuned import read_artifact_meta
    from personalign.rewards.preference_rm import CROSS_ENCODER_ARTIFACT

    assert CROSS_ENCODER_ARTIFACT.is_file() and CROSS_ENCODER_ARTIFACT.stat().st_size < 5_000_000
    meta = read_artifact_meta(CROSS_ENCODER_ARTIFACT)
    assert meta["labels"] == ["violating", "compliant"] and meta["pair"]
    assert meta["task"] == "preference_reward" and len(meta["topics"]) >= 1


@pytest.mark.slow
def test_shipped_model_on_prefeval_mcq(data_dir: Path) -> None:
    from personalign.backends.embedders import load_embedder
    from personalign.config import load_settings
    from personalign.eval.prefeval_tasks import load_mcq
    from personalign.rewards.preference_rm import load_reward_model

    settings = load_settings()
    rm = load_reward_model(settings.cache_dir, load_embedder("minilm", settings.cache_dir))
    items = load_mcq(data_dir, ["travel_restaurant"])[:20]
    hits = [
        int(np.argmax(rm.score([i.preference], i.question, i.options))) == i.answer for i in items
    ]
    assert np.mean(hits) > 0.4  # chance is 0.25


# -- PrefEval task helpers (benchmarks and training) --------------------------------------------


def test_mcq_items_are_shuffled_reproducibly(data_dir: Path) -> None:
    import json

    from personalign.eval.prefeval_tasks import cv_folds, load_mcq, reward_items, topics

    names = topics(data_dir)
    items = load_mcq(data_dir, names[:2])
    raw = json.loads((data_dir / "prefeval/mcq_options" / f"{names[0]}.json").read_text())
    for it in items[:10]:
        assert it.options[it.answer] == raw[it.index]["classification_task_options"][0]
    assert {it.answer for it in items} == {0, 1, 2, 3}  # the compliant one moves around
    assert load_mcq(data_dir, names[:2]) == items
    folds = cv_folds(names)
    assert sorted(t for f in folds for t in f) == sorted(names) and len(folds) == 4
    groups = reward_items(data_dir, names[:1])
    assert all(len(options) == 4 for _, _, options in groups)
