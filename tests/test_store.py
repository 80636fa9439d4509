"""Tests for switch.store: round trips, filters, durability, migrations, concurrency."""

from __future__ import annotations

import asyncio
import math
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from switch import store as store_mod
from switch.store import LATEST_SCHEMA_VERSION, OutboxItem, Store, StoreError


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "switch.db"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[Store]:
    s = Store(str(db_path))
    await s.start()
    try:
        yield s
    finally:
        await s.close()


def make_cdr(call_id: str, started_at: float, **kw: Any) -> dict[str, Any]:
    cdr: dict[str, Any] = {
        "call_id": call_id, "tenant": "t1", "caller": "1001", "callee": "1002",
        "caller_id_number": "+15550001", "caller_id_name": "Alice", "started_at": started_at,
        "answered_at": started_at + 2.0, "ended_at": started_at + 12.5, "duration": 12.5,
        "billsec": 10.5, "outcome": "answered", "sip_status": 200, "q850": 16,
        "legs": [{"leg": "a", "uri": "sip:1001@x"}, {"leg": "b", "uri": "sip:1002@y"}],
        "recording_ids": ["r1"], "frontend": "hipcall", "external_id": f"ext-{call_id}",
        "variables": {"k": "v"},
    }
    cdr.update(kw)
    return cdr


def make_item(item_id: str, next_at: float, **kw: Any) -> OutboxItem:
    fields: dict[str, Any] = {
        "id": item_id, "event_id": item_id.split(":")[0], "target": "crm",
        "url": "http://127.0.0.1:9/hook", "body": b'{"id":"x"}',
        "headers": {"X-Vendor": "1"}, "created_at": next_at, "next_at": next_at,
    }
    fields.update(kw)
    return OutboxItem(**fields)


# --------------------------------------------------------------------------- lifecycle


async def test_start_creates_parent_dir_and_latest_schema(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "x.db"
    s = Store(str(path))
    assert s.schema_version == 0
    assert not await s.ping()
    await s.start()
    try:
        assert path.exists()
        assert s.schema_version == LATEST_SCHEMA_VERSION
        assert s.dialect == "sqlite"
        assert await s.ping()
    finally:
        await s.close()
    assert not await s.ping()


async def test_sqlite_pragmas(store: Store) -> None:
    async with store._tx() as conn:
        journal = await conn.scalar(sa.text("PRAGMA journal_mode"))
        sync = await conn.scalar(sa.text("PRAGMA synchronous"))
        busy = await conn.scalar(sa.text("PRAGMA busy_timeout"))
    assert str(journal).lower() == "wal"
    assert sync == 2  # FULL
    assert busy is not None and int(busy) > 0


async def test_plain_sqlite_url_gets_async_driver(tmp_path: Path) -> None:
    s = Store(f"sqlite:///{tmp_path / 'u.db'}")
    await s.start()
    try:
        await s.add_cdr(make_cdr("c1", 1.0))
        assert (await s.get_cdr("c1")) is not None
    finally:
        await s.close()


async def test_memory_store_with_concurrent_use() -> None:
    s = Store(":memory:")
    await s.start()
    try:
        await asyncio.gather(
            *(s.add_cdr(make_cdr(f"c{i}", float(i))) for i in range(20)),
            *(s.list_cdrs() for _ in range(10)),
        )
        assert len(await s.list_cdrs(limit=100)) == 20
    finally:
        await s.close()


@pytest.mark.parametrize("url", [
    "nosuchdialect://host/db",
    "postgresql+nosuchdriver://u:p@127.0.0.1:1/db",
    "postgresql+asyncpg://u:secretpw@127.0.0.1:1/db",  # driver missing or port refused
    "",
])
async def test_bad_url_raises_store_error(url: str) -> None:
    s = Store(url)
    with pytest.raises(StoreError) as info:
        await s.start()
    assert "secretpw" not in str(info.value)
    assert not await s.ping()


async def test_unopenable_sqlite_path_raises_store_error(tmp_path: Path) -> None:
    # A directory cannot be opened as a database file.
    with pytest.raises(StoreError):
        await Store(str(tmp_path)).start()


async def test_use_before_start_raises_store_error(db_path: Path) -> None:
    with pytest.raises(StoreError, match="not started"):
        await Store(str(db_path)).get_cdr("x")


# --------------------------------------------------------------------------- CDRs


async def test_cdr_round_trip_with_extra_keys(store: Store) -> None:
    cdr = make_cdr("call-1", 1000.0, hangup_side="callee", cost={"eur": 0.12})
    await store.add_cdr(cdr)
    got = await store.get_cdr("call-1")
    assert got == cdr
    assert await store.get_cdr("nope") is None


async def test_cdr_defaults_for_missing_keys(store: Store) -> None:
    await store.add_cdr({"call_id": "bare", "started_at": 5.0})
    got = await store.get_cdr("bare")
    assert got is not None
    assert got["legs"] == [] and got["recording_ids"] == [] and got["variables"] == {}
    assert got["tenant"] is None and got["sip_status"] is None


async def test_cdr_upsert_replaces_record(store: Store) -> None:
    await store.add_cdr(make_cdr("call-1", 1000.0, outcome="ringing", note="first"))
    await store.add_cdr(make_cdr("call-1", 1000.0, outcome="answered", billsec=99.0))
    got = await store.get_cdr("call-1")
    assert got is not None
    assert got["outcome"] == "answered" and got["billsec"] == 99.0
    assert "note" not in got  # a replacement drops the old extra keys
    assert len(await store.list_cdrs()) == 1


async def test_cdr_validation(store: Store) -> None:
    with pytest.raises(ValueError):
        await store.add_cdr({"caller": "x"})
    with pytest.raises(ValueError):
        await store.add_cdr(make_cdr("nan", 1.0, variables={"x": math.nan}))
    assert await store.get_cdr("nan") is None


async def test_list_cdrs_filters_and_order(store: Store) -> None:
    await store.add_cdr(make_cdr("a", 100.0, tenant="t1", outcome="answered"))
    await store.add_cdr(make_cdr("b", 300.0, tenant="t2", outcome="busy", frontend="quickom"))
    await store.add_cdr(make_cdr("c", 200.0, tenant="t1", outcome="busy"))
    await store.add_cdr(make_cdr("d", 400.0, tenant="t1", outcome="answered",
                                 external_id="X-9"))

    def ids(rows: list[dict[str, Any]]) -> list[str]:
        return [r["call_id"] for r in rows]

    assert ids(await store.list_cdrs()) == ["d", "b", "c", "a"]
    assert ids(await store.list_cdrs(limit=2)) == ["d", "b"]
    assert ids(await store.list_cdrs(limit=2, offset=2)) == ["c", "a"]
    assert ids(await store.list_cdrs(since=200.0)) == ["d", "b", "c"]
    assert ids(await store.list_cdrs(until=300.0)) == ["c", "a"]
    assert ids(await store.list_cdrs(since=200.0, until=400.0)) == ["b", "c"]
    assert ids(await store.list_cdrs(tenant="t1")) == ["d", "c", "a"]
    assert ids(await store.list_cdrs(outcome="busy")) == ["b", "c"]
    assert ids(await store.list_cdrs(frontend="quickom")) == ["b"]
    assert ids(await store.list_cdrs(frontend="hipcall", tenant="t1",
                                     outcome="answered")) == ["d", "a"]
    assert ids(await store.list_cdrs(external_id="X-9")) == ["d"]
    assert await store.list_cdrs(tenant="none") == []
    assert await store.list_cdrs(limit=0) == []


# --------------------------------------------------------------------------- recordings


async def test_recording_round_trip_and_list(store: Store) -> None:
    rec1 = {"id": "r1", "call_id": "c1", "path": "/rec/r1.wav", "started_at": 10.0,
            "duration": 5.5, "channels": 2, "sample_rate": 8000, "legs": ["a", "b"],
            "created_at": 11.0}
    rec2 = {**rec1, "id": "r2", "path": "/rec/r2.wav", "created_at": 20.0, "format": "wav"}
    rec3 = {**rec1, "id": "r3", "call_id": "c2", "created_at": 15.0}
    for rec in (rec1, rec2, rec3):
        await store.add_recording(rec)
    assert await store.get_recording("r1") == rec1
    assert await store.get_recording("r2") == rec2
    assert await store.get_recording("zz") is None
    assert [r["id"] for r in await store.list_recordings()] == ["r2", "r3", "r1"]
    assert [r["id"] for r in await store.list_recordings(call_id="c1")] == ["r2", "r1"]
    assert [r["id"] for r in await store.list_recordings(limit=1)] == ["r2"]
    await store.add_recording({**rec1, "duration": 7.0})  # upsert
    got = await store.get_recording("r1")
    assert got is not None and got["duration"] == 7.0


async def test_recording_created_at_defaults(store: Store) -> None:
    await store.add_recording({"id": "r", "call_id": "c", "path": "/p"})
    got = await store.get_recording("r")
    assert got is not None
    assert isinstance(got["created_at"], float) and got["created_at"] > 0
    assert got["legs"] == []


# --------------------------------------------------------------------------- schedule


async def test_schedule_put_get_update(store: Store) -> None:
    await store.schedule_put("job1", state="pending", due_at=500.0, attempt=0,
                             data={"to": "1002", "nested": {"a": [1, 2]}})
    first = await store.schedule_get("job1")
    assert first is not None
    assert first["state"] == "pending" and first["due_at"] == 500.0
    assert first["attempt"] == 0 and first["data"] == {"to": "1002", "nested": {"a": [1, 2]}}
    assert first["created_at"] == first["updated_at"]

    await store.schedule_put("job1", state="retry", due_at=560.0, attempt=1,
                             data={"to": "1002", "last": "busy"})
    second = await store.schedule_get("job1")
    assert second is not None
    assert (second["state"], second["due_at"], second["attempt"]) == ("retry", 560.0, 1)
    assert second["data"] == {"to": "1002", "last": "busy"}
    assert second["created_at"] == first["created_at"]
    assert second["updated_at"] >= first["updated_at"]
    assert set(second) == {"id", "state", "due_at", "attempt", "data", "created_at",
                           "updated_at"}
    assert await store.schedule_get("missing") is None


async def test_schedule_list_filters_and_order(store: Store) -> None:
    for job, state, due in (("j1", "pending", 30.0), ("j2", "done", 10.0),
                            ("j3", "pending", 20.0), ("j4", "running", 40.0)):
        await store.schedule_put(job, state=state, due_at=due, attempt=0, data={})
    assert [j["id"] for j in await store.schedule_list()] == ["j2", "j3", "j1", "j4"]
    assert [j["id"] for j in await store.schedule_list(states=["pending"])] == ["j3", "j1"]
    assert [j["id"] for j in await store.schedule_list(
        states=("pending", "running"), due_before=30.0)] == ["j3", "j1"]
    assert [j["id"] for j in await store.schedule_list(due_before=20.0)] == ["j2", "j3"]
    assert [j["id"] for j in await store.schedule_list(limit=1)] == ["j2"]
    assert await store.schedule_list(states=[]) == []
    assert await store.schedule_delete("j2")
    assert not await store.schedule_delete("j2")
    assert await store.schedule_get("j2") is None


# --------------------------------------------------------------------------- outbox


async def test_outbox_round_trip_and_idempotent_add(store: Store) -> None:
    item = make_item("e1:crm", 100.0, max_attempts=4)
    await store.outbox_add(item)
    await store.outbox_add(make_item("e1:crm", 100.0, body=b"other"))  # ignored
    got = await store.outbox_get("e1:crm")
    assert got == item
    assert await store.outbox_get("nope") is None
    assert await store.outbox_counts() == {"pending": 1, "delivered": 0, "dead": 0}


async def test_outbox_due_filters_and_orders(store: Store) -> None:
    await store.outbox_add_many([
        make_item("late:t", 300.0),
        make_item("first:t", 100.0),
        make_item("second:t", 200.0),
        make_item("done:t", 50.0, state="delivered", delivered_at=60.0),
        make_item("dead:t", 50.0, state="dead"),
    ])
    assert [i.id for i in await store.outbox_due(250.0)] == ["first:t", "second:t"]
    assert [i.id for i in await store.outbox_due(250.0, limit=1)] == ["first:t"]
    assert await store.outbox_due(99.0) == []
    assert await store.outbox_next_due() == 100.0
    assert await store.outbox_next_due(exclude=["first:t"]) == 200.0
    assert await store.outbox_counts() == {"pending": 3, "delivered": 1, "dead": 1}


async def test_outbox_update(store: Store) -> None:
    item = make_item("e:t", 100.0)
    await store.outbox_add(item)
    item.attempts, item.next_at, item.last_error = 1, 160.0, "HTTP 500"
    await store.outbox_update(item)
    got = await store.outbox_get("e:t")
    assert got is not None
    assert (got.attempts, got.next_at, got.last_error, got.state) == (1, 160.0, "HTTP 500",
                                                                     "pending")
    assert await store.outbox_due(150.0) == []
    item.state, item.attempts, item.delivered_at, item.last_error = "delivered", 2, 170.0, None
    await store.outbox_update(item)
    got = await store.outbox_get("e:t")
    assert got is not None and got.state == "delivered" and got.delivered_at == 170.0
    assert got.last_error is None
    assert await store.outbox_due(1e9) == []
    with pytest.raises(StoreError):
        await store.outbox_update(make_item("ghost:t", 1.0))


async def test_outbox_prune(store: Store) -> None:
    await store.outbox_add_many([
        make_item("old-done:t", 10.0, state="delivered"),
        make_item("old-dead:t", 10.0, state="dead"),
        make_item("old-pending:t", 10.0),
        make_item("new-done:t", 500.0, state="delivered"),
    ])
    assert await store.outbox_prune(100.0) == 2
    assert await store.outbox_get("old-done:t") is None
    assert await store.outbox_get("old-pending:t") is not None
    assert await store.outbox_get("new-done:t") is not None


# --------------------------------------------------------------------------- durability


async def test_data_survives_close_and_reopen(db_path: Path) -> None:
    s = Store(str(db_path))
    await s.start()
    await s.add_cdr(make_cdr("c1", 1.0))
    await s.add_recording({"id": "r1", "call_id": "c1", "path": "/x", "created_at": 2.0})
    await s.schedule_put("j1", state="pending", due_at=3.0, attempt=2, data={"a": 1})
    await s.outbox_add(make_item("e1:t", 4.0))
    await s.close()

    s2 = Store(f"sqlite+aiosqlite:///{db_path}")
    await s2.start()
    try:
        assert await s2.get_cdr("c1") == make_cdr("c1", 1.0)
        rec = await s2.get_recording("r1")
        assert rec is not None and rec["path"] == "/x"
        job = await s2.schedule_get("j1")
        assert job is not None and job["attempt"] == 2 and job["data"] == {"a": 1}
        assert await s2.outbox_get("e1:t") == make_item("e1:t", 4.0)
        assert s2.schema_version == LATEST_SCHEMA_VERSION
    finally:
        await s2.close()


# --------------------------------------------------------------------------- migrations


async def test_migration_upgrade_keeps_rows(db_path: Path) -> None:
    old = Store(str(db_path))
    assert await old._migrate(upto=1) == 1
    assert old.schema_version == 1
    await old.close()

    # Rows written by "old software", i.e. straight into the v1 schema.
    con = sqlite3.connect(db_path)
    with con:
        cols = {r[1] for r in con.execute("PRAGMA table_info(cdrs)")}
        assert "extra" not in cols  # really a v1 database
        con.execute(
            "INSERT INTO cdrs (call_id, tenant, started_at, outcome, legs, recording_ids,"
            " variables) VALUES ('old-call', 't9', 42.0, 'answered', '[]', '[\"r\"]',"
            " '{\"x\":\"y\"}')")
        con.execute(
            "INSERT INTO schedule VALUES ('old-job', 'pending', 7.0, 1, '{\"n\":1}', 1.0, 2.0)")
        con.execute(
            "INSERT INTO outbox (id, event_id, target, url, body, headers, created_at,"
            " next_at, attempts, state) VALUES ('ev:t', 'ev', 't', 'http://h/', X'7B7D',"
            " '{}', 1.0, 1.0, 0, 'pending')")
    con.close()

    new = Store(str(db_path))
    await new.start()
    try:
        assert new.schema_version == LATEST_SCHEMA_VERSION
        cdr = await new.get_cdr("old-call")
        assert cdr is not None
        assert cdr["tenant"] == "t9" and cdr["started_at"] == 42.0
        assert cdr["recording_ids"] == ["r"] and cdr["variables"] == {"x": "y"}
        job = await new.schedule_get("old-job")
        assert job is not None and job["data"] == {"n": 1} and job["attempt"] == 1
        item = await new.outbox_get("ev:t")
        assert item is not None and item.body == b"{}" and item.max_attempts == 10
        # New columns are usable on old rows.
        await new.add_cdr({**cdr, "new_key": 1})
        again = await new.get_cdr("old-call")
        assert again is not None and again["new_key"] == 1
    finally:
        await new.close()

    con = sqlite3.connect(db_path)
    try:
        versions = [r[0] for r in con.execute("SELECT version FROM schema_version ORDER BY 1")]
        indexes = {r[0] for r in con.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index'")}
    finally:
        con.close()
    assert versions == list(range(1, LATEST_SCHEMA_VERSION + 1))
    assert "ix_outbox_state_next_at" in indexes and "ix_cdrs_started_at" in indexes


async def test_restart_applies_no_migration_twice(db_path: Path) -> None:
    for _ in range(2):
        s = Store(str(db_path))
        await s.start()
        await s.close()
    con = sqlite3.connect(db_path)
    try:
        versions = [r[0] for r in con.execute("SELECT version FROM schema_version")]
    finally:
        con.close()
    assert sorted(versions) == list(range(1, LATEST_SCHEMA_VERSION + 1))


async def test_migrated_schema_matches_model(store: Store) -> None:
    """The migration steps must produce exactly the columns the queries use."""

    def columns(conn: sa.Connection) -> dict[str, set[str]]:
        inspector = sa.inspect(conn)
        return {name: {c["name"] for c in inspector.get_columns(name)}
                for name in inspector.get_table_names()}

    async with store._tx() as conn:
        actual = await conn.run_sync(columns)
    expected = {t.name: {c.name for c in t.columns}
                for t in store_mod._metadata.sorted_tables}
    assert actual == expected


async def test_newer_schema_is_refused(db_path: Path) -> None:
    s = Store(str(db_path))
    await s.start()
    await s.close()
    con = sqlite3.connect(db_path)
    with con:
        con.execute("INSERT INTO schema_version VALUES (999, 0.0, 'from the future')")
    con.close()
    with pytest.raises(StoreError, match="newer"):
        await Store(str(db_path)).start()


async def test_migrate_rejects_unknown_target(db_path: Path) -> None:
    with pytest.raises(ValueError):
        await Store(str(db_path))._migrate(upto=LATEST_SCHEMA_VERSION + 1)


# --------------------------------------------------------------------------- concurrency


async def test_concurrent_writes_from_many_tasks_and_two_stores(db_path: Path) -> None:
    # Two Store objects on one file stand in for two processes: their writes meet in
    # SQLite's file lock, not in the in-process lock.
    s1, s2 = Store(str(db_path)), Store(str(db_path))
    await asyncio.gather(s1.start(), s2.start())
    try:
        async def writer(s: Store, n: int) -> None:
            await s.add_cdr(make_cdr(f"c{n}", float(n)))
            await s.schedule_put(f"j{n % 10}", state="pending", due_at=float(n),
                                 attempt=n, data={"n": n})
            await s.outbox_add(make_item(f"e{n}:t", float(n)))
            await s.outbox_add(make_item(f"e{n % 5}:t", float(n)))  # colliding ids
            await s.list_cdrs(limit=5)

        await asyncio.gather(*(writer(s1 if n % 2 else s2, n) for n in range(60)))
        assert len(await s1.list_cdrs(limit=1000)) == 60
        assert len(await s2.schedule_list()) == 10
        counts = await s1.outbox_counts()
        assert counts["pending"] == 60
    finally:
        await asyncio.gather(s1.close(), s2.close())


async def test_missing_parent_of_sqlite_url_is_created(tmp_path: Path) -> None:
    s = Store(f"sqlite+aiosqlite:///{tmp_path / 'deep' / 'er' / 'x.db'}")
    await s.start()
    try:
        assert await s.ping()
    finally:
        await s.close()
    assert (tmp_path / "deep" / "er" / "x.db").exists()


async def test_add_cdrs_batch_inserts_and_replaces(store: Store) -> None:
    await store.add_cdrs([{"call_id": "a", "outcome": "busy", "started_at": 1.0},
                          {"call_id": "b", "started_at": 2.0, "custom": 7}])
    await store.add_cdrs([{"call_id": "a", "outcome": "answered", "started_at": 1.0},
                          {"call_id": "c", "started_at": 3.0},
                          {"call_id": "c", "started_at": 3.0, "outcome": "failed"}])
    await store.add_cdrs([])
    rows = {c["call_id"]: c for c in await store.list_cdrs()}
    assert set(rows) == {"a", "b", "c"}
    assert rows["a"]["outcome"] == "answered"     # replaced, not duplicated
    assert rows["b"]["custom"] == 7               # unknown keys kept
    assert rows["c"]["outcome"] == "failed"       # the last of duplicates in a batch wins
    with pytest.raises(ValueError):
        await store.add_cdrs([{"outcome": "x"}])


async def test_audit_entries_stored_once_and_listed_newest_first(store: Store) -> None:
    entries = [{"id": f"a{i}", "time": 100.0 + i, "action": "originate",
                "tenant": "acme" if i % 2 else "other", "destination": str(i)} for i in range(5)]
    await store.add_audit(entries)
    await store.add_audit(entries[:2])  # a replayed journal writes some again: no duplicates
    listed = await store.list_audit()
    assert [e["id"] for e in listed] == ["a4", "a3", "a2", "a1", "a0"]
    assert listed[0] == entries[4]
    assert [e["id"] for e in await store.list_audit(tenant="acme")] == ["a3", "a1"]
    assert [e["id"] for e in await store.list_audit(since=103.0, limit=1)] == ["a4"]
    assert await store.list_audit(action="call") == []
