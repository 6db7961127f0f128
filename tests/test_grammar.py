"""JSON-constrained decoding (GenerationOptions.json_schema): the local backend masks every
token that would leave the schema (xgrammar), in every decoding method, so even a random
model answers with schema-valid JSON; the OpenAI-compatible backend sends the schema as
``response_format``; the LLM extractor asks for its schema."""

from __future__ import annotations

import importlib.util
import json
from typing import Any

import pytest

from personalign.backends.models.base import GenerationOptions, LanguageModel
from personalign.errors import BackendError, ValidationError
from personalign.types import Message

HAVE_STACK = all(importlib.util.find_spec(m) for m in ("torch", "transformers", "xgrammar"))
needs_stack = pytest.mark.skipif(not HAVE_STACK, reason="needs torch, transformers, xgrammar")

SCHEMA = {
    "type": "object",
    "properties": {
        "mood": {"enum": ["calm", "busy", "tired"]},
        "ok": {"type": "boolean"},
        "n": {"type": "integer", "minimum": 0, "maximum": 9},
    },
    "required": ["mood", "ok", "n"],
    "additionalProperties": False,
}
ASK = [Message(role="user", content="Describe your day as JSON.")]


def valid(text: str) -> bool:
    import jsonschema

    try:
        jsonschema.validate(json.loads(text), SCHEMA)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


class TeaReward:
    """Rewards replies by how often they say "tea" (a PreferenceRewardModel)."""

    def score(self, preferences: Any, prompt: str, responses: Any) -> Any:
        import numpy as np

        return np.array([r.count("tea") for r in responses], dtype=np.float64)


def test_options_reject_a_schema_that_is_not_json() -> None:
    with pytest.raises(ValidationError, match="json_schema"):
        GenerationOptions(json_schema="{not json")
    assert GenerationOptions(json_schema="{}").constrained
    assert not GenerationOptions().constrained


@needs_stack
def test_a_random_model_answers_schema_valid_json(tiny_lm: LanguageModel) -> None:
    """Without the mask the random model writes no JSON at all; with it, every seed's sample
    and the greedy reply are valid against the schema."""
    plain = tiny_lm.generate(ASK, options=GenerationOptions(max_new_tokens=40, seed=0))
    assert not valid(plain.text)
    schema = json.dumps(SCHEMA)
    for seed in range(4):
        opts = GenerationOptions(max_new_tokens=60, temperature=1.0, seed=seed, json_schema=schema)
        out = tiny_lm.generate(ASK, options=opts)
        assert valid(out.text), out.text
        assert out.finish_reason == "stop"  # the grammar ends the reply: only stop tokens left
    greedy = tiny_lm.generate(ASK, options=GenerationOptions(max_new_tokens=60, json_schema=schema))
    assert valid(greedy.text), greedy.text


@needs_stack
def test_batched_rows_fork_and_stay_valid(tiny_lm: LanguageModel) -> None:
    """Rows with the same prompt share a history at the first step and then diverge (the
    grammar state of each is replayed from the prompt): all of them stay valid; a second,
    longer prompt that starts with the first one is a new prompt, not a fork."""
    schema = json.dumps(SCHEMA)
    opts = GenerationOptions(max_new_tokens=60, temperature=1.5, seed=7, json_schema=schema)
    outs = tiny_lm.generate_batch([ASK] * 4, options=opts)
    assert all(valid(g.text) for g in outs), [g.text for g in outs]
    assert len({g.text for g in outs}) > 1  # they did diverge
    longer = [*ASK, Message(role="assistant", content=outs[0].text), *ASK]
    again = tiny_lm.generate(longer, options=opts)
    assert valid(again.text), again.text


@needs_stack
@pytest.mark.parametrize("method", ["best_of_n", "contrastive", "mod", "reward_guided"])
def test_every_decoding_method_keeps_the_schema(tiny_lm: LanguageModel, method: Any) -> None:
    from personalign.generation.decoding import DecodingConfig, personalized_generate

    plain = [Message(role="user", content="Describe your day as JSON.")]
    personal = [Message(role="system", content="The user likes tea."), *plain]
    out = personalized_generate(
        tiny_lm,
        plain,
        personal,
        config=DecodingConfig(method=method, n=2, top_k=2, every=3),
        options=GenerationOptions(max_new_tokens=60, seed=0, json_schema=json.dumps(SCHEMA)),
        preferences=["i like tea"],
        reward=TeaReward(),
        objectives={"a": personal, "b": plain},
        weights={"a": 1.0, "b": 2.0},
    )
    assert valid(out.generation.text), (method, out.generation.text)


@needs_stack
def test_a_bad_schema_is_a_clear_backend_error(tiny_lm: LanguageModel) -> None:
    bad = json.dumps({"type": "object", "properties": {"a": {"type": "no-such-type"}}})
    with pytest.raises(BackendError, match="json_schema"):
        tiny_lm.generate(ASK, options=GenerationOptions(max_new_tokens=5, json_schema=bad))


def test_without_xgrammar_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from personalign.backends.models import grammar

    monkeypatch.setitem(sys.modules, "xgrammar", None)  # import fails
    with pytest.raises(BackendError, match=r"personalign\[grammar\]"):
        grammar.json_grammar(object(), 10, "{}", [0])


@needs_stack
def test_without_xgrammar_the_local_model_decodes_unmasked(
    tiny_lm: LanguageModel, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A preference for JSON must not break chats where the grammar extra is not installed:
    the reply is decoded unmasked (the caller validates and repairs), with one warning."""
    import sys

    monkeypatch.setitem(sys.modules, "xgrammar", None)
    opts = GenerationOptions(max_new_tokens=20, seed=0, json_schema=json.dumps(SCHEMA))
    with caplog.at_level("WARNING"):
        out = tiny_lm.generate(ASK, options=opts)
    plain = tiny_lm.generate(ASK, options=GenerationOptions(max_new_tokens=20, seed=0))
    assert out.text == plain.text
    assert any("personalign[grammar]" in r.getMessage() for r in caplog.records) or grammar_warned()


def grammar_warned() -> bool:
    from personalign.backends.models import grammar

    return bool(grammar._WARNED)


def test_openai_backend_sends_the_schema_as_response_format() -> None:
    from personalign.backends.models.openai_compat import OpenAICompatLM
    from personalign.testing import ScriptedOpenAIServer

    with ScriptedOpenAIServer(lambda model, messages: '{"mood":"calm","ok":true,"n":1}') as srv:
        lm = OpenAICompatLM("scripted", base_url=srv.base_url, api_key="x")
        out = lm.generate(ASK, options=GenerationOptions(json_schema=json.dumps(SCHEMA)))
        lm.generate(ASK, options=GenerationOptions())
    assert valid(out.text)
    fmt = srv.bodies[0]["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["schema"] == SCHEMA
    assert "response_format" not in srv.bodies[1]


def test_the_llm_extractor_asks_for_its_schema() -> None:
    from personalign.memory.extract import _LLM_SCHEMA, LLMExtractor
    from personalign.testing import FakeLM

    seen: list[GenerationOptions] = []

    class Recording(FakeLM):
        def generate(self, messages: Any, *, options: GenerationOptions) -> Any:
            seen.append(options)
            return super().generate(messages, options=options)

    LLMExtractor(Recording(), max_attempts=1).extract(
        [Message(role="user", content="I am vegetarian.", id="u1")]
    )
    assert seen and seen[0].json_schema == _LLM_SCHEMA
    assert json.loads(_LLM_SCHEMA)["required"] == ["preferences"]
