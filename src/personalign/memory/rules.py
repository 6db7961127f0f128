"""The rules preference extraction uses, written by hand (no model): text helpers and the
lexical cue features the sentence classifier reads (shared by training and inference), the
sentences that state an answer style or a food rule, changes of mind, and choices among the
options an assistant turn offered (:func:`offered_options`, :func:`pick_option`).

:mod:`personalign.memory.extract` re-exports every name here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from personalign.constraints import answer_style, compile_text, is_standing
from personalign.text import SENTENCE_OPENERS
from personalign.text import split_sentences as text_split_sentences

_WORD_RE = re.compile(r"[a-z0-9']+")
_LEAD_RE = re.compile(
    r"^(?:(?:oh|ah|well|also|and|but|so|yes|yeah|ok|okay|thanks|thank you|great|hi|hello|hey)"
    r"[,!.]?\s+)+",
    re.I,
)

CUES: dict[str, re.Pattern[str]] = {
    "first_person": re.compile(r"\b(i|i'm|i've|i'd|i'll|my|me|myself|we|our)\b", re.I),
    "pref_verb": re.compile(
        r"\b(prefer\w*|love|loves|like|likes|enjoy\w*|hate|dislike\w*|avoid\w*|can't stand|"
        r"fan of|favou?rite|into|passionate|keen on|rather|appeal\w*|fond of|adore)\b",
        re.I,
    ),
    "constraint": re.compile(
        r"\b(allerg\w*|intoleran\w*|vegetarian|vegan|diet\w*|gluten|kosher|halal|sensitiv\w*|"
        r"budget|afford\w*|disabilit\w*|condition|strict\w*|can't|cannot|must|only|never|always|"
        r"usually|tend to|typically|generally)\b",
        re.I,
    ),
    "negation": re.compile(r"\b(not|don't|doesn't|no|never|avoid\w*|without|isn't|aren't)\b", re.I),
    "change": re.compile(
        r"\b(stopped|no longer|not anymore|any ?more|switched|these days|now prefer|"
        r"changed my mind|used to|actually,? (?:now|i)|from now on|instead)\b",
        re.I,
    ),
    "question": re.compile(r"\?\s*$"),
    "request": re.compile(
        r"^\s*(can|could|would|will|please|write|give|tell|explain|list|describe|what|how|why|"
        r"which|who|when|where|is|are|do|does|did|create|generate|make|help|summari[sz]e|"
        r"translate|calculate|compose|rewrite|suggest|recommend|provide)\b",
        re.I,
    ),
}
CUE_NAMES: tuple[str, ...] = (*CUES, "length")

_CHANGE_RE = re.compile(
    r"\b(i(?:'ve| have)? stopped|no longer|any ?more|i(?:'ve| have)? switched|"
    r"i(?:'ve| have)? changed my mind|i used to|actually,? (?:now )?i(?:'d)? prefer|"
    r"these days|nowadays|from now on|i(?:'ve| have)? (?:given up|quit|cut out|cancell?ed|sold)|"
    r"i(?:'ve| have) (?:gone|become|started)|"
    r"(?:i|i'm|i've|my)\b[^.?!]*\bnow\b|\bnow,? (?:i|my)\b)",
    re.I,
)
SELF_PREF_RE = re.compile(
    r"\b(i|i'm|i am|i'd|i've|my|we)\b[^?]*\b(prefer\w*|love|like|enjoy|hate|dislike|"
    r"vegetarian|vegan|allergic|intolerant|avoid|fan of|favou?rite|can't stand|don't eat)\b",
    re.I,
)
"""A first-person sentence with a preference word anywhere ("I'm a vegetarian, and ...")."""
_STATES_PREF_RE = re.compile(
    r"^(?:(?:actually|also|and|but|well|oh|so|honestly),? )*"
    r"(?:(?:i|we)(?: really| also| generally| usually| always| absolutely| do| much| totally|"
    r" mostly| only)? (?:prefer|love|like|enjoy|hate|dislike|avoid|can't stand|cannot stand|"
    r"don't like|do not like|don't eat|never eat|eat|drink|follow|keep)\b"
    r"|i(?:'m| am) (?:a |an |really |also |very |strictly )?(?:vegetarian|vegan|allergic|"
    r"intolerant|lactose|gluten|pescatarian|big fan|huge fan|fan|not a fan|into)\b"
    r"|my (?:favou?rite|preferred)\b"
    r"|(?:i|we) (?:really |absolutely |strongly )?(?:detest|loathe|adore|learn best|"
    r"steer clear|exclusively|only (?:eat|use|buy|wear|watch|read|drink|travel))\b"
    r"|i(?:'m| am) (?:strongly |very )?averse\b"
    r"|(?:i|we) (?:have|get) (?:a |an )?(?:very |extremely |really |strong |deep |severe |"
    r"real )*(?:aversion|preference|fear|phobia|allerg\w*|intolerance|anxious|uncomfortable|"
    r"motion sickness)\b)",
    re.I,
)
_REACTION_RE = re.compile(
    r"^(?:\w+,? )*(?:i|we)(?: really| also)? (?:like|love|enjoy|prefer|hate) (?:that|this|it|"
    r"these|those|the idea|your|how|what|the way|the (?:first|second|third|last)|option)\b",
    re.I,
)


_NOT_USER_RE = re.compile(
    r"^(?:(?:but|and|also|so|well),? )*(?:"
    r"(?:i've|i have|i) (?:heard|read|seen)|(?:they|people|some people|experts) (?:say|said)|"
    r"(?:one of )?my (?:friends?|wife|husband|partner|son|daughter|kids?|children|mom|mother|"
    r"dad|father|parents?|brother|sister|boss|colleagues?|guests?|students?|clients?|"
    r"customers?|team|family|roommates?)\b|one of (?:my|our|the) )",
    re.I,
)


def not_about_user(sentence: str) -> bool:
    """Whether a sentence reports hearsay ("I've heard that ...") or someone else's trait
    ("My guest is lactose intolerant"): not a preference of the user."""
    return bool(_NOT_USER_RE.search(sentence.strip()))


def states_preference(sentence: str) -> bool:
    """Whether a sentence *opens* with a first-person preference ("I prefer ...", "I'm vegan",
    "My favourite ..."), excluding reactions ("I love that idea") and questions."""
    s = sentence.strip()
    return bool(_STATES_PREF_RE.search(s)) and not _REACTION_RE.search(s) and not s.endswith("?")


CHOICE_RE = re.compile(
    r"\b(i'?ll (?:go with|take|choose|pick|try|opt for|get|have|go for)|"
    r"i(?:'d| would) (?:go with|choose|pick|prefer|like|opt for)|i think i'?ll|"
    r"i(?:'m| am) going (?:to go )?with|let'?s (?:go with|do)|"
    r"sounds? (?:more |most |really |very )?(?:perfect|great|good|ideal|best|appealing|"
    r"intriguing|interesting|enjoyable|like the best|right)|"
    r"(?:is|are|seems?|would be|would work) (?:the )?(?:perfect|ideal|best|better|more|most)\b|"
    r"(?:work|fit)s? best|go for|my choice|i choose|i pick|option \d|"
    r"(?:first|second|third|fourth|last|1st|2nd|3rd|4th) (?:one|option|choice|suggestion)|"
    r"appeals? (?:to me|more|most))",
    re.I,
)
_ORDINALS = {
    "first": 0,
    "1st": 0,
    "second": 1,
    "2nd": 1,
    "third": 2,
    "3rd": 2,
    "fourth": 3,
    "4th": 3,
}
_LIST_ITEM_RE = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+(.+?)\s*$", re.M)
_STOP_WORDS = (
    "a an the of to in on and or is are was were be been do does did what when where who which "
    "how why would could should has have had i you he she it they we her his their its my your "
    "me him them this that these those for with at by from as about into can will not no s t "
    "some any there here just also really very more most other option options one"
)
_STOP = frozenset(_STOP_WORDS.split())


def split_sentences(text: str) -> list[str]:
    """Split ``text`` into sentences (on ., ! or ? followed by a capital, and on newlines):
    :func:`personalign.text.split_sentences` with ``opens=SENTENCE_OPENERS``."""
    return text_split_sentences(text, opens=SENTENCE_OPENERS)


def content_words(text: str) -> set[str]:
    """Lower-cased words of ``text`` minus stop words (for overlap measures)."""
    return {w for w in _WORD_RE.findall(text.lower()) if w not in _STOP and len(w) > 1}


def normalize_statement(sentence: str) -> str:
    """Tidy one preference sentence: collapse spaces, drop a leading interjection."""
    s = " ".join(sentence.split())
    s = _LEAD_RE.sub("", s).strip()
    return s[:1].upper() + s[1:] if s else s


def cue_features(sentences: Sequence[str]) -> np.ndarray:
    """``(len(sentences), len(CUE_NAMES))`` float32: which cue each sentence shows, 0 or 1,
    and its length as ``min(chars / 200, 1)``."""
    out = np.zeros((len(sentences), len(CUE_NAMES)), dtype=np.float32)
    for i, s in enumerate(sentences):
        for j, pat in enumerate(CUES.values()):
            out[i, j] = 1.0 if pat.search(s) else 0.0
        out[i, -1] = min(len(s) / 200.0, 1.0)
    return out


def answer_style_sentences(sentences: Sequence[str]) -> list[int]:
    """Indices of the sentences that state how the user wants answers written (a standing
    wish that compiles to answer-style constraints, :func:`personalign.constraints.
    answer_style`). A sentence that compiles only with the one before ("Commas drive me
    crazy. Please never use them.") brings that one along. Questions are not wishes."""
    keep: list[int] = []
    for i, s in enumerate(sentences):
        if (
            s.rstrip().endswith("?")
            and not re.search(r"(?i)\b(can|could|would|will) (?:you|your)\b", s)
            and not re.search(r"(?i)\b(?:ok|okay|alright|right|please|yeah|deal)\?$", s.rstrip())
        ):
            continue
        if not_about_user(s):
            continue
        if answer_style(s):
            keep.append(i)
        elif i > 0 and is_standing(s) and answer_style(f"{sentences[i - 1]} {s}"):
            keep += [i - 1, i]
    return sorted(set(keep))


def food_rule_sentences(sentences: Sequence[str]) -> list[int]:
    """Indices of the sentences that state what the user does not eat (a diet, an allergy,
    foods to keep out: they compile to words to avoid). Questions and other people's diets
    are not the user's rules."""
    return [
        i
        for i, s in enumerate(sentences)
        if not s.rstrip().endswith("?")
        and not not_about_user(s)
        and re.search(r"(?i)\b(?:i|i'm|i've|i'd|my|me|we|our|us)\b", s)
        and any(c.kind == "avoid_words" for c in compile_text(s))
    ]


def signals_change(text: str) -> bool:
    """Whether ``text`` says a preference changed ("I stopped", "no longer", ...)."""
    return bool(_CHANGE_RE.search(text))


# choices among offered options


def offered_options(assistant_text: str) -> list[str]:
    """The options an assistant turn offers: list items, else ``A, B, or C`` clauses."""
    items = [m.group(1) for m in _LIST_ITEM_RE.finditer(assistant_text)]
    if len(items) >= 2:
        return items
    inline = re.split(r"(?:^|\s)\(?\d[.)]\s+", assistant_text)
    if len(inline) >= 3:  # "1. A 2. B 3. C" on one line: text before the first number dropped
        return [p.strip() for p in inline[1:] if p.strip()]
    parts: list[str] = []
    for sent in split_sentences(assistant_text):
        if not re.search(r"\bor\b", sent, re.I) or sent.rstrip().endswith("?"):
            continue  # a clarifying question ("Do you mean A or B?") offers no options
        pieces = re.split(r",\s*(?:or\s+|and\s+)?|;\s*|\s+or\s+", sent)
        pieces = [p.strip(" .") for p in pieces if len(content_words(p)) >= 2]
        if len(pieces) >= 2:
            parts.extend(pieces)
    return parts if len(parts) >= 2 else []


def pick_option(user_text: str, options: Sequence[str]) -> tuple[int, str] | None:
    """Which option the user picked: an ordinal ("the second one", "option 3"), else the option
    sharing the most (at least 2) content words with the user's first sentence. ``None`` when
    unclear."""
    low = user_text.lower()
    m = re.search(r"\boption (\d)\b", low)
    if m and 1 <= int(m.group(1)) <= len(options):
        return int(m.group(1)) - 1, "ordinal"
    for word, idx in _ORDINALS.items():
        pattern = rf"\b(?:the )?{word} (?:one|option|choice|suggestion)\b"
        if idx < len(options) and re.search(pattern, low):
            return idx, "ordinal"
    if re.search(r"\b(?:the )?last (?:one|option|choice)\b", low):
        return len(options) - 1, "ordinal"
    if not options:
        return None
    first = split_sentences(user_text)[:1]
    words = content_words(first[0]) if first else set()
    scores = [len(words & content_words(o)) for o in options]
    best = max(range(len(options)), key=lambda i: scores[i])
    if scores[best] < 2 or scores.count(scores[best]) > 1:
        return None
    return best, "overlap"
