"""What code can check, code enforces: a reply is chosen, styled and repaired to the user's
constraints and weights, after any decoding method.

* :func:`style_plan` turns a user's weights over the style dimensions
  (:mod:`personalign.rewards.dimensions`) into what the system does: constraint defaults (a
  strong ``conciseness`` caps the length, a strong ``structure`` asks for bullet points), lines
  for the prompt, and deterministic text transforms (``formality``: contractions expanded or
  made; ``warmth``: a friendly opening and close, or none; ``readability``: long sentences
  split, or short ones joined; ``structure`` low: lists flattened into prose).
* :func:`pick` chooses among candidate replies: first one that is not degenerate and passes
  the quality floor (relevance to the question, :mod:`personalign.rewards.quality`), then one
  that answers rather than asks a question back, then one that passes the most constraints
  once finished, then before any repair, then the highest reward.
* :func:`finish` applies the style transforms and :func:`personalign.constraints.repair`, and
  verifies the result: what ``/why`` shows.

The thresholds: a weight >= :data:`HIGH` asks for more of a dimension, <= :data:`LOW` for
less; in between (and with no weights at all) nothing changes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from personalign.constraints import Check, Constraint, ConstraintSet, repair, verify, word_count
from personalign.text import split_sentences

HIGH = 0.7
LOW = 0.3
CONCISE_WORDS = 50
STRUCTURED_ITEMS = 5


@dataclass(frozen=True)
class StylePlan:
    """What a user's weights ask of a reply (see the module doc)."""

    weights: dict[str, float] = field(default_factory=dict)
    constraints: list[Constraint] = field(default_factory=list)
    requirements: list[str] = field(default_factory=list)
    transforms: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "weights": {k: round(v, 3) for k, v in self.weights.items()},
            "constraints": [c.kind for c in self.constraints],
            "transforms": list(self.transforms),
        }


def style_plan(weights: Mapping[str, float] | None) -> StylePlan:
    """The plan for ``weights`` (dimension -> weight in [0, 1]); empty for ``None``."""
    if not weights:
        return StylePlan()
    w = {k: float(v) for k, v in weights.items()}
    cons: list[Constraint] = []
    req: list[str] = []
    tr: list[str] = []
    c = w.get("conciseness")
    if c is not None and c >= HIGH:
        cons.append(Constraint(kind="max_words", value=CONCISE_WORDS, phrase="weight conciseness"))
    elif c is not None and c <= LOW:
        req.append("Give a detailed, thorough answer with explanations and examples.")
    s = w.get("structure")
    if s is not None and s >= HIGH:
        cons.append(Constraint(kind="bullets", value=STRUCTURED_ITEMS, phrase="weight structure"))
    elif s is not None and s <= LOW:
        req.append("Write in plain paragraphs, without lists or headings.")
        tr.append("prose")
    f = w.get("formality")
    if f is not None and f >= HIGH:
        req.append("Use a formal, professional tone.")
        tr.append("formal")
    elif f is not None and f <= LOW:
        req.append("Use a casual, relaxed tone.")
        tr.append("casual")
    m = w.get("warmth")
    if m is not None and m >= HIGH:
        req.append("Be warm and friendly.")
        tr.append("warm")
    elif m is not None and m <= LOW:
        req.append("Be matter-of-fact, without pleasantries.")
        tr.append("neutral")
    r = w.get("readability")
    if r is not None and r >= HIGH:
        req.append("Use short, simple sentences and everyday words.")
        tr.append("short_sentences")
    elif r is not None and r <= LOW:
        tr.append("long_sentences")
    return StylePlan(w, cons, req, tr)


# -- deterministic style transforms --------------------------------------------------------------

_EXPAND = [
    (r"\bwon't\b", "will not"),
    (r"\bcan't\b", "cannot"),
    (r"\bshan't\b", "shall not"),
    (r"\b(\w+)n't\b", r"\1 not"),
    (r"\bI'm\b", "I am"),
    (r"\b(\w+)'re\b", r"\1 are"),
    (r"\b(\w+)'ll\b", r"\1 will"),
    (r"\b(\w+)'ve\b", r"\1 have"),
    (r"\b(I|you|he|she|we|they)'d\b", r"\1 would"),
    (r"\b(it|that|there|what|here|who)'s\b", r"\1 is"),
]
_CONTRACT = [
    ("do not", "don't"),
    ("does not", "doesn't"),
    ("did not", "didn't"),
    ("is not", "isn't"),
    ("are not", "aren't"),
    ("was not", "wasn't"),
    ("were not", "weren't"),
    ("cannot", "can't"),
    ("can not", "can't"),
    ("will not", "won't"),
    ("would not", "wouldn't"),
    ("should not", "shouldn't"),
    ("could not", "couldn't"),
    ("have not", "haven't"),
    ("has not", "hasn't"),
    ("it is", "it's"),
    ("that is", "that's"),
    ("there is", "there's"),
    ("what is", "what's"),
    ("here is", "here's"),
    ("you are", "you're"),
    ("we are", "we're"),
    ("they are", "they're"),
    ("i am", "I'm"),
    ("you will", "you'll"),
    ("i will", "I'll"),
    ("it will", "it'll"),
    ("you have", "you've"),
    ("i have", "I've"),
    ("let us", "let's"),
]
_WARM_OPEN = "Happy to help!"
_WARM_CLOSE = "I hope this helps!"
_PLEASANTRY = re.compile(
    r"^(?:(?:great|good|excellent|what a (?:great|good)) question[.!]?|sure(?: thing)?[.!,]|"
    r"certainly[.!,]|of course[.!,]|absolutely[.!,]|happy to help[.!]?|i'd be happy to help[.!]?)"
    r"\s*",
    re.I,
)
_CLOSING = re.compile(
    r"\s*(?:i hope (?:this|that) helps[.!]?|hope (?:this|that) helps[.!]?|"
    r"let me know if you have (?:any )?(?:other|more) questions[.!]?|enjoy[.!])\s*$",
    re.I,
)
_LIST_MARK = re.compile(r"^\s*(?:[-*+•]|\d{1,3}[.)]|#{1,6})\s+")


def _keep_case(repl: str, matched: str) -> str:
    return repl[:1].upper() + repl[1:] if matched[:1].isupper() else repl


def _formal(text: str) -> str:
    for pat, repl in _EXPAND:

        def expand(m: re.Match[str], r: str = repl) -> str:
            return _keep_case(m.expand(r), m.group(0))

        text = re.sub(pat, expand, text)
    return re.sub(r"!+", ".", text)


def _casual(text: str) -> str:
    for long, short in _CONTRACT:

        def contract(m: re.Match[str], r: str = short) -> str:
            return _keep_case(r, m.group(0))

        text = re.sub(rf"\b{long}\b", contract, text, flags=re.I)
    return text


def _neutral(text: str) -> str:
    text = _PLEASANTRY.sub("", text.strip())
    text = _CLOSING.sub("", text)
    return re.sub(r"!+", ".", text).strip()


def _warm(text: str) -> str:
    t = text.strip()
    if not _PLEASANTRY.match(t):
        t = f"{_WARM_OPEN} {t}"
    if not _CLOSING.search(t):
        t = f"{t} {_WARM_CLOSE}"
    return t


def _prose(text: str) -> str:
    lines = [_LIST_MARK.sub("", ln).strip() for ln in text.splitlines()]
    parts = []
    for ln in lines:
        if not ln:
            continue
        ln = ln.strip("*_ ")
        parts.append(ln if ln.endswith((".", "!", "?", ":")) else ln + ".")
    return " ".join(parts)


def _short_sentences(text: str) -> str:
    out = re.sub(r";\s+(\w)", lambda m: ". " + m.group(1).upper(), text)
    return re.sub(
        r",\s+(and|but|so|which|because)\s+(\w)",
        lambda m: ". " + m.group(2).upper(),
        out,
    )


def _long_sentences(text: str) -> str:
    return re.sub(
        r"(?<=\w)\.\s+([A-Z])(?=[a-z])",
        lambda m: ", and " + m.group(1).lower(),
        text,
        count=3,
    )


TRANSFORMS = {
    "formal": _formal,
    "casual": _casual,
    "neutral": _neutral,
    "warm": _warm,
    "prose": _prose,
    "short_sentences": _short_sentences,
    "long_sentences": _long_sentences,
}


def apply_style(text: str, plan: StylePlan) -> str:
    """``text`` with the plan's transforms applied, in the plan's order."""
    for name in plan.transforms:
        text = TRANSFORMS[name](text)
    return text


# -- choosing and finishing a reply ---------------------------------------------------------


@dataclass(frozen=True)
class Finished:
    """The reply sent: ``text`` after style and repair, ``checks`` of the final text,
    ``before`` the checks of the reply as generated, ``index`` of the chosen candidate."""

    text: str
    checks: list[Check]
    before: list[Check]
    index: int = 0
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def repaired(self) -> bool:
        return any(not c.passed for c in self.before)


_FRAGMENT = re.compile(r"(?<=[.!?])\s+[^.!?]*$")


def trim_fragment(text: str) -> str:
    """``text`` without a trailing unfinished sentence (a reply cut by the token budget),
    when at least one finished sentence comes before it."""
    t = text.rstrip()
    if not t or t[-1] in ".!?\"')]}*`" or "\n" in t[-80:]:
        return t
    cut = _FRAGMENT.sub("", t)
    return cut if cut != t and word_count(cut) >= 5 else t


def finish(
    text: str, constraints: ConstraintSet, plan: StylePlan, *, question: str, cut: bool = False
) -> str:
    """Trim an unfinished last sentence (when the token budget ``cut`` the reply), apply the
    style transforms, then repair."""
    text = trim_fragment(text) if cut else text.strip()
    styled = apply_style(text, plan) if plan.transforms else text
    return repair(styled, constraints, question=question) if constraints else styled


_ASKS_USER = re.compile(
    r"^\W*(?:(?:but|so|and|first|now|okay|ok|well)\b[\s,]*)?(?:"
    r"(?:can|could|would|will) you (?:please |kindly )?(?:tell|let|give|share|provide|specify|"
    r"describe|clarify|say)\b|"
    r"(?:please )?(?:tell|let) me (?:know|what|which|more)\b|"
    r"please (?:tell|share|provide|specify|describe|clarify|let me know)\b|"
    r"(?:i need|i'd need|i would need) (?:to know|more (?:information|details))\b)",
    re.I,
)


def _asks(sentence: str) -> bool:
    s = sentence.strip()
    return s.endswith("?") or bool(_ASKS_USER.match(s))


def asks_back(text: str) -> bool:
    """Whether a reply mostly asks the user back ("What recipe do you have in mind?", "Can
    you tell me what you like.") instead of answering: at least half of its sentences are
    questions or requests for the user's details."""
    parts = [p for p in split_sentences(text) if re.search(r"\w", p)]
    return bool(parts) and 2 * sum(_asks(p) for p in parts) >= len(parts)


def pick(
    candidates: Sequence[str],
    constraints: ConstraintSet,
    plan: StylePlan,
    *,
    question: str,
    rewards: Sequence[float] | None = None,
    quality: Any = None,
    baseline: str | None = None,
    cut: Sequence[bool] | None = None,
) -> Finished:
    """The best candidate, finished (see the module doc for the order). ``quality`` is a
    :class:`~personalign.rewards.quality.QualityFloor` (``assess(question, replies,
    baseline=)``); without one, only the degenerate rule applies. ``cut``: per candidate,
    whether the token budget stopped it (its unfinished last sentence is trimmed)."""
    from personalign.rewards.quality import degenerate

    if not candidates:
        raise ValueError("pick needs at least one candidate")
    if cut is not None and len(cut) != len(candidates):
        raise ValueError(f"cut has {len(cut)} flags for {len(candidates)} candidates")
    flags = list(cut) if cut is not None else [False] * len(candidates)
    done = [
        finish(c, constraints, plan, question=question, cut=f)
        for c, f in zip(candidates, flags, strict=True)
    ]
    before = [verify(c, constraints) for c in candidates]
    after = [verify(d, constraints) for d in done]
    if quality is not None:
        assessed = quality.assess(question, list(done), baseline=baseline)
        floor = [q.passes for q in assessed]
        relevance = [round(float(q.relevance), 4) for q in assessed]
    else:
        floor = [degenerate(d) is None for d in done]
        relevance = []
    bad = [degenerate(c) for c in candidates]
    r = list(rewards) if rewards is not None else [0.0] * len(candidates)

    asks = [asks_back(c) for c in candidates]

    def key(i: int) -> tuple[Any, ...]:
        return (
            floor[i],
            bad[i] is None,
            not asks[i],
            sum(ch.passed for ch in after[i]),
            sum(ch.passed for ch in before[i]),
            float(r[i]),
        )

    best = int(max(range(len(candidates)), key=key))
    notes: dict[str, Any] = {"candidates": len(candidates)}
    if len(candidates) > 1:
        notes["passed_floor"] = sum(floor)
    if relevance:
        notes["relevance"] = relevance[best]
    if bad[best]:
        notes["degenerate_before_repair"] = bad[best]
    return Finished(done[best], after[best], before[best], best, notes)


def constraint_report(
    finished: Finished, sources: Mapping[str, Sequence[str]]
) -> list[dict[str, Any]]:
    """``/why``'s view of the constraints: for each, what it asks, where it came from (the
    preference ids and their source turns in ``sources``), and whether the reply passed
    before and after repair."""
    from personalign.constraints import describe

    out = []
    for before, after in zip(finished.before, finished.checks, strict=True):
        c = after.constraint
        ids = [x for x in (c.source_id or "").split(",") if x]
        turns = [t for i in ids for t in sources.get(i, [])]
        out.append(
            {
                "kind": c.kind,
                "value": c.value,
                "asks": describe(c),
                "from": c.phrase,
                "source_ids": ids,
                "source_turn_ids": turns,
                "passed_as_generated": before.passed,
                "passed": after.passed,
                **({"detail": after.detail} if after.detail else {}),
            }
        )
    return out


def requirement_lines(constraints: ConstraintSet, plan: StylePlan) -> list[str]:
    """The prompt lines the system writes for the constraints and the weights."""
    return [*constraints.describe(), *plan.requirements]


def words(text: str) -> int:
    return word_count(text)
