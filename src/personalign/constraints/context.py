"""Where a preference holds: the context a user names ("when I cook for my kids", "at work",
"for coding questions", "with my kids", "on weekends").

A preference with a context applies only to messages in that context (its constraints too);
one without holds everywhere. :func:`extract_context` finds it by rules over the wording, at
write time (kept in ``meta["context"]`` with the text it was read from, like compiled
constraints); :func:`context_of` reads it back, or reads the text again when it was stored
before contexts existed or its text changed. Whether a message is in a context is decided in
:mod:`personalign.memory.scope` (keyword and embedding match).

Not contexts: wording about the answers themselves ("when answering", "when you reply"),
hedges ("when possible", "for now", "at least"), or the whole of what the user asks about
("for all questions").
"""

from __future__ import annotations

import re
from typing import Any

_WHEN_RE = re.compile(
    r"\b(?:when(?:ever)?|while)\s+(?P<c>[^,.;:!?]+)",
    re.I,
)
_AT_FRONT_RE = re.compile(
    r"^\W*(?:and |but |so )?at (?P<c>work|the office|the workplace|home|school|university|"
    r"college|uni|the gym|church|parties|night)\b",
    re.I,
)
_AT_RE = re.compile(
    r"\bat (?P<c>work|the office|the workplace|school|university|college)\b",
    re.I,
)
"""``at`` a place: anywhere for work and study; fronted only for the others ("At home,
..."), since "I prefer streaming movies at home" says what is preferred, not where."""
_FOR_RE = re.compile(
    r"\b(?:for|in) (?:any |all |my )?(?P<c>(?:[a-z][\w'-]* ){1,3}?"
    r"(?:questions?|queries|tasks|problems|requests|emails|code|projects|homework|essays|"
    r"topics|meetings))\b",
    re.I,
)
_WITH_RE = re.compile(
    r"\b(?P<c>(?:with|around|for) my (?:[a-z]+ ){0,2}?(?:kids?|children|child|son|daughter|"
    r"family|partner|wife|husband|boyfriend|girlfriend|boss|manager|friends?|colleagues|"
    r"co-?workers|team|parents|mom|dad|mother|father|clients?|students|guests))\b",
    re.I,
)
_WEEK_RE = re.compile(
    r"\b(?P<c>on (?:weekends|weekdays|the weekend|workdays|holidays|vacation))\b", re.I
)

_SUBJECT_RE = re.compile(r"^(?:i'm|i am|i|we're|we are|we|you're|you are|you|it's|it is)\s+", re.I)
_ANSWERS_SUBJECT_RE = re.compile(
    r"^(?:your |the |an? |my )?(?:answers?|repl(?:y|ies)|responses?|messages?|it|that|they)\b",
    re.I,
)
"""A clause about the answers themselves ("I like it when answers end with ...")."""
_ABOUT_ANSWERS_RE = re.compile(
    r"^(?:you\s+)?(?:answer|repl|respond|writ|talk|speak|chat|explain)\w*"
    r"(?:\s+(?:to\s+)?(?:me|us|questions?|anything))?\s*$",
    re.I,
)
_HEDGES = frozenset(
    [
        "possible",
        "needed",
        "necessary",
        "appropriate",
        "relevant",
        "in",
        "doubt",
        "unsure",
        "it",
        "makes",
        "sense",
        "you",
        "can",
        "unclear",
        "applicable",
    ]
)
_GENERIC = frozenset(
    [
        "all",
        "any",
        "every",
        "each",
        "my",
        "these",
        "those",
        "the",
        "other",
        "your",
        "such",
        "some",
        "most",
        "general",
    ]
)


def _clean(text: str) -> str:
    c = " ".join(text.lower().split()).strip(" '\"")
    return _SUBJECT_RE.sub("", c).strip()


def _when(text: str) -> str | None:
    for m in _WHEN_RE.finditer(text):
        c = _clean(m.group("c"))
        # "when I cook for my kids, nothing spicy": the clause ends at the comma; a trailing
        # "I prefer ..." belongs to the preference, not to the context
        c = re.split(r"\s+(?:i|i'd|i'm|please|give|keep|use|answer)\s", c, maxsplit=1)[0]
        if not c or c in _HEDGES or _ABOUT_ANSWERS_RE.match(c) or _ANSWERS_SUBJECT_RE.match(c):
            continue
        if len(c.split()) > 8:
            c = " ".join(c.split()[:8])
        return c
    return None


def _for(text: str) -> str | None:
    for m in _FOR_RE.finditer(text):
        words = m.group("c").lower().split()
        if words and words[0] in _GENERIC:
            words = words[1:]
        if len(words) < 2 or all(w in _GENERIC for w in words[:-1]):
            continue  # "for questions", "in all answers": no context
        return " ".join(words)
    return None


def extract_context(text: str) -> str | None:
    """The context ``text`` scopes its preference to, lower-cased ("cook for my kids", "at
    work", "coding questions", "with my kids", "on weekends"), or ``None`` when it holds
    everywhere. Rules, first match in this order: a ``when``/``while`` clause, ``at`` a
    place, ``for``/``in`` a kind of question or task, ``with``/``for`` people of the user's,
    a part of the week."""
    if not text or not text.strip():
        return None
    found = _when(text)
    if found:
        return found
    m = _AT_FRONT_RE.search(text) or _AT_RE.search(text)
    if m:
        return "at " + m.group("c").lower()
    found = _for(text)
    if found:
        return found
    for rule in (_WITH_RE, _WEEK_RE):
        m = rule.search(text)
        if m:
            return m.group("c").lower()
    return None


def context_meta(text: str) -> dict[str, Any]:
    """How a preference keeps its context in ``meta["context"]``: the value and the text it
    was read from (a new text is read again)."""
    return {"value": extract_context(text), "read_from": text}


def context_of(meta: dict[str, Any] | None, *, text: str) -> str | None:
    """The context of a preference with ``meta`` and ``text``: the stored one when it was
    read from this text or set by the user (``"edited": true``), else read now."""
    entry = (meta or {}).get("context")
    if isinstance(entry, dict) and (entry.get("read_from") == text or entry.get("edited")):
        value = entry.get("value")
        return value if isinstance(value, str) and value.strip() else None
    return extract_context(text)
