"""A user's profile summary over HTTP and in the dashboard, and the ``as_of`` query parameter.

``GET /v1/users/{user}/summary`` returns :class:`~personalign.memory.profile.ProfileSummary`
(preferences by topic, the constraints applied to every reply, style weights, recent
changes); ``as_of`` (ISO 8601 date or date and time, see
:func:`~personalign.memory.timeline.parse_as_of`) shows it as it stood then. The dashboard
page ``/ui/summary`` shows the same, with a date picker. Both reach the memory only through
the caller's :class:`~personalign.backends.stores.scoped.ScopedStore`, like every route.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from personalign.backends.stores.scoped import Principal
from personalign.errors import AuthError, PermissionDeniedError, PersonalignError
from personalign.memory.profile import summarize
from personalign.memory.timeline import parse_as_of
from personalign.service.dashboard import TEMPLATES

if TYPE_CHECKING:
    from personalign.service.core import Service

AS_OF_HELP = (
    "What was active then: an ISO 8601 date (the end of that day, UTC) or date and time "
    "(no zone: UTC), e.g. 2026-03-01 or 2026-03-01T12:00:00+01:00."
)
AsOfQuery = Annotated[str | None, Query(description=AS_OF_HELP)]


def as_of_param(as_of: AsOfQuery = None) -> datetime | None:
    """The ``as_of`` query parameter, parsed (a bad value: 400 ``invalid_request``)."""
    return None if as_of is None else parse_as_of(as_of)


AsOf = Annotated[datetime | None, Depends(as_of_param)]


def _principal(request: Request) -> Principal:
    service: Service = request.app.state.service
    return service.principal(request)


Auth = Annotated[Principal, Depends(_principal)]


def mount_summary(app: FastAPI, svc: Service, *, dashboard: bool = True) -> None:
    """Add ``GET /v1/users/{user}/summary`` to ``app``, and with ``dashboard`` the page
    ``/ui/summary``."""

    @app.get("/v1/users/{user}/summary", tags=["profile"])
    def profile_summary(
        user: str,
        p: Auth,
        as_of: AsOf = None,
        recent: Annotated[int, Query(ge=0, le=1000)] = 10,
    ) -> dict[str, Any]:
        """The user's preferences grouped by topic, the constraints applied to every reply,
        their style weights and their recent changes (as they stood at ``as_of``)."""
        store = svc.store(p)
        return summarize(store, user=user, as_of=as_of, recent=recent).model_dump(mode="json")

    if not dashboard:
        return

    @app.get("/ui/summary", response_class=HTMLResponse, include_in_schema=False)
    def summary_page(request: Request, as_of: str | None = None) -> Response:
        try:
            principal = _session(svc, request)
        except AuthError:
            return RedirectResponse("/ui/login", status_code=303)
        user = principal.user or ""
        store = svc.store(principal)
        notice, status, summary = None, 200, None
        try:
            at = parse_as_of(as_of) if as_of else None
            if store.has_user(user=user):
                summary = summarize(store, user=user, as_of=at, recent=15)
        except PersonalignError as e:
            notice, status = f"error: {e}", 400
        return TEMPLATES.TemplateResponse(
            request,
            "summary.html",
            {"user": user, "summary": summary, "as_of": as_of or "", "notice": notice},
            status_code=status,
        )


def _session(svc: Service, request: Request) -> Principal:
    """The dashboard's signed-in user (a user token in the ``pal_key`` cookie)."""
    principal = svc.keys.verify(request.cookies.get("pal_key", ""))
    if principal.scope != "user" or principal.user is None:
        raise PermissionDeniedError("the dashboard takes a user token")
    return principal
