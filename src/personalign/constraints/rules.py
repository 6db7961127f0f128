"""The compiler: :func:`compile_text` reads a preference's text and returns the typed
constraints it asks for; :func:`is_standing` and :func:`answer_style` tell a standing wish
about answer style from a one-off task.

Rules only, no model: phrasings are matched by patterns written for the meaning (a length
limit, a case, a closing phrase), and a constraint keeps the words it was compiled from
(``phrase``).
"""

from __future__ import annotations

import re

from personalign.constraints.core import LANGUAGES, STYLE_KINDS, Constraint
from personalign.constraints.food import ANIMAL_PRODUCTS, FOOD_GROUPS, MEATS, SEAFOOD, food_words

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
    r"avoid eating|stay away from|steer clear of|keep away from|no|nothing)\s+"
    r"(?:any |all |eating )?"
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
                and re.match(r"no(?:thing)? ", m.group(0).lower())
                and not re.search(
                    r"\b(?:eat|food|recipe|meal|cook|dish|diet|allerg|ideas|suggestions)", t, re.I
                )
            ):
                continue
            found = []
            for part in re.split(r"\s*(?:,|\band\b|\bor\b)\s*", food):
                found += food_words(part)
            if found:
                words += found
                phrases.append(m.group(0).strip())
    for rx in _RX_AVOID_FOOD:
        for m in rx.finditer(t):
            found = []
            for part in re.split(r"\s*(?:,|\band\b|\bor\b)\s*", m.group("food")):
                found += food_words(part)
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
