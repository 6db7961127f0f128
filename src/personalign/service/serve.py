"""Serving processes: the app for ``personalign serve`` in this process, or one per worker.

``personalign serve --workers N`` (N > 1) hands uvicorn the factory :func:`app_from_env`;
each worker process builds its own personalizer (memory connection, model, ingestion queue
and journal file) and key store over the one home, from the environment the parent set
(``PERSONALIGN_HOME``, ``PERSONALIGN_CONFIG``, ``PERSONALIGN_EMBEDDER`` and
:data:`DASHBOARD_ENV`). Writes from every worker go to the one store: SQLite in WAL mode (every
write one ``BEGIN IMMEDIATE`` transaction with a busy timeout) or PostgreSQL, so none is
lost; each worker journals its own acknowledged turns, and one that dies is replayed by the
next that starts. An erase waits for the requests of the worker that serves it only.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

    from personalign.config import Settings

DASHBOARD_ENV = "PERSONALIGN_SERVE_DASHBOARD"
"""``0``: the workers serve no dashboard (``--no-dashboard``)."""

FACTORY = "personalign.service.serve:app_from_env"


def build_app(settings: Settings, *, dashboard: bool) -> FastAPI:
    """The app over a personalizer and key store opened for ``settings``; both are closed
    when the app shuts down (pending ingestion first)."""
    from personalign.backends._onnx import SPIN_ENV
    from personalign.pipeline import Personalizer
    from personalign.service.app import create_app
    from personalign.service.keys import KeyStore

    # before any model loads: concurrent requests need the cores more than spinning threads
    os.environ.setdefault(SPIN_ENV, "1" if settings.service.onnx_spinning else "0")
    keys = KeyStore(settings.home / "keys.db")
    try:
        personalizer = Personalizer.open(settings)
    except BaseException:
        keys.close()
        raise
    app = create_app(personalizer, keys, dashboard=dashboard)
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: FastAPI) -> AsyncIterator[None]:
        try:
            async with inner(a):
                yield
        finally:
            app.state.service.close()

    app.router.lifespan_context = lifespan
    return app


def app_from_env() -> FastAPI:
    """The uvicorn factory of a worker process: settings from the environment."""
    from personalign.config import load_settings

    settings = load_settings()
    return build_app(settings, dashboard=os.environ.get(DASHBOARD_ENV, "1") != "0")


def worker_env(settings: Settings, config: object, embedder: str | None, dashboard: bool) -> None:
    """Set what :func:`app_from_env` reads in the workers (they inherit the environment)."""
    os.environ["PERSONALIGN_HOME"] = str(settings.home)
    if config is not None:
        os.environ["PERSONALIGN_CONFIG"] = str(config)
    if embedder is not None:
        os.environ["PERSONALIGN_EMBEDDER"] = embedder
    os.environ[DASHBOARD_ENV] = "1" if dashboard else "0"
