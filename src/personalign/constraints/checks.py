"""Verification: :func:`check` a reply against one constraint (a :class:`Check`),
:func:`verify` it against many, :func:`passes` when every one holds."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from personalign.constraints.core import Constraint
from personalign.text import split_sentences

_WORDS = re.compile(r"\w+")
_BULLET_LINE = re.compile(r"^\s*[*-]\s+\S", re.M)
_NUMBERED_LINE = re.compile(r"^\s*\d+[.)]\s+\S", re.M)
_TITLE = re.compile(r"<<[^\n]+>>")
_PS_LINE = re.compile(r"^\s*p\.\s?s\..*$", re.I | re.M)

_STOPWORDS = {
    "en": "the and of to is in that it for you with are this on be as have not",
    "fr": "le la les et des est un une pour que dans vous pas sur avec du au",
    "es": "el la los las y de que es en un una por para con no se del",
    "de": "der die das und ist nicht ein eine zu mit sie den von auf ich",
    "it": "il la di che e un una per non sono con del della le gli",
    "pt": "o a os as de que em um uma para com não se do da é",
    "nl": "de het een en van is dat niet op te met voor zijn",
}
_STOPSETS = {k: set(v.split()) for k, v in _STOPWORDS.items()}


def word_count(text: str) -> int:
    """Words as ``\\w+`` runs (how instruction checkers usually count)."""
    return len(_WORDS.findall(text))


def guess_language(text: str) -> str | None:
    """The most likely of a few languages by stop-word counts (``None``: undecided). Good
    enough to reject a reply in the wrong language; a benchmark should use its own detector."""
    words = [w.lower() for w in _WORDS.findall(text)]
    if len(words) < 3:
        return None
    counts = {k: sum(w in s for w in words) for k, s in _STOPSETS.items()}
    best = max(counts, key=lambda k: counts[k])
    return best if counts[best] > 0 else None


def _json_body(text: str) -> str:
    s = text.strip()
    s = re.sub(r"^```(?:json|javascript|Json)?\s*", "", s)
    return re.sub(r"\s*```$", "", s)


def _banned_rx(words: Sequence[str]) -> re.Pattern[str]:
    alts = "|".join(sorted({re.escape(w.lower()) for w in words if w}, key=len, reverse=True))
    return re.compile(rf"\b(?:{alts})(?:s|es)?\b", re.I)


@dataclass(frozen=True)
class Check:
    """A reply checked against one constraint: ``passed``, and ``detail`` when it failed."""

    constraint: Constraint
    passed: bool
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.constraint.kind,
            "value": self.constraint.value,
            "passed": self.passed,
            **({"detail": self.detail} if self.detail else {}),
        }


def check(text: str, c: Constraint) -> Check:
    """Whether ``text`` satisfies ``c``."""
    v = c.value
    s = text.strip()
    ok, detail = True, ""
    match c.kind:
        case "lowercase":
            ok = s == s.lower() and any(ch.isalpha() for ch in s)
            detail = "" if ok else "has capital letters"
        case "uppercase":
            ok = s == s.upper() and any(ch.isalpha() for ch in s)
            detail = "" if ok else "has lowercase letters"
        case "no_commas":
            ok = "," not in s
            detail = "" if ok else f"{s.count(',')} commas"
        case "max_words":
            n = word_count(s)
            ok = 0 < n <= int(v)  # type: ignore[arg-type]
            detail = "" if ok else f"{n} words"
        case "max_sentences":
            n = len(split_sentences(s, lines=False))
            ok = 0 < n <= int(v)  # type: ignore[arg-type]
            detail = "" if ok else f"{n} sentences"
        case "bullets":
            n = len(_BULLET_LINE.findall(s))
            ok = n == v
            detail = "" if ok else f"{n} bullet lines"
        case "numbered":
            n = len(_NUMBERED_LINE.findall(s))
            ok = n == v
            detail = "" if ok else f"{n} numbered lines"
        case "title":
            ok = bool(_TITLE.search(s))
            detail = "" if ok else "no <<title>>"
        case "start_phrase":
            ok = s.lower().startswith(str(v).lower())
            detail = "" if ok else "does not start with the phrase"
        case "end_phrase":
            ok = s.lower().endswith(str(v).strip().lower())
            detail = "" if ok else "does not end with the phrase"
        case "postscript":
            marker = re.escape(str(v).rstrip(".")).replace(r"\.", r"\.\s?")
            ok = bool(re.search(rf"^\s*{marker}\.?.*$", s, re.I | re.M))
            detail = "" if ok else "no postscript"
        case "json":
            try:
                json.loads(_json_body(s))
            except ValueError:
                ok, detail = False, "not valid JSON"
        case "quotation":
            ok = len(s) > 1 and s[0] == '"' and s[-1] == '"'
            detail = "" if ok else "not wrapped in double quotes"
        case "language":
            got = guess_language(s)
            ok = got == v or (got is None and v == "en")
            detail = "" if ok else f"looks like {got or 'unknown'}"
        case "avoid_words":
            found = sorted({m.group(0).lower() for m in _banned_rx(v).finditer(s)})  # type: ignore[arg-type]
            ok = not found
            detail = "" if ok else "mentions " + ", ".join(found)
    return Check(c, ok, detail)


def verify(text: str, constraints: Iterable[Constraint]) -> list[Check]:
    """One :class:`Check` per constraint."""
    return [check(text, c) for c in constraints]


def passes(text: str, constraints: Iterable[Constraint]) -> bool:
    return all(ch.passed for ch in verify(text, constraints))
