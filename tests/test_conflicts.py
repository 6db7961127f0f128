"""Conflicting preferences: stored (SQLite and PostgreSQL), decided by reconciliation on real
pairs, resolved by the user (store, CLI, API, dashboard), and held back while open."""

from __future__ import annotations

import json
import sqlite3

import pytest

from personalign.errors import ConflictError, NotFoundError, ValidationError

# -- the store (every backend) --------------------------------------------------------------


def _pair(store, user="al"):  # type: ignore[no-untyped-def]
    older = store.add("I love spicy food", user=user)
    newer = store.add("I can't handle spicy food", user=user)
    return older, newer


def test_conflict_is_stored_listed_and_logged(store) -> None:  # type: ignore[no-untyped-def]
    older, newer = _pair(store)
    c = store.add_conflict(older.id, newer.id, user="al", score=0.78, reason="test")
    assert (c.older_id, c.newer_id, c.status, c.resolution) == (older.id, newer.id, "open", None)
    assert (c.older_text, c.newer_text) == (older.text, newer.text)
    assert [x.id for x in store.conflicts(user="al")] == [c.id]
    assert store.get_conflict(c.id, user="al") == c
    ev = store.events(user="al")[-1]
    assert ev.action == "conflict" and ev.record_id == newer.id
    assert ev.payload["conflict_id"] == c.id and ev.payload["older_text"] == older.text
    assert {m.id for m in store.list(user="al")} == {older.id, newer.id}  # both stay active


def test_resolve_keep_one_supersedes_the_other_into_history(store) -> None:  # type: ignore[no-untyped-def]
    older, newer = _pair(store)
    c = store.add_conflict(older.id, newer.id, user="al")
    done = store.resolve_conflict(c.id, user="al", keep=newer.id, reason="I changed")
    assert (done.status, done.resolution, done.resolved_by) == ("resolved", "newer", "user")
    assert done.kept_ids == [newer.id]
    gone = store.get(older.id, user="al")
    assert not gone.active and gone.superseded_by == newer.id and gone.text == older.text
    assert [m.id for m in store.list(user="al")] == [newer.id]
    assert older.id in {m.id for m in store.list(user="al", include_history=True)}
    assert store.conflicts(user="al") == []
    assert [x.status for x in store.conflicts(user="al", include_closed=True)] == ["resolved"]
    ev = store.events(user="al")[-1]
    assert ev.action == "resolve_conflict" and ev.payload["superseded"] == older.id
    with pytest.raises(ConflictError, match="resolved"):
        store.resolve_conflict(c.id, user="al", keep=None)


def test_resolve_both_keeps_both_active(store) -> None:  # type: ignore[no-untyped-def]
    older, newer = _pair(store)
    c = store.add_conflict(older.id, newer.id, user="al")
    done = store.resolve_conflict(c.id, user="al", keep=None)
    assert done.resolution == "both" and done.kept_ids == [older.id, newer.id]
    assert {m.id for m in store.list(user="al")} == {older.id, newer.id}


def test_keep_older_supersedes_the_newer(store) -> None:  # type: ignore[no-untyped-def]
    older, newer = _pair(store)
    c = store.add_conflict(older.id, newer.id, user="al")
    assert store.resolve_conflict(c.id, user="al", keep=older.id).resolution == "older"
    assert store.get(newer.id, user="al").superseded_by == older.id
    assert [m.id for m in store.list(user="al")] == [older.id]


def test_bad_conflict_requests_get_clear_errors(store) -> None:  # type: ignore[no-untyped-def]
    older, newer = _pair(store)
    other = store.add("I like jazz", user="al")
    c = store.add_conflict(older.id, newer.id, user="al")
    with pytest.raises(ValidationError, match="two sides"):
        store.resolve_conflict(c.id, user="al", keep=other.id)
    with pytest.raises(ValidationError, match="bad conflict id"):
        store.resolve_conflict("nope", user="al", keep=None)
    with pytest.raises(NotFoundError):
        store.resolve_conflict("0" * 32, user="al", keep=None)
    with pytest.raises(NotFoundError):  # another user's conflict looks missing
        store.get_conflict(c.id, user="bo")
    with pytest.raises(ValidationError, match="two different"):
        store.add_conflict(older.id, older.id, user="al")
    with pytest.raises(NotFoundError):
        store.add_conflict(older.id, "f" * 32, user="al")
    assert store.get_conflict(c.id, user="al").status == "open"  # nothing changed


def test_a_side_changed_since_makes_the_conflict_moot(store) -> None:  # type: ignore[no-untyped-def]
    older, newer = _pair(store)
    c = store.add_conflict(older.id, newer.id, user="al")
    store.forget(older.id, user="al")
    assert store.conflicts(user="al") == []
    assert store.get_conflict(c.id, user="al").status == "moot"
    with pytest.raises(ConflictError, match="moot"):
        store.resolve_conflict(c.id, user="al", keep=newer.id)
    with pytest.raises(ConflictError, match="not active"):
        store.add_conflict(older.id, newer.id, user="al")


def test_conflicts_are_exported_and_erased_with_the_user(store) -> None:  # type: ignore[no-untyped-def]
    older, newer = _pair(store)
    c = store.add_conflict(older.id, newer.id, user="al")
    o2, n2 = _pair(store, user="bo")
    store.add_conflict(o2.id, n2.id, user="bo")
    assert [x["id"] for x in store.export(user="al")["conflicts"]] == [c.id]
    store.erase_user(user="al")
    assert store.conflicts(user="al", include_closed=True) == []
    assert len(store.conflicts(user="bo")) == 1


def test_conflicts_table_is_added_to_an_existing_database(store_factory, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A database created before conflicts existed gains the table, its memories intact."""
    from personalign.backends.stores import postgres_migrations, sqlite, sqlite_migrations

    monkeypatch.setattr(sqlite, "MIGRATIONS", sqlite_migrations.MIGRATIONS[:6])
    try:
        from personalign.backends.stores import postgres

        monkeypatch.setattr(postgres, "MIGRATIONS", postgres_migrations.MIGRATIONS[:7])
    except ImportError:  # no psycopg: only SQLite runs
        pass
    old = store_factory()
    older, newer = _pair(old)
    with pytest.raises(Exception, match="conflicts"):  # no table yet
        old.conflicts(user="al")
    old.close()
    monkeypatch.undo()
    new = store_factory()
    try:
        assert {m.id for m in new.list(user="al")} == {older.id, newer.id}
        c = new.add_conflict(older.id, newer.id, user="al")
        assert new.resolve_conflict(c.id, user="al", keep=newer.id).status == "resolved"
    finally:
        new.close()


def test_sqlite_refuses_to_reopen_a_resolved_conflict(tmp_path, embedder) -> None:  # type: ignore[no-untyped-def]
    from personalign.backends.stores.sqlite import SQLiteStore

    store = SQLiteStore(tmp_path / "m.db", embedder)
    older, newer = _pair(store)
    c = store.add_conflict(older.id, newer.id, user="al")
    store.resolve_conflict(c.id, user="al", keep=None)
    o2, n2 = _pair(store, user="bo")
    open_one = store.add_conflict(o2.id, n2.id, user="bo")
    store.close()
    conn = sqlite3.connect(tmp_path / "m.db")
    with pytest.raises(sqlite3.DatabaseError, match="stays resolved"):
        conn.execute("UPDATE conflicts SET resolution = NULL WHERE id = ?", (c.id,))
    with pytest.raises(sqlite3.DatabaseError, match="names its two memories"):
        conn.execute("UPDATE conflicts SET older_id = 'x' WHERE id = ?", (open_one.id,))
    conn.close()


# -- the CLI and the API (fast: the conflict is stored directly) ------------------------------


def test_cli_lists_and_resolves_conflicts(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from personalign.cli.main import app
    from personalign.config import load_settings
    from personalign.pipeline import open_guarded_memory
    from personalign.testing import HashingEmbedder

    mem = open_guarded_memory(load_settings(home=tmp_path, embedder="hashing"), HashingEmbedder())
    older, newer = _pair(mem.store, user="cy")
    c = mem.store.add_conflict(older.id, newer.id, user="cy")
    mem.close()

    def cli(*args: str):  # type: ignore[no-untyped-def]
        return CliRunner().invoke(app, ["--home", str(tmp_path), "--embedder", "hashing", *args])

    r = cli("memory", "list", "--user", "cy")
    assert r.exit_code == 0 and "open conflicts of cy (1)" in r.stdout and c.id in r.stdout
    r = cli("memory", "conflicts", "--user", "cy", "--json")
    assert [x["id"] for x in json.loads(r.stdout)] == [c.id]
    r = cli("memory", "resolve", c.id, "--user", "cy")
    assert r.exit_code == 1 and "exactly one of --keep" in r.output
    r = cli("memory", "resolve", c.id, "--user", "cy", "--keep", "f" * 32)
    assert r.exit_code == 1 and "two sides" in r.output
    r = cli("memory", "resolve", c.id, "--user", "cy", "--keep", newer.id)
    assert r.exit_code == 0 and f"{older.id} superseded" in r.stdout
    r = cli("memory", "list", "--user", "cy", "--json")
    assert [m["id"] for m in json.loads(r.stdout)] == [newer.id]
    r = cli("memory", "conflicts", "--user", "cy", "--all", "--json")
    assert json.loads(r.stdout)[0]["resolution"] == "newer"
    assert "open conflicts" not in cli("memory", "list", "--user", "cy").stdout


def test_api_lists_and_resolves_conflicts_within_the_keys_scope(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import httpx

    from service_helpers import live_server

    with live_server(tmp_path) as srv:
        _, app_key = srv.keys.create(scope="app", app="shop", name="t")
        _, other_key = srv.keys.create(scope="app", app="other", name="t")
        store = srv.personalizer.memory.store
        older, newer = _pair(store, user="shop:dee")
        c = store.add_conflict(older.id, newer.id, user="shop:dee")
        h = {"Authorization": f"Bearer {app_key}"}
        with httpx.Client(base_url=srv.url, headers=h) as cl:
            got = cl.get("/v1/users/dee/conflicts").json()
            assert [x["id"] for x in got] == [c.id] and got[0]["status"] == "open"
            r = cl.post(f"/v1/users/dee/conflicts/{c.id}/resolve", json={})
            assert r.status_code == 422 and "exactly one" in r.json()["error"]["message"]
            r = cl.post(f"/v1/users/dee/conflicts/{c.id}/resolve", json={"keep": "x" * 32})
            assert r.status_code == 400
            # another app's key cannot see or resolve it
            oh = {"Authorization": f"Bearer {other_key}"}
            assert cl.get("/v1/users/dee/conflicts", headers=oh).json() == []
            r = cl.post(f"/v1/users/dee/conflicts/{c.id}/resolve", json={"both": True}, headers=oh)
            assert r.status_code == 404
            r = cl.post(f"/v1/users/dee/conflicts/{c.id}/resolve", json={"keep": older.id})
            assert r.status_code == 200 and r.json()["resolution"] == "older"
            r = cl.post(f"/v1/users/dee/conflicts/{c.id}/resolve", json={"both": True})
            assert r.status_code == 409
            assert cl.get("/v1/users/dee/conflicts").json() == []
            assert cl.get("/v1/users/dee/conflicts?all=true").json()[0]["resolution"] == "older"
            mems = cl.get("/v1/users/dee/memories").json()
            assert [m["id"] for m in mems] == [older.id] and mems[0]["context"] is None


def test_dashboard_shows_open_conflicts_and_resolves_them(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import httpx

    from service_helpers import live_server

    with live_server(tmp_path) as srv:
        _, token = srv.keys.create(scope="user", app="web", user="eve", name="t")
        store = srv.personalizer.memory.store
        older, newer = _pair(store, user="web:eve")
        c = store.add_conflict(older.id, newer.id, user="web:eve")
        store.add("When I cook for my kids, nothing spicy.", user="web:eve")
        with httpx.Client(base_url=srv.url, cookies={"pal_key": token}) as cl:
            page = cl.get("/ui").text
            assert 'id="conflicts"' in page and f'data-id="{c.id}"' in page
            assert "only when: cook for my kids" in page
            csrf = page.split('name="csrf" value="')[1].split('"')[0]
            r = cl.post(f"/ui/conflicts/{c.id}/resolve", data={"csrf": "bad", "keep": "both"})
            assert r.status_code == 303  # a forged form is sent to the login page
            assert store.get_conflict(c.id, user="web:eve").status == "open"
            r = cl.post(f"/ui/conflicts/{c.id}/resolve", data={"csrf": csrf, "keep": "both"})
            assert r.status_code == 200 and "resolved: both kept" in r.text
            assert 'id="conflicts"' not in r.text
            r = cl.post(f"/ui/conflicts/{c.id}/resolve", data={"csrf": csrf, "keep": "both"})
            assert r.status_code == 400 and "nothing to resolve" in r.text
        assert store.get_conflict(c.id, user="web:eve").resolution == "both"
