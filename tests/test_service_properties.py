"""Property-based isolation and schema fuzzing of the HTTP API (in-process ASGI)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from personalign.config import load_settings
from personalign.pipeline import Personalizer, open_guarded_memory
from personalign.service.app import create_app
from personalign.service.keys import KeyStore
from personalign.testing import CueExtractor, FakeLM, HashingEmbedder

USERS = ["u1", "u2", "u3"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    home = tmp_path_factory.mktemp("props")
    personalizer = Personalizer(
        open_guarded_memory(
            load_settings(home=home, embedder="hashing"),
            HashingEmbedder(),
            extractor=CueExtractor(),
        ),
        FakeLM(name="fake-lm"),
    )
    keys = KeyStore(home / "keys.db")
    _, admin = keys.create(scope="admin")
    tokens = {u: keys.create(scope="user", app="app", user=u)[1] for u in USERS}
    _, app_key = keys.create(scope="app", app="app")
    with TestClient(create_app(personalizer, keys)) as c:
        yield c, tokens, app_key, admin
    personalizer.close()


def _h(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


op = st.tuples(
    st.sampled_from(["add", "list", "search", "forget", "update", "history", "export"]),
    st.sampled_from(USERS),  # acting user (their token)
    st.sampled_from(USERS),  # target user in the path
    st.integers(0, 50),
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=st.lists(op, min_size=1, max_size=12))
def test_no_sequence_of_calls_leaks_another_users_data(env, ops):
    c, tokens, _, _ = env
    mine: dict[str, list[str]] = {u: [] for u in USERS}
    for verb, actor, target, n in ops:
        h = _h(tokens[actor])
        text = f"secret-of-{actor}-{n}"
        if verb == "add":
            r = c.post(f"/v1/users/{target}/memories", json={"text": text}, headers=h)
            if target == actor:
                assert r.status_code == 201
                mine[actor].append(r.json()["id"])
            else:
                assert r.status_code == 403
            continue
        # id-based verbs try ids of every user
        ids = [i for u in USERS for i in mine[u]]
        rid = ids[n % len(ids)] if ids else "0" * 32
        if verb == "list":
            r = c.get(f"/v1/users/{target}/memories?history=true", headers=h)
        elif verb == "search":
            r = c.post(f"/v1/users/{target}/search", json={"query": "secret of"}, headers=h)
        elif verb == "forget":
            r = c.delete(f"/v1/users/{target}/memories/{rid}", headers=h)
        elif verb == "update":
            r = c.put(f"/v1/users/{target}/memories/{rid}", json={"text": text}, headers=h)
        elif verb == "history":
            r = c.get(f"/v1/users/{target}/memories/{rid}/history", headers=h)
        else:
            r = c.get(f"/v1/users/{target}/export", headers=h)
        if target != actor:
            assert r.status_code == 403, (verb, r.text)
            continue
        assert r.status_code < 500
        body = r.text
        for other in USERS:
            if other != actor:
                assert f"secret-of-{other}-" not in body, (verb, body)
                for other_id in mine[other]:
                    assert other_id not in body or r.status_code == 404


def test_app_key_sees_only_its_namespace(env):
    c, _tokens, app_key, admin = env
    c.post("/v1/users/zed/memories", json={"text": "admin-space zed"}, headers=_h(admin))
    r = c.get("/v1/users", headers=_h(app_key))
    assert all(u.startswith("app:") for u in r.json()["users"])
    assert "zed" in c.get("/v1/users", headers=_h(admin)).json()["users"]


def test_schemathesis_finds_no_server_errors(env):
    import schemathesis

    c, _, _, admin = env
    schema = schemathesis.openapi.from_asgi("/openapi.json", c.app)
    failures = []
    calls = []
    for op_ in schema.get_all_operations():
        _fuzz(op_.ok(), admin, failures, calls)
    assert failures == []
    assert len(calls) > 100  # the fuzzer really ran
    assert any(code < 300 for code in calls)


def _fuzz(operation, admin: str, failures: list, calls: list) -> None:  # type: ignore[no-untyped-def]
    @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy())
    def run(case):  # type: ignore[no-untyped-def]
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {admin}"}
        response = case.call()
        calls.append(response.status_code)
        if response.status_code >= 500:
            failures.append((operation.label, response.status_code, response.text[:200]))

    run()
