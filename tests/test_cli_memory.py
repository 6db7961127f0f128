"""The memory commands, as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from personalign.cli.main import app

runner = CliRunner()


@pytest.fixture
def cli(tmp_path):
    def run(*args: str, stdin: str | None = None):
        return runner.invoke(
            app, ["--home", str(tmp_path), "--embedder", "hashing", *args], input=stdin
        )

    return run


def test_add_list_search_update_forget_history_export_erase(cli, tmp_path):
    r = cli("memory", "add", "I am vegetarian", "--user", "alice", "--json")
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout)
    assert rec["text"] == "I am vegetarian" and rec["user_id"] == "alice"
    cli("memory", "add", "I like window seats on planes", "--user", "alice")
    cli("memory", "add", "bob's own preference", "--user", "bob")

    r = cli("memory", "list", "--user", "alice", "--json")
    assert {m["text"] for m in json.loads(r.stdout)} == {
        "I am vegetarian",
        "I like window seats on planes",
    }
    r = cli("memory", "list", "--user", "alice")
    assert r.exit_code == 0 and "vegetarian" in r.stdout and "memories of alice" in r.stdout

    r = cli("memory", "search", "vegetarian dinner", "--user", "alice", "-k", "1", "--json")
    hits = json.loads(r.stdout)
    assert hits[0]["record"]["id"] == rec["id"] and "bm25" in hits[0]["matched"]
    assert "score" in cli("memory", "search", "dinner", "--user", "alice").stdout

    r = cli("memory", "update", rec["id"], "I eat fish now", "--user", "alice", "--json")
    assert r.exit_code == 0, r.output
    new = json.loads(r.stdout)
    r = cli("memory", "history", new["id"], "--user", "alice", "--json")
    assert [v["text"] for v in json.loads(r.stdout)] == ["I am vegetarian", "I eat fish now"]

    assert cli("memory", "forget", new["id"], "--user", "alice").exit_code == 0
    r = cli("memory", "list", "--user", "alice", "--json")
    assert [m["text"] for m in json.loads(r.stdout)] == ["I like window seats on planes"]

    out = tmp_path / "alice.json"
    assert cli("memory", "export", "--user", "alice", "-o", str(out)).exit_code == 0
    data = json.loads(out.read_text())
    assert len(data["memories"]) == 3 and data["events"]

    r = cli("memory", "erase", "--user", "alice", "--yes")
    assert r.exit_code == 0
    r = cli("memory", "list", "--user", "alice")
    assert r.exit_code == 1 and "unknown user" in r.output
    assert cli("memory", "list", "--user", "bob").exit_code == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["memory", "list", "--user", "ghost"], "unknown user 'ghost'"),
        (["memory", "add", "   ", "--user", "alice"], "memory text is empty"),
        (["memory", "add", "x" * 5000, "--user", "alice"], "limit is 4000"),
        (["memory", "add", "hi", "--user", "bad user"], "invalid user id"),
        (["memory", "add", "hi", "--user", "a", "--kind", "weird"], "explicit or implicit"),
        (["memory", "forget", "nope", "--user", "alice"], "bad memory id"),
        (["memory", "forget", "0" * 32, "--user", "alice"], "no memory"),
    ],
)
def test_bad_input_gives_one_line_error(cli, args, message):
    cli("memory", "add", "seed", "--user", "alice")
    r = cli(*args)
    assert r.exit_code == 1, r.output
    assert message in r.output
    assert "Traceback" not in r.output
    assert r.output.strip().count("\n") == 0


def test_erase_deletes_the_users_adapters_too(cli, tmp_path):
    from personalign.feedback.adapters import AdapterStore

    files = {"adapter_model.safetensors": b"w", "adapter_config.json": b"{}"}
    adapters = AdapterStore.for_home(tmp_path)
    adapters.save("alice", files, {})
    adapters.save("alice", files, {})
    adapters.save("bob", files, {})
    r = cli("memory", "erase", "--user", "alice", "--yes")  # no memories, but adapters
    assert r.exit_code == 0, r.output
    assert "0 rows deleted, 2 adapter versions deleted" in r.output
    assert adapters.users() == ["bob"]
    assert cli("memory", "erase", "--user", "alice", "--yes").exit_code == 1  # unknown now


def test_erase_asks_for_confirmation(cli):
    cli("memory", "add", "keep me", "--user", "alice")
    r = cli("memory", "erase", "--user", "alice", stdin="n\n")
    assert r.exit_code == 1
    assert cli("memory", "list", "--user", "alice").exit_code == 0


def _modules_after(args: list[str], home: str, embedder: str) -> set[str]:
    code = (
        "import sys\n"
        "from personalign.cli.main import app\n"
        "try:\n"
        f"    app({args!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('MODULES=' + ','.join(m for m in ('torch', 'transformers', 'sentence_transformers')"
        " if m in sys.modules))\n"
    )
    env = {**os.environ, "PERSONALIGN_HOME": home, "PERSONALIGN_EMBEDDER": embedder}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    ).stdout
    line = [ln for ln in out.splitlines() if ln.startswith("MODULES=")][-1]
    return {m for m in line.removeprefix("MODULES=").split(",") if m}


def test_help_does_not_import_torch(tmp_path):
    assert _modules_after(["--help"], str(tmp_path), "hashing") == set()


@pytest.mark.slow
def test_memory_commands_do_not_import_torch_with_the_real_embedder(tmp_path):
    home = str(tmp_path)
    # first use prepares the embedder's cache; what counts is every later command
    _modules_after(["memory", "add", "warm up", "--user", "alice"], home, "minilm")
    for args in (
        ["memory", "add", "I am vegetarian", "--user", "alice"],
        ["memory", "search", "food", "--user", "alice"],
        ["memory", "list", "--user", "alice"],
        ["memory", "list", "--user", "alice", "--as-of", "2026-03-01"],
        ["memory", "profile", "--user", "alice"],
        ["memory", "prune", "--days", "30"],
    ):
        assert _modules_after(args, home, "minilm") == set(), args


# -- constraints --------------------------------------------------------------------------------

STYLE = "From now on answer me in lowercase, under 50 words"


@pytest.fixture
def wide(monkeypatch):
    """Tables as wide as their rows, so that the test reads whole cells."""
    from personalign.cli import _common

    monkeypatch.setattr(_common.out, "width", 220)


def _events(tmp_path, user: str) -> list:
    from personalign.config import load_settings
    from personalign.memory import open_memory

    mem = open_memory(load_settings(home=tmp_path, embedder="hashing"))
    try:
        return mem.events(user=user)
    finally:
        mem.close()


def test_list_shows_each_preferences_constraints(cli, tmp_path, wide):
    from personalign.config import load_settings
    from personalign.memory import open_memory

    assert cli("memory", "add", STYLE, "--user", "cara").exit_code == 0
    cli("memory", "add", "I like jazz", "--user", "cara")
    # a record stored without the guard has no compiled constraints
    plain = open_memory(load_settings(home=tmp_path, embedder="hashing"))
    plain.add("I am allergic to peanuts", user="cara")
    plain.close()

    r = cli("memory", "list", "--user", "cara")
    assert r.exit_code == 0, r.output
    rows = {
        ln.split("│")[3].strip(): ln.split("│")[4].strip() for ln in r.stdout.splitlines()[4:-1]
    }
    assert rows[STYLE] == "lowercase; max 49 words"
    assert rows["I like jazz"] == "-"
    assert rows["I am allergic to peanuts"] == "avoid peanut, peanuts (not compiled yet)"


def test_constraints_show_drop_set_clear_make_new_versions(cli, tmp_path, wide):
    rec = json.loads(cli("memory", "add", STYLE, "--user", "cara", "--json").stdout)

    r = cli("memory", "constraints", rec["id"], "--user", "cara")
    assert r.exit_code == 0, r.output
    assert "Write the whole answer in lowercase letters only." in r.stdout
    assert "Keep the answer under 50 words." in r.stdout
    shown = json.loads(cli("memory", "constraints", rec["id"], "--user", "cara", "--json").stdout)
    assert [c["kind"] for c in shown["constraints"]] == ["lowercase", "max_words"]
    assert shown["edited"] is False and shown["compiled"] is True

    # drop one: a new version, same text, the old one in history with its constraints
    r = cli("memory", "constraints", rec["id"], "--user", "cara", "--drop", "lowercase", "--json")
    assert r.exit_code == 0, r.output
    v2 = json.loads(r.stdout)
    assert v2["changed"] and v2["previous_id"] == rec["id"] and v2["edited"]
    assert [(c["kind"], c["value"]) for c in v2["constraints"]] == [("max_words", 49)]
    hist = json.loads(cli("memory", "history", v2["memory_id"], "--user", "cara", "--json").stdout)
    assert [h["id"] for h in hist] == [rec["id"], v2["memory_id"]]
    assert {h["text"] for h in hist} == {STYLE}
    assert [c["kind"] for c in hist[0]["meta"]["constraints"]["items"]] == [
        "lowercase",
        "max_words",
    ]
    assert hist[1]["meta"]["constraints"]["edited"] is True

    # set: replace the limit, add a case (repeatable); the human output says what changed
    r = cli(
        "memory", "constraints", v2["memory_id"], "--user", "cara",
        "--set", "max_words=40", "--set", "uppercase",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "set max_words=40 (was max 49 words); set uppercase" in r.stdout
    assert "Keep the answer under 41 words." in r.stdout
    active = json.loads(cli("memory", "list", "--user", "cara", "--json").stdout)
    assert len(active) == 1
    v3 = active[0]
    assert [(c["kind"], c["value"]) for c in v3["meta"]["constraints"]["items"]] == [
        ("max_words", 40),
        ("uppercase", None),
    ]
    # the same again changes nothing and writes nothing
    r = cli("memory", "constraints", v3["id"], "--user", "cara", "--set", "uppercase")
    assert r.exit_code == 0 and "nothing to change" in r.stdout

    # clear: the preference stays as text, no constraint applies
    r = cli("memory", "constraints", v3["id"], "--user", "cara", "--clear", "--json")
    v4 = json.loads(r.stdout)
    assert v4["constraints"] == [] and v4["edited"] and v4["text"] == STYLE
    hist = json.loads(cli("memory", "history", v4["memory_id"], "--user", "cara", "--json").stdout)
    assert len(hist) == 4
    reasons = [e.reason for e in _events(tmp_path, "cara") if e.action == "supersede"]
    assert reasons == [
        "constraints edited: dropped lowercase",
        "constraints edited: set max_words=40 (was max 49 words); set uppercase",
        "constraints edited: cleared",
    ]
    assert cli("memory", "list", "--user", "cara").stdout.count("none (edited)") == 1

    from personalign.config import load_settings
    from personalign.pipeline import Personalizer, open_guarded_memory
    from personalign.testing import FakeLM

    p = Personalizer(
        open_guarded_memory(load_settings(home=tmp_path, embedder="hashing")), FakeLM(name="x")
    )
    try:
        constraints, _, used = p.constraints_for("cara")
        assert not constraints and used == []
    finally:
        p.close()


def test_constraints_of_an_uncompiled_record_are_stored_at_the_first_edit(cli, tmp_path, wide):
    from personalign.config import load_settings
    from personalign.memory import open_memory

    plain = open_memory(load_settings(home=tmp_path, embedder="hashing"))
    rec = plain.add("I am allergic to peanuts", user="dan")
    plain.close()
    r = cli("memory", "constraints", rec.id, "--user", "dan")
    assert (
        "not compiled yet" in r.stdout and "Never mention or suggest: peanut, peanuts" in r.stdout
    )
    r = cli("memory", "constraints", rec.id, "--user", "dan", "--set", "language=French", "--json")
    new = json.loads(r.stdout)
    assert [(c["kind"], c["value"]) for c in new["constraints"]] == [
        ("avoid_words", ["peanut", "peanuts"]),
        ("language", "fr"),
    ]
    assert new["compiled"] and new["edited"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (["--set", "shouty"], "unknown constraint kind 'shouty'; valid kinds: lowercase, upper"),
        (["--drop", "nope"], "valid kinds: lowercase, uppercase, no_commas, max_words"),
        (["--set", "max_words=abc"], "bad value 'abc' for max_words: a whole number is needed"),
        (["--set", "max_words=0"], "must be between 1 and 10000"),
        (["--set", "lowercase=yes"], "lowercase: it takes no value"),
        (["--set", "language=klingon"], "unknown language"),
        (["--set", "end_phrase="], "a non-empty phrase is needed"),
        (["--drop", "title"], "this preference has no title constraint (it has: lowercase"),
        (["--clear", "--drop", "lowercase"], "do not combine it with --drop"),
    ],
)
def test_bad_constraint_edits_are_clear_errors_and_store_nothing(cli, tmp_path, edit, message):
    rec = json.loads(cli("memory", "add", STYLE, "--user", "cara", "--json").stdout)
    before = _events(tmp_path, "cara")
    r = cli("memory", "constraints", rec["id"], "--user", "cara", "--set", "max_words=10", *edit)
    assert r.exit_code == 1, r.output
    assert message in r.output
    assert "Traceback" not in r.output and r.output.strip().count("\n") == 0
    assert _events(tmp_path, "cara") == before
    hist = json.loads(cli("memory", "history", rec["id"], "--user", "cara", "--json").stdout)
    assert [h["id"] for h in hist] == [rec["id"]]


def test_constraints_of_an_old_version_are_shown_but_not_edited(cli):
    rec = json.loads(cli("memory", "add", STYLE, "--user", "cara", "--json").stdout)
    cli("memory", "constraints", rec["id"], "--user", "cara", "--drop", "lowercase")
    r = cli("memory", "constraints", rec["id"], "--user", "cara")
    assert r.exit_code == 0 and "lowercase" in r.stdout
    r = cli("memory", "constraints", rec["id"], "--user", "cara", "--drop", "max_words")
    assert r.exit_code == 1 and "not active" in r.output


def test_a_flagged_preference_stays_flagged_after_a_constraints_edit(cli, tmp_path, wide):
    from personalign.config import load_settings
    from personalign.memory import open_memory
    from personalign.types import PreferenceIn

    plain = open_memory(load_settings(home=tmp_path, embedder="hashing"))
    rec = plain.add(PreferenceIn(text=STYLE, flags=["injection"]), user="eve")
    plain.close()
    assert "(not applied: flagged as injection)" in cli("memory", "list", "--user", "eve").stdout
    r = cli("memory", "constraints", rec.id, "--user", "eve", "--drop", "max_words", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["applied"] is False
    active = json.loads(cli("memory", "list", "--user", "eve", "--json").stdout)
    assert active[0]["flags"] == ["injection"]
