"""A live personalign server on 127.0.0.1 for tests (real HTTP, real uvicorn)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from personalign.config import load_settings
from personalign.pipeline import Personalizer, open_guarded_memory
from personalign.service.app import create_app
from personalign.service.keys import KeyStore
from personalign.testing import CueExtractor, FakeLM, HashingEmbedder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveServer:
    url: str
    keys: KeyStore
    personalizer: Personalizer
    admin_key: str


@contextmanager
def live_server(home: Path) -> Iterator[LiveServer]:
    settings = load_settings(home=home, embedder="hashing")
    personalizer = Personalizer(
        open_guarded_memory(settings, HashingEmbedder(), extractor=CueExtractor()),
        FakeLM(name="fake-lm"),
    )
    keys = KeyStore(home / "keys.db")
    _, admin = keys.create(scope="admin", name="tests")
    app = create_app(personalizer, keys)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.02)
    try:
        yield LiveServer(f"http://127.0.0.1:{port}", keys, personalizer, admin)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        personalizer.close()
