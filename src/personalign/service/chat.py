"""``POST /v1/chat/completions``: OpenAI-compatible chat, personalized for ``user``.

The request is checked field by field (:mod:`.wire`), each of the ``n`` choices is one
personalized reply (:meth:`Personalizer.respond` or, streaming, :meth:`Personalizer.stream`),
and the response is OpenAI's ``chat.completion`` (or ``chat.completion.chunk`` events) with
personalign's ``personalization`` record (/why) added.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import StreamingResponse

from personalign import __version__
from personalign.backends.stores.scoped import Principal
from personalign.constraints import Constraint
from personalign.errors import PersonalignError
from personalign.pipeline import PersonalizeOptions, Reply
from personalign.service import wire
from personalign.service.core import Service
from personalign.service.schemas import ChatCompletionRequest
from personalign.types import Message

FINGERPRINT = f"personalign-{__version__}"


def _principal(request: Request) -> Principal:
    service: Service = request.app.state.service
    return service.principal(request)


Auth = Annotated[Principal, Depends(_principal)]


class Chat:
    """One chat request, checked: the conversation, whose it is, the request constraints."""

    def __init__(self, svc: Service, body: ChatCompletionRequest, p: Principal) -> None:
        if body.model not in svc.model_names():
            raise wire.WireError(
                f"model {body.model!r} not found; available: {', '.join(svc.model_names())}",
                param="model",
                code="model_not_found",
                status=404,
            )
        wire.check_request(body)
        user = body.user or (p.user if p.scope == "user" else None)
        if not user:
            raise wire.WireError(
                "set the 'user' field: it selects whose preferences apply", param="user"
            )
        self.svc, self.body = svc, body
        self.user = p.resolve(user)
        self.history: list[Message] = wire.history_of(body)
        self.constraints: tuple[Constraint, ...] = wire.response_constraints(body.response_format)
        self.created = int(time.time())
        # retrieval runs once per request, here (it validates too): every choice reuses it
        self.plan = svc.personalizer.plan(self.history, user=self.user, options=self.options(0))

    def options(self, index: int) -> PersonalizeOptions:
        return wire.options_for(self.body, index, self.constraints)

    def finish(self, reply: Reply) -> Reply:
        """The reply as the response format asks (JSON checked and repaired)."""
        fmt = self.body.response_format
        if fmt is None or fmt.type == "text" or reply.finish_reason == "content_filter":
            return reply
        return wire.json_reply(reply, fmt, self.svc.personalizer.model)

    def respond(self, index: int) -> Reply:
        reply = self.svc.personalizer.respond(
            self.history, user=self.user, options=self.options(index), plan=self.plan
        )
        return self.finish(reply)


def mount_chat(app: FastAPI, svc: Service) -> None:
    """Add ``POST /v1/chat/completions`` to ``app``."""

    @app.post("/v1/chat/completions", tags=["openai"], response_model=None)
    def chat_completions(body: ChatCompletionRequest, p: Auth) -> Any:
        """OpenAI-compatible chat; ``user`` selects whose preferences apply. The README's
        "OpenAI wire format" says how each field is honoured."""
        chat = Chat(svc, body, p)  # checked and planned before a stream starts: errors are 4xx
        if not body.stream:
            with svc.gate.hold():
                replies = [chat.respond(i) for i in range(body.n)]
            return completion(replies, body.model, chat.created)
        return StreamingResponse(_sse(chat), media_type="text/event-stream")


def completion(replies: list[Reply], model: str, created: int) -> dict[str, Any]:
    """OpenAI's ``chat.completion`` for the choices ``replies`` (``personalization``: the
    first choice's /why, and each choice's own when there are several)."""
    many = len(replies) > 1
    return {
        "id": f"chatcmpl-{replies[0].exchange.id}",
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": FINGERPRINT,
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": r.text, "refusal": None},
                "logprobs": None,
                "finish_reason": r.finish_reason,
                **({"personalization": _why(r)} if many else {}),
            }
            for i, r in enumerate(replies)
        ],
        "usage": wire.usage_dict(wire.total_usage(replies)),
        "personalization": _why(replies[0]),
    }


def _why(reply: Reply) -> dict[str, Any]:
    x = reply.exchange
    return {
        "exchange_id": x.id,
        "method": x.method,
        "preferences": [p.model_dump(mode="json") for p in x.preferences],
        "latency_ms": x.latency_ms,
        "retrieval_ms": x.retrieval_ms,
        "constraints": x.meta.get("constraints", []),
        "repaired": x.meta.get("repaired", False),
        "style": x.meta.get("style"),
        # a new user's one cold-start question (personalign.feedback.coldstart), when asked
        **({"question": x.meta["question"]} if x.meta.get("question") else {}),
        "scope": x.meta.get("scope", {}),
        # the user's adapter (name@version) when this reply was generated with it
        **({"adapter": x.meta["adapter"]} if x.meta.get("adapter") else {}),
    }


def _sse(chat: Chat) -> Iterator[str]:
    """The stream: per choice a role chunk, content chunks and a chunk with its
    ``finish_reason`` (and /why); with ``stream_options.include_usage`` every chunk has
    ``usage: null`` and a last chunk with no choices carries the usage; then ``[DONE]``. A
    failure after the stream started comes as an ``error`` event (the OpenAI client raises
    it)."""
    body = chat.body
    cid = f"chatcmpl-{int(time.time() * 1000)}"
    with_usage = body.stream_options is not None and body.stream_options.include_usage

    def event(choices: list[dict[str, Any]], **extra: Any) -> str:
        out = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": chat.created,
            "model": body.model,
            "system_fingerprint": FINGERPRINT,
            "choices": choices,
            **({"usage": None} if with_usage else {}),
            **extra,
        }
        return f"data: {json.dumps(out)}\n\n"

    def delta(i: int, d: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        return event([{"index": i, "delta": d, "logprobs": None, "finish_reason": finish}], **extra)

    replies: list[Reply] = []
    try:
        with chat.svc.gate.hold():
            for i in range(body.n):
                yield delta(i, {"role": "assistant", "content": ""})
                if chat.constraints:  # JSON is checked whole, then sent in one piece
                    replies.append(chat.respond(i))
                    yield delta(i, {"content": replies[-1].text})
                else:
                    done: list[Reply] = []
                    options = chat.options(i)
                    for text in chat.svc.personalizer.stream(
                        chat.history,
                        user=chat.user,
                        options=options,
                        on_done=done.append,
                        plan=chat.plan,
                    ):
                        yield delta(i, {"content": text})
                    replies.append(done[0])
                last = replies[-1]
                yield delta(i, {}, last.finish_reason, personalization=_why(last))
    except PersonalignError as e:  # a reply that cannot meet the format, a backend failure
        ours = e if isinstance(e, wire.WireError) else None
        error = {
            "message": str(e),
            "type": "invalid_request_error" if ours else "server_error",
            "param": ours.param if ours else None,
            "code": ours.code if ours else type(e).__name__,
        }
        yield f"data: {json.dumps({'error': error})}\n\n"
        return
    if with_usage:
        yield event([], usage=wire.usage_dict(wire.total_usage(replies)))
    yield "data: [DONE]\n\n"
