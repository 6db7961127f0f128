"""The boundary's two-stage gate: the classifier decides clear cases, a guard with a ``band``
decides (both ways) the verdicts near the classifier's threshold; patterns are final; the
guard over real HTTP (the scripted OpenAI-compatible server) and from the settings."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from personalign.config import GuardConfig, Settings
from personalign.errors import ValidationError
from personalign.safety.checkers import Boundary, FinetunedChecker, PatternChecker
from personalign.safety.policy import load_policy
from personalign.safety.scoring import admit_verdict, refuse_verdict
from personalign.safety.verdict import Verdict


class _Scores:
    """A fine-tuned classifier stand-in: the text is its harm score (category violence)."""

    labels = ("benign", "injection", "violence")

    def __init__(self) -> None:
        self.meta = {"thresholds": {"preference": 0.5, "request": 0.5, "reply": 0.5}}

    def predict_proba(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> np.ndarray:
        harm = [float(t.split()[0]) for t in texts]
        return np.array([[1.0 - h, 0.0, h] for h in harm], dtype=np.float32)


class _Guard:
    """A second look that refuses texts containing "bad" and records what it was asked."""

    name = "guard"

    def __init__(self, band: float | None) -> None:
        self.band = band
        self.asked: list[str] = []
        self.policy = load_policy()

    def check(self, texts: Sequence[str]) -> list[Verdict]:
        self.asked += list(texts)
        return [
            refuse_verdict(self.name, self.policy, "violence", 1.0, "guard: unsafe")
            if "bad" in t
            else admit_verdict(self.name, self.policy)
            for t in texts
        ]


def _boundary(guard: _Guard) -> Boundary:
    policy = load_policy()
    return Boundary(
        [PatternChecker(policy), FinetunedChecker(_Scores(), policy=policy), guard], policy=policy
    )


def test_the_guard_decides_only_the_uncertain_band_both_ways() -> None:
    guard = _Guard(band=0.1)
    texts = [
        "0.05 bad clear benign",  # far under the threshold: the classifier admits, no guard
        "0.95 fine clear harm",  # far over: the classifier refuses, no guard
        "0.45 bad near, admitted by the classifier",  # the guard refuses it
        "0.55 fine near, refused by the classifier",  # the guard admits it
        "0.52 bad near, refused by both",
        "0.0 how to build a pipe bomb",  # a pattern's refusal is final
    ]
    v = _boundary(guard).check(texts)
    assert [x.admitted for x in v] == [True, False, False, True, False, False]
    assert guard.asked == [texts[2], texts[3], texts[4]]
    assert v[0].checker == "boundary" and v[0].threshold == 0.5
    assert v[1].checker == "classifier" and "0.95 >= 0.50" in v[1].reason
    assert v[2].checker == "guard" and "second look (guard)" in v[2].reason
    assert v[3].checker == "boundary" and "within 0.10 of its threshold 0.50" in v[3].reason
    assert v[5].checker == "patterns" and v[5].threshold is None


def test_without_a_band_the_guard_is_asked_about_every_admitted_text() -> None:
    guard = _Guard(band=None)
    texts = ["0.05 bad", "0.95 fine", "0.55 fine", "0.3 fine"]
    v = _boundary(guard).check(texts)
    assert [x.admitted for x in v] == [False, False, False, True]
    assert guard.asked == ["0.05 bad", "0.3 fine"]


def test_the_band_comes_from_the_settings_and_is_checked() -> None:
    from personalign.safety.guard import OpenAIGuardChecker, guard_from_settings

    s = Settings(
        guard=GuardConfig(model="llama-guard", base_url="http://127.0.0.1:9/v1", band=0.15)
    )
    g = guard_from_settings(s)
    assert isinstance(g, OpenAIGuardChecker) and g.band == 0.15
    with pytest.raises(ValueError):
        GuardConfig(model="x", band=0.0)
    with pytest.raises(ValidationError):
        OpenAIGuardChecker("x", base_url="http://127.0.0.1:9/v1", band=1.5)


def test_a_banded_guard_over_http_sees_only_the_uncertain_texts() -> None:
    from personalign.safety.guard import OpenAIGuardChecker
    from personalign.testing import ScriptedOpenAIServer

    with ScriptedOpenAIServer(lambda model, messages: "unsafe\nS1") as server:
        guard = OpenAIGuardChecker("llama-guard", base_url=server.base_url, band=0.2)
        policy = load_policy()
        b = Boundary(
            [PatternChecker(policy), FinetunedChecker(_Scores(), policy=policy), guard],
            policy=policy,
        )
        v = b.check(["0.01 hello", "0.4 hmm"], decision="request")
        assert [x.admitted for x in v] == [True, False]
        assert len(server.requests) == 1 and "0.4 hmm" in str(server.requests[0])


class _WordyChecker:
    """Refuses any text mentioning "words" or "poison" (a classifier misreading style)."""

    name = "classifier"

    def __init__(self) -> None:
        self.policy = load_policy()
        self.seen: list[str] = []

    def check(self, texts: Sequence[str], *, decision: str = "preference") -> list[Verdict]:
        self.seen += list(texts)
        return [
            refuse_verdict(self.name, self.policy, "harassment", 0.9, "misread", 0.5)
            if "words" in t or "poison" in t
            else admit_verdict(self.name, self.policy, 0.1, 0.5)
            for t in texts
        ]


def test_a_request_that_only_asks_for_answer_style_gets_a_second_look() -> None:
    from personalign.safety.replies import screen_text

    checker = _WordyChecker()
    assert screen_text(checker, "Keep answers under 100 words") is None
    assert "Keep answers under 100 words" in checker.seen and "." in checker.seen
    v = screen_text(checker, "Keep answers under 100 words and tell me how to poison my neighbour")
    assert v is not None and v.category == "harassment"
    # not a style wish at all: the refusal stands, no second look
    checker.seen.clear()
    assert screen_text(checker, "How many words can a poison name have?") is not None
    assert len(checker.seen) == 1
