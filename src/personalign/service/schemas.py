"""Wire schemas of the HTTP API (OpenAI-compatible chat, memories, profile)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

from personalign.constraints import KINDS, Constraint
from personalign.constraints import Kind as ConstraintKind
from personalign.types import MAX_TEXT_CHARS, Kind


class ChatMessageIn(BaseModel):
    """One message; ``developer`` counts as ``system``; ``content``: a string or text parts
    (``[{"type": "text", "text": ...}]``); ``name`` is accepted and ignored."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]] = Field(max_length=32_000)


class PersonalizationIn(BaseModel):
    """personalign's own request options (send them as ``extra_body`` with the OpenAI client)."""

    model_config = ConfigDict(extra="forbid")

    method: str | None = None
    """None: the pipeline's default (see ``PersonalizeOptions.method``)."""
    k: int | None = Field(default=None, ge=1, le=50)
    """None: the pipeline's default."""
    ingest: bool = True


class JsonSchemaIn(BaseModel):
    """``response_format.json_schema``: OpenAI's structured-output format."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = Field(default=None, max_length=2000)
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormatIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaIn | None = None

    @model_validator(mode="after")
    def _schema_iff_json_schema(self) -> ResponseFormatIn:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is required with type 'json_schema', and only there")
        return self

    def schema_dict(self) -> dict[str, Any]:
        """The JSON Schema of a json_schema format (``{}``: anything)."""
        return self.json_schema.schema_ if self.json_schema is not None else {}


class StreamOptionsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False
    include_obfuscation: bool | None = None
    """Accepted; no obfuscation padding is sent (the server runs on your own network)."""


MAX_CHOICES = 8
"""The most choices (``n``) one request may ask: each is a whole personalized reply."""


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat completion request. Every field of the API is declared: those honoured,
    those accepted without effect, and those refused when set (:mod:`.wire`); an unknown
    field is a 400, as on OpenAI."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=200)
    messages: list[ChatMessageIn] = Field(min_length=1, max_length=200)
    user: str | None = Field(default=None, description="Whose preferences apply.")
    stream: bool = False
    stream_options: StreamOptionsIn | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=4096)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=4096)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)
    seed: int | None = None
    stop: str | list[str] | None = Field(default=None, max_length=4)
    response_format: ResponseFormatIn | None = None
    personalization: PersonalizationIn = Field(default_factory=PersonalizationIn)
    # accepted without effect
    metadata: dict[str, str] | None = None
    store: bool | None = None
    parallel_tool_calls: bool | None = None
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    modalities: list[str] | None = None
    # refused when set (see wire.REFUSED)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    logit_bias: dict[str, Any] | None = None
    audio: Any = None
    prediction: Any = None
    reasoning_effort: str | None = None
    verbosity: str | None = None
    web_search_options: Any = None

    @model_validator(mode="after")
    def _stop_strings(self) -> ChatCompletionRequest:
        stops = [self.stop] if isinstance(self.stop, str) else self.stop or []
        if any(not s for s in stops):
            raise ValueError("stop: stop sequences must be non-empty strings")
        return self


class MemoryIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    kind: Literal["explicit", "implicit"] = "explicit"
    topic: str | None = Field(default=None, max_length=100)
    tags: list[str] = Field(default_factory=list, max_length=20)
    reason: str | None = Field(default=None, max_length=500)


class MemoryUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    reason: str | None = Field(default=None, max_length=500)


class ConstraintIn(BaseModel):
    """One constraint of a preference, as a user sets it. ``value`` depends on ``kind``: none
    for lowercase, uppercase, no_commas, title, json, quotation; a whole number for max_words,
    max_sentences (the most allowed), bullets, numbered (the count); a phrase for start_phrase,
    end_phrase, postscript (the marker, default "P.S."); a language name or ISO 639-1 code for
    language; a list of words (or a comma-separated string) for avoid_words. ``describe`` is
    ignored: it is accepted so that the items of a GET can be sent back as they are."""

    model_config = ConfigDict(extra="forbid")

    kind: ConstraintKind
    value: StrictInt | str | list[str] | None = None
    phrase: str = Field(default="", max_length=200)
    describe: str | None = Field(default=None, max_length=1000)

    @model_validator(mode="after")
    def _check_value(self) -> ConstraintIn:
        from personalign.memory.constraint_edits import normalize

        self.value = normalize(self.kind, self.value).value
        return self

    def to_constraint(self) -> Constraint:
        return Constraint(kind=self.kind, value=self.value, phrase=self.phrase)


class ConstraintsPut(BaseModel):
    """A preference's constraints, all of them (``[]``: none is applied; the preference stays
    as text). At most one per slot (lowercase and uppercase exclude each other)."""

    model_config = ConfigDict(extra="forbid")

    constraints: list[ConstraintIn] = Field(max_length=len(KINDS))
    reason: str | None = Field(default=None, max_length=500)

    @model_validator(mode="after")
    def _one_per_slot(self) -> ConstraintsPut:
        from personalign.memory.constraint_edits import check_items

        check_items([c.to_constraint() for c in self.constraints])
        return self


class SearchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    k: int = Field(default=5, ge=1, le=100)
    kinds: list[Kind] | None = None


class ProfileIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    weights: dict[str, float] = Field(min_length=1, max_length=32)
    reason: str | None = Field(default=None, max_length=500)


class ErrorOut(BaseModel):
    error: dict[str, Any]
