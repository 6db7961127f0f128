"""Checkable preferences as typed constraints: compiled from text, verified, enforced, repaired.

A user's preference has two lives (see ``DESIGN.md``): as text it is data, quoted and never
obeyed; as meaning it is compiled into what the system itself does. This module is the
compiler for the part that code can check:

* :func:`compile_text` reads a preference ("from now on, answer me in lowercase", "keep it to
  a tweet", "I'm vegetarian") and returns typed :class:`Constraint` objects. Rules only, no
  model: phrasings are matched by patterns written for the meaning (a length limit, a case, a
  closing phrase), and a constraint keeps the words it was compiled from (``phrase``).
* :class:`ConstraintSet` merges the constraints of a user's active preferences: one per slot
  (case, length, format, ...), the newest preference wins a slot; words to avoid are united.
* :func:`verify` checks a reply against each constraint (a :class:`Check` per constraint).
* :func:`repair` rewrites a reply deterministically so that it passes where a rewrite exists
  (change the case, drop the commas, cut at a sentence boundary under the word limit, format
  as N bullets, add a title, a closing phrase or a postscript, wrap as JSON or in quotes, drop
  the sentences that name a word to avoid). A language cannot be repaired by rules: a reply in
  the wrong language stays failed, and says so.
* :func:`decoding_form` is what a decoding loop can enforce token by token (characters and
  words no token may produce, a token budget).
* :func:`describe` says in one line what a constraint asks; the system writes these lines into
  the prompt, so stored text never speaks to the model in its own words.

This module sits at the bottom of the layering (beside ``types``): memory compiles at write
time, safety asks whether a text asks only for answer style, generation enforces.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from personalign.errors import ValidationError
from personalign.text import split_sentences

Kind = Literal[
    "lowercase",
    "uppercase",
    "no_commas",
    "max_words",
    "max_sentences",
    "bullets",
    "numbered",
    "title",
    "start_phrase",
    "end_phrase",
    "postscript",
    "json",
    "quotation",
    "language",
    "avoid_words",
]
KINDS: tuple[Kind, ...] = get_args(Kind)

SLOTS: dict[Kind, str] = {
    "lowercase": "case",
    "uppercase": "case",
    "no_commas": "commas",
    "max_words": "length",
    "max_sentences": "sentences",
    "bullets": "layout",
    "numbered": "layout",
    "json": "wrap",
    "quotation": "wrap",
    "title": "title",
    "start_phrase": "start",
    "end_phrase": "end",
    "postscript": "postscript",
    "language": "language",
    "avoid_words": "avoid",
}
"""Constraints in one slot exclude each other: the newest preference's wins."""

LANGUAGES: dict[str, str] = {
    "english": "en",
    "french": "fr",
    "spanish": "es",
    "german": "de",
    "italian": "it",
    "portuguese": "pt",
    "dutch": "nl",
    "swedish": "sv",
    "polish": "pl",
    "turkish": "tr",
    "russian": "ru",
    "japanese": "ja",
    "korean": "ko",
    "chinese": "zh",
    "hindi": "hi",
    "arabic": "ar",
    "finnish": "fi",
    "danish": "da",
    "norwegian": "no",
    "greek": "el",
    "czech": "cs",
    "indonesian": "id",
    "vietnamese": "vi",
}
LANGUAGE_NAMES = {code: name.title() for name, code in LANGUAGES.items()}


class Constraint(BaseModel):
    """One checkable requirement on a reply.

    ``value``: the limit for ``max_words``/``max_sentences`` (the most allowed), the item count
    for ``bullets``/``numbered`` (exact), the phrase for ``start_phrase``/``end_phrase``, the
    marker for ``postscript`` ("P.S."), the ISO 639-1 code for ``language``, the words for
    ``avoid_words``; ``None`` for the others. ``phrase``: the words it was compiled from.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Kind
    value: int | str | list[str] | None = None
    phrase: str = ""
    source_id: str | None = Field(default=None, description="the preference it came from")

    @property
    def slot(self) -> str:
        return SLOTS[self.kind]


# --------------------------------------------------------------------------------------------
# the compiler
# --------------------------------------------------------------------------------------------

_NUMBER_WORDS = {
    "one": 1,
    "a single": 1,
    "single": 1,
    "two": 2,
    "a couple of": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "twelve": 12,
    "fifteen": 15,
    "twenty": 20,
    "twenty-five": 25,
    "thirty": 30,
    "forty": 40,
    "fifty": 50,
    "sixty": 60,
    "seventy": 70,
    "eighty": 80,
    "ninety": 90,
    "a hundred": 100,
    "one hundred": 100,
    "hundred": 100,
    "a few": 3,
}
_NUM = r"(\d{1,4}|" + "|".join(sorted(map(re.escape, _NUMBER_WORDS), key=len, reverse=True)) + ")"


def _num(s: str) -> int:
    s = s.strip().lower()
    return int(s) if s.isdigit() else _NUMBER_WORDS[s]


_NEG = r"(?:no|not|never|without|avoid\w*|don'?t|do not|stop|skip|drop|zero|ban|hate|can'?t stand)"
_ANSWERS = r"(?:answers?|repl(?:y|ies)|responses?|messages?|texts?|outputs?|everything|writing)"

_RX_LOWER = re.compile(
    r"\blower[- ]?case\b|\bsmall letters\b|\bno (?:capital|upper[- ]?case|caps)\b|"
    r"\b(?:capital(?:s| letters?)|caps|upper[- ]?case)\b[^.!?]{0,40}\b(?:skip|avoid|drop|leave|"
    r"stress|annoy|bother|irritat|hate|(?:look|feel) like (?:yelling|shouting)|"
    r"are (?:yelling|shouting)|too loud)\w*|"
    rf"\b{_NEG}\b[^.!?]{{0,30}}\b(?:capital(?:s|i[sz]\w*| letters?)?|caps|upper[- ]?case)\b",
    re.I,
)
_RX_UPPER = re.compile(
    r"\b(?:all[- ]caps|all capitals|all capital letters|upper[- ]?case|block (?:capitals|letters)|"
    r"caps lock|capital letters|in capitals|in caps)\b",
    re.I,
)
_RX_COMMA = re.compile(r"\bcommas?\b|\bcomma[- ]free\b", re.I)
_RX_COMMA_NEG = re.compile(
    rf"\b{_NEG}\b|\bcomma[- ]free\b|\b(?:annoy|irritat|distract|drive[sn]? me|dislike|detest|"
    r"loathe|allergic|overus|too many|get rid|leave (?:them |it )?out|cut (?:them |it )?out|"
    r"omit|remove|eliminate|free of|confus|bother|hate)",
    re.I,
)
_RX_MAX_WORDS = [
    re.compile(
        r"\b(?P<rel>under|fewer than|less than|below|at most|no more than|not more than|"
        r"max(?:imum)?(?: of)?|within|up to|a max(?:imum)? of|limit(?:ed)?(?: \w+)? to|"
        r"keep(?: \w+){0,3} (?:to|under|below)|cap(?:ped)?(?: \w+)? (?:at|to)|shorter than|"
        r"(?:not|don'?t|do not|never) (?:exceed|go (?:over|beyond|past)|use more than|"
        r"write more than)"
        r"(?: \w+)?)\s+(?:about |around |roughly )?"
        rf"{_NUM}\s+words?\b",
        re.I,
    ),
    re.compile(
        rf"\b{_NUM}[- ]words?(?: or (?P<rel>less|fewer|under)| max(?:imum)?| limit| tops|"
        r" at most)\b",
        re.I,
    ),
]
_RX_OVER_WORDS = re.compile(
    rf"\b(?:longer|more) than\s+{_NUM}\s+words?\b(?=[^.!?]*\b(?:lose|too long|stay (?:below|under)|"
    r"don'?t|do not|never|avoid|hate|annoy|skip|no)\b)",
    re.I,
)
_RX_TWEET = re.compile(r"\b(?:tweet|twitter|text message|sms)\b", re.I)
_RX_SHORT = re.compile(
    r"\b(?:short|brief|concise|succinct|terse|to the point|bite-sized|compact|tl;?dr)\b"
    r"(?:er|est)?",
    re.I,
)
_RX_SHORT_NEG = re.compile(r"\b(?:not? (?:too )?(?:short|brief)|longer|detailed|in depth)\b", re.I)
_RX_MAX_SENT = re.compile(
    r"\b(?:(?:under|fewer than|less than|at most|no more than|max(?:imum)?(?: of)?|within|up to|"
    r"keep(?: \w+){0,3} (?:to|under)|limit(?:ed)?(?: \w+)? to|in|just|only)\s+)?"
    rf"{_NUM}\s+sentences?\b|\bone[- ]liners?\b|\bsingle sentence\b",
    re.I,
)
_RX_BULLETS = re.compile(
    r"\bbullet(?:ed|s)?\b|\bbullet[- ]?points?\b|\bpoint form\b|\bdot points\b|"
    r"\b(?:as|in|into) (?:a )?(?:short )?list\b|\blist form\b|\blisted\b",
    re.I,
)
_RX_NUMBERED = re.compile(r"\bnumbered (?:list|points|items|steps)\b|\bnumber(?:ed)? them\b", re.I)
_RX_COUNT = re.compile(
    rf"\b(?:exactly |just |only )?{_NUM}\s+(?:(?:\w+ )?(?:bullets?|bullet[- ]points?|points|items|"
    r"entries|lines|things|tips|steps|dot points)|of them)\b",
    re.I,
)
_RX_TITLE = re.compile(
    r"\b(?:title|heading|headline|header)s?\b|<<[^>]*>>|double angular|angle brackets", re.I
)
_RX_TITLE_ASK = re.compile(
    r"\b(?:give|add|put|start|begin|open|include|want|like|prefer|with|need|top|head|always|"
    r"every|each|wrap|enclose)\b|<<|double angular|angle brackets",
    re.I,
)
_QUOTED = r"[\"“”'‘’«]\s*(?P<p>[^\"“”«»]{1,80}?)\s*[\"“”'‘’»]"
_RX_END = re.compile(
    r"\b(?:end|ends|ending|finish|finishing|close|closing|conclude|concluding|wrap(?:ping)? up|"
    r"sign(?:ing)? off|sign)\b[^\"“”'‘’«.!?]{0,60}?\b(?:with|by saying|by writing|using|on)\s+"
    r"(?:the (?:exact |same )?(?:phrase|words?|line|sentence|sign-?off|question)\s*:?\s*)?"
    + _QUOTED,
    re.I,
)
_RX_END_AS = re.compile(
    r"\b(?:make|use|put|add|have|keep|want)\s+"
    + _QUOTED
    + r"\s+(?:as |be )?(?:the |your )?(?:very )?"
    r"(?:final|last|closing) (?:words?|line|sentence|thing)\b|"
    r"\badd\s+" + _QUOTED.replace("?P<p>", "?P<p2>") + r"\s+(?:at|to) the (?:very )?end\b",
    re.I,
)
_RX_END_UNQUOTED = re.compile(
    r"\b(?:end|finish|close|conclude|sign(?:ing)? off)\b[^.!?]{0,40}?\b(?:with|by saying)\s+"
    r"(?:the (?:exact )?(?:phrase|words?|line)\s*:?\s*)?(?P<p>[A-Z][^.!?,;]{1,40}[.!?]?)",
)
_RX_START = re.compile(
    r"\b(?:start|starts|starting|begin|begins|beginning|open|opening)\b[^\"“”'‘’«.!?]{0,60}?"
    r"\b(?:with|by saying|by writing|using)\s+"
    r"(?:the (?:exact |same )?(?:phrase|words?|line|sentence|greeting)\s*:?\s*)?" + _QUOTED,
    re.I,
)
_RX_PS = re.compile(r"\bp\.\s?s\b\.?|\bps\b|\bpost-?script\b|\bpost script\b", re.I)
_RX_PPS = re.compile(r"\bp\.\s?p\.\s?s\b", re.I)
_RX_JSON = re.compile(r"\bjson\b", re.I)
_RX_QUOTE = re.compile(
    r"\b(?:wrap|wrapped|enclose|enclosed|put|surround|surrounded|inside|within|in|between)\b"
    r"[^.!?]{0,40}\b(?:double )?(?:quotation marks?|quote marks?|quotes|quote characters?)\b|"
    r"\b(?:start|begin)\w*\b[^.!?]{0,20}\band (?:end|finish)\w*\b[^.!?]{0,40}"
    r"\b(?:double )?(?:quotation marks?|quote marks?|quotes?|quote characters?)\b",
    re.I,
)
_RX_LANG = re.compile(
    r"\b(?:in|into|using|use|speak|speaking|write|writing|stick (?:to|with)|switch (?:to|into)|"
    r"only (?:read|speak|understand))\s+(?P<lang>"
    + "|".join(LANGUAGES)
    + r")\b|\b(?P<lang2>"
    + "|".join(LANGUAGES)
    + r")[- ](?:only|please|language)\b",
    re.I,
)
_RX_LANG_ASK = re.compile(
    rf"\b(?:answer\w*|respond\w*|repl(?:y|ies|ying)|write|writing|speak|speaking|talk|{_ANSWERS}|"
    r"only|always|from now on|prefer|like|want|please)\b",
    re.I,
)
_RX_LANG_NOT = re.compile(r"\b(?:translate|translation|rewrite|poem|essay|letter|story)\b", re.I)

MEATS = [
    "meat",
    "beef",
    "pork",
    "chicken",
    "bacon",
    "ham",
    "lamb",
    "turkey",
    "sausage",
    "steak",
    "veal",
    "duck",
    "mutton",
    "venison",
    "pepperoni",
    "salami",
    "prosciutto",
    "chorizo",
    "mince",
]
SEAFOOD = [
    "fish",
    "salmon",
    "tuna",
    "cod",
    "shrimp",
    "prawn",
    "crab",
    "lobster",
    "anchovy",
    "anchovies",
    "sardine",
    "seafood",
    "oyster",
    "mussel",
    "clam",
    "scallop",
    "squid",
]
ANIMAL_PRODUCTS = ["milk", "cheese", "butter", "cream", "yogurt", "egg", "eggs", "honey", "gelatin"]
FOOD_GROUPS: dict[str, list[str]] = {
    "nuts": [
        "nut",
        "nuts",
        "peanut",
        "almond",
        "walnut",
        "cashew",
        "pecan",
        "hazelnut",
        "pistachio",
    ],
    "tree nuts": ["almond", "walnut", "cashew", "pecan", "hazelnut", "pistachio"],
    "peanuts": ["peanut", "peanuts"],
    "peanut": ["peanut", "peanuts"],
    "shellfish": ["shellfish", "shrimp", "prawn", "crab", "lobster", "oyster", "mussel", "clam"],
    "seafood": SEAFOOD,
    "fish": ["fish", "salmon", "tuna", "cod", "anchovy", "anchovies", "sardine"],
    "dairy": ["milk", "cheese", "butter", "cream", "yogurt", "dairy"],
    "lactose": ["milk", "cheese", "butter", "cream", "yogurt", "dairy"],
    "milk": ["milk", "cheese", "butter", "cream", "yogurt", "dairy"],
    "gluten": ["gluten", "wheat", "barley", "rye"],
    "wheat": ["wheat", "gluten"],
    "eggs": ["egg", "eggs"],
    "egg": ["egg", "eggs"],
    "soy": ["soy", "tofu", "soya", "edamame"],
    "meat": MEATS,
    "red meat": ["beef", "pork", "lamb", "steak", "veal", "mutton"],
    "pork": ["pork", "bacon", "ham", "sausage", "pepperoni", "salami", "prosciutto", "chorizo"],
}
_RX_VEG = re.compile(
    r"\b(?P<neg>not|no longer|never been|stopped being|quit being|used to be|n't)?\s*(?:a |an |"
    r"strict |strictly |fully |mostly )?(?P<diet>vegetarian|vegan|pescatarian|pescetarian|"
    r"plant-based|kosher|halal)\b",
    re.I,
)
_RX_DIET_MAYBE = re.compile(
    r"\b(?:try|trying|consider\w*|contemplat\w*|thinking (?:of|about)|plan\w* to|might|maybe|"
    r"want to (?:go|become|be)|going to|curious|for)\b",
    re.I,
)
_RX_DIET_CHANGE = re.compile(r"\b(?:anymore|any more|no longer|used to|stopped)\b", re.I)
_RX_ALLERGY = re.compile(
    r"\b(?:allergic to|allergy to|allergies to|intolerant to|intolerance to|can'?t (?:eat|have|"
    r"digest|tolerate)|cannot (?:eat|have|digest|tolerate)|don'?t eat|do not eat|never eat|"
    r"avoid eating|stay away from|steer clear of|keep away from|no)\s+(?:any |all |eating )?"
    r"(?P<food>[a-z][a-z -]{1,25}?)(?=[.,;!?]| and | or | because | since | so |$)",
    re.I,
)
_LIST = r"[a-z][a-z -]{1,25}?(?:(?:,\s*|\s+(?:and|or)\s+)[a-z][a-z -]{1,25}?){0,8}"
_RX_AVOID_FOOD = [
    re.compile(
        r"\b(?:stopped|quit|gave up|given up|cut out|no longer|don'?t|do not|never|can'?t|cannot|"
        r"won'?t)\s+(?:eat|eating|have|having|touch|touching|consume|consuming|drink|drinking)"
        rf"\s+(?:any |all |anything with |foods? with )?(?P<food>{_LIST})"
        r"(?=[.,;!?]| because | since | so | anymore| any more| two| a | for | ever|$)",
        re.I,
    ),
    re.compile(
        r"\b(?:never|don'?t|do not|please don'?t|stop|avoid)\s+(?:ever\s+)?(?:recommend\w*|"
        r"suggest\w*|includ\w*|offer\w*|serv\w*|giv\w* me|add\w*|put\w*|us\w*|propos\w*|"
        rf"mention\w*)\s+(?:me\s+)?(?:any\s+)?(?:dishes\s+with\s+|recipes\s+with\s+)?"
        rf"(?P<food>{_LIST})(?=[.,;!?]| to me| in | for me| at all| because| since| ever|$)",
        re.I,
    ),
    re.compile(rf"\bkeep\s+(?:any\s+|all\s+)?(?P<food>{_LIST})\s+(?:out of|off|away from)\b", re.I),
    re.compile(
        r"\b(?P<food>[a-z]+(?: [a-z]+)?)\s+(?:makes?|made|gives?|gave)\s+me\s+(?:really |so |"
        r"very |terribly |quite )?(?:sick|ill|nauseous|bloated|a rash|hives|break out)\b",
        re.I,
    ),
    re.compile(
        r"\b(?:allergic|allergy|allergies|intolerant|intolerance|sensitive|sensitivity)\s+"
        rf"(?:to\s+)?(?:all\s+|any\s+)?(?P<food>{_LIST})(?=[.,;!?]| so | and I| because|$)",
        re.I,
    ),
]
_RX_ALLERGY2 = re.compile(
    r"\b(?P<food>[a-z]+(?: [a-z]+)?)[- ](?:allergy|allergies|intolerance|intolerant|free)\b", re.I
)
_RX_BAN_WORD = re.compile(
    r"\b(?:never|don'?t|do not|stop|avoid)\s+(?:ever\s+)?(?:use|using|say|saying|mention|"
    r"mentioning|write|writing)\s+(?:the (?:word|term)s?\s+)?" + _QUOTED,
    re.I,
)
_FOODISH = (
    set(FOOD_GROUPS)
    | set(MEATS)
    | set(SEAFOOD)
    | set(ANIMAL_PRODUCTS)
    | {
        "mushrooms",
        "mushroom",
        "onions",
        "onion",
        "garlic",
        "cilantro",
        "coriander",
        "olives",
        "sesame",
        "spicy food",
        "chili",
        "sugar",
        "tomatoes",
        "tomato",
        "coconut",
        "strawberries",
        "kiwi",
        "celery",
        "mustard",
        "alcohol",
        "coffee",
    }
)


def _case_constraints(t: str) -> list[Constraint]:
    m = _RX_LOWER.search(t)
    if m:
        return [Constraint(kind="lowercase", phrase=m.group(0))]
    m = _RX_UPPER.search(t)
    if m and not re.search(rf"\b{_NEG}\b[^.!?]{{0,25}}$", t[: m.start()], re.I):
        return [Constraint(kind="uppercase", phrase=m.group(0))]
    return []


def _length_constraints(t: str) -> list[Constraint]:
    for rx in _RX_MAX_WORDS:
        m = rx.search(t)
        if m:
            n = _num(m.group(2) if rx is _RX_MAX_WORDS[0] else m.group(1))
            rel = (m.groupdict().get("rel") or "").lower()
            strict = bool(re.search(r"under|fewer|less|below|shorter", rel))
            return [Constraint(kind="max_words", value=max(n - 1 if strict else n, 1), phrase=m[0])]
    m = _RX_OVER_WORDS.search(t)
    if m:
        return [Constraint(kind="max_words", value=_num(m.group(1)), phrase=m.group(0))]
    m = _RX_TWEET.search(t)
    if m and re.search(r"\b(?:keep|like|short|length|size|long|fit)\b", t, re.I):
        return [Constraint(kind="max_words", value=40, phrase=m.group(0))]
    for m in _RX_SHORT.finditer(t):
        if _RX_SHORT_NEG.search(t):
            break
        rest = t[m.end() :].lstrip()
        follows = re.match(r"(?:and \w+ )?(\w+)", rest)
        clause_end = not rest or rest[0] in ",.;:!?)"
        about_answers = clause_end or (
            follows is not None
            and re.fullmatch(_ANSWERS + r"|and|please|but|so|when|ones?", follows.group(1), re.I)
        )
        if about_answers:
            return [Constraint(kind="max_words", value=60, phrase=m.group(0))]
    return []


def _sentence_constraints(t: str) -> list[Constraint]:
    m = _RX_MAX_SENT.search(t)
    if not m:
        return []
    n = _num(m.group(1)) if m.group(1) else 1
    return [Constraint(kind="max_sentences", value=n, phrase=m.group(0))]


def _layout_constraints(t: str) -> list[Constraint]:
    numbered = _RX_NUMBERED.search(t)
    bullets = _RX_BULLETS.search(t)
    if not (numbered or bullets):
        return []
    c = _RX_COUNT.search(t)
    n = _num(c.group(1)) if c else 3
    if numbered:
        return [Constraint(kind="numbered", value=n, phrase=numbered.group(0))]
    assert bullets is not None
    return [Constraint(kind="bullets", value=n, phrase=bullets.group(0))]


def _title_constraints(t: str) -> list[Constraint]:
    m = _RX_TITLE.search(t)
    about_answers = "<<" in t or re.search(rf"\b{_ANSWERS}\b|\b(?:each|every|all)\b", t, re.I)
    if (
        m
        and about_answers
        and _RX_TITLE_ASK.search(t)
        and not re.search(r"\b(?:job|book|movie|film) title", t, re.I)
    ):
        return [Constraint(kind="title", phrase=m.group(0))]
    return []


def _phrase_constraints(t: str) -> list[Constraint]:
    out: list[Constraint] = []
    m = _RX_START.search(t)
    if m:
        value = m.group("p").strip()
        lead = t[max(0, m.start() - 30) : m.start()] + m.group(0)[: m.start("p") - m.start()]
        part = re.search(
            r"\b(?:lines?|bullets?|points?|items?|entr(?:y|ies)|p\.\s?s\b|postscripts?|titles?|"
            r"headings?|lists?|sentences?|paragraphs?|sections?|steps?)\b",
            lead,
            re.I,
        )
        if not part and re.search(r"\w", value) and not _RX_PS.fullmatch(value.strip(" .")):
            out.append(Constraint(kind="start_phrase", value=value, phrase=m.group(0)))
    m = _RX_END.search(t)
    if m is None:
        m = _RX_END_AS.search(t)
        if m is not None and m.group("p") is None:
            value = m.group("p2").strip()
            if not _RX_PS.match(value):
                out.append(Constraint(kind="end_phrase", value=value, phrase=m.group(0)))
            return out
    if m is None:
        m = _RX_END_UNQUOTED.search(t)
    if m and not _RX_PS.fullmatch(m.group("p").strip(" .")):
        phrase = m.group("p").strip()
        if not _RX_PS.match(phrase):
            out.append(Constraint(kind="end_phrase", value=phrase, phrase=m.group(0)))
    return out


def _postscript_constraints(t: str) -> list[Constraint]:
    m = _RX_PPS.search(t)
    if m:
        return [Constraint(kind="postscript", value="P.P.S", phrase=m.group(0))]
    m = _RX_PS.search(t)
    if m:
        return [Constraint(kind="postscript", value="P.S.", phrase=m.group(0))]
    return []


def _wrap_constraints(t: str) -> list[Constraint]:
    m = _RX_JSON.search(t)
    if m:
        return [Constraint(kind="json", phrase=m.group(0))]
    m = _RX_QUOTE.search(t)
    if m:
        return [Constraint(kind="quotation", phrase=m.group(0))]
    return []


_NATIVE = {
    "es": r"en espa(?:ñ|n)ol|en castellano",
    "fr": r"en fran(?:ç|c)ais",
    "de": r"auf deutsch",
    "it": r"in italiano",
    "pt": r"em portugu(?:ê|e)s",
    "nl": r"in het nederlands",
}
_RX_NATIVE = re.compile(
    r"\b(?:" + "|".join(f"(?P<{c}>{rx})" for c, rx in _NATIVE.items()) + r")\b", re.I
)


def _language_constraints(t: str) -> list[Constraint]:
    m = _RX_NATIVE.search(t)
    if m and m.lastgroup:  # asked in the language itself ("contesta en español")
        return [Constraint(kind="language", value=m.lastgroup, phrase=m.group(0))]
    for m in _RX_LANG.finditer(t):
        name = (m.group("lang") or m.group("lang2")).lower()
        if _RX_LANG_ASK.search(t) and not _RX_LANG_NOT.search(t):
            return [Constraint(kind="language", value=LANGUAGES[name], phrase=m.group(0))]
    return []


def _food_words(food: str) -> list[str]:
    f = food.strip().lower()
    f = re.sub(r"^(?:any|all|the|some|eating)\s+", "", f)
    if f in FOOD_GROUPS:
        return list(FOOD_GROUPS[f])
    if f.endswith("s") and f[:-1] in FOOD_GROUPS:
        return list(FOOD_GROUPS[f[:-1]])
    if f in _FOODISH or f.rstrip("s") in _FOODISH:
        base = f[:-1] if f.endswith("s") and f[:-1] in _FOODISH else f
        return sorted({base, f})
    words = f.split()
    if len(words) > 1:  # "severe peanut", "any other shellfish", "fresh salmon"
        for k in (2, 1):
            tail = " ".join(words[-k:])
            if tail != f:
                found = _food_words(tail)
                if found:
                    return found
    return []


def _avoid_constraints(t: str) -> list[Constraint]:
    words: list[str] = []
    phrases: list[str] = []
    for m in _RX_VEG.finditer(t):
        diet = m.group("diet").lower()
        negated = (
            bool(m.group("neg"))
            or bool(_RX_DIET_CHANGE.search(t[m.end() : m.end() + 30]))
            or bool(
                _RX_DIET_MAYBE.search(
                    re.split(r"[.,;:!?]|\band\b|\bbut\b", t[: m.start()])[-1][-40:]
                )
            )
        )
        if negated:
            continue
        phrases.append(m.group(0).strip())
        if diet in ("kosher", "halal"):
            words += FOOD_GROUPS["pork"] + (FOOD_GROUPS["shellfish"] if diet == "kosher" else [])
        elif diet.startswith("pesc"):
            words += MEATS
        elif diet == "vegetarian":
            words += MEATS + SEAFOOD
        else:
            words += MEATS + SEAFOOD + ANIMAL_PRODUCTS
    for rx in (_RX_ALLERGY, _RX_ALLERGY2):
        for m in rx.finditer(t):
            food = m.group("food")
            if (
                rx is _RX_ALLERGY
                and m.group(0).lower().startswith("no ")
                and not re.search(
                    r"\b(?:eat|food|recipe|meal|cook|dish|diet|allerg|ideas|suggestions)", t, re.I
                )
            ):
                continue
            found = []
            for part in re.split(r"\s*(?:,|\band\b|\bor\b)\s*", food):
                found += _food_words(part)
            if found:
                words += found
                phrases.append(m.group(0).strip())
    for rx in _RX_AVOID_FOOD:
        for m in rx.finditer(t):
            found = []
            for part in re.split(r"\s*(?:,|\band\b|\bor\b)\s*", m.group("food")):
                found += _food_words(part)
            if found:
                words += found
                phrases.append(m.group(0).strip())
    for m in _RX_BAN_WORD.finditer(t):
        words.append(m.group("p").strip().lower())
        phrases.append(m.group(0))
    if not words:
        return []
    return [
        Constraint(kind="avoid_words", value=sorted(set(words)), phrase="; ".join(phrases)[:200])
    ]


_COMPILERS = (
    _case_constraints,
    _length_constraints,
    _sentence_constraints,
    _layout_constraints,
    _title_constraints,
    _phrase_constraints,
    _postscript_constraints,
    _wrap_constraints,
    _language_constraints,
    _avoid_constraints,
)


def compile_text(text: str) -> list[Constraint]:
    """The constraints a preference's text asks for (``[]`` when none is checkable).

    Answer-style constraints are read from the whole text; a sentence's "no commas" needs a
    negation or a dislike near "comma". Food constraints come from diets ("I'm vegetarian")
    and stated allergies or foods the user does not eat.
    """
    t = " ".join(str(text).split())
    if not t:
        return []
    out: list[Constraint] = []
    if _RX_COMMA.search(t) and _RX_COMMA_NEG.search(t):
        out.append(Constraint(kind="no_commas", phrase=_RX_COMMA.search(t).group(0)))  # type: ignore[union-attr]
    for fn in _COMPILERS:
        out.extend(fn(t))
    if any(c.kind in ("bullets", "numbered") for c in out):
        out = [c for c in out if c.kind != "max_sentences"]
    return out


STYLE_KINDS = frozenset(k for k in KINDS if k != "avoid_words")
"""Constraints on how an answer is written (not on what it may contain)."""

_RX_STANDING = re.compile(
    r"\b(?:always|from now on|going forward|in (?:the )?future|from here on|henceforth|"
    r"every (?:time|answer|reply|response|message)|each (?:answer|reply|response|time)|"
    r"all (?:of )?(?:my|your|the) (?:answers|replies|responses|messages)|whenever you|"
    r"(?:my|your) (?:answers|replies|responses|messages)|any (?:answer|reply|response)|"
    r"i(?:'d| would)? (?:really |much |strongly |always )?"
    r"(?:prefer|like|love|want|need|appreciate)|"
    r"i (?:hate|dislike|can'?t stand|find|enjoy|read|am|'m)|i'm|"
    r"(?:please )?(?:never|stop|no more|don'?t ever|do not ever)|"
    r"when(?:ever)? (?:you )?(?:answer|reply|respond|write)|remember|make sure|"
    r"(?:answer|reply|respond|write|talk)(?:ing)?(?: back)?(?: to)? me|respond|keep it|"
    r"(?:your|each|every|any) (?:entire |whole |full )?(?:answer|reply|response|message)s?|"
    r"(?:answers|replies|responses)|(?:everything|anything|all) you (?:tell|say|write|send|give)|"
    r"to me|with me|from you|write back|i(?:'d| would) (?:much )?rather|from here|please,? ever|"
    r"(?:just )?my style|my (?:parser|app|script|program|code|tool|screen|phone|eyes|reader)|"
    r"(?:easier|easiest|harder|hard) for me)\b",
    re.I,
)


def is_standing(text: str) -> bool:
    """Whether ``text`` states how answers should be in general ("from now on", "I prefer",
    "my answers", "never ..."), not a one-off task ("rewrite this in French")."""
    return bool(_RX_STANDING.search(text) or _RX_NATIVE.search(text))


def answer_style(text: str) -> list[Constraint]:
    """The answer-style constraints of a standing statement, else ``[]``: what extraction
    keeps as a how-to-answer preference."""
    if not is_standing(text):
        return []
    return [c for c in compile_text(text) if c.kind in STYLE_KINDS]


# --------------------------------------------------------------------------------------------
# sets of constraints: one per slot
# --------------------------------------------------------------------------------------------


@dataclass
class ConstraintSet:
    """The constraints that apply to a reply: one per slot, the newest wins; words to avoid
    from every preference. Build with :meth:`from_lists` (oldest first)."""

    items: list[Constraint] = field(default_factory=list)

    @classmethod
    def from_lists(cls, lists: Iterable[Sequence[Constraint]]) -> ConstraintSet:
        by_slot: dict[str, Constraint] = {}
        avoid: dict[str, None] = {}
        sources: list[str] = []
        phrases: list[str] = []
        for group in lists:  # oldest first: later ones replace earlier ones in their slot
            for c in group:
                if c.kind == "avoid_words":
                    avoid.update(dict.fromkeys(c.value or []))  # type: ignore[arg-type]
                    if c.source_id:
                        sources.append(c.source_id)
                    phrases.append(c.phrase)
                else:
                    by_slot[c.slot] = c
        items = list(by_slot.values())
        if "wrap" in by_slot and by_slot["wrap"].kind == "json":
            items = [c for c in items if c.slot not in ("layout", "title")]
        if avoid:
            items.append(
                Constraint(
                    kind="avoid_words",
                    value=list(avoid),
                    phrase="; ".join(p for p in phrases if p)[:200],
                    source_id=",".join(dict.fromkeys(sources)) or None,
                )
            )
        return cls(items)

    def __bool__(self) -> bool:
        return bool(self.items)

    def __iter__(self) -> Any:
        return iter(self.items)

    def get(self, kind: Kind) -> Constraint | None:
        return next((c for c in self.items if c.kind == kind), None)

    def describe(self) -> list[str]:
        return [describe(c) for c in self.items]


def describe(c: Constraint) -> str:
    """What ``c`` asks, in one line written by the system (for the prompt and ``/why``)."""
    v = c.value
    match c.kind:
        case "lowercase":
            return "Write the whole answer in lowercase letters only."
        case "uppercase":
            return "Write the whole answer in CAPITAL LETTERS only."
        case "no_commas":
            return "Do not use any commas."
        case "max_words":
            return f"Keep the answer under {int(v) + 1} words."  # type: ignore[arg-type]
        case "max_sentences":
            return f"Answer in at most {v} sentence{'s' if v != 1 else ''}."
        case "bullets":
            return f"Answer as exactly {v} bullet points, each line starting with '* '."
        case "numbered":
            return f"Answer as a numbered list of exactly {v} items."
        case "title":
            return "Start with a title in double angular brackets, like <<Title>>."
        case "start_phrase":
            return f'Start the answer with "{v}".'
        case "end_phrase":
            return f'End the answer with the exact phrase "{v}".'
        case "postscript":
            return f"Add a postscript at the end starting with {v}"
        case "json":
            return "Answer in valid JSON."
        case "quotation":
            return "Wrap the whole answer in double quotation marks."
        case "language":
            return f"Answer in {LANGUAGE_NAMES.get(str(v), str(v))} only."
        case "avoid_words":
            words = list(v or [])  # type: ignore[arg-type]
            shown = ", ".join(words[:8]) + (", ..." if len(words) > 8 else "")
            return f"Never mention or suggest: {shown}."
    raise ValidationError(f"unknown constraint kind {c.kind!r}")  # pragma: no cover


# --------------------------------------------------------------------------------------------
# verification
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# repair: deterministic rewrites, in an order that keeps earlier repairs valid
# --------------------------------------------------------------------------------------------

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
        parts = [p for p in re.split(r"(?<=[.!?])\s+", line) if not rx.search(p)]
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


# --------------------------------------------------------------------------------------------
# what a decoding loop can enforce
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DecodingForm:
    """Token-level limits a local decoding loop applies: no token may contain a character of
    ``banned_chars`` or spell a word of ``banned_words`` (a whole token, case and leading
    space ignored); ``max_new_tokens`` caps the reply (``None``: unchanged)."""

    banned_chars: str = ""
    banned_words: tuple[str, ...] = ()
    max_new_tokens: int | None = None

    def __bool__(self) -> bool:
        return bool(self.banned_chars or self.banned_words or self.max_new_tokens)


def decoding_form(constraints: Iterable[Constraint]) -> DecodingForm:
    """The part of ``constraints`` a decoding loop enforces (the rest is verified and
    repaired after): commas, words to avoid, and a token budget for word limits (about two
    tokens a word, so that a reply is never cut before its sentence ends)."""
    chars, words, budget = "", [], None
    for c in constraints:
        if c.kind == "no_commas":
            chars += ","
        elif c.kind == "avoid_words":
            for w in c.value or []:  # type: ignore[union-attr]
                words += [w, w + "s"] if not w.endswith("s") else [w]
        elif c.kind == "max_words":
            budget = int(2 * int(c.value) + 16)  # type: ignore[arg-type]
        elif c.kind == "max_sentences":
            budget = min(budget or 10**6, 48 * int(c.value) + 16)  # type: ignore[arg-type]
    return DecodingForm(chars, tuple(dict.fromkeys(words)), budget)


def to_meta(constraints: Sequence[Constraint], *, text: str) -> dict[str, Any]:
    """How compiled constraints are kept in a preference's ``meta["constraints"]``: the items,
    and the text they were compiled from (a new text is compiled again, an edit is kept)."""
    return {
        "compiled_from": text,
        "items": [c.model_dump(mode="json", exclude={"source_id"}) for c in constraints],
    }


def from_meta(meta: dict[str, Any] | None, *, text: str) -> list[Constraint] | None:
    """The constraints stored in ``meta`` for ``text``; ``None`` when there are none for this
    text (never compiled, or compiled from an older text and not edited by the user)."""
    entry = (meta or {}).get("constraints")
    if not isinstance(entry, dict):
        return None
    if entry.get("compiled_from") != text and not entry.get("edited"):
        return None
    try:
        return [Constraint.model_validate(x) for x in entry.get("items", [])]
    except ValueError:
        return None
