"""Settings precedence: flags (arguments) > PERSONALIGN_* environment > config file > defaults,
for top-level and nested keys alike."""

from __future__ import annotations

import pytest

from personalign.config import GuardConfig, load_settings

CONFIG = """
model = "openai:from-file"
embedder = "hashing"
[guard]
model = "guard-from-file"
base_url = "http://127.0.0.1:9/v1"
prompt_style = "llama_guard_3"
[retention]
turns_days = 30
"""


@pytest.fixture
def home(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    for name in ("PERSONALIGN_MODEL", "PERSONALIGN_GUARD__MODEL", "PERSONALIGN_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "config.toml").write_text(CONFIG)
    return tmp_path


def test_file_beats_defaults(home) -> None:  # type: ignore[no-untyped-def]
    s = load_settings(home=home)
    assert s.model == "openai:from-file" and s.guard.model == "guard-from-file"
    assert s.retention.turns_days == 30 and s.guard.timeout_s == 10.0  # default kept


def test_nested_env_beats_the_file_and_keeps_the_files_other_keys(home, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PERSONALIGN_GUARD__MODEL", "guard-from-env")
    s = load_settings(home=home)
    assert s.guard.model == "guard-from-env"
    assert s.guard.base_url == "http://127.0.0.1:9/v1"  # still from the file
    assert s.guard.prompt_style == "llama_guard_3"


def test_top_level_env_beats_the_file(home, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PERSONALIGN_MODEL", "fake")
    assert load_settings(home=home).model == "fake"


def test_flags_beat_the_environment(home, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PERSONALIGN_MODEL", "fake")
    monkeypatch.setenv("PERSONALIGN_GUARD__MODEL", "guard-from-env")
    s = load_settings(home=home, model="smollm2", guard={"model": "guard-from-flag"})
    assert s.model == "smollm2" and s.guard.model == "guard-from-flag"
    assert s.guard.base_url == "http://127.0.0.1:9/v1"  # a dict merges key by key
    whole = load_settings(home=home, guard=GuardConfig(model="only-this"))
    assert whole.guard.model == "only-this" and whole.guard.base_url is None  # an object replaces


def test_config_file_from_environment_variable(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    other = tmp_path / "elsewhere.toml"
    other.write_text('[guard]\nmodel = "named-file"\n')
    monkeypatch.setenv("PERSONALIGN_CONFIG", str(other))
    monkeypatch.delenv("PERSONALIGN_GUARD__MODEL", raising=False)
    assert load_settings(home=tmp_path).guard.model == "named-file"
