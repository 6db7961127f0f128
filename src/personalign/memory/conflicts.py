"""When two preferences contradict, and where each holds: the rules reconciliation uses.

Two preferences *oppose* when exactly one of them is negated ("I love spicy food" / "I can't
handle spicy food") or when they name opposite ends of one scale ("short answers" / "long,
detailed answers"; :data:`ANTONYMS`); both at once cancel ("I don't want short answers" /
"I like detailed answers" agree). How similar they must be to count is
:class:`~personalign.memory.reconcile.ReconcileConfig`'s business (``conflict_cosine``,
``antonym_cosine``).

Contexts (:mod:`personalign.constraints.context`) decide which pairs can meet at all:

* a merge or a conflict needs the same context (both none, or the same words): "I love spicy
  food" and "when I cook for my kids, nothing spicy" both hold, each where it applies;
* an explicit update (a change cue) may replace a preference unless both name different
  contexts: "these days I prefer budget hostels when I travel" replaces "I enjoy luxury
  hotels", while "at work I now want formal emails" leaves "with my kids ..." alone.
"""

from __future__ import annotations

import re

from personalign.constraints.context import context_of, extract_context
from personalign.types import Preference

ANTONYMS: tuple[tuple[frozenset[str], frozenset[str]], ...] = (
    (
        frozenset(["short", "shorter", "brief", "briefer", "concise", "succinct", "terse"]),
        frozenset(["long", "longer", "detailed", "lengthy", "thorough", "verbose", "in-depth"]),
    ),
    (frozenset({"formal"}), frozenset(["casual", "informal", "relaxed"])),
    (frozenset({"simple"}), frozenset(["technical", "complex"])),
    (frozenset({"hot"}), frozenset({"cold"})),
    (frozenset({"early"}), frozenset({"late"})),
    (frozenset({"sweet"}), frozenset({"savory", "savoury"})),
    (
        frozenset(["bullet", "bullets", "list", "lists"]),
        frozenset(["paragraph", "paragraphs", "prose"]),
    ),
)
"""Opposite ends of a scale a preference can name (answer length, tone, ...)."""

_WORD_RE = re.compile(r"[a-z][a-z'-]*")


def _words(text: str) -> set[str]:
    return set(_WORD_RE.findall(text.lower()))


def antonym_pair(old: str, new: str) -> tuple[str, str] | None:
    """The words by which ``old`` and ``new`` name opposite ends of one scale (one end only
    in each), or ``None``."""
    a, b = _words(old), _words(new)
    for left, right in ANTONYMS:
        for one, other in ((left, right), (right, left)):
            if a & one and b & other and not a & other and not b & one:
                return sorted(a & one)[0], sorted(b & other)[0]
    return None


def opposes(old: str, new: str, *, old_polarity: int, new_polarity: int) -> str | None:
    """Why ``new`` says the opposite of ``old`` ("opposite polarity", "short vs long"), or
    ``None``. Polarity: +1 or -1 (:func:`personalign.memory.reconcile.polarity`)."""
    flipped = old_polarity != new_polarity
    pair = antonym_pair(old, new)
    if flipped and pair is None:
        return "opposite polarity"
    if pair is not None and not flipped:
        return f"opposite ends of one scale ({pair[0]} vs {pair[1]})"
    return None


def record_context(rec: Preference) -> str | None:
    """The context a stored preference holds in (``None``: everywhere)."""
    return context_of(rec.meta, text=rec.text)


def same_context(rec: Preference, text: str) -> bool:
    """Whether a stored preference and a new text hold in the same context."""
    return record_context(rec) == extract_context(text)


def may_replace(rec: Preference, text: str) -> bool:
    """Whether an explicit update ``text`` may replace ``rec``: unless both name different
    contexts."""
    old, new = record_context(rec), extract_context(text)
    return old is None or new is None or old == new
