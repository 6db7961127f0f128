"""``GET /v1/users/{user}/status``: the user's background ingestion, scoped like every route.

``{"user", "known", "ingestion": {"pending", "failed": [{"entry", "turn_ids", "error",
"attempts", "at"}]}}``: turns acknowledged and still queued, and turns that failed after their
retries (kept in the journal, retried at the next start or with ``POST
/v1/users/{user}/status/retry``).

``GET /v1/status``: this serving process: its model, whether the model runs chats
concurrently (``LanguageModel.concurrent``), the chat gate's limit, chats generating now and
the most at once, and the process id (one per ``serve --workers`` process).
"""

from __future__ import annotations

import os
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request

from personalign.backends.stores.scoped import Principal
from personalign.service.core import Service


def _principal(request: Request) -> Principal:
    service: Service = request.app.state.service
    return service.principal(request)


Auth = Annotated[Principal, Depends(_principal)]


def mount_status(app: FastAPI, svc: Service) -> None:
    """Add the status routes to ``app``."""

    @app.get("/v1/status", tags=["meta"])
    def service_status(p: Auth) -> dict[str, Any]:
        """This serving process: model, chat concurrency, process id."""
        gate = svc.gate
        concurrent = gate.concurrent()
        return {
            "model": svc.personalizer.model.name,
            "concurrent": concurrent,
            "max_concurrent_chats": gate.limit if concurrent else 1,
            "active_chats": gate.active,
            "peak_chats": gate.peak,
            "pid": os.getpid(),
        }

    @app.get("/v1/users/{user}/status", tags=["users"])
    def status(user: str, p: Auth) -> dict[str, Any]:
        """Background ingestion of the user's turns: pending, and failed after retries."""
        stored = p.resolve(user)  # the key's rights, as the store wrapper checks them
        return {
            "user": user,
            "known": svc.store(p).has_user(user=user),
            "ingestion": svc.personalizer.ingestion_status(stored),
        }

    @app.post("/v1/users/{user}/status/retry", tags=["users"])
    def retry(user: str, p: Auth) -> dict[str, Any]:
        """Queue the user's failed turns again; returns how many."""
        stored = p.resolve(user)
        return {"user": user, "retried": svc.personalizer.ingestion.retry_failed(stored)}
