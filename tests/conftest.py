from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

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


STORE_BACKENDS = ["sqlite"]


@pytest.fixture(params=STORE_BACKENDS)
def store_factory(request, tmp_path, embedder):  # type: ignore[no-untyped-def]
    """A factory for the store under test; every call opens the same database."""
    if request.param == "sqlite":
        return _sqlite_factory(tmp_path, embedder)
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
