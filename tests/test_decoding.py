"""Decoding-time methods: the pure logit rules, the loop, reward search, the entry point."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from personalign.backends.models.base import GenerationOptions, LanguageModel
from personalign.errors import BackendError, ValidationError
from personalign.generation.decoding import (
    DECODING_METHODS,
    RULES,
    DecodingConfig,
    contrastive,
    decode,
    log_softmax,
    make_rule,
    mod_mix,
    personalized_generate,
    pick_token,
    reward_guided,
)
from personalign.rewards.weights import normalize_weights
from personalign.testing import FakeLM
from personalign.types import Message

PLAIN = [
    Message(role="system", content="you are a good echo"),
    Message(role="user", content="coffee or tea ?"),
]
PERSONAL = [
    Message(role="system", content="you are a good echo . i like tea , not coffee"),
    Message(role="user", content="coffee or tea ?"),
]
GREEDY = GenerationOptions(max_new_tokens=12)

try:
    import torch  # noqa: F401
    import transformers  # noqa: F401

    HAVE_TORCH = True
except ImportError:
    HAVE_TORCH = False


class KeywordReward:
    """Rewards replies by how often they contain ``word`` (a PreferenceRewardModel)."""

    def __init__(self, word: str) -> None:
        self.word = word
        self.calls: list[tuple[list[str], str, list[str]]] = []

    def score(
        self, preferences: Sequence[str], prompt: str, responses: Sequence[str]
    ) -> np.ndarray:
        self.calls.append((list(preferences), prompt, list(responses)))
        return np.array([r.split().count(self.word) for r in responses], dtype=np.float64)


# -- pure functions ----------------------------------------------------------------------------

RNG = np.random.default_rng(0)
ROWS = RNG.normal(size=(3, 11)).astype(np.float32)  # (R, V)


def test_log_softmax_normalizes() -> None:
    lp = log_softmax(ROWS)
    np.testing.assert_allclose(np.exp(lp).sum(-1), 1.0, atol=1e-9)
    np.testing.assert_allclose(lp - lp[:, :1], ROWS - ROWS[:, :1], atol=1e-5)


@pytest.mark.parametrize(
    ("method", "weights", "strength", "expected"),
    [
        ("prompt", [], 3.0, lambda lp: lp[0]),
        ("contrastive", [], 0.0, lambda lp: lp[0]),
        ("contrastive", [], 1.5, lambda lp: 2.5 * lp[0] - 1.5 * lp[1]),
        ("mod", [0.25, 0.25, 0.5], 0.0, lambda lp: 0.25 * lp[0] + 0.25 * lp[1] + 0.5 * lp[2]),
        ("mod", [0.5, 0.5], 0.0, lambda lp: 0.5 * lp[0] + 0.5 * lp[1]),
        ("mod", [1.0, 0.0], 2.0, lambda lp: 3.0 * lp[0] - 2.0 * lp[2]),
    ],
)
def test_rules(method: Any, weights: list[float], strength: float, expected: Any) -> None:
    rule = make_rule(method, strength=strength, weights=weights)
    np.testing.assert_allclose(rule(ROWS), expected(log_softmax(ROWS)), atol=1e-9)


def test_every_logit_method_has_a_rule() -> None:
    assert set(RULES) == {"prompt", "contrastive", "mod"}
    assert set(RULES) <= set(DECODING_METHODS)
    with pytest.raises(ValidationError):
        make_rule("best_of_n", strength=1.0)  # type: ignore[arg-type]


def test_contrastive_amplifies_the_difference() -> None:
    with_, without = np.array([2.0, 1.0, 0.0]), np.array([0.0, 1.0, 2.0])
    assert int(np.argmax(contrastive(with_, without, 0.0))) == 0
    out = contrastive(with_, without, 4.0)
    assert out[0] - out[2] > 5 * (log_softmax(with_)[0] - log_softmax(with_)[2]) - 1e-9


def test_mod_mix_checks_shapes() -> None:
    with pytest.raises(ValidationError):
        mod_mix(ROWS, np.array([0.5, 0.5]))


def test_pick_token_greedy_and_sampling() -> None:
    scores = np.array([0.0, 5.0, 1.0])
    rng = np.random.default_rng(0)
    assert pick_token(scores, GREEDY, rng) == 1
    hot = GenerationOptions(temperature=1.0, top_p=0.5)
    assert {pick_token(scores, hot, rng) for _ in range(50)} == {1}  # nucleus keeps the top
    warm = GenerationOptions(temperature=5.0)
    assert len({pick_token(scores, warm, rng) for _ in range(200)}) == 3


@settings(max_examples=200, deadline=None)
@given(
    user=st.dictionaries(
        st.sampled_from(["concise", "warm", "formal", "safety", "structure"]),
        st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
        max_size=5,
    ),
    floor=st.floats(min_value=0.0, max_value=1.0),
)
def test_user_weights_cannot_lower_the_floor(user: dict[str, float], floor: float) -> None:
    w = normalize_weights(user, {"safety": floor})
    assert w["safety"] >= floor - 1e-12
    assert all(v >= 0 for v in w.values())
    assert abs(sum(w.values()) - 1.0) < 1e-9


def test_mod_decoding_keeps_the_floor() -> None:
    lm = FakeLM()
    objectives = {"personal": PERSONAL, "safety": PLAIN}
    out = personalized_generate(
        lm,
        PLAIN,
        PERSONAL,
        config=DecodingConfig(method="mod", strength=0.0),
        options=GREEDY,
        objectives=objectives,
        weights={"personal": 1e9, "safety": -5.0},
        floors={"safety": 0.3},
    )
    assert out.details["weights"]["safety"] >= 0.3 and out.rows == 2


# -- the loop on FakeLM ------------------------------------------------------------------------


def test_contrastive_alpha_zero_is_greedy_on_the_personal_context() -> None:
    lm = FakeLM()
    plain = decode(lm, [PERSONAL], make_rule("prompt", strength=0.0), GREEDY)
    zero = decode(lm, [PERSONAL, PLAIN], make_rule("contrastive", strength=0.0), GREEDY)
    assert zero.token_ids == plain.token_ids and zero.text == plain.text
    assert zero.rows == 2 and plain.rows == 1


def test_loop_matches_manual_token_by_token_decoding() -> None:
    lm = FakeLM()
    rule = make_rule("contrastive", strength=1.0)
    out = decode(lm, [PERSONAL, PLAIN], rule, GREEDY)
    tokens = [lm.encode_chat(PERSONAL), lm.encode_chat(PLAIN)]
    expected: list[int] = []
    for _ in range(GREEDY.max_new_tokens):
        logits, _ = lm.forward([t + expected for t in tokens])  # full histories, no cache
        token = int(np.argmax(rule(logits)))
        if token in lm.eos_token_ids:
            break
        expected.append(token)
    assert out.token_ids == expected


def test_strength_changes_the_reply() -> None:
    lm = FakeLM()
    texts = {
        decode(lm, [PERSONAL, PLAIN], make_rule("contrastive", strength=a), GREEDY).text
        for a in (0.0, 1.0, 4.0)
    }
    assert len(texts) > 1


def test_sampling_is_seeded_and_streaming_matches() -> None:
    lm = FakeLM()
    opts = GenerationOptions(max_new_tokens=10, temperature=1.0, seed=3)
    rule = make_rule("contrastive", strength=1.0)
    a = decode(lm, [PERSONAL, PLAIN], rule, opts)
    deltas: list[str] = []
    b = decode(lm, [PERSONAL, PLAIN], rule, opts, on_delta=deltas.append)
    assert a.text == b.text == "".join(deltas)


def test_stop_strings_cut_the_reply() -> None:
    lm = FakeLM()
    free = decode(lm, [PERSONAL], make_rule("prompt", strength=0.0), GREEDY)
    words = free.text.split()
    if len(words) < 3:
        pytest.skip("reply too short to cut")
    stop = words[1]
    cut = decode(
        lm, [PERSONAL], make_rule("prompt", strength=0.0), GenerationOptions(12, stop=(stop,))
    )
    assert stop not in cut.text and cut.finish_reason == "stop"


# -- reward-based methods and the entry point ------------------------------------------------


@pytest.mark.parametrize("method", DECODING_METHODS)
def test_every_method_runs_on_fakelm(method: Any) -> None:
    lm = FakeLM(replies=["tea is good", "coffee coffee", "tea tea tea", "no"])
    reward = KeywordReward("tea")
    out = personalized_generate(
        lm,
        PLAIN,
        PERSONAL,
        config=DecodingConfig(method=method, strength=1.0, n=4, top_k=3, every=3),
        options=GREEDY,
        preferences=["i like tea"],
        reward=reward,
    )
    assert isinstance(out.text, str) and out.method == method
    assert out.reward is not None
    if method == "best_of_n":
        assert out.text == "tea tea tea" and out.rows == 4
        assert out.details["candidate_rewards"] == [1.0, 0.0, 3.0, 0.0]
    assert reward.calls and reward.calls[0][:2] == (["i like tea"], "coffee or tea ?")


def test_reward_guided_prefers_rewarded_tokens() -> None:
    lm = FakeLM()
    base = decode(lm, [PERSONAL], make_rule("prompt", strength=0.0), GREEDY)
    ranked = np.argsort(-lm.next_token_logits([PERSONAL])[0])
    target = next(lm.decode([int(t)]) for t in ranked[3:] if lm.decode([int(t)]))

    def count(texts: Sequence[str]) -> np.ndarray:
        return np.array([t.split().count(target) for t in texts], dtype=float)

    guided = reward_guided(lm, PERSONAL, count, strength=10.0, top_k=5, every=2, options=GREEDY)
    assert count([guided.text])[0] >= max(1.0, count([base.text])[0])
    assert len(guided.token_ids) <= GREEDY.max_new_tokens and guided.rows == 5


def test_reward_methods_need_a_reward_model() -> None:
    for method in ("best_of_n", "reward_guided"):
        with pytest.raises(ValidationError, match="reward model"):
            personalized_generate(
                FakeLM(), PLAIN, PERSONAL, config=DecodingConfig(method=method), options=GREEDY
            )


class NoLogitsLM(FakeLM):
    supports_logits = False


@pytest.mark.parametrize("method", ["contrastive", "mod", "reward_guided"])
def test_backends_without_logits_raise_clearly(method: Any) -> None:
    with pytest.raises(BackendError, match="logits"):
        personalized_generate(
            NoLogitsLM(),
            PLAIN,
            PERSONAL,
            config=DecodingConfig(method=method),
            options=GREEDY,
            reward=KeywordReward("tea"),
        )


@pytest.mark.parametrize("method", ["prompt", "best_of_n"])
def test_generation_only_methods_work_without_logits(method: Any) -> None:
    out = personalized_generate(
        NoLogitsLM(replies=["a tea", "b"]),
        PLAIN,
        PERSONAL,
        config=DecodingConfig(method=method, n=2),
        options=GREEDY,
        reward=KeywordReward("tea"),
    )
    assert out.text == "a tea"


@pytest.mark.parametrize(
    "kwargs",
    [{"method": "beam"}, {"strength": -1.0}, {"strength": float("nan")}, {"n": 0}, {"every": 0}],
)
def test_config_validation(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        DecodingConfig(**kwargs)


def test_mod_rejects_unknown_objectives() -> None:
    with pytest.raises(ValidationError, match="unknown objectives"):
        personalized_generate(
            FakeLM(),
            PLAIN,
            PERSONAL,
            config=DecodingConfig(method="mod"),
            options=GREEDY,
            weights={"nope": 1.0},
        )


# -- a tiny random transformers model ----------------------------------------------------------


def test_tiny_contrastive_alpha_zero_equals_plain_greedy(tiny_lm: LanguageModel) -> None:
    opts = GenerationOptions(max_new_tokens=10)
    greedy = tiny_lm.generate(PERSONAL, options=opts)
    out = personalized_generate(
        tiny_lm, PLAIN, PERSONAL, config=DecodingConfig(strength=0.0), options=opts
    )
    assert out.text == greedy.text and out.rows == 2


@pytest.mark.parametrize("method", DECODING_METHODS)
def test_tiny_every_method(tiny_lm: LanguageModel, method: Any) -> None:
    out = personalized_generate(
        tiny_lm,
        PLAIN,
        PERSONAL,
        config=DecodingConfig(method=method, n=2, top_k=2, every=3),
        options=GenerationOptions(max_new_tokens=6, seed=0),
        preferences=["i like tea"],
        reward=KeywordReward("tea"),
        objectives={"a": PERSONAL, "b": PLAIN, "c": PERSONAL},
        weights={"a": 1.0, "b": 2.0, "c": 0.5},
    )
    assert out.generation.completion_tokens <= 6 and out.generation.model == tiny_lm.name


@pytest.mark.parametrize("which", ["fake", "tiny"])
def test_reward_guided_forks_the_cache_like_full_recomputation(
    which: str, request: pytest.FixtureRequest
) -> None:
    """The cached search (forked KV rows) keeps the chunks a search that re-reads every
    history from scratch keeps."""
    tiny_lm: LanguageModel = FakeLM() if which == "fake" else request.getfixturevalue("tiny_lm")

    def score(texts: Sequence[str]) -> np.ndarray:
        return np.array([sum(map(ord, t)) % 5 / 5 for t in texts])  # picks varied chunks

    k, every, budget = 3, 3, 12
    eos = tiny_lm.eos_token_ids
    prompt = tiny_lm.encode_context(PERSONAL)
    ids: list[int] = []
    while len(ids) < budget and not set(ids) & eos:
        lp = log_softmax(tiny_lm.forward([prompt + ids])[0][0])
        chunks, sums = [], []
        for first in np.argsort(-lp)[:k]:
            chunk, total = [int(first)], float(lp[first])
            while len(chunk) < every and chunk[-1] not in eos:
                step = log_softmax(tiny_lm.forward([prompt + ids + chunk])[0][0])
                chunk.append(int(np.argmax(step)))
                total += float(step.max())
            chunks.append(chunk)
            sums.append(total / len(chunk))
        texts = [tiny_lm.decode(ids + [t for t in c if t not in eos]) for c in chunks]
        ids += chunks[int(np.argmax(np.array(sums) + 50.0 * score(texts)))]
    out = reward_guided(
        tiny_lm,
        PERSONAL,
        score,
        strength=50.0,
        top_k=k,
        every=every,
        options=GenerationOptions(max_new_tokens=budget),
    )
    assert out.token_ids == [t for t in ids if t not in eos][:budget]


def test_tiny_mod_single_objective_equals_contrastive(tiny_lm: LanguageModel) -> None:
    opts = GenerationOptions(max_new_tokens=8)
    a = decode(tiny_lm, [PERSONAL, PLAIN], make_rule("contrastive", strength=1.5), opts)
    b = decode(tiny_lm, [PERSONAL, PLAIN], make_rule("mod", strength=1.5, weights=[1.0]), opts)
    assert a.token_ids == b.token_ids


@pytest.mark.slow
def test_smollm2_contrastive_follows_the_preference() -> None:
    if not HAVE_TORCH:
        pytest.skip("needs torch and transformers")
    from personalign.backends.models.local import TransformersLM
    from personalign.config import load_settings

    lm = TransformersLM.embedded(load_settings().cache_dir, quiet=True)
    plain = [Message(role="user", content="Suggest a drink for this morning, in one sentence.")]
    personal = [
        Message(role="system", content="The user hates coffee and loves green tea."),
        *plain,
    ]
    opts = GenerationOptions(max_new_tokens=30)
    out = personalized_generate(
        lm, plain, personal, config=DecodingConfig(strength=1.0), options=opts
    )
    assert "tea" in out.text.lower()
