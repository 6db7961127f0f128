"""Wire schemas of the HTTP API (OpenAI-compatible chat, memories, profile)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

from personalign.constraints import KINDS, Constraint
from personalign.constraints import Kind as ConstraintKind
from personalign.types import MAX_TEXT_CHARS, Kind


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=32_000)


class PersonalizationIn(BaseModel):
    """personalign's own request options (send them as ``extra_body`` with the OpenAI client)."""

    model_config = ConfigDict(extra="forbid")

    method: str | None = None
    """None: the pipeline's default (see ``PersonalizeOptions.method``)."""
    k: int | None = Field(default=None, ge=1, le=50)
    """None: the pipeline's default."""
    ingest: bool = True


class ChatCompletionRequest(BaseModel):
    """The subset of OpenAI's chat completion request that personalign honours."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=200)
    messages: list[ChatMessageIn] = Field(min_length=1, max_length=200)
    user: str | None = Field(default=None, description="Whose preferences apply.")
    stream: bool = False
    max_tokens: int | None = Field(default=None, ge=1, le=4096)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=4096)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    personalization: PersonalizationIn = Field(default_factory=PersonalizationIn)


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
