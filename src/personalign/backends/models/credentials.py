"""Which API key goes to which OpenAI-compatible server: only the one configured for it.

Every OpenAI-compatible client personalign builds (the chat model, the guard, the judge, the
LLM extractor) takes its server and key from :func:`server_and_key`:

* a key set for that backend (``api_key``) is sent to it; ``env:NAME`` names an environment
  variable to read it from (``api_key = "env:OPENAI_API_KEY"`` sends the OpenAI key to a
  server of your choice, on purpose);
* otherwise the environment's ``OPENAI_API_KEY`` is sent only to OpenAI's own API
  (``api.openai.com``), never to another ``base_url``; a server without a key gets a
  placeholder (local servers usually need none).

The server is ``base_url``, else ``$OPENAI_BASE_URL``, else OpenAI's API, resolved here so
that the client and this rule agree on where the key goes.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from personalign.errors import ConfigError

OPENAI_API_BASE = "https://api.openai.com/v1"
OPENAI_HOST = "api.openai.com"
NO_KEY = "EMPTY"
"""Sent when no key is configured for a server: the ``openai`` client insists on one."""


def resolve_base_url(base_url: str | None) -> str:
    """The server a client with ``base_url`` talks to (as the ``openai`` client resolves it)."""
    return base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_API_BASE


def is_openai(base_url: str | None) -> bool:
    """Whether ``base_url`` (resolved) is OpenAI's own API over HTTPS."""
    parts = urlsplit(resolve_base_url(base_url))
    return parts.scheme == "https" and (parts.hostname or "").lower() == OPENAI_HOST


def server_and_key(base_url: str | None, api_key: str | None, *, what: str) -> tuple[str, str]:
    """The server to call and the key to send it (see the module doc). ``what`` names the
    setting in errors (``guard.api_key``)."""
    url = resolve_base_url(base_url)
    if api_key and api_key.startswith("env:"):
        name = api_key[4:].strip()
        value = os.environ.get(name) if name else None
        if not value:
            raise ConfigError(
                f"setting {what!r} reads the environment variable {name or '(empty name)'!r}, "
                "which is not set"
            )
        return url, value
    if api_key:
        return url, api_key
    env = os.environ.get("OPENAI_API_KEY")
    return url, env if env and is_openai(url) else NO_KEY
