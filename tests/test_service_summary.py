"""``as_of`` on the list and search routes, ``GET /v1/users/{user}/summary`` and the
dashboard's summary page, against a live server on 127.0.0.1."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest

from service_helpers import LiveServer, live_server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with live_server(tmp_path_factory.mktemp("svc-summary")) as s:
        yield s


def client(server: LiveServer, key: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key or server.admin_key}"}
    return httpx.Client(base_url=server.url, headers=headers, timeout=30)


def _mid(a: str, b: str) -> str:
    ta, tb = datetime.fromisoformat(a), datetime.fromisoformat(b)
    return (ta + (tb - ta) / 2).isoformat()


def test_list_and_search_as_of(server):
    with client(server) as c:
        veg = c.post("/v1/users/sam/memories", json={"text": "I'm vegetarian"}).json()
        fish = c.put(f"/v1/users/sam/memories/{veg['id']}", json={"text": "I eat fish now"}).json()
        between = _mid(veg["recorded_at"], fish["recorded_at"])

        def listed(as_of: str) -> list[str]:
            r = c.get("/v1/users/sam/memories", params={"as_of": as_of})
            assert r.status_code == 200, r.text
            return [m["text"] for m in r.json()]

        assert listed(between) == ["I'm vegetarian"]
        assert listed(fish["recorded_at"]) == ["I eat fish now"]
        assert listed("2001-03-01") == []
        assert listed(datetime.now(UTC).date().isoformat()) == ["I eat fish now"]
        naive = datetime.fromisoformat(between).replace(tzinfo=None).isoformat()
        assert listed(naive) == ["I'm vegetarian"]  # no zone: UTC

        r = c.post("/v1/users/sam/search", params={"as_of": between}, json={"query": "fish"})
        assert [h["record"]["id"] for h in r.json()] == [veg["id"]]
        r = c.post("/v1/users/sam/search", params={"as_of": "2001-01-01"}, json={"query": "x"})
        assert r.status_code == 200 and r.json() == []


@pytest.mark.parametrize("bad", ["yesterday", "2026-13-01", "2026-03-01T25:00", " "])
def test_bad_as_of_is_a_clear_400(server, bad):
    with client(server) as c:
        c.post("/v1/users/sam/memories", json={"text": "I like tea"})
        for r in (
            c.get("/v1/users/sam/memories", params={"as_of": bad}),
            c.post("/v1/users/sam/search", params={"as_of": bad}, json={"query": "tea"}),
            c.get("/v1/users/sam/summary", params={"as_of": bad}),
        ):
            assert r.status_code == 400, r.text
            err = r.json()["error"]
            assert err["code"] == "invalid_request" and "ISO 8601" in err["message"]
        r = c.get("/v1/users/sam/memories", params={"as_of": "2026-03-01", "history": "true"})
        assert r.status_code == 400 and "include_history" in r.json()["error"]["message"]


def test_summary_route(server):
    _, acme = server.keys.create(scope="app", app="acme")
    _, tok = server.keys.create(scope="user", app="acme", user="lea")
    with client(server, acme) as c:
        first = c.post(
            "/v1/users/lea/memories", json={"text": "I'm vegetarian", "topic": "food"}
        ).json()
        c.post("/v1/users/lea/memories", json={"text": "Answer in lowercase"})
        c.put("/v1/users/lea/profile", json={"weights": {"warmth": 0.8}})
        r = c.get("/v1/users/lea/summary", params={"recent": 2})
        assert r.status_code == 200, r.text
        s = r.json()
        assert s["user"] == "lea" and s["preferences"] == 2
        assert {t: [i["text"] for i in v] for t, v in s["topics"].items()} == {
            "communication": ["Answer in lowercase"],
            "food": ["I'm vegetarian"],
        }
        assert {c["kind"] for c in s["constraints"]} == {"lowercase", "avoid_words"}
        assert s["weights"]["weights"] == {"warmth": 0.8}
        assert len(s["recent_changes"]) == 2 and s["recent_changes"][0]["action"] == "set_profile"

        old = c.get("/v1/users/lea/summary", params={"as_of": first["recorded_at"]}).json()
        assert [i["text"] for v in old["topics"].values() for i in v] == ["I'm vegetarian"]
        assert old["weights"] is None and old["as_of"] is not None
        assert c.get("/v1/users/lea/summary", params={"recent": -1}).status_code == 422

    with client(server, tok) as t:  # the user's own token: their summary only
        assert t.get("/v1/users/lea/summary").json()["preferences"] == 2
        assert t.get("/v1/users/sam/summary").status_code == 403
    _, globex = server.keys.create(scope="app", app="globex")
    with client(server, globex) as g:  # another app sees no such user
        assert g.get("/v1/users/lea/summary").json()["preferences"] == 0
    assert httpx.get(server.url + "/v1/users/lea/summary").status_code == 401


def _topics(html: str) -> list[str]:
    """The preference texts of the summary page's topics section."""
    section = html.split('id="topics"', 1)[1].split("</section>", 1)[0]
    return [part.split("</span>", 1)[0] for part in section.split('<span class="text">')[1:]]


def test_dashboard_summary_page(server):
    _, tok = server.keys.create(scope="user", app="web", user="ana")
    with client(server) as c:
        veg = c.post("/v1/users/web:ana/memories", json={"text": "I'm vegetarian"}).json()
        c.put(f"/v1/users/web:ana/memories/{veg['id']}", json={"text": "I eat fish now"})
    with httpx.Client(base_url=server.url, timeout=30) as b:
        r = b.get("/ui/summary", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/ui/login"
        b.post("/ui/login", data={"key": tok})
        assert 'id="as-of-form"' in b.get("/ui").text  # the date picker on the dashboard
        now = b.get("/ui/summary").text
        assert _topics(now) == ["I eat fish now"]
        assert 'type="date"' in now and "changed: I&#39;m vegetarian → I eat fish now" in now
        then = b.get("/ui/summary", params={"as_of": veg["recorded_at"]}).text
        assert _topics(then) == ["I&#39;m vegetarian"]
        assert b.get("/ui/summary", params={"as_of": "2001-01-01"}).text.count("No preferences")
        bad = b.get("/ui/summary", params={"as_of": "soon"})
        assert bad.status_code == 400 and "not an ISO 8601 date" in bad.text
