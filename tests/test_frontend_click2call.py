"""Click2Call URL dialing (``/API/dialup.php``) against real peers.

* GET and POST: baresip as extension 1001 and a SIPp UAS on the trunk, in both orders
  (agent first, then the outside number; outside number first, then the agent). The first
  destination rings first, the second is only dialled after the first answered (event order),
  audio flows both ways, the caller IDs follow the dialing-options table, the call is
  recorded, and the ``showUID`` ids are the CDR's leg ids.
* ``Response=yes`` with dial1 busy (SIPp ``uas_busy``), not answering (``uas_noanswer``, short
  Timeout) and not registered (1002): the documented reason, in each of the four formats,
  each well formed; dial2 is never dialled.
* A future call on a virtual clock: placed at its Date (in the account's time zone), retried
  Maxretry times Retrytime apart while busy; another one placed after a restart on the same
  store; listing and cancelling by ident.
* Every invalid input is refused in the requested format, and nothing is dialled.
"""

from __future__ import annotations

import asyncio
import json
import xml.etree.ElementTree as ET
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from test_interop_media import (
    OUT_NUMBER,
    EmbeddedSwitch,
    no_switch_errors,
    phone,
    registered,
    start_trunk,
)

from switch.config import ConfigError, parse_config
from switch.control import Destination
from switch.frontends import click2call
from switch.frontends.click2call import Account, plan_call, render

try:
    from peers import audio, baresip, sipp
    from peers.ports import free_udp_tcp_port
except ModuleNotFoundError:  # pragma: no cover
    from tests.peers import audio, baresip, sipp
    from tests.peers.ports import free_udp_tcp_port

needs_sipp = pytest.mark.skipif(not sipp.available(), reason=sipp.INSTALL_HINT)
needs_baresip = pytest.mark.skipif(not baresip.available(), reason=baresip.INSTALL_HINT)

ORG_CID = "+902121234567"
TZ = "Europe/Istanbul"
ACCOUNT = {"user": "demo", "pass": "demo-pass", "org": "demo-org", "tenant": "default",
           "timezone": TZ, "cid": ORG_CID}
AUTH = {"user": "demo", "pass": "demo-pass", "org": "demo-org"}
PHONE_HZ = 1000.0
TRUNK_HZ = 600.0


def c2c_switch(workdir: Path, **options: Any) -> tuple[EmbeddedSwitch, str]:
    port = free_udp_tcp_port()
    extra = {"http": {"address": "127.0.0.1", "port": port, "enabled": True},
             "click2call": {"accounts": [ACCOUNT]}, **options.pop("extra", {})}
    return EmbeddedSwitch(workdir, extra=extra, **options), f"http://127.0.0.1:{port}"


# --------------------------------------------------------------------------- response parsing


class _Cells(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tables: list[tuple[str, dict[str, str]]] = []
        self._cell: str | None = None
        self._key = ""
        self._text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self.tables.append((dict(attrs).get("class") or "", {}))
        elif tag in ("th", "td"):
            self._cell, self._text = tag, ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "th":
            self._key = self._text
        elif tag == "td":
            self.tables[-1][1][self._key] = self._text
        if tag in ("th", "td"):
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._text += data


def parse_response(fmt: str, r: httpx.Response) -> dict[str, Any]:
    """Parse a response strictly in its format into {"status", ..., "calls": [...]}."""
    text = r.text
    if fmt == "json":
        assert r.headers["content-type"].startswith("application/json")
        data: dict[str, Any] = json.loads(text)
        return data
    if fmt == "xml":
        assert r.headers["content-type"].startswith("application/xml")
        root = ET.fromstring(text)
        assert root.tag == "response"
        out: dict[str, Any] = {}
        for child in root:
            if child.tag in ("calls", "jobs"):
                out[child.tag] = [{f.tag: f.text or "" for f in item} for item in child]
            else:
                out[child.tag] = child.text or ""
        return out
    if fmt == "html":
        assert r.headers["content-type"].startswith("text/html")
        assert text.startswith("<!DOCTYPE html>")
        parser = _Cells()
        parser.feed(text)
        parser.close()
        out = {}
        for cls, cells in parser.tables:
            if cls == "response":
                out.update(cells)
            else:
                out.setdefault(cls + "s", []).append(cells)
        return out
    assert r.headers["content-type"].startswith("text/plain")
    out = {}
    items: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        assert sep, f"not key=value: {line!r}"
        head, dot, field = key.partition(".")
        if dot:
            items.setdefault(head, {})[field] = value
        else:
            out[key] = value
    for head, fields in items.items():
        kind = "calls" if head.startswith("call") else "jobs"
        out.setdefault(kind, []).append(fields)
    return out


async def _until(predicate: Any, timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not reached: {predicate.__name__}")
        await asyncio.sleep(0.05)


async def _stored_cdr(sw: EmbeddedSwitch, call_id: str) -> dict[str, Any]:
    for _ in range(100):
        stored = await sw.sw.store.get_cdr(call_id)
        if stored is not None:
            return stored
        await asyncio.sleep(0.05)
    raise AssertionError(f"no stored CDR for {call_id}")


# --------------------------------------------------------------------------- two legs bridged


async def _two_legs(tmp_path: Path, *, method: str, agent_first: bool) -> None:
    tone = audio.write_tone_wav(tmp_path / "tone.wav", PHONE_HZ, 30.0)
    dial1, dial2 = ("1001", OUT_NUMBER) if agent_first else (OUT_NUMBER, "1001")
    params = {**AUTH, "dial1": dial1, "dial2": dial2, "Response": "yes", "showUID": "yes",
              "RFormat": "json", "Timeout": "15"}
    emb, base = c2c_switch(tmp_path / "sw")
    async with emb as sw, sipp.RtpSink() as sink:
        uas = start_trunk(sw, tmp_path, sink)
        p = phone(tmp_path, sw, "1001", source=tone, record=True)
        try:
            await uas.wait_ready()
            async with p, httpx.AsyncClient(base_url=base, timeout=60) as http:
                await registered(p, sw)
                if method == "GET":
                    r = await http.get(click2call.PATH, params=params)
                else:
                    r = await http.post(click2call.PATH, data=params)
                assert r.status_code == 200, r.text
                body = r.json()
                assert body["status"] == "ok" and body["reason"] == "Answered", body
                ev = await p.wait_event("CALL_ESTABLISHED", "CALL_CLOSED", timeout=15)
                assert ev["type"] == "CALL_ESTABLISHED", f"{ev}\n{sw.diag()}"
                await sw.wait_event("bridged", timeout=10)
                await sink.wait_for(50)          # the phone's tone reaches the trunk
                for _ in range(75):              # the trunk talks back for 1.5 s
                    await sink.send_tone(TRUNK_HZ, 0.02)
                await asyncio.sleep(0.5)
                sw.sw.hangup(body["call_id"])
                cdr = await sw.sw.wait_call(body["call_id"], timeout=10)
                await p.wait_event("CALL_CLOSED", timeout=10)
            uas_res = await uas.wait_async(10)
        finally:
            uas.stop()
        stored = await _stored_cdr(sw, body["call_id"])
        recorded = p.recorded_files()
    assert uas_res.ok, uas_res.describe() + sw.diag()
    uid1, uid2 = body["uid1"], body["uid2"]
    # dial1 rings and answers before dial2 is even initiated.
    seq = {(e.name, e.leg_id): e.seq for e in reversed(sw.events)}
    assert ("answered", uid1) in seq and ("leg-initiated", uid2) in seq, sw.diag()
    assert seq[("leg-initiated", uid1)] < seq[("answered", uid1)] < seq[("leg-initiated", uid2)]
    if agent_first:
        assert seq[("ringing", uid1)] < seq[("answered", uid1)], sw.diag()
    # showUID: the ids are the CDR's call and leg ids.
    assert stored["call_id"] == body["call_id"] == cdr["call_id"]
    legs = {leg["leg_id"]: leg for leg in stored["legs"]}
    assert set(legs) == {uid1, uid2}
    assert legs[uid1]["target"] in (dial1, OUT_NUMBER) and legs[uid1]["outcome"] == "answered"
    assert legs[uid2]["outcome"] == "answered"
    assert stored["frontend"] == "click2call"
    # Audio both ways.
    assert abs(audio.dominant_frequency(sink.audio()[-4000:], 8000) - PHONE_HZ) < 15
    assert recorded, "baresip recorded nothing"
    heard, rate = audio.read_wav(recorded[-1])
    assert audio.dominant_frequency(heard, rate) == pytest.approx(TRUNK_HZ, abs=15)
    # The dialing-options table: the agent sees the outside number, the outside party sees
    # the organisation's number; an agent's call is recorded.
    invite = uas_res.received("INVITE")[0]
    assert f"sip:{ORG_CID}@" in invite.split("From:", 1)[1].splitlines()[0], invite
    assert OUT_NUMBER in str(ev.get("peeruri", "")), ev
    assert cdr["recording_ids"], cdr
    no_switch_errors(sw)


@needs_sipp
@needs_baresip
@pytest.mark.timeout(120)
async def test_get_agent_first_then_trunk(tmp_path: Path) -> None:
    await _two_legs(tmp_path, method="GET", agent_first=True)


@needs_sipp
@needs_baresip
@pytest.mark.timeout(120)
async def test_post_trunk_first_then_agent(tmp_path: Path) -> None:
    await _two_legs(tmp_path, method="POST", agent_first=False)


@needs_sipp
@needs_baresip
@pytest.mark.timeout(120)
async def test_post_without_response_is_accepted_at_once_and_set_cid(tmp_path: Path) -> None:
    """A plain POST (no Response): accepted before anything answers; SetCID = a national
    number is shown, in E.164, to both parties."""
    tone = audio.write_tone_wav(tmp_path / "tone.wav", PHONE_HZ, 30.0)
    emb, base = c2c_switch(tmp_path / "sw")
    async with emb as sw, sipp.RtpSink() as sink:
        uas = start_trunk(sw, tmp_path, sink)
        p = phone(tmp_path, sw, "1001", source=tone)
        try:
            await uas.wait_ready()
            async with p, httpx.AsyncClient(base_url=base, timeout=30) as http:
                await registered(p, sw)
                r = await http.post(click2call.PATH, data={
                    "dial2": OUT_NUMBER, "SetCID": "02123334455", "dial1": "1001", **AUTH,
                    "rformat": "XML"})
                assert r.status_code == 200, r.text
                body = parse_response("xml", r)
                assert body["status"] == "ok" and body["reason"] == "Accepted", body
                assert not sw.of("answered"), "the answer came before the first leg answered"
                ev = await p.wait_event("CALL_ESTABLISHED", "CALL_CLOSED", timeout=15)
                assert ev["type"] == "CALL_ESTABLISHED", f"{ev}\n{sw.diag()}"
                await sw.wait_event("bridged", timeout=10)
                for call_id in list(sw.sw.b2bua.calls):
                    sw.sw.hangup(call_id)
                await sw.wait_event("completed", timeout=10)
            uas_res = await uas.wait_async(10)
        finally:
            uas.stop()
    assert uas_res.ok, uas_res.describe() + sw.diag()
    invite = uas_res.received("INVITE")[0]
    assert "sip:+902123334455@" in invite.split("From:", 1)[1].splitlines()[0], invite
    assert "+902123334455" in str(ev.get("peeruri", "")), ev
    no_switch_errors(sw)


# --------------------------------------------------------------------------- Response=yes failures


def _assert_reason(fmt: str, r: httpx.Response, reason: str, outcome: str) -> None:
    body = parse_response(fmt, r)
    assert r.status_code == 200, r.text
    assert body["status"] == "fail" and body["reason"] == reason, (fmt, r.text)
    (call,) = body["calls"]
    assert call["status"] == "fail" and call["reason"] == reason, (fmt, r.text)
    assert call["outcome"] == outcome, (fmt, r.text)


async def _four_formats(base: str, params: dict[str, str]) -> dict[str, httpx.Response]:
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        replies = await asyncio.gather(*(
            http.get(click2call.PATH, params={**params, "RFormat": fmt})
            for fmt in click2call.FORMATS))
    return dict(zip(click2call.FORMATS, replies, strict=True))


@needs_sipp
@pytest.mark.timeout(120)
async def test_response_busy_in_every_format(tmp_path: Path) -> None:
    emb, base = c2c_switch(tmp_path / "sw")
    async with emb as sw, sipp.RtpSink() as sink:
        uas_calls = sipp.start("uas_busy", local_port=sw.trunk_port, calls=4,
                               keys={"rtpport": sink.port}, workdir=tmp_path / "busy")
        try:
            await uas_calls.wait_ready()
            replies = await _four_formats(base, {**AUTH, "dial1": OUT_NUMBER, "dial2": "1001",
                                                 "Response": "yes"})
            res = await uas_calls.wait_async(15)
        finally:
            uas_calls.stop()
        await asyncio.sleep(0.2)
    assert res.ok, res.describe() + sw.diag()
    for fmt, r in replies.items():
        _assert_reason(fmt, r, "Busy", "busy")
    # dial2 was never dialled.
    assert not [e for e in sw.of("leg-initiated") if e.data.get("destination") == "1001"]
    assert len(sw.of("leg-initiated")) == 4
    no_switch_errors(sw)


@needs_sipp
@pytest.mark.timeout(120)
async def test_response_no_answer_in_every_format(tmp_path: Path) -> None:
    emb, base = c2c_switch(tmp_path / "sw")
    async with emb as sw, sipp.RtpSink() as sink:
        uas = sipp.start("uas_noanswer", local_port=sw.trunk_port, calls=4,
                         keys={"rtpport": sink.port}, workdir=tmp_path / "noanswer")
        try:
            await uas.wait_ready()
            replies = await _four_formats(base, {**AUTH, "dial1": OUT_NUMBER, "dial2": "1001",
                                                 "Response": "yes", "Timeout": "2"})
            res = await uas.wait_async(20)
        finally:
            uas.stop()
    assert res.ok, res.describe() + sw.diag()
    assert len(res.received("CANCEL")) == 4
    for fmt, r in replies.items():
        _assert_reason(fmt, r, "No answer", "no-answer")
    assert not [e for e in sw.of("leg-initiated") if e.data.get("destination") == "1001"]
    no_switch_errors(sw)


@pytest.mark.timeout(60)
async def test_response_not_registered_in_every_format(tmp_path: Path) -> None:
    emb, base = c2c_switch(tmp_path / "sw")
    async with emb as sw:
        replies = await _four_formats(base, {**AUTH, "dial1": "1002", "dial2": OUT_NUMBER,
                                             "Response": "yes", "showUID": "yes"})
        await asyncio.sleep(0.2)
    for fmt, r in replies.items():
        _assert_reason(fmt, r, "Unreachable", "no-answer")
        body = parse_response(fmt, r)
        cdr = sw.sw.recent_cdrs[body["call_id"]]
        assert [leg["leg_id"] for leg in cdr["legs"]] == [body["uid1"]]
    assert not [e for e in sw.of("leg-initiated") if e.data.get("destination") == OUT_NUMBER]
    no_switch_errors(sw)


@pytest.mark.timeout(60)
async def test_several_dial1_numbers_each_get_a_call(tmp_path: Path) -> None:
    emb, base = c2c_switch(tmp_path / "sw")
    async with emb as sw, httpx.AsyncClient(base_url=base, timeout=30) as http:
        r = await http.get(click2call.PATH, params={
            **AUTH, "dial1": "1002,1001", "dial2": OUT_NUMBER, "Response": "yes",
            "showUID": "yes", "RFormat": "json"})
        await asyncio.sleep(0.2)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "fail", body
    calls = body["calls"]
    assert [c["dial1"] for c in calls] == ["1002", "1001"]
    assert all(c["reason"] == "Unreachable" for c in calls), calls
    assert len({c["call_id"] for c in calls}) == 2
    for c in calls:
        cdr = sw.sw.recent_cdrs[c["call_id"]]
        assert cdr["callee"] == c["dial1"] and cdr["legs"][0]["leg_id"] == c["uid1"]
    no_switch_errors(sw)


# --------------------------------------------------------------------------- future calls


def _date(at: float) -> str:
    return datetime.fromtimestamp(at, ZoneInfo(TZ)).strftime("%Y%m%d%H%M")


@needs_sipp
@pytest.mark.timeout(180)
async def test_future_call_retried_when_busy_listed_cancelled_and_after_restart(
        tmp_path: Path) -> None:
    from switch.clock import VirtualClock

    clock = VirtualClock(start=1_800_000_000.0)  # on a whole minute
    emb, base = c2c_switch(tmp_path / "sw", clock=clock)
    future = {**AUTH, "dial2": "1001", "Retrytime": "30"}
    async with emb as sw, sipp.RtpSink() as sink, \
            httpx.AsyncClient(base_url=base, timeout=30) as http:
        sched = sw.sw.scheduler
        r = await http.post(click2call.PATH, data={
            **future, "dial1": OUT_NUMBER, "Date": _date(clock.now() + 120), "Maxretry": "2",
            "ident": "job-a", "RFormat": "json"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "ok" and body["reason"] == "Scheduled", body
        assert body["date"] == _date(clock.now() + 120)
        r = await http.get(click2call.PATH, params={
            **future, "dial1": OUT_NUMBER, "Date": _date(clock.now() + 3600), "Maxretry": "0",
            "ident": "job-b"})
        assert r.status_code == 200, r.text
        r = await http.get(click2call.PATH, params={
            **future, "dial1": OUT_NUMBER, "Date": _date(clock.now() + 3600), "Maxretry": "0",
            "ident": "job-c"})
        assert r.status_code == 200, r.text
        # The same ident twice is refused.
        r = await http.get(click2call.PATH, params={
            **future, "dial1": OUT_NUMBER, "Date": _date(clock.now() + 3600), "Maxretry": "0",
            "ident": "job-c", "RFormat": "json"})
        assert r.status_code == 409 and r.json()["code"] == "ident_in_use", r.text
        # Cancel job-c by ident.
        r = await http.get(click2call.PATH, params={**AUTH, "action": "cancel",
                                                    "ident": "job-c", "RFormat": "json"})
        assert r.status_code == 200 and r.json()["jobs"][0]["state"] == "canceled", r.text
        r = await http.get(click2call.PATH, params={**AUTH, "action": "cancel",
                                                    "ident": "nope", "RFormat": "json"})
        assert r.status_code == 404 and r.json()["code"] == "unknown_ident", r.text

        busy = sipp.start("uas_busy", local_port=sw.trunk_port, calls=3,
                          keys={"rtpport": sink.port}, workdir=tmp_path / "busy")
        try:
            await busy.wait_ready()
            await clock.advance(119)
            await asyncio.sleep(0.5)
            assert not sw.of("initiated"), "placed before its Date"
            attempts_seen = 0
            for n in range(3):
                await clock.advance(1)
                want = n + 1

                async def tried(want: int = want) -> bool:
                    info = await sched.get("click2call:demo-org:job-a:1")
                    return info is not None and len(info["attempts"]) == want \
                        and info["state"] != "dialing"

                try:
                    await _until(tried)
                except AssertionError:
                    raise AssertionError(
                        f"{await sched.get('click2call:demo-org:job-a:1')}\n{sw.diag()}"
                    ) from None
                attempts_seen = want
                if n < 2:
                    await clock.advance(28)
                    await asyncio.sleep(0.3)
                    assert len(sw.of("initiated")) == want, "retried before Retrytime"
                    await clock.advance(1)
            res = await busy.wait_async(15)
        finally:
            busy.stop()
        assert res.ok, res.describe()
        assert attempts_seen == 3
        await asyncio.sleep(0.3)
        assert len(sw.of("initiated")) == 3, "more than Maxretry retries"
        r = await http.get(click2call.PATH, params={**AUTH, "action": "list",
                                                    "RFormat": "xml"})
        listed = {j["ident"]: j for j in parse_response("xml", r)["jobs"]}
        assert listed["job-a"]["state"] == "failed" and listed["job-a"]["attempts"] == "3"
        assert listed["job-b"]["state"] == "pending"
        assert listed["job-c"]["state"] == "canceled"
        job_a = await sched.get("click2call:demo-org:job-a:1")
        assert job_a is not None
        assert [a["outcome"] for a in job_a["attempts"]] == ["busy"] * 3
        gaps = [b["at"] - a["ended_at"] for a, b in zip(job_a["attempts"],
                                                         job_a["attempts"][1:], strict=False)]
        assert all(29 <= g <= 31 for g in gaps), gaps  # virtual seconds, not wall clock
        assert job_a["request"]["tags"]["external_id"] == "job-a"
    # Restart on the same store: job-b is placed by the new switch, job-c never.
    emb2, base2 = c2c_switch(tmp_path / "sw2", clock=clock,
                             extra={"store": {"url": emb.config.store.url}})
    async with emb2 as sw2, sipp.RtpSink() as sink2, \
            httpx.AsyncClient(base_url=base2, timeout=30) as http:
        answer = start_trunk(sw2, tmp_path / "answer", sink2)
        try:
            await answer.wait_ready()
            await clock.advance(3600)

            async def placed() -> bool:
                info = await sw2.sw.scheduler.get("click2call:demo-org:job-b:1")
                return info is not None and info["state"] == "done"

            await _until(placed)
            await asyncio.sleep(0.3)
            for call_id in list(sw2.sw.b2bua.calls):
                sw2.sw.hangup(call_id)
            answer_res = await answer.wait_async(10)
        finally:
            answer.stop()
        r = await http.get(click2call.PATH, params={**AUTH, "action": "list",
                                                    "ident": "job-b", "RFormat": "json"})
        (job_b,) = r.json()["jobs"]
    assert answer_res.ok, answer_res.describe()
    assert len(sw2.of("initiated")) == 1
    assert job_b["state"] == "done" and job_b["attempts"] == 1 and job_b["outcome"] == "answered"
    invite = answer_res.received("INVITE")[0]
    assert OUT_NUMBER in invite.splitlines()[0]
    no_switch_errors(sw2)


@needs_sipp
@pytest.mark.timeout(120)
async def test_future_call_maxretry_counts_every_kind_of_failure(tmp_path: Path) -> None:
    """Maxretry=1: a busy attempt, then an unanswered retry, and no third attempt (the
    scheduler alone would allow one more retry for the other kind of failure)."""
    from switch.clock import VirtualClock

    clock = VirtualClock(start=1_800_000_000.0)
    emb, base = c2c_switch(tmp_path / "sw", clock=clock)
    job_id = "click2call:demo-org:mixed:1"
    async with emb as sw, sipp.RtpSink() as sink, \
            httpx.AsyncClient(base_url=base, timeout=30) as http:
        sched = sw.sw.scheduler
        r = await http.get(click2call.PATH, params={
            **AUTH, "dial1": OUT_NUMBER, "dial2": "1001", "Date": _date(clock.now() + 60),
            "Maxretry": "1", "Retrytime": "30", "Timeout": "1", "ident": "mixed"})
        assert r.status_code == 200, r.text

        async def attempts(n: int) -> None:
            async def reached() -> bool:
                info = await sched.get(job_id)
                return info is not None and len(info["attempts"]) == n \
                    and info["state"] != "dialing"
            await _until(reached)

        busy = sipp.start("uas_busy", local_port=sw.trunk_port, keys={"rtpport": sink.port},
                          workdir=tmp_path / "busy")
        try:
            await busy.wait_ready()
            await clock.advance(60)
            await attempts(1)
            busy_res = await busy.wait_async(10)
        finally:
            busy.stop()
        ring = sipp.start("uas_noanswer", local_port=sw.trunk_port,
                          keys={"rtpport": sink.port}, workdir=tmp_path / "ring")
        try:
            await ring.wait_ready()
            await clock.advance(30)
            await attempts(2)
            ring_res = await ring.wait_async(15)
        finally:
            ring.stop()
        await asyncio.sleep(0.3)
        await clock.advance(600)
        await asyncio.sleep(0.5)
        info = await sched.get(job_id)
        r = await http.get(click2call.PATH, params={**AUTH, "action": "list", "ident": "mixed",
                                                    "RFormat": "json"})
    assert busy_res.ok and ring_res.ok, busy_res.describe() + ring_res.describe()
    assert info is not None
    assert [a["outcome"] for a in info["attempts"]] == ["busy", "no-answer"], info
    assert len(sw.of("initiated")) == 2, sw.diag()
    (job,) = r.json()["jobs"]
    assert job["state"] == "failed" and job["attempts"] == 2, job
    no_switch_errors(sw)


# --------------------------------------------------------------------------- invalid input

BAD: list[tuple[dict[str, str], int, str]] = [
    ({"pass": "demo-pass", "org": "demo-org", "dial1": "1001", "dial2": "1002"}, 400,
     "missing_parameter"),
    ({**AUTH, "pass": "wrong", "dial1": "1001", "dial2": "1002"}, 401, "auth_failed"),
    ({**AUTH, "org": "other", "dial1": "1001", "dial2": "1002"}, 401, "auth_failed"),
    ({**AUTH, "dial2": "1002"}, 400, "missing_parameter"),
    ({**AUTH, "dial1": "1001"}, 400, "missing_parameter"),
    ({**AUTH, "dial1": "1001", "dial2": "1002", "Timeout": "0"}, 400, "invalid_timeout"),
    ({**AUTH, "dial1": "1001", "dial2": "1002", "Timeout": "301"}, 400, "invalid_timeout"),
    ({**AUTH, "dial1": "1001", "dial2": "1002", "Timeout": "1e2"}, 400, "invalid_timeout"),
    ({**AUTH, "dial1": "1001", "dial2": "1002", "Date": "2027-01-01 10:00", "Maxretry": "1",
      "Retrytime": "60", "ident": "x"}, 400, "invalid_date"),
    ({**AUTH, "dial1": "1001", "dial2": "1002", "Date": "202702301000", "Maxretry": "1",
      "Retrytime": "60", "ident": "x"}, 400, "invalid_date"),
    ({**AUTH, "dial1": "1001", "dial2": "1002", "Date": "200001011000", "Maxretry": "1",
      "Retrytime": "60", "ident": "x"}, 400, "invalid_date"),
    ({**AUTH, "dial1": "1001", "dial2": "1002", "Maxretry": "2"}, 400, "missing_date"),
    ({**AUTH, "dial1": "1001", "dial2": "1002", "Date": "209901011000"}, 400,
     "missing_parameter"),
    ({**AUTH, "dial1": "1001", "dial2": "1002", "Date": "209901011000", "Maxretry": "99",
      "Retrytime": "60", "ident": "x"}, 400, "invalid_maxretry"),
    ({**AUTH, "dial1": "1001", "dial2": "1002", "Date": "209901011000", "Maxretry": "1",
      "Retrytime": "1", "ident": "x"}, 400, "invalid_retrytime"),
    ({**AUTH, "dial1": "1001", "dial2": "1002", "Date": "209901011000", "Maxretry": "1",
      "Retrytime": "60", "ident": "a/b"}, 400, "invalid_ident"),
    ({**AUTH, "dial1": "12", "dial2": "1002"}, 400, "invalid_dial1"),
    ({**AUTH, "dial1": "1001,<sip:x@evil>", "dial2": "1002"}, 400, "invalid_dial1"),
    ({**AUTH, "dial1": "1001", "dial2": "abc"}, 400, "invalid_dial2"),
    ({**AUTH, "dial1": "1001", "dial2": "1002,1001"}, 400, "invalid_dial2"),
    ({**AUTH, "dial1": "1001", "dial2": "1002", "SetCID": "12ab"}, 400, "invalid_setcid"),
    ({**AUTH, "dial1": OUT_NUMBER, "dial2": "+905329876543"}, 400, "setcid_required"),
    ({**AUTH, "dial1": "1001", "dial2": "1002", "showUID": "yes"}, 400, "invalid_showuid"),
    ({**AUTH, "dial1": "1001", "dial2": "1002", "Response": "maybe"}, 400,
     "invalid_response"),
    ({**AUTH, "dial1": "1001", "dial2": "1002", "Bogus": "1"}, 400, "unknown_parameter"),
    ({**AUTH, "dial1": "1001", "dial2": "1002", "action": "delete"}, 400, "invalid_action"),
]


@pytest.mark.timeout(60)
async def test_invalid_input_refused_in_format_and_nothing_dialled(tmp_path: Path) -> None:
    emb, base = c2c_switch(tmp_path / "sw")
    async with emb as sw, httpx.AsyncClient(base_url=base, timeout=30) as http:
        for params, status, code in BAD:
            for fmt in click2call.FORMATS:
                r = await http.get(click2call.PATH, params={**params, "RFormat": fmt})
                body = parse_response(fmt, r)
                assert r.status_code == status, (params, fmt, r.text)
                assert body["status"] == "fail" and body["code"] == code, (params, fmt, r.text)
                assert body["reason"], r.text
            # POST form gives the same answer.
            r = await http.post(click2call.PATH, data={**params, "RFormat": "json"})
            assert r.status_code == status and r.json()["code"] == code, (params, r.text)
        # Repeated parameter (query + body), unknown RFormat (answered as text), a JSON body.
        r = await http.post(click2call.PATH + "?dial1=1001", data={**AUTH, "dial1": "1002",
                                                                    "dial2": "1002"})
        assert r.status_code == 400 and "code=duplicate_parameter" in r.text, r.text
        r = await http.get(click2call.PATH, params={**AUTH, "dial1": "1001", "dial2": "1002",
                                                    "RFormat": "pdf"})
        assert r.status_code == 400 and "code=invalid_rformat" in r.text, r.text
        r = await http.post(click2call.PATH, json={**AUTH, "dial1": "1001", "dial2": "1002"})
        assert r.status_code == 415 and "code=invalid_body" in r.text, r.text
        # Hostile text is escaped in HTML and XML and cannot add a line to text.
        evil = '<b>"&x\r\nstatus=ok'
        for fmt in click2call.FORMATS:
            r = await http.get(click2call.PATH, params={evil: "1", "RFormat": fmt})
            body = parse_response(fmt, r)
            assert body["status"] == "fail" and body["code"] == "unknown_parameter", r.text
            if fmt in ("html", "xml"):
                assert "<b>" not in r.text
            else:
                assert body["reason"].startswith("Unknown parameter: <b>"), r.text
        await asyncio.sleep(0.2)
        jobs = await sw.sw.scheduler.list()
    assert not sw.of("initiated"), sw.diag()
    assert not jobs
    no_switch_errors(sw)


# --------------------------------------------------------------------------- units


def _config(**extra: Any) -> Any:
    return parse_config({
        "calls": {"default_country": "TR"},
        "extensions": [{"number": n, "password": "pw-123456"} for n in ("1001", "1002")],
        "trunks": [{"name": "pstn", "host": "127.0.0.1", "port": 5070,
                    "dids": {"+902120001001": "1001"}}],
        "routes": [{"pattern": "^\\+", "trunk": "pstn"}],
        **extra,
    })


def test_config_validation() -> None:
    cfg = _config(click2call={"accounts": [ACCOUNT]})
    settings = cfg.frontends["click2call"]
    assert isinstance(settings, click2call.Settings)
    assert settings.find("demo", "demo-pass", "demo-org") is not None
    assert settings.find("demo", "demo-pas", "demo-org") is None
    cases = [
        ({"accounts": []}, "click2call.accounts"),
        ({"accounts": [{**ACCOUNT, "timezone": "Mars/Base"}]}, "click2call.accounts[0].timezone"),
        ({"accounts": [{**ACCOUNT, "cid": "12"}]}, "click2call.accounts[0].cid"),
        ({"accounts": [{**ACCOUNT, "pass": ""}]}, "click2call.accounts[0].pass"),
        ({"accounts": [{**ACCOUNT, "org": "a:b"}]}, "click2call.accounts[0].org"),
        ({"accounts": [{**ACCOUNT, "agent": "1001"}]}, "click2call.accounts[0].agent"),
        ({"accounts": [ACCOUNT, ACCOUNT]}, "click2call.accounts[1]"),
        ({"accounts": [ACCOUNT], "other": 1}, "click2call.other"),
    ]
    for section, path in cases:
        with pytest.raises(ConfigError) as err:
            _config(click2call=section)
        assert err.value.key_path == path, (section, err.value)


def test_dialing_options_table() -> None:
    cfg = _config()
    account = Account(user="u", password="p", org="o", cid=ORG_CID)
    ext1 = Destination("extension", "1001", "1001")
    ext2 = Destination("extension", "1002", "1002")
    out1 = Destination("number", "+905321234567", "05321234567")
    out2 = Destination("number", "+905329876543", "+905329876543")
    # Agent then outside number: the agent sees the number, the customer the agent's DID.
    plan = plan_call(cfg, account, ext1, out1, None, False)
    assert (plan.caller_id, plan.second_caller_id, plan.record) == (
        "+905321234567", "+902120001001", True)
    # Outside number then an agent without a DID: the org's number, then the customer's.
    plan = plan_call(cfg, account, out1, ext2, None, False)
    assert (plan.caller_id, plan.second_caller_id, plan.record) == (
        ORG_CID, "+905321234567", True)
    # Agent to agent: each sees the other's extension.
    plan = plan_call(cfg, account, ext1, ext2, None, False)
    assert (plan.caller_id, plan.second_caller_id, plan.record) == ("1002", "1001", True)
    # Outside to outside: SetCID required; set to the agent's extension, the outside
    # parties see the agent's number and the call is the agent's (recorded).
    with pytest.raises(click2call.Refusal) as err:
        plan_call(cfg, account, out1, out2, None, False)
    assert err.value.code == "setcid_required"
    plan = plan_call(cfg, account, out1, out2, "1001", True)
    assert (plan.caller_id, plan.second_caller_id, plan.record) == (
        "+902120001001", "+902120001001", True)
    # SetCID = the agent's extension with the agent first: the agent sees its extension.
    plan = plan_call(cfg, account, ext1, out1, "1001", True)
    assert (plan.caller_id, plan.second_caller_id) == ("1001", "+902120001001")
    # SetCID = a number: both see it; outside to outside is then not recorded.
    plan = plan_call(cfg, account, out1, out2, "+902125550000", False)
    assert (plan.caller_id, plan.second_caller_id, plan.record) == (
        "+902125550000", "+902125550000", False)


def test_render_is_well_formed() -> None:
    body = {"status": "fail", "code": "x", "reason": "a<b>&\"'\x01\r\nstatus=ok",
            "calls": [{"dial1": "<1>", "uid1": "a&b"}]}
    text, _ = render(body, "json")
    assert json.loads(text)["calls"][0]["dial1"] == "<1>"
    text, _ = render(body, "xml")
    root = ET.fromstring(text)
    assert root.findtext("calls/call/uid1") == "a&b"
    text, _ = render(body, "html")
    assert "<b>" not in text and "&lt;b&gt;" in text
    text, _ = render(body, "text")
    assert text.splitlines()[0] == "status=fail"
    assert [line for line in text.splitlines() if line.startswith("status=")] == ["status=fail"]
