"""Contract tests for every MemoryStore backend (parametrized in conftest.store_factory)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from personalign.config import RetrievalConfig
from personalign.errors import ConflictError, NotFoundError, ValidationError
from personalign.types import PreferenceIn


def test_add_get_roundtrip(store):
    rec = store.add(
        PreferenceIn(
            text="  I am vegetarian ",
            kind="explicit",
            topic="diet",
            tags=["food"],
            strength=0.8,
            source="msg:1",
            source_turn_ids=["t1"],
        ),
        user="alice",
    )
    assert rec.text == "I am vegetarian"
    got = store.get(rec.id, user="alice")
    assert got == rec
    assert got.active and got.root_id == rec.id and got.previous_id is None
    assert got.topic == "diet" and got.tags == ["food"] and got.strength == 0.8
    assert got.source_turn_ids == ["t1"]
    assert got.recorded_at.tzinfo is not None


def test_add_many_keeps_order(store):
    texts = [f"preference number {i}" for i in range(20)]
    recs = store.add_many(texts, user="alice")
    assert [r.text for r in recs] == texts
    assert len({r.id for r in recs}) == 20


@pytest.mark.parametrize("bad", ["", "   ", "x" * 4001])
def test_bad_text_rejected(store, bad):
    with pytest.raises(ValidationError):
        store.add(bad, user="alice")
    assert not store.has_user(user="alice")


@pytest.mark.parametrize("bad_user", ["", "a b", "x" * 200, "ü/../"])
def test_bad_user_rejected(store, bad_user):
    with pytest.raises(ValidationError):
        store.add("fine", user=bad_user)


def test_bad_and_unknown_ids(store):
    store.add("something", user="alice")
    with pytest.raises(ValidationError):
        store.get("not-an-id", user="alice")
    with pytest.raises(NotFoundError):
        store.get("0" * 32, user="alice")


def test_users_are_isolated(store):
    a = store.add("alice likes tea", user="alice")
    b = store.add("bob likes tea", user="bob")
    with pytest.raises(NotFoundError):
        store.get(a.id, user="bob")
    with pytest.raises(NotFoundError):
        store.update(a.id, "hijack", user="bob")
    with pytest.raises(NotFoundError):
        store.forget(a.id, user="bob")
    with pytest.raises(NotFoundError):
        store.history(a.id, user="bob")
    assert [r.id for r in store.list(user="bob")] == [b.id]
    assert {h.record.user_id for h in store.search("likes tea", user="bob")} == {"bob"}
    assert all(e.user_id == "bob" for e in store.events(user="bob"))
    exported = store.export(user="bob")
    assert "alice" not in str(exported)


def test_update_supersedes_and_keeps_history(store):
    old = store.add("I am vegetarian", user="alice", reason="said in chat")
    new = store.update(
        old.id, "I stopped being vegetarian; I eat fish now", user="alice", reason="changed mind"
    )
    old_now = store.get(old.id, user="alice")
    assert old_now.text == "I am vegetarian"  # nothing overwritten
    assert not old_now.active and old_now.superseded_by == new.id
    assert old_now.valid_to == new.valid_from
    assert new.active and new.root_id == old.id and new.previous_id == old.id
    assert [r.id for r in store.list(user="alice")] == [new.id]
    assert {r.id for r in store.list(user="alice", include_history=True)} == {old.id, new.id}
    assert [r.id for r in store.history(old.id, user="alice")] == [old.id, new.id]
    assert [r.id for r in store.history(new.id, user="alice")] == [old.id, new.id]
    with pytest.raises(ConflictError):
        store.update(old.id, "again", user="alice")
    hits = store.search("vegetarian", user="alice")
    assert [h.record.id for h in hits] == [new.id]


def test_update_keeps_fields_when_given_text(store):
    old = store.add(
        PreferenceIn(text="short answers", kind="implicit", topic="style"), user="alice"
    )
    new = store.update(old.id, "very short answers", user="alice")
    assert (new.kind, new.topic) == ("implicit", "style")


def test_forget_ends_validity_keeps_history(store):
    rec = store.add("I live in Paris", user="alice")
    gone = store.forget(rec.id, user="alice", reason="moved")
    assert gone.valid_to is not None and not gone.active and gone.superseded_at is None
    assert store.list(user="alice") == []
    assert [r.id for r in store.list(user="alice", include_history=True)] == [rec.id]
    assert store.search("Paris", user="alice") == []
    with pytest.raises(ConflictError):
        store.forget(rec.id, user="alice")


def test_time_aware_search(store):
    old = store.add("I am vegetarian", user="alice")
    time.sleep(0.01)
    between = datetime.now(UTC)
    time.sleep(0.01)
    new = store.update(old.id, "I eat meat again", user="alice")
    assert [h.record.id for h in store.search("vegetarian meat", user="alice")] == [new.id]
    past = store.search("vegetarian meat", user="alice", as_of=between)
    assert [h.record.id for h in past] == [old.id]
    before = store.search("vegetarian", user="alice", as_of=between - timedelta(days=1))
    assert before == []


def test_event_log_records_every_change(store):
    rec = store.add("likes jazz", user="alice", reason="chat")
    new = store.update(rec.id, "likes blues", user="alice", reason="correction")
    store.forget(new.id, user="alice", actor="app", reason="user asked")
    events = store.events(user="alice")
    assert [e.action for e in events] == ["add", "supersede", "forget"]
    assert events[0].reason == "chat" and events[0].payload["text"] == "likes jazz"
    assert events[1].payload["old_id"] == rec.id
    assert events[2].actor == "app" and events[2].reason == "user asked"
    assert events == sorted(events, key=lambda e: e.id)
    assert [e.action for e in store.events(user="alice", limit=2)] == ["supersede", "forget"]


@pytest.mark.parametrize("fusion", ["rrf", "linear"])
def test_search_ranks_relevant_first_with_signals(store, fusion):
    store.add_many(
        [
            "I prefer window seats when I fly",
            "I am allergic to peanuts",
            "I like jazz and blues music",
            "My favourite colour is green",
        ],
        user="alice",
    )
    hits = store.search(
        "peanuts allergy in food", user="alice", k=2, config=RetrievalConfig(fusion=fusion)
    )
    assert hits[0].record.text == "I am allergic to peanuts"
    assert len(hits) == 2
    assert hits[0].score >= hits[1].score
    assert "bm25" in hits[0].matched and "dense" in hits[0].matched
    assert -1.0 <= hits[0].signals["dense"] <= 1.0
    assert 0.0 < hits[0].signals["recency"] <= 1.0


def test_search_kinds_filter_and_k(store):
    store.add(PreferenceIn(text="tea please", kind="episode"), user="alice")
    store.add(PreferenceIn(text="I like tea", kind="explicit"), user="alice")
    hits = store.search("tea", user="alice", kinds=["explicit"])
    assert [h.record.kind for h in hits] == ["explicit"]
    with pytest.raises(ValidationError):
        store.search("tea", user="alice", k=0)
    with pytest.raises(ValidationError):
        store.search("  ", user="alice")


def test_search_unknown_user_is_empty(store):
    assert store.search("anything", user="nobody") == []
    assert not store.has_user(user="nobody")


def test_export_contains_everything(store):
    rec = store.add("likes tea", user="alice")
    store.update(rec.id, "likes green tea", user="alice")
    data = store.export(user="alice")
    assert data["user"] == "alice"
    assert {m["text"] for m in data["memories"]} == {"likes tea", "likes green tea"}
    assert [e["action"] for e in data["events"]] == ["add", "supersede"]
    import json

    json.dumps(data)  # serializable


def test_erase_user_removes_everything_of_that_user_only(store):
    rec = store.add("alice's secret preference", user="alice")
    store.update(rec.id, "alice's newer secret", user="alice")
    store.add("bob keeps this", user="bob")
    assert store.erase_user(user="alice") > 0
    assert not store.has_user(user="alice")
    assert store.list(user="alice", include_history=True) == []
    assert store.events(user="alice") == []
    assert store.users() == ["bob"]
    assert [r.text for r in store.list(user="bob")] == ["bob keeps this"]
    with pytest.raises(NotFoundError):
        store.get(rec.id, user="alice")


def test_reopen_keeps_data(store_factory):
    s1 = store_factory()
    rec = s1.add("persisted", user="alice")
    s1.close()
    s2 = store_factory()
    assert s2.get(rec.id, user="alice").text == "persisted"
    s2.close()


def _exchange(user: str, text: str):
    from personalign.types import Exchange, Message, UsedPreference, new_id, utcnow

    return Exchange(
        id=new_id(),
        user_id=user,
        at=utcnow(),
        messages=[Message(role="user", content=text)],
        response=f"reply to {text}",
        model="fake",
        method="prompt",
        options={"max_new_tokens": 8},
        preferences=[UsedPreference(id="a" * 32, text="likes tea", kind="explicit", score=0.5)],
        latency_ms=12.5,
        retrieval_ms=1.5,
    )


def test_exchange_log(store):
    xs = [_exchange("alice", f"question {i}") for i in range(3)]
    for x in xs:
        store.log_exchange(x, user="alice")
    store.log_exchange(_exchange("bob", "bob's question"), user="bob")
    assert store.exchanges(user="alice") == xs
    assert store.exchanges(user="alice", limit=2) == xs[1:]
    assert store.get_exchange(xs[0].id, user="alice") == xs[0]
    with pytest.raises(NotFoundError):
        store.get_exchange(xs[0].id, user="bob")
    with pytest.raises(ValidationError):
        store.log_exchange(_exchange("alice", "x"), user="bob")
    assert len(store.export(user="alice")["exchanges"]) == 3
    store.erase_user(user="alice")
    assert store.exchanges(user="alice") == []
    assert len(store.exchanges(user="bob")) == 1


def test_profile_weights_have_history(store):
    assert store.get_profile(user="alice") is None
    first = store.set_profile({"conciseness": 0.8, "warmth": 0.2}, user="alice")
    second = store.set_profile(
        {"conciseness": 0.3, "warmth": 0.9},
        user="alice",
        source="feedback",
        uncertainty={"warmth": 0.1},
        reason="estimated",
    )
    assert store.get_profile(user="alice").weights == {"conciseness": 0.3, "warmth": 0.9}
    hist = store.profile_history(user="alice")
    assert [p.weights for p in hist] == [first.weights, second.weights]
    assert hist[1].source == "feedback" and hist[1].uncertainty == {"warmth": 0.1}
    assert store.get_profile(user="bob") is None
    assert store.export(user="alice")["profile"][0]["weights"]["conciseness"] == 0.8
    for bad in ({}, {"warmth": 1.5}, {"Bad Name": 0.5}, {"warmth": float("nan")}):
        with pytest.raises(ValidationError):
            store.set_profile(bad, user="alice")
    store.erase_user(user="alice")
    assert store.profile_history(user="alice") == []


def test_record_event_without_a_memory(store):
    store.record_event(user="alice", action="refuse", reason="weapons", payload={"text": "x"})
    (e,) = store.events(user="alice")
    assert (e.action, e.actor, e.reason, e.record_id) == ("refuse", "system", "weapons", None)
    assert e.payload == {"text": "x"}
    assert store.has_user(user="alice")
    store.erase_user(user="alice")
    assert store.events(user="alice") == []


# -- feedback -----------------------------------------------------------------------------


def test_feedback_is_linked_ordered_exported_and_erased(store):
    from personalign.types import FeedbackIn

    x = _exchange("alice", "how do I boil an egg?")
    store.log_exchange(x, user="alice")
    good = store.add_feedback(
        FeedbackIn(kind="rating", scale="thumbs", value=1, exchange_id=x.id, source="cli"),
        user="alice",
    )
    pair = store.add_feedback(
        FeedbackIn(kind="pairwise", prompt="egg?", chosen="Boil 7 min.", rejected="Well..."),
        user="alice",
    )
    crit = store.add_feedback(
        FeedbackIn(kind="critique", text="Too long.", exchange_id=x.id), user="alice"
    )
    assert good.user_id == "alice" and good.id and good.at.tzinfo is not None
    assert store.feedback(user="alice") == [good, pair, crit]
    assert store.feedback(user="alice", limit=2) == [pair, crit]
    assert store.feedback(user="bob") == []
    assert [e.action for e in store.events(user="alice")].count("feedback") == 3
    # linked to the user's own exchanges only
    with pytest.raises(NotFoundError):
        store.add_feedback(FeedbackIn(kind="critique", text="no", exchange_id=x.id), user="bob")
    with pytest.raises(NotFoundError):
        store.add_feedback(
            FeedbackIn(kind="critique", text="no", exchange_id="b" * 32), user="alice"
        )
    assert len(store.export(user="alice")["feedback"]) == 3
    store.add_feedback(FeedbackIn(kind="override", weights={"warmth": 0.7}), user="bob")
    assert store.erase_user(user="alice") > 0
    assert store.feedback(user="alice") == []
    assert [f.kind for f in store.feedback(user="bob")] == ["override"]


@pytest.mark.parametrize(
    "bad",
    [
        {"kind": "rating", "scale": "thumbs", "value": 3, "response": "r"},
        {"kind": "rating", "scale": "stars", "value": 6, "response": "r"},
        {"kind": "rating", "scale": "stars", "value": 4},
        {"kind": "pairwise", "chosen": "same", "rejected": "same"},
        {"kind": "edit", "exchange_id": "a" * 32},
        {"kind": "critique", "text": "   ", "response": "r"},
        {"kind": "override", "weights": {"warmth": 2.0}},
        {"kind": "critique", "text": "x", "exchange_id": "not-hex"},
    ],
)
def test_bad_feedback_rejected(bad):
    from personalign.types import FeedbackIn

    with pytest.raises(ValidationError):
        FeedbackIn(**bad)


def test_feedback_rows_are_append_only(store):
    from personalign.types import FeedbackIn

    store.add_feedback(FeedbackIn(kind="override", weights={"warmth": 0.7}), user="alice")
    if hasattr(store, "_conn"):  # SQLite
        import sqlite3

        with pytest.raises(sqlite3.IntegrityError):
            store._conn().execute("UPDATE feedback SET kind = 'rating'")
        with pytest.raises(sqlite3.IntegrityError):
            store._conn().execute("DELETE FROM feedback")
    else:  # PostgreSQL
        from personalign.errors import BackendError

        for sql in ("UPDATE feedback SET kind = 'rating'", "DELETE FROM feedback"):
            with pytest.raises(BackendError), store._tx() as conn:
                conn.execute(sql)
    assert len(store.feedback(user="alice")) == 1
