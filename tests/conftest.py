from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def embedder():  # type: ignore[no-untyped-def]
    from personalign.testing import HashingEmbedder

    return HashingEmbedder()


StoreFactory = Callable[[], object]


def _sqlite_factory(tmp_path: Path, embedder: object) -> Callable[[], object]:
    from personalign.backends.stores.sqlite import SQLiteStore

    def make() -> object:
        return SQLiteStore(tmp_path / "memory.db", embedder)  # type: ignore[arg-type]

    return make


PG_URL = os.environ.get("PERSONALIGN_TEST_DATABASE_URL")
"""A PostgreSQL + pgvector server for the postgres backend (see scripts/pg.sh)."""
PG_SKIP = pytest.mark.skipif(
    not PG_URL,
    reason="postgres backend: set PERSONALIGN_TEST_DATABASE_URL (scripts/pg.sh start DIR)",
)

STORE_BACKENDS = ["sqlite", pytest.param("postgres", marks=PG_SKIP)]


@pytest.fixture
def pg_conninfo() -> Iterator[str]:
    """A libpq conninfo for a fresh, empty schema on the test server; dropped afterwards."""
    if not PG_URL:
        pytest.skip("postgres backend: set PERSONALIGN_TEST_DATABASE_URL (scripts/pg.sh start DIR)")
    import uuid

    import psycopg
    from psycopg.conninfo import make_conninfo

    schema = "test_" + uuid.uuid4().hex[:16]
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    yield make_conninfo(PG_URL, options=f"-c search_path={schema},public")
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


def _postgres_factory(conninfo: str, embedder: Any, opened: list[Any]) -> Callable[[], object]:
    from personalign.backends.stores.postgres import PostgresStore

    def make() -> object:
        store = PostgresStore(conninfo, embedder, pool_size=4)
        opened.append(store)
        return store

    return make


@pytest.fixture(params=STORE_BACKENDS)
def store_factory(request, tmp_path, embedder):  # type: ignore[no-untyped-def]
    """A factory for the store under test; every call opens the same database."""
    if request.param == "sqlite":
        yield _sqlite_factory(tmp_path, embedder)
    elif request.param == "postgres":
        opened: list[Any] = []
        yield _postgres_factory(request.getfixturevalue("pg_conninfo"), embedder, opened)
        for s in opened:
            s.close()
    else:
        raise AssertionError(request.param)


@pytest.fixture
def store(store_factory) -> Iterator[object]:  # type: ignore[no-untyped-def]
    s = store_factory()
    yield s
    s.close()


@pytest.fixture
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"evaluation data not found at {DATA} (../shared/data)")
    return DATA


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory of a tiny random Llama with the SmolLM2 tokenizer
    (personalign.testing.tiny_model_dir)."""
    from personalign.testing import tiny_model_dir

    return tiny_model_dir(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A tiny random Llama with the SmolLM2 tokenizer (personalign.testing.tiny_model_dir) as a
    float32 TransformersLM; skips without torch and transformers."""
    import importlib.util

    if not all(importlib.util.find_spec(m) for m in ("torch", "transformers")):
        pytest.skip("needs torch and transformers")
    from personalign.backends.models.local import TransformersLM
    from personalign.errors import ModelNotAvailableError
    from personalign.testing import tiny_model_dir

    try:
        path = tiny_model_dir(tmp_path_factory.mktemp("tiny") / "tiny-llama")
    except ModelNotAvailableError as e:
        pytest.skip(str(e))
    return TransformersLM(path, dtype="float32")
