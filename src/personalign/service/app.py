"""FastAPI app factory: OpenAI-compatible chat, REST for memories and profiles, dashboard.

Every route authenticates with an API key (``Authorization: Bearer pal_...``) and reaches the
memory only through a :class:`~personalign.backends.stores.scoped.ScopedStore` for the caller's
principal. Errors are JSON ``{"error": {"message", "type", "code"}}`` with a 4xx status for
bad requests and 5xx only for backend failures; on the OpenAI routes (:data:`OPENAI_PATHS`)
they are OpenAI's (``type`` ``invalid_request_error``, ``param``, ``code``; a bad field is a
400). The chat route and its wire format live in :mod:`.chat` and :mod:`.wire`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from personalign import __version__
from personalign.backends.stores.scoped import Principal
from personalign.errors import (
    AuthError,
    BackendError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    PersonalignError,
    RefusedError,
    ValidationError,
)
from personalign.memory import constraint_edits
from personalign.pipeline import Personalizer
from personalign.service.chat import _why as _why  # re-exported
from personalign.service.chat import mount_chat
from personalign.service.conflicts import mount_conflicts
from personalign.service.core import Service
from personalign.service.dashboard import mount_dashboard
from personalign.service.keys import KeyStore
from personalign.service.schemas import (
    ConstraintsPut,
    MemoryIn,
    MemoryUpdate,
    ProfileIn,
    SearchIn,
)
from personalign.service.status import mount_status
from personalign.service.summary import AsOf, mount_summary
from personalign.service.wire import WireError
from personalign.types import FeedbackIn, Preference, PreferenceIn

MAX_BODY_BYTES = 1_000_000

_STATUS: list[tuple[type[PersonalignError], int, str]] = [
    (PermissionDeniedError, 403, "permission_denied"),
    (AuthError, 401, "invalid_api_key"),
    (NotFoundError, 404, "not_found"),
    (ConflictError, 409, "conflict"),
    (RefusedError, 422, "refused_by_boundary"),
    (ValidationError, 400, "invalid_request"),
    (BackendError, 502, "backend_error"),
]


def _error(status: int, message: str, code: str) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": code, "code": code}}, status_code=status
    )


OPENAI_PATHS = ("/v1/chat/completions", "/v1/models")
"""Routes whose errors follow OpenAI's format (``type`` ``invalid_request_error`` for a 4xx,
``server_error`` for a 5xx; ``param``: the field; ``code``) and whose bad requests are 400."""


def _openai_error(status: int, message: str, code: str | None, param: str | None) -> JSONResponse:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    body = {"message": message, "type": kind, "param": param, "code": code}
    return JSONResponse({"error": body}, status_code=status)


def _validation_param(e: dict[str, Any]) -> str | None:
    """OpenAI's ``param`` for a pydantic error location: ``messages[0].content``."""
    out = ""
    for part in e.get("loc", ()):
        if part == "body":
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or None


class BodyLimit:
    """Reject request bodies over ``limit`` bytes with 413, declared or streamed."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_big = _error(413, f"request body over {self.limit} bytes", "payload_too_large")
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await too_big(scope, receive, send)
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await too_big(scope, receive, send)


class _TooLarge(Exception):
    pass


def _principal(request: Request) -> Principal:
    service: Service = request.app.state.service
    return service.principal(request)


Auth = Annotated[Principal, Depends(_principal)]


def create_app(personalizer: Personalizer, keys: KeyStore, *, dashboard: bool = True) -> FastAPI:
    """The HTTP app over one personalizer (memory + model) and one key store."""
    svc = Service(personalizer, keys)
    app = FastAPI(
        title="personalign",
        version=__version__,
        description="Personalized, bounded LLM responses: OpenAI-compatible chat and memory.",
    )
    app.state.service = svc
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)

    @app.exception_handler(PersonalignError)
    async def _personalign_error(request: Request, exc: PersonalignError) -> JSONResponse:
        openai = request.url.path in OPENAI_PATHS
        if isinstance(exc, WireError):
            return _openai_error(exc.status, str(exc), exc.code, exc.param)
        for cls, status, code in _STATUS:
            if isinstance(exc, cls):
                return (
                    _openai_error(status, str(exc), code, None)
                    if openai
                    else _error(status, str(exc), code)
                )
        return _error(500, str(exc), "internal_error")

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        if request.url.path in OPENAI_PATHS:  # OpenAI answers a bad field with 400, naming it
            first = exc.errors()[0] if exc.errors() else {}
            param = _validation_param(first)
            if first.get("type") == "extra_forbidden":
                message = f"Unrecognized request argument supplied: {param}"
            else:
                message = f"invalid request: {param}: {first.get('msg')}"
            return _openai_error(400, message, first.get("type"), param)
        parts = []
        for e in exc.errors()[:5]:
            loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
            parts.append(f"{loc}: {e.get('msg')}" if loc else str(e.get("msg")))
        return _error(422, "invalid request: " + "; ".join(parts), "invalid_request")

    @app.get("/healthz", tags=["meta"])
    def healthz() -> dict[str, str]:
        """Liveness probe (no key needed)."""
        return {"status": "ok", "version": __version__}

    # -- OpenAI-compatible ---------------------------------------------------------------

    @app.get("/v1/models", tags=["openai"])
    def models(p: Auth) -> dict[str, Any]:
        """The models this server answers as (OpenAI format)."""
        return {
            "object": "list",
            "data": [
                {"id": n, "object": "model", "created": 0, "owned_by": "personalign"}
                for n in svc.model_names()
            ],
        }

    # -- memories ------------------------------------------------------------------------

    @app.get("/v1/users", tags=["users"])
    def list_users(p: Auth) -> dict[str, list[str]]:
        """The users this key can see (stored ids)."""
        return {"users": svc.store(p).users()}

    @app.get("/v1/users/{user}/memories", tags=["memories"])
    def list_memories(
        user: str,
        p: Auth,
        history: bool = False,
        episodes: bool = False,
        limit: Annotated[int, Query(ge=1, le=1000)] = 200,
        as_of: AsOf = None,
    ) -> list[dict[str, Any]]:
        """Active preferences (all versions with ``history``; raw turns with ``episodes``;
        those active then with ``as_of``)."""
        kinds = None if episodes else ["explicit", "implicit"]
        recs = svc.store(p).list(
            user=user,
            include_history=history,
            kinds=kinds,  # type: ignore[arg-type]
            limit=limit,
            as_of=as_of,
        )
        return [_memory_out(r) for r in recs]

    @app.post("/v1/users/{user}/memories", tags=["memories"], status_code=201)
    def add_memory(user: str, body: MemoryIn, p: Auth) -> dict[str, Any]:
        """Store a preference."""
        pin = PreferenceIn(text=body.text, kind=body.kind, topic=body.topic, tags=body.tags)
        rec = svc.store(p).add(pin, user=user, actor="api", reason=body.reason)
        return rec.model_dump(mode="json")

    @app.get("/v1/users/{user}/memories/{memory_id}", tags=["memories"])
    def get_memory(user: str, memory_id: str, p: Auth) -> dict[str, Any]:
        return _memory_out(svc.store(p).get(memory_id, user=user))

    @app.put("/v1/users/{user}/memories/{memory_id}", tags=["memories"])
    def update_memory(user: str, memory_id: str, body: MemoryUpdate, p: Auth) -> dict[str, Any]:
        """Write a new version superseding this one (the old one stays in history)."""
        rec = svc.store(p).update(memory_id, body.text, user=user, actor="api", reason=body.reason)
        return rec.model_dump(mode="json")

    @app.delete("/v1/users/{user}/memories/{memory_id}", tags=["memories"])
    def forget_memory(
        user: str, memory_id: str, p: Auth, reason: str | None = None
    ) -> dict[str, Any]:
        """Forget: end the preference's validity now; it stays in history."""
        rec = svc.store(p).forget(memory_id, user=user, actor="api", reason=reason)
        return rec.model_dump(mode="json")

    @app.get("/v1/users/{user}/memories/{memory_id}/history", tags=["memories"])
    def memory_history(user: str, memory_id: str, p: Auth) -> list[dict[str, Any]]:
        return [_memory_out(r) for r in svc.store(p).history(memory_id, user=user)]

    @app.get("/v1/users/{user}/memories/{memory_id}/constraints", tags=["memories"])
    def get_constraints(user: str, memory_id: str, p: Auth) -> dict[str, Any]:
        """The checkable constraints compiled from a preference (each with what it asks, in
        one line), ``edited`` when the user changed them, ``compiled`` false when none were
        stored for this text (then they are compiled now, as the pipeline does)."""
        return constraint_edits.view(svc.store(p).get(memory_id, user=user))

    @app.put("/v1/users/{user}/memories/{memory_id}/constraints", tags=["memories"])
    def set_constraints(user: str, memory_id: str, body: ConstraintsPut, p: Auth) -> dict[str, Any]:
        """Replace a preference's constraints (``[]``: none applies, the text stays). Writes
        a new version with the same text (the old one stays in history) whose constraints are
        kept as edited; nothing is written when they are unchanged (``changed`` false)."""
        store = svc.store(p)
        rec = store.get(memory_id, user=user)
        if rec.kind == "episode":
            raise ValidationError(f"{rec.id} is a raw turn, not a preference: no constraints")
        return constraint_edits.replace(
            store,
            rec,
            [c.to_constraint() for c in body.constraints],
            user=user,
            actor="api",
            reason=body.reason,
        )

    @app.post("/v1/users/{user}/search", tags=["memories"])
    def search(user: str, body: SearchIn, p: Auth, as_of: AsOf = None) -> list[dict[str, Any]]:
        """Hybrid search; each hit has its score, matched signals and source turn ids (over
        what was active at ``as_of``, default now)."""
        hits = svc.store(p).search(
            body.query,
            user=user,
            k=body.k,
            kinds=body.kinds,
            config=personalizer.memory.settings.retrieval,
            as_of=as_of,
        )
        return [h.model_dump(mode="json") for h in hits]

    @app.get("/v1/users/{user}/profile", tags=["profile"])
    def get_profile(user: str, p: Auth) -> dict[str, Any]:
        """Current dimension weights and their history."""
        hist = svc.store(p).profile_history(user=user)
        return {
            "current": hist[-1].model_dump(mode="json") if hist else None,
            "history": [h.model_dump(mode="json") for h in hist],
        }

    @app.put("/v1/users/{user}/profile", tags=["profile"])
    def set_profile(user: str, body: ProfileIn, p: Auth) -> dict[str, Any]:
        """Set the user's dimension weights (a new version; older ones stay). The override is
        kept as feedback, and later estimates from feedback start from it."""
        from personalign.feedback.learn import set_weights

        _, prof = set_weights(svc.store(p), body.weights, user=user, reason=body.reason)
        return prof.model_dump(mode="json")

    # -- feedback ------------------------------------------------------------------------

    @app.post("/v1/users/{user}/feedback", tags=["feedback"], status_code=201)
    def add_feedback(user: str, body: FeedbackIn, p: Auth) -> dict[str, Any]:
        """Record a rating, pairwise choice, edit, critique or override (linked to an exchange
        by ``exchange_id``) and learn from it: critique and edits reach the memory, choices
        and ratings re-estimate the weights. Returns the record, the new profile (when the
        weights changed) and the preferences learned."""
        fb = FeedbackIn(**body.model_dump(exclude={"source"}), source="api")  # checks the kind
        res = svc.personalizer.record_feedback(fb, user=user, store=svc.store(p))
        return {
            "feedback": res.feedback.model_dump(mode="json"),
            "profile": res.profile.model_dump(mode="json") if res.profile else None,
            "learned": res.memories,
        }

    @app.get("/v1/users/{user}/feedback", tags=["feedback"])
    def list_feedback(
        user: str, p: Auth, limit: Annotated[int, Query(ge=1, le=1000)] = 200
    ) -> list[dict[str, Any]]:
        """The user's feedback, oldest first (the newest ``limit``)."""
        return [f.model_dump(mode="json") for f in svc.store(p).feedback(user=user, limit=limit)]

    @app.get("/v1/users/{user}/exchanges", tags=["users"])
    def exchanges(
        user: str, p: Auth, limit: Annotated[int, Query(ge=1, le=500)] = 50
    ) -> list[dict[str, Any]]:
        """Logged exchanges: prompt, answer, model, method, preferences used, latency."""
        return [x.model_dump(mode="json") for x in svc.store(p).exchanges(user=user, limit=limit)]

    @app.get("/v1/users/{user}/export", tags=["users"])
    def export(user: str, p: Auth) -> dict[str, Any]:
        """All of the user's data as JSON."""
        return svc.store(p).export(user=user)

    @app.get("/v1/users/{user}/adapters", tags=["users"])
    def adapters(user: str, p: Auth) -> dict[str, Any]:
        """The user's adapter versions, oldest first: which one serves (``serving``; None: the
        base model answers) and each one's safety check (``rejected`` versions never serve)."""
        st = svc.personalizer.adapters
        rows = st.listing(p.resolve(user)) if st is not None else []
        serving = next((r["adapter"] for r in rows if r["serves"]), None)
        return {"user": user, "serving": serving, "versions": rows}

    @app.delete("/v1/users/{user}", tags=["users"])
    def erase(user: str, p: Auth) -> dict[str, Any]:
        """Hard-delete everything of the user (history and logs too) and their adapters, once
        none of their requests or queued turns is in flight: nothing is written after."""
        stored = p.resolve(user)  # checks the key's rights first
        return {"erased": user, **svc.personalizer.erase_user(stored)}

    mount_chat(app, svc)
    mount_summary(app, svc, dashboard=dashboard)
    mount_status(app, svc)
    mount_conflicts(app, svc)
    if dashboard:
        mount_dashboard(app, svc)

    app.add_middleware(NoStore)
    return app


class NoStore:
    """``Cache-Control: no-store`` on every response that sets none (plain ASGI: a
    ``BaseHTTPMiddleware`` costs every request a task and a queue)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(k.lower() == b"cache-control" for k, _ in headers):
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_header)


def _memory_out(rec: Preference) -> dict[str, Any]:
    """A memory on the wire: the record, and ``constraints`` (what applies for it, each with
    ``describe``)."""
    from personalign.constraints.context import context_of

    items, _ = constraint_edits.current(rec)
    return {
        **rec.model_dump(mode="json"),
        "constraints": constraint_edits.as_dicts(items),
        "context": None if rec.kind == "episode" else context_of(rec.meta, text=rec.text),
    }
