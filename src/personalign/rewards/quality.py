"""A quality floor for ranked replies, independent of any reward model.

A preference reward model can be gamed: for "I prefer short answers" it rewards an empty reply,
"The answer is:" or bare list numbering, and it may prefer a fluent reply to another question.
The floor has two parts, neither of which reads the preferences:

* :func:`degenerate` — text rules that name why a reply is no answer at all (empty, too short,
  a stub that only announces an answer, list numbering or punctuation without words, loops).
* :func:`relevance` — cosine similarity between the question and each reply under the
  embedder (all-MiniLM-L6-v2 in use, :class:`personalign.backends.embedders.HashingEmbedder` in unit
  tests).

:class:`QualityFloor` combines them: a reply passes when it is not degenerate and is nearly as
relevant as the most relevant candidate (or the plain, unpersonalized ``baseline`` reply), and
:meth:`QualityFloor.select` lets the reward model choose only among passing replies.

The numbers, once (tuned on the dev half of ``benchmarks/reward_probe.py``):

===========================  =================================================================
``MIN_WORDS`` = 5            fewer words (space-separated, holding a letter or digit:
                             "stream-of-consciousness" is one; each CJK character counts as
                             one; list markers do not count) is degenerate: "too short"
``CUTOFF_MAX_WORDS`` = 12    a reply shorter than this that stops on a word no sentence ends
                             with ("the", "of", "and", ...) and without closing punctuation
                             is cut off ("Based on the information provided, the")
``STUB_MAX_WORDS`` = 10      a reply ending in ``:`` with fewer content words (not stop words)
                             announces an answer without giving one
``SOUP_MIN_ALNUM`` = 0.3     fewer letters and digits among the non-space characters is
                             punctuation / symbol soup
``REPEAT_MIN_SEGMENTS`` = 3  sentences or lines needed before the repeated-sentence rule applies
``REPEAT_SHARE`` = 0.5       the most frequent sentence/line making up at least this share of
                             them (3 times or more) is a loop; as is at most this share of them
                             being distinct (4 or more segments)
``NGRAM`` = 3, 3 times       word 3-grams that occur 3 times or more are "repeated"
``NGRAM_COVERAGE`` = 0.75    at least this share of the words inside repeated 3-grams is a
                             loop (texts of ``NGRAM_MIN_WORDS`` = 12 words or more; templated
                             plans such as "Week 1: run ... Week 2: run ..." reach 0.6)
``TTR_WINDOW`` = 50          the moving-average type-token ratio over windows of 50 words
``TTR_MIN`` = 0.3            below it (texts of 2 windows or more) the vocabulary is too poor
``margin`` = 0.15            a reply passes the relevance floor at cosine >= best - margin,
                             where best is the highest cosine among non-degenerate candidates
                             and the (non-degenerate) baseline. On the dev probes (MiniLM)
                             margins 0.05-0.2 keep the on-topic reply first equally often
                             (0.9985) and 0.25+ lets answers to other questions win more;
                             0.15 is mid-plateau and passes 88% of on-topic first-sentence
                             shortenings (0.1: 80%, 0.2: 91%)
===========================  =================================================================
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from personalign.backends.embedders import Embedder
from personalign.errors import ValidationError
from personalign.text import split_sentences
from personalign.types import check_texts

MIN_WORDS = 5
CUTOFF_MAX_WORDS = 12
STUB_MAX_WORDS = 10
SOUP_MIN_ALNUM = 0.3
REPEAT_MIN_SEGMENTS = 3
REPEAT_SHARE = 0.5
NGRAM = 3
NGRAM_MIN_COUNT = 3
NGRAM_MIN_WORDS = 12
NGRAM_COVERAGE = 0.75
TTR_WINDOW = 50
TTR_MIN = 0.3
DEFAULT_MARGIN = 0.15

_FENCE_LINE = re.compile(r"^[ \t]*(?:```|~~~)[\w+#.-]*[ \t]*$", re.M)
# list markers: "1." "2)" "(3)" "a." "b)" "-" "*" "+" "•" at the start of a line
_LINE_MARKER = re.compile(r"^[ \t]*(?:\(?\d{1,3}[.)]|\(?[A-Za-z][.)]|[-*+•·])(?=\s|$)", re.M)
# a bare number marker anywhere ("1. 2. 3." on one line)
_BARE_MARKER = re.compile(r"(?<!\S)\(?\d{1,3}[.)](?=\s|$)")
_TOKEN = re.compile(r"[^\W_]+")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
_TRAILING_JUNK = re.compile(r"[\s`~*_\-–—.…]+$")
# the whole reply is one sentence that announces what follows ("Sure, here is the recipe.")
_ANNOUNCED = (
    r"(?:answers?|recipes?|lists?|steps?|code|solutions?|information|info|details|examples?|"
    r"summary|explanations?|overview|responses?|options|suggestions?|ideas|tips|guides?|"
    r"instructions|breakdown|plans?|tables?|results?|translations?|poems?|story|essay|"
    r"emails?|letters?|outline|facts|reasons|ways|things)"
)
_ANNOUNCE = re.compile(
    r"^\W*(?:(?:sure|certainly|of course|okay|ok|absolutely|great|alright|yes|no problem)"
    r"\b\W*)?(?:"
    r"(?:here(?:'s|’s|\s+is|\s+are)|below\s+(?:is|are)|i(?:'ll|’ll|\s+will|\s+can)\s+"
    r"(?:give|provide|write|share|list)(?:\s+you)?)\s+(?:[\w'’-]+\s+){0,5}?"
    + _ANNOUNCED
    + r"\b[^.:!?\n]{0,60}"
    r"|(?:the|my|your)\s+(?:[\w'’-]+\s+){0,3}?"
    + _ANNOUNCED
    + r"\s+(?:is|are|would\s+be|will\s+be)(?:\s+as\s+follows|\s+below)?"
    r")\s*[.:!?]?\W*$",
    re.I,
)

_STOP_WORDS = """
    a about above after again all am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from
    further had has have having he her here hers herself him himself his i if in into is
    it its itself just me more most my myself no nor not now of off on once only or other
    our ours ourselves out over own same she should so some such than that the their
    theirs them themselves then there these they this those through to too under until up
    very was we were will with would you your yours yourself yourselves s t d m ll re ve
    don doesn didn isn aren wasn let well also
"""
STOP_WORDS = frozenset(_STOP_WORDS.split())
"""Function words: a reply made only of these says nothing (``"1. The\\n2. A\\n3. It"``)."""


_DANGLING_WORDS = """
    a an the of to and or but nor with for in on at by from as into than that which whose
    is are was were be been being has have had will would can could should my your our their
    its his her this these those
"""
_DANGLING = frozenset(_DANGLING_WORDS.split())
"""Words a sentence does not end with: a short reply stopping on one was cut off."""
_CLOSED = re.compile(r"[.!?。！？)\]}\"'’”*`]\s*$")


def _count_words(text: str) -> int:
    """Space-separated words holding a letter or digit; each CJK character counts as one."""
    n = 0
    for chunk in text.split():
        cjk = len(_CJK.findall(chunk))
        if cjk:
            n += cjk + bool(_TOKEN.search(_CJK.sub("", chunk)))
        elif _TOKEN.search(chunk):
            n += 1
    return n


def _tokens(text: str) -> list[str]:
    """Lower-cased words: letter/digit runs, each CJK character one word."""
    out: list[str] = []
    for tok in _TOKEN.findall(text.lower()):
        if _CJK.search(tok):
            out.extend(ch for ch in tok)
        else:
            out.append(tok)
    return out


def _strip_markers(text: str) -> tuple[str, int]:
    """The text without list markers, and how many there were."""
    text, n_line = _LINE_MARKER.subn(" ", text)
    text, n_bare = _BARE_MARKER.subn(" ", text)
    return text, n_line + n_bare


def _content_words(tokens: Sequence[str]) -> list[str]:
    return [t for t in tokens if t not in STOP_WORDS]


def _segments(text: str) -> list[str]:
    """Sentences and lines, each as its normalized word string; empty ones dropped."""
    out = []
    for seg in split_sentences(text, ends=".!?。！？"):
        words = _tokens(seg)
        if words:
            out.append(" ".join(words))
    return out


def _ngram_coverage(
    tokens: Sequence[str], n: int = NGRAM, min_count: int = NGRAM_MIN_COUNT
) -> float:
    """The share of word positions inside an ``n``-gram occurring ``min_count`` times or more."""
    if len(tokens) < n:
        return 0.0
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    counts = Counter(grams)
    covered = np.zeros(len(tokens), dtype=bool)
    for i, g in enumerate(grams):
        if counts[g] >= min_count:
            covered[i : i + n] = True
    return float(covered.mean())


def _mattr(tokens: Sequence[str], window: int = TTR_WINDOW) -> float:
    """Moving-average type-token ratio over windows of ``window`` words (stride window/2)."""
    if len(tokens) < window:
        return len(set(tokens)) / max(1, len(tokens))
    step = max(1, window // 2)
    ratios = [
        len(set(tokens[i : i + window])) / window for i in range(0, len(tokens) - window + 1, step)
    ]
    return float(np.mean(ratios))


def degenerate(text: str) -> str | None:
    """Why ``text`` is not an answer at all, or ``None`` when it may be one.

    In order (the first that applies is reported):

    1. empty or only whitespace;
    2. only code fences, or fewer than ``SOUP_MIN_ALNUM`` letters and digits among its
       non-space characters (punctuation / symbol soup);
    3. list numbering or bullets with no content word (``"1.\\n2.\\n3."``, ``"1. The\\n2. A"``);
    4. a stub that announces an answer without giving one: it ends with ``:`` and has fewer
       than ``STUB_MAX_WORDS`` content words (``"The answer is:"``, ``"Here is the
       recipe:"``), or it is a single announcing sentence (``"Sure, here is the recipe."``);
    5. fewer than ``MIN_WORDS`` words, or fewer than ``CUTOFF_MAX_WORDS`` ending on a word no
       sentence ends with ("the", "of", "and", ...) with no closing punctuation;
    6. no content word at all (only function words);
    7. repeated: one sentence or line making up ``REPEAT_SHARE`` of them (3+ times), or few
       distinct ones; most words inside word 3-grams repeated 3+ times; or a moving-average
       type-token ratio under ``TTR_MIN`` (100 words or more).

    Case, a closing P.S. or sign-off, Markdown lists and JSON do not matter to any rule.
    """
    if not isinstance(text, str):
        raise ValidationError(f"degenerate() takes a string, got {type(text).__name__}")
    t = text.strip()
    if not t:
        return "empty reply"
    body = _FENCE_LINE.sub(" ", t).strip()
    if not body:
        return "only code fences"
    nonspace = [c for c in t if not c.isspace()]
    alnum = sum(c.isalnum() for c in nonspace) / len(nonspace)
    if alnum < SOUP_MIN_ALNUM:
        return f"mostly punctuation or symbols ({alnum:.0%} letters and digits)"
    stripped, n_markers = _strip_markers(body)
    tokens = _tokens(stripped)
    content = _content_words(tokens)
    if n_markers >= 2 and not content:
        return "list numbering without content"
    tail = _TRAILING_JUNK.sub("", body)
    if tail.endswith((":", "：")) and len(content) < STUB_MAX_WORDS:
        return "announces an answer without giving one (ends with ':')"
    if _ANNOUNCE.match(body) and len(content) < STUB_MAX_WORDS:
        return "announces an answer without giving one"
    n_words = _count_words(stripped)
    if n_words < MIN_WORDS:
        return f"too short ({n_words} word{'s' if n_words != 1 else ''})"
    if n_words < CUTOFF_MAX_WORDS and tokens[-1] in _DANGLING and not _CLOSED.search(body):
        return f"cut off mid-sentence after {n_words} words"
    if not content:
        return "no content words"
    segments = _segments(stripped)
    if len(segments) >= REPEAT_MIN_SEGMENTS:
        count = Counter(segments).most_common(1)[0][1]
        if count >= 3 and count / len(segments) >= REPEAT_SHARE:
            return f"repeats one sentence {count} times"
        if len(segments) >= 4 and len(set(segments)) / len(segments) <= REPEAT_SHARE:
            return f"repeats its lines ({len(set(segments))} distinct of {len(segments)})"
    if len(tokens) >= NGRAM_MIN_WORDS:
        coverage = _ngram_coverage(tokens)
        if coverage >= NGRAM_COVERAGE:
            return f"repeats phrases ({coverage:.0%} of words in repeated 3-word sequences)"
    if len(tokens) >= 2 * TTR_WINDOW:
        ttr = _mattr(tokens)
        if ttr < TTR_MIN:
            return f"too few distinct words (type-token ratio {ttr:.2f})"
    return None


def relevance(question: str, replies: Sequence[str], embedder: Embedder) -> np.ndarray:
    """``(len(replies),)`` float64: the cosine similarity of each reply to ``question`` under
    ``embedder`` (whose rows are unit vectors, so it is their dot product), in [-1, 1]; with
    all-MiniLM-L6-v2, on the dev probes of ``benchmarks/reward_probe.py``, the dataset's
    answer scores 0.48 / 0.75 (5th percentile / median) and the answer to another question
    0.02 / 0.21 (median / 95th percentile). One ``embed`` call for the question and every reply."""
    items = check_texts(replies, what="relevance()")
    if not isinstance(question, str):
        raise ValidationError(f"relevance(): question is {type(question).__name__}, expected str")
    if not items:
        return np.zeros(0, dtype=np.float64)
    vectors = np.asarray(embedder.embed([question, *items]), dtype=np.float64)
    out: np.ndarray = vectors[1:] @ vectors[0]
    return out


@dataclass(frozen=True)
class Quality:
    """One reply's verdict: ``degenerate`` is the reason it is no answer (``None`` if it may
    be one), ``relevance`` its cosine to the question, ``passes`` whether it clears the floor."""

    degenerate: str | None
    relevance: float
    passes: bool


class QualityFloor:
    """Keeps degenerate and off-topic replies from winning a reward-model ranking.

    A reply passes when :func:`degenerate` finds nothing and its :func:`relevance` is at least
    ``best - margin``, ``best`` being the highest relevance among the non-degenerate
    candidates and the ``baseline`` (the plain, unpersonalized reply, when given and not
    degenerate itself). So a reply much less relevant than another candidate, or than the
    plain reply, never wins; ``margin`` (cosine units, >= 0) is how much relevance a
    preference may cost.
    """

    def __init__(self, embedder: Embedder, *, margin: float = DEFAULT_MARGIN) -> None:
        if not (isinstance(margin, int | float) and math.isfinite(margin) and margin >= 0):
            raise ValidationError(
                f"QualityFloor: margin must be a finite number >= 0, got {margin!r}"
            )
        self.embedder = embedder
        self.margin = float(margin)

    def assess(
        self, question: str, replies: Sequence[str], *, baseline: str | None = None
    ) -> list[Quality]:
        """The :class:`Quality` of each reply, in order (one ``embed`` call)."""
        items = check_texts(replies, what="QualityFloor.assess()")
        if not items:
            return []
        texts = items if baseline is None else [*items, baseline]
        rel = relevance(question, texts, self.embedder)
        reasons = [degenerate(r) for r in items]
        alive = [float(rel[i]) for i, why in enumerate(reasons) if why is None]
        if baseline is not None and degenerate(baseline) is None:
            alive.append(float(rel[-1]))
        floor = max(alive) - self.margin if alive else math.inf
        return [
            Quality(
                degenerate=why,
                relevance=float(rel[i]),
                passes=bool(why is None and rel[i] >= floor),
            )
            for i, why in enumerate(reasons)
        ]

    def select(
        self,
        question: str,
        replies: Sequence[str],
        rewards: Sequence[float] | np.ndarray,
        *,
        baseline: str | None = None,
    ) -> int:
        """The index of the reply to keep: the highest reward among passing replies (a NaN
        reward ranks last; ties go to the more relevant); if none passes, the most relevant
        non-degenerate reply; if every reply is degenerate, the longest."""
        items = check_texts(replies, what="QualityFloor.select()")
        r = np.asarray(rewards, dtype=np.float64).reshape(-1)
        if not items:
            raise ValidationError("QualityFloor.select() needs at least one reply")
        if len(r) != len(items):
            raise ValidationError(
                f"QualityFloor.select(): {len(r)} rewards for {len(items)} replies"
            )
        qualities = self.assess(question, items, baseline=baseline)
        passing = [i for i, q in enumerate(qualities) if q.passes]
        if passing:
            score = np.nan_to_num(r, nan=-np.inf)
            return max(passing, key=lambda i: (score[i], qualities[i].relevance, -i))
        alive = [i for i, q in enumerate(qualities) if q.degenerate is None]
        if alive:
            return max(alive, key=lambda i: (qualities[i].relevance, -i))
        return max(range(len(items)), key=lambda i: (len(items[i].strip()), -i))
