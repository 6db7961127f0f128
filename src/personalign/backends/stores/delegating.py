"""``DelegatingStore``: the base of store wrappers (see ``scoped`` and ``safety.admission``)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar, cast

from personalign.backends.stores.base import MemoryStore

_Verb = TypeVar("_Verb", bound=Callable[..., Any])


def _forward(verb: _Verb) -> _Verb:
    """A method with ``verb``'s signature (so its defaults) that calls the same verb on
    ``self.inner``: positional parameters by position, the others (defaults filled) by name,
    ``user`` mapped by ``self._u``."""
    name = verb.__name__
    signature = inspect.signature(verb)

    def forward(self: DelegatingStore, *args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(self, *args, **kwargs)  # TypeError as the verb would raise
        bound.apply_defaults()
        keywords = dict(bound.kwargs)
        if "user" in keywords:
            keywords["user"] = self._u(keywords["user"])
        return getattr(self.inner, name)(*bound.args[1:], **keywords)

    forward.__name__ = name
    forward.__qualname__ = f"DelegatingStore.{name}"
    forward.__doc__ = f"``inner.{name}``, ``user`` mapped by :meth:`DelegatingStore._u`."
    return cast(_Verb, forward)


class DelegatingStore(MemoryStore):
    """Forwards every verb to ``inner``, the user mapped by :meth:`_u` (identity here).

    Wrappers (scoping, the safety guard) subclass it and override only what they change.
    ``close`` does nothing: a wrapper does not own the store it wraps unless it says so.
    """

    def __init__(self, inner: MemoryStore) -> None:
        self.inner = inner

    @property
    def embedder(self) -> Any:
        """The wrapped store's embedder, if it has one."""
        return getattr(self.inner, "embedder", None)

    def _u(self, user: str) -> str:
        """The stored user id for ``user``."""
        return user

    # every verb but ``add`` and ``get_profile``, which MemoryStore writes over these
    add_many = _forward(MemoryStore.add_many)
    get = _forward(MemoryStore.get)
    list = _forward(MemoryStore.list)
    search = _forward(MemoryStore.search)
    update = _forward(MemoryStore.update)
    forget = _forward(MemoryStore.forget)
    history = _forward(MemoryStore.history)
    record_event = _forward(MemoryStore.record_event)
    events = _forward(MemoryStore.events)
    export = _forward(MemoryStore.export)
    erase_user = _forward(MemoryStore.erase_user)
    has_user = _forward(MemoryStore.has_user)
    users = _forward(MemoryStore.users)
    log_exchange = _forward(MemoryStore.log_exchange)
    exchanges = _forward(MemoryStore.exchanges)
    get_exchange = _forward(MemoryStore.get_exchange)
    set_profile = _forward(MemoryStore.set_profile)
    profile_history = _forward(MemoryStore.profile_history)
    add_feedback = _forward(MemoryStore.add_feedback)
    feedback = _forward(MemoryStore.feedback)
    prune = _forward(MemoryStore.prune)
    add_conflict = _forward(MemoryStore.add_conflict)
    conflicts = _forward(MemoryStore.conflicts)
    get_conflict = _forward(MemoryStore.get_conflict)
    resolve_conflict = _forward(MemoryStore.resolve_conflict)

    def close(self) -> None:
        """Wrappers do not own ``inner``; see the class doc."""
