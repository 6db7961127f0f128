"""The service under concurrency: the chat gate, retrieval once per chat, the query-embedding
cache and batcher, ``[service]`` settings, and ``serve --workers 2`` over one SQLite store."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from personalign.backends.embed_batch import QueryEmbedder, query_embedder, unwrap
from personalign.backends.models.base import Generation, GenerationOptions
from personalign.backends.models.local import TransformersLM
from personalign.backends.models.openai_compat import OpenAICompatLM
from personalign.config import ServiceConfig, load_settings
from personalign.errors import ConfigError
from personalign.service.gate import ChatGate
from personalign.service.keys import KeyStore
from personalign.testing import FakeLM, HashingEmbedder, ScriptedOpenAIServer, free_port
from personalign.types import Message
from service_helpers import live_server

SRC = str(Path(__file__).resolve().parents[1] / "src")
SERVE = [sys.executable, "-m", "personalign.cli.main", "serve"]


# -- the chat gate -------------------------------------------------------------------------


class SlowLM(FakeLM):
    """A fake model whose replies take ``delay`` seconds and that counts overlapping calls."""

    def __init__(self, *, concurrent: bool, delay: float = 0.2) -> None:
        super().__init__(name="slow")
        self.concurrent = concurrent
        self.delay = delay
        self._lock = threading.Lock()
        self.inside = 0
        self.peak = 0

    def generate(self, messages: Sequence[Message], *, options: GenerationOptions) -> Generation:
        with self._lock:
            self.inside += 1
            self.peak = max(self.peak, self.inside)
        try:
            time.sleep(self.delay)
            return super().generate(messages, options=options)
        finally:
            with self._lock:
                self.inside -= 1


def _hold_together(gate: ChatGate, n: int, hold_s: float = 0.15) -> float:
    def one() -> None:
        with gate.hold():
            time.sleep(hold_s)

    threads = [threading.Thread(target=one) for _ in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def test_gate_is_a_bounded_semaphore_for_a_concurrent_model() -> None:
    gate = ChatGate(lambda: FakeLM(), limit=3)
    wall = _hold_together(gate, 6)
    assert gate.peak == 3 and gate.active == 0
    assert 0.29 < wall < 0.6  # two rounds of three


def test_gate_is_exclusive_for_a_model_that_is_not_concurrent() -> None:
    lm = SlowLM(concurrent=False)
    gate = ChatGate(lambda: lm, limit=8)
    _hold_together(gate, 4, hold_s=0.05)
    assert gate.peak == 1
    lm.concurrent = True  # read at each hold: a model made concurrent later is honoured
    _hold_together(gate, 4, hold_s=0.1)
    assert gate.peak == 4


def test_which_backends_are_concurrent() -> None:
    assert OpenAICompatLM.concurrent is True
    assert FakeLM.concurrent is True
    assert TransformersLM.concurrent is False  # the plain local model: one chat at a time


def _chat(user: str, text: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": "personalign",
        "user": user,
        "messages": [{"role": "user", "content": text}],
        "personalization": {"ingest": False},
        **extra,
    }


async def _burst(url: str, key: str, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as client:
        return list(
            await asyncio.gather(*(client.post("/v1/chat/completions", json=b) for b in bodies))
        )


@pytest.mark.parametrize("concurrent", [True, False])
def test_chats_overlap_only_for_a_concurrent_model(tmp_path: Path, concurrent: bool) -> None:
    """Real HTTP: 6 chats at once against a model taking 0.2 s a call run together when the
    model is concurrent, one at a time when it is not (the local model)."""
    lm = SlowLM(concurrent=concurrent)
    with live_server(tmp_path, lm) as server:
        bodies = [
            _chat(f"u{i}", "hello there", personalization={"ingest": False, "method": "plain"})
            for i in range(6)
        ]
        asyncio.run(_burst(server.url, server.admin_key, bodies[:1]))  # loads what it needs
        lm.peak = 0
        t0 = time.perf_counter()
        replies = asyncio.run(_burst(server.url, server.admin_key, bodies))
        wall = time.perf_counter() - t0
        status = httpx.get(
            f"{server.url}/v1/status", headers={"Authorization": f"Bearer {server.admin_key}"}
        ).json()
    assert status["concurrent"] is concurrent and status["pid"] == os.getpid()
    assert status["peak_chats"] == (6 if concurrent else 1)
    assert [r.status_code for r in replies] == [200] * 6
    if concurrent:
        assert lm.peak == 6 and wall < 0.9
    else:
        assert lm.peak == 1 and wall >= 6 * 0.2


def test_remote_chats_run_concurrently_bounded_by_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An OpenAI-compatible server answering after 0.4 s: 8 best-of-N chats (4 remote calls
    each) finish in about one call's time; with max_concurrent_chats 2, in four rounds."""
    with ScriptedOpenAIServer(lambda m, msgs: "Sure: tea.", delay_s=0.4) as remote:
        walls = {}
        for limit in (32, 2):
            home = tmp_path / f"limit{limit}"
            lm = OpenAICompatLM("scripted", base_url=remote.base_url, api_key="x")
            monkeypatch.setenv("PERSONALIGN_SERVICE__MAX_CONCURRENT_CHATS", str(limit))
            with live_server(home, lm) as server:
                server.personalizer.memory.add("I prefer tea over coffee", user="amy")
                svc = server.personalizer
                svc_gate = server.service.gate
                bodies = [_chat("amy", f"what should I drink, {i}?") for i in range(8)]
                asyncio.run(_burst(server.url, server.admin_key, bodies[:1]))  # warm up
                svc_gate.peak = 0
                t0 = time.perf_counter()
                replies = asyncio.run(_burst(server.url, server.admin_key, bodies))
                walls[limit] = time.perf_counter() - t0
                assert [r.status_code for r in replies] == [200] * 8, replies[0].text
                assert svc_gate.peak == min(8, limit)
                assert svc.model is lm
    assert walls[32] < 1.2  # 8 chats x 4 calls of 0.4 s, all at once
    assert walls[2] >= 4 * 0.4


# -- retrieval once per chat --------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_retrieval_runs_once_per_chat(tmp_path: Path, stream: bool) -> None:
    """One search of the memory per request, whatever ``n`` and streaming (before: once in
    the app to validate, once per choice in the pipeline)."""
    with live_server(tmp_path) as server:
        pz = server.personalizer
        pz.memory.add("I prefer short answers", user="amy")
        searches: list[str] = []
        inner = pz.memory.search

        def counted(text: str, **kw: Any) -> Any:
            searches.append(text)
            return inner(text, **kw)

        pz.memory.search = counted  # type: ignore[method-assign]
        body = _chat("amy", "how long should answers be?", n=2, stream=stream)
        with httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {server.admin_key}"}
        ) as c:
            r = c.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        assert r.headers["cache-control"] == "no-store"
        if stream:
            assert r.text.rstrip().endswith("data: [DONE]")
        else:
            assert len(r.json()["choices"]) == 2
            assert r.json()["personalization"]["preferences"]  # the memory was used
        assert searches == ["how long should answers be?"]


def test_a_plan_made_before_an_erase_is_made_again(tmp_path: Path) -> None:
    """The service plans a chat before the user's hold: when the user is erased in between,
    the reply plans again, so nothing erased is written after the erase."""
    from personalign.pipeline import PersonalizeOptions

    with live_server(tmp_path) as server:
        pz = server.personalizer
        pz.memory.add("I prefer answers about zebras", user="amy")
        history = [Message(role="user", content="tell me about zebras")]
        options = PersonalizeOptions(ingest=False, method="prompt")
        plan = pz.plan(history, user="amy", options=options)
        assert plan.hits and "zebras" in plan.messages[0].content
        kept = pz.respond(history, user="amy", options=options, plan=plan)
        assert kept.exchange.messages == plan.messages  # no erase: the plan is used as is
        pz.erase_user("amy")
        reply = pz.respond(history, user="amy", options=options, plan=plan)
        assert reply.exchange.preferences == []
        assert "I prefer answers about zebras" not in str(reply.exchange.model_dump())


# -- query embeddings ---------------------------------------------------------------------


class CountingEmbedder(HashingEmbedder):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[list[str]] = []
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            self.calls.append(list(texts))
        time.sleep(0.02)  # a model call takes a while: concurrent callers queue up
        return super().embed(texts)


def test_query_cache_embeds_a_text_once() -> None:
    inner = CountingEmbedder()
    emb = QueryEmbedder(inner, cache_size=2)
    a = emb.embed(["tea", "coffee"])
    b = emb.embed(["coffee", "tea", "tea"])
    assert np.array_equal(a[[1, 0, 0]], b)
    assert inner.calls == [["tea", "coffee"]]
    emb.embed(["milk"])  # the cache holds 2: "coffee" (least recently used) goes
    emb.embed(["tea"])
    assert inner.calls[-1] == ["milk"]
    emb.embed(["coffee"])
    assert inner.calls[-1] == ["coffee"] and len(inner.calls) == 3
    assert emb.name == inner.name and emb.dim == inner.dim and unwrap(emb) is inner
    big = [f"t{i}" for i in range(40)]  # more than max_batch: straight through, uncached
    assert np.array_equal(emb.embed(big), inner.embed(big))


def test_batched_embeddings_equal_unbatched_minilm(embedder: Any) -> None:
    """16 threads embed their own query at once: the batcher answers them in fewer calls,
    and every caller gets its own vector, equal (float rounding) to embedding it alone."""
    texts = [f"what is a good {w} for the weekend?" for w in "abcdefghijklmnop"]
    texts[3] = "tea"  # lengths differ: padding inside a batch must not change a vector
    alone = np.stack([embedder.embed([t])[0] for t in texts])
    emb = QueryEmbedder(embedder, cache_size=0, batch=True, window_ms=20, max_batch=32)
    out: dict[int, np.ndarray] = {}
    start = threading.Barrier(len(texts))

    def one(i: int) -> None:
        start.wait()
        out[i] = emb.embed([texts[i]])[0]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    emb.close()
    got = np.stack([out[i] for i in range(len(texts))])
    assert np.allclose(got, alone, atol=1e-5)
    assert 1 <= emb.batches < len(texts)


def test_batcher_passes_failures_to_every_waiting_caller() -> None:
    class Broken(HashingEmbedder):
        def embed(self, texts: Sequence[str]) -> np.ndarray:
            raise RuntimeError("model gone")

    emb = QueryEmbedder(Broken(), batch=True)
    with pytest.raises(RuntimeError, match="model gone"):
        emb.embed(["x"])
    emb.close()


# -- settings -----------------------------------------------------------------------------


def test_service_settings_from_file_and_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "config.toml").write_text(
        "[service]\nmax_concurrent_chats = 4\nembed_batch = true\nembed_cache_size = 10\n"
    )
    monkeypatch.setenv("PERSONALIGN_SERVICE__EMBED_BATCH_WINDOW_MS", "5")
    s = load_settings(home=tmp_path)
    assert s.service.max_concurrent_chats == 4 and s.service.embed_batch
    assert s.service.embed_batch_window_ms == 5.0 and s.service.embed_cache_size == 10
    assert s.service.workers == 1 and s.service.onnx_spinning is False
    wrapped = query_embedder(HashingEmbedder(), s.service)
    assert isinstance(wrapped, QueryEmbedder) and wrapped.cache_size == 10
    plain = HashingEmbedder()
    assert query_embedder(plain, ServiceConfig(embed_cache_size=0)) is plain
    monkeypatch.setenv("PERSONALIGN_SERVICE__MAX_CONCURRENT_CHATS", "0")
    with pytest.raises(ConfigError, match=r"service\.max_concurrent_chats"):
        load_settings(home=tmp_path)


def test_the_service_gate_takes_its_limit_from_the_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERSONALIGN_SERVICE__MAX_CONCURRENT_CHATS", "5")
    with live_server(tmp_path) as server:
        assert server.service.gate.limit == 5


# -- serve --workers 2 ---------------------------------------------------------------------


def test_serve_two_workers_over_one_sqlite_store_loses_no_write(tmp_path: Path) -> None:
    """`personalign serve --workers 2` (real uvicorn processes, SQLite in WAL mode): 16
    clients add 240 memories and send 80 chats at once; after shutdown every memory, every
    exchange and every chat turn is stored, once; both workers served."""
    from personalign.backends.stores.sqlite import SQLiteStore

    with KeyStore(tmp_path / "keys.db") as keys:
        _, key = keys.create(scope="admin")
    env = {
        **os.environ,
        "PYTHONPATH": SRC,
        "PERSONALIGN_HOME": str(tmp_path),
        "PERSONALIGN_MODEL": "fake",
        "PERSONALIGN_EMBEDDER": "hashing",
    }
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [*SERVE, "--port", str(port), "--workers", "2", "--no-dashboard"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while log.read_text().count("Application startup complete") < 2:
            assert proc.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)

        async def load() -> list[int]:
            headers = {"Authorization": f"Bearer {key}"}
            todo = [("add", i) for i in range(240)] + [("chat", i) for i in range(80)]
            queue = iter(todo)
            codes: list[int] = []
            async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as c:

                async def client() -> None:
                    for kind, i in queue:
                        user = f"w{i % 4}"
                        if kind == "add":
                            r = await c.post(
                                f"/v1/users/{user}/memories", json={"text": f"I like item {i}"}
                            )
                        else:
                            body = _chat(user, f"turn {i}: anything new?")
                            body["personalization"] = {"method": "plain"}
                            r = await c.post("/v1/chat/completions", json=body)
                        codes.append(r.status_code)

                await asyncio.gather(*(client() for _ in range(16)))
            return codes

        codes = asyncio.run(load())
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    assert codes.count(200) + codes.count(201) == 320, sorted(set(codes))
    text = log.read_text()
    assert text.count("Started server process") >= 2  # two workers, each its own process
    store = SQLiteStore(tmp_path / "memory.db", HashingEmbedder())
    try:
        users = [f"w{u}" for u in range(4)]
        added = [
            r.text
            for u in users
            for r in store.list(user=u, kinds=["explicit", "implicit"], limit=10_000)
            if r.text.startswith("I like item ")
        ]
        assert sorted(added) == sorted(f"I like item {i}" for i in range(240))
        exchanges = sum(len(store.exchanges(user=u, limit=10_000)) for u in users)
        assert exchanges == 80
        turns = [
            r.text
            for u in users
            for r in store.list(user=u, kinds=["episode"], limit=10_000)
            if r.text.startswith("turn ")
        ]
        assert sorted(turns) == sorted(f"turn {i}: anything new?" for i in range(80))
    finally:
        store.close()
