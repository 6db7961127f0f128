"""Feedback-based alignment: records, weight estimation, active queries, calibration, adapters,
per-user DPO (tiny model), executors and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from personalign.errors import ConfigError, NotFoundError, ValidationError
from personalign.feedback import events
from personalign.feedback.active import CRITERIA, candidate_pairs, choose_pair
from personalign.feedback.adapters import AdapterStore, adapter_name, user_of
from personalign.feedback.learn import (
    edit_statements,
    estimate,
    observations,
    record_feedback,
    set_weights,
)
from personalign.feedback.weights import WeightPrior, cosine, fit_laplace, posterior
from personalign.testing import CueExtractor, FakeLM
from personalign.types import Exchange, Message, new_id, utcnow

DIMS = ("conciseness", "readability", "warmth", "structure")
LONG = (
    "Boiling an egg is a simple process that many people enjoy in the morning. First, you "
    "should place the egg carefully in a saucepan and cover it with cold water. Then bring the "
    "water to a boil over medium heat, and let it simmer for about seven minutes before cooling "
    "it in a bowl of ice water."
)


@pytest.fixture
def store(tmp_path, embedder):  # type: ignore[no-untyped-def]
    from personalign.backends.stores.sqlite import SQLiteStore

    s = SQLiteStore(tmp_path / "memory.db", embedder)
    yield s
    s.close()


def _log(store, user: str, question: str, answer: str) -> Exchange:  # type: ignore[no-untyped-def]
    x = Exchange(
        id=new_id(),
        user_id=user,
        at=utcnow(),
        messages=[Message(role="user", content=question)],
        response=answer,
        model="fake",
        method="prompt",
        latency_ms=1.0,
    )
    store.log_exchange(x, user=user)
    return x


def _simulate(w: np.ndarray, n: int, seed: int, beta: float = 20.0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    s = rng.random((2 * n, len(w)))  # (2n, K) synthetic dimension scores
    d = s[:n] - s[n:]  # (n, K)
    y = (rng.random(n) < 1 / (1 + np.exp(-beta * d @ w))).astype(float)
    return d, y


# -- weights -----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_posterior_recovers_hidden_weights(seed):
    w = np.random.default_rng(seed + 10).dirichlet(np.ones(4))
    d, y = _simulate(w, 300, seed)
    post = posterior(d, y, dims=DIMS)
    est = np.array(list(post.weights().values()))
    assert cosine(est, w) > 0.95
    assert max(est) == 1.0 and min(est) >= 0.0
    assert set(post.uncertainty()) == set(DIMS)
    few = posterior(d[:5], y[:5], dims=DIMS)
    assert post.spread < few.spread  # more data, more certain


def test_laplace_is_the_map_and_survives_separable_data():
    d = np.array([[1.0, 0.0], [0.9, 0.1], [0.8, -0.2]])
    y = np.ones(3)  # perfectly separable: only the prior keeps theta finite
    mean, cov = fit_laplace(d, y, prior_mean=np.zeros(2), prior_std=3.0)
    p = 1 / (1 + np.exp(-d @ mean))
    grad = mean / 9.0 - d.T @ (y - p)
    assert np.abs(grad).max() < 1e-6
    assert np.all(np.linalg.eigvalsh(cov) > 0) and np.isfinite(mean).all()
    with pytest.raises(ValidationError):
        fit_laplace(d, np.array([1.0, 2.0, 0.0]), prior_mean=np.zeros(2), prior_std=1.0)
    with pytest.raises(ValidationError):
        WeightPrior(std=0)


def test_active_queries_beat_random_on_average():
    rng = np.random.default_rng(5)
    pool = rng.random((40, 4))  # (N, K)
    pairs = candidate_pairs(len(pool))
    finals: dict[str, list[float]] = {"active": [], "random": []}
    for u in range(25):
        w = rng.dirichlet(np.ones(4))
        for mode in finals:
            urng = np.random.default_rng(100 + u)
            d_, y_, asked = [], [], []
            post = posterior(np.zeros((0, 4)), np.zeros(0), dims=DIMS)
            for _ in range(8):
                if mode == "active":
                    i, j = choose_pair(post, pool, pairs=pairs, exclude=asked)
                else:
                    i, j = pairs[urng.integers(len(pairs))]
                asked.append((i, j))
                d = pool[i] - pool[j]
                d_.append(d)
                y_.append(float(urng.random() < 1 / (1 + np.exp(-20 * d @ w))))
                post = posterior(np.array(d_), np.array(y_), dims=DIMS)
            finals[mode].append(cosine(np.array(list(post.weights().values())), w))
    assert np.mean(finals["active"]) > np.mean(finals["random"])


@pytest.mark.parametrize("criterion", sorted(CRITERIA))
def test_each_criterion_picks_an_unasked_pair(criterion):
    pool = np.random.default_rng(0).random((6, 4))
    post = posterior(np.zeros((0, 4)), np.zeros(0), dims=DIMS)
    asked: list[tuple[int, int]] = []
    for _ in range(15):
        i, j = choose_pair(post, pool, exclude=asked, criterion=criterion)
        assert i < j and (i, j) not in asked
        asked.append((i, j))
    with pytest.raises(ValidationError):
        choose_pair(post, pool, exclude=asked, criterion=criterion)
    gains = CRITERIA[criterion](post.mean, post.cov, pool[:3] - pool[3:])
    assert gains.shape == (3,) and (gains >= -1e-12).all()


def test_candidate_pairs_within_groups():
    pairs = candidate_pairs(5, groups=[0, 0, 1, 1, 1])
    assert {tuple(p) for p in pairs} == {(0, 1), (2, 3), (2, 4), (3, 4)}


# -- records and learning ----------------------------------------------------------------


def test_event_constructors_validate():
    assert events.thumbs(True, exchange_id="a" * 32).label == 1.0
    assert events.thumbs(False, response="r").label == 0.0
    assert events.stars(4, response="r").label == 0.75
    assert events.pairwise("a", "b").kind == "pairwise"
    with pytest.raises(ValidationError):
        events.stars(0, response="r")
    with pytest.raises(ValidationError):
        events.edit("fixed")  # no exchange, no response
    with pytest.raises(ValidationError):
        events.override({})


def test_pairwise_and_ratings_update_the_profile_with_uncertainty(store):
    short = "Boil it for seven minutes."
    res = None
    for i in range(6):
        res = record_feedback(
            store, events.pairwise(short, LONG, prompt=f"How do I boil an egg? ({i})"), user="ann"
        )
    assert res is not None and res.profile is not None
    prof = store.get_profile(user="ann")
    assert prof.source == "feedback" and set(prof.uncertainty) == set(prof.weights)
    assert prof.weights["conciseness"] == 1.0  # the dimension her choices reveal most
    x = _log(store, "ann", "Tell me about eggs", LONG)
    _log(store, "ann", "And tea?", short)
    out = record_feedback(store, events.thumbs(False, exchange_id=x.id), user="ann")
    assert out.profile is not None and len(store.profile_history(user="ann")) == 7
    d, y, base = observations(store, user="ann")
    assert d.shape == (7, 5) and y[-1] == 0.0 and base is None


def test_override_is_kept_as_feedback_and_becomes_the_prior(store):
    record_feedback(store, events.pairwise("Short.", LONG, prompt="q"), user="bo")
    fb, prof = set_weights(store, {"warmth": 1.0, "conciseness": 0.1}, user="bo", reason="mine")
    assert fb.kind == "override" and prof.source == "user" and prof.reason == "mine"
    assert [f.kind for f in store.feedback(user="bo")] == ["pairwise", "override"]
    d, _, base = observations(store, user="bo")
    assert len(d) == 0 and base is not None  # choices before the override no longer count
    post = estimate(store, user="bo")
    assert post.weights()["warmth"] == 1.0 and post.weights()["conciseness"] < 0.2


def test_critique_and_edits_become_preferences(store):
    x = _log(store, "cy", "How do I boil an egg?", LONG)
    res = record_feedback(
        store,
        events.critique("Way too long. I prefer short answers.", exchange_id=x.id),
        user="cy",
        extractor=CueExtractor(),
    )
    assert res.memories == ["I prefer short answers"] and res.profile is None
    res = record_feedback(store, events.edit("Boil it seven minutes.", exchange_id=x.id), user="cy")
    assert "I prefer shorter, more concise answers." in res.memories
    assert res.profile is not None and res.profile.weights["conciseness"] == 1.0
    texts = {r.text: r.kind for r in store.list(user="cy", kinds=["explicit", "implicit"])}
    assert texts["I prefer shorter, more concise answers."] == "implicit"
    # feedback on another user's (or a missing) exchange stores nothing
    with pytest.raises(NotFoundError):
        record_feedback(store, events.critique("no", exchange_id=x.id), user="dan")
    assert store.feedback(user="dan") == []
    assert edit_statements("echo: hi", "Hi there.") == []


# -- calibration -------------------------------------------------------------------------

STYLED = {
    None: "Sleep well by keeping a regular schedule and a dark, quiet room at night.",
    "Answer in one or two short sentences.": "Keep a regular schedule.",
    "Answer in detail, with explanations.": LONG,
    "Answer as a bulleted list under a short heading.": "Tips:\n- one\n- two\n- three",
    "Answer warmly and encouragingly, like a friendly coach.": "You can do it! Wonderful, "
    "lovely, great progress, I am so happy for you and proud of you!",
    "Answer in a formal, precise, technical register.": "Circadian regulation necessitates "
    "consistent photoperiodic entrainment and environmental optimization.",
    "Answer casually, in simple everyday words.": "hey just go to bed at the same time lol",
}


def _styled_lm() -> FakeLM:
    def reply(msgs: list[Message]) -> str:
        hint = next((m.content for m in msgs if m.role == "system"), None)
        q = msgs[-1].content
        return STYLED[hint].replace("Sleep", q.split()[0]) if hint is None else STYLED[hint]

    return FakeLM(reply)


@pytest.fixture
def cli_env(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PERSONALIGN_HOME", str(tmp_path))
    monkeypatch.setenv("PERSONALIGN_MODEL", "fake")
    monkeypatch.setenv("PERSONALIGN_EMBEDDER", "hashing")
    return tmp_path


def test_calibrate_cli_with_scripted_stdin(cli_env, monkeypatch):
    import personalign.backends.models as models
    from personalign.cli.main import app

    monkeypatch.setattr(models, "load_model", lambda settings, **kw: _styled_lm())
    r = CliRunner().invoke(
        app, ["calibrate", "-u", "eve", "--max-queries", "4"], input="1\n2\nx\n1\ns\n"
    )
    assert r.exit_code == 0, r.output
    assert r.output.count("better? [1/2/s/q]") == 5  # 'x' is asked again
    assert "weights of eve" in r.output
    r = CliRunner().invoke(app, ["feedback", "list", "-u", "eve", "--json"])
    fbs = json.loads(r.stdout)
    assert [f["source"] for f in fbs] == ["calibrate"] * 3 and fbs[0]["prompt"]
    r = CliRunner().invoke(app, ["profile", "show", "-u", "eve", "--json"])
    hist = json.loads(r.stdout)
    assert hist[-1]["source"] == "feedback" and hist[-1]["reason"].startswith("calibrate: 3")
    assert (cli_env / "calibration_pool.json").is_file()  # reused next time
    r = CliRunner().invoke(app, ["calibrate", "-u", "eve"], input="q\n")
    assert r.exit_code == 0 and "no choices made" in r.output


def test_calibration_stops_when_certain(store):
    from personalign.backends.models.base import GenerationOptions
    from personalign.feedback.calibrate import Calibration, build_pool

    pool = build_pool(_styled_lm(), options=GenerationOptions(max_new_tokens=64))
    assert len(pool.answers) == 3 * len(STYLED) and len(set(pool.groups)) == 3
    cal = Calibration(store, pool, user="fay", target_spread=10.0, min_queries=2)
    for _ in range(2):
        assert cal.next_query() is not None
        cal.answer(1)
    assert cal.next_query() is None and cal.done  # spread under the (loose) target
    assert cal.finish() is not None


def test_feedback_cli_commands(cli_env):
    from personalign.cli.main import app

    run = CliRunner().invoke
    assert run(app, ["feedback", "good", "-u", "gus"]).exit_code == 1  # nothing to rate yet
    r = run(app, ["ask", "-u", "gus", "How do I boil an egg?", "--json"])
    xid = json.loads(r.stdout)["exchange_id"]
    r = run(app, ["feedback", "bad", "-u", "gus", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["feedback"]["exchange_id"] == xid
    assert run(app, ["feedback", "rate", "4", "-u", "gus", "-x", xid]).exit_code == 0
    r = run(app, ["feedback", "critique", "I prefer answers in French.", "-u", "gus"])
    assert "learned: I prefer answers in French" in r.output
    r = run(app, ["feedback", "edit", LONG, "-u", "gus"])
    assert r.exit_code == 0 and "weights:" in r.output
    r = run(app, ["feedback", "prefer", "-u", "gus", "--chosen", "A", "--rejected", "B"])
    assert r.exit_code == 0, r.output
    r = run(app, ["profile", "set", "-u", "gus", "warmth=0.9", "conciseness=0.2"])
    assert "warmth 0.90" in r.output
    assert run(app, ["profile", "set", "-u", "gus", "warmth"]).exit_code == 1
    assert run(app, ["profile", "set", "-u", "gus", "warmth=2"]).exit_code == 1
    r = run(app, ["profile", "show", "-u", "gus"])
    assert "warmth" in r.output and "(user)" in r.output
    kinds = [
        f["kind"] for f in json.loads(run(app, ["feedback", "list", "-u", "gus", "--json"]).stdout)
    ]
    assert kinds == ["rating", "rating", "critique", "edit", "pairwise", "override"]
    assert run(app, ["feedback", "edit", "x", "-u", "gus", "-x", "f" * 32]).exit_code == 1


# -- adapter store -----------------------------------------------------------------------

FILES = {"adapter_model.safetensors": b"weights", "adapter_config.json": b'{"peft_type": "LORA"}'}


def test_adapter_store_layout_versions_find_erase(tmp_path):
    st = AdapterStore.for_home(tmp_path)
    assert st.latest("ann") is None and st.users() == []
    a1 = st.save("ann", FILES, {"data_hash": "h1", "base_model": "smollm2"})
    a2 = st.save("ann", FILES, {"data_hash": "h2"})
    assert a1.path == tmp_path / "adapters" / "ann" / "v0001" and a2.label == "ann@v0002"
    assert sorted(p.name for p in a2.path.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "recipe.json",
    ]
    recipe = json.loads((a1.path / "recipe.json").read_text())
    assert recipe["user"] == "ann" and recipe["version"] == 1 and recipe["base_model"] == "smollm2"
    assert st.find("ann", "h1") == a1 and st.find("ann", "h3") is None
    assert st.adapter_path("ann") == a2.path
    (tmp_path / "adapters" / "ann" / ".tmp-crashed").mkdir()  # a crashed write is ignored
    (tmp_path / "adapters" / "ann" / "v0003").mkdir()  # so is an incomplete version
    assert [a.version for a in st.versions("ann")] == [1, 2]
    with pytest.raises(NotFoundError):
        st.adapter_path("bob")
    with pytest.raises(ValidationError):
        st.save("bob", {"adapter_config.json": b"{}"}, {})
    dotted = st.save("..", FILES, {})  # odd but valid user ids stay inside the root
    assert dotted.path.parent.name == "%2E." and user_of(adapter_name("..")) == ".."
    assert st.users() == ["..", "ann"]
    assert st.erase("ann") == 2 and st.latest("ann") is None and st.users() == [".."]


def test_export_for_vllm(tmp_path):
    st = AdapterStore(tmp_path / "ad")
    st.save("app:ann", FILES, {})
    st.save("bob", FILES, {})
    st.save("bob", FILES, {})
    m = st.export_vllm(tmp_path / "vllm", base_model="HuggingFaceTB/SmolLM2-135M-Instruct")
    assert [(e["name"], e["version"]) for e in m["adapters"]] == [("app:ann", 1), ("bob", 2)]
    cfg = json.loads((tmp_path / "vllm" / "bob" / "adapter_config.json").read_text())
    assert cfg == {"peft_type": "LORA", "base_model_name_or_path": m["base_model"]}
    assert (tmp_path / "vllm" / "bob" / "adapter_model.safetensors").read_bytes() == b"weights"
    lines = (tmp_path / "vllm" / "lora_modules.txt").read_text().splitlines()
    assert lines == [f"app:ann={tmp_path / 'vllm' / 'app:ann'}", f"bob={tmp_path / 'vllm' / 'bob'}"]
    with pytest.raises(NotFoundError):
        st.export_vllm(tmp_path / "v2", base_model="m", users=["nobody"])


def test_train_config_validates():
    from personalign.feedback.train import TrainConfig

    assert TrainConfig().lora_r == 8
    for bad in ({"lora_r": 0}, {"beta": 0}, {"max_pairs": 4}, {"max_steps": 0}, {"epochs": True}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            TrainConfig(**bad)


# -- tiny-model adapters, DPO, executors (slow: torch, TRL, PEFT, Ray) ---------------------


def _random_adapter(tiny: Path, out: Path, seed: int) -> dict[str, bytes]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(tiny)
    cfg = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, cfg).save_pretrained(out)
    return {f: (out / f).read_bytes() for f in FILES}


@pytest.mark.slow
def test_local_backend_swaps_adapters_per_request_with_an_lru(tiny, tmp_path):
    from personalign.backends.models.base import GenerationOptions
    from personalign.backends.models.local import TransformersLM

    st = AdapterStore(tmp_path / "ad")
    for i, user in enumerate(["u1", "u2", "u3"]):
        st.save(user, _random_adapter(tiny, tmp_path / user, seed=i), {})
    lm = TransformersLM(tiny, dtype="float32", adapters=st, max_adapters=2)
    msgs = [Message(role="user", content="Hello there")]

    def gen(adapter: str | None) -> str:
        return lm.generate(msgs, options=GenerationOptions(max_new_tokens=8, adapter=adapter)).text

    base = gen(None)
    outs = {u: gen(u) for u in ["u1", "u2", "u3"]}
    assert len({base, *outs.values()}) == 4  # each adapter changes the output
    assert len(lm._loaded) == 2  # u1 was evicted (LRU of 2)
    assert gen("u1") == outs["u1"] and gen(None) == base  # reloaded; base untouched
    assert lm.activate_adapter("u1") < 50  # warm swap
    logits_base = lm.next_token_logits([msgs])
    assert np.allclose(logits_base, lm.next_token_logits([msgs]))  # token level: base model
    with pytest.raises(NotFoundError):
        gen("nobody")
    from personalign.errors import BackendError

    plain = TransformersLM(tiny, dtype="float32")
    with pytest.raises(BackendError, match="no adapter store"):
        plain.generate(msgs, options=GenerationOptions(max_new_tokens=4, adapter="u1"))


@pytest.mark.slow
def test_dpo_on_tiny_model_gives_a_loadable_adapter_and_resumes(tiny, store, tmp_path):
    from personalign.backends.models.base import GenerationOptions
    from personalign.backends.models.local import TransformersLM
    from personalign.feedback.train import TrainConfig, train_users

    for user in ("ann", "bob"):
        for i in range(4):
            record_feedback(store, events.pairwise("Short.", LONG, prompt=f"Q{i}?"), user=user)
    _log(store, "cid", "hi", "hello")  # no pairs: skipped
    cfg = TrainConfig(
        base_model=str(tiny),
        min_pairs=3,
        max_pairs=6,
        ranked_prompts=2,
        candidates=2,
        gen_max_new_tokens=6,
        max_steps=2,
        batch_size=2,
        max_length=96,
        learning_rate=0.05,
        save_steps=1,
    )
    adapters = AdapterStore(tmp_path / "ad")
    kw = {"config": cfg, "cache_dir": tmp_path / "cache", "progress": False}
    res = {r.user: r for r in train_users(store, adapters, **kw)}
    assert res["ann"].status == res["bob"].status == "trained", res
    assert res["cid"].status == "skipped" and "needed" in res["cid"].message
    info = adapters.latest("ann")
    assert info is not None and info.recipe["pairs"] == res["ann"].pairs >= 4
    assert info.recipe["pair_sources"]["pairwise"] == 4 and info.recipe["metrics"]["steps"] == 2
    assert info.recipe["config"]["lora_r"] == 8 and info.recipe["data_hash"] == res["ann"].data_hash
    # resumable: same data -> skipped; new feedback -> a new version
    again = {r.user: r for r in train_users(store, adapters, **kw)}
    assert again["ann"].status == "exists" and again["ann"].adapter == "ann@v0001"
    record_feedback(store, events.pairwise("Tiny.", LONG, prompt="Q9?"), user="ann")
    third = {r.user: r for r in train_users(store, adapters, users=["ann"], **kw)}
    assert third["ann"].adapter == "ann@v0002"
    # loadable, and its outputs differ from the base model's
    lm = TransformersLM(tiny, dtype="float32", adapters=adapters)
    msgs = [Message(role="user", content="Q1?")]
    opts = GenerationOptions(max_new_tokens=12)
    base = lm.generate(msgs, options=opts).text
    tuned = lm.generate(msgs, options=GenerationOptions(max_new_tokens=12, adapter="ann")).text
    assert tuned != base


@pytest.mark.slow
def test_interrupted_training_resumes_from_its_checkpoint(tiny, tmp_path):
    from personalign.feedback.pairs import PreferencePair
    from personalign.feedback.train import TrainConfig, train_pairs

    pairs = [PreferencePair(f"Q{i}?", "Short.", LONG, "pairwise") for i in range(4)]
    cfg = TrainConfig(base_model=str(tiny), min_pairs=1, max_steps=2, batch_size=2, save_steps=1)
    m1 = train_pairs(pairs, base_dir=tiny, out_dir=tmp_path / "w", config=cfg)
    longer = TrainConfig(base_model=str(tiny), min_pairs=1, max_steps=3, batch_size=2, save_steps=1)
    m2 = train_pairs(pairs, base_dir=tiny, out_dir=tmp_path / "w", config=longer)
    assert m1["steps"] == 2 and m2["steps"] == 3  # continued from step 2's checkpoint
    assert (tmp_path / "w" / "final" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_ray_executor_trains_users_in_parallel(tiny, store, tmp_path, monkeypatch):
    from personalign.feedback.train import TrainConfig, train_users

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    for user in ("ray1", "ray2"):
        for i in range(2):
            record_feedback(store, events.pairwise("Short.", LONG, prompt=f"Q{i}?"), user=user)
    cfg = TrainConfig(
        base_model=str(tiny), min_pairs=2, ranked_prompts=0, max_steps=1, batch_size=2
    )
    res = train_users(
        store,
        AdapterStore(tmp_path / "ad"),
        config=cfg,
        executor="ray",
        workers=2,
        cache_dir=tmp_path / "cache",
        work_dir=tmp_path / "w",
        progress=False,
    )
    assert sorted((r.user, r.status) for r in res) == [("ray1", "trained"), ("ray2", "trained")]
    with pytest.raises(ConfigError):
        train_users(store, AdapterStore(tmp_path / "ad"), executor="dask", cache_dir=tmp_path)  # type: ignore[arg-type]


# -- HTTP service ------------------------------------------------------------------------


def test_feedback_routes_are_scoped_and_learn(tmp_path):
    import httpx

    from service_helpers import live_server

    with live_server(tmp_path) as server:
        _, acme = server.keys.create(scope="app", app="acme")
        _, other = server.keys.create(scope="app", app="globex")
        h = {"Authorization": f"Bearer {acme}"}
        with httpx.Client(base_url=server.url, headers=h, timeout=30) as c:
            r = c.post(
                "/v1/chat/completions",
                json={
                    "model": "fake-lm",
                    "user": "ann",
                    "messages": [{"role": "user", "content": "Hi"}],
                },
            )
            xid = r.json()["personalization"]["exchange_id"]
            r = c.post(
                "/v1/users/ann/feedback",
                json={"kind": "critique", "exchange_id": xid, "text": "I prefer short answers."},
            )
            assert r.status_code == 201, r.text
            assert r.json()["learned"] == ["I prefer short answers"]
            assert r.json()["feedback"]["source"] == "api"
            r = c.post(
                "/v1/users/ann/feedback",
                json={"kind": "pairwise", "prompt": "egg?", "chosen": "Short.", "rejected": LONG},
            )
            assert r.status_code == 201 and r.json()["profile"]["source"] == "feedback"
            r = c.post("/v1/users/ann/feedback", json={"kind": "rating", "exchange_id": xid})
            assert r.status_code == 422 and "scale" in r.json()["error"]["message"]
            r = c.post("/v1/users/ann/feedback", json={"kind": "bogus"})
            assert r.status_code == 422
            r = c.put("/v1/users/ann/profile", json={"weights": {"warmth": 0.9}})
            assert r.status_code == 200 and r.json()["source"] == "user"
            kinds = [f["kind"] for f in c.get("/v1/users/ann/feedback").json()]
            assert kinds == ["critique", "pairwise", "override"]
            assert (
                c.get("/v1/users/ann/feedback", params={"limit": 1}).json()[0]["kind"] == "override"
            )
        # another app sees none of it, and cannot link to ann's exchange
        h2 = {"Authorization": f"Bearer {other}"}
        with httpx.Client(base_url=server.url, headers=h2, timeout=30) as c:
            assert c.get("/v1/users/ann/feedback").json() == []
            r = c.post(
                "/v1/users/ann/feedback", json={"kind": "critique", "exchange_id": xid, "text": "x"}
            )
            assert r.status_code == 404
        assert [f.kind for f in server.personalizer.memory.store.feedback(user="acme:ann")] == [
            "critique",
            "pairwise",
            "override",
        ]
        # erasing the user deletes their trained adapters too, and only theirs
        adapters = AdapterStore.for_home(tmp_path)
        adapters.save("acme:ann", FILES, {})
        adapters.save("globex:ann", FILES, {})
        with httpx.Client(base_url=server.url, headers=h2, timeout=30) as c:
            assert c.delete("/v1/users/ann").json() == {
                "erased": "ann",
                "rows": 0,
                "adapters": 1,
            }
        assert adapters.users() == ["acme:ann"]
        with httpx.Client(base_url=server.url, headers=h, timeout=30) as c:
            r = c.delete("/v1/users/ann").json()
            assert r["adapters"] == 1 and r["rows"] > 0
        assert adapters.users() == []


# -- chat slash commands and the pipeline's adapter hook ---------------------------------


def test_chat_feedback_slash_commands(cli_env, monkeypatch):
    import personalign.backends.models as models
    from personalign.cli.main import app

    replies = ["First answer, quite a long and winding one about tea and its history.", "Tea."]
    monkeypatch.setattr(models, "load_model", lambda settings, **kw: FakeLM(replies))
    script = "\n".join(
        [
            "/good",
            "Tea or coffee?",
            "/good",
            "/bad",
            "/prefer 1",
            "/prefer",
            "/prefer 2",
            "/edit Tea, always.",
            "/quit",
        ]
    )
    r = CliRunner().invoke(app, ["chat", "-u", "hal"], input=script + "\n")
    assert r.exit_code == 0, r.output
    assert "no answer yet" in r.output and "answer 2> Tea." in r.output
    assert "/prefer first, then /prefer 1 or /prefer 2" in r.output
    r = CliRunner().invoke(app, ["feedback", "list", "-u", "hal", "--json"])
    fbs = json.loads(r.stdout)
    assert [(f["kind"], f["source"]) for f in fbs] == [
        ("rating", "chat"),
        ("rating", "chat"),
        ("pairwise", "chat"),
        ("edit", "chat"),
    ]
    assert fbs[2]["chosen"] == "Tea." and fbs[2]["rejected"].startswith("First answer")
    assert len({f["exchange_id"] for f in fbs}) == 1


@pytest.mark.slow
def test_pipeline_answers_with_the_users_adapter_and_why_says_so(tiny, tmp_path):
    from personalign.backends.models.local import TransformersLM
    from personalign.cli.chat import why_table
    from personalign.config import load_settings
    from personalign.pipeline import PersonalizeOptions, Personalizer, open_guarded_memory
    from personalign.testing import HashingEmbedder

    # coldstart.ask off: these new users would otherwise get the cold-start question in meta
    settings = load_settings(home=tmp_path, embedder="hashing", coldstart={"ask": False})
    adapters = AdapterStore.for_home(tmp_path)
    adapters.save("ivy", _random_adapter(tiny, tmp_path / "a", seed=3), {"data_hash": "h"})
    lm = TransformersLM(tiny, dtype="float32")
    pz = Personalizer.open(settings, model=lm, embedder=HashingEmbedder())
    assert pz.adapters is not None and lm.adapters is pz.adapters  # attached to the local model
    opts = PersonalizeOptions(ingest=False)
    mine = pz.respond("Hello there", user="ivy", options=opts)
    other = pz.respond("Hello there", user="joe", options=opts)
    assert mine.exchange.meta == {"adapter": "ivy@v0001"} and other.exchange.meta == {}
    assert mine.text != other.text
    assert "adapter=ivy@v0001" in str(why_table(mine).title)
    # erasing ivy's adapters deletes the files and unloads the weights
    assert pz.erase_adapters("ivy") == 1 and adapters.latest("ivy") is None
    assert lm._loaded == {}
    again = pz.respond("Hello there", user="ivy", options=opts)
    assert again.exchange.meta == {} and again.text == other.text
    pz.close()
    # a personalizer without an adapter store ignores adapters
    plain = Personalizer(open_guarded_memory(settings, HashingEmbedder()), FakeLM())
    assert plain.respond("Hi", user="ivy", options=opts).exchange.meta == {}
    plain.close()


def test_train_users_cli_ranks_with_the_reward_model_when_minilm_is_the_embedder(tmp_path):
    import pickle

    from personalign.cli.feedback import _reward_model_factory
    from personalign.config import load_settings
    from personalign.rewards.preference_rm import shipped_reward_model

    assert _reward_model_factory(load_settings(home=tmp_path, embedder="hashing")) is None
    factory = _reward_model_factory(load_settings(home=tmp_path, embedder="minilm"))
    assert factory is not None
    again = pickle.loads(pickle.dumps(factory))  # travels to pool workers and Ray tasks
    assert again.func == shipped_reward_model  # type: ignore[attr-defined]
