"""Wire schemas of the HTTP API (OpenAI-compatible chat, memories, profile)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

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
