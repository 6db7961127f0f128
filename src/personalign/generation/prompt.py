"""Prompt building: the system prompt and where the user's memory block goes.

The memory block is produced by the safety layer's renderer (a preamble saying it is data,
then a delimited block of quoted, neutralized lines); this module only places it, in the system
message, never in a user or assistant turn.
"""

from __future__ import annotations

from collections.abc import Sequence

from personalign.types import Message

SYSTEM_PROMPT = "You are a helpful assistant."


def build_messages(
    history: Sequence[Message],
    memory_block: str | None,
    *,
    system_prompt: str = SYSTEM_PROMPT,
) -> list[Message]:
    """The messages sent to the model: one system message (with the memory block, if any),
    then the conversation. A system message in ``history`` is merged after ours."""
    extra = [m.content for m in history if m.role == "system"]
    parts = [system_prompt, *extra]
    if memory_block:
        parts.append(memory_block)
    turns = [m for m in history if m.role != "system"]
    return [Message(role="system", content="\n\n".join(parts)), *turns]
