"""A user's view and edits of a preference's compiled constraints (CLI, API, dashboard).

A stored preference keeps the constraints compiled from its text in ``meta["constraints"]``
(:func:`personalign.constraints.to_meta`). Here a user sees them (:func:`current`,
:func:`as_dicts`, :func:`short`), and changes them: drop one, clear them all (the preference
stays as text, nothing is applied), or add or replace one (:func:`normalize`,
:func:`parse_spec`). An edit is written as a new version of the preference (the old one stays
in history) whose constraints are marked ``"edited": true``, so that they are kept as the user
left them, even when the text changes later (:func:`save`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from personalign.constraints import (
    KINDS,
    LANGUAGE_NAMES,
    LANGUAGES,
    Constraint,
    Kind,
    compile_text,
    describe,
    from_meta,
    to_meta,
)
from personalign.errors import ValidationError
from personalign.types import Preference

State = Literal["compiled", "edited", "not_compiled"]
"""``compiled``: stored, as compiled from the text. ``edited``: stored, as the user left them.
``not_compiled``: nothing stored for this text (an older record): compiled now, for display,
as the pipeline does when it applies them (a raw turn has none: only preferences apply)."""

FLAG_KINDS: frozenset[Kind] = frozenset(
    {"lowercase", "uppercase", "no_commas", "title", "json", "quotation"}
)
"""Kinds that take no value."""
INT_LIMITS: dict[Kind, tuple[int, int]] = {
    "max_words": (1, 10_000),
    "max_sentences": (1, 1_000),
    "bullets": (1, 100),
    "numbered": (1, 100),
}
"""Kinds whose value is a whole number, and its bounds."""
PHRASE_KINDS: frozenset[Kind] = frozenset({"start_phrase", "end_phrase", "postscript"})
MAX_PHRASE_CHARS = 200
MAX_AVOID_WORDS = 200
MAX_WORD_CHARS = 60

VALUE_HELP: dict[Kind, str] = {
    **{k: f"it takes no value: give just {k}" for k in sorted(FLAG_KINDS)},
    "max_words": "the most words allowed, e.g. max_words=40",
    "max_sentences": "the most sentences allowed, e.g. max_sentences=2",
    "bullets": "the number of bullet points, e.g. bullets=3",
    "numbered": "the number of list items, e.g. numbered=5",
    "start_phrase": 'the opening words, e.g. start_phrase="Hi there"',
    "end_phrase": 'the closing phrase, e.g. end_phrase="Any other questions?"',
    "postscript": "the marker (default P.S.), e.g. postscript=P.P.S",
    "language": "a language name or ISO 639-1 code, e.g. language=french or language=fr",
    "avoid_words": "words separated by commas, e.g. avoid_words=meat,fish",
}


def valid_kinds() -> str:
    """The kinds, for error messages."""
    return ", ".join(KINDS)


def current(rec: Preference) -> tuple[list[Constraint], State]:
    """The constraints that apply for ``rec`` and where they come from. Raw turns
    (episodes) have none: the pipeline applies only preferences."""
    if rec.kind == "episode":
        return [], "not_compiled"
    items = from_meta(rec.meta, text=rec.text)
    if items is not None:
        edited = bool((rec.meta.get("constraints") or {}).get("edited"))
        return items, "edited" if edited else "compiled"
    return compile_text(rec.text), "not_compiled"


def flagged(rec: Preference) -> bool:
    """Whether ``rec`` is flagged as injection-like: the pipeline applies none of its
    constraints (its text is only quoted, neutralized)."""
    from personalign.safety.injection import INJECTION_FLAG

    return INJECTION_FLAG in rec.flags


def as_dict(c: Constraint) -> dict[str, Any]:
    """The wire form of one constraint: ``kind``, ``value``, ``phrase`` (the words it was
    compiled from; empty when the user set it) and ``describe`` (what it asks, in one line)."""
    return {"kind": c.kind, "value": c.value, "phrase": c.phrase, "describe": describe(c)}


def as_dicts(items: Sequence[Constraint]) -> list[dict[str, Any]]:
    return [as_dict(c) for c in items]


def view(rec: Preference) -> dict[str, Any]:
    """What the API says about ``rec``'s constraints."""
    items, state = current(rec)
    return {
        "memory_id": rec.id,
        "text": rec.text,
        "constraints": as_dicts(items),
        "edited": state == "edited",
        "compiled": state != "not_compiled",
        "active": rec.active,
        "applied": rec.active and rec.kind != "episode" and not flagged(rec),
    }


def short(c: Constraint) -> str:
    """A few words for a table cell: "lowercase", "max 49 words", "avoid meat, beef, ..."."""
    v = c.value
    match c.kind:
        case "no_commas":
            return "no commas"
        case "max_words":
            return f"max {v} words"
        case "max_sentences":
            return f"max {v} sentence{'s' if v != 1 else ''}"
        case "bullets":
            return f"{v} bullets"
        case "numbered":
            return f"{v} numbered items"
        case "title":
            return "<<title>>"
        case "start_phrase":
            return f'starts "{v}"'
        case "end_phrase":
            return f'ends "{v}"'
        case "postscript":
            return f"postscript {v}"
        case "json":
            return "JSON"
        case "quotation":
            return "in quotes"
        case "language":
            return LANGUAGE_NAMES.get(str(v), str(v))
        case "avoid_words":
            words = [str(w) for w in (v or [])]  # type: ignore[union-attr]
            if len(words) <= 3:
                return "avoid " + ", ".join(words)
            if c.phrase and len(c.phrase) <= 40:  # a diet: "avoid 36 words (vegetarian)"
                return f"avoid {len(words)} words ({c.phrase})"
            return f"avoid {', '.join(words[:3])}, ... (+{len(words) - 3})"
    return str(c.kind)


def summary(rec: Preference) -> str:
    """``rec``'s constraints in one cell: "lowercase; max 49 words", "-" when none, with
    "(edited)" or "(not compiled yet)" after."""
    items, state = current(rec)
    text = "; ".join(short(c) for c in items) or ("none" if state == "edited" else "-")
    if state == "edited":
        text += " (edited)"
    elif state == "not_compiled" and rec.kind != "episode":
        text += " (not compiled yet)"
    if items and flagged(rec):
        text += " (not applied: flagged as injection)"
    return text


# -- validation --------------------------------------------------------------------------------


def check_kind(kind: str) -> Kind:
    """``kind`` as a :data:`~personalign.constraints.Kind` ("max-words" is read as
    ``max_words``), or a :class:`ValidationError` that lists the valid kinds."""
    k = str(kind).strip().lower().replace("-", "_")
    if k not in KINDS:
        raise ValidationError(f"unknown constraint kind {kind!r}; valid kinds: {valid_kinds()}")
    return k


def _bad(kind: Kind, value: Any, why: str) -> ValidationError:
    return ValidationError(f"bad value {value!r} for {kind}: {why} ({VALUE_HELP[kind]})")


def normalize(kind: str, value: Any = None, *, phrase: str = "") -> Constraint:
    """A checked :class:`Constraint` of ``kind`` with ``value`` normalized: numbers from
    strings ("40"), a language name to its code ("french" -> "fr"), words to avoid from a list
    or a comma-separated string (lowercased, without duplicates). Raises
    :class:`ValidationError` with what the kind takes."""
    k = check_kind(kind)
    if isinstance(value, str) and k not in PHRASE_KINDS:
        value = value.strip()
    if k in FLAG_KINDS:
        if value not in (None, "", True):
            raise ValidationError(f"bad value {value!r} for {k}: {VALUE_HELP[k]}")
        v: Any = None
    elif k in INT_LIMITS:
        lo, hi = INT_LIMITS[k]
        if isinstance(value, str) and value.isdigit() and len(value) <= 18:
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(k, value, "a whole number is needed")
        if not lo <= value <= hi:
            raise _bad(k, value, f"must be between {lo} and {hi}")
        v = value
    elif k in PHRASE_KINDS:
        if value is None and k == "postscript":
            value = "P.S."
        if not isinstance(value, str) or not " ".join(value.split()):
            raise _bad(k, value, "a non-empty phrase is needed")
        v = " ".join(value.split())
        if len(v) > MAX_PHRASE_CHARS:
            raise _bad(k, v[:40] + "...", f"at most {MAX_PHRASE_CHARS} characters")
    elif k == "language":
        name = str(value or "").strip().lower()
        if name in LANGUAGES:
            v = LANGUAGES[name]
        elif name in LANGUAGE_NAMES:
            v = name
        else:
            known = ", ".join(sorted(LANGUAGES))
            raise _bad(k, value, f"unknown language; known: {known}")
    else:  # avoid_words
        words = value.split(",") if isinstance(value, str) else value
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise _bad(k, value, "a list of words is needed")
        cleaned = list(dict.fromkeys(" ".join(w.split()).lower() for w in words if w.strip()))
        if not cleaned:
            raise _bad(k, value, "at least one word is needed")
        if len(cleaned) > MAX_AVOID_WORDS or any(len(w) > MAX_WORD_CHARS for w in cleaned):
            raise _bad(k, value, f"at most {MAX_AVOID_WORDS} words of {MAX_WORD_CHARS} characters")
        v = cleaned
    return Constraint(kind=k, value=v, phrase=str(phrase or "")[:MAX_PHRASE_CHARS])


def parse_spec(spec: str) -> Constraint:
    """``KIND`` or ``KIND=VALUE`` (the CLI's ``--set``) as a checked constraint."""
    kind, sep, value = str(spec).partition("=")
    if not kind.strip():
        raise ValidationError(f"bad --set {spec!r}: use KIND or KIND=VALUE; kinds: {valid_kinds()}")
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        value = value[1:-1]
    return normalize(kind, value if sep else None)


def check_items(items: Sequence[Constraint]) -> list[Constraint]:
    """``items`` if no two of them claim one slot (lowercase and uppercase both set the case),
    else a :class:`ValidationError`."""
    seen: dict[str, Kind] = {}
    for c in items:
        if c.slot in seen:
            raise ValidationError(
                f"{seen[c.slot]} and {c.kind} exclude each other (both set the {c.slot}): keep one"
            )
        seen[c.slot] = c.kind
    return list(items)


def apply(
    items: Sequence[Constraint],
    *,
    clear: bool = False,
    drop: Sequence[str] = (),
    set_: Sequence[Constraint] = (),
) -> tuple[list[Constraint], list[str]]:
    """``items`` with every constraint removed (``clear``), the kinds in ``drop`` removed, and
    each of ``set_`` added in place of the one in its slot. Returns the new items and what
    changed, in words ("dropped lowercase", "set max_words=40"). A kind to drop that is not
    there is a :class:`ValidationError` (naming the kinds there are)."""
    out = [] if clear else list(items)
    changes = ["cleared"] if clear and items else []
    for kind in drop:
        k = check_kind(kind)
        if not any(c.kind == k for c in out):
            there = ", ".join(c.kind for c in out) or "none"
            raise ValidationError(f"this preference has no {k} constraint (it has: {there})")
        out = [c for c in out if c.kind != k]
        changes.append(f"dropped {k}")
    for new in set_:
        old = next((c for c in out if c.slot == new.slot), None)
        if old is not None and same(old, new):
            continue  # already there: keep it, and the words it came from
        out = [c for c in out if c.slot != new.slot]
        out.append(new)
        shown = f"{new.kind}={_value_text(new)}" if new.value is not None else new.kind
        changes.append(f"set {shown}" + (f" (was {short(old)})" if old is not None else ""))
    return check_items(out), changes


def diff(old: Sequence[Constraint], new: Sequence[Constraint]) -> list[str]:
    """What changed from ``old`` to ``new``, in words (for the event log)."""
    if old and not new:
        return ["cleared"]
    changes = [f"dropped {o.kind}" for o in old if not any(n.slot == o.slot for n in new)]
    for n in new:
        if any(same(o, n) for o in old):
            continue
        was = next((o for o in old if o.slot == n.slot), None)
        shown = f"{n.kind}={_value_text(n)}" if n.value is not None else n.kind
        changes.append(f"set {shown}" + (f" (was {short(was)})" if was is not None else ""))
    return changes


def same(a: Constraint, b: Constraint) -> bool:
    """Whether ``a`` and ``b`` ask the same (the words they came from aside)."""
    return (a.kind, a.value) == (b.kind, b.value)


def merge_phrases(old: Sequence[Constraint], new: Sequence[Constraint]) -> list[Constraint]:
    """``new``, each keeping the words an identical constraint of ``old`` came from when it
    has none of its own (a client that sends back only kinds and values keeps them)."""
    out = []
    for c in new:
        match = next((o for o in old if same(o, c)), None)
        out.append(c.model_copy(update={"phrase": match.phrase}) if match and not c.phrase else c)
    return out


def unchanged(old: Sequence[Constraint], new: Sequence[Constraint]) -> bool:
    """Whether ``new`` asks exactly what ``old`` asks (order and phrases aside)."""
    return sorted(map(_key, old)) == sorted(map(_key, new))


def _key(c: Constraint) -> tuple[str, str]:
    return (c.kind, repr(c.value))


def _value_text(c: Constraint) -> str:
    return ",".join(c.value) if isinstance(c.value, list) else str(c.value)


def save(
    store: Any,
    rec: Preference,
    items: Sequence[Constraint],
    *,
    user: str,
    actor: str = "user",
    change: str = "",
) -> Preference:
    """Write a new version of ``rec`` (same text) whose constraints are ``items``, kept as
    edited by the user. ``store`` is a memory store (guarded, possibly scoped) or a
    :class:`~personalign.memory.Memory`; ``user`` is as the store takes it. The old version
    stays in history; the event log's reason says what changed."""
    items = check_items([c.model_copy(update={"source_id": None}) for c in items])
    meta = {**rec.meta, "constraints": {**to_meta(items, text=rec.text), "edited": True}}
    # the text is the same, so are its flags: editing constraints never unflags a text
    new = rec.revised(rec.text).model_copy(update={"meta": meta, "flags": list(rec.flags)})
    reason = "constraints edited: " + (change or "replaced")
    result: Preference = store.update(rec.id, new, user=user, actor=actor, reason=reason[:500])
    return result


def replace(
    store: Any,
    rec: Preference,
    items: Sequence[Constraint],
    *,
    user: str,
    actor: str,
    reason: str | None = None,
) -> dict[str, Any]:
    """Give ``rec`` exactly the constraints ``items`` (the HTTP API's PUT, the dashboard's
    drop): a new version through :func:`save`, unless they ask what ``rec``'s already ask.
    Returns :func:`view` of the version that holds them, with ``changed`` and, after a
    write, ``previous_id``."""
    old, _ = current(rec)
    new_items = merge_phrases(old, check_items(items))
    if unchanged(old, new_items):
        return {**view(rec), "changed": False}
    change = "; ".join(diff(old, new_items)) + (f" ({reason})" if reason else "")
    new = save(store, rec, new_items, user=user, actor=actor, change=change)
    return {**view(new), "changed": True, "previous_id": rec.id}
