"""Nothing lost, nothing leaked: background ingestion is retried, recorded and raised; an erase
is never followed by a write of the erased user's text; an acknowledged turn survives a crash."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from personalign.config import IngestionConfig, load_settings
from personalign.errors import IngestionError
from personalign.pipeline import PersonalizeOptions, Personalizer, open_guarded_memory
from personalign.service.app import create_app
from personalign.service.keys import KeyStore
from personalign.testing import CueExtractor, FakeLM, HashingEmbedder
from service_helpers import live_server

PLAIN = PersonalizeOptions(method="plain")
SRC = str(Path(__file__).resolve().parents[1] / "src")


def _personalizer(home: Path, **ingestion: object) -> Personalizer:
    settings = load_settings(home=home, embedder="hashing", ingestion=IngestionConfig(**ingestion))  # type: ignore[arg-type]
    memory = open_guarded_memory(settings, HashingEmbedder(), extractor=CueExtractor())
    return Personalizer(memory, FakeLM(name="fake"))


def _episodes(pz: Personalizer, user: str) -> list[str]:
    return [r.text for r in pz.memory.list(user=user, kinds=["episode"])]


def _journal_bytes(home: Path) -> bytes:
    return b"".join(p.read_bytes() for p in (home / "journal").glob("*.jsonl"))


class Flaky:
    """Wraps ``Memory.add_messages`` to fail the first ``fails`` calls."""

    def __init__(self, pz: Personalizer, fails: int) -> None:
        self.real = pz.memory.add_messages
        self.fails = fails
        self.calls = 0
        pz.memory.add_messages = self  # type: ignore[method-assign]

    def __call__(self, *args: object, **kw: object) -> object:
        self.calls += 1
        if self.calls <= self.fails:
            raise OSError(f"database unavailable (call {self.calls})")
        return self.real(*args, **kw)  # type: ignore[arg-type]


def test_a_failing_ingestion_is_retried_with_backoff(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with _personalizer(tmp_path, max_attempts=3, backoff_s=0.05) as pz:
        flaky = Flaky(pz, fails=2)
        t0 = time.monotonic()
        pz.respond("I prefer green tea", user="ana", options=PLAIN)
        pz.flush()  # no failure left: the third attempt worked
        assert flaky.calls == 3 and time.monotonic() - t0 >= 0.05 + 0.1  # 0.05 s, then 0.1 s
        assert _episodes(pz, "ana") == ["I prefer green tea"]
        assert pz.ingestion_status("ana") == {"pending": 0, "failed": []}


def test_failures_are_recorded_raised_once_and_kept_for_retry(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pz = _personalizer(tmp_path, max_attempts=2, backoff_s=0.0)
    flaky = Flaky(pz, fails=4)
    pz.respond("I prefer green tea", user="ana", options=PLAIN)
    pz.respond("I like jazz", user="ben", options=PLAIN)
    with pytest.raises(IngestionError) as err:
        pz.flush()
    assert flaky.calls == 4 and len(err.value.failures) == 2
    assert "'ana'" in str(err.value) and "database unavailable" in str(err.value)
    failed = pz.ingestion_status("ana")["failed"]
    assert len(failed) == 1 and failed[0]["attempts"] == 2 and failed[0]["turn_ids"]
    pz.flush()  # each failure is raised once; status still lists it
    assert b"green tea" in _journal_bytes(tmp_path)  # still journaled: not lost
    assert pz.ingestion.retry_failed("ana") == 1
    pz.flush()
    assert _episodes(pz, "ana") == ["I prefer green tea"]
    assert pz.ingestion_status("ana")["failed"] == []
    assert len(pz.ingestion_status("ben")["failed"]) == 1
    pz.close()  # ben's turn stays in the journal: the next start replays it
    with _personalizer(tmp_path) as again:
        again.flush()
        assert _episodes(again, "ben") == ["I like jazz"]
        assert _episodes(again, "ana") == ["I prefer green tea"]  # not added twice
    assert _journal_bytes(tmp_path) == b""


def test_status_route_and_dashboard_show_failures_scoped(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    pz = _personalizer(tmp_path, max_attempts=2, backoff_s=0.0)
    Flaky(pz, fails=10)
    keys = KeyStore(tmp_path / "keys.db")
    _, ana = keys.create(scope="user", app="shop", user="ana")
    _, bob = keys.create(scope="user", app="shop", user="bob")
    _, app_key = keys.create(scope="app", app="shop")
    with TestClient(create_app(pz, keys)) as client:
        pz.respond("I prefer green tea", user="shop:ana", options=PLAIN)
        pz.flush(check=False)
        r = client.get("/v1/users/ana/status", headers={"Authorization": f"Bearer {ana}"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["ingestion"]["pending"] == 0 and len(body["ingestion"]["failed"]) == 1
        assert "database unavailable" in body["ingestion"]["failed"][0]["error"]
        as_app = client.get("/v1/users/ana/status", headers={"Authorization": f"Bearer {app_key}"})
        assert as_app.json()["ingestion"] == body["ingestion"]
        other = client.get("/v1/users/ana/status", headers={"Authorization": f"Bearer {bob}"})
        assert other.status_code == 403
        bobs = client.get("/v1/users/bob/status", headers={"Authorization": f"Bearer {bob}"})
        assert bobs.json()["ingestion"] == {"pending": 0, "failed": []}
        client.cookies.set("pal_key", ana)
        page = client.get("/ui")
        assert "could not be read into your memory after 2 tries" in page.text
        client.cookies.set("pal_key", bob)
        assert "could not be read" not in client.get("/ui").text
    pz.close()
    keys.close()


def test_erase_drops_the_users_queued_turns_and_journal_entries(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pz = _personalizer(tmp_path)
    gate, later = threading.Event(), threading.Event()
    real = pz.memory.add_messages

    def slow(*args: object, **kw: object) -> object:
        (gate if kw["user"] == "ana" else later).wait(10)
        return real(*args, **kw)  # type: ignore[arg-type]

    pz.memory.add_messages = slow  # type: ignore[method-assign]
    for i in range(5):
        pz.respond(f"I like zebra{i}quilt tea", user="ana", options=PLAIN)
    pz.respond("I like jazz", user="ben", options=PLAIN)
    assert b"zebra3quilt" in _journal_bytes(tmp_path)
    erasing = threading.Thread(target=pz.erase_user, args=("ana",))
    erasing.start()
    time.sleep(0.1)
    gate.set()  # the running ingestion finishes before the erase; the queued ones are dropped
    erasing.join(10)
    assert not erasing.is_alive()
    assert b"zebra" not in _journal_bytes(tmp_path) and b"jazz" in _journal_bytes(tmp_path)
    later.set()
    pz.flush()
    assert not pz.memory.has_user(user="ana") and _episodes(pz, "ben") == ["I like jazz"]
    pz.close()
    assert b"zebra" not in (tmp_path / "memory.db").read_bytes()


def _db_bytes(home: Path) -> bytes:
    return b"".join(
        p.read_bytes() for p in home.glob("memory.db*") if p.is_file()
    ) + _journal_bytes(home)


def _chat_until(
    client: httpx.Client,
    user: str,
    rnd: int,
    stop: threading.Event,
    acked: list[tuple[str, float]],
) -> None:
    """Chat as ``user`` until ``stop``, each turn with a unique marker; record each marker
    and when its reply (the acknowledgement) arrived."""
    j = 0
    while not stop.is_set():
        marker = f"qx{rnd}m{j}zv"
        r = client.post(
            "/v1/chat/completions",
            json={
                "model": "personalign",
                "user": user,
                "messages": [{"role": "user", "content": f"I prefer {marker}"}],
                "personalization": {"method": "plain"},
            },
        )
        assert r.status_code == 200, r.text
        acked.append((marker, time.monotonic()))
        j += 1


@pytest.mark.slow
def test_ingestion_racing_erase_over_http_leaves_nothing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """100 rounds: a client chats (each turn a unique marker) while the user is erased over
    HTTP. No turn acknowledged before the DELETE was sent may be found afterwards, in any row
    or in the bytes of the database and journal files."""
    rng = random.Random(7)
    with live_server(tmp_path) as server:
        auth = {"Authorization": f"Bearer {server.admin_key}"}
        gone: list[str] = []  # markers acknowledged before their user's erase was sent
        with httpx.Client(base_url=server.url, headers=auth, timeout=30) as client:
            for rnd in range(100):
                user = f"racer{rnd}"
                acked: list[tuple[str, float]] = []
                stop = threading.Event()
                sender = threading.Thread(target=_chat_until, args=(client, user, rnd, stop, acked))
                sender.start()
                want = rng.randint(1, 4)
                while len(acked) < want and sender.is_alive():
                    time.sleep(0.001)
                sent = time.monotonic()
                r = client.delete(f"/v1/users/{user}")
                stop.set()
                sender.join(30)
                assert r.status_code == 200, r.text
                before = [m for m, t in acked if t < sent]
                assert len(before) >= want
                gone.extend(before)
                text = json.dumps(server.personalizer.memory.store.export(user=user))
                assert not [m for m in before if m in text]  # at once, and ...
        server.personalizer.flush()
        store = server.personalizer.memory.store
        rows = json.dumps([store.export(user=u) for u in store.users()])
        raw = _db_bytes(tmp_path)
        assert [m for m in gone if m in rows] == []  # ... after every queued turn ran
        assert [m for m in gone if m.encode() in raw] == []
        assert len(gone) >= 100


def _serve(home: Path, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": SRC,
        "PERSONALIGN_HOME": str(home),
        "PERSONALIGN_MODEL": "fake",
        "PERSONALIGN_EMBEDDER": "hashing",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "personalign.cli.main", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _wait_up(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError("server did not start")


@pytest.mark.slow
def test_sigkill_mid_burst_loses_no_acknowledged_turn(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A service process (fake model, real SQLite, real HTTP) answers a burst of 1,000 chats
    from 8 clients and is SIGKILLed mid-burst; after a restart every acknowledged turn is in
    the store, once."""
    from personalign.backends.stores.sqlite import SQLiteStore
    from personalign.testing import free_port

    with KeyStore(tmp_path / "keys.db") as keys:
        _, key = keys.create(scope="admin")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _serve(tmp_path, port)
    acked: list[tuple[str, str]] = []
    lock = threading.Lock()
    todo = iter(range(1000))
    kill_at = 500

    def client() -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as c:
            for i in todo:
                user, marker = f"u{i % 10}", f"kq{i}zv"
                body = {
                    "model": "personalign",
                    "user": user,
                    "messages": [{"role": "user", "content": f"I prefer {marker}"}],
                    "personalization": {"method": "plain"},
                }
                try:
                    r = c.post("/v1/chat/completions", json=body, timeout=30)
                except httpx.HTTPError:
                    return  # the server is gone: not acknowledged
                assert r.status_code == 200, r.text
                with lock:
                    acked.append((user, marker))
                    if len(acked) == kill_at:
                        proc.send_signal(signal.SIGKILL)

    try:
        _wait_up(url, proc)
        t0 = time.monotonic()
        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        proc.wait(10)
        assert proc.returncode == -signal.SIGKILL and len(acked) >= kill_at
        burst_s = time.monotonic() - t0
        # before the restart: some acknowledged turns are only in the journal
        store = SQLiteStore(tmp_path / "memory.db", HashingEmbedder())
        stored = {r.text for u in store.users() for r in store.list(user=u, kinds=["episode"])}
        store.close()
        missing = [m for _, m in acked if f"I prefer {m}" not in stored]
        assert missing, "the kill came after ingestion caught up: nothing to replay"
        assert all(m.encode() in _journal_bytes(tmp_path) for m in missing)

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = _serve(tmp_path, port)
        _wait_up(url, proc)
        auth = {"Authorization": f"Bearer {key}"}
        users = sorted({u for u, _ in acked})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            pending = [
                httpx.get(f"{url}/v1/users/{u}/status", headers=auth).json()["ingestion"]
                for u in users
            ]
            if all(p["pending"] == 0 for p in pending):
                break
            time.sleep(0.2)
        assert all(p["failed"] == [] for p in pending)
        texts: list[str] = []
        for u in users:
            r = httpx.get(
                f"{url}/v1/users/{u}/memories",
                params={"episodes": "true", "limit": 1000},
                headers=auth,
            )
            texts += [m["text"] for m in r.json() if m["kind"] == "episode"]
        for _, marker in acked:
            assert texts.count(f"I prefer {marker}") == 1, marker
        print(f"acknowledged {len(acked)}, replayed {len(missing)}, burst {burst_s:.1f} s")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
    assert _journal_bytes(tmp_path) == b""  # truncated once ingested, removed on shutdown


def test_erase_waits_for_the_users_requests_in_progress(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with _personalizer(tmp_path) as pz:
        pz.memory.add("I like tea", user="shop:ana")
        inside, release = threading.Event(), threading.Event()

        def request() -> None:
            with pz.ingestion.hold("shop:ana"):
                inside.set()
                release.wait(10)
                pz.memory.add("I like green tea too", user="shop:ana")

        req = threading.Thread(target=request)
        req.start()
        inside.wait(5)
        erase = threading.Thread(target=pz.erase_user, args=("shop:ana",))
        erase.start()
        time.sleep(0.2)
        assert erase.is_alive() and pz.memory.has_user(user="shop:ana")  # waiting
        other = threading.Thread(target=lambda: pz.ingestion.hold("shop:bob").__enter__())
        other.start()
        other.join(2)
        assert not other.is_alive()  # other users are not held up
        release.set()
        req.join(5)
        erase.join(5)
        assert not erase.is_alive() and not pz.memory.has_user(user="shop:ana")
