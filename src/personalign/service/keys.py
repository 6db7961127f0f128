"""API keys, stored hashed, with scopes (admin, app, user).

A key looks like ``pal_<id>_<secret>``; only SHA-256 of the whole key is stored (keys are 256
random bits, so a fast hash is safe). ``create`` returns the plain key once.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from personalign.backends.stores.scoped import Principal, Scope
from personalign.backends.stores.sqlite_conns import ThreadConnections
from personalign.errors import AuthError, NotFoundError, ValidationError
from personalign.types import check_user, utcnow

_KEY_RE = re.compile(r"^pal_([0-9a-f]{12})_([A-Za-z0-9_-]{20,100})$")
_APP_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class KeyInfo:
    """A stored key, without its secret."""

    id: str
    name: str
    scope: Scope
    app: str | None
    user: str | None
    created_at: datetime
    revoked_at: datetime | None

    @property
    def principal(self) -> Principal:
        return Principal(scope=self.scope, app=self.app, user=self.user, key_id=self.id)


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore:
    """API keys in ``<home>/keys.db``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conns = ThreadConnections(self._open)
        with self._conn() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS api_keys (id TEXT PRIMARY KEY, name TEXT NOT NULL, "
                "hash TEXT NOT NULL, scope TEXT NOT NULL, app TEXT, user_id TEXT, "
                "created_at TEXT NOT NULL, revoked_at TEXT)"
            )

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.row_factory = sqlite3.Row
        return conn

    def _conn(self) -> sqlite3.Connection:
        return self._conns.get()

    def close(self) -> None:
        """Close every thread's connection to the key database."""
        self._conns.close()

    def __enter__(self) -> KeyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create(
        self, *, scope: Scope, name: str = "", app: str | None = None, user: str | None = None
    ) -> tuple[KeyInfo, str]:
        """Make a key; returns its info and the plain key (shown once, never stored)."""
        if scope not in ("admin", "app", "user"):
            raise ValidationError(f"scope must be admin, app or user, got {scope!r}")
        if scope in ("app", "user") and (app is None or not _APP_RE.match(app)):
            raise ValidationError(f"a {scope} key needs --app NAME (letters, digits, _.-)")
        if scope == "user":
            if user is None:
                raise ValidationError("a user key needs --for-user USER")
            check_user(user)
        elif user is not None:
            raise ValidationError("only user keys take a user")
        if scope == "admin" and app is not None:
            raise ValidationError("admin keys take no app")
        key_id = secrets.token_hex(6)
        key = f"pal_{key_id}_{secrets.token_urlsafe(32)}"
        now = utcnow()
        with self._conn() as conn:
            conn.execute(
                "INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
                (key_id, name, _hash(key), scope, app, user, now.isoformat()),
            )
        return self.get(key_id), key

    def get(self, key_id: str) -> KeyInfo:
        row = self._conn().execute("SELECT * FROM api_keys WHERE id = ?", (key_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"no API key {key_id!r}")
        return _info(row)

    def list(self) -> list[KeyInfo]:
        return [
            _info(r) for r in self._conn().execute("SELECT * FROM api_keys ORDER BY created_at")
        ]

    def revoke(self, key_id: str) -> KeyInfo:
        with self._conn() as conn:
            cur = conn.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (utcnow().isoformat(), key_id),
            )
        if cur.rowcount == 0:
            self.get(key_id)  # raises NotFoundError for unknown ids
        return self.get(key_id)

    def verify(self, key: str | None) -> Principal:
        """The principal of a valid, unrevoked key, else :class:`AuthError`."""
        m = _KEY_RE.match(key or "")
        if not m:
            raise AuthError("missing or malformed API key: send 'Authorization: Bearer pal_...'")
        row = self._conn().execute("SELECT * FROM api_keys WHERE id = ?", (m.group(1),)).fetchone()
        if row is None or not hmac.compare_digest(row["hash"], _hash(key or "")):
            raise AuthError("invalid API key")
        if row["revoked_at"]:
            raise AuthError("this API key was revoked")
        return _info(row).principal


def _info(row: sqlite3.Row) -> KeyInfo:
    return KeyInfo(
        id=row["id"],
        name=row["name"],
        scope=row["scope"],
        app=row["app"],
        user=row["user_id"],
        created_at=datetime.fromisoformat(row["created_at"]),
        revoked_at=datetime.fromisoformat(row["revoked_at"]) if row["revoked_at"] else None,
    )
