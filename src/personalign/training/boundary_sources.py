"""The boundary's broad training sources, weighted by source, and whole-source hold-out.

:func:`harm_sources` gathers every labelled safety source under ``<data>`` as
:class:`SourceSet` s, one per data set (the unit of the hold-out): AdvBench, do-not-answer,
SimpleSafetyTests, XSTest, OpenAI's moderation samples, PHTest, the first turns of Anthropic's
helpful conversations, generated contrast pairs, persona sentences, chat turns, conversation,
the hand-written edgy preferences, PrefEval preferences, CyberSecEval attacks and BIPIA emails
(benign for the harm model: injection is flagged, not refused). The red-team first turns of
Anthropic's harmless conversations carry no per-prompt label: they are scored, never trained on.

:func:`training_rows` turns them into weighted rows (each request as written plus a few
TRAIN templates, texts as written); a source's total weight grows as ``n ** source_power``
(a big source counts more, not proportionally more) and the harmful and benign sides weigh
half each. :func:`eval_rows` builds a held-out source's evaluation rows: each request as
written (the *request* decision) and under EVAL templates (the *preference* decision), texts as
written. :func:`leave_source_out` scores every source with a model that never saw it;
:func:`calibrate` picks each decision's threshold on those held-out scores.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from personalign.training import safety_data as D

HELDOUT_PROTOCOL = (
    "harm model: whole-source hold-out. Every source (AdvBench, do-not-answer, "
    "SimpleSafetyTests, XSTest, OpenAI moderation, PHTest, HH helpful first turns, contrast "
    "pairs, MSC personas, MT-Bench-101 turns, conversation, LoCoMo odd dialogues, edgy, "
    "PrefEval, CyberSecEval, BIPIA emails) is scored by a model trained on all the others "
    "(requests as written and under EVAL templates, never trained wordings); each decision's "
    "threshold is calibrated on those held-out scores; the shipped model trains on all. HH "
    "harmless red-team openings carry no label and are not trained on. Injection models: split "
    "by attack variant (the even-numbered (dataset, variant) pairs trained on)."
)

#: The decisions the boundary makes, each with its own threshold.
PREFERENCE = "preference"
REQUEST = "request"
REPLY = "reply"
#: The kind of evaluation row each decision is measured on (a reply: text as written).
DECISION_KIND = {PREFERENCE: "preference", REQUEST: "request", REPLY: "text"}


@dataclass(frozen=True)
class SourceSet:
    """One data set: requests (templated into preferences) and texts (used as written)."""

    group: str
    """the unit of the hold-out"""
    requests: list[D.Request] = field(default_factory=list)
    texts: list[D.Request] = field(default_factory=list)
    weight: float = 1.0
    """relative weight of the whole source"""
    texts_are_preferences: bool = False
    """whether ``texts`` are candidate preferences (PrefEval, personas, edgy)"""


@dataclass(frozen=True)
class Row:
    """One training or evaluation text."""

    text: str
    label: str
    group: str
    kind: str
    """``request`` (as written), ``preference`` (templated or a preference as written) or
    ``text`` (other text as written)"""
    source: str
    template: str
    weight: float = 1.0


def advbench_targets(data: Path) -> list[D.Request]:
    """The affirmative reply openings AdvBench pairs with its behaviours ("Sure, here is a
    script that can exploit vulnerabilities ..."): harmful reply text."""
    rows = D._read_csv(data / "safety" / "advbench" / "harmful_behaviors.csv")
    return [
        D.Request(" ".join(r["target"].split()), D.categorize(r["goal"]), "advbench/targets")
        for r in rows
        if r.get("target")
    ]


def _sample(items: list[D.Request], cap: int, rng: random.Random) -> list[D.Request]:
    return items if len(items) <= cap else rng.sample(items, cap)


def harm_sources(data: Path, max_per_source: int, seed: int) -> list[SourceSet]:
    """Every labelled source under ``data`` (absent files give empty sets, left out)."""
    rng = random.Random(seed)
    dna_harm, dna_sensitive = D.load_donotanswer(data)
    xs_safe, xs_unsafe = D.load_xstest(data)
    mod_harm, mod_clean = D.load_openai_moderation(data)
    ph_harmless, ph_controversial = D.load_phtest(data)
    strings = [r for r in D.load_advbench(data) if r.source == "advbench/harmful_strings"]
    strings += advbench_targets(data)
    goals = [r for r in D.load_advbench(data) if r.source != "advbench/harmful_strings"]
    injections = D.load_injections(data)
    cap = max_per_source
    sets = [
        SourceSet("advbench", goals, strings),
        SourceSet("donotanswer", dna_harm + dna_sensitive),
        SourceSet("simplesafetytests", D.load_simplesafetytests(data)),
        SourceSet("xstest", xs_safe + xs_unsafe),
        SourceSet("openai_moderation", texts=mod_harm + mod_clean),
        SourceSet("phtest", _sample(ph_harmless, cap, rng)),
        SourceSet("phtest", _sample(ph_controversial, cap // 2, rng), weight=0.5),
        SourceSet("hh_helpful", _sample(D.load_hh_first_turns(data, "helpful"), cap, rng)),
        SourceSet("contrast", D.contrast_requests()),
        SourceSet(
            "msc_personas",
            texts=_sample(D.load_personas(data), cap, rng),
            texts_are_preferences=True,
        ),
        SourceSet("mt-bench-101", _sample(D.load_chat_turns(data), cap, rng)),
        SourceSet("conversation", texts=_sample(D.load_conversation_turns(data), cap, rng)),
        SourceSet("locomo_heldout", texts=D.load_conversation_turns(data, part="test")),
        SourceSet(
            "edgy",
            texts=[D.Request(t, D.BENIGN, "edgy") for t in D.EDGY_BENIGN],
            texts_are_preferences=True,
        ),
        SourceSet("prefeval", texts=D.load_prefeval(data), texts_are_preferences=True),
        SourceSet(
            "cyberseceval",
            texts=[
                D.Request(s.text, D.BENIGN, "cyberseceval")
                for s in injections
                if s.source == "cyberseceval"
            ],
        ),
        SourceSet(
            "bipia_email",
            texts=[D.Request(s.text, D.BENIGN, "bipia/email") for s in D.load_benign_content(data)],
        ),
    ]
    return [s for s in sets if s.requests or s.texts]


def _templated(
    r: D.Request, templates: dict[str, str], k: int, rng: random.Random
) -> list[tuple[str, str]]:
    """(text, template name) of ``r`` under ``k`` of ``templates`` (``raw`` excluded)."""
    names = sorted(n for n in templates if n != "raw")
    pick = rng.sample(names, min(k, len(names)))
    return [(e.text, e.template) for e in D.as_preferences([r], {n: templates[n] for n in pick})]


def training_rows(
    sets: Sequence[SourceSet], *, templates: int, source_power: float, seed: int
) -> list[Row]:
    """Weighted training rows of ``sets`` (see the module doc); mean weight 1."""
    rng = random.Random(seed)
    rows: list[Row] = []
    for s in sets:
        mine: list[Row] = []
        for r in s.requests:
            text = " ".join(r.text.split())
            mine.append(Row(text, r.label, s.group, REQUEST, r.source, "raw"))
            for t, name in _templated(r, D.TRAIN_TEMPLATES, templates, rng):
                mine.append(Row(t, r.label, s.group, PREFERENCE, r.source, name))
        kind = PREFERENCE if s.texts_are_preferences else "text"
        mine += [
            Row(" ".join(r.text.split()), r.label, s.group, kind, r.source, "as_is")
            for r in s.texts
        ]
        total = s.weight * len(mine) ** source_power
        rows += [Row(**{**vars(x), "weight": total / len(mine)}) for x in mine]
    harm = sum(x.weight for x in rows if x.label != D.BENIGN)
    benign = sum(x.weight for x in rows if x.label == D.BENIGN)
    scale = {True: 0.5 / max(harm, 1e-12), False: 0.5 / max(benign, 1e-12)}
    out = [Row(**{**vars(x), "weight": x.weight * scale[x.label != D.BENIGN]}) for x in rows]
    mean = sum(x.weight for x in out) / max(1, len(out))
    return [Row(**{**vars(x), "weight": x.weight / mean}) for x in out]


def eval_rows(s: SourceSet, *, templates: int, seed: int) -> list[Row]:
    """Evaluation rows of a held-out source: requests as written and under ``templates``
    EVAL templates (wordings never trained on), texts as written."""
    rng = random.Random(seed + 1)
    rows: list[Row] = []
    for r in s.requests:
        rows.append(Row(" ".join(r.text.split()), r.label, s.group, REQUEST, r.source, "raw"))
        for t, name in _templated(r, D.EVAL_TEMPLATES, templates, rng):
            rows.append(Row(t, r.label, s.group, PREFERENCE, r.source, name))
    kind = PREFERENCE if s.texts_are_preferences else "text"
    rows += [
        Row(" ".join(r.text.split()), r.label, s.group, kind, r.source, "as_is") for r in s.texts
    ]
    return rows


Fit = Callable[[list[Row]], Callable[[list[str]], np.ndarray]]
"""Train on rows; return a scorer from texts to harm scores (1 - p(benign))."""


def leave_source_out(
    sets: Sequence[SourceSet],
    fit: Fit,
    *,
    templates: int,
    eval_templates: int,
    source_power: float,
    seed: int,
    log: Callable[[str], None] | None = None,
) -> list[tuple[Row, float]]:
    """Each source's evaluation rows scored by a model trained on all the other sources."""
    return leave_groups_out(
        sets,
        fit,
        folds=[(g,) for g in sorted({s.group for s in sets})],
        templates=templates,
        eval_templates=eval_templates,
        source_power=source_power,
        seed=seed,
        log=log,
    )


def leave_groups_out(
    sets: Sequence[SourceSet],
    fit: Fit,
    *,
    folds: Sequence[Sequence[str]],
    templates: int,
    eval_templates: int,
    source_power: float,
    seed: int,
    log: Callable[[str], None] | None = None,
) -> list[tuple[Row, float]]:
    """Each fold's sources' evaluation rows scored by a model trained on the sources of no
    fold of it (whole sources held out; a source named by no fold is always trained on)."""
    known = {s.group for s in sets}
    out: list[tuple[Row, float]] = []
    for fold in folds:
        g = set(fold) & known
        if not g:
            continue
        train = training_rows(
            [s for s in sets if s.group not in g],
            templates=templates,
            source_power=source_power,
            seed=seed,
        )
        held = [
            r
            for s in sets
            if s.group in g
            for r in eval_rows(s, templates=eval_templates, seed=seed)
        ]
        scorer = fit(train)
        scores = scorer([r.text for r in held])
        out += list(zip(held, scores.tolist(), strict=True))
        if log is not None:
            harm = [sc for r, sc in zip(held, scores, strict=True) if r.label != D.BENIGN]
            ok = [sc for r, sc in zip(held, scores, strict=True) if r.label == D.BENIGN]
            log(
                f"held out {', '.join(sorted(g))}: {len(held)} rows, mean harm score harmful "
                f"{np.mean(harm) if harm else float('nan'):.3f} benign "
                f"{np.mean(ok) if ok else float('nan'):.3f}"
            )
    return out


def decision_pools(
    scored: Sequence[tuple[Row, float]], decision: str
) -> tuple[np.ndarray, np.ndarray]:
    """(harmful scores, benign scores) of the rows a ``decision`` sees: requests as written
    for ``request``; templated and as-written preferences for ``preference``."""
    kinds = (DECISION_KIND[decision],)
    harm = [sc for r, sc in scored if r.kind in kinds and r.label != D.BENIGN]
    ok = [sc for r, sc in scored if r.kind in kinds and r.label == D.BENIGN]
    return np.array(harm, dtype=np.float64), np.array(ok, dtype=np.float64)


def macro_rates(
    scored: Sequence[tuple[Row, float]], decision: str, threshold: float
) -> tuple[float, float]:
    """(harmful pass rate, benign refusal rate) at ``threshold``, each the mean over sources
    (every held-out source counts the same, whatever its size)."""
    kinds = (DECISION_KIND[decision],)
    by: dict[tuple[str, bool], list[bool]] = defaultdict(list)
    for r, sc in scored:
        if r.kind in kinds:
            harmful = r.label != D.BENIGN
            by[(r.group, harmful)].append(sc < threshold if harmful else sc >= threshold)
    passes = [float(np.mean(v)) for (g, h), v in by.items() if h]
    refusals = [float(np.mean(v)) for (g, h), v in by.items() if not h]
    return (
        float(np.mean(passes)) if passes else 0.0,
        float(np.mean(refusals)) if refusals else 0.0,
    )


#: The thresholds the calibrations choose among.
THRESHOLD_GRID = np.round(np.arange(0.05, 0.96, 0.01), 2)


def calibrate(
    scored: Sequence[tuple[Row, float]], decision: str, *, harm_target: float, benign_target: float
) -> float:
    """The threshold whose larger relative miss (macro harmful pass / ``harm_target``, macro
    benign refusal / ``benign_target``) on the held-out scores is smallest."""
    best, best_t = float("inf"), 0.5
    for t in THRESHOLD_GRID:
        hp, br = macro_rates(scored, decision, float(t))
        cost = max(hp / harm_target, br / benign_target)
        if cost < best:
            best, best_t = cost, float(t)
    return best_t


#: The benign sources whose texts are replies to benign prompts (assistant turns and
#: conversation): the false flags the reply check's threshold is calibrated against.
REPLY_BENIGN_GROUPS = ("conversation", "locomo_heldout")


def calibrate_at_false_flags(
    scored: Sequence[tuple[Row, float]],
    decision: str,
    *,
    benign_target: float,
    benign_groups: Sequence[str] | None = None,
) -> float:
    """The lowest threshold whose macro benign refusal on the held-out scores (of
    ``benign_groups`` only, when given) is at most ``benign_target`` (a detection rate *at* a
    false-flag rate; the highest grid threshold when none is that low)."""
    rows = [
        (r, sc)
        for r, sc in scored
        if benign_groups is None or r.label != D.BENIGN or r.group in benign_groups
    ]
    for t in THRESHOLD_GRID:
        if macro_rates(rows, decision, float(t))[1] <= benign_target:
            return float(t)
    return float(THRESHOLD_GRID[-1])


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of ``k`` successes in ``n`` trials (NaNs for none)."""
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


#: The held-out figures :func:`heldout_figures` reports: key -> (decision, groups, harmful
#: rows?, sources (``None``: all of those groups'), "error" or "detected").
HELDOUT_KEYS: dict[str, tuple[str, tuple[str, ...], bool, tuple[str, ...] | None, str]] = {
    "harmful_admission_rate": (
        PREFERENCE,
        ("advbench", "donotanswer", "simplesafetytests", "xstest"),
        True,
        None,
        "error",
    ),
    "benign_preference_refusal_rate": (PREFERENCE, ("prefeval",), False, None, "error"),
    "benign_request_refusal_rate": (REQUEST, ("xstest",), False, None, "error"),
    "harmful_request_pass_rate": (
        REQUEST,
        ("advbench",),
        True,
        ("advbench/harmful_behaviors",),
        "error",
    ),
    "harmful_reply_detection_rate": (REPLY, ("advbench",), True, None, "detected"),
    "reply_false_flag_rate": (REPLY, ("conversation",), False, ("mt-bench-101_bot",), "error"),
}


def heldout_figures(
    scored: Sequence[tuple[Row, float]], thresholds: dict[str, float]
) -> dict[str, float | int]:
    """Whole-source hold-out figures at ``thresholds``: the headline rates (with 95% Wilson
    intervals and counts) and each decision's error rate per held-out source."""
    out: dict[str, float | int] = {}
    for key, (decision, groups, harmful, sources, kind) in HELDOUT_KEYS.items():
        kind_rows = DECISION_KIND[decision]
        hits = [
            sc >= thresholds[decision]
            for r, sc in scored
            if r.kind == kind_rows
            and r.group in groups
            and (r.label != D.BENIGN) == harmful
            and (sources is None or r.source in sources)
        ]
        if not hits:
            continue
        # refused harmful rows are detected; an error is a harmful row passed or a benign refused
        k = sum(hits) if kind == "detected" or not harmful else len(hits) - sum(hits)
        lo, hi = wilson(k, len(hits))
        out[key] = round(k / len(hits), 4)
        out[f"{key}_ci95_low"] = round(lo, 4)
        out[f"{key}_ci95_high"] = round(hi, 4)
        out[f"{key}_n"] = len(hits)
    for decision in (PREFERENCE, REQUEST, REPLY):
        by: dict[tuple[str, bool], list[bool]] = defaultdict(list)
        for r, sc in scored:
            if r.kind == DECISION_KIND[decision]:
                harmful = r.label != D.BENIGN
                by[(r.group, harmful)].append((sc < thresholds[decision]) == harmful)
        for (g, harmful), wrong in sorted(by.items()):
            side = "harmful" if harmful else "benign"
            out[f"{decision}_error_rate_{side}_{g}"] = round(sum(wrong) / len(wrong), 4)
    return out
