"""Verifiable preferences: does a checkable preference, stated once in chat, shape a later reply?

Each case is one fresh user. The user states one checkable preference ("from now on please
answer me in all lowercase letters", "keep your answers under 50 words", "I'm vegetarian")
once, at a random position among ``--filler`` unrelated turns (first user turns of
MT-Bench-101 dialogues under ``--data``, each followed by that dialogue's first bot reply; the
preference turn by a short acknowledgement). The conversation goes through the real
extractor and memory (``pz.memory.add_messages``). Then, in a new conversation, the user asks
an everyday question (a food question for the food-avoidance type), and every method answers
it from memory (``ingest=False``, greedy unless the method samples, ``--max-new-tokens``).

The judge is lm-eval's IFEval code only (``lm_eval.tasks.ifeval.instructions_registry``):
each phrasing names the IFEval instruction id and kwargs that check a reply (lowercase, all
capitals, no commas, fewer than N words, exactly N markdown bullets, a closing phrase, a
<<title>>, a response language, forbidden food words, a P.S., JSON, wrapped in double quotes).
Nothing personalign uses (extractor, reward models, selectors, constraint checks) takes part
in judging, so a method cannot score by agreeing with its own checker.

Figures (per method ``m`` in ``--methods``; ``default`` is ``PersonalizeOptions()``'s method):

* ``stored_rate``: an active (non-episode) preference of the user cites the preference turn in
  ``source_turn_ids``.
* ``surfaced_<m>``: the stated preference reached the reply: a used (non-episode) preference
  in ``reply.exchange.preferences``, or a compiled constraint in
  ``reply.exchange.meta["constraints"]``, cites the preference turn. ``used_rate`` is
  ``surfaced_default``.
* ``compliance_<m>``: the IFEval checker passes. IFEval passes some empty or broken replies
  (langdetect errors count as a pass; "no commas" and "fewer than N words" pass an empty
  reply), so ``compliance_strict_<m>`` also requires a non-degenerate reply.
  ``compliance_default_<type>``: the default method per preference type.
* ``compliance_told``: control, method ``plain`` with the preference sentence written in the
  same message before the question (what the model does when told directly).
* ``degenerate_<m>``: fewer than 5 words, or mostly repeated (more than half of the word
  3-grams are repeats of another, or one 3-gram covers more than half).
* ``relevance_<m>``: share of replies with at least one content word of the question
  (case-insensitive, stop words removed, a plural ``s`` dropped, 5-character prefix match:
  "rainbows" matches "rainbow"), over the cases whose preference keeps the reply in English
  (a compliant French answer has no English question word).
* ``latency_ratio_<m>``: mean ``exchange.latency_ms`` over plain's (needs ``plain``), all
  methods taking turns on each case.

Splits: ``benchmarks/data/verifiable_preferences_dev.json`` (tune on these phrasings and
questions) and ``..._heldout.json`` (different phrasings and questions for every type: report
these, never tune on them, do not read the file while tuning). ``--split both`` prefixes every
figure with the split name.

Targets (held-out split): stored_rate and used_rate >= 0.95; compliance_default >= 0.90 and
>= 3x compliance_plain; degenerate_default <= degenerate_plain; relevance_default >= 0.95x
relevance_plain; latency_ratio_default <= 1.5.

    OMP_NUM_THREADS=1 python benchmarks/verifiable_preferences.py [--data DIR] [--json]
        [--split dev|heldout|both] [--cases N] [--methods plain,prompt,default] [--filler N]
        [--max-new-tokens N] [--seed N] [--home DIR] [--show]

On a shared CPU set ``OMP_NUM_THREADS=1`` (see benchmarks/decoding.py: batched steps of the
sampling methods ran 10x slower with 2 threads on busy cores, which falsifies latency ratios).
Needs the ``eval`` extra (``pip install -e '.[eval]'``: lm-eval with its ifeval dependencies).
"""

from __future__ import annotations

import json
import os
import random
import re
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from personalign.errors import ConfigError
from personalign.eval.bench import emit, parser

DATA_DIR = Path(__file__).resolve().parent / "data"
SPLITS = ("dev", "heldout")
METHODS = ("plain", "prompt", "best_of_n", "contrastive", "mod", "reward_guided", "default")
TOLD = "told"
"""The control: plain, with the preference written into the question's message."""

NEEDS_NLTK_DATA = frozenset(
    {"length_constraints:number_sentences", "change_case:capital_word_frequency"}
)
"""IFEval checkers that load NLTK's punkt data (downloaded at run time; not available
offline): refused as data, so a case never silently passes or fails on a missing download."""

NON_ENGLISH_INSTRUCTIONS = frozenset({"language:response_language"})
"""Instructions whose compliant reply is not in English: left out of ``relevance_*``."""

ACK = "Okay, noted."
"""The assistant's turn after the preference turn (the chat keeps alternating roles)."""


# -- data ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Phrasing:
    """One way a user states a checkable preference, and the IFEval check that judges it."""

    id: str
    type: str
    text: str
    instruction_id: str
    kwargs: Mapping[str, Any]
    questions: str
    """The question pool the case's question comes from (``general`` or ``food``)."""


@dataclass(frozen=True)
class Split:
    name: str
    path: Path
    phrasings: list[Phrasing]
    questions: dict[str, list[str]]

    @property
    def types(self) -> list[str]:
        """Preference types in file order."""
        return list(dict.fromkeys(p.type for p in self.phrasings))


def data_path(split: str, folder: Path = DATA_DIR) -> Path:
    return folder / f"verifiable_preferences_{split}.json"


def load_split(split: str, folder: Path = DATA_DIR) -> Split:
    """The phrasings and questions of ``split``; :class:`ConfigError` naming the path when the
    file is missing, empty or malformed (never a perfect or zero score on no data)."""
    if split not in SPLITS:
        raise ConfigError(f"--split must be one of {(*SPLITS, 'both')}, got {split!r}")
    path = data_path(split, folder).resolve()
    if not path.is_file():
        raise ConfigError(f"missing benchmark data file {path}")
    try:
        doc = json.loads(path.read_text() or "null")
    except json.JSONDecodeError as e:
        raise ConfigError(f"benchmark data file {path} is not valid JSON: {e}") from e
    if not isinstance(doc, dict) or not doc.get("phrasings"):
        raise ConfigError(f"no phrasings in benchmark data file {path}")
    try:
        phrasings = [
            Phrasing(
                id=str(p["id"]),
                type=str(p["type"]),
                text=str(p["text"]),
                instruction_id=str(p["instruction_id"]),
                kwargs=dict(p.get("kwargs") or {}),
                questions=str(p.get("questions", "general")),
            )
            for p in doc["phrasings"]
        ]
        questions = {str(k): [str(q) for q in v] for k, v in doc["questions"].items()}
    except (KeyError, TypeError, AttributeError) as e:
        raise ConfigError(f"benchmark data file {path} is malformed: {e!r}") from e
    for p in phrasings:
        if not questions.get(p.questions):
            raise ConfigError(
                f"{path}: phrasing {p.id} needs the empty question pool {p.questions}"
            )
    return Split(split, path, phrasings, questions)


def filler_pairs(data_dir: Path) -> list[tuple[str, str]]:
    """(first user turn, first bot reply) of each MT-Bench-101 dialogue, unique by user turn.

    (``prefeval_tasks.mtbench_first_turns`` gives the user turns only; the filler needs the
    bot replies too.) :class:`ConfigError` naming the path when missing or empty.
    """
    path = (data_dir / "mt-bench-101" / "mtbench101.jsonl").resolve()
    if not path.is_file():
        raise ConfigError(
            f"missing filler data {path}: point --data at the shared data folder "
            "(../shared/data) holding mt-bench-101/"
        )
    seen: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            first = json.loads(line)["history"][0]
            user, bot = first["user"].strip(), first["bot"].strip()
            if user and bot:
                seen.setdefault(user, bot)
    if not seen:
        raise ConfigError(f"no dialogues in filler data {path}")
    return list(seen.items())


# -- the judge: lm-eval's IFEval checkers ------------------------------------------------------

_REGISTRY: dict[str, Any] | None = None


def instruction_registry() -> dict[str, Any]:
    """``INSTRUCTION_DICT`` of lm-eval's IFEval task, imported without network access.

    ``lm_eval.tasks.ifeval.instructions_util`` calls ``nltk.download("punkt_tab")`` at import
    when the data is missing and ``LOCAL_RANK`` is unset or ``"0"`` (read once, at import):
    ``LOCAL_RANK`` is set to ``"-1"`` for the import only, then restored. langdetect (the
    language and case checkers) is seeded so the verdicts are reproducible.
    """
    global _REGISTRY
    if _REGISTRY is None:
        saved = os.environ.get("LOCAL_RANK")
        os.environ["LOCAL_RANK"] = "-1"
        try:
            import langdetect
            from lm_eval.tasks.ifeval import instructions_registry as registry
        except ImportError as e:
            raise ConfigError(
                f"the IFEval judge needs lm-eval with its ifeval extras ({e}): "
                "pip install -e '.[eval]'"
            ) from e
        finally:
            if saved is None:
                os.environ.pop("LOCAL_RANK", None)
            else:
                os.environ["LOCAL_RANK"] = saved
        langdetect.DetectorFactory.seed = 0
        _REGISTRY = dict(registry.INSTRUCTION_DICT)
    return _REGISTRY


def build_checker(instruction_id: str, kwargs: Mapping[str, Any]) -> Any:
    """The IFEval instruction object for ``instruction_id``, built with ``kwargs``."""
    if instruction_id in NEEDS_NLTK_DATA:
        raise ConfigError(
            f"IFEval instruction {instruction_id!r} needs NLTK punkt data (a run-time download): "
            "not supported offline"
        )
    registry = instruction_registry()
    if instruction_id not in registry:
        raise ConfigError(f"unknown IFEval instruction id {instruction_id!r}")
    checker = registry[instruction_id](instruction_id)
    checker.build_description(**dict(kwargs))
    return checker


def complies(instruction_id: str, kwargs: Mapping[str, Any], response: str) -> bool:
    """Whether ``response`` follows the instruction, as IFEval's checker says."""
    return bool(build_checker(instruction_id, kwargs).check_following(response))


# -- text measures ---------------------------------------------------------------------------

_WORD = re.compile(r"\w+")
_STOP_TEXT = """
    a about above after again all also am an and any are as at be because been before being
    below best better between both but by can could did do does doing down during each few for
    from further get give good had has have having he her here hers him his how i idea if in
    into is it its itself just like make me more most my no nor not now of off on once only or
    other our out over own same should so some such suggest than that the their them then
    there these they thing things this those through tip tips to too under until up very was
    way ways we were what when where which while who whom why will with would you your"""
STOP_WORDS = frozenset(_STOP_TEXT.split())


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def degenerate(text: str) -> bool:
    """No answer: fewer than 5 words, or mostly repeated word 3-grams (more than half of them
    repeat an earlier one, or the most frequent one covers more than half)."""
    ws = words(text)
    if len(ws) < 5:
        return True
    grams = list(zip(ws, ws[1:], ws[2:], strict=False))
    top = Counter(grams).most_common(1)[0][1]
    repeated = 1.0 - len(set(grams)) / len(grams)
    return top / len(grams) > 0.5 or repeated > 0.5


def _stem(word: str) -> str:
    return word[:-1] if len(word) > 3 and word.endswith("s") else word


def content_words(question: str) -> list[str]:
    """The question's words minus stop words and words under 3 letters."""
    return [w for w in words(question) if len(w) >= 3 and w not in STOP_WORDS]


def relevant(question: str, reply: str) -> bool:
    """The reply has a word starting with the first 5 letters of a content word of the
    question (plural ``s`` dropped on both sides)."""
    keys = {_stem(c)[:5] for c in content_words(question)}
    return any(_stem(w).startswith(k) for w in words(reply) for k in keys)


# -- cases -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    phrasing: Phrasing
    question: str
    seed: int


def select_cases(split: Split, n: int | None, seed: int) -> list[Case]:
    """``n`` cases (default: every phrasing once), round-robin over the types (each type's
    phrasings in a seeded order), so the first ``len(types)`` cases cover every type; past
    the phrasings, they repeat with other questions. Questions cycle through a seeded order
    of the phrasing's pool."""
    rng = random.Random(seed)
    by_type: dict[str, list[Phrasing]] = defaultdict(list)
    for p in split.phrasings:
        by_type[p.type].append(p)
    for group in by_type.values():
        rng.shuffle(group)
    types = split.types
    pools = {k: rng.sample(v, len(v)) for k, v in split.questions.items()}
    used: Counter[str] = Counter()
    total = len(split.phrasings) if n is None else n
    cases: list[Case] = []
    r = 0
    while len(cases) < total:
        for t in types:
            if len(cases) >= total:
                break
            group = by_type[t]
            if r >= len(group) and total <= len(split.phrasings):
                continue
            p = group[r % len(group)]
            pool = pools[p.questions]
            q = pool[used[p.questions] % len(pool)]
            used[p.questions] += 1
            i = len(cases)
            cases.append(Case(f"{split.name}{i:03d}", p, q, seed * 1000 + i))
        r += 1
    return cases


def conversation(
    case: Case, fillers: Sequence[tuple[str, str]], n_filler: int
) -> tuple[list[Any], str]:
    """``n_filler`` filler exchanges with the preference turn (and an acknowledgement) at a
    seeded random position, and the preference turn's id; every message has the id
    ``<case>:t<i>``."""
    from personalign.types import Message

    rng = random.Random(case.seed)
    picked = rng.sample(list(fillers), min(n_filler, len(fillers)))
    pos = rng.randint(0, len(picked))
    pairs = [*picked[:pos], (case.phrasing.text, ACK), *picked[pos:]]
    msgs = []
    for user, bot in pairs:
        msgs.append(Message(role="user", content=user, id=f"{case.id}:t{len(msgs)}"))
        msgs.append(Message(role="assistant", content=bot, id=f"{case.id}:t{len(msgs)}"))
    return msgs, f"{case.id}:t{2 * pos}"


def cites(turn_id: str, items: Sequence[Any]) -> bool:
    """Whether any item (object or dict) has ``turn_id`` in its ``source_turn_ids``."""
    for it in items or ():
        ids = it.get("source_turn_ids") if isinstance(it, dict) else it.source_turn_ids
        if turn_id in (ids or ()):
            return True
    return False


def surfaced(turn_id: str, reply: Any) -> bool:
    prefs = [p for p in reply.exchange.preferences if p.kind != "episode"]
    constraints = reply.exchange.meta.get("constraints") or []
    return cites(turn_id, prefs) or cites(turn_id, constraints)


@dataclass
class Outcome:
    case: Case
    stored: bool
    replies: dict[str, str] = field(default_factory=dict)
    surfaced: dict[str, bool] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def run_case(pz: Any, case: Case, fillers: Sequence[tuple[str, str]], args: Any) -> Outcome:
    from personalign.backends.models.base import GenerationOptions
    from personalign.pipeline import PersonalizeOptions

    t0 = time.perf_counter()
    uid = f"vp-{case.id}"
    messages, turn = conversation(case, fillers, args.filler)
    pz.memory.add_messages(messages, user=uid)
    records = pz.memory.list(user=uid, kinds=["explicit", "implicit"])
    out = Outcome(case, stored=cites(turn, records))
    gen = GenerationOptions(max_new_tokens=args.max_new_tokens, seed=case.seed)
    for m in args.methods:
        opts = (
            PersonalizeOptions(ingest=False, generation=gen)
            if m == "default"
            else PersonalizeOptions(method=m, ingest=False, generation=gen)
        )
        reply = pz.respond(case.question, user=uid, options=opts)
        out.replies[m] = reply.text
        out.surfaced[m] = surfaced(turn, reply)
        out.latency_ms[m] = reply.exchange.latency_ms
    told = pz.respond(
        f"{case.phrasing.text} {case.question}",
        user=uid,
        options=PersonalizeOptions(method="plain", ingest=False, generation=gen),
    )
    out.replies[TOLD] = told.text
    out.seconds = time.perf_counter() - t0
    return out


def warm_up(pz: Any, methods: Sequence[str]) -> None:
    """One short untimed reply per method, so model loading and first-call costs stay out of
    the latency of whichever method runs first."""
    from personalign.backends.models.base import GenerationOptions
    from personalign.pipeline import PersonalizeOptions
    from personalign.types import Message

    gen = GenerationOptions(max_new_tokens=8)
    pz.memory.add_messages(
        [Message(role="user", content="Hello there!", id="warmup:t0")], user="vp-warmup"
    )
    for m in methods:
        opts = (
            PersonalizeOptions(ingest=False, generation=gen)
            if m == "default"
            else PersonalizeOptions(method=m, ingest=False, generation=gen)
        )
        pz.respond("How are you today?", user="vp-warmup", options=opts)


# -- figures ---------------------------------------------------------------------------------


def _rate(flags: Sequence[bool]) -> float:
    return round(sum(flags) / len(flags), 4) if flags else float("nan")


def figures(outcomes: Sequence[Outcome], methods: Sequence[str]) -> dict[str, float | int]:
    """All figures of one split, computed from the generated text (see the module doc)."""
    out: dict[str, float | int] = {"n_cases": len(outcomes)}
    out["stored_rate"] = _rate([o.stored for o in outcomes])
    if "default" in methods:
        out["used_rate"] = _rate([o.surfaced["default"] for o in outcomes])
    english = [
        o for o in outcomes if o.case.phrasing.instruction_id not in NON_ENGLISH_INSTRUCTIONS
    ]
    mean_ms = {
        m: sum(o.latency_ms[m] for o in outcomes) / len(outcomes) for m in methods if outcomes
    }
    for m in [*methods, TOLD]:
        ok = [
            complies(o.case.phrasing.instruction_id, o.case.phrasing.kwargs, o.replies[m])
            for o in outcomes
        ]
        bad = [degenerate(o.replies[m]) for o in outcomes]
        out[f"compliance_{m}"] = _rate(ok)
        out[f"compliance_strict_{m}"] = _rate([a and not b for a, b in zip(ok, bad, strict=True)])
        out[f"degenerate_{m}"] = _rate(bad)
        if m == TOLD:
            continue
        out[f"relevance_{m}"] = _rate([relevant(o.case.question, o.replies[m]) for o in english])
        out[f"surfaced_{m}"] = _rate([o.surfaced[m] for o in outcomes])
        if "plain" in mean_ms and m != "plain" and mean_ms["plain"] > 0:
            out[f"latency_ratio_{m}"] = round(mean_ms[m] / mean_ms["plain"], 3)
    if "default" in methods:
        by_type: dict[str, list[bool]] = defaultdict(list)
        for o in outcomes:
            p = o.case.phrasing
            by_type[p.type].append(complies(p.instruction_id, p.kwargs, o.replies["default"]))
        for t, flags in by_type.items():
            out[f"compliance_default_{t}"] = _rate(flags)
    if outcomes:
        out["seconds_per_case"] = round(sum(o.seconds for o in outcomes) / len(outcomes), 1)
    return out


def show_samples(split: Split, outcomes: Sequence[Outcome], methods: Sequence[str]) -> None:
    """One reply per type per method (the first case of each type). Held-out phrasings are not
    printed (they must not be read while tuning): only the type and the IFEval check."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    firsts: dict[str, Outcome] = {}
    for o in outcomes:
        firsts.setdefault(o.case.phrasing.type, o)
    for t, o in firsts.items():
        p = o.case.phrasing
        said = p.text if split.name == "dev" else "(held-out phrasing not shown)"
        table = Table(
            title=f"[{split.name}] {t}: {p.instruction_id} {dict(p.kwargs) or ''}\n"
            f"said: {said}\nasked: {o.case.question}",
            title_justify="left",
            expand=True,
            show_lines=True,
        )
        table.add_column("method", no_wrap=True)
        table.add_column("ok", no_wrap=True)
        table.add_column("reply", ratio=1, overflow="fold")
        for m in [*methods, TOLD]:
            ok = complies(p.instruction_id, p.kwargs, o.replies[m])
            table.add_row(m, "yes" if ok else "no", o.replies[m].strip() or "(empty)")
        console.print(table, highlight=False)


# -- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__ or "")
    p.add_argument("--split", default="heldout", choices=[*SPLITS, "both"])
    p.add_argument(
        "--cases", type=int, default=None, help="cases per split (default: every phrasing once)"
    )
    p.add_argument("--methods", default=",".join(METHODS), help="comma list of methods")
    p.add_argument("--filler", type=int, default=20, help="unrelated turns around the preference")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--home", type=Path, default=None, help="data folder (default: temporary)")
    p.add_argument("--show", action="store_true", help="print sample replies with --json too")
    args = p.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown or not args.methods:
        p.error(f"--methods: unknown {unknown}; choose from {','.join(METHODS)}")
    if args.cases is not None and args.cases < 1:
        p.error("--cases must be >= 1")
    if args.filler < 1:
        p.error("--filler must be >= 1")

    names = list(SPLITS) if args.split == "both" else [args.split]
    splits = [load_split(s) for s in names]
    for s in splits:  # every check builds before any model loads
        for ph in s.phrasings:
            build_checker(ph.instruction_id, ph.kwargs)
    fillers = filler_pairs(args.data)

    from personalign.config import load_settings
    from personalign.pipeline import PersonalizeOptions, Personalizer

    home = args.home or Path(tempfile.mkdtemp(prefix="personalign-verifiable-"))
    pz = Personalizer.open(load_settings(home=home))
    results: dict[str, float | int | str] = {}
    try:
        warm_up(pz, args.methods)
        for s in splits:
            cases = select_cases(s, args.cases, args.seed)
            outcomes = []
            for i, case in enumerate(cases, 1):
                o = run_case(pz, case, fillers, args)
                outcomes.append(o)
                print(
                    f"[{s.name} {i}/{len(cases)}] {case.phrasing.type}: stored={o.stored} "
                    + " ".join(f"{m}={int(o.surfaced[m])}" for m in args.methods)
                    + f" ({o.seconds:.1f} s)",
                    file=sys.stderr,
                    flush=True,
                )
            figs = figures(outcomes, args.methods)
            if args.split == "both":
                results.update({f"{s.name}_{k}": v for k, v in figs.items()})
            else:
                results["split"] = s.name
                results.update(figs)
            if args.show or not args.json:
                show_samples(s, outcomes, args.methods)
    finally:
        pz.close()
    results["default_method"] = PersonalizeOptions().method
    results["filler_turns"] = args.filler
    results["max_new_tokens"] = args.max_new_tokens
    emit(results, title="verifiable preferences (judge: lm-eval IFEval)", as_json=args.json)


if __name__ == "__main__":
    main()
