"""The OpenAI Chat Completions wire format of ``POST /v1/chat/completions``, field by field.

:func:`check_request` refuses what is not honoured (a 400 in OpenAI's error format, naming
the field) instead of ignoring it; :func:`options_for` turns a request into the pipeline's
options for one choice; :func:`response_constraints` and :func:`json_reply` honour
``response_format`` (the JSON constraint in the pipeline, then a final check here, with
``jsonschema`` for ``json_schema``); :func:`completion` and :func:`chunk` write the response
objects. The README's "OpenAI wire format" lists every field and what it does.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import Any

from personalign.backends.models.base import GenerationOptions, LanguageModel
from personalign.constraints import Constraint
from personalign.errors import ValidationError
from personalign.generation.usage import Usage
from personalign.pipeline import PersonalizeOptions, Reply
from personalign.service.schemas import ChatCompletionRequest, ResponseFormatIn
from personalign.types import Message


class WireError(ValidationError):
    """A request or reply the wire format cannot honour: OpenAI's error object with ``param``
    (the field) and ``code``, at HTTP ``status`` (400 unless said)."""

    def __init__(
        self, message: str, *, param: str | None = None, code: str | None = None, status: int = 400
    ) -> None:
        super().__init__(message)
        self.param = param
        self.code = code
        self.status = status


REFUSED: dict[str, str] = {
    "logprobs": "log-probabilities are not returned",
    "top_logprobs": "log-probabilities are not returned",
    "tools": "tool calling is not supported",
    "tool_choice": "tool calling is not supported",
    "functions": "function calling is not supported",
    "function_call": "function calling is not supported",
    "logit_bias": "logit_bias is not supported (say what to avoid as a preference)",
    "audio": "audio output is not supported",
    "prediction": "predicted outputs are not supported",
    "reasoning_effort": "reasoning_effort applies to reasoning models only",
    "verbosity": "verbosity is not supported (personalign sets length from preferences)",
    "web_search_options": "web search is not supported",
}
"""Fields refused with a 400 when set to anything but their 'off' value (see :func:`_off`)."""

SERVICE_TIERS = (None, "auto", "default")


def _off(name: str, value: Any) -> bool:
    """Whether a refused field's ``value`` asks for nothing (then it is accepted)."""
    if value is None or value == [] or value == {} or (not isinstance(value, str) and value == 0):
        return True
    return name in ("tool_choice", "function_call") and value == "none"


def check_request(body: ChatCompletionRequest) -> None:
    """Raise :class:`WireError` for a field set to something personalign does not honour."""
    for name, why in REFUSED.items():
        value = getattr(body, name)
        if not _off(name, value):
            raise WireError(f"{name}: {why}", param=name, code="unsupported_parameter")
    if body.modalities not in (None, ["text"]):
        raise WireError(
            "modalities: only ['text'] is supported", param="modalities", code="unsupported_value"
        )
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(body, name) not in (None, 0, 0.0):
            raise WireError(f"{name}: only 0 is supported", param=name, code="unsupported_value")
    if body.service_tier not in SERVICE_TIERS:
        raise WireError(
            "service_tier: only 'auto' or 'default'", param="service_tier", code="unsupported_value"
        )
    if body.stream_options is not None and not body.stream:
        raise WireError(
            "stream_options is only allowed when stream is true", param="stream_options"
        )
    if body.response_format is not None and body.response_format.type == "json_schema":
        check_schema(body.response_format)


def check_schema(fmt: ResponseFormatIn) -> None:
    """A json_schema format needs the ``jsonschema`` package and a valid schema."""
    try:
        import jsonschema
    except ImportError as e:  # pragma: no cover - jsonschema is in the dev extra
        raise WireError(
            "response_format json_schema is not supported on this server: install jsonschema "
            "(pip install 'personalign[jsonschema]'); json_object works without it",
            param="response_format",
            code="unsupported_value",
        ) from e
    schema = fmt.schema_dict()
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as e:
        raise WireError(
            f"response_format.json_schema.schema is not a valid JSON Schema: {e.message}",
            param="response_format",
            code="invalid_value",
        ) from e


def history_of(body: ChatCompletionRequest) -> list[Message]:
    """The conversation: ``developer`` is a system message, text parts are joined."""
    out = []
    for i, m in enumerate(body.messages):
        role = "system" if m.role == "developer" else m.role
        if isinstance(m.content, str):
            text = m.content
        else:
            bad = [p.get("type") for p in m.content if p.get("type") != "text"]
            if bad:
                raise WireError(
                    f"messages[{i}].content: only text parts are supported, got {bad[0]!r}",
                    param=f"messages[{i}].content",
                    code="unsupported_value",
                )
            text = "\n".join(str(p.get("text", "")) for p in m.content)
        out.append(Message(role=role, content=text))
    return out


def response_constraints(fmt: ResponseFormatIn | None) -> tuple[Constraint, ...]:
    """The pipeline constraint for a JSON ``response_format`` (in the prompt's requirements,
    checked when a reply is picked, repaired by wrapping); none for ``text``."""
    if fmt is None or fmt.type == "text":
        return ()
    if fmt.type == "json_object":
        return (Constraint(kind="json", phrase="response_format json_object"),)
    schema = json.dumps(fmt.schema_dict(), separators=(",", ":"))
    return (Constraint(kind="json", value=schema, phrase="response_format json_schema"),)


def options_for(
    body: ChatCompletionRequest, index: int, constraints: tuple[Constraint, ...]
) -> PersonalizeOptions:
    """The pipeline's options for choice ``index``: choice i samples with ``seed + i`` (so
    choices differ and a seeded request repeats), and only the first ingests the turn."""
    chosen = body.personalization.model_dump(exclude_none=True, include={"method", "k"})
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    seed = None if body.seed is None else body.seed + index
    generation = GenerationOptions(
        max_new_tokens=body.max_completion_tokens or body.max_tokens or 256,
        temperature=body.temperature,
        top_p=body.top_p,
        seed=seed,
        stop=stop,
    )
    return PersonalizeOptions(
        **chosen,
        ingest=body.personalization.ingest and index == 0,
        generation=generation,
        constraints=constraints,
    )


_FENCE = re.compile(r"^```[A-Za-z]*\s*(.*?)\s*```$", re.S)


def _schema_wraps(schema: dict[str, Any], text: str) -> list[Any]:
    """Deterministic repairs toward ``schema``: the text as a string, or as the one string
    property of an object."""
    if schema.get("type") == "string":
        return [text]
    props = schema.get("properties") or {}
    strings = [k for k, v in props.items() if isinstance(v, dict) and v.get("type") == "string"]
    required = schema.get("required") or []
    if len(strings) == 1 and set(required) <= set(strings):
        return [{strings[0]: text}]
    return []


def json_reply(reply: Reply, fmt: ResponseFormatIn, model: LanguageModel) -> Reply:
    """``reply`` as the JSON ``fmt`` asks (a code fence removed; ``json_object``: an object,
    a bare value wrapped as ``{"answer": ...}``; ``json_schema``: valid against the schema,
    or the reply text put where the schema takes one string). :class:`WireError` (HTTP 422)
    when no repair makes it so: never invalid JSON as if it were valid."""
    raw = reply.text.strip()
    fenced = _FENCE.match(raw)
    body = fenced.group(1) if fenced else raw
    tries: list[Any] = []
    parsed = True
    try:
        value = json.loads(body)
        tries.append(value)
    except ValueError:
        parsed, value = False, body
    if fmt.type == "json_object":
        tries.append({"answer": value})
        ok = next(t for t in tries if isinstance(t, dict))
        return _with_text(reply, body if parsed and ok is value else _dump(ok), model)
    import jsonschema

    schema = fmt.schema_dict()
    validator = jsonschema.validators.validator_for(schema)(schema)
    wrapped = isinstance(value, dict) and set(value) == {"answer"}  # the JSON repair's wrap
    text = value["answer"] if wrapped and isinstance(value["answer"], str) else body
    tries += _schema_wraps(schema, text)
    for t in tries:
        if validator.is_valid(t):
            return _with_text(reply, body if parsed and t is value else _dump(t), model)
    error = jsonschema.exceptions.best_match(validator.iter_errors(value)) if parsed else None
    why = error.message if error is not None else "not valid JSON"
    raise WireError(
        f"the model's reply could not be made to match response_format json_schema "
        f"{fmt.json_schema.name if fmt.json_schema else ''!r}: {why}",
        param="response_format",
        code="response_format_unmet",
        status=422,
    )


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _with_text(reply: Reply, text: str, model: LanguageModel) -> Reply:
    """``reply`` with its text replaced; a tokenizer recounts the completion tokens."""
    if text == reply.text:
        return reply
    usage = reply.usage
    if model.supports_logits:
        usage = Usage(usage.prompt_tokens, len(model.encode(text)))
    return replace(reply, text=text, usage=usage)


def usage_dict(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def total_usage(replies: list[Reply]) -> Usage:
    out = Usage()
    for r in replies:
        out = out + r.usage
    return out
