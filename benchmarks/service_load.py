"""HTTP service load: requests/s and p50/p95 latency at 1, 8 and 32 concurrent clients.

Starts `personalign serve` (real uvicorn, real MiniLM embedder, the fake model for chat) on
127.0.0.1 for SQLite and, unless ``--no-postgres``, for PostgreSQL + pgvector (a throw-away
server from ``scripts/pg.sh``), seeds users with persona sentences, then runs a bounded load
(``--requests`` per level) of memory search, memory add and chat (fake model: the chat figure
is personalization overhead, not generation). Target: search >= 500 req/s with p95 <= 50 ms
on 2 cores (SQLite).

    python benchmarks/service_load.py [--json] [--requests 400] [--no-postgres]
"""

from __future__ import annotations

import asyncio
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

import httpx

from personalign.eval.bench import REPO, emit, parser, percentile
from personalign.eval.suites.memory_speed import persona_sentences
from personalign.testing import free_port

LEVELS = (1, 8, 32)


@contextmanager
def server(home: Path, database_url: str | None) -> Iterator[tuple[str, str]]:
    """`personalign serve` in a subprocess; yields (base URL, admin key)."""
    env = {**os.environ, "PERSONALIGN_HOME": str(home), "PERSONALIGN_MODEL": "fake"}
    if database_url:
        env["PERSONALIGN_DATABASE_URL"] = database_url
    cli = [sys.executable, "-m", "personalign.cli.main"]
    key = subprocess.run(
        [*cli, "keys", "create", "--scope", "admin", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    import json

    admin = json.loads(key)["key"]
    port = free_port()
    proc = subprocess.Popen(
        [*cli, "serve", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        else:
            raise RuntimeError("server did not start")
        yield url, admin
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def _load(
    url: str, key: str, make: Callable[[int], tuple[str, str, dict]], clients: int, total: int
) -> tuple[float, list[float], int]:
    """Run ``total`` requests from ``clients`` concurrent clients; (req/s, latencies, errors)."""
    lat: list[float] = []
    errors = 0
    counter = iter(range(total))
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as client:

        async def worker() -> None:
            nonlocal errors
            for i in counter:
                method, path, body = make(i)
                t = time.perf_counter()
                r = await client.request(method, path, json=body)
                lat.append((time.perf_counter() - t) * 1000)
                errors += r.status_code >= 400

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return total / (time.perf_counter() - t0), lat, errors


def measure(url: str, key: str, sentences: list[str], requests: int, tag: str) -> dict[str, float]:
    rng = random.Random(0)
    users = [f"load{u}" for u in range(20)]
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
        for u in users:
            for s in rng.sample(sentences, 50):
                c.post(f"/v1/users/{u}/memories", json={"text": s})
    kinds: dict[str, Callable[[int], tuple[str, str, dict]]] = {
        "search": lambda i: (
            "POST",
            f"/v1/users/{users[i % 20]}/search",
            {"query": sentences[(i * 7) % len(sentences)], "k": 5},
        ),
        "add": lambda i: (
            "POST",
            f"/v1/users/{users[i % 20]}/memories",
            {"text": sentences[(i * 13) % len(sentences)]},
        ),
        "chat": lambda i: (
            "POST",
            "/v1/chat/completions",
            {
                "model": "personalign",
                "user": users[i % 20],
                "messages": [{"role": "user", "content": sentences[(i * 3) % len(sentences)]}],
                "personalization": {"ingest": False},
            },
        ),
    }
    out: dict[str, float] = {}
    for name, make in kinds.items():
        for clients in LEVELS:
            rps, lat, errors = asyncio.run(_load(url, key, make, clients, requests))
            out[f"{name}_rps_c{clients}_{tag}"] = rps
            out[f"{name}_p50_ms_c{clients}_{tag}"] = percentile(lat, 50)
            out[f"{name}_p95_ms_c{clients}_{tag}"] = percentile(lat, 95)
            out[f"{name}_errors_c{clients}_{tag}"] = errors
    return out


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--requests", type=int, default=400, help="requests per kind and level")
    p.add_argument("--no-postgres", action="store_true")
    args = p.parse_args()
    sentences = persona_sentences(args.data)
    figures: dict[str, float] = {}
    work = Path(tempfile.mkdtemp(prefix="personalign-load-"))
    work.chmod(0o755)  # the PostgreSQL server runs as the postgres user
    with server(work / "sqlite", None) as (url, key):
        figures.update(measure(url, key, sentences, args.requests, "sqlite"))
    if not args.no_postgres:
        pg_dir = work / "pg"
        pg = str(REPO / "scripts" / "pg.sh")
        db = subprocess.run([pg, "start", str(pg_dir)], capture_output=True, text=True, check=True)
        try:
            with server(work / "postgres", db.stdout.strip()) as (url, key):
                figures.update(measure(url, key, sentences, args.requests, "postgres"))
        finally:
            subprocess.run([pg, "stop", str(pg_dir)], capture_output=True, check=False)
    shutil.rmtree(work, ignore_errors=True)
    emit(figures, title="HTTP service load (127.0.0.1)", as_json=args.json)


if __name__ == "__main__":
    main()
