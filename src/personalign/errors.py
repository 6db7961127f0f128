"""One exception tree for personalign.

Every error the library raises on purpose derives from :class:`PersonalignError`, so callers
can catch one type. Messages name the bad value and say what to do about it.

PersonalignError
├── ConfigError          a setting has a bad value (the message names the setting)
├── ValidationError      bad input from a caller: empty/oversized text, bad user id, bad id
├── NotFoundError        a record or user that does not exist (for this user)
│   └── UnknownUserError the user has no data at all
├── ConflictError        the operation does not apply to the record's state (already superseded)
├── AuthError            no valid API key (HTTP 401)
│   └── PermissionDeniedError  a valid key acting outside its scope (HTTP 403)
├── BackendError         a backend failed: model load, database, remote server
│   └── ModelNotAvailableError  a model or embedder cannot be loaded offline
├── RefusedError         the safety boundary refused the input; ``verdict`` says why
└── IngestionError       background ingestion of turns failed after its retries;
                         ``failures`` lists them (raised by ``Personalizer.flush``)
"""

from __future__ import annotations

from typing import Any


class PersonalignError(Exception):
    """Base class of every error personalign raises on purpose."""


class ConfigError(PersonalignError):
    """A setting has a bad value."""


class ValidationError(PersonalignError, ValueError):
    """Bad input from a caller."""


class NotFoundError(PersonalignError, KeyError):
    """A record does not exist, or does not belong to the given user."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else "not found"


class UnknownUserError(NotFoundError):
    """The user has no data at all."""


class ConflictError(PersonalignError):
    """The operation does not apply to the record's current state."""


class AuthError(PersonalignError):
    """No valid credentials."""


class PermissionDeniedError(AuthError):
    """Valid credentials, but the action is outside their scope."""


class BackendError(PersonalignError):
    """A backend (database, model, remote server) failed."""


class ModelNotAvailableError(BackendError):
    """A model or embedder cannot be loaded (offline, missing package or file)."""


class RefusedError(PersonalignError):
    """The safety boundary refused the input. ``verdict`` holds the typed reason."""

    def __init__(self, message: str, verdict: Any = None) -> None:
        super().__init__(message)
        self.verdict = verdict


class IngestionError(PersonalignError):
    """Turns could not be ingested in the background after every retry. ``failures`` lists
    them (:class:`~personalign.memory.queue.IngestionFailure`: entry, user, turn ids, error,
    attempts); they stay journaled and are retried at the next start."""

    def __init__(self, failures: list[Any]) -> None:
        self.failures = list(failures)
        lines = "; ".join(
            f"user {f.user!r} turns {list(f.turn_ids)}: {f.error}" for f in self.failures[:5]
        )
        more = f" (and {len(self.failures) - 5} more)" if len(self.failures) > 5 else ""
        super().__init__(
            f"{len(self.failures)} background ingestion(s) failed after retries: {lines}{more}"
        )
