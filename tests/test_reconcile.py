"""Reconciliation: merge / supersede / add / skip against a user's active preferences."""

from __future__ import annotations

import pytest

from personalign.memory.extract import Candidate
from personalign.memory.reconcile import ReconcileConfig, apply, decide, polarity


def cand(text: str, **kw: object) -> Candidate:
    return Candidate(text=text, source_turn_ids=["t1"], reason="test", **kw)  # type: ignore[arg-type]


def test_polarity() -> None:
    assert polarity("I love spicy food") == 1
    assert polarity("I don't eat spicy food") == -1
    assert polarity("I'm allergic to nuts") == -1


def test_add_when_memory_is_empty(store) -> None:  # type: ignore[no-untyped-def]
    d = decide(store, cand("I love jazz music"), user="alice")
    assert d.action == "add" and d.target is None
    rec = apply(store, d, user="alice", source="conversation:test")
    assert rec is not None and rec.kind == "explicit" and rec.source_turn_ids == ["t1"]
    assert rec.meta["extraction_reason"] == "test"
    ev = store.events(user="alice")[-1]
    assert (
        ev.action == "add"
        and ev.reason.startswith("add: new preference")
        and ev.actor == "extractor"
    )


def test_duplicate_merges_without_a_new_row(store) -> None:  # type: ignore[no-untyped-def]
    first = apply(
        store, decide(store, cand("I love jazz music"), user="alice"), user="alice", source="s"
    )
    d = decide(store, cand("I love jazz music."), user="alice")
    assert d.action == "merge" and d.target is not None and d.target.id == first.id  # type: ignore[union-attr]
    assert apply(store, d, user="alice", source="s") is None
    assert len(store.list(user="alice")) == 1


def test_change_cue_supersedes_and_keeps_history(store) -> None:  # type: ignore[no-untyped-def]
    old = apply(
        store, decide(store, cand("I eat meat every day"), user="alice"), user="alice", source="s"
    )
    apply(store, decide(store, cand("I love jazz music"), user="alice"), user="alice", source="s")
    d = decide(store, cand("I no longer eat meat every day", change=True), user="alice")
    assert d.action == "supersede" and d.target is not None and d.target.id == old.id  # type: ignore[union-attr]
    new = apply(store, d, user="alice", source="s")
    assert new is not None and new.previous_id == old.id  # type: ignore[union-attr]
    active = {p.text for p in store.list(user="alice")}
    assert active == {"I no longer eat meat every day", "I love jazz music"}
    assert [p.id for p in store.history(new.id, user="alice")] == [old.id, new.id]  # type: ignore[union-attr]
    assert store.events(user="alice")[-1].reason.startswith("supersede: change of preference")


def test_bare_contradiction_is_a_conflict_not_a_supersession(store) -> None:  # type: ignore[no-untyped-def]
    old = apply(
        store,
        decide(store, cand("I like spicy food a lot"), user="alice"),
        user="alice",
        source="s",
    )
    d = decide(store, cand("I don't like spicy food a lot"), user="alice")
    assert d.action == "conflict" and "opposite polarity" in d.reason
    assert d.target is not None and d.target.id == old.id  # type: ignore[union-attr]
    new = apply(store, d, user="alice", source="s")
    assert new is not None
    assert {p.id for p in store.list(user="alice")} == {old.id, new.id}  # type: ignore[union-attr]
    [c] = store.conflicts(user="alice")
    assert (c.older_id, c.newer_id, c.status) == (old.id, new.id, "open")  # type: ignore[union-attr]
    assert store.events(user="alice")[-1].action == "conflict"


def test_without_conflicts_a_contradiction_supersedes_as_before(store) -> None:  # type: ignore[no-untyped-def]
    apply(
        store,
        decide(store, cand("I like spicy food a lot"), user="alice"),
        user="alice",
        source="s",
    )
    cfg = ReconcileConfig(contradiction_cosine=0.5, conflicts=False)
    d = decide(store, cand("I don't like spicy food a lot"), user="alice", config=cfg)
    assert d.action == "supersede" and "opposite polarity" in d.reason


def test_tentative_candidate_with_nothing_to_change_is_skipped(store) -> None:  # type: ignore[no-untyped-def]
    d = decide(store, cand("I stopped using that thing", change=True, tentative=True), user="bob")
    assert d.action == "skip"
    assert apply(store, d, user="bob", source="s") is None
    assert store.list(user="bob") == []


def test_episodes_are_not_reconciled_against(store) -> None:  # type: ignore[no-untyped-def]
    from personalign.types import PreferenceIn

    store.add(PreferenceIn(text="I love jazz music", kind="episode"), user="alice")
    assert decide(store, cand("I love jazz music"), user="alice").action == "add"


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_config_validates(bad: float) -> None:
    with pytest.raises(ValueError):
        ReconcileConfig(duplicate_cosine=bad)


def test_change_promotes_an_earlier_episode_into_history(store) -> None:  # type: ignore[no-untyped-def]
    from personalign.types import PreferenceIn

    ep = store.add(
        PreferenceIn(text="I drink coffee every morning", kind="episode", source_turn_ids=["t0"]),
        user="alice",
    )
    d = decide(
        store,
        cand("I don't drink coffee every morning anymore", change=True, tentative=True),
        user="alice",
        config=ReconcileConfig(promote_cosine=0.5),
    )
    assert d.action == "supersede" and d.promote is not None and d.promote.id == ep.id
    new = apply(store, d, user="alice", source="s")
    assert new is not None
    versions = store.history(new.id, user="alice")
    assert [v.text for v in versions] == [
        "I drink coffee every morning",
        "I don't drink coffee every morning anymore",
    ]
    assert versions[0].source_turn_ids == ["t0"] and not versions[0].active
    assert versions[0].meta["promoted_from_episode"] == ep.id
