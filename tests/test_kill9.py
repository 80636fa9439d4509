"""Crashes and outages: ``kill -9`` while calls, scheduled calls and webhooks are in flight, and
a webhook receiver that is down for an hour.

The kill test runs the switch as a real process (``python -m switch run -c <toml>``) with a
SIPp UAS as its trunk (it answers, holds each call briefly and hangs up) and an HTTP webhook
receiver subscribed to every event. Scheduled calls are spread over a few seconds, each with a
unique caller id so the UAS can count the INVITEs of every job; the switch is killed with
SIGKILL at random moments and restarted on the same store. At the end:

* every job is finished: ``done`` (placed exactly once: one INVITE dialog at the UAS) or, for a
  job that was being dialled at a kill, ``unknown`` (at most one INVITE: never redialled);
* every call the trunk saw has a stored CDR: CDRs are committed in batches, but each is in
  the store's journal (switch/journal.py) as soon as the call ends, and the next start stores
  what a killed run left there; a call a kill cut off (journaled when it started) gets one
  with outcome ``interrupted``. Only a kill within ``COMMIT_WINDOW`` of the trunk's INVITE or
  of the switch's 200 to its BYE (before the journal write of that loop turn) is excused;
* every outbox row is delivered and every event id in the outbox reached the receiver (at least
  once; once by id after deduplication), including the ``cdr`` event of every stored CDR;
* the store is consistent (SQLite ``integrity_check``, no job left ``dialing``/``pending``, every
  job's attempt count matches its attempts list).

CI runs a scaled-down form (:data:`CI_RUN`); ``bench/kill9.py`` runs the full 10 kills over
1,000 calls with :func:`run_kill9`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import signal
import socket
import sqlite3
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

try:  # tests/ is not a package: pytest puts tests/ itself on sys.path (rootdir-relative)
    from peers import sipp
    from peers.httpserver import HttpRequest, TestHttpServer
    from peers.ports import free_udp_tcp_port
    from peers.switchproc import SwitchProcess
except ModuleNotFoundError:  # pragma: no cover - tests/ turned into a package
    from tests.peers import sipp
    from tests.peers.httpserver import HttpRequest, TestHttpServer
    from tests.peers.ports import free_udp_tcp_port
    from tests.peers.switchproc import SwitchProcess

from switch.config import WebhookConfig, parse_config
from switch.store import Store
from switch.webhooks import WebhookDispatcher, WebhookTarget

OUT_NUMBER = "+905321234567"
API_KEY = "kill9-test-key"
# The CDR is journaled in the event-loop callback that answers the BYE: a kill closer than this
# to the 200 may come before that write (the call was, in effect, in flight at the kill).
COMMIT_WINDOW = 0.02
REPO_ENV = {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}


@dataclass
class Kill9Report:
    """Figures of one kill run (what the bench prints)."""

    jobs: int = 0
    kills: int = 0
    done: int = 0
    unknown: int = 0
    other_states: dict[str, int] = field(default_factory=dict)
    invites: int = 0
    placed_twice: list[str] = field(default_factory=list)
    done_not_placed: list[str] = field(default_factory=list)
    calls_seen: int = 0  # INVITE dialogs at the trunk
    calls_ended: int = 0
    cdrs: int = 0
    cdrs_interrupted: int = 0  # calls cut off by a kill, stored at the next start
    cdrs_lost: list[str] = field(default_factory=list)
    cdrs_in_kill_window: int = 0
    outbox_rows: int = 0
    outbox_not_delivered: int = 0
    events_emitted: int = 0
    events_received: int = 0
    deliveries: int = 0
    events_missing: list[str] = field(default_factory=list)
    cdr_events_missing: list[str] = field(default_factory=list)
    inconsistent: list[str] = field(default_factory=list)
    seconds: float = 0.0
    late_posts: float = 0.0  # seconds the last schedule POST came after the first due time

    def problems(self) -> list[str]:
        """Everything that breaks the guarantees (empty when the run passed)."""
        out: list[str] = []
        if self.other_states:
            out.append(f"jobs not finished: {self.other_states}")
        if self.placed_twice:
            out.append(f"placed more than once: {self.placed_twice[:5]}")
        if self.done_not_placed:
            out.append(f"done but never reached the trunk: {self.done_not_placed[:5]}")
        if self.cdrs_lost:
            out.append(f"CDRs lost: {self.cdrs_lost[:5]}")
        if self.outbox_not_delivered:
            out.append(f"{self.outbox_not_delivered} outbox rows not delivered")
        if self.events_missing:
            out.append(f"events never received: {self.events_missing[:5]}")
        if self.cdr_events_missing:
            out.append(f"cdr events missing: {self.cdr_events_missing[:5]}")
        if self.inconsistent:
            out.append(f"store inconsistent: {self.inconsistent[:5]}")
        return out


# --------------------------------------------------------------------------- the trunk's view

_FRAME = re.compile(r"^-{5,} (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)\n(?:UDP|TCP) message "
                    r"(sent|received) [^\n]*\n", re.M)


def _header(msg: str, name: str) -> str:
    m = re.search(rf"^{name}\s*:\s*(.*)$", msg, re.M | re.I)
    return m.group(1).strip() if m else ""


@dataclass
class TrunkCall:
    """One INVITE dialog as the SIPp UAS saw it."""

    caller: str
    invite_at: float = 0.0  # when the UAS received the INVITE
    bye_ok_at: float | None = None  # when the switch answered the UAS's BYE with 200


def trunk_calls(log_text: str) -> dict[str, TrunkCall]:
    """SIP Call-ID -> what the UAS saw, from its ``-trace_msg`` log."""
    calls: dict[str, TrunkCall] = {}
    frames = list(_FRAME.finditer(log_text.replace("\r\n", "\n")))
    text = log_text.replace("\r\n", "\n")
    for i, m in enumerate(frames):
        end = frames[i + 1].start() if i + 1 < len(frames) else len(text)
        msg = text[m.end():end].strip("\n")
        when = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp()
        call_id = _header(msg, "Call-ID")
        if m.group(2) == "received" and msg.startswith("INVITE "):
            user = re.search(r"sip:([^@;>]+)@", _header(msg, "From"))
            calls.setdefault(call_id, TrunkCall(user.group(1) if user else "", when))
        elif (m.group(2) == "received" and msg.startswith("SIP/2.0 200")
              and _header(msg, "CSeq").upper().endswith("BYE") and call_id in calls):
            calls[call_id].bye_ok_at = calls[call_id].bye_ok_at or when
    return calls


# --------------------------------------------------------------------------- the run


def _switch(workdir: Path, trunk_port: int, hook_url: str) -> SwitchProcess:
    return SwitchProcess(
        workdir, extensions=["1001"],
        trunks=[{"name": "pstn", "host": "127.0.0.1", "port": trunk_port}],
        routes=[{"pattern": "^\\+", "trunk": "pstn"}],
        calls={"ring_timeout": 10, "drain_timeout": 10},
        extra={"api": {"keys": [{"key": API_KEY, "tenant": "default", "name": "t"}]},
               "webhooks": [{"name": "rx", "url": hook_url, "events": ["*"]}]},  # type: ignore[dict-item]
        rtp_ports=400, log_level="INFO", env=REPO_ENV,
    )


def _db_rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(db, timeout=10)) as conn:
        return list(conn.execute(sql))


async def _restart(sw: SwitchProcess, generation: int) -> None:
    # Keep each generation's log (astart truncates switch.log).
    with contextlib.suppress(OSError):
        sw.log_path.rename(sw.workdir / f"switch.{generation}.log")
    await sw.astart(timeout=60)


async def _settled(sw: SwitchProcess, db: Path) -> bool:
    """No job waiting or dialling, no call up, no undelivered webhook."""
    busy = await asyncio.to_thread(
        _db_rows, db, "select count(*) from schedule where state in ('pending','dialing')")
    pending = await asyncio.to_thread(
        _db_rows, db, "select count(*) from outbox where state = 'pending'")
    if busy[0][0] or pending[0][0]:
        return False
    async with httpx.AsyncClient(base_url=sw.base_url, timeout=5.0) as client:
        resp = await client.get("/v1/calls", headers={"Authorization": f"Bearer {API_KEY}"})
    return resp.status_code == 200 and not resp.json()["calls"]


async def run_kill9(workdir: Path, *, jobs: int, kills: int, spread: float,
                    seed: int = 1, hold_ms: int = 300) -> Kill9Report:
    """Schedule ``jobs`` calls over ``spread`` seconds, SIGKILL the switch ``kills`` times at
    random moments (restarting it on the same store each time), let everything finish, then
    check the guarantees (see the module docstring). Returns the figures."""
    rng = random.Random(seed)
    report = Kill9Report(jobs=jobs)
    started = time.monotonic()
    trunk_port = free_udp_tcp_port()
    seen: Counter[str] = Counter()

    def on_hook(req: HttpRequest) -> tuple[int, Any]:
        seen[req.headers.get("x-event-id", "")] += 1
        return 200, {}

    async with TestHttpServer(on_hook) as hooks:
        uas = sipp.start("uas_bye", local_port=trunk_port, calls=None, duration_ms=hold_ms,
                         workdir=workdir / "uas", extra_args=["-max_recv_loops", "10000"])
        sw = _switch(workdir / "sw", trunk_port, hooks.url("/hook"))
        db = sw.workdir / "softswitch.db"
        kill_times: list[float] = []
        try:
            await uas.wait_ready()
            await sw.astart(timeout=60)
            callers: dict[str, str] = {}
            # A few pilot jobs, due at once, time the API on this machine; the rest are due
            # from t0, after every POST has returned, so the kills below fall among calls in
            # flight rather than after they all ended.
            pilot = min(10, jobs)
            t0 = time.time()
            async with httpx.AsyncClient(base_url=sw.base_url, timeout=30.0) as client:
                for n in range(jobs):
                    if n == pilot:
                        per_job = (time.time() - t0) / pilot
                        t0 = time.time() + 3.0 + 1.5 * per_job * (jobs - pilot)
                    caller = f"+9021{n:08d}"
                    at = t0 if n < pilot else t0 + spread * (n - pilot) / max(jobs - pilot, 1)
                    resp = await client.post(
                        "/v1/schedule", headers={"Authorization": f"Bearer {API_KEY}"},
                        json={"request": {"destination": OUT_NUMBER, "caller_id": caller},
                              "at": at})
                    assert resp.status_code == 201, resp.text
                    callers[resp.json()["job_id"]] = caller
            report.late_posts = max(0.0, time.time() - t0)
            # Kill moments: random, inside the period calls are being placed (and a little
            # after, when calls and webhooks are still in flight).
            moments = sorted(rng.uniform(0.0, spread + 1.0) for _ in range(kills))
            for generation, moment in enumerate(moments, start=1):
                delay = t0 + moment - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                assert sw.proc is not None
                os.kill(sw.proc.pid, signal.SIGKILL)
                kill_times.append(time.time())
                await asyncio.to_thread(sw.proc.wait, 30)
                report.kills += 1
                await _restart(sw, generation)
            # Let everything finish, then shut down gracefully; rows emitted while stopping
            # are delivered by one more run.
            for generation in range(kills + 1, kills + 4):
                deadline = time.monotonic() + 60 + jobs * 0.2
                while time.monotonic() < deadline and not await _settled(sw, db):
                    await asyncio.sleep(0.5)
                sw.stop(timeout=30)
                left = await asyncio.to_thread(
                    _db_rows, db, "select count(*) from outbox where state = 'pending'")
                if not left[0][0]:
                    break
                await _restart(sw, generation)
        finally:
            sw.stop(timeout=30)
            trunk_log = uas.stop().message_log
        trunk_text = trunk_log.read_text(errors="replace") if trunk_log else ""

    _check(report, db, callers, trunk_calls(trunk_text), seen, kill_times)
    report.seconds = time.monotonic() - started
    return report


def _check(report: Kill9Report, db: Path, callers: dict[str, str],
           trunk: dict[str, TrunkCall], seen: Counter[str], kill_times: list[float]) -> None:
    dialogs: dict[str, list[TrunkCall]] = defaultdict(list)
    for call in trunk.values():
        dialogs[call.caller].append(call)
    report.invites = len(trunk)

    # -- scheduled calls
    states: Counter[str] = Counter()
    job_calls: dict[str, str] = {}  # job id -> caller id
    for job_id, state, attempt, data in _db_rows(
            db, "select id, state, attempt, data from schedule"):
        states[state] += 1
        info = json.loads(data)
        if len(info.get("attempts", [])) != attempt:
            report.inconsistent.append(f"job {job_id}: attempt {attempt} vs "
                                       f"{len(info.get('attempts', []))} attempts")
        caller = callers.get(job_id)
        if caller is None:
            report.inconsistent.append(f"job {job_id} was never scheduled")
            continue
        job_calls[job_id] = caller
        placed = len(dialogs.get(caller, []))
        if placed > 1:
            report.placed_twice.append(job_id)
        if state == "done" and placed != 1:
            report.done_not_placed.append(job_id)
    report.done, report.unknown = states.pop("done", 0), states.pop("unknown", 0)
    report.other_states = dict(states)
    if len(job_calls) != report.jobs:
        report.inconsistent.append(f"{len(job_calls)} jobs stored of {report.jobs}")

    # -- CDRs: every call the trunk saw has one (keyed here by the caller id): a call the
    # switch ended normally, a call a kill cut off as "interrupted"
    cdr_callers: dict[str, str] = {}
    for call_id, caller_id, outcome in _db_rows(
            db, "select call_id, caller_id_number, outcome from cdrs"):
        cdr_callers[str(caller_id)] = str(call_id)
        report.cdrs_interrupted += outcome == "interrupted"
    report.cdrs = len(cdr_callers)
    for call in trunk.values():
        report.calls_seen += 1
        report.calls_ended += call.bye_ok_at is not None
        if call.caller in cdr_callers:
            continue
        moment = call.bye_ok_at if call.bye_ok_at is not None else call.invite_at
        if any(0 <= k - moment <= COMMIT_WINDOW for k in kill_times):
            report.cdrs_in_kill_window += 1
        else:
            report.cdrs_lost.append(call.caller)

    # -- webhooks: every stored event delivered and received (by id)
    rows = _db_rows(db, "select event_id, state from outbox")
    report.outbox_rows = len(rows)
    report.outbox_not_delivered = sum(1 for _, state in rows if state != "delivered")
    emitted = {str(event_id) for event_id, _ in rows}
    report.events_emitted = len(emitted)
    report.events_received = len(set(seen) & emitted)
    report.deliveries = sum(seen.values())
    report.events_missing = sorted(emitted - set(seen))
    report.cdr_events_missing = sorted(
        call_id for call_id in cdr_callers.values() if f"cdr-{call_id}" not in emitted)

    # -- the database itself
    check = _db_rows(db, "pragma integrity_check")
    if check != [("ok",)]:
        report.inconsistent.append(f"integrity_check: {check}")


CI_RUN = {"jobs": 60, "kills": 3, "spread": 4.0}


@pytest.mark.peer
@pytest.mark.skipif(not sipp.available(), reason=sipp.INSTALL_HINT)
async def test_kill9_scheduled_calls_cdrs_and_webhooks(tmp_path: Path) -> None:
    report = await run_kill9(tmp_path, **CI_RUN, seed=int(os.environ.get("KILL9_SEED", "7")))
    print("kill -9 run:", report)
    assert report.kills == CI_RUN["kills"]
    assert report.problems() == [], report
    assert report.done + report.unknown == report.jobs
    # Only jobs being dialled at a kill may be unknown; most calls get through.
    assert report.done >= report.jobs // 2, report
    assert report.calls_ended > 0 and report.cdrs > 0 and report.events_received > 0


# --------------------------------------------------------------------------- receiver outage


class _Receiver:
    """A webhook receiver on a fixed port: refused connections while down."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        self.port: int = self._sock.getsockname()[1]
        self.ids: Counter[str] = Counter()
        self._server: asyncio.Server | None = None

    async def up(self) -> None:
        self._server = await asyncio.start_server(self._serve, sock=self._sock)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        else:
            self._sock.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            headers: dict[str, str] = {}
            await reader.readline()
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            await reader.readexactly(int(headers.get("content-length", "0")))
            self.ids[headers.get("x-event-id", "")] += 1
            writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


class _Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


async def _outage(tmp_path: Path, max_attempts: int, events: int = 40) -> tuple[int, int]:
    """Emit ``events`` with the receiver down, keep it down for an hour of virtual time, bring
    it back and run another hour: (distinct events received, dead rows)."""
    receiver = _Receiver()
    clock = _Clock()
    store = Store(str(tmp_path / f"outage-{max_attempts}.db"))
    await store.start()
    # The target as the switch builds it from [[webhooks]] (config defaults).
    target = WebhookTarget(name="crm", url=f"http://127.0.0.1:{receiver.port}/hook",
                           max_attempts=max_attempts)
    dispatcher = WebhookDispatcher(store, [target], clock=clock)
    try:
        for n in range(events):
            await dispatcher.emit("completed", {"n": n}, event_id=f"ev-{n}")
            clock.now += 1.0
        step = 15.0
        for _ in range(int(3600 / step)):   # one hour down: every attempt is refused
            clock.now += step
            await dispatcher.flush(timeout=30)
        assert not receiver.ids
        await receiver.up()
        for _ in range(int(3600 / step)):   # back: retries find it at their next due time
            clock.now += step
            await dispatcher.flush(timeout=30)
            if len(receiver.ids) == events:
                break
        dead = (await store.outbox_counts()).get("dead", 0)
        return len(receiver.ids), dead
    finally:
        await dispatcher.stop()
        await store.close()
        await receiver.close()


async def test_webhook_receiver_down_for_an_hour_gets_everything(tmp_path: Path) -> None:
    default = parse_config({"webhooks": [{"name": "crm", "url": "http://127.0.0.1:9/h"}]})
    attempts = default.webhooks[0].max_attempts
    assert attempts == WebhookConfig("x", "http://x").max_attempts
    received, dead = await _outage(tmp_path, attempts)
    assert (received, dead) == (40, 0)


async def test_webhook_outage_longer_than_the_retry_budget_loses_events(tmp_path: Path) -> None:
    # The guard above can fail: the old default (10 attempts, ~9 minutes of retries) gives up
    # during an hour-long outage.
    received, dead = await _outage(tmp_path, 10)
    assert dead == 40 and received == 0
