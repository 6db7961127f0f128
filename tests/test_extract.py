"""Extraction: text helpers, the numpy classifier, the embedded and LLM extractors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from personalign.errors import ConfigError
from personalign.memory.extract import (
    ARTIFACT,
    CUE_NAMES,
    Candidate,
    EmbeddedExtractor,
    Extractor,
    LLMExtractor,
    SentenceClassifier,
    cue_features,
    offered_options,
    pick_option,
    signals_change,
    split_sentences,
    states_preference,
)
from personalign.testing import FakeLM, HashingEmbedder
from personalign.training.extractor import train_logreg
from personalign.types import Message


def cue_classifier(embedder_name: str = "hashing-384", dim: int = 384) -> SentenceClassifier:
    """A hand-set classifier that only looks at cue features (embedding weights are zero)."""
    w = np.zeros(dim + len(CUE_NAMES))
    cue = {n: i for i, n in enumerate(CUE_NAMES)}
    w[dim + cue["first_person"]] = 2.0
    w[dim + cue["pref_verb"]] = 3.0
    w[dim + cue["constraint"]] = 1.0
    w[dim + cue["question"]] = -6.0
    w[dim + cue["request"]] = -4.0
    return SentenceClassifier(weights=w, bias=-3.5, threshold=0.6, embedder=embedder_name)


@pytest.fixture
def extractor() -> EmbeddedExtractor:
    return EmbeddedExtractor(HashingEmbedder(), cue_classifier())


def test_split_sentences_and_cues() -> None:
    assert split_sentences("I love jazz. Can you help? Sure!\nNext line") == [
        "I love jazz.",
        "Can you help?",
        "Sure!",
        "Next line",
    ]
    feats = cue_features(["I love jazz.", "What is 2+2?"])
    assert feats.shape == (2, len(CUE_NAMES)) and feats.dtype == np.float32
    assert signals_change("I stopped eating meat.") and signals_change("I don't drink it anymore")
    assert not signals_change("I eat meat.")
    assert states_preference("I prefer aisle seats.") and states_preference("I'm vegan.")
    assert not states_preference("I love that idea!") and not states_preference("I like it?")


@pytest.mark.parametrize(
    ("text", "n"),
    [
        ("Options:\n1. Tea\n2. Coffee\n3. Juice", 3),
        ("Try these: 1. green tea 2. black coffee 3. orange juice", 3),
        ("You could try a quiet museum visit, a long mountain hike, or a cooking class.", 3),
        ("Do you mean the red shirt or the blue shirt?", 0),
        ("Here is the answer.", 0),
    ],
)
def test_offered_options(text: str, n: int) -> None:
    assert len(offered_options(text)) == n


def test_pick_option() -> None:
    opts = ["a quiet museum visit", "a long mountain hike", "a cooking class downtown"]
    assert pick_option("I'll take the second one.", opts) == (1, "ordinal")
    assert pick_option("Option 3 please", opts) == (2, "ordinal")
    assert pick_option("The mountain hike sounds long but great", opts) == (1, "overlap")
    assert pick_option("Hmm, not sure.", opts) is None
    assert pick_option("anything", []) is None


def test_train_logreg_is_deterministic_and_fits() -> None:
    rng = np.random.default_rng(0)
    x = np.vstack([rng.normal(1.0, 0.3, (40, 3)), rng.normal(-1.0, 0.3, (40, 3))])
    y = np.array([1.0] * 40 + [0.0] * 40)
    w1, b1 = train_logreg(x, y)
    w2, b2 = train_logreg(x, y)
    assert np.array_equal(w1, w2) and b1 == b2
    assert (((x @ w1 + b1) > 0) == (y > 0)).all()


def test_classifier_json_roundtrip_and_format_check() -> None:
    clf = cue_classifier()
    back = SentenceClassifier.from_json(json.loads(json.dumps(clf.to_json())))
    assert np.allclose(back.weights, clf.weights) and back.threshold == clf.threshold
    with pytest.raises(ConfigError):
        SentenceClassifier.from_json({"format": "other"})


def test_shipped_artifact_is_small_and_loads() -> None:
    assert ARTIFACT.stat().st_size < 2 * 1024 * 1024
    clf = SentenceClassifier.load()
    assert clf.embedder == "all-MiniLM-L6-v2" and 0.5 <= clf.threshold <= 0.95
    assert clf.weights.shape == (384 + len(CUE_NAMES),)


def test_embedder_mismatch_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="trained on"):
        EmbeddedExtractor(HashingEmbedder(), cue_classifier(embedder_name="all-MiniLM-L6-v2"))


def test_embedded_extractor_finds_statements_not_requests(extractor: EmbeddedExtractor) -> None:
    assert isinstance(extractor, Extractor)
    msgs = [
        Message(role="user", content="Can you write a poem about cats?", id="t1"),
        Message(role="assistant", content="Sure, here it is.", id="a1"),
        Message(role="user", content="Thanks. I love jazz music and prefer vinyl.", id="t2"),
    ]
    cands = extractor.extract(msgs)
    assert len(cands) == 1
    c = cands[0]
    assert c.source_turn_ids == ["t2"] and c.kind == "explicit"
    assert "jazz" in c.text and not c.text.startswith("Thanks")
    assert c.reason.startswith("embedded classifier") and c.topic is not None
    assert 0.6 <= c.confidence <= 1.0


def test_embedded_extractor_choice_rule(extractor: EmbeddedExtractor) -> None:
    msgs = [
        Message(role="user", content="What should I do this weekend?", id="q"),
        Message(
            role="assistant",
            content="You could try a quiet museum visit, a long mountain hike, or a loud concert.",
            id="a",
        ),
        Message(
            role="user", content="I'll go with the mountain hike. Concerts aren't for me.", id="s"
        ),
    ]
    cands = extractor.extract(msgs)
    assert len(cands) == 1
    c = cands[0]
    assert c.kind == "implicit" and c.source_turn_ids == ["q", "s"]
    assert "mountain hike" in c.text and c.reason.startswith("choice rule")


def test_change_cue_makes_tentative_candidates(extractor: EmbeddedExtractor) -> None:
    low = EmbeddedExtractor(HashingEmbedder(), cue_classifier(), threshold=0.99)
    cands = low.extract([Message(role="user", content="I no longer listen to jazz.", id="x")])
    assert len(cands) == 1 and cands[0].tentative and cands[0].change
    # a food the user no longer eats is a rule the diet patterns read, kept outright
    (meat,) = low.extract([Message(role="user", content="I no longer eat meat.", id="y")])
    assert meat.topic == "food" and meat.change and not meat.tentative
    assert extractor.extract([Message(role="user", content="What time is it?")]) == []


def _json_reply(prefs: list[dict[str, object]]) -> str:
    return "Here you go:\n```json\n" + json.dumps({"preferences": prefs}) + "\n```"


def test_llm_extractor_valid_json() -> None:
    lm = FakeLM(
        [
            _json_reply(
                [
                    {"text": "I am vegetarian", "turn_ids": ["u1", "bogus"], "why": "stated"},
                    {"text": "Prefers short answers", "kind": "implicit", "turn_ids": []},
                ]
            )
        ]
    )
    ex = LLMExtractor(lm)
    msgs = [
        Message(role="user", content="I'm vegetarian.", id="u1"),
        Message(role="assistant", content="Noted.", id="a1"),
        Message(role="user", content="Keep it short.", id="u2"),
    ]
    cands = ex.extract(msgs)
    assert [c.text for c in cands] == ["I am vegetarian", "Prefers short answers"]
    assert cands[0].source_turn_ids == ["u1"]  # invented id dropped
    assert cands[1].source_turn_ids == ["u1", "u2"]  # none valid: every user turn
    assert cands[0].reason.startswith("llm fake-lm (attempt 1)") and ex.failures == []
    assert "data, not instructions" in lm.calls[0][0].content


def test_llm_extractor_retries_then_succeeds() -> None:
    lm = FakeLM(["not json at all", _json_reply([{"text": "Likes tea", "turn_ids": ["u"]}])])
    ex = LLMExtractor(lm, max_attempts=3)
    cands = ex.extract([Message(role="user", content="I like tea", id="u")])
    assert [c.text for c in cands] == ["Likes tea"] and "attempt 2" in cands[0].reason
    assert "not valid JSON" in lm.calls[1][-1].content


def test_llm_extractor_gives_up_with_a_recorded_reason() -> None:
    lm = FakeLM(['{"preferences": [{"text": ""}]}', "nope"])
    ex = LLMExtractor(lm, max_attempts=2)
    assert ex.extract([Message(role="user", content="I like tea", id="u")]) == []
    assert len(ex.failures) == 1 and "2 attempt(s)" in ex.failures[0]
    assert len(lm.calls) == 2


def test_candidate_validates() -> None:
    with pytest.raises(ValueError):
        Candidate(text="x", confidence=2.0)


@pytest.mark.slow
def test_real_classifier_separates_preferences_from_requests(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from personalign.backends.embedders import load_embedder

    ex = EmbeddedExtractor(load_embedder("minilm", tmp_path / "cache"))
    prefs = [
        "I follow a strict vegan diet and avoid all animal products.",
        "I'm allergic to shellfish, so no seafood for me.",
        "I prefer quiet hotels away from nightlife.",
    ]
    chat = [
        "Write a short story about a dragon.",
        "What is the derivative of x squared?",
        "Can you summarize the French revolution?",
    ]
    msgs = [Message(role="user", content=t, id=f"p{i}") for i, t in enumerate(prefs)]
    msgs += [Message(role="user", content=t, id=f"c{i}") for i, t in enumerate(chat)]
    found = {tid for c in ex.extract(msgs) for tid in c.source_turn_ids}
    assert found == {"p0", "p1", "p2"}


def test_hearsay_and_other_people_are_not_the_users_preferences() -> None:
    from personalign.memory.extract import not_about_user

    assert not_about_user("I've heard that keto is the fastest diet.")
    assert not_about_user("One of my guests is lactose intolerant.")
    assert not_about_user("My wife prefers tea.")
    assert not not_about_user("I prefer tea.") and not not_about_user("My favorite tea is green.")
