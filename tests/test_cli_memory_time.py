"""``memory list/search --as-of``, ``memory profile`` and ``memory prune`` as a user runs them."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from personalign.cli.main import app
from personalign.types import PreferenceIn

runner = CliRunner()


@pytest.fixture
def cli(tmp_path):
    def run(*args: str):
        return runner.invoke(app, ["--home", str(tmp_path), "--embedder", "hashing", *args])

    return run


def _mid(a: str, b: str) -> str:
    ta, tb = datetime.fromisoformat(a), datetime.fromisoformat(b)
    return (ta + (tb - ta) / 2).isoformat()


def test_list_and_search_as_of(cli):
    r = cli("memory", "add", "I'm vegetarian", "--user", "sam", "--json")
    veg = json.loads(r.stdout)
    r = cli("memory", "update", veg["id"], "I eat fish now", "--user", "sam", "--json")
    fish = json.loads(r.stdout)
    between = _mid(veg["recorded_at"], fish["recorded_at"])

    def listed(*extra: str) -> list[str]:
        r = cli("memory", "list", "--user", "sam", "--json", *extra)
        assert r.exit_code == 0, r.output
        return [m["text"] for m in json.loads(r.stdout)]

    assert listed("--as-of", between) == ["I'm vegetarian"]
    assert listed("--as-of", fish["recorded_at"]) == ["I eat fish now"]
    assert listed("--as-of", "2001-03-01") == []  # a date: the end of that day, UTC
    today = datetime.now(UTC).date().isoformat()
    assert listed("--as-of", today) == ["I eat fish now"]
    r = cli("memory", "list", "--user", "sam", "--as-of", between)
    assert "as of" in r.stdout and "vegetarian" in r.stdout

    r = cli("memory", "search", "vegetarian fish", "--user", "sam", "--json", "--as-of", between)
    assert [h["record"]["id"] for h in json.loads(r.stdout)] == [veg["id"]]

    r = cli("memory", "list", "--user", "sam", "--as-of", "1st of March")
    assert r.exit_code == 1 and "not an ISO 8601 date" in r.output
    r = cli("memory", "list", "--user", "sam", "--as-of", today, "--history")
    assert r.exit_code == 1 and "include_history" in r.output


def test_memory_profile(cli):
    cli("memory", "add", "I'm vegetarian", "--user", "sam", "--topic", "food")
    cli("memory", "add", "Keep answers under 40 words", "--user", "sam")
    cli("memory", "add", "I like window seats", "--user", "sam")
    assert cli("profile", "set", "--user", "sam", "warmth=0.9", "conciseness=0.2").exit_code == 0

    r = cli("memory", "profile", "--user", "sam", "--json", "--recent", "3")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert s["user"] == "sam" and s["preferences"] == 3
    assert {t: [i["text"] for i in items] for t, items in s["topics"].items()} == {
        "communication": ["Keep answers under 40 words"],
        "food": ["I'm vegetarian"],
        "other": ["I like window seats"],
    }
    assert s["topics"]["communication"][0]["constraints"] == ["max 39 words"]
    kinds = {c["kind"] for c in s["constraints"]}
    assert {"max_words", "avoid_words"} <= kinds
    assert s["weights"]["weights"] == {"warmth": 0.9, "conciseness": 0.2}
    # newest first; setting weights by hand is also kept as "override" feedback
    assert [c["action"] for c in s["recent_changes"]] == ["set_profile", "feedback", "add"]
    assert [c["what"] for c in s["recent_changes"][1:]] == [
        "feedback: override",
        "added: I like window seats",
    ]

    r = cli("memory", "profile", "--user", "sam")
    assert r.exit_code == 0, r.output
    for part in ("profile of sam", "food", "max 39 words", "warmth 0.90", "recent changes"):
        assert part in r.stdout, part
    # the weights command is unchanged
    assert "warmth" in cli("profile", "show", "--user", "sam").stdout

    r = cli("memory", "profile", "--user", "sam", "--json", "--as-of", "2001-01-01")
    old = json.loads(r.stdout)
    assert old["preferences"] == 0 and old["weights"] is None and old["recent_changes"] == []
    assert cli("memory", "profile", "--user", "nobody").exit_code == 1


def _episodes(home: Path, user: str, texts: list[str]) -> None:
    from personalign.backends.stores.sqlite import SQLiteStore
    from personalign.testing import HashingEmbedder

    store = SQLiteStore(home / "memory.db", HashingEmbedder())
    store.add_many([PreferenceIn(text=t, kind="episode") for t in texts], user=user)
    store.close()


def test_memory_prune(cli, tmp_path):
    cli("memory", "add", "I'm vegetarian", "--user", "sam")
    _episodes(tmp_path, "sam", [f"quokkazanzibar turn {i}" for i in range(5)])
    _episodes(tmp_path, "kim", ["kim's own wombatxylo turn"])

    r = cli("memory", "prune")
    assert r.exit_code == 1 and "turns_days" in r.output  # no period configured

    (tmp_path / "config.toml").write_text("[retention]\nturns_days = 30\n")
    r = cli("memory", "prune", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["deleted"] == 0  # every turn is recent
    before = datetime.fromisoformat(json.loads(r.stdout)["before"])
    assert abs(before - (datetime.now(UTC) - timedelta(days=30))) < timedelta(minutes=1)

    r = cli("memory", "prune", "--user", "sam", "--days", "0", "--dry-run", "--json")
    plan = json.loads(r.stdout)
    assert plan["dry_run"] and len(plan["users"]["sam"]) == 5 and plan["deleted"] == 0
    r = cli("memory", "list", "--user", "sam", "--episodes", "--json")
    assert len(json.loads(r.stdout)) == 6

    r = cli("memory", "prune", "--user", "sam", "--days", "0")
    assert r.exit_code == 0 and "deleted 5 raw turns" in r.stdout, r.output
    r = cli("memory", "list", "--user", "sam", "--episodes", "--json")
    assert [m["text"] for m in json.loads(r.stdout)] == ["I'm vegetarian"]
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("memory.db*"))
    assert b"quokkazanzibar" not in raw and b"wombatxylo" in raw

    r = cli("memory", "prune", "--days", "0")  # every user
    assert "kim: deleted 1 raw turns" in r.stdout and "2 users checked" in r.stdout
    assert cli("memory", "prune", "--days", "-1").exit_code != 0
