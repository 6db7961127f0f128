"""benchmarks/verifiable_preferences.py without a model: the data, the IFEval judge wrapper on
hand-written replies, the text measures, case selection and the missing-data errors."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from personalign.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "verifiable_preferences.py"

if importlib.util.find_spec("lm_eval") is None:  # the eval extra
    pytest.skip("lm-eval is not installed: pip install -e '.[eval]'", allow_module_level=True)


def _load() -> ModuleType:
    name = "verifiable_preferences_bench"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


vp = _load()
SPLITS = {s: vp.load_split(s) for s in vp.SPLITS}
TYPES = {
    "lowercase",
    "capitals",
    "no_comma",
    "max_words",
    "bullets",
    "closing",
    "title",
    "language",
    "food_avoid",
    "postscript",
    "json",
    "quotes",
}
ALL = [p for s in SPLITS.values() for p in s.phrasings]

BASE = "Rainbows form when sunlight enters raindrops and bends and reflects inside them."
LONG = (
    "To sleep better, keep a regular schedule, avoid screens before bed and keep your bedroom "
    "cool and dark. Limit caffeine in the afternoon and try a short wind-down routine."
)
IN_LANGUAGE = {
    "fr": "Un arc-en-ciel se forme quand la lumière du soleil traverse les gouttes de pluie. "
    "La lumière est déviée et se sépare en plusieurs couleurs dans le ciel.",
    "es": "Un arcoíris se forma cuando la luz del sol atraviesa las gotas de lluvia. La luz "
    "se desvía y se separa en varios colores en el cielo.",
    "de": "Ein Regenbogen entsteht, wenn Sonnenlicht durch Regentropfen fällt. Das Licht wird "
    "gebrochen und in verschiedene Farben am Himmel zerlegt.",
    "it": "Un arcobaleno si forma quando la luce del sole attraversa le gocce di pioggia. La "
    "luce viene deviata e si separa in diversi colori nel cielo.",
}


def compliant(p: Any) -> str:
    """A reply that follows the phrasing's preference, written from its kwargs."""
    kw = p.kwargs
    return {
        "lowercase": BASE.lower(),
        # langdetect misreads short all-caps text (this BASE upper-cased reads as German)
        "capitals": LONG.upper(),
        "no_comma": BASE,
        "max_words": " ".join(BASE.split()[: kw.get("num_words", 1) - 1]),
        "bullets": "Here is how:\n"
        + "\n".join(f"* point {i} about light" for i in range(kw.get("num_bullets", 0))),
        "closing": f"{BASE} {kw.get('end_phrase')}",
        "title": f"<<How Rainbows Form>>\n\n{BASE}",
        "language": IN_LANGUAGE.get(kw.get("language", ""), ""),
        "food_avoid": "Try a lentil curry with rice, spinach and roasted sweet potatoes.",
        "postscript": f"{BASE}\n\nP.S. Double rainbows have reversed colors.",
        "json": json.dumps({"answer": BASE}),
        "quotes": f'"{BASE}"',
    }[p.type]


def violating(p: Any) -> str:
    """A reply that breaks the phrasing's preference."""
    kw = p.kwargs
    forbidden = (kw.get("forbidden_words") or ["x"])[0]
    return {
        "lowercase": BASE,
        "capitals": BASE,
        "no_comma": "Sunlight enters raindrops, bends, and splits into colors.",
        "max_words": " ".join([BASE] * (kw.get("num_words", 0) // 5 + 2)),
        "bullets": "\n".join(f"- point {i}" for i in range(kw.get("num_bullets", 0) + 1)),
        "closing": f"{kw.get('end_phrase')} {BASE}",
        "title": f"How Rainbows Form\n\n{BASE}",
        "language": BASE,
        "food_avoid": f"Try a {forbidden} stew with rice and spinach.",
        "postscript": BASE,
        "json": f"Sure! {json.dumps({'answer': BASE})}",
        "quotes": BASE,
    }[p.type]


def test_every_type_is_in_both_splits_with_enough_distinct_phrasings() -> None:
    for name, minimum in (("dev", 3), ("heldout", 2)):
        split = SPLITS[name]
        assert set(split.types) >= TYPES, name
        for t in split.types:
            texts = {p.text for p in split.phrasings if p.type == t}
            assert len(texts) >= minimum, (name, t)
    dev = {p.text.lower() for p in SPLITS["dev"].phrasings}
    assert not dev & {p.text.lower() for p in SPLITS["heldout"].phrasings}
    for pool in ("general", "food"):
        qd, qh = (set(SPLITS[s].questions[pool]) for s in ("dev", "heldout"))
        assert qd and qh and not qd & qh, pool


def test_ids_are_unique_and_every_check_builds() -> None:
    assert len({p.id for p in ALL}) == len(ALL)
    registry = vp.instruction_registry()
    for p in ALL:
        assert p.instruction_id in registry, p.id
        assert p.instruction_id not in vp.NEEDS_NLTK_DATA, p.id
        vp.build_checker(p.instruction_id, p.kwargs)  # raises on a bad kwarg
        if p.type == "max_words":
            assert p.kwargs["relation"] == "less than" and 30 <= p.kwargs["num_words"] <= 80
        if p.type == "bullets":
            assert 2 <= p.kwargs["num_bullets"] <= 4
        if p.type == "title":
            assert "<<" in p.text and ">>" in p.text, p.id


def test_the_registry_import_restores_local_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    before = os.environ.get("LOCAL_RANK")
    monkeypatch.setattr(vp, "_REGISTRY", None)
    assert vp.instruction_registry()
    assert os.environ.get("LOCAL_RANK") == before


@pytest.mark.parametrize("p", ALL, ids=[p.id for p in ALL])
def test_the_judge_passes_a_compliant_reply_and_fails_a_violating_one(p: Any) -> None:
    good, bad = compliant(p), violating(p)
    assert good, f"no hand-written reply for {p.type} {dict(p.kwargs)}: extend the test"
    assert vp.complies(p.instruction_id, p.kwargs, good), (p.id, good)
    assert not vp.complies(p.instruction_id, p.kwargs, bad), (p.id, bad)


def test_the_judge_on_a_few_fixed_replies() -> None:
    assert vp.complies("change_case:english_lowercase", {}, "hello there, this is fine.")
    assert not vp.complies("change_case:english_lowercase", {}, "Hello there, this is fine.")
    five = {"num_words": 5, "relation": "less than"}
    assert vp.complies("length_constraints:number_words", five, "one two three four")
    assert not vp.complies("length_constraints:number_words", five, "one two three four five")
    bullets = {"num_bullets": 2}
    assert vp.complies("detectable_format:number_bullet_lists", bullets, "* a\n- b")
    assert not vp.complies("detectable_format:number_bullet_lists", bullets, "1. a\n2. b")
    meat = {"forbidden_words": ["chicken"]}
    assert not vp.complies("keywords:forbidden_words", meat, "Grilled Chicken tonight")
    assert vp.complies("keywords:forbidden_words", meat, "Grilled tofu tonight")
    with pytest.raises(ConfigError, match="number_sentences"):
        vp.build_checker("length_constraints:number_sentences", {"num_sentences": 2})
    with pytest.raises(ConfigError, match="unknown IFEval"):
        vp.build_checker("startend:nope", {})


def test_degenerate_and_relevance() -> None:
    assert vp.degenerate("")
    assert vp.degenerate("Sure, here you go.")
    assert vp.degenerate("the cat sat on the mat " * 6)
    assert vp.degenerate("la " * 40)
    assert not vp.degenerate(BASE)
    assert vp.relevant("How does a rainbow form?", "RAINBOWS appear after rain.")
    assert vp.relevant("Why do cats purr?", "A cat purrs when it is calm.")
    assert not vp.relevant("Why do cats purr?", "The weather is nice today.")
    assert not vp.relevant("Why is the sky blue?", "The theory is simple.")  # no stop-word hits


def test_cases_go_round_robin_over_types() -> None:
    split = SPLITS["dev"]
    n_types = len(split.types)
    first = vp.select_cases(split, n_types, seed=3)
    assert [c.phrasing.type for c in first] == split.types
    every = vp.select_cases(split, None, seed=3)
    assert sorted(c.phrasing.id for c in every) == sorted(p.id for p in split.phrasings)
    for c in every:
        assert c.question in split.questions[c.phrasing.questions]
    assert [c.id for c in vp.select_cases(split, 5, seed=3)] == [c.id for c in every[:5]]
    assert len(vp.select_cases(split, len(split.phrasings) + 3, seed=3)) == len(split.phrasings) + 3


def test_the_conversation_hides_the_preference_among_filler() -> None:
    split = SPLITS["dev"]
    case = vp.select_cases(split, 1, seed=1)[0]
    fillers = [(f"filler question {i}?", f"filler answer {i}.") for i in range(30)]
    msgs, turn = vp.conversation(case, fillers, 20)
    assert len(msgs) == 42 and len({m.id for m in msgs}) == 42
    assert [m.role for m in msgs[:2]] == ["user", "assistant"]
    (pref,) = [m for m in msgs if m.id == turn]
    assert pref.role == "user" and pref.content == case.phrasing.text
    assert vp.conversation(case, fillers, 20)[1] == turn  # seeded


def test_missing_or_empty_data_is_a_config_error_naming_the_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        vp.load_split("dev", tmp_path)
    assert str(vp.data_path("dev", tmp_path).resolve()) in str(e.value)
    vp.data_path("heldout", tmp_path).write_text("")
    with pytest.raises(ConfigError) as e:
        vp.load_split("heldout", tmp_path)
    assert str(vp.data_path("heldout", tmp_path).resolve()) in str(e.value)
    vp.data_path("dev", tmp_path).write_text('{"phrasings": [], "questions": {}}')
    with pytest.raises(ConfigError, match="no phrasings"):
        vp.load_split("dev", tmp_path)
    with pytest.raises(ConfigError) as e:
        vp.filler_pairs(tmp_path)
    assert str((tmp_path / "mt-bench-101" / "mtbench101.jsonl").resolve()) in str(e.value)
    (tmp_path / "mt-bench-101").mkdir()
    (tmp_path / "mt-bench-101" / "mtbench101.jsonl").write_text("\n")
    with pytest.raises(ConfigError, match="no dialogues"):
        vp.filler_pairs(tmp_path)
