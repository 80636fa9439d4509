"""Interop: the call-control facade (originate, bridge, flows) against real SIPp and baresip.

* The switch originates a call to a baresip extension and, once it answers, a second leg to a
  SIPp UAS on the trunk, and bridges them (the click-to-call primitive): audio flows both
  ways, both legs end answered, the CDR is stored and the recording is a stereo WAV as long
  as the bridged conversation.
* An IVR flow: a SIPp caller dials the flow's number, hears the prompt (RTP to its port), sends
  RFC 2833 digits; the flow POSTs them to a test web service and bridges the caller to the
  destination the service returned (a SIPp UAS on the trunk).
* Outcomes of an originated leg: busy, not registered, no answer.
"""

from __future__ import annotations

import asyncio
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_interop_media import (
    OUT_NUMBER,
    EmbeddedSwitch,
    no_switch_errors,
    phone,
    registered,
    start_trunk,
)

from switch.clock import VirtualClock
from switch.scheduler import RetryPolicy

try:
    from peers import audio, baresip, sipp
    from peers.httpserver import HttpRequest, TestHttpServer
except ModuleNotFoundError:  # pragma: no cover
    from tests.peers import audio, baresip, sipp
    from tests.peers.httpserver import HttpRequest, TestHttpServer

pytestmark = pytest.mark.peer

needs_sipp = pytest.mark.skipif(not sipp.available(), reason=sipp.INSTALL_HINT)
needs_baresip = pytest.mark.skipif(not baresip.available(), reason=baresip.INSTALL_HINT)

PHONE_HZ = 1000.0
TRUNK_HZ = 600.0


def _dominant(samples: np.ndarray[Any, Any], rate: int = 8000) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * rate / len(samples))


@needs_sipp
@needs_baresip
@pytest.mark.timeout(90)
async def test_originate_extension_then_trunk_bridged_recorded(tmp_path: Path) -> None:
    tone = audio.write_tone_wav(tmp_path / "tone.wav", PHONE_HZ, 30.0)
    async with EmbeddedSwitch(tmp_path / "sw") as sw, sipp.RtpSink() as sink:
        uas = start_trunk(sw, tmp_path, sink)
        p = phone(tmp_path, sw, "1001", source=tone, record=True)
        try:
            await uas.wait_ready()
            async with p:
                await registered(p, sw)
                ref = sw.sw.originate("1001", then=OUT_NUMBER, caller_id="+902121234567",
                                      record=True)
                # The ids exist before anything rings.
                assert ref.call_id and ref.leg_id and ref.second_leg_id
                ev = await p.wait_event("CALL_ESTABLISHED", "CALL_CLOSED", timeout=15)
                assert ev["type"] == "CALL_ESTABLISHED", f"{ev}\n{sw.diag()}"
                await sw.wait_event("bridged", timeout=10)
                await sink.wait_for(50)  # the phone's tone reaches the trunk through us
                for _ in range(75):      # the trunk talks back for 1.5 s
                    await sink.send_tone(TRUNK_HZ, 0.02)
                await asyncio.sleep(0.5)
                sw.sw.hangup(ref.call_id)
                cdr = await sw.sw.wait_call(ref.call_id, timeout=10)
                await p.wait_event("CALL_CLOSED", timeout=10)
            uas_res = await uas.wait_async(10)
        finally:
            uas.stop()
        stored = None
        for _ in range(50):
            stored = await sw.sw.store.get_cdr(ref.call_id)
            if stored is not None:
                break
            await asyncio.sleep(0.1)
        rec = None
        if cdr["recording_ids"]:
            rec = await sw.sw.store.get_recording(cdr["recording_ids"][0])
        recorded = p.recorded_files()
    assert uas_res.ok, uas_res.describe() + sw.diag()
    # Leg 2 was only placed after leg 1 answered.
    answered = [e for e in sw.events if e.name == "answered" and e.leg_id == ref.leg_id]
    second = [e for e in sw.events if e.name == "leg-initiated"
              and e.leg_id == ref.second_leg_id]
    assert answered and second and answered[0].seq < second[0].seq, sw.diag()
    # The trunk got the caller ID we asked for, and heard the phone's tone.
    invite = uas_res.received("INVITE")[0]
    assert "sip:+902121234567@" in invite.split("From:", 1)[1].splitlines()[0], invite
    assert OUT_NUMBER in invite.splitlines()[0]
    heard = sink.audio()
    assert abs(_dominant(heard[-4000:]) - PHONE_HZ) < 15, "trunk did not hear the phone"
    # The phone heard the trunk.
    assert recorded, "baresip recorded nothing"
    phone_heard, rate = audio.read_wav(recorded[-1])
    assert audio.dominant_frequency(phone_heard, rate) == pytest.approx(TRUNK_HZ, abs=15)
    # One CDR links both legs, each answered.
    assert cdr["outcome"] == "answered"
    legs = {leg["leg_id"]: leg for leg in cdr["legs"]}
    assert legs[ref.leg_id]["outcome"] == "answered"
    assert legs[ref.second_leg_id]["outcome"] == "answered"
    assert cdr["caller_id_number"] == "+902121234567"
    assert cdr["billsec"] > 1.5
    assert stored is not None and stored["call_id"] == ref.call_id
    assert stored["outcome"] == "answered" and len(stored["legs"]) == 2
    # The recording: stereo, as long as the bridged part of the call.
    (rec_id,) = cdr["recording_ids"]
    assert rec is not None and rec["call_id"] == ref.call_id and rec["id"] == rec_id
    path = Path(cdr["recordings"][0]["path"])
    with wave.open(str(path)) as w:
        assert w.getnchannels() == 2
        seconds = w.getnframes() / w.getframerate()
    assert abs(seconds - cdr["billsec"]) < 0.5, (seconds, cdr["billsec"])
    no_switch_errors(sw)


@needs_sipp
@pytest.mark.timeout(90)
async def test_ivr_flow_gathers_posts_and_bridges(tmp_path: Path) -> None:
    def lookup(req: HttpRequest) -> tuple[int, Any]:
        return 200, {"destination": OUT_NUMBER, "customer": {"name": "Ada"}}

    async with TestHttpServer(lookup) as web:
        flows = [{
            "name": "ivr", "number": "500",
            "steps": [
                {"action": "gather", "var": "digits", "prompt": "enter_number",
                 "min_digits": 1, "max_digits": 8, "finish_key": "#", "first_timeout": 8.0,
                 "inter_timeout": 3.0, "tries": 1},
                {"action": "http", "url": web.url("/lookup"), "method": "POST",
                 "json": {"digits": "${digits}", "caller": "${caller}"},
                 "set": {"dest": "destination", "name": "customer.name"}, "timeout": 3.0},
                {"action": "dial", "destination": "${dest}", "timeout": 15.0},
                {"action": "hangup"},
            ],
        }]
        async with EmbeddedSwitch(tmp_path / "sw", extra={"flows": flows}) as sw, \
                sipp.RtpSink() as caller_media, sipp.RtpSink() as trunk_media:
            uas = start_trunk(sw, tmp_path, trunk_media)
            try:
                await uas.wait_ready()
                uac = sipp.start("t_uac_rtpport", sw.sip_port, service="500",
                                 auth_user="1001", auth_pass=sw.passwords["1001"],
                                 keys={"caller": "1001", "rtpport": caller_media.port},
                                 duration_ms=9000, workdir=tmp_path / "uac")
                # The caller hears the prompt...
                await caller_media.wait_for(25, timeout=10)
                # ...and types 4 2 # over it (RFC 2833 from the port its SDP named).
                for digit in "42#":
                    await caller_media.send_dtmf(digit, duration_ms=120)
                    await asyncio.sleep(0.15)
                (req,) = await web.wait(1)
                await sw.wait_event("bridged", timeout=15)
                await asyncio.sleep(0.5)
                for _ in range(25):
                    await caller_media.send_tone(PHONE_HZ, 0.02)
                await trunk_media.wait_for(20, timeout=5)
                uac_res = await uac.wait_async(30)
                uas_res = await uas.wait_async(10)
            finally:
                uas.stop()
            await sw.wait_event("completed", timeout=10)
    assert uac_res.ok and uas_res.ok, uac_res.describe() + uas_res.describe() + sw.diag()
    assert req.method == "POST" and req.path == "/lookup"
    assert req.json() == {"digits": "42", "caller": "1001"}
    assert OUT_NUMBER in uas_res.received("INVITE")[0].splitlines()[0]
    dtmf = [e.data["digit"] for e in sw.of("dtmf")]
    assert dtmf[:3] == ["4", "2", "#"], sw.diag()
    heard = trunk_media.audio()
    assert abs(_dominant(heard[-1600:]) - PHONE_HZ) < 20, "the trunk did not hear the caller"
    (completed,) = sw.of("completed")
    assert len(completed.data["legs"]) == 2
    no_switch_errors(sw)


@needs_sipp
@pytest.mark.timeout(60)
async def test_originate_outcomes_busy_unregistered(tmp_path: Path) -> None:
    async with EmbeddedSwitch(tmp_path / "sw") as sw, sipp.RtpSink() as sink:
        # 1002 is not registered: the leg fails at once (480, no-answer is not claimed).
        ref = sw.sw.originate("1002")
        cdr = await sw.sw.wait_call(ref.call_id, timeout=5)
        assert cdr["outcome"] == "no-answer" and cdr["sip_status"] == 480, cdr
        # The trunk answers busy.
        uas = start_trunk(sw, tmp_path, sink, scenario="uas_busy")
        try:
            await uas.wait_ready()
            ref = sw.sw.originate(OUT_NUMBER, then="1001")
            cdr = await sw.sw.wait_call(ref.call_id, timeout=10)
            uas_res = await uas.wait_async(10)
        finally:
            uas.stop()
    assert uas_res.ok, uas_res.describe()
    assert cdr["outcome"] == "busy" and cdr["sip_status"] == 486 and cdr["q850"] == 17, cdr
    legs = cdr["legs"]
    assert len(legs) == 1, "the second stage must not be dialled when the first fails"
    no_switch_errors(sw)


async def _until(predicate: Any, timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not reached: {predicate.__name__}")
        await asyncio.sleep(0.05)


@needs_sipp
@pytest.mark.timeout(90)
async def test_scheduled_call_busy_then_answered_and_restart(tmp_path: Path) -> None:
    """On a virtual clock: a call scheduled a minute ahead is placed at that minute, a busy
    trunk gives exactly one retry after the interval, and the retry is answered. A second job
    pending across a restart of the switch is placed once by the new switch."""
    clock = VirtualClock(start=1_800_000_000.0)
    retry = RetryPolicy.from_dict({"busy": {"count": 2, "interval": 30}})
    async with EmbeddedSwitch(tmp_path / "sw", clock=clock) as sw, sipp.RtpSink() as sink:
        sched = sw.sw.scheduler
        job = await sched.schedule({"destination": OUT_NUMBER}, at=clock.now() + 60,
                                   retry=retry)
        later = await sched.schedule({"destination": OUT_NUMBER}, at=clock.now() + 600)
        busy = start_trunk(sw, tmp_path / "busy", sink, scenario="uas_busy")
        try:
            await busy.wait_ready()
            await clock.advance(59)
            await asyncio.sleep(0.5)
            assert not sw.of("initiated"), "placed before its time"
            await clock.advance(1)

            async def tried_once() -> bool:
                info = await sched.get(job)
                return info is not None and len(info["attempts"]) == 1

            try:
                await _until(tried_once)
            except AssertionError:
                raise AssertionError(f"{await sched.get(job)}\n{sw.diag()}") from None
            busy_res = await busy.wait_async(10)
        finally:
            busy.stop()
        assert busy_res.ok, busy_res.describe()
        info = await sched.get(job)
        assert info is not None and info["state"] == "pending"
        assert info["attempts"][0]["outcome"] == "busy"
        answer = start_trunk(sw, tmp_path / "answer", sink)
        try:
            await answer.wait_ready()
            await clock.advance(29)
            await asyncio.sleep(0.3)
            assert len(sw.of("initiated")) == 1, "retried before the interval"
            await clock.advance(1)

            async def done() -> bool:
                info = await sched.get(job)
                return info is not None and info["state"] == "done"

            await _until(done)
            await asyncio.sleep(0.2)
            for call_id in list(sw.sw.b2bua.calls):
                sw.sw.hangup(call_id)
            answer_res = await answer.wait_async(10)
        finally:
            answer.stop()
        assert answer_res.ok, answer_res.describe()
        info = await sched.get(job)
        assert info is not None
        assert [a["outcome"] for a in info["attempts"]] == ["busy", "answered"]
        assert (await sched.get(later))["state"] == "pending"  # type: ignore[index]
    # Restart on the same store: the pending job is placed exactly once.
    async with EmbeddedSwitch(tmp_path / "sw2", clock=clock,
                              extra={"store": {"url": sw.config.store.url}}) as sw2, \
            sipp.RtpSink() as sink2:
        answer = start_trunk(sw2, tmp_path / "answer2", sink2)
        try:
            await answer.wait_ready()
            await clock.advance(600)

            async def placed() -> bool:
                info = await sw2.sw.scheduler.get(later)
                return info is not None and info["state"] == "done"

            await _until(placed)
            for call_id in list(sw2.sw.b2bua.calls):
                sw2.sw.hangup(call_id)
            answer_res = await answer.wait_async(10)
        finally:
            answer.stop()
        assert answer_res.ok, answer_res.describe()
        assert len(sw2.of("initiated")) == 1
        info = await sw2.sw.scheduler.get(later)
        assert info is not None and len(info["attempts"]) == 1


@needs_sipp
@needs_baresip
@pytest.mark.timeout(90)
async def test_http_api_originates_two_legs_and_bridges_them(tmp_path: Path) -> None:
    """Over the native HTTP API: originate to a baresip extension, originate to a SIPp UAS on
    the trunk, bridge the two answered legs (two calls become one), hang up; the CDR links
    both legs and the recording downloads as a stereo WAV."""
    import httpx

    try:
        from peers.ports import free_udp_tcp_port
    except ModuleNotFoundError:  # pragma: no cover
        from tests.peers.ports import free_udp_tcp_port

    http_port = free_udp_tcp_port()
    key = "interop-key-0001"
    tone = audio.write_tone_wav(tmp_path / "tone.wav", PHONE_HZ, 30.0)
    extra = {"http": {"address": "127.0.0.1", "port": http_port, "enabled": True},
             "api": {"keys": [{"key": key, "tenant": "default"}]}}
    async with EmbeddedSwitch(tmp_path / "sw", extra=extra) as sw, sipp.RtpSink() as sink:
        uas = start_trunk(sw, tmp_path, sink)
        p = phone(tmp_path, sw, "1001", source=tone, record=True)
        api = httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}",
                                headers={"Authorization": f"Bearer {key}"})
        try:
            await uas.wait_ready()
            async with p, api:
                await registered(p, sw)
                r1 = await api.post("/v1/calls", json={"destination": "1001",
                                                       "record": True})
                assert r1.status_code == 202, r1.text
                (c1,) = r1.json()["calls"]
                ev = await p.wait_event("CALL_ESTABLISHED", "CALL_CLOSED", timeout=15)
                assert ev["type"] == "CALL_ESTABLISHED", f"{ev}\n{sw.diag()}"
                r2 = await api.post("/v1/calls", json={"destination": OUT_NUMBER,
                                                       "caller_id": "+902121234567"})
                assert r2.status_code == 202, r2.text
                (c2,) = r2.json()["calls"]
                await sw.wait_event("answered", predicate=lambda e: e.leg_id == c2["leg_id"],
                                    timeout=10)
                rb = await api.post("/v1/bridge", json={"leg_a": c1["leg_id"],
                                                        "leg_b": c2["leg_id"]})
                assert rb.status_code == 200, rb.text
                await sink.wait_for(50)
                for _ in range(50):
                    await sink.send_tone(TRUNK_HZ, 0.02)
                await asyncio.sleep(0.3)
                rh = await api.post(f"/v1/calls/{c1['call_id']}/hangup")
                assert rh.status_code == 200, rh.text
                await p.wait_event("CALL_CLOSED", timeout=10)
                cdr = await sw.sw.wait_call(c1["call_id"], timeout=10)
                for _ in range(50):
                    rc = await api.get(f"/v1/cdrs/{c1['call_id']}")
                    if rc.status_code == 200:
                        break
                    await asyncio.sleep(0.1)
                assert rc.status_code == 200, rc.text
                stored = rc.json()
                # The merged call's journal records ended with the one CDR: nothing left
                # that a crash now would turn into an "interrupted" CDR.
                for _ in range(50):  # bounded: done() follows the batch's commit
                    if sw.sw.journal.open_records == 0:
                        break
                    await asyncio.sleep(0.05)
                assert sw.sw.journal.open_records == 0 and not sw.sw._call_tokens
                rec_id = stored["recording_ids"][0]
                rr = await api.get(f"/v1/recordings/{rec_id}")
            uas_res = await uas.wait_async(10)
        finally:
            uas.stop()
    assert uas_res.ok, uas_res.describe()
    assert cdr["outcome"] == "answered"
    assert {leg["leg_id"] for leg in stored["legs"]} == {c1["leg_id"], c2["leg_id"]}
    assert all(leg["outcome"] == "answered" for leg in stored["legs"])
    assert rr.status_code == 200 and rr.headers["content-type"].startswith("audio/")
    wav = tmp_path / "dl.wav"
    wav.write_bytes(rr.content)
    with wave.open(str(wav)) as w:
        assert w.getnchannels() == 2 and w.getnframes() > 8000
    heard = sink.audio()
    assert abs(_dominant(heard[-4000:]) - PHONE_HZ) < 15
    no_switch_errors(sw)


@needs_sipp
@needs_baresip
@pytest.mark.parametrize("answer_on_bridge", [True, False])
@pytest.mark.timeout(90)
async def test_answer_on_bridge_passes_early_media(tmp_path: Path,
                                                   answer_on_bridge: bool) -> None:
    """The first leg (baresip) hears the trunk's early media (183 + RTP before the 200) only
    with answer_on_bridge; without it, nothing of the early phase reaches it."""
    silence = audio.write_wav(tmp_path / "silence.wav", np.zeros(8000 * 30), 8000)
    async with EmbeddedSwitch(tmp_path / "sw") as sw, sipp.RtpSink() as sink:
        uas = start_trunk(sw, tmp_path, sink, scenario="t_uas_early_media")
        p = phone(tmp_path, sw, "1001", source=silence, record=True)
        try:
            await uas.wait_ready()
            async with p:
                await registered(p, sw)
                ref = sw.sw.originate("1001", then=OUT_NUMBER,
                                      answer_on_bridge=answer_on_bridge)
                await sw.wait_event("early-media", timeout=15,
                                    predicate=lambda e: e.leg_id == ref.second_leg_id)
                early = sw.sw.b2bua.legs[ref.second_leg_id]
                assert early.rtp is not None
                dest = early.rtp.local_address    # the switch's port named in our offer
                for _ in range(75):                # 1.5 s of "ringback" before the answer
                    await sink.send_tone(TRUNK_HZ, 0.02, dest=dest)
                assert not [e for e in sw.of("answered") if e.leg_id == ref.second_leg_id]
                await sw.wait_event("bridged", timeout=10)
                await asyncio.sleep(0.5)
                sw.sw.hangup(ref.call_id)
                await p.wait_event("CALL_CLOSED", timeout=10)
            await uas.wait_async(10)
        finally:
            uas.stop()
        recorded = p.recorded_files()
    assert recorded
    heard, rate = audio.read_wav(recorded[-1])
    level = audio.rms(heard, rate)
    if answer_on_bridge:
        assert audio.dominant_frequency(heard, rate) == pytest.approx(TRUNK_HZ, abs=15)
    else:
        assert level < 0.01, f"early media leaked to the first leg (rms {level})"
    no_switch_errors(sw)


@needs_sipp
@pytest.mark.timeout(60)
async def test_trunk_did_reaches_a_call_flow(tmp_path: Path) -> None:
    """A call from the trunk to a DID mapped to a flow's number runs the flow: the caller hears
    the prompt, and a digit it sends is gathered."""
    flows = [{"name": "menu", "number": "500", "steps": [
        {"action": "gather", "var": "choice", "prompt": "enter_number", "min_digits": 1,
         "max_digits": 1, "first_timeout": 8.0, "tries": 1},
        {"action": "hangup"},
    ]}]
    async with EmbeddedSwitch(tmp_path / "sw", extra={"flows": flows},
                              dids={"+902121234500": "500"}) as sw, \
            sipp.RtpSink() as caller_media:
        uac = sipp.start("t_uac_rtpport", sw.sip_port, local_port=sw.trunk_port,
                         service="+902121234500",
                         keys={"caller": "+905551112233", "rtpport": caller_media.port},
                         duration_ms=15000, workdir=tmp_path / "uac")
        try:
            await caller_media.wait_for(25, timeout=10)   # the prompt
            await caller_media.send_dtmf("7", duration_ms=120)
            (done,) = await sw.wait_event("completed", timeout=15)
        finally:
            uac.stop()
    (answered,) = [e for e in sw.of("answered") if e.data.get("local")]
    assert [e.data["digit"] for e in sw.of("dtmf")] == ["7"], sw.diag()
    assert answered.call_id == done.call_id
    no_switch_errors(sw)
