"""What the HTTP routes and the dashboard share: :class:`Service`."""

from __future__ import annotations

from fastapi import Request

from personalign.backends.stores.scoped import Principal, ScopedStore
from personalign.pipeline import Personalizer
from personalign.service.gate import ChatGate
from personalign.service.keys import KeyStore


class Service:
    """What the routes share: the personalizer, the key store, the chat gate (how many
    chats generate at once: :class:`~personalign.service.gate.ChatGate`)."""

    def __init__(self, personalizer: Personalizer, keys: KeyStore) -> None:
        self.personalizer = personalizer
        self.keys = keys
        limit = personalizer.memory.settings.service.max_concurrent_chats
        self.gate = ChatGate(lambda: personalizer.model, limit)
        self._closed = False

    def principal(self, request: Request) -> Principal:
        auth = request.headers.get("authorization", "")
        key = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        key = key or request.headers.get("x-api-key") or request.cookies.get("pal_key")
        return self.keys.verify(key)

    def store(self, principal: Principal) -> ScopedStore:
        return ScopedStore(self.personalizer.memory.store, principal)

    def model_names(self) -> list[str]:
        return [self.personalizer.model.name, "personalign"]

    def close(self) -> None:
        """Shut down: finish pending ingestion, close the memory, the model and the keys
        (once; later calls do nothing)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.personalizer.close()
        finally:
            self.keys.close()
