"""PostgreSQL-specific guarantees: database-enforced append-only log and immutable versions,
one-transaction erasure, migrations recorded once, concurrent writers losing nothing.

Needs ``PERSONALIGN_TEST_DATABASE_URL`` (``scripts/pg.sh start DIR``); skipped otherwise.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote

import pytest

from personalign.errors import BackendError, ConfigError, ConflictError
from personalign.testing import HashingEmbedder
from personalign.types import Exchange, Message, PreferenceIn, new_id, utcnow

psycopg = pytest.importorskip("psycopg")

from personalign.backends.stores.postgres import PostgresStore  # noqa: E402
from personalign.backends.stores.postgres_migrations import MIGRATIONS  # noqa: E402


@pytest.fixture
def open_pg(pg_conninfo: str) -> Iterator[Callable[..., PostgresStore]]:
    """Open stores on the test schema; all are closed at teardown."""
    opened: list[PostgresStore] = []

    def make(**kw: Any) -> PostgresStore:
        store = PostgresStore(pg_conninfo, kw.pop("embedder", HashingEmbedder()), **kw)
        opened.append(store)
        return store

    yield make
    for s in opened:
        s.close()


@pytest.fixture
def raw(pg_conninfo: str) -> Iterator[Any]:
    """A plain autocommit connection on the test schema."""
    with psycopg.connect(pg_conninfo, autocommit=True) as conn:
        yield conn


def _exchange(user: str, text: str) -> Exchange:
    return Exchange(
        id=new_id(),
        user_id=user,
        at=utcnow(),
        messages=[Message(role="user", content=text)],
        response="ok",
        model="fake",
        method="plain",
        latency_ms=1.0,
    )


def test_event_log_profiles_and_versions_are_append_only(open_pg, raw):
    store = open_pg()
    rec = store.add("likes tea", user="alice")
    new = store.update(rec.id, "likes green tea", user="alice")
    store.set_profile({"warmth": 0.5}, user="alice")
    refused = [
        ("UPDATE events SET action = 'x'", "append-only"),
        ("DELETE FROM events", "append-only"),
        ("TRUNCATE events", "append-only"),
        ("UPDATE profiles SET source = 'x'", "append-only"),
        ("DELETE FROM profiles", "append-only"),
        ("TRUNCATE profiles", "append-only"),
        ("TRUNCATE memories CASCADE", "append-only"),
        (f"UPDATE memories SET text = 'changed' WHERE id = '{new.id}'", "immutable"),
        (f"UPDATE memories SET user_id = 'bob' WHERE id = '{new.id}'", "immutable"),
        (f"DELETE FROM memories WHERE id = '{new.id}'", "immutable"),
        (f"UPDATE memories SET superseded_by = NULL WHERE id = '{rec.id}'", "closed"),
        (f"UPDATE memories SET valid_to = now() WHERE id = '{rec.id}'", "closed"),
    ]
    for sql, message in refused:
        with pytest.raises(psycopg.errors.RaiseException, match=message):
            raw.execute(sql)
    # The erase switch is transaction-local: outside erase_user it is off again.
    assert raw.execute("SELECT current_setting('personalign.erasing', true)").fetchone()[0] in (
        None,
        "",
    )
    assert [e.action for e in store.events(user="alice")] == ["add", "supersede", "set_profile"]
    assert store.get(rec.id, user="alice").text == "likes tea"


def _user_tables(raw: Any) -> list[str]:
    rows = raw.execute(
        "SELECT table_name FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND column_name = 'user_id' ORDER BY 1"
    ).fetchall()
    return [r[0] for r in rows]


def _fill(store: PostgresStore, user: str) -> None:
    recs = store.add_many([f"{user} preference {i}" for i in range(5)], user=user)
    store.update(recs[0].id, f"{user} newer preference", user=user)
    store.forget(recs[1].id, user=user)
    store.log_exchange(_exchange(user, "question"), user=user)
    store.set_profile({"warmth": 0.3}, user=user)


def test_erase_user_empties_every_table_in_one_transaction(open_pg, raw):
    store = open_pg()
    _fill(store, "alice")
    _fill(store, "bob")
    tables = _user_tables(raw)
    assert set(tables) >= {"memories", "events", "exchanges", "profiles", "users"}

    def count(user: str) -> int:
        return sum(
            raw.execute(f"SELECT count(*) FROM {t} WHERE user_id = %s", (user,)).fetchone()[0]
            for t in tables
        )

    before_alice, before_bob = count("alice"), count("bob")
    # A failure at the last table rolls the whole erasure back.
    raw.execute(
        "CREATE FUNCTION fail() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'injected failure'; END $$"
    )
    raw.execute("CREATE TRIGGER fail BEFORE DELETE ON users FOR EACH ROW EXECUTE FUNCTION fail()")
    with pytest.raises(BackendError, match="injected failure"):
        store.erase_user(user="alice")
    assert count("alice") == before_alice
    raw.execute("DROP TRIGGER fail ON users")

    assert store.erase_user(user="alice") == before_alice
    assert count("alice") == 0
    assert count("bob") == before_bob
    assert store.users() == ["bob"]
    assert store.search("preference", user="alice") == []
    assert len(store.search("preference", user="bob")) > 0


def test_migrations_are_named_and_recorded_once(open_pg, raw):
    with ThreadPoolExecutor(4) as pool:  # concurrent first opens serialize on a lock
        list(pool.map(lambda _: open_pg(pool_size=1).close(), range(4)))
    open_pg().close()
    names = [r[0] for r in raw.execute("SELECT name FROM _migrations ORDER BY name")]
    assert names == [n for n, _ in MIGRATIONS]
    index = raw.execute(
        "SELECT indexdef FROM pg_indexes "
        "WHERE schemaname = current_schema() AND indexname = 'memories_embedding_hnsw'"
    ).fetchone()[0]
    assert "hnsw" in index and "vector_cosine_ops" in index


def test_embedder_of_another_dimension_is_refused(open_pg):
    open_pg().close()
    with pytest.raises(ConfigError, match="384-dimensional"):
        open_pg(embedder=HashingEmbedder(dim=64))


def test_concurrent_writers_from_threads_lose_nothing(open_pg, raw):
    store, other = open_pg(pool_size=4), open_pg(pool_size=2)  # two "processes"
    n_threads, per_thread = 8, 25
    errors: list[BaseException] = []
    ids: list[str] = []
    lock = threading.Lock()

    def work(t: int) -> None:
        s = store if t % 2 else other
        try:
            for i in range(per_thread):
                rec = s.add(f"writer {t} preference {i}", user=f"user{i % 4}")
                s.search(f"preference {i}", user=f"user{(i + 1) % 4}", k=3)
                with lock:
                    ids.append(rec.id)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not errors, errors
    total = n_threads * per_thread
    assert len(set(ids)) == total
    assert sum(len(store.list(user=f"user{u}")) for u in range(4)) == total
    assert sum(len(store.events(user=f"user{u}")) for u in range(4)) == total
    stored = {r[0] for r in raw.execute("SELECT id FROM memories")}
    assert stored == set(ids)


def test_concurrent_updates_of_one_version_have_one_winner(open_pg):
    store = open_pg(pool_size=8)
    rec = store.add("likes tea", user="alice")
    barrier = threading.Barrier(8)

    def update(i: int) -> str:
        barrier.wait()
        try:
            return store.update(rec.id, f"likes tea, version {i}", user="alice").id
        except ConflictError:
            return "conflict"

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(update, range(8)))
    winners = [r for r in results if r != "conflict"]
    assert len(winners) == 1
    assert [r.id for r in store.history(rec.id, user="alice")] == [rec.id, winners[0]]
    assert [r.id for r in store.list(user="alice")] == winners


def test_hnsw_path_agrees_with_exact_scan(open_pg):
    exact = open_pg()
    texts = [f"note {i} about topic {i % 17} and colour {i % 5}" for i in range(300)]
    exact.add_many(texts, user="alice")
    exact.add_many(["unrelated words entirely"] * 50, user="bob")
    approx = open_pg()
    approx.exact_scan_max = 10  # alice has 300 rows: the HNSW path with iterative scan
    for query in ("topic 3 and colour 1", "note 42", "colour 4"):
        a = exact.search(query, user="alice", k=5)
        b = approx.search(query, user="alice", k=5)
        assert {h.record.user_id for h in b} == {"alice"}
        # approximate search, and several rows tie on the query's words: the best hit agrees
        # in score, and the top five mostly coincide
        assert abs(b[0].score - a[0].score) < 1e-6 or b[0].record.id == a[0].record.id
        assert len({h.record.id for h in a} & {h.record.id for h in b}) >= 4
    # the filter never starves a small user on the HNSW path
    approx.exact_scan_max = 0
    assert len(approx.search("unrelated", user="bob", k=5)) == 5
    assert approx.search("note", user="alice", k=3, kinds=["episode"]) == []


def test_as_of_and_kinds_on_postgres(open_pg):
    store = open_pg()
    store.add(PreferenceIn(text="tea please", kind="episode"), user="alice")
    old = store.add(PreferenceIn(text="I like tea", kind="explicit"), user="alice")
    mid = utcnow()
    store.forget(old.id, user="alice")
    assert [h.record.kind for h in store.search("tea", user="alice")] == ["episode"]
    past = store.search("tea", user="alice", as_of=mid, kinds=["explicit"])
    assert [h.record.id for h in past] == [old.id]


def test_open_store_selects_postgres(pg_conninfo):
    from psycopg.conninfo import conninfo_to_dict

    from personalign.backends.stores import open_store
    from personalign.config import Settings

    base = os.environ["PERSONALIGN_TEST_DATABASE_URL"]
    options = conninfo_to_dict(pg_conninfo)["options"]
    url = f"{base}{'&' if '?' in base else '?'}options={quote(str(options))}"
    store = open_store(Settings(database_url=url), HashingEmbedder())
    try:
        assert isinstance(store, PostgresStore)
        rec = store.add("via settings", user="alice")
        assert store.get(rec.id, user="alice").text == "via settings"
    finally:
        store.close()


def test_unreachable_server_is_a_backend_error():
    with pytest.raises(BackendError, match="cannot connect"):
        PostgresStore("postgresql://postgres@127.0.0.1:9/none", HashingEmbedder(), timeout=2)
