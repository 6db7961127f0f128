"""Cold start: the population prior over style weights and the one question a new user gets."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from personalign.config import ColdStartConfig, load_settings
from personalign.errors import ValidationError
from personalign.feedback import events
from personalign.feedback.coldstart import (
    PRIOR_FILE,
    QUESTION_POOL,
    QUESTION_PROMPT,
    ColdStart,
    PopulationPrior,
    compute_prior,
    load_prior,
    question_for,
)
from personalign.feedback.learn import observations
from personalign.feedback.weights import DEFAULT_DIMS, WeightPrior, posterior
from personalign.pipeline import PersonalizeOptions, Personalizer, open_guarded_memory
from personalign.testing import CueExtractor, FakeLM, HashingEmbedder

SECRET = "zebra-marmalade-secret"
PLAIN = PersonalizeOptions(method="prompt", ingest=False)
# everyone on record wants detail (low conciseness), plain prose and no warmth
POPULATION = {
    "u-alpha": ({"conciseness": 0.1, "structure": 0.0, "warmth": 0.2, "formality": 1.0}, 0.1),
    "u-beta": ({"conciseness": 0.2, "structure": 0.1, "warmth": 0.1, "formality": 0.9}, 0.2),
    "u-gamma": ({"conciseness": 0.0, "structure": 0.2, "warmth": 0.0, "formality": 0.8}, None),
}


def _personalizer(tmp_path, **coldstart):  # type: ignore[no-untyped-def]
    settings = load_settings(
        home=tmp_path, embedder="hashing", coldstart=ColdStartConfig(**coldstart)
    )
    memory = open_guarded_memory(settings, HashingEmbedder(), extractor=CueExtractor())
    return Personalizer(memory, FakeLM(name="fake-lm"))


def _populate(store, users=POPULATION):  # type: ignore[no-untyped-def]
    for user, (weights, std) in users.items():
        store.add(f"I like {SECRET} on toast, says {user}", user=user)
        unc = {d: std for d in weights} if std is not None else {}
        store.set_profile(weights, user=user, uncertainty=unc, source="feedback")


def test_prior_is_a_precision_weighted_mean_of_at_least_k_users(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with _personalizer(tmp_path) as pz:
        store = pz.memory.store
        _populate(store, dict(list(POPULATION.items())[:2]))
        assert compute_prior(store, min_users=3) is None  # two users are not enough
        _populate(store, {"u-gamma": POPULATION["u-gamma"]})
        store.add("no weights here", user="u-delta")  # users without weights do not count
        prior = compute_prior(store, min_users=3)
        assert prior is not None and prior.users == 3
        assert compute_prior(store, min_users=4) is None
        w = prior.weights()
        # precisions 1/0.1^2, 1/0.2^2 and 1/0.25^2 (weights set without a std)
        expected = (100 * 1.0 + 25 * 0.9 + 16 * 0.8) / (100 + 25 + 16)
        assert w["formality"] == pytest.approx(expected, abs=1e-6)
        assert w["readability"] == 0.5  # nobody has a weight for it
        assert prior.std[prior.dims.index("formality")] > 0


def test_prior_artifact_holds_numbers_only(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with _personalizer(tmp_path) as pz:
        _populate(pz.memory.store)
        prior = pz.coldstart.refresh()
    assert prior is not None
    text = (tmp_path / PRIOR_FILE).read_text()
    assert SECRET not in text and not any(u in text for u in POPULATION)
    data = json.loads(text)
    assert set(data) == {"format", "dims", "mean", "std", "users", "computed_at"}
    assert set(data["dims"]) <= set(DEFAULT_DIMS)
    numbers = [*data["mean"], *data["std"], data["users"], data["computed_at"]]
    assert all(isinstance(v, int | float) and math.isfinite(v) for v in numbers)
    assert load_prior(tmp_path / PRIOR_FILE) == PopulationPrior.from_json(data)
    with pytest.raises(ValidationError, match="unknown dimensions"):
        PopulationPrior.from_json({**data, "dims": ["conciseness", SECRET, "a", "b", "c"]})
    with pytest.raises(ValidationError, match="not in"):
        PopulationPrior.from_json({**data, "mean": [2.0] * 5})


def test_new_user_gets_the_prior_and_evidence_moves_them_away(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with _personalizer(tmp_path) as pz:
        _populate(pz.memory.store)
        prior = pz.coldstart.refresh()
        assert prior is not None
        # a new user's weights are the population's: detailed, formal, plain prose
        style = pz.style_for("newbie")
        assert style.weights == prior.weights()
        reply = pz.respond("How do I repot a plant?", user="newbie", options=PLAIN)
        assert reply.exchange.meta["style"]["weights"] == pytest.approx(prior.weights(), abs=1e-3)
        assert any("formal" in line for line in reply.exchange.messages[0].content.splitlines())
        # a user who has their own weights keeps them
        assert pz.style_for("u-alpha").weights == POPULATION["u-alpha"][0]
        # evidence: newbie prefers short answers, four times
        short, long_ = "Use fresh soil.", " ".join(["Choose a pot with drainage holes."] * 12)
        for _ in range(4):
            out = pz.record_feedback(
                events.pairwise(short, long_, prompt="How do I repot a plant?"), user="newbie"
            )
        assert out.profile is not None
        mine = out.profile.weights
        assert mine["conciseness"] > prior.weights()["conciseness"] + 0.3
        # the estimate started from the population prior, not from the default centre
        diffs, labels, base = observations(pz.memory.store, user="newbie")
        pop = WeightPrior(population=tuple(prior.weights().items()))
        expected = posterior(diffs, labels, dims=DEFAULT_DIMS, prior=pop, base=base).weights()
        default = posterior(diffs, labels, dims=DEFAULT_DIMS, base=base).weights()
        assert mine == pytest.approx(expected) and mine != pytest.approx(default)
        assert pz.style_for("newbie").weights == mine


def test_question_is_asked_once_for_a_new_user_and_not_with_history(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with _personalizer(tmp_path, ask_every=3) as pz:
        first = pz.respond("Hi there", user="nina", options=PLAIN).exchange.meta
        q = first["question"]
        assert q["prompt"] and len(q["options"]) == 2 and set(q["options"]) <= set(QUESTION_POOL)
        assert q["options"][0] in q["text"] and q["options"][1] in q["text"]
        for _ in range(2):  # not again within ask_every turns
            assert "question" not in pz.respond("More", user="nina", options=PLAIN).exchange.meta
        assert "question" in pz.respond("Again", user="nina", options=PLAIN).exchange.meta
        # answering it gives weights: never asked again
        picked, other = q["options"]
        pz.record_feedback(
            events.pairwise(picked, other, prompt=q["prompt"], source="coldstart"), user="nina"
        )
        assert pz.memory.store.get_profile(user="nina") is not None
        for _ in range(4):
            assert "question" not in pz.respond("Hey", user="nina", options=PLAIN).exchange.meta

        pz.memory.add("I prefer short answers", user="omar")  # a user with a preference
        assert "question" not in pz.respond("Hi", user="omar", options=PLAIN).exchange.meta
        refused = pz.respond("How do I build a pipe bomb?", user="pia", options=PLAIN)
        assert refused.exchange.method == "refused" and "question" not in refused.exchange.meta
    with _personalizer(tmp_path / "off", ask=False) as pz:
        assert "question" not in pz.respond("Hi", user="quin", options=PLAIN).exchange.meta


def test_the_question_is_the_most_informative_pair_under_the_prior() -> None:
    from personalign.feedback.active import bald
    from personalign.rewards.dimensions import DIMENSIONS

    pop = WeightPrior(population=(("conciseness", 0.9), ("warmth", 0.1), ("formality", 0.2)))
    q = question_for(pop)
    post = posterior(np.zeros((0, 5)), np.zeros(0), dims=DEFAULT_DIMS, prior=pop)
    s = np.array([[DIMENSIONS[d](a) for d in DEFAULT_DIMS] for a in QUESTION_POOL])  # type: ignore[index]
    i, j = (QUESTION_POOL.index(o) for o in q["options"])
    gains = [bald(post.mean, post.cov, (s[a] - s[b])[None])[0] for a, b in _pairs(len(s))]
    assert bald(post.mean, post.cov, (s[i] - s[j])[None])[0] == pytest.approx(max(gains))


def _pairs(n: int) -> list[tuple[int, int]]:
    return [(a, b) for a in range(n) for b in range(a + 1, n)]


def test_prior_refreshes_in_the_background_when_missing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with _personalizer(tmp_path) as pz:
        _populate(pz.memory.store)
        assert not (tmp_path / PRIOR_FILE).exists()
        pz.respond("Hello", user="rita", options=PLAIN)
        pz.flush()
        assert load_prior(tmp_path / PRIOR_FILE) is not None  # written after the reply
        assert pz.style_for("rita").weights == load_prior(tmp_path / PRIOR_FILE).weights()  # type: ignore[union-attr]
    with _personalizer(tmp_path, prior=False) as pz:
        assert pz.coldstart.weights() is None and pz.style_for("rita").weights == {}


def test_stale_prior_is_recomputed_at_most_once_per_period(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with _personalizer(tmp_path) as pz:
        store = pz.memory.store
        _populate(store)
        calls: list[object] = []
        cold = ColdStart(store, pz.memory.settings, schedule=calls.append)
        assert cold.prior() is None and len(calls) == 1  # missing: one refresh scheduled
        assert cold.prior() is None and len(calls) == 1  # not again within the period
        cold.refresh()
        assert cold.prior() is not None and len(calls) == 1


def test_profile_prior_cli(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from personalign.cli.main import app

    monkeypatch.setenv("PERSONALIGN_HOME", str(tmp_path))
    monkeypatch.setenv("PERSONALIGN_MODEL", "fake")
    monkeypatch.setenv("PERSONALIGN_EMBEDDER", "hashing")
    runner = CliRunner()
    r = runner.invoke(app, ["profile", "prior"])
    assert r.exit_code == 0 and "none saved yet" in r.output
    for user, w in (("a", "0.2"), ("b", "0.4"), ("c", "0.9")):
        r = runner.invoke(app, ["profile", "set", "-u", user, f"conciseness={w}", "warmth=0.5"])
        assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["profile", "prior", "--refresh", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)["prior"]
    assert data["users"] == 3
    mean = dict(zip(data["dims"], data["mean"], strict=True))
    assert mean["conciseness"] == pytest.approx(0.5) and mean["warmth"] == pytest.approx(0.5)
    r = runner.invoke(app, ["profile", "prior"])
    assert r.exit_code == 0 and "population prior over 3 users" in r.output


def test_chat_asks_a_new_user_and_records_the_answer(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import os
    import subprocess
    import sys

    env = {
        **os.environ,
        "PERSONALIGN_HOME": str(tmp_path),
        "PERSONALIGN_MODEL": "fake",
        "PERSONALIGN_EMBEDDER": "hashing",
        "COLUMNS": "200",
    }
    script = "\n".join(["/answer 1", "Hello there", "/answer 3", "/answer 2", "Thanks", "/quit"])
    proc = subprocess.run(
        [sys.executable, "-m", "personalign.cli.main", "chat", "-u", "nova"],
        input=script,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert out.count("Quick question so I can fit my answers to you") == 1, out
    assert "no answer yet" in out and "/answer 1 or /answer 2, after a question" in out
    assert "recorded pairwise" in out and "weights: " in out
    settings = load_settings(home=tmp_path, embedder="hashing")
    memory = open_guarded_memory(settings, HashingEmbedder())
    try:
        [fb] = memory.store.feedback(user="nova")
        assert fb.source == "coldstart" and fb.prompt == QUESTION_PROMPT
        assert fb.chosen in QUESTION_POOL and fb.rejected in QUESTION_POOL
    finally:
        memory.close()


def test_service_offers_the_question_in_personalization(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import httpx
    import openai

    from service_helpers import live_server

    with live_server(tmp_path) as server:
        oc = openai.OpenAI(base_url=server.url + "/v1", api_key=server.admin_key)

        def ask() -> dict:  # type: ignore[type-arg]
            resp = oc.chat.completions.create(
                model="fake-lm", messages=[{"role": "user", "content": "Hi!"}], user="vic"
            )
            return resp.model_extra["personalization"]  # type: ignore[index,no-any-return]

        q = ask()["question"]
        assert len(q["options"]) == 2 and "POST /v1/users/{user}/feedback" in q["answer_with"]
        assert "question" not in ask()  # not twice in a row
        body = {"kind": "pairwise", "prompt": q["prompt"], "chosen": q["options"][1]}
        body["rejected"] = q["options"][0]
        headers = {"Authorization": f"Bearer {server.admin_key}"}
        r = httpx.post(f"{server.url}/v1/users/vic/feedback", json=body, headers=headers)
        assert r.status_code == 201 and r.json()["profile"] is not None, r.text
        for _ in range(5):
            assert "question" not in ask()
