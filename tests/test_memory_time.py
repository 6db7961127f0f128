"""``as_of`` listing and retention pruning on every store backend (conftest.store_factory)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from personalign.errors import ValidationError
from personalign.types import PreferenceIn


def _tick() -> datetime:
    """A moment strictly between what was written before and what is written after."""
    time.sleep(0.01)
    t = datetime.now(UTC)
    time.sleep(0.01)
    return t


def test_list_as_of_follows_supersession(store):
    before_t1 = _tick()
    veg = store.add(PreferenceIn(text="I'm vegetarian", topic="food"), user="alice")
    between = _tick()
    fish = store.update(veg.id, "I eat fish now", user="alice")
    after_t2 = _tick()

    def texts(at: datetime) -> list[str]:
        return [r.text for r in store.list(user="alice", as_of=at)]

    assert texts(before_t1) == []
    assert texts(between) == ["I'm vegetarian"]
    assert texts(after_t2) == ["I eat fish now"]
    assert [r.id for r in store.list(user="alice")] == [fish.id]
    # list and search agree on what was true then
    hits = store.search("vegetarian fish", user="alice", as_of=between)
    assert [h.record.id for h in hits] == [veg.id]


def test_list_as_of_respects_forget_kinds_and_limit(store):
    a = store.add("I like jazz", user="alice")
    store.add(PreferenceIn(text="raw turn about jazz", kind="episode"), user="alice")
    store.add("I live in Paris", user="alice")
    mid = _tick()
    store.forget(a.id, user="alice")
    now = _tick()
    assert {r.text for r in store.list(user="alice", as_of=mid, kinds=["explicit"])} == {
        "I like jazz",
        "I live in Paris",
    }
    assert [r.text for r in store.list(user="alice", as_of=now, kinds=["explicit"])] == [
        "I live in Paris"
    ]
    assert len(store.list(user="alice", as_of=mid)) == 3  # the episode too
    assert [r.text for r in store.list(user="alice", as_of=mid, limit=1)] == ["I live in Paris"]


def test_list_as_of_never_resurrects_erased_rows(store):
    store.add("I'm vegetarian", user="alice")
    mid = _tick()
    store.erase_user(user="alice")
    assert store.list(user="alice", as_of=mid) == []
    assert store.search("vegetarian", user="alice", as_of=mid) == []


def test_as_of_bad_input(store):
    store.add("x y z", user="alice")
    with pytest.raises(ValidationError, match="no time zone"):
        store.list(user="alice", as_of=datetime(2026, 3, 1))
    with pytest.raises(ValidationError, match="no time zone"):
        store.search("x", user="alice", as_of=datetime(2026, 3, 1))
    with pytest.raises(ValidationError, match="include_history"):
        store.list(user="alice", as_of=datetime.now(UTC), include_history=True)


def test_prune_deletes_old_raw_turns_only(store):
    pref = store.add("I'm vegetarian", user="alice")
    old = store.add(PreferenceIn(text="old raw turn about kiwis", kind="episode"), user="alice")
    for action, kind in (("refuse", "episode"), ("refuse", "explicit"), ("refuse_request", None)):
        payload = {"text": f"refused {action} {kind} text", "kind": kind}
        store.record_event(user="alice", action=action, reason="harm", payload=payload)
    cutoff = _tick()
    store.record_event(user="alice", action="refuse_request", payload={"text": "later request"})
    new = store.add(PreferenceIn(text="new raw turn about figs", kind="episode"), user="alice")
    store.add(PreferenceIn(text="bob's raw turn", kind="episode"), user="bob")

    planned = store.prune(user="alice", before=cutoff, dry_run=True)
    assert [r.id for r in planned] == [old.id]
    assert len(store.list(user="alice", kinds=["episode"])) == 2  # dry run: nothing gone

    gone = store.prune(user="alice", before=cutoff)
    assert [r.id for r in gone] == [old.id]
    assert [r.id for r in store.list(user="alice", kinds=["episode"])] == [new.id]
    assert [r.id for r in store.list(user="alice", kinds=["explicit"])] == [pref.id]
    assert all(h.record.id != old.id for h in store.search("kiwis", user="alice"))
    events = store.events(user="alice")
    assert old.id not in {e.record_id for e in events}
    assert not any("kiwis" in str(e.payload) for e in events)
    assert events[-1].action == "prune" and events[-1].payload["deleted"] == 1
    assert events[-1].payload["refusals_deleted"] == 2
    refusals = [e.payload["text"] for e in events if e.action.startswith("refuse")]
    assert refusals == ["refused refuse explicit text", "later request"]
    assert len(store.list(user="bob", kinds=["episode"])) == 1
    assert store.prune(user="alice", before=cutoff) == []  # nothing left to prune


def test_prune_needs_an_aware_time(store):
    with pytest.raises(ValidationError, match="no time zone"):
        store.prune(user="alice", before=datetime(2026, 3, 1))


def test_summary_on_every_backend(store):
    from personalign.memory.profile import summarize

    assert summarize(store, user="alice").preferences == 0  # unknown user: empty
    veg = store.add(PreferenceIn(text="I'm vegetarian", topic="Food"), user="alice")
    store.add(PreferenceIn(text="episode text", kind="episode"), user="alice")
    mid = _tick()
    store.set_profile({"warmth": 0.7}, user="alice")
    store.update(veg.id, "I eat fish now", user="alice")
    store.add("Reply in French", user="alice")
    store.add("I collect stamps", user="alice")

    s = summarize(store, user="alice", recent=3)
    assert {t: [i.text for i in v] for t, v in s.topics.items()} == {
        "communication": ["Reply in French"],
        "food": ["I eat fish now"],
        "other": ["I collect stamps"],
    }
    assert [c["kind"] for c in s.constraints] == ["language"]
    assert s.weights is not None and s.weights.weights == {"warmth": 0.7}
    assert [c.action for c in s.recent_changes] == ["add", "add", "supersede"]
    then = summarize(store, user="alice", as_of=mid)
    assert [i.text for v in then.topics.values() for i in v] == ["I'm vegetarian"]
    assert [c["kind"] for c in then.constraints] == ["avoid_words"]
    assert then.weights is None
    assert [c.what for c in then.recent_changes] == ["added: I'm vegetarian"]  # no episode


def _bytes_on_disk(db: Path) -> bytes:
    return b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))


def test_pruned_turn_text_leaves_the_sqlite_file(tmp_path, embedder):
    from personalign.backends.stores.sqlite import SQLiteStore

    db = tmp_path / "memory.db"
    store = SQLiteStore(db, embedder)
    turns = [
        PreferenceIn(text=f"zanzibarquokka turn {i} said long ago", kind="episode")
        for i in range(40)
    ]
    store.add_many(turns, user="alice")
    store.add("I'm vegetarian and like quokkas", user="alice")
    store.record_event(
        user="alice", action="refuse_request", payload={"text": "quagmirepelican request"}
    )
    cutoff = _tick()
    store.add(PreferenceIn(text="xylophonewombat fresh turn", kind="episode"), user="alice")
    assert b"zanzibarquokka" in _bytes_on_disk(db)  # the check below can fail
    assert b"quagmirepelican" in _bytes_on_disk(db)
    assert len(store.prune(user="alice", before=cutoff)) == 40
    raw = _bytes_on_disk(db)
    assert b"zanzibarquokka" not in raw and b"quagmirepelican" not in raw
    assert b"xylophonewombat" in raw and b"I'm vegetarian" in raw
    assert store.search("vegetarian", user="alice")
    store.close()


def test_real_path_supersession_as_of_summary_and_retention(tmp_path):
    """The embedded extractor on MiniLM: a change of diet supersedes, ``as_of`` sees each
    version in its time, the summary groups by the extractor's topic, and the configured
    retention prunes the raw turns (their text leaves the file) but no preference."""
    from personalign.config import load_settings
    from personalign.pipeline import open_guarded_memory
    from personalign.types import Message

    settings = load_settings(home=tmp_path, embedder="minilm", retention={"turns_days": 30})
    mem = open_guarded_memory(settings)
    t0 = _tick()
    said = "I'm vegetarian, so please keep that in mind for recipes."
    r = mem.add_messages([Message(role="user", content=said)], user="sam")
    assert [d.action for d in r.decisions] == ["add"]
    mid = _tick()
    changed = "I'm not vegetarian anymore, I eat fish now."
    filler = "My neighbour zanzibarquokka repainted the fence yesterday."
    msgs = [Message(role="user", content=changed), Message(role="user", content=filler)]
    r = mem.add_messages(msgs, user="sam")
    assert "supersede" in [d.action for d in r.decisions]
    after = _tick()

    def prefs(at: datetime) -> list[str]:
        return [p.text for p in mem.list(user="sam", as_of=at, kinds=["explicit", "implicit"])]

    assert prefs(t0) == []
    assert prefs(mid) == [said]
    assert prefs(after) == [changed]
    assert [h.record.text for h in mem.search("vegetarian", user="sam", k=1, as_of=mid)] == [said]

    summary = mem.summary(user="sam")
    assert list(summary.topics) == ["food"]  # the extractor's topic tag
    assert summary.recent_changes[0].what == f"changed: {said} → {changed}"
    assert mem.summary(user="sam", as_of=mid).topics["food"][0].text == said

    db = settings.db_path
    assert b"zanzibarquokka" in _bytes_on_disk(db)
    assert mem.prune(user="sam") == []  # 30 days: nothing is that old yet
    later = datetime.now(UTC) + timedelta(days=31)
    assert len(mem.prune(user="sam", now=later, dry_run=True)) == 3
    gone = mem.prune(user="sam", now=later)
    assert {g.kind for g in gone} == {"episode"} and len(gone) == 3
    assert b"zanzibarquokka" not in _bytes_on_disk(db)
    assert prefs(datetime.now(UTC)) == [changed]  # preferences are never pruned
    assert mem.list(user="sam", kinds=["episode"]) == []
    mem.close()
