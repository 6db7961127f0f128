"""API keys reach only the server they are configured for (personalign.backends.models.credentials):
the environment's OPENAI_API_KEY goes to OpenAI's own API only, a key set for one backend never
follows another backend to its server. Real clients, a scripted server recording Authorization."""

from __future__ import annotations

import pytest

from personalign.backends.models import load_model
from personalign.backends.models.base import GenerationOptions
from personalign.backends.models.openai_compat import OpenAICompatLM
from personalign.config import ExtractorConfig, GuardConfig, JudgeConfig, load_settings
from personalign.errors import ConfigError
from personalign.memory.llm_extract import extractor_model
from personalign.rewards.preference_rm import judge_from_settings
from personalign.safety.guard import guard_from_settings
from personalign.testing import ScriptedOpenAIServer
from personalign.types import Message

ENV_SECRET = "sk-env-secret-must-not-leak"
SETTINGS_KEY = "sk-for-server-a"
HELLO = [Message(role="user", content="hello")]
OPTS = GenerationOptions(max_new_tokens=8)


def _reply(model: str, messages: list[dict[str, str]]) -> str:
    return "safe"


@pytest.fixture
def servers(monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("OPENAI_API_KEY", ENV_SECRET)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with ScriptedOpenAIServer(_reply) as a, ScriptedOpenAIServer(_reply) as b:
        yield a, b


def _all_clients(settings) -> None:  # type: ignore[no-untyped-def]
    """One real request from each OpenAI-compatible client the settings build."""
    load_model(settings).generate(HELLO, options=OPTS)
    guard = guard_from_settings(settings)
    assert guard is not None and guard.check(["hello"])[0].admitted
    judge = judge_from_settings(settings)
    assert judge is not None
    judge.judge.generate(HELLO, options=OPTS)
    extractor_model(settings).generate(HELLO, options=OPTS)


def test_environment_key_never_goes_to_another_server(tmp_path, servers) -> None:  # type: ignore[no-untyped-def]
    a, b = servers
    settings = load_settings(
        home=tmp_path,
        model="openai:chat",
        openai_base_url=a.base_url,
        guard=GuardConfig(model="guard"),
        judge=JudgeConfig(model="openai:judge", base_url=b.base_url),
        extractor=ExtractorConfig(model="openai:extractor", base_url=b.base_url),
    )
    _all_clients(settings)
    assert len(a.authorization) == 2 and len(b.authorization) == 2
    seen = a.authorization + b.authorization
    assert all(h == "Bearer EMPTY" for h in seen), seen  # a placeholder, never the env key


def test_a_settings_key_stays_with_its_server(tmp_path, servers) -> None:  # type: ignore[no-untyped-def]
    a, b = servers
    settings = load_settings(
        home=tmp_path,
        model="openai:chat",
        openai_base_url=a.base_url,
        openai_api_key=SETTINGS_KEY,
        guard=GuardConfig(model="guard", base_url=b.base_url),  # another server, no key
        judge=JudgeConfig(model="openai:judge"),  # same server as the model: its key
        extractor=ExtractorConfig(model="openai:x", base_url=b.base_url, api_key="sk-for-b"),
    )
    _all_clients(settings)
    assert a.authorization == [f"Bearer {SETTINGS_KEY}"] * 2  # chat model, judge
    assert b.authorization == ["Bearer EMPTY", "Bearer sk-for-b"]  # guard, extractor


def test_naming_the_environment_key_sends_it_on_purpose(tmp_path, servers, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    a, _ = servers
    guard = GuardConfig(model="guard", base_url=a.base_url, api_key="env:OPENAI_API_KEY")
    checker = guard_from_settings(load_settings(home=tmp_path, guard=guard))
    assert checker is not None and checker.check(["hello"])[0].admitted
    assert a.authorization == [f"Bearer {ENV_SECRET}"]
    monkeypatch.delenv("MY_UNSET_KEY", raising=False)
    with pytest.raises(ConfigError, match="MY_UNSET_KEY"):
        OpenAICompatLM("m", base_url=a.base_url, api_key="env:MY_UNSET_KEY")


def test_openai_itself_gets_the_environment_key(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("OPENAI_API_KEY", ENV_SECRET)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    lm = OpenAICompatLM("gpt-4o-mini")  # no request is made
    assert lm._client.api_key == ENV_SECRET and "api.openai.com" in str(lm._client.base_url)
    explicit = OpenAICompatLM("gpt-4o-mini", base_url="https://api.openai.com/v1")
    assert explicit._client.api_key == ENV_SECRET
    lookalike = OpenAICompatLM("m", base_url="https://api.openai.com.evil.example/v1")
    assert lookalike._client.api_key == "EMPTY"
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # the client's own variable
    elsewhere = OpenAICompatLM("m")
    assert elsewhere._client.api_key == "EMPTY" and "127.0.0.1" in str(elsewhere._client.base_url)
