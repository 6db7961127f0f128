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
    ):
        assert _modules_after(args, home, "minilm") == set(), args
