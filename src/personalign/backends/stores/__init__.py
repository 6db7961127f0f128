"""Memory stores: the :class:`MemoryStore` interface and its backends."""

from __future__ import annotations

from typing import TYPE_CHECKING

from personalign.backends.stores.base import MemoryStore
from personalign.errors import ConfigError

if TYPE_CHECKING:
    from personalign.backends.embedders import Embedder
    from personalign.config import Settings

__all__ = ["MemoryStore", "open_store"]


def open_store(settings: Settings, embedder: Embedder) -> MemoryStore:
    """The store ``settings`` selects: SQLite under ``home`` unless ``database_url`` is set."""
    url = settings.database_url
    if url is None or url.startswith("sqlite:"):
        from personalign.backends.stores.sqlite import SQLiteStore

        path = url.removeprefix("sqlite:///") if url else settings.db_path
        return SQLiteStore(path, embedder)
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from personalign.backends.stores.postgres import PostgresStore
        except ImportError as e:
            raise ConfigError(
                f"setting 'database_url': PostgreSQL needs {e.name!r}: "
                "pip install 'personalign[postgres]'"
            ) from e
        return PostgresStore(url, embedder)
    raise ConfigError(f"setting 'database_url': unsupported URL {url!r}")
