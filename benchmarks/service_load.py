"""HTTP service load: requests/s and p50/p95 latency at 1, 8 and 32 concurrent clients, each
beside its baseline measured in the same run.

Starts `personalign serve` (real uvicorn, real MiniLM embedder and boundary) on 127.0.0.1 over
SQLite and, unless ``--no-postgres``, PostgreSQL + pgvector (a throw-away server from
``scripts/pg.sh``), seeds users with persona sentences, then for each store runs two servers
over the same data:

* ``new``: the defaults (chat gate of ``[service] max_concurrent_chats``, query cache on);
* ``base``: ``max_concurrent_chats = 1`` (chats one at a time: the old global model lock) and
  no query cache.

Each runs memory search, memory add and chat with the fake model (``--requests`` per level for
search and add; chat stops issuing after ``--chat-seconds`` per level; every level asks new
queries, so no cache sees a query twice). Chat uses the default method (best-of-N: the
figure is personalization overhead, reward model included, not generation). Then 64 chats at
32 clients that ingest their turn: every acknowledged turn must be in memory (``lost_turns``).

Remote: 32 concurrent chats against a scripted OpenAI-compatible server on 127.0.0.1 that
answers each completion after 0.5 s, new users (no memory: one remote call a chat), through
the gate (``new``) and through a gate of 1 (``base``: the old lock).

Local: with ``--local``, a server with the embedded model (SmolLM2) is asked ``GET
/v1/status``; when it reports ``concurrent`` (a batching local model), decode tokens/s of 8
concurrent chats over 1 chat (tokens from ``usage``); otherwise the figure is absent, and the
reason printed.

Targets (issue #20): search >= 500 req/s at 32 clients and p95 <= 20 ms at 1 client; chat
(fake) >= 150 req/s at 32 clients; remote 32 chats <= 1.5 s; local c8/c1 >= 3; zero errors
and zero lost turns.

    python benchmarks/service_load.py [--json] [--requests 400] [--chat-seconds 20]
        [--per-user 30] [--workers 1] [--no-postgres] [--local]
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from personalign.eval.bench import REPO, emit, parser, percentile
from personalign.eval.suites.memory_speed import persona_sentences
from personalign.testing import ScriptedOpenAIServer, free_port

LEVELS = (1, 8, 32)
USERS = [f"load{u}" for u in range(20)]
BASELINE = {
    "PERSONALIGN_SERVICE__MAX_CONCURRENT_CHATS": "1",
    "PERSONALIGN_SERVICE__EMBED_CACHE_SIZE": "0",
}
Make = Callable[[int], tuple[str, str, dict[str, Any]]]


def _cli() -> list[str]:
    return [sys.executable, "-m", "personalign.cli.main"]


def admin_key(env: dict[str, str]) -> str:
    out = subprocess.run(
        [*_cli(), "keys", "create", "--scope", "admin", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return str(json.loads(out)["key"])


@contextmanager
def server(env: dict[str, str], *, workers: int = 1) -> Iterator[str]:
    """`personalign serve` in a subprocess with ``env``; yields its base URL."""
    port = free_port()
    cmd = [*_cli(), "serve", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"]
    cmd += ["--workers", str(workers)]
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log)
        try:
            deadline = time.time() + 300
            while time.time() < deadline:
                if proc.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"server exited: {log.read().decode()[-2000:]}")
                try:
                    if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.3)
            else:
                raise RuntimeError("server did not start")
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=120)


async def _load(
    url: str, key: str, make: Make, clients: int, total: int, max_s: float | None = None
) -> tuple[float, list[float], int, list[httpx.Response]]:
    """Up to ``total`` requests from ``clients`` concurrent clients, none started after
    ``max_s``; (req/s, latencies in ms, errors, responses)."""
    lat: list[float] = []
    errors = 0
    done: list[httpx.Response] = []
    counter = iter(range(total))
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120, limits=limits) as c:
        t0 = time.perf_counter()

        async def worker() -> None:
            nonlocal errors
            for i in counter:
                if max_s is not None and time.perf_counter() - t0 > max_s:
                    return
                method, path, body = make(i)
                t = time.perf_counter()
                try:
                    r = await c.request(method, path, json=body)
                except httpx.HTTPError:
                    errors += 1
                    continue
                lat.append((time.perf_counter() - t) * 1000)
                errors += r.status_code >= 400
                done.append(r)

        await asyncio.gather(*(worker() for _ in range(clients)))
        return len(lat) / (time.perf_counter() - t0), lat, errors, done


def _chat(user: str, text: str, **personalization: Any) -> dict[str, Any]:
    return {
        "model": "personalign",
        "user": user,
        "messages": [{"role": "user", "content": text}],
        "personalization": {"ingest": False, **personalization},
    }


def seed(url: str, key: str, sentences: list[str], per_user: int) -> None:
    rng = random.Random(0)
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
        for u in USERS:
            for s in rng.sample(sentences, per_user):
                c.post(f"/v1/users/{u}/memories", json={"text": s}).raise_for_status()


def measure(
    url: str, key: str, sentences: list[str], args: Any, tag: str, offset: int
) -> dict[str, float]:
    """search, add and chat at each level (new queries per level and per run)."""
    n = len(sentences)
    out: dict[str, float] = {}
    for li, clients in enumerate(LEVELS):
        base = offset + li * 1000  # a query is never asked twice in a run

        def q(i: int, step: int, base: int = base) -> str:
            return sentences[((base + i) * step) % n]

        kinds: dict[str, tuple[Make, int, float | None]] = {
            "search": (
                lambda i, q=q: (
                    "POST",
                    f"/v1/users/{USERS[i % 20]}/search",
                    {"query": q(i, 7), "k": 5},
                ),
                args.requests,
                None,
            ),
            "add": (
                lambda i, q=q: (
                    "POST",
                    f"/v1/users/{USERS[i % 20]}/memories",
                    {"text": q(i, 13)},
                ),
                args.requests,
                None,
            ),
            "chat": (
                lambda i, q=q: ("POST", "/v1/chat/completions", _chat(USERS[i % 20], q(i, 3))),
                args.requests,
                args.chat_seconds,
            ),
        }
        for name, (make, total, max_s) in kinds.items():
            rps, lat, errors, _ = asyncio.run(_load(url, key, make, clients, total, max_s))
            out[f"{name}_rps_c{clients}_{tag}"] = rps
            out[f"{name}_p50_ms_c{clients}_{tag}"] = percentile(lat, 50)
            out[f"{name}_p95_ms_c{clients}_{tag}"] = percentile(lat, 95)
            out[f"{name}_n_c{clients}_{tag}"] = len(lat)
            out[f"{name}_errors_c{clients}_{tag}"] = errors
    return out


def lost_turns(url: str, key: str, sentences: list[str], tag: str) -> dict[str, float]:
    """64 chats from 32 clients that ingest their turn; then every acknowledged turn must be
    in the user's memory (raw turns) once ingestion is done. A request the boundary refused
    (``content_filter``) has no turn to keep; a turn whose ingestion failed after its
    retries counts as lost (it stays in the journal)."""
    users = [f"turns-{tag}-{u}" for u in range(8)]
    text = [f"{sentences[(i * 11) % len(sentences)]} (turn {tag}-{i})" for i in range(64)]

    def make(i: int) -> tuple[str, str, dict[str, Any]]:
        return "POST", "/v1/chat/completions", _chat(users[i % 8], text[i], ingest=True)

    _, _, errors, done = asyncio.run(_load(url, key, make, 32, 64))
    acked: set[str] = set()
    refused = 0
    for r in done:
        if r.status_code != 200:
            continue
        sent = json.loads(r.request.content)["messages"][-1]["content"]
        if r.json()["choices"][0]["finish_reason"] == "content_filter":
            refused += 1
        else:
            acked.add(sent)
    headers = {"Authorization": f"Bearer {key}"}
    found: set[str] = set()
    failed = 0
    with httpx.Client(base_url=url, headers=headers, timeout=60) as c:
        deadline = time.time() + 120
        for u in users:
            status: dict[str, Any] = {}
            while time.time() < deadline:
                status = c.get(f"/v1/users/{u}/status").json()["ingestion"]
                if status["pending"] == 0:
                    break
                time.sleep(0.2)
            failed += len(status.get("failed", []))
            recs = c.get(f"/v1/users/{u}/memories", params={"episodes": True, "limit": 1000})
            found.update(t for r in recs.json() for t in text if t in r["text"])
    missing = sorted(acked - found)
    for t in missing:
        print(f"lost turn ({tag}): {t!r}", file=sys.stderr)
    return {
        f"turns_acked_{tag}": len(acked),
        f"turns_refused_{tag}": refused,
        f"turns_failed_{tag}": failed,
        f"lost_turns_{tag}": len(missing),
        f"turns_errors_{tag}": errors,
    }


def run_store(
    work: Path, sentences: list[str], args: Any, tag: str, database_url: str | None
) -> dict[str, float]:
    home = work / tag
    env = {**os.environ, "PERSONALIGN_HOME": str(home), "PERSONALIGN_MODEL": "fake"}
    if database_url:
        env["PERSONALIGN_DATABASE_URL"] = database_url
    key = admin_key(env)
    out: dict[str, float] = {}
    with server(env, workers=args.workers) as url:
        t = time.perf_counter()
        seed(url, key, sentences, args.per_user)
        out[f"seed_s_{tag}"] = time.perf_counter() - t
        out.update(measure(url, key, sentences, args, f"{tag}", 0))
        out.update(lost_turns(url, key, sentences, tag))
    with server({**env, **BASELINE}) as url:
        out.update(measure(url, key, sentences, args, f"{tag}_base", 5000))
    return out


def remote(work: Path, clients: int = 32, delay_s: float = 0.5) -> dict[str, float]:
    """``clients`` concurrent chats of new users against a scripted server taking ``delay_s``
    a completion: wall time through the gate and through a gate of 1 (the old lock)."""
    out: dict[str, float] = {}
    with ScriptedOpenAIServer(lambda m, msgs: "Here is a short answer.", delay_s=delay_s) as s:
        for tag, extra in (("", {}), ("_base", {"PERSONALIGN_SERVICE__MAX_CONCURRENT_CHATS": "1"})):
            home = work / f"remote{tag}"
            env = {
                **os.environ,
                "PERSONALIGN_HOME": str(home),
                "PERSONALIGN_MODEL": "openai:scripted",
                "PERSONALIGN_OPENAI_BASE_URL": s.base_url,
                "PERSONALIGN_OPENAI_API_KEY": "scripted",
                **extra,
            }
            key = admin_key(env)
            with server(env) as url:
                warm = asyncio.run(  # first requests load the boundary and the cold start
                    _load(
                        url, key, lambda i: ("POST", "/v1/chat/completions", _chat("w", "hi")), 1, 2
                    )
                )
                make: Make = lambda i: (  # noqa: E731
                    "POST",
                    "/v1/chat/completions",
                    _chat(f"remote{i}", f"What is a good name for a cat, option {i}?"),
                )
                t = time.perf_counter()
                _, lat, errors, _ = asyncio.run(_load(url, key, make, clients, clients))
                out[f"remote_c{clients}_wall_s{tag}"] = time.perf_counter() - t
                out[f"remote_c{clients}_p95_ms{tag}"] = percentile(lat, 95)
                out[f"remote_errors{tag}"] = errors + warm[2]
    return out


def local(work: Path) -> tuple[dict[str, float | None], str]:
    """Decode tokens/s at 8 concurrent chats over 1, when the local model is concurrent."""
    env = {**os.environ, "PERSONALIGN_HOME": str(work / "local"), "PERSONALIGN_MODEL": "smollm2"}
    key = admin_key(env)
    with server(env) as url:
        status = httpx.get(
            url + "/v1/status", headers={"Authorization": f"Bearer {key}"}, timeout=60
        ).json()
        if not status.get("concurrent"):
            return {"local_tokps_c8_over_c1": None}, (
                f"local_tokps_c8_over_c1 absent: the service reports the local model "
                f"{status.get('model')!r} as not concurrent (one chat at a time; no batching "
                "local backend on this branch)"
            )
        figures: dict[str, float | None] = {}
        warm = _chat("warm", "Say hello.", method="plain") | {"max_tokens": 8}
        httpx.post(  # the first chat loads and warms the model: not part of either figure
            url + "/v1/chat/completions",
            json=warm,
            headers={"Authorization": f"Bearer {key}"},
            timeout=600,
        )
        for clients in (1, 8):

            def make(i: int) -> tuple[str, str, dict[str, Any]]:
                body = _chat(
                    f"tok{i}", f"Tell me a story about a {i}-legged robot.", method="plain"
                )
                body |= {"max_tokens": 64, "temperature": 0.0}
                return "POST", "/v1/chat/completions", body

            t = time.perf_counter()
            _, _, errors, done = asyncio.run(_load(url, key, make, clients, max(4, clients * 2)))
            wall = time.perf_counter() - t
            tokens = sum(
                r.json()["usage"]["completion_tokens"] for r in done if r.status_code == 200
            )
            figures[f"local_tokps_c{clients}"] = tokens / wall
            figures[f"local_errors_c{clients}"] = errors
        c1, c8 = figures["local_tokps_c1"], figures["local_tokps_c8"]
        figures["local_tokps_c8_over_c1"] = (c8 / c1) if c1 and c8 else None
        return figures, ""


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--requests", type=int, default=400, help="search/add requests per level")
    p.add_argument("--chat-seconds", type=float, default=20.0, help="chat issuing time per level")
    p.add_argument("--per-user", type=int, default=30, help="seeded memories per user (20 users)")
    p.add_argument("--workers", type=int, default=1, help="serve --workers of the new server")
    p.add_argument("--no-postgres", action="store_true")
    p.add_argument("--local", action="store_true", help="also the local model (SmolLM2)")
    args = p.parse_args()
    sentences = persona_sentences(args.data)
    figures: dict[str, Any] = {}
    notes: list[str] = []
    work = Path(tempfile.mkdtemp(prefix="personalign-load-"))
    work.chmod(0o755)  # the PostgreSQL server runs as the postgres user
    t0 = time.perf_counter()
    try:
        figures.update(remote(work))
        figures.update(run_store(work, sentences, args, "sqlite", None))
        if not args.no_postgres:
            pg_dir = work / "pg"
            pg = str(REPO / "scripts" / "pg.sh")
            pg_env = {**os.environ, "PYTHON": os.environ.get("PYTHON", sys.executable)}
            db = subprocess.run(
                [pg, "start", str(pg_dir)], capture_output=True, text=True, env=pg_env
            )
            if db.returncode != 0:
                notes.append(f"postgres figures absent: pg.sh start failed: {db.stderr.strip()}")
                figures["errors_postgres_start"] = 1
            else:
                try:
                    figures.update(run_store(work, sentences, args, "postgres", db.stdout.strip()))
                finally:
                    subprocess.run(
                        [pg, "stop", str(pg_dir)], capture_output=True, check=False, env=pg_env
                    )
        if args.local:
            loc, why = local(work)
            figures.update(loc)
            if why:
                notes.append(why)
        else:
            figures["local_tokps_c8_over_c1"] = None
            notes.append("local_tokps_c8_over_c1 absent: not asked for (--local)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    figures["errors"] = sum(v for k, v in figures.items() if "errors" in k and v)
    figures["lost_turns"] = sum(v for k, v in figures.items() if k.startswith("lost_turns_"))
    figures["chat_rps_c32_fake"] = figures.get("chat_rps_c32_sqlite")
    figures["chat_rps_c32_fake_base"] = figures.get("chat_rps_c32_sqlite_base")
    figures["wall_s"] = time.perf_counter() - t0
    figures["load1_after"] = os.getloadavg()[0]
    figures["cpus"] = os.cpu_count() or 0
    _print_pairs(figures)
    for note in notes:
        print(note)
    emit(
        figures,
        title="HTTP service load (127.0.0.1), each figure beside its baseline",
        as_json=args.json,
    )


def _print_pairs(figures: dict[str, Any]) -> None:
    """Each headline figure beside its baseline of the same run."""
    pairs = [("remote_c32_wall_s", "remote_c32_wall_s_base")]
    for store in ("sqlite", "postgres"):
        for c in LEVELS:
            for kind in ("search_rps", "search_p95_ms", "chat_rps", "chat_p95_ms", "add_rps"):
                pairs.append((f"{kind}_c{c}_{store}", f"{kind}_c{c}_{store}_base"))
    for new, base in pairs:
        if new in figures:
            b = figures.get(base)
            print(f"{new:32s} {figures[new]:10.2f}   baseline {b if b is None else round(b, 2)}")


if __name__ == "__main__":
    main()
