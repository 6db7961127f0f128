"""personalign: make any LLM personal to each of its users, inside universal values."""

from personalign.errors import (
    BackendError,
    ConfigError,
    ConflictError,
    ModelNotAvailableError,
    NotFoundError,
    PersonalignError,
    RefusedError,
    UnknownUserError,
    ValidationError,
)
from personalign.types import Event, Message, Preference, PreferenceIn, SearchHit

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "ConfigError",
    "ConflictError",
    "Event",
    "Message",
    "ModelNotAvailableError",
    "NotFoundError",
    "PersonalignError",
    "Preference",
    "PreferenceIn",
    "RefusedError",
    "SearchHit",
    "UnknownUserError",
    "ValidationError",
    "__version__",
]
