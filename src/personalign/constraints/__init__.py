"""Checkable preferences as typed constraints: compiled from text, verified, enforced, repaired.

A user's preference has two lives (see ``DESIGN.md``): as text it is data, quoted and never
obeyed; as meaning it is compiled into what the system itself does. This package is the
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

This package sits at the bottom of the layering (beside ``types``): memory compiles at write
time, safety asks whether a text asks only for answer style, generation enforces. Its
modules import each other one way: :mod:`.core` (the types, :class:`ConstraintSet`,
:func:`describe`, ``meta``) <- :mod:`.food` <- :mod:`.rules` (:func:`compile_text`);
:mod:`.core` <- :mod:`.checks` (:func:`verify`) <- :mod:`.repairs` (:func:`repair`);
:mod:`.core` <- :mod:`.decoding` (:func:`decoding_form`). Every name is re-exported here:
import from ``personalign.constraints``.
"""

from __future__ import annotations

from personalign.constraints.checks import Check, check, guess_language, passes, verify, word_count
from personalign.constraints.core import (
    KINDS,
    LANGUAGE_NAMES,
    LANGUAGES,
    SLOTS,
    STYLE_KINDS,
    Constraint,
    ConstraintSet,
    Kind,
    describe,
    from_meta,
    to_meta,
)
from personalign.constraints.decoding import DecodingForm, decoding_form
from personalign.constraints.food import ANIMAL_PRODUCTS, FOOD_GROUPS, MEATS, SEAFOOD
from personalign.constraints.repairs import REPAIRABLE, repair, title_for
from personalign.constraints.rules import answer_style, compile_text, is_standing

__all__ = [
    "ANIMAL_PRODUCTS",
    "FOOD_GROUPS",
    "KINDS",
    "LANGUAGES",
    "LANGUAGE_NAMES",
    "MEATS",
    "REPAIRABLE",
    "SEAFOOD",
    "SLOTS",
    "STYLE_KINDS",
    "Check",
    "Constraint",
    "ConstraintSet",
    "DecodingForm",
    "Kind",
    "answer_style",
    "check",
    "compile_text",
    "decoding_form",
    "describe",
    "from_meta",
    "guess_language",
    "is_standing",
    "passes",
    "repair",
    "title_for",
    "to_meta",
    "verify",
    "word_count",
]
