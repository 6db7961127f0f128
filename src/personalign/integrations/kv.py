"""How LangGraph's key-value items map onto personalign preferences (pure functions, no
LangGraph import; :mod:`personalign.integrations.langgraph` uses them).

* **Namespaces and users.** A namespace template such as ``("memories", "{user_id}")`` says
  which label of every namespace is the personalign user id (here the second:
  ``("memories", "alice", "work")`` belongs to ``alice``), and is itself the namespace where
  the user's preferences written outside LangGraph (chat extraction, the CLI, the service)
  appear, each under its root id as key.
* **Values and preferences.** A value's text is its first string field among
  :data:`TEXT_FIELDS`; that text is the preference (embedded, searched, checked by the
  boundary, compiled to constraints). The other fields are kept beside it, in the record's
  ``meta["langgraph"]`` with the item's namespace and key. A value with no such field is
  stored whole, its compact JSON as the text.
* **Filters** compare values as LangGraph's own stores do: equality, nested mappings, and
  the operators ``$eq $ne $gt $gte $lt $lte``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from personalign.errors import ValidationError

USER_LABEL = "{user_id}"
"""The label of a namespace template that stands for the personalign user id."""
TEXT_FIELDS: tuple[str, ...] = ("text", "content", "memory")
"""The value fields read as the preference's text, first present string first."""
META_KEY = "langgraph"
"""The key of a record's ``meta`` that holds its LangGraph address and other fields."""


@dataclass(frozen=True)
class Entry:
    """What a record keeps of a LangGraph item: its address, which value field held the
    text (``None``: the whole value was the text, as JSON), the other fields, and when the
    item was first put (``None`` on the first version: its own ``recorded_at``)."""

    namespace: tuple[str, ...]
    key: str
    field: str | None
    rest: dict[str, Any]
    created_at: str | None = None

    def to_meta(self) -> dict[str, Any]:
        return {
            "namespace": list(self.namespace),
            "key": self.key,
            "field": self.field,
            "value": self.rest,
            "created_at": self.created_at,
        }

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> Entry | None:
        """The entry stored in a record's ``meta``, or ``None`` when it has none."""
        raw = meta.get(META_KEY)
        if not isinstance(raw, Mapping):
            return None
        ns, key = raw.get("namespace"), raw.get("key")
        if not isinstance(ns, list) or not isinstance(key, str):
            return None
        rest = raw.get("value")
        return cls(
            namespace=tuple(str(x) for x in ns),
            key=key,
            field=raw.get("field") if isinstance(raw.get("field"), str) else None,
            rest=dict(rest) if isinstance(rest, Mapping) else {},
            created_at=raw.get("created_at") if isinstance(raw.get("created_at"), str) else None,
        )

    def value(self, text: str) -> dict[str, Any]:
        """The item's value for the record's current ``text`` (which a later personalign
        version, a supersession from chat say, may have changed)."""
        if self.field is not None:
            return {**self.rest, self.field: text}
        if text == as_json(self.rest):
            return dict(self.rest)
        return {**self.rest, TEXT_FIELDS[0]: text}


def user_index(template: Sequence[str]) -> int:
    """The position of :data:`USER_LABEL` in ``template`` (which must hold it exactly once)."""
    if not isinstance(template, tuple | list) or not all(isinstance(x, str) for x in template):
        raise ValidationError(
            f"the namespace template must be a tuple of strings, got {template!r}"
        )
    found = [i for i, label in enumerate(template) if label == USER_LABEL]
    if len(found) != 1:
        raise ValidationError(
            f"the namespace template {tuple(template)!r} must contain {USER_LABEL!r} exactly "
            "once: it marks the label that names the personalign user"
        )
    for label in template:
        if label != USER_LABEL and (not label or "." in label):
            raise ValidationError(
                f"bad label {label!r} in the namespace template {tuple(template)!r}: labels are "
                "non-empty and hold no period"
            )
    return found[0]


def as_json(value: Mapping[str, Any]) -> str:
    """``value`` as compact JSON with sorted keys, or :class:`ValidationError` when it is not
    JSON-serializable (a LangGraph value must be)."""
    try:
        return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(", ", ": "))
    except (TypeError, ValueError) as e:
        raise ValidationError(f"a store value must be JSON-serializable: {e}") from e


def split_value(
    value: object, fields: Sequence[str] = TEXT_FIELDS
) -> tuple[str, str | None, dict[str, Any]]:
    """``(text, field, rest)`` of a value to put: the first non-blank string among ``fields``
    and the other fields; for a value with none of them, its JSON, ``None`` and the value."""
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ValidationError(
            f"a store value must be a mapping with string keys, got {type(value).__name__}"
        )
    as_json(value)  # refuse what JSON cannot hold before anything is stored
    for name in fields:
        text = value.get(name)
        if isinstance(text, str) and text.strip():
            return text, name, {k: v for k, v in value.items() if k != name}
    return as_json(value), None, dict(value)


def string_leaves(value: Any, path: str = "") -> list[str]:
    """``"path: text"`` for every string inside ``value`` (mappings and lists, any depth;
    ``path`` joins the mapping keys with periods; a list's strings share one line)."""
    if isinstance(value, str):
        return [f"{path}: {value}" if path else value]
    if isinstance(value, Mapping):
        return [s for k, v in value.items() for s in string_leaves(v, f"{path}.{k}" if path else k)]
    if isinstance(value, list | tuple):
        words = [v for v in value if isinstance(v, str)]
        joined = [f"{path}: {', '.join(words)}" if path else ", ".join(words)] if words else []
        return joined + [s for v in value if not isinstance(v, str) for s in string_leaves(v, path)]
    return []


def admission_texts(rest: Mapping[str, Any], width: int = 600) -> list[str]:
    """What the boundary reads of the fields kept beside the text: each string as its own
    ``"<field>: <value>"`` text, held to the same standard as a preference (a long one in
    overlapping windows of ``width`` characters, since the classifier reads a bounded window).

    Read alone rather than beside the text they annotate: on 84 benign and 48 harmful
    field values (``"I like tea (note: ...)"`` against ``"note: ..."``) the embedded boundary
    admitted one harmful value beside a text and none alone, at the cost of refusing more
    short imperative notes ("todo: book the dentist"), as it refuses them as preferences."""
    out: list[str] = []
    step = width - 100
    for leaf in string_leaves(rest):
        out += (
            [leaf]
            if len(leaf) <= width
            else [leaf[i : i + width] for i in range(0, len(leaf) - 100, step)]
        )
    return out


# -- filters and namespace conditions, as LangGraph's stores read them -------------------------

_OPERATORS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte")


def _number(x: Any) -> float:
    if isinstance(x, bool) or not isinstance(x, int | float | str):
        raise TypeError
    out = float(x)
    if math.isnan(out):
        raise TypeError
    return out


def _apply(item: Any, op: str, operand: Any) -> bool:
    if op == "$eq":
        return bool(item == operand)
    if op == "$ne":
        return bool(item != operand)
    if item is None:
        return False  # a missing field is neither greater nor smaller than anything
    try:
        a, b = _number(item), _number(operand)
    except (TypeError, ValueError):
        return False
    return {"$gt": a > b, "$gte": a >= b, "$lt": a < b, "$lte": a <= b}[op]


def _compare(item: Any, wanted: Any) -> bool:
    if isinstance(wanted, Mapping):
        ops = [k for k in wanted if isinstance(k, str) and k.startswith("$")]
        if ops:
            bad = [k for k in ops if k not in _OPERATORS]
            if bad or len(ops) != len(wanted):
                raise ValidationError(
                    f"unsupported filter operator(s) {bad or list(wanted)!r}: use "
                    f"{', '.join(_OPERATORS)} (not mixed with field names)"
                )
            return all(_apply(item, op, v) for op, v in wanted.items())
        if not isinstance(item, Mapping):
            return False
        return all(_compare(item.get(k), v) for k, v in wanted.items())
    if isinstance(wanted, list | tuple):
        return (
            isinstance(item, list | tuple)
            and len(item) == len(wanted)
            and all(_compare(a, b) for a, b in zip(item, wanted, strict=True))
        )
    return bool(item == wanted)


def matches_filter(value: Mapping[str, Any], flt: Mapping[str, Any] | None) -> bool:
    """Whether ``value`` passes ``flt`` (every field condition holds)."""
    if not flt:
        return True
    return all(_compare(value.get(k), v) for k, v in flt.items())


def matches_path(namespace: tuple[str, ...], match_type: str, path: Sequence[str]) -> bool:
    """Whether ``namespace`` starts (``prefix``) or ends (``suffix``) with ``path``, where a
    ``"*"`` label matches any label."""
    if match_type not in ("prefix", "suffix"):
        raise ValidationError(f"unknown namespace match type {match_type!r}: prefix or suffix")
    if len(namespace) < len(path):
        return False
    labels = namespace[: len(path)] if match_type == "prefix" else namespace[-len(path) :]
    return all(p in ("*", n) for n, p in zip(labels, path, strict=True)) if path else True
