"""Preference memory: store verbs scoped by user, extraction, reconciliation, retrieval."""

from personalign.memory.api import Memory, open_memory

__all__ = ["Memory", "open_memory"]
