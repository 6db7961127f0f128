"""What one reply cost and why it ended, as an API reports it: :class:`Usage` (token counts)
and :class:`Made` (how the model produced it), filled in by the pipeline on each
:class:`~personalign.pipeline.Reply`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from personalign.backends.models.base import Generation, LanguageModel
from personalign.types import Message


@dataclass(frozen=True)
class Usage:
    """Token counts of one reply (OpenAI's ``usage``)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
        )


@dataclass(frozen=True)
class Made:
    """How the model produced one reply. ``cut``: the token budget (the request's
    ``max_new_tokens``) ended the reply that was kept; ``calls``: every reply the backend
    returned on the way (best-of-N samples several), with the token counts it reported."""

    cut: bool = False
    calls: tuple[Generation, ...] = ()


def count_usage(
    model: LanguageModel, messages: Sequence[Message], text: str, calls: Sequence[Generation]
) -> Usage:
    """The usage of a reply ``text`` to ``messages`` (the prompt sent to the model, with the
    personalization block). A backend with a tokenizer (``supports_logits``: local models,
    the fake) counts by it: the prompt with the chat template applied, and the reply
    returned (after any repair); a remote backend reports what its server said, summed over
    ``calls`` (zero when the server sent no usage)."""
    if model.supports_logits:
        return Usage(len(model.encode_chat(messages)), len(model.encode(text)) if text else 0)
    return Usage(sum(g.prompt_tokens for g in calls), sum(g.completion_tokens for g in calls))
