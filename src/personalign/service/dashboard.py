"""The user dashboard: server-rendered pages (Jinja2, plain forms, no JavaScript build).

A user signs in with their user token (kept in an HttpOnly cookie); every form carries a CSRF
token derived from that key. Pages: active preferences and their history (edit, forget; the
constraints compiled from each, each with a drop button; the context a preference is scoped
to), open conflicts between preferences (keep one, or both), dimension weights (sliders),
chat with "which preferences shaped this answer" and which were held back.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from personalign.constraints.context import context_of
from personalign.errors import AuthError, PermissionDeniedError, PersonalignError
from personalign.memory import constraint_edits

if TYPE_CHECKING:
    from personalign.backends.stores.scoped import Principal
    from personalign.service.core import Service

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
DEFAULT_DIMENSIONS = ("conciseness", "reading_level", "warmth", "structure", "formality")


def dimensions() -> tuple[str, ...]:
    """The dimension names users weigh (from the rewards package when present)."""
    try:
        from personalign.rewards.dimensions import DIMENSIONS
    except ImportError:
        return DEFAULT_DIMENSIONS
    return tuple(DIMENSIONS)


def _csrf(key: str) -> str:
    return hashlib.sha256(b"personalign-csrf:" + key.encode()).hexdigest()[:32]


def mount_dashboard(app: FastAPI, svc: Service) -> None:
    """Add the ``/ui`` pages to ``app``."""

    def session(request: Request) -> tuple[Principal, str]:
        key = request.cookies.get("pal_key", "")
        principal = svc.keys.verify(key)
        if principal.scope != "user" or principal.user is None:
            raise PermissionDeniedError("the dashboard takes a user token")
        return principal, key

    def page(request: Request, notice: str | None = None, status: int = 200) -> Response:
        try:
            principal, key = session(request)
        except AuthError:
            return RedirectResponse("/ui/login", status_code=303)
        user = principal.user or ""
        store = svc.store(principal)
        known = store.has_user(user=user)
        active = store.list(user=user, kinds=["explicit", "implicit"]) if known else []
        history = [
            r
            for r in (
                store.list(user=user, include_history=True, kinds=["explicit", "implicit"])
                if known
                else []
            )
            if not r.active
        ]
        profile = store.get_profile(user=user) if known else None
        weights = {d: (profile.weights.get(d, 0.5) if profile else 0.5) for d in dimensions()}
        exchanges = list(reversed(store.exchanges(user=user, limit=5))) if known else []
        constraints = {}
        for r in active:
            items, state = constraint_edits.current(r)
            constraints[r.id] = {"items": constraint_edits.as_dicts(items), "state": state}
        contexts = {r.id: context_of(r.meta, text=r.text) for r in active}
        return TEMPLATES.TemplateResponse(
            request,
            "dashboard.html",
            {
                "user": user,
                "active": active,
                "history": history,
                "weights": weights,
                "exchanges": exchanges,
                "constraints": constraints,
                "contexts": contexts,
                "conflicts": store.conflicts(user=user) if known else [],
                "ingestion": svc.personalizer.ingestion_status(principal.resolve(user)),
                "csrf": _csrf(key),
                "notice": notice,
            },
            status_code=status,
        )

    def guarded(request: Request, csrf: str) -> tuple[Principal, str]:
        principal, key = session(request)
        if not hmac.compare_digest(csrf, _csrf(key)):
            raise PermissionDeniedError("bad form token: reload the page")
        return principal, key

    def act(request: Request, csrf: str, action: Any, done: str) -> Response:
        try:
            principal, _ = guarded(request, csrf)
            action(svc.store(principal), principal.user)
        except AuthError:
            return RedirectResponse("/ui/login", status_code=303)
        except PersonalignError as e:
            return page(request, notice=f"error: {e}", status=400)
        return page(request, notice=done)

    @app.get("/ui/login", response_class=HTMLResponse, include_in_schema=False)
    def login_form(request: Request, error: str | None = None) -> Response:
        return TEMPLATES.TemplateResponse(request, "login.html", {"error": error})

    @app.post("/ui/login", include_in_schema=False)
    def login(request: Request, key: Annotated[str, Form()]) -> Response:
        try:
            principal = svc.keys.verify(key.strip())
        except AuthError as e:
            return TEMPLATES.TemplateResponse(
                request, "login.html", {"error": str(e)}, status_code=401
            )
        if principal.scope != "user":
            return TEMPLATES.TemplateResponse(
                request, "login.html", {"error": "use a user token"}, status_code=403
            )
        resp = RedirectResponse("/ui", status_code=303)
        resp.set_cookie("pal_key", key.strip(), httponly=True, samesite="strict")
        return resp

    @app.post("/ui/logout", include_in_schema=False)
    def logout() -> Response:
        resp = RedirectResponse("/ui/login", status_code=303)
        resp.delete_cookie("pal_key")
        return resp

    @app.get("/ui", response_class=HTMLResponse, include_in_schema=False)
    def dashboard(request: Request) -> Response:
        return page(request)

    @app.post("/ui/memories", include_in_schema=False)
    def add(
        request: Request, csrf: Annotated[str, Form()], text: Annotated[str, Form()]
    ) -> Response:
        return act(request, csrf, lambda s, u: s.add(text, user=u, actor="dashboard"), "saved")

    @app.post("/ui/memories/{memory_id}/edit", include_in_schema=False)
    def edit(
        request: Request,
        memory_id: str,
        csrf: Annotated[str, Form()],
        text: Annotated[str, Form()],
    ) -> Response:
        return act(
            request,
            csrf,
            lambda s, u: s.update(
                memory_id, text, user=u, actor="dashboard", reason="edited in the dashboard"
            ),
            "updated (the old version is in history)",
        )

    @app.post("/ui/memories/{memory_id}/forget", include_in_schema=False)
    def forget(request: Request, memory_id: str, csrf: Annotated[str, Form()]) -> Response:
        return act(
            request,
            csrf,
            lambda s, u: s.forget(
                memory_id, user=u, actor="dashboard", reason="deleted in the dashboard"
            ),
            "forgotten (kept in history)",
        )

    @app.post("/ui/memories/{memory_id}/constraints/drop", include_in_schema=False)
    def drop_constraint(
        request: Request,
        memory_id: str,
        csrf: Annotated[str, Form()],
        kind: Annotated[str, Form()],
    ) -> Response:
        def drop(store: Any, user: str) -> None:
            rec = store.get(memory_id, user=user)
            items, _ = constraint_edits.current(rec)
            kept, _ = constraint_edits.apply(items, drop=[kind])
            constraint_edits.replace(
                store, rec, kept, user=user, actor="dashboard", reason="in the dashboard"
            )

        return act(
            request,
            csrf,
            drop,
            f"dropped the {kind} constraint (the old version is in history)",
        )

    @app.post("/ui/conflicts/{conflict_id}/resolve", include_in_schema=False)
    def resolve(
        request: Request,
        conflict_id: str,
        csrf: Annotated[str, Form()],
        keep: Annotated[str, Form()],
    ) -> Response:
        """``keep``: the memory id to keep (the other is superseded), or ``both``."""
        return act(
            request,
            csrf,
            lambda s, u: s.resolve_conflict(
                conflict_id,
                user=u,
                keep=None if keep == "both" else keep,
                actor="dashboard",
                reason="resolved in the dashboard",
            ),
            "resolved: both kept" if keep == "both" else "resolved (the other one is in history)",
        )

    @app.post("/ui/profile", include_in_schema=False)
    async def profile(request: Request) -> Response:
        form = await request.form()
        csrf = str(form.get("csrf", ""))
        try:
            weights = {d: float(str(form.get(d, "0.5"))) for d in dimensions()}
        except ValueError:
            return page(request, notice="error: weights must be numbers", status=400)
        return act(
            request,
            csrf,
            lambda s, u: s.set_profile(weights, user=u, source="user", reason="dashboard sliders"),
            "weights saved",
        )

    @app.post("/ui/chat", response_class=HTMLResponse, include_in_schema=False)
    def chat(
        request: Request, csrf: Annotated[str, Form()], message: Annotated[str, Form()]
    ) -> Response:
        def ask(store: Any, user: str) -> None:
            stored = store.principal.resolve(user)
            with svc.gate.hold():
                svc.personalizer.respond(message, user=stored)
            svc.personalizer.flush(user=stored, check=False)  # failures: shown on the page

        return act(request, csrf, ask, "answered")
