"""``personalign ask``, ``chat`` and ``logs`` as a user runs them (fake model, fake embedder)."""

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
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("PERSONALIGN_HOME", str(tmp_path))
    monkeypatch.setenv("PERSONALIGN_MODEL", "fake")
    monkeypatch.setenv("PERSONALIGN_EMBEDDER", "hashing")
    return tmp_path


def test_ask_json_reports_preferences_method_model_latency(env):
    r = runner.invoke(
        app, ["memory", "add", "I am vegetarian and never eat meat", "-u", "sam", "--json"]
    )
    pref = json.loads(r.stdout)
    r = runner.invoke(
        app, ["ask", "-u", "sam", "Suggest a vegetarian dinner without meat", "--json"]
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    # "never eat meat" compiles to an avoid-words constraint: the reply is repaired to pass it
    assert out["answer"] == "echo: Suggest a vegetarian dinner"
    (avoid,) = out["constraints"]
    assert avoid["kind"] == "avoid_words" and "meat" in avoid["value"]
    assert avoid["passed"] and not avoid["passed_as_generated"] and out["repaired"]
    assert avoid["source_ids"] == [pref["id"]]
    assert [(p["id"], p["text"]) for p in out["preferences"]] == [(pref["id"], pref["text"])]
    assert out["method"] == "best_of_n" and out["model"] == "fake-lm"  # the default
    assert out["latency_ms"] > 0 and out["exchange_id"]

    r = runner.invoke(
        app, ["ask", "-u", "sam", "Suggest a vegetarian dinner", "--method", "plain", "--json"]
    )
    assert json.loads(r.stdout)["preferences"] == []

    r = runner.invoke(app, ["logs", "-u", "sam", "--json"])
    logs = json.loads(r.stdout)
    assert [x["method"] for x in logs] == ["best_of_n", "plain"]
    assert "vegetarian" in logs[0]["messages"][0]["content"]
    r = runner.invoke(app, ["logs", "-u", "sam"])
    assert r.exit_code == 0 and "exchanges of sam (2)" in r.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ask", "-u", "sam", "   "], "message is empty"),
        (["ask", "-u", "sam", "hi", "--method", "magic"], "method must be one of"),
        (["logs", "-u", "ghost"], "unknown user 'ghost'"),
    ],
)
def test_bad_input(env, args, message):
    r = runner.invoke(app, args)
    assert r.exit_code == 1
    assert message in r.output and "Traceback" not in r.output


def test_chat_session_with_slash_commands(env):
    runner.invoke(app, ["memory", "add", "I prefer tea over coffee", "-u", "sam"])
    script = "\n".join(
        [
            "/why",
            "Should I have tea or coffee? I prefer tea",
            "/why",
            "/memory",
            "/forget nonsense",
            "/bogus",
            "/quit",
        ]
    )
    envs = {
        **os.environ,
        "PERSONALIGN_HOME": str(env),
        "PERSONALIGN_MODEL": "fake",
        "PERSONALIGN_EMBEDDER": "hashing",
        "COLUMNS": "200",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "personalign.cli.main", "chat", "-u", "sam"],
        input=script,
        capture_output=True,
        text=True,
        env=envs,
        timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "no answer yet" in out
    assert "assistant> echo: Should I have tea or coffee? I prefer tea" in out
    assert "method=best_of_n" in out and "I prefer tea over coffee" in out
    assert "bad memory id" in out
    assert "unknown command /bogus" in out
