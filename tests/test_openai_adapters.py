"""A user's adapter on the OpenAI-compatible backend, the vLLM multi-LoRA way: its served
name as ``model``, loaded with ``POST /load_lora_adapter`` before first use, against a scripted
server over real HTTP that records what it received."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from personalign.backends.models.base import GenerationOptions
from personalign.backends.models.openai_compat import OpenAICompatLM
from personalign.config import load_settings
from personalign.errors import BackendError, NotFoundError
from personalign.feedback.adapters import AdapterStore
from personalign.generation.decoding import DecodingConfig, personalized_generate
from personalign.pipeline import PersonalizeOptions, Personalizer
from personalign.testing import HashingEmbedder, ScriptedOpenAIServer
from personalign.types import Message
from service_helpers import live_server

FILES = {"adapter_model.safetensors": b"weights", "adapter_config.json": b'{"peft_type": "LORA"}'}
MSGS = [Message(role="user", content="Hello")]
LOAD = "POST /v1/load_lora_adapter"
CHAT = "POST /v1/chat/completions"


def reply(model: str, messages: list[dict[str, str]]) -> str:
    return f"from {model}"


def opened(tmp_path: Path, server: ScriptedOpenAIServer, **extra: Any) -> Personalizer:
    settings = load_settings(
        home=tmp_path,
        embedder="hashing",
        model="openai:base",
        openai_base_url=server.base_url,
        **extra,
    )
    return Personalizer.open(settings, embedder=HashingEmbedder())


def test_open_attaches_the_store_and_a_users_adapter_is_loaded_then_selected(tmp_path):
    server = ScriptedOpenAIServer(reply, models=["base"], check_models=True)
    with server, opened(tmp_path, server) as pz:
        assert isinstance(pz.adapters, AdapterStore)
        assert pz.model.adapters is pz.adapters  # type: ignore[attr-defined]
        info = pz.adapters.save("ann", FILES, {})
        opts = PersonalizeOptions(ingest=False)
        first = pz.respond("Hello", user="ann", options=opts)
        second = pz.respond("Hello again", user="ann", options=opts)
        other = pz.respond("Hello", user="bob", options=opts)
    assert first.text == "from ann@v0001" and second.text == "from ann@v0001"
    assert server.lora_loads == [{"lora_name": "ann@v0001", "lora_path": str(info.path)}]
    assert server.calls.index(LOAD) < server.calls.index(CHAT)  # loaded before first use
    assert server.calls.count(LOAD) == 1  # once per process
    assert [m for m, _ in server.requests] == ["ann@v0001", "ann@v0001", "base"]
    assert first.exchange.meta["adapter"] == "ann@v0001"  # /why
    assert other.text == "from base" and "adapter" not in other.exchange.meta


def test_the_server_side_path_a_new_version_and_an_adapter_already_served(tmp_path):
    store = AdapterStore(tmp_path / "adapters")
    store.save("ann", FILES, {})
    with ScriptedOpenAIServer(reply, models=["base", "bob@v0001"], check_models=True) as server:
        lm = OpenAICompatLM(
            "base", base_url=server.base_url, adapters=store, lora_dir="/srv/adapters/"
        )
        opts = GenerationOptions(adapter="ann")
        assert lm.generate(MSGS, options=opts).text == "from ann@v0001"
        store.save("ann", FILES, {})  # a newer version is a new served adapter
        assert lm.generate(MSGS, options=opts).text == "from ann@v0002"
        store.save("bob", FILES, {})  # the server already lists it: no load
        assert lm.generate(MSGS, options=GenerationOptions(adapter="bob")).text == "from bob@v0001"
        with pytest.raises(NotFoundError):
            lm.generate(MSGS, options=GenerationOptions(adapter="nobody"))
        lm.close()
    assert server.lora_loads == [
        {"lora_name": "ann@v0001", "lora_path": "/srv/adapters/ann/v0001"},
        {"lora_name": "ann@v0002", "lora_path": "/srv/adapters/ann/v0002"},
    ]


def test_an_adapter_loaded_by_another_process_meanwhile_is_used(tmp_path):
    store = AdapterStore(tmp_path / "adapters")
    store.save("ann", FILES, {})
    with ScriptedOpenAIServer(reply, models=["base"], check_models=True) as server:
        lms = [OpenAICompatLM("base", base_url=server.base_url, adapters=store) for _ in "ab"]
        for lm in lms:
            assert lm.served_model("ann") == "ann@v0001"  # each asks GET /models first
        server.loaded.clear()  # the server restarted: its adapters are gone ...
        lms[0]._served.clear()  # ... and a new process starts
        lms[1]._served.clear()
        server.loaded.append("ann@v0001")  # another process loaded it meanwhile
        assert lms[0].served_model("ann") == "ann@v0001"
        for lm in lms:
            lm.close()
    assert len(server.lora_loads) == 1


def test_a_server_without_runtime_lora_loading_fails_clearly_never_silently(tmp_path):
    server = ScriptedOpenAIServer(reply, models=["base"], runtime_lora=False)
    with server, opened(tmp_path, server) as pz:
        pz.adapters.save("ann", FILES, {})  # type: ignore[union-attr]
        with pytest.raises(BackendError, match="VLLM_ALLOW_RUNTIME_LORA_UPDATING"):
            pz.respond("Hello", user="ann", options=PersonalizeOptions(ingest=False))
    assert CHAT not in server.calls  # the base model never answered in the adapter's place


def test_best_of_n_candidates_all_use_the_adapter(tmp_path):
    class Length:
        def score(self, preferences: Any, prompt: str, responses: Any) -> list[float]:
            return [float(len(r)) for r in responses]

    store = AdapterStore(tmp_path / "adapters")
    store.save("ann", FILES, {})
    with ScriptedOpenAIServer(reply, models=["base"], check_models=True) as server:
        lm = OpenAICompatLM("base", base_url=server.base_url, adapters=store)
        out = personalized_generate(
            lm,
            MSGS,
            [Message(role="system", content="be brief"), *MSGS],
            config=DecodingConfig(method="best_of_n", n=3),
            options=GenerationOptions(adapter="ann"),
            preferences=["be brief"],
            reward=Length(),  # type: ignore[arg-type]
            baseline=True,
        )
        lm.close()
    assert out.text == "from ann@v0001"
    assert [m for m, _ in server.requests] == ["ann@v0001"] * 4
    assert server.calls.count(LOAD) == 1


def test_erasing_a_user_unloads_their_adapter_from_the_server(tmp_path):
    server = ScriptedOpenAIServer(reply, models=["base"], check_models=True)
    with server, opened(tmp_path, server) as pz:
        pz.adapters.save("ann", FILES, {})  # type: ignore[union-attr]
        pz.respond("Hello", user="ann", options=PersonalizeOptions(ingest=False))
        assert server.loaded == ["ann@v0001"]
        assert pz.erase_user("ann")["adapters"] == 1
        assert server.lora_unloads == [{"lora_name": "ann@v0001"}] and server.loaded == []
        assert pz.respond("Hello", user="ann", options=PersonalizeOptions(ingest=False)).text == (
            "from base"
        )


def test_the_services_why_names_the_adapter_only_for_the_user_it_answered(tmp_path):
    import openai

    store = AdapterStore(tmp_path / "adapters")
    store.save("ann", FILES, {})
    with ScriptedOpenAIServer(reply, models=["base"], check_models=True) as backend:
        lm = OpenAICompatLM("base", base_url=backend.base_url, adapters=store)
        with live_server(tmp_path / "home", lm) as server:
            server.personalizer.adapters = store
            oc = openai.OpenAI(base_url=server.url + "/v1", api_key=server.admin_key)
            why = {}
            for user in ("ann", "bob"):
                resp = oc.chat.completions.create(
                    model="base", messages=[{"role": "user", "content": "Hi"}], user=user
                )
                why[user] = (resp.choices[0].message.content, resp.model_extra["personalization"])
    assert why["ann"][0] == "from ann@v0001" and why["ann"][1]["adapter"] == "ann@v0001"
    assert why["bob"][0] == "from base" and "adapter" not in why["bob"][1]


def test_the_openai_lora_dir_setting_reaches_the_backend(tmp_path):
    from personalign.backends.models import load_model

    settings = load_settings(
        home=tmp_path,
        model="openai:base",
        openai_base_url="http://127.0.0.1:9/v1",
        openai_lora_dir="/srv/adapters",
    )
    lm = load_model(settings)
    assert isinstance(lm, OpenAICompatLM) and lm.lora_dir == "/srv/adapters"
    lm.close()
