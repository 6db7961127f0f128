"""Routes for conflicting preferences: list a user's conflicts, resolve one.

``GET /v1/users/{user}/conflicts`` (``?all=true`` adds resolved and moot ones) and
``POST /v1/users/{user}/conflicts/{conflict_id}/resolve`` with ``{"keep": MEMORY_ID}`` (the
other side is superseded, kept as history) or ``{"both": true}``. Like every route they reach
the memory only through the caller's scoped store.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator

from personalign.backends.stores.scoped import Principal
from personalign.service.core import Service


def _principal(request: Request) -> Principal:
    service: Service = request.app.state.service
    return service.principal(request)


Auth = Annotated[Principal, Depends(_principal)]


class ResolveIn(BaseModel):
    """How to resolve a conflict: ``keep`` one side's memory id, or ``both``."""

    model_config = ConfigDict(extra="forbid")

    keep: str | None = Field(default=None, min_length=1, max_length=64)
    both: bool = False
    reason: str | None = Field(default=None, max_length=500)

    @model_validator(mode="after")
    def _one_choice(self) -> ResolveIn:
        if (self.keep is None) == (not self.both):
            raise ValueError("give exactly one of keep (a memory id) or both: true")
        return self


def mount_conflicts(app: FastAPI, svc: Service) -> None:
    """Add the conflict routes to ``app``."""

    @app.get("/v1/users/{user}/conflicts", tags=["memories"])
    def list_conflicts(user: str, p: Auth, all: bool = False) -> list[dict[str, Any]]:  # noqa: A002
        """Preferences that contradict each other and wait for the user's decision (with
        ``all``, also those resolved or moot). While one is open the newer side is applied
        and the older held back."""
        items = svc.store(p).conflicts(user=user, include_closed=all)
        return [c.model_dump(mode="json") for c in items]

    @app.post("/v1/users/{user}/conflicts/{conflict_id}/resolve", tags=["memories"])
    def resolve_conflict(user: str, conflict_id: str, body: ResolveIn, p: Auth) -> dict[str, Any]:
        """Keep one side (the other is superseded by it, kept in history) or both."""
        c = svc.store(p).resolve_conflict(
            conflict_id, user=user, keep=body.keep, actor="api", reason=body.reason
        )
        return c.model_dump(mode="json")
