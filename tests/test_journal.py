"""The write-ahead journal (switch/journal.py) and the switch replaying it after a crash.

``tests/test_kill9.py`` proves the whole path with ``kill -9`` on a real process; these tests
pin the file format and rules, and that a journal left by a dead run reaches the store, the
webhook outbox and the audit table at the next start.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from switch.app import Switch
from switch.config import parse_config
from switch.journal import Journal
from switch.store import Store

try:
    from peers.ports import free_port_range, free_udp_tcp_port
except ModuleNotFoundError:  # pragma: no cover
    from tests.peers.ports import free_port_range, free_udp_tcp_port


def _ports() -> dict[str, dict[str, object]]:
    lo, hi = free_port_range(10)
    return {"sip": {"address": "127.0.0.1", "port": free_udp_tcp_port(), "transports": ["udp"]},
            "rtp": {"address": "127.0.0.1", "port_min": lo, "port_max": hi}}


def test_open_records_survive_and_done_ones_are_dropped(tmp_path: Path) -> None:
    path = tmp_path / "j"
    j = Journal(path)
    assert j.recover() == []
    a = j.append("cdr", {"call_id": "a"})
    b = j.append("event", {"event_id": "b"})
    j.append("audit", {"id": "c", "time": 1.0})
    j.done([a])
    assert path.stat().st_size > 0  # b and c still open: the file is kept whole
    j.close()  # the process dies: nothing more is written

    again = Journal(path)
    kinds = [(k, r) for k, r in again.recover()]
    # Everything written is recovered (a was done, but the file is only cut when nothing is
    # open: replaying a stored record is harmless, losing one is not).
    assert ("event", {"event_id": "b"}) in kinds and ("audit", {"id": "c", "time": 1.0}) in kinds
    again.forget_recovered()
    assert path.stat().st_size == 0
    t = again.append("cdr", {"call_id": "d"})
    again.done([b, t])  # unknown tokens (from the dead run) are ignored
    assert path.stat().st_size == 0 and again.open_records == 0


def test_torn_last_line_is_skipped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "j"
    path.write_bytes(b'{"k":"cdr","r":{"call_id":"x"}}\n{"k":"cdr","r":{"call_i')
    j = Journal(path)
    assert j.recover() == [("cdr", {"call_id": "x"})]
    assert j.counters["torn"] == 1 and j.counters["recovered"] == 1


def test_compaction_keeps_only_open_records(tmp_path: Path) -> None:
    path = tmp_path / "j"
    j = Journal(path, compact_bytes=2000)
    j.recover()
    keep = j.append("cdr", {"call_id": "keep"})
    tokens = [j.append("cdr", {"call_id": f"c{i}", "pad": "x" * 50}) for i in range(100)]
    assert path.stat().st_size > 2000
    j.done(tokens)  # "keep" is still open, the file is past the limit: rewritten
    lines = path.read_bytes().splitlines()
    assert [json.loads(line)["r"]["call_id"] for line in lines] == ["keep"]
    assert j.counters["compactions"] == 1
    j.append("cdr", {"call_id": "after"})  # appends go to the new file
    assert len(path.read_bytes().splitlines()) == 2
    j.done([keep])
    assert j.open_records == 1


def test_unserialisable_record_is_counted_not_raised(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j")
    j.recover()
    j.append("cdr", {"call_id": "x", "bad": float("nan")})  # NaN is written (json allows it)
    j.append("cdr", {"call_id": "y", "obj": object()})  # default=str
    assert j.counters["write_errors"] == 0 and j.open_records == 2


async def test_switch_stores_what_a_killed_run_left_in_the_journal(tmp_path: Path) -> None:
    db = tmp_path / "switch.db"
    journal = Path(str(db) + ".journal")
    cdr = {"call_id": "c-1", "tenant": "default", "caller": "1001", "callee": "+905551112233",
           "started_at": 1700000000.0, "ended_at": 1700000010.0, "outcome": "answered",
           "legs": [{"leg_id": "l-1"}]}
    event = {"event": "call.ended", "payload": {"call_id": "c-1", "seq": 4},
             "event_id": "c-1-4"}
    audit = {"id": "a-1", "time": 1700000000.5, "action": "originate", "tenant": "default",
             "result": "accepted", "call_id": "c-1"}
    journal.write_text("".join(json.dumps({"k": k, "r": r}) + "\n"
                               for k, r in (("cdr", cdr), ("event", event), ("audit", audit)))
                       + '{"k":"cdr","r":{"cal')  # and the torn write the kill interrupted
    config = parse_config({
        **_ports(),
        "http": {"enabled": False},
        "store": {"url": f"sqlite:///{db}"},
        # A receiver that is down: the events must reach the durable outbox, not the wire.
        "webhooks": [{"name": "crm", "url": "http://127.0.0.1:9/hook", "events": ["*"]}],
    })
    sw = Switch(config)
    await sw.start()
    try:
        assert journal.stat().st_size == 0  # replayed, then cut
        assert sw.journal.counters["torn"] == 1
        stored = await sw.store.get_cdr("c-1")
        assert stored is not None and stored["outcome"] == "answered"
        assert [e["id"] for e in await sw.store.list_audit()] == ["a-1"]
    finally:
        await sw.stop()
    # The outbox has both the call event and the CDR's own webhook event.
    store = Store(f"sqlite+aiosqlite:///{db}")
    await store.start()
    try:
        due = await store.outbox_due(now=1e12, limit=100)
        assert {item.event_id for item in due} >= {"c-1-4", "cdr-c-1"}
    finally:
        await store.close()


async def test_switch_journals_cdrs_until_the_batch_commits(tmp_path: Path) -> None:
    db = tmp_path / "switch.db"
    config = parse_config({
        **_ports(),
        "http": {"enabled": False},
        "store": {"url": f"sqlite:///{db}"},
    })
    sw = Switch(config)
    await sw.start()
    try:
        sw._store_cdr({"call_id": "x-1", "outcome": "busy"})
        # Before the batch commits, the CDR is in the journal file (what kill -9 leaves).
        lines = Path(str(db) + ".journal").read_bytes().splitlines()
        assert [json.loads(line)["r"]["call_id"] for line in lines] == ["x-1"]
        for _ in range(100):  # bounded: the batch commits within a fraction of a second
            if sw.journal.open_records == 0:
                break
            await asyncio.sleep(0.02)
        assert sw.journal.open_records == 0
        assert Path(str(db) + ".journal").stat().st_size == 0
        assert (await sw.store.get_cdr("x-1")) is not None
    finally:
        await sw.stop()


def test_journal_setting(tmp_path: Path) -> None:
    from switch.app import _journal_path
    from switch.config import StoreConfig

    assert _journal_path(StoreConfig(url="sqlite:///a/b.db")) == Path("a/b.db.journal")
    assert _journal_path(StoreConfig(url="sqlite:///:memory:")) is None
    assert _journal_path(StoreConfig(url="postgresql://h/db")) is None
    assert _journal_path(StoreConfig(url="postgresql://h/db", journal="/var/j")) == Path("/var/j")
    assert _journal_path(StoreConfig(url="sqlite:///a.db", journal="off")) is None


async def test_call_cut_off_by_a_crash_gets_an_interrupted_cdr(tmp_path: Path) -> None:
    db = tmp_path / "switch.db"
    journal = Path(str(db) + ".journal")
    base = {"tenant": "acme", "caller": "1001", "callee": "+905551112233",
            "caller_id_number": "+902120000000", "frontend": None, "external_id": "x-9"}
    lines = [("call", {"call_id": "cut", "started_at": 1700000000.0, **base}),
             ("answer", {"call_id": "cut", "answered_at": 1700000002.0, **base}),
             ("call", {"call_id": "done", "started_at": 1700000000.0, **base}),
             ("cdr", {"call_id": "done", "outcome": "answered", **base})]
    journal.write_text("".join(json.dumps({"k": k, "r": r}) + "\n" for k, r in lines))
    died = 1700000010.0
    import os

    os.utime(journal, (died, died))  # the last write before the "crash"
    sw = Switch(parse_config({**_ports(), "http": {"enabled": False},
                              "store": {"url": f"sqlite:///{db}"}}))
    await sw.start()
    try:
        cut = await sw.store.get_cdr("cut")
        assert cut is not None and cut["outcome"] == "interrupted", cut
        assert (cut["tenant"], cut["caller_id_number"], cut["external_id"]) == (
            "acme", "+902120000000", "x-9")
        assert (cut["answered_at"], cut["ended_at"], cut["billsec"]) == (
            1700000002.0, died, 8.0)
        done = await sw.store.get_cdr("done")
        assert done is not None and done["outcome"] == "answered"
        assert journal.stat().st_size == 0
    finally:
        await sw.stop()
