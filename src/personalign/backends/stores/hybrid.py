"""Backend-independent hybrid ranking, shared by every store.

A store finds candidates its own way (SQLite: numpy cosine over the user's vectors and FTS5;
PostgreSQL: pgvector and ``tsvector``) and hands them to :func:`rank`, which adds the
recency, entity and preference signals, fuses all signals (``fusion.FUSIONS``) and drops hits
whose source turns are already covered. The query helpers (:func:`query_terms`,
:func:`named_in_query`, :func:`dense_query`) keep both backends reading a query alike.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from personalign.backends.stores.fusion import FUSIONS
from personalign.config import RetrievalConfig

TOKEN_RE = re.compile(r"\w+", re.UNICODE)
_STOPWORD_LIST = (
    "a an the of to in on and or is are was were be been do does did what when where who whom "
    "which how why would could should has have had i you he she it they we her his their its my "
    "your me him them this that for with at by from as about into can will not no yes s t"
)
STOPWORDS = frozenset(_STOPWORD_LIST.split())
ENTITY_TAG = re.compile(r"^(?:speaker|entity):(.+)$")
ADVICE_RE = re.compile(
    r"\b(recommend\w*|suggest\w*|advice|advise|tips?|ideas?|options?|should i|what should|"
    r"help me (?:choose|pick|plan|find|decide)|which (?:one|is better)|good (?:place|way)s?|"
    r"best (?:way|place)s?|plan(?:ning)?|what (?:are|is) (?:some|a) (?:good|great|nice)|"
    r"what are some|for me|would you|any (?:good|recommendations|suggestions)|"
    r"how (?:can|should|do) i|i should|where can i|what'?s the best|the best \w+ for|"
    r"recc?omm?end\w*)\b",
    re.I,
)
"""A query that asks for advice or recommendations, where preferences weigh more."""

SIGNALS = ("dense", "bm25", "entity", "preference")
"""The signals a hit can have *matched* (recency applies to every candidate)."""


def entities(tags: Iterable[str]) -> list[str]:
    """The lower-cased names of ``speaker:``/``entity:`` tags."""
    return [m.group(1).strip().lower() for t in tags if (m := ENTITY_TAG.match(t))]


def query_terms(text: str, drop: frozenset[str] = frozenset()) -> list[str]:
    """The query's distinct lower-cased tokens for full-text search: without ``drop``, and
    without stop words (each kept when nothing else would be left); at most 64."""
    tokens = list(dict.fromkeys(t.lower() for t in TOKEN_RE.findall(text)))
    tokens = [t for t in tokens if t not in drop] or tokens
    return ([t for t in tokens if t not in STOPWORDS] or tokens)[:64]


def named_in_query(query: str, known: Iterable[str], cfg: RetrievalConfig) -> frozenset[str]:
    """The known entity names the query mentions (none when the entity signal is off)."""
    if cfg.entity_weight <= 0:
        return frozenset()
    return frozenset(set(known) & {t.lower() for t in TOKEN_RE.findall(query)})


def dense_query(query: str, named: frozenset[str]) -> str:
    """The query without the names it mentions (they are matched by the entity signal)."""
    if not named:
        return query
    stripped = " ".join(w for w in re.split(r"(\W+)", query) if w.lower() not in named).strip()
    return stripped if TOKEN_RE.search(stripped) else query


@dataclass(frozen=True)
class Candidate:
    """What ranking needs to know of a candidate memory."""

    kind: str
    tags: Sequence[str]
    source_turn_ids: Sequence[str]
    valid_from: datetime


@dataclass(frozen=True)
class Ranked:
    """One ranked hit: the store's row key, the fused score, raw signals, matched signals."""

    key: int
    score: float
    signals: dict[str, float]
    matched: list[str]


def rank(
    candidates: Mapping[int, Candidate],
    dense: Mapping[int, float],
    bm25: Mapping[int, float],
    *,
    query: str,
    named: frozenset[str],
    now: datetime,
    cfg: RetrievalConfig,
    k: int,
) -> list[Ranked]:
    """Fuse the candidates' signals and return the best ``k``, best first.

    ``dense`` and ``bm25`` map candidate keys to the raw values of the candidates each signal
    ranked; every key of either must be in ``candidates``.
    """
    keys = list(candidates)
    index = {key: i for i, key in enumerate(keys)}
    half_life_s = cfg.recency_half_life_days * 86400.0
    signals: dict[str, dict[int, float]] = {
        "dense": {index[key]: v for key, v in dense.items()},
        "bm25": {index[key]: v for key, v in bm25.items()},
        "recency": {},
        "entity": {},
        "preference": {},
    }
    for i, key in enumerate(keys):
        c = candidates[key]
        age = max((now - c.valid_from).total_seconds(), 0.0)
        signals["recency"][i] = math.exp(-age / half_life_s * math.log(2))
        if named and named.intersection(entities(c.tags)):
            signals["entity"][i] = 1.0
        if c.kind != "episode":
            signals["preference"][i] = 1.0
    if signals["preference"] and named:
        # a question about a named person ("What did Caroline research?") is a lookup, not a
        # request for advice: the entity signal ranks, preferences get no prior
        cfg = cfg.model_copy(update={"preference_weight": 0.0})
    elif signals["preference"] and ADVICE_RE.search(query):
        boost = max(cfg.preference_weight, cfg.advice_preference_weight)
        cfg = cfg.model_copy(update={"preference_weight": boost})
    fused = FUSIONS[cfg.fusion](signals, len(keys), cfg)
    out: list[Ranked] = []
    covered: set[str] = set()
    for i in sorted(range(len(keys)), key=lambda i: fused[i], reverse=True):
        if len(out) == k:
            break
        sources = candidates[keys[i]].source_turn_ids
        if cfg.dedupe_sources and sources and covered.issuperset(sources):
            continue  # every turn it comes from is already represented by a better hit
        covered.update(sources)
        sig = {name: vals[i] for name, vals in signals.items() if i in vals}
        matched = [n for n in SIGNALS if i in signals[n]]
        out.append(Ranked(keys[i], fused[i], sig, matched))
    return out
