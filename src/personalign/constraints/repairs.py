"""Repair: deterministic rewrites, in an order that keeps earlier repairs valid, so that a
reply passes where a rewrite exists (:func:`repair`). A language cannot be repaired by
rules: a reply in the wrong language stays failed, and says so."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence

from personalign.constraints.checks import _banned_rx, check, passes, word_count
from personalign.constraints.core import KINDS, Constraint, ConstraintSet, Kind
from personalign.text import split_sentences

REPAIRABLE = frozenset(KINDS) - {"language"}
"""Every kind but ``language`` has a rewrite (a reply cannot be translated by rules)."""

_LIST_MARK = re.compile(r"^\s*(?:[*\-•]|\d+[.)])\s*", re.M)
_TITLE_STOP = set(
    [
        "a",
        "an",
        "the",
        "of",
        "to",
        "in",
        "on",
        "and",
        "or",
        "is",
        "are",
        "was",
        "were",
        "be",
        "do",
        "does",
        "did",
        "what",
        "when",
        "where",
        "who",
        "which",
        "how",
        "why",
        "would",
        "could",
        "should",
        "can",
        "i",
        "you",
        "me",
        "my",
        "your",
        "it",
        "for",
        "with",
        "about",
        "some",
        "any",
        "tell",
        "give",
        "please",
        "explain",
        "suggest",
        "recommend",
    ]
)


def _sentences(text: str) -> list[str]:
    flat = " ".join(_LIST_MARK.sub("", line).strip() for line in text.splitlines() if line.strip())
    return split_sentences(flat)


def _truncate_words(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` words, at a sentence boundary when one fits."""
    if word_count(text) <= limit:
        return text
    kept: list[str] = []
    for sent in _sentences(text):
        if word_count(" ".join([*kept, sent])) > limit:
            break
        kept.append(sent)
    if kept:
        return " ".join(kept)
    words = text.split()
    out: list[str] = []
    for w in words:
        if word_count(" ".join([*out, w])) > limit:
            break
        out.append(w)
    return " ".join(out).rstrip(",;:") + "."


def _drop_banned(text: str, words: Sequence[str]) -> str:
    """``text`` without the words to avoid: a phrase that excludes them ("without meat",
    "meat-free") is cut out of its sentence; any other sentence naming one is dropped."""
    rx = _banned_rx(words)
    alts = rx.pattern[2:-2]  # the alternation inside \b...\b
    text = re.sub(
        rf"[ ,]*\b(?:without|with no|no|free of|instead of|rather than|minus|excluding|except|"
        rf"skip(?:ping)?|avoid(?:ing)?|replace|swap out)\s+(?:any |the |all )?{alts}"
        rf"(?:\s*(?:,|or|and|nor)\s+(?:any |the )?{alts})*\b",
        "",
        text,
        flags=re.I,
    )
    text = re.sub(rf"\s*\b{alts}[- ]free\b", "", text, flags=re.I)
    lines = []
    for line in text.splitlines():
        parts = [p for p in split_sentences(line, lines=False) if not rx.search(p)]
        if parts:
            lines.append(" ".join(parts))
        elif not line.strip():
            lines.append(line)
    out = "\n".join(lines).strip()
    return rx.sub("", out).strip() if rx.search(out) else out


def _as_items(text: str, n: int) -> list[str]:
    items = _sentences(text)
    while len(items) < n:  # split the longest item at a comma or "and"
        i = max(range(len(items)), key=lambda j: len(items[j])) if items else -1
        if i < 0:
            break
        parts = re.split(r",\s+|;\s+|\s+and\s+", items[i], maxsplit=1)
        if len(parts) < 2 or min(word_count(p) for p in parts) < 2:
            break
        items[i : i + 1] = [parts[0].strip(" ,;") + ".", parts[1][:1].upper() + parts[1][1:]]
    return items[:n]


def title_for(question: str) -> str:
    words = [
        w for w in re.findall(r"[A-Za-z][A-Za-z'-]*", question) if w.lower() not in _TITLE_STOP
    ]
    return " ".join(w[:1].upper() + w[1:] for w in words[:5]) or "Answer"


def _postscript_text(question: str) -> str:
    return "Ask me if you would like more detail."


def repair(text: str, constraints: Iterable[Constraint], *, question: str = "") -> str:
    """``text`` rewritten to satisfy what can be rewritten; unchanged when it already passes.

    Order: drop sentences naming words to avoid -> at most N sentences -> the word limit
    (counting what is added after) -> bullets or a numbered list -> title -> start phrase ->
    postscript -> closing phrase -> no commas -> JSON or quotes -> case. A reply whose only
    content was removed gets a short neutral sentence instead of nothing.
    """
    cs = ConstraintSet.from_lists([list(constraints)])
    if passes(text, cs):
        return text
    out = text.strip()
    avoid = cs.get("avoid_words")
    if avoid is not None and not check(out, avoid).passed:
        out = _drop_banned(out, avoid.value)  # type: ignore[arg-type]
        if word_count(out) < 3:
            out = (
                "I would suggest something that fits your preferences; tell me more and I can help."
            )
    ms = cs.get("max_sentences")
    if ms is not None and not check(out, ms).passed:
        out = " ".join(_sentences(out)[: int(ms.value)])  # type: ignore[arg-type]
    extra = 0
    kinds: tuple[Kind, ...] = ("title", "start_phrase", "end_phrase", "postscript")
    for kind in kinds:
        c = cs.get(kind)
        if c is not None and not check(out, c).passed:
            extra += word_count(
                title_for(question)
                if kind == "title"
                else str(c.value)
                + (" " + _postscript_text(question) if kind == "postscript" else "")
            )
    mw = cs.get("max_words")
    layout = cs.get("bullets") or cs.get("numbered")
    if mw is not None:
        marks = int(layout.value) * 1 if layout is not None and layout.kind == "numbered" else 0  # type: ignore[arg-type]
        out = _truncate_words(out, max(int(mw.value) - extra - marks, 3))  # type: ignore[arg-type]
    if layout is not None and not check(out, layout).passed:
        items = _as_items(out, int(layout.value))  # type: ignore[arg-type]
        if layout.kind == "bullets":
            out = "\n".join(f"* {it}" for it in items)
        else:
            out = "\n".join(f"{i}. {it}" for i, it in enumerate(items, 1))
    c = cs.get("title")
    if c is not None and not check(out, c).passed:
        out = f"<<{title_for(question)}>>\n{out}"
    c = cs.get("start_phrase")
    if c is not None and not check(out, c).passed:
        out = f"{c.value} {out}"
    c = cs.get("postscript")
    if c is not None and not check(out, c).passed:
        out = f"{out}\n\n{c.value} {_postscript_text(question)}"
    c = cs.get("end_phrase")
    if c is not None and not check(out, c).passed:
        out = f"{out}\n{c.value}"
    if cs.get("no_commas") is not None and "," in out:
        out = re.sub(r"(?<=\d),(?=\d{3})", "", out)
        out = re.sub(r"\s*,\s*", " ", out).replace(" ,", " ")
    c = cs.get("json")
    if c is not None and not check(out, c).passed:
        out = json.dumps({"answer": out}, ensure_ascii=False)
    c = cs.get("quotation")
    if c is not None and not check(out, c).passed:
        out = '"' + out.replace('"', "'") + '"'
    if cs.get("lowercase") is not None:
        out = out.lower()
    elif cs.get("uppercase") is not None:
        out = out.upper()
    return out
