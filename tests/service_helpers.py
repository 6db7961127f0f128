"""A live personalign server on 127.0.0.1 for tests (real HTTP, real uvicorn)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from personalign.config import load_settings
from personalign.pipeline import Personalizer, open_guarded_memory
from personalign.service.app import create_app
from personalign.service.core import Service
from personalign.service.keys import KeyStore
from personalign.testing import CueExtractor, FakeLM, HashingEmbedder, serve_app


@dataclass
class LiveServer:
    url: str
    keys: KeyStore
    personalizer: Personalizer
    admin_key: str
    service: Service


@contextmanager
def live_server(home: Path, model: Any = None) -> Iterator[LiveServer]:
    """The service over the hashing embedder and ``model`` (default: ``FakeLM("fake-lm")``)."""
    settings = load_settings(home=home, embedder="hashing")
    personalizer = Personalizer(
        open_guarded_memory(settings, HashingEmbedder(), extractor=CueExtractor()),
        model if model is not None else FakeLM(name="fake-lm"),
    )
    keys = KeyStore(home / "keys.db")
    _, admin = keys.create(scope="admin", name="tests")
    app = create_app(personalizer, keys)
    try:
        with serve_app(app) as port:
            yield LiveServer(
                f"http://127.0.0.1:{port}", keys, personalizer, admin, app.state.service
            )
    finally:
        personalizer.close()
        keys.close()
