"""Ingestion: add_messages stores reconciled preferences and every user turn as an episode."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from personalign.config import Settings
from personalign.memory.api import Memory
from personalign.memory.extract import Candidate, EmbeddedExtractor, LLMExtractor
from personalign.memory.ingest import EPISODE_REASON, add_messages
from personalign.testing import FakeLM, HashingEmbedder
from personalign.types import Message
from test_extract import cue_classifier


class ListExtractor:
    """Returns a preference for each user turn that contains 'I like'."""

    name = "list"

    def extract(self, messages: Sequence[Message]) -> list[Candidate]:
        return [
            Candidate(text=m.content, source_turn_ids=[m.id or ""], reason="contains 'I like'")
            for m in messages
            if m.role == "user" and "I like" in m.content
        ]


def test_every_user_turn_becomes_an_episode_with_an_id(store) -> None:  # type: ignore[no-untyped-def]
    when = datetime(2024, 5, 1, tzinfo=UTC)
    msgs = [
        Message(role="user", content="Hello there", at=when),
        Message(role="assistant", content="Hi! How can I help?"),
        Message(role="user", content="I like green tea", id="given"),
        Message(role="user", content="   "),
    ]
    r = add_messages(store, msgs, user="alice", extractor=ListExtractor())
    assert len(r.episodes) == 2 and r.counts["add"] == 1
    first, second = sorted(r.episodes, key=lambda p: p.text)
    assert first.kind == "episode" and first.source_turn_ids[0].startswith("msg:")
    assert first.valid_from == when
    assert second.source_turn_ids == ["given"]
    pref = r.records("add")[0]
    assert pref.source_turn_ids == ["given"] and pref.source == "conversation:list"
    reasons = {e.reason for e in store.events(user="alice")}
    assert EPISODE_REASON in reasons


def test_duplicate_is_merged_and_the_merge_reaches_the_event_log(store) -> None:  # type: ignore[no-untyped-def]
    ex = ListExtractor()
    add_messages(
        store, [Message(role="user", content="I like green tea", id="a")], user="u", extractor=ex
    )
    r = add_messages(
        store, [Message(role="user", content="I like green tea", id="b")], user="u", extractor=ex
    )
    assert [d.action for d in r.decisions] == ["merge"]
    assert len(store.list(user="u", kinds=["explicit"])) == 1
    last = store.events(user="u")[-1]
    assert last.action == "add" and "merge: duplicate" in (last.reason or "")


def test_speakers_and_reply_context(store) -> None:  # type: ignore[no-untyped-def]
    msgs = [
        Message(role="user", content="Did you go to the concert?", id="D1:1"),
        Message(role="user", content="Yes, last Sunday!", id="D1:2"),
    ]
    r = add_messages(
        store, msgs, user="u", extractor=ListExtractor(), speakers={"D1:1": "Ann", "D1:2": "Bo"}
    )
    second = next(p for p in r.episodes if p.source_turn_ids == ["D1:2"])
    assert second.text.startswith("Bo: Yes, last Sunday!")
    assert "(in reply to Ann: Did you go to the concert?)" in second.text
    assert second.tags == ["speaker:bo"] and second.meta["turn_text"] == "Yes, last Sunday!"
    r2 = add_messages(
        store,
        [Message(role="user", content="I like jazz", id="D2:1")],
        user="u",
        extractor=ListExtractor(),
        speakers={"D2:1": "Ann"},
    )
    assert r2.records("add")[0].tags == ["speaker:ann"]  # whose preference it is
    hits = store.search("What did Bo say?", user="u", k=2)
    assert "entity" in hits[0].matched and hits[0].record.tags == ["speaker:bo"]


def test_llm_failure_is_a_note_not_a_silent_swallow(store) -> None:  # type: ignore[no-untyped-def]
    ex = LLMExtractor(FakeLM(["garbage"]), max_attempts=1)
    r = add_messages(store, [Message(role="user", content="I like tea")], user="u", extractor=ex)
    assert r.decisions == [] and len(r.episodes) == 1
    assert len(r.notes) == 1 and "invalid JSON" in r.notes[0]


def test_rejects_a_non_store() -> None:
    with pytest.raises(TypeError):
        add_messages(object(), [], user="u", extractor=ListExtractor())


def test_memory_add_messages(store, tmp_path) -> None:  # type: ignore[no-untyped-def]
    mem = Memory(store, Settings(home=tmp_path), extractor=ListExtractor())
    r = mem.add_messages([Message(role="user", content="I like chess")], user="u")
    assert r.counts["add"] == 1
    hits = mem.search("chess", user="u", k=3)
    assert hits[0].record.kind == "explicit"  # the extracted preference outranks its episode


def test_memory_default_extractor_uses_the_store_embedder(store, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import personalign.memory.extract as extract

    monkeypatch.setattr(
        extract.SentenceClassifier, "load", classmethod(lambda cls: cue_classifier())
    )
    mem = Memory(store, Settings(home=tmp_path))
    r = mem.add_messages([Message(role="user", content="I love jazz music.")], user="u")
    assert isinstance(mem.extractor, EmbeddedExtractor) and r.counts["add"] == 1
    assert isinstance(store.embedder, HashingEmbedder)


@pytest.mark.slow
def test_prefeval_conversations_end_to_end(data_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A few PrefEval items: the preference is extracted and surfaces for its question."""
    from personalign.backends.embedders import load_embedder
    from personalign.backends.stores.sqlite import SQLiteStore
    from personalign.eval.suites import _prefdata as P

    emb = P.CachingEmbedder(load_embedder("minilm", tmp_path / "cache"))
    store = SQLiteStore(tmp_path / "m.db", emb)
    ex = EmbeddedExtractor(emb)
    dialogues = P.mtbench_dialogues(data_dir, "filler")
    ok = 0
    for i, item in enumerate(P.load_items(data_dir, "explicit", "travel_restaurant")[:5]):
        msgs, gold = P.preference_conversation(item, "explicit", f"i{i}")
        fill = P.filler_messages(dialogues, 30, seed=i, prefix=f"i{i}")
        r = add_messages(store, msgs, user=f"u{i}", extractor=ex)
        assert r.counts["add"] == 1
        add_messages(store, fill, user=f"u{i}", extractor=ex)
        hits = store.search(item["question"], user=f"u{i}", k=5)
        ok += any(gold & set(h.source_turn_ids) for h in hits)
    assert ok >= 4
    store.close()


@pytest.mark.slow
def test_supersession_suite_quick(data_dir) -> None:  # type: ignore[no-untyped-def]
    from personalign.eval.suites import supersession

    figures = supersession.run(data_dir, quick=True)
    assert figures["supersession_cases"] == 20 and figures["supersession_accuracy"] >= 0.7
