"""Context-scoped preferences and conflicts on the real path: rules that read a context,
reconciliation of real pairs with the embedded extractor and MiniLM, and what a reply uses
(a preference outside its context, or the older side of an open conflict, is held back)."""

from __future__ import annotations

import json
import re

import pytest

from personalign.constraints import compile_text
from personalign.constraints.context import context_meta, context_of, extract_context
from personalign.memory.conflicts import antonym_pair, opposes
from personalign.memory.scope import ContextMatcher, ScopeConfig, context_words, prototypes
from personalign.types import Message, PreferenceIn


@pytest.mark.parametrize(
    ("text", "context"),
    [
        ("When I cook for my kids, nothing spicy.", "cook for my kids"),
        ("Give me detailed explanations for coding questions.", "coding questions"),
        ("At work, keep my emails formal.", "at work"),
        ("I prefer formal emails at work", "at work"),
        ("When I'm at work, keep it short", "at work"),
        ("With my kids, suggest only outdoor activities.", "with my kids"),
        ("I prefer hotels near the airport when I travel for business.", "travel for business"),
        ("On weekends I like long, relaxed answers.", "on weekends"),
        ("For math questions, show every step.", "math questions"),
        ("I prefer short answers.", None),
        ("When answering, use British spelling.", None),
        ("When possible, use bullet points.", None),
        ("For now, keep answers under 100 words.", None),
        ("I want at least three examples in every answer.", None),
        ("I prefer streaming movies at home.", None),  # what is preferred, not where
        ("Answer all questions in French.", None),
    ],
)
def test_context_is_read_from_the_wording(text: str, context: str | None) -> None:
    assert extract_context(text) == context


def test_stored_context_is_reread_when_the_text_changes_unless_edited() -> None:
    meta = {"context": context_meta("At work, keep my emails formal.")}
    assert context_of(meta, text="At work, keep my emails formal.") == "at work"
    assert context_of(meta, text="Keep my emails formal.") is None  # the text changed
    edited = {"context": {"value": "at the office", "read_from": "x", "edited": True}}
    assert context_of(edited, text="anything") == "at the office"


def test_opposition_rules() -> None:
    assert opposes(
        "I love spicy food", "I can't handle spicy food", old_polarity=1, new_polarity=-1
    )
    assert antonym_pair("I prefer short answers", "I like long, detailed answers") == (
        "short",
        "detailed",
    )
    assert opposes("I prefer short answers", "I like long answers", old_polarity=1, new_polarity=1)
    # a negation and an antonym cancel: both say the same
    assert (
        opposes(
            "I like detailed answers", "I don't want short answers", old_polarity=1, new_polarity=-1
        )
        is None
    )
    # both ends named in the new one: not an antonym pair (negation decides)
    assert antonym_pair("I prefer bullet points", "No bullet lists, write paragraphs") is None


def test_nothing_spicy_compiles_to_words_to_avoid() -> None:
    [c] = compile_text("When I cook for my kids, nothing spicy.")
    assert c.kind == "avoid_words" and c.value == ["spicy"]
    assert compile_text("I want nothing fancy") == []


def test_keyword_match_needs_no_embedder() -> None:
    m = ContextMatcher(None, ScopeConfig(mode="keyword"))
    got = m.match("What should I make my kids for dinner?", ["cook for my kids", "at work"])
    assert got["cook for my kids"].applies and got["cook for my kids"].how == "keyword"
    assert not got["at work"].applies and got["at work"].score is None
    assert context_words("coding questions") == {"cod"}  # the generic "questions" is no cue
    assert prototypes("coding questions")[0] == "coding questions"


# -- the real path: MiniLM, the embedded extractor ------------------------------------------


@pytest.fixture(scope="module")
def minilm():  # type: ignore[no-untyped-def]
    from personalign.backends.embedders import load_embedder
    from personalign.config import load_settings

    return load_embedder("minilm", load_settings().cache_dir)


@pytest.fixture
def real_store(tmp_path, minilm):  # type: ignore[no-untyped-def]
    from personalign.backends.stores.sqlite import SQLiteStore

    s = SQLiteStore(tmp_path / "m.db", minilm)
    yield s
    s.close()


def _prefs(store, user: str):  # type: ignore[no-untyped-def]
    return store.list(user=user, kinds=["explicit", "implicit"])


def _say(store, extractor, user: str, *texts: str):  # type: ignore[no-untyped-def]
    from personalign.memory.ingest import add_messages

    return [
        add_messages(
            store, [Message(role="user", content=t, id=f"m{i}")], user=user, extractor=extractor
        )
        for i, t in enumerate(texts)
    ]


@pytest.mark.slow
def test_real_pairs_supersede_conflict_or_both_hold(real_store, minilm) -> None:  # type: ignore[no-untyped-def]
    from personalign.memory.extract import Candidate, EmbeddedExtractor
    from personalign.memory.reconcile import apply, decide

    ex = EmbeddedExtractor(minilm)
    # a bare contradiction: both kept, an open conflict
    _, r = _say(real_store, ex, "a", "I love spicy food.", "I can't handle spicy food.")
    assert r.counts["conflict"] == 1
    assert len(_prefs(real_store, "a")) == 2
    [c] = real_store.conflicts(user="a")
    assert (c.older_text, c.newer_text) == ("I love spicy food.", "I can't handle spicy food.")
    # an explicit update ("anymore"): supersedes, the old one in history
    _, r = _say(real_store, ex, "b", "I love spicy food.", "I can't handle spicy food anymore.")
    assert r.counts["supersede"] == 1 and real_store.conflicts(user="b") == []
    assert [p.text for p in _prefs(real_store, "b")] == ["I can't handle spicy food anymore."]
    # a scoped preference beside a general one: both hold as they are
    _, r = _say(
        real_store, ex, "c", "I love spicy food.", "When I cook for my kids, nothing spicy."
    )
    assert r.counts["add"] == 1 and r.counts["conflict"] == 0
    assert len(_prefs(real_store, "c")) == 2 and real_store.conflicts(user="c") == []
    # the extractor skips this request-shaped wish, so decide on it directly
    short = real_store.add("I prefer short answers.", user="d")
    coding = Candidate(
        text="Give me detailed explanations for coding questions.",
        source_turn_ids=["t"],
        reason="t",
    )
    d = decide(real_store, coding, user="d")
    assert d.action == "add"
    new = apply(real_store, d, user="d", source="test")
    assert {p.id for p in _prefs(real_store, "d")} == {short.id, new.id}  # type: ignore[union-attr]
    # the same two without the scope do conflict (opposite ends of one scale)
    plain = Candidate(text="I like long, detailed answers.", source_turn_ids=["t"], reason="t")
    assert decide(real_store, plain, user="d").action == "conflict"
    # unrelated preferences never conflict
    rs = _say(
        real_store, ex, "e", "I love jazz music.", "I'm allergic to peanuts.", "I hate horror"
    )
    assert sum(x.counts["conflict"] for x in rs) == 0 and real_store.conflicts(user="e") == []


@pytest.fixture
def personalizer(tmp_path, minilm):  # type: ignore[no-untyped-def]
    from personalign.config import load_settings
    from personalign.pipeline import Personalizer, open_guarded_memory
    from personalign.testing import FakeLM

    settings = load_settings(home=tmp_path)
    pz = Personalizer(open_guarded_memory(settings, minilm), FakeLM(name="fake"))
    yield pz
    pz.close()


@pytest.mark.slow
def test_a_context_scoped_preference_applies_only_in_its_context(personalizer) -> None:  # type: ignore[no-untyped-def]
    from personalign.pipeline import PersonalizeOptions
    from personalign.service.app import _why

    p = personalizer
    rec = p.memory.add("When I cook for my kids, nothing spicy.", user="kim")
    assert rec.meta["context"]["value"] == "cook for my kids"  # read at write time
    p.memory.add("I prefer short answers.", user="kim")
    opts = PersonalizeOptions(method="prompt", ingest=False)

    kids = p.respond("What should I make my kids for dinner?", user="kim", options=opts)
    used = {u.id: u for u in kids.preferences}
    assert rec.id in used and used[rec.id].context == "cook for my kids"
    assert any(c["kind"] == "avoid_words" for c in kids.exchange.meta["constraints"])
    scope = kids.exchange.meta["scope"]
    assert scope["contexts"][0]["applies"] and not scope["held_back"]

    date = p.respond("Suggest a spicy curry for my date night.", user="kim", options=opts)
    assert rec.id not in {u.id for u in date.preferences}
    assert not any(c["kind"] == "avoid_words" for c in date.exchange.meta.get("constraints", []))
    assert "spicy" in date.text  # nothing removed the word: the rule is not in force
    why = _why(date)
    [held] = why["scope"]["held_back"]
    assert (
        held["id"] == rec.id and held["why"] == "context" and held["context"] == "cook for my kids"
    )
    # the general preference still applies everywhere
    assert any(c["kind"] == "max_words" for c in date.exchange.meta["constraints"])


@pytest.mark.slow
def test_while_a_conflict_is_open_the_newer_side_applies(personalizer) -> None:  # type: ignore[no-untyped-def]
    from personalign.pipeline import PersonalizeOptions

    p = personalizer
    style = {"kind": "explicit", "topic": "communication"}  # applies to every answer
    older = p.memory.add(PreferenceIn(text="I prefer short answers.", **style), user="lu")
    newer = p.memory.add(PreferenceIn(text="I like long, detailed answers.", **style), user="lu")
    c = p.memory.store.add_conflict(older.id, newer.id, user="lu")
    opts = PersonalizeOptions(method="prompt", ingest=False)
    question = "Give me an answer that explains how tides work."
    r = p.respond(question, user="lu", options=opts)
    ids = {u.id for u in r.preferences}
    assert newer.id in ids and older.id not in ids
    assert not any(x["kind"] == "max_words" for x in r.exchange.meta.get("constraints", []))
    [held] = r.exchange.meta["scope"]["held_back"]
    assert (held["id"], held["why"], held["conflict_id"]) == (older.id, "conflict", c.id)
    p.memory.resolve_conflict(c.id, user="lu", keep=older.id)
    r = p.respond(question, user="lu", options=opts)
    assert {u.id for u in r.preferences} & {older.id, newer.id} == {older.id}
    assert any(x["kind"] == "max_words" for x in r.exchange.meta["constraints"])
    assert not r.exchange.meta.get("scope", {}).get("held_back")


@pytest.mark.slow
def test_cli_say_flags_a_conflict_and_resolve_settles_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from personalign.cli.main import app

    def cli(*args: str):  # type: ignore[no-untyped-def]
        return CliRunner().invoke(app, ["--home", str(tmp_path), *args])

    r = cli("memory", "say", "I love spicy food.", "--user", "mo", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["counts"]["add"] == 1
    r = cli("memory", "say", "I can't handle spicy food.", "--user", "mo")
    assert r.exit_code == 0 and "conflict: I can't handle spicy food." in r.stdout
    r = cli("memory", "conflicts", "--user", "mo", "--json")
    [c] = json.loads(r.stdout)
    assert (
        c["status"] == "open"
        and "open conflicts of mo (1)" in cli("memory", "list", "--user", "mo").stdout
    )
    r = cli("memory", "resolve", c["id"], "--user", "mo", "--both")
    assert r.exit_code == 0 and "both preferences kept" in r.stdout
    assert json.loads(cli("memory", "conflicts", "--user", "mo", "--json").stdout) == []


def test_settings_choose_how_contexts_are_matched(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """``[contexts]`` (here from the environment) reaches the pipeline's matcher; keyword
    matching needs no embedding, so this runs on the fakes."""
    from personalign.config import load_settings
    from personalign.pipeline import PersonalizeOptions, Personalizer, open_guarded_memory
    from personalign.testing import CueExtractor, FakeLM, HashingEmbedder

    monkeypatch.setenv("PERSONALIGN_CONTEXTS__MODE", "keyword")
    settings = load_settings(home=tmp_path, embedder="hashing")
    assert settings.contexts.mode == "keyword"
    memory = open_guarded_memory(settings, HashingEmbedder(), extractor=CueExtractor())
    p = Personalizer(memory, FakeLM(name="fake"))
    try:
        rec = p.memory.add("When I cook for my kids, nothing spicy.", user="ty")
        opts = PersonalizeOptions(method="prompt", ingest=False)
        kids = p.respond("What should I cook for my kids tonight?", user="ty", options=opts)
        assert kids.exchange.meta["scope"]["contexts"][0]["how"] == "keyword"
        assert any(c["kind"] == "avoid_words" for c in kids.exchange.meta["constraints"])
        other = p.respond("Suggest a spicy curry for my date night.", user="ty", options=opts)
        assert [h["id"] for h in other.exchange.meta["scope"]["held_back"]] == [rec.id]
        assert "spicy" in other.text and not other.exchange.meta.get("constraints")
        assert p._contexts is not None and p._contexts.config.mode == "keyword"
    finally:
        p.close()


def test_ask_json_shows_the_context_and_what_was_held_back(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from personalign.cli.main import app

    for k, v in {
        "PERSONALIGN_HOME": str(tmp_path),
        "PERSONALIGN_MODEL": "fake",
        "PERSONALIGN_EMBEDDER": "hashing",
        "PERSONALIGN_CONTEXTS__MODE": "keyword",
        "COLUMNS": "240",  # the table on one line
    }.items():
        monkeypatch.setenv(k, v)
    run = CliRunner().invoke
    r = run(app, ["memory", "add", "When I cook for my kids, nothing spicy.", "-u", "jo", "--json"])
    rec = json.loads(r.stdout)
    assert rec["meta"]["context"]["value"] == "cook for my kids"  # read when stored
    listed = run(app, ["memory", "list", "-u", "jo"]).stdout
    # the console may have been made narrower by an earlier test: compare without the folds
    flat = re.sub(r"[\s│┃]+", "", listed)
    assert "onlywhen:cookformykids" in flat
    ask = ["ask", "-u", "jo", "--json", "--method", "prompt"]
    r = run(app, [*ask, "What can I cook for my kids?"])
    out = json.loads(r.stdout)
    assert [(p["id"], p["context"]) for p in out["preferences"]] == [
        (rec["id"], "cook for my kids")
    ]
    r = run(app, [*ask, "A spicy curry for my date?"])
    out = json.loads(r.stdout)
    assert out["preferences"] == [] and out["answer"] == "echo: A spicy curry for my date?"
    assert [(h["id"], h["why"]) for h in out["scope"]["held_back"]] == [(rec["id"], "context")]
