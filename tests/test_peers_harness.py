"""Validate the interop harness (tests/peers) against the real peers themselves.

SIPp UAC <-> SIPp UAS, baresip <-> baresip, baresip/pjsua2 <-> SIPp, with no switch in the
middle: when these pass, a failing interop test points at the switch, not at the harness.
Each test skips (with the install command) when its peer is missing.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import tomllib
from pathlib import Path

import numpy as np
import pytest

try:  # tests/ is not a package: pytest puts tests/ itself on sys.path (rootdir-relative)
    from peers import audio, baresip, pjsua, sipp
    from peers.ports import free_port_range, free_udp_tcp_port, is_free
    from peers.switchproc import SwitchProcess, dump_toml
except ModuleNotFoundError:  # pragma: no cover - tests/ turned into a package
    from tests.peers import audio, baresip, pjsua, sipp
    from tests.peers.ports import free_port_range, free_udp_tcp_port, is_free
    from tests.peers.switchproc import SwitchProcess, dump_toml

needs_sipp = pytest.mark.skipif(not sipp.available(), reason=sipp.INSTALL_HINT)
needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="SIPp play_pcap_audio sends through a raw socket: run as root")
needs_baresip = pytest.mark.skipif(not baresip.available(), reason=baresip.INSTALL_HINT)
needs_pjsua = pytest.mark.skipif(not pjsua.available(), reason=pjsua.INSTALL_HINT)

TRUNK_USER = "trunkuser"
TRUNK_PASS = "trunk-secret"


def _branch(msg: str) -> str:
    m = re.search(r"^Via:.*;branch=([^;\s]+)", msg, re.M)
    assert m, msg
    return m.group(1)


# --------------------------------------------------------------------------- ports / audio


def test_ports_are_free_distinct_and_even() -> None:
    ports = [free_udp_tcp_port() for _ in range(20)]
    assert len(set(ports)) == 20
    for p in ports:
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            with socket.socket(socket.AF_INET, kind) as s:
                s.bind(("127.0.0.1", p))
    lo, hi = free_port_range(100)
    assert lo % 2 == 0 and hi == lo + 99
    assert all(is_free(p) for p in range(lo, hi + 1))
    lo2, _ = free_port_range(100)
    assert lo2 > hi or lo2 + 99 < lo          # a later range does not overlap


@pytest.mark.parametrize("rate,stereo", [(8000, False), (16000, False), (48000, True)])
def test_audio_tone_analysis(tmp_path: Path, rate: int, stereo: bool) -> None:
    samples = audio.tone_samples(1000.0, 1.0, rate)
    if stereo:   # baresip records 48 kHz stereo: write interleaved by hand
        import wave
        pcm = (np.repeat(samples, 2) * 32767).astype("<i2")
        path = tmp_path / "s.wav"
        with wave.open(str(path), "wb") as w:
            w.setnchannels(2)
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes(pcm.tobytes())
    else:
        path = audio.write_tone_wav(tmp_path / "t.wav", 1000.0, 1.0, rate)
    assert abs(audio.dominant_frequency(path) - 1000.0) < 5
    assert audio.duration(path) == pytest.approx(1.0, abs=0.01)
    assert audio.rms(path) == pytest.approx(0.5 / np.sqrt(2), rel=0.02)


def test_g711_round_trip() -> None:
    tone = audio.tone_samples(440.0, 0.2)
    for enc, dec in ((audio.ulaw_encode, audio.ulaw_decode),
                     (audio.alaw_encode, audio.alaw_decode)):
        back = dec(enc(tone)).astype(np.float64) / 32768.0
        assert np.max(np.abs(back - tone)) < 0.02
        assert abs(audio.dominant_frequency(back, 8000) - 440.0) < 3


def test_dump_toml_round_trips() -> None:
    doc = {"sip": {"port": 5060, "transports": ["udp", "tcp"]},
           "trunks": [{"name": "p", "dids": {"+902121234567": "1001"}, "register": False}],
           "routes": [{"pattern": "^\\+", "trunk": "p"}]}
    assert tomllib.loads(dump_toml(doc)) == doc


async def test_rtp_sink_send_receive_and_dtmf() -> None:
    async with sipp.RtpSink() as a, sipp.RtpSink(echo=True) as b:
        n = await a.send_tone(700.0, 0.4, payload_type=0, dest=("127.0.0.1", b.port))
        await b.wait_for(n)
        await a.wait_for(n)                               # b echoed everything back
        assert b.sources() == {("127.0.0.1", a.port)}
        assert abs(audio.dominant_frequency(b.audio(0), 8000) - 700.0) < 5
        await a.send_dtmf("5", dest=("127.0.0.1", b.port))
        await a.send_dtmf("#", dest=("127.0.0.1", b.port))
        await b.wait_for(2, payload_type=101)
        await asyncio.sleep(0.1)
        assert b.dtmf_digits(101) == "5#"


# --------------------------------------------------------------------------- SIPp <-> SIPp


@needs_sipp
@pytest.mark.peer
@pytest.mark.parametrize("transport", ["u1", "t1"])
async def test_sipp_register_auth_and_unregister(tmp_path: Path, transport: str) -> None:
    reg = sipp.start("uas_registrar", transport=transport, workdir=tmp_path,
                     keys={"auth_user": "1001", "auth_pass": "pw", "expires": 120,
                           "unregister": "yes"})
    await reg.wait_ready()
    res = await sipp.arun("register_auth", reg.local_port, transport=transport,
                          service="1001", auth_pass="pw", workdir=tmp_path,
                          keys={"expires": 120, "unregister": "yes"}, timeout=15)
    res.check()
    (await reg.wait_async(5)).check()
    registers = res.sent("REGISTER")
    assert len(registers) == 3
    assert "Authorization: Digest" in registers[1] and "Expires: 120" in registers[1]
    assert "Expires: 0" in registers[2]
    assert len(res.received("SIP/2.0 200")) == 2


@needs_sipp
@pytest.mark.peer
async def test_sipp_register_wrong_password_fails(tmp_path: Path) -> None:
    reg = sipp.start("uas_registrar", workdir=tmp_path,
                     keys={"auth_user": "1001", "auth_pass": "pw"})
    await reg.wait_ready()
    res = await sipp.arun("register_auth", reg.local_port, service="1001", auth_pass="nope",
                          workdir=tmp_path, timeout=15)
    uas = await reg.wait_async(5)
    assert not res.ok and res.failed == 1
    assert res.received("SIP/2.0 403")
    assert not uas.ok


@needs_sipp
@needs_root
@pytest.mark.peer
async def test_sipp_uac_pcap_audio_and_dtmf_reach_the_uas_rtp_sink(tmp_path: Path) -> None:
    """uac_auth_pcap against a challenging UAS: 401 path, pcap RTP lands in the test's sink."""
    async with sipp.RtpSink() as sink:
        uas = sipp.start("uas_auth_challenge", workdir=tmp_path,
                         keys={"rtpport": sink.port, "auth_user": TRUNK_USER,
                               "auth_pass": TRUNK_PASS})
        await uas.wait_ready()
        res = await sipp.arun("uac_auth_pcap", uas.local_port, service="2000",
                              auth_user=TRUNK_USER, auth_pass=TRUNK_PASS,
                              keys={"caller": "1001"}, workdir=tmp_path, timeout=25)
        res.check()
        (await uas.wait_async(5)).check()
        await sink.wait_quiet(0.2)

    invites = res.sent("INVITE")
    assert len(invites) == 2 and "Authorization: Digest" in invites[1]
    acks = res.sent("ACK")
    assert _branch(acks[0]) == _branch(invites[0])        # ACK to the 401: INVITE's branch
    assert _branch(acks[1]) != _branch(invites[1])        # ACK to the 200: its own branch

    expected = sipp.pcap_payloads([sipp.PCAP_DIR / "g711a.pcap"])
    assert [p.payload for p in sink.received(8)] == expected       # 236 packets, in order
    assert sink.dtmf_digits(101) == "12#"
    assert sink.sources() == {("127.0.0.1", res.media_port)}       # sent from -mp
    assert len(sink.ssrcs()) == 2                                  # audio SSRC != DTMF SSRC


@needs_sipp
@pytest.mark.peer
async def test_sipp_uac_answers_a_407_challenge(tmp_path: Path) -> None:
    """The 407 (Proxy-Authenticate) path of the uac_* scenarios, as the switch challenges."""
    proxy_uas = sipp.render_scenario("uas_auth_challenge", tmp_path, [
        ("SIP/2.0 401 Unauthorized", "SIP/2.0 407 Proxy Authentication Required"),
        ("WWW-Authenticate:", "Proxy-Authenticate:"),
        # SIPp's verifyauth reads Authorization only: just require a Proxy-Authorization
        ('<verifyauth assign_to="authvalid" username="[auth_user]" password="[auth_pass]"/>',
         '<ereg regexp="response=" search_in="hdr" header="Proxy-Authorization:" '
         'assign_to="authvalid"/>'),
    ])
    uas = sipp.start(proxy_uas, workdir=tmp_path)
    await uas.wait_ready()
    res = await sipp.arun("uac_auth_call", uas.local_port, service="2000", auth_user="1001",
                          auth_pass="pw", keys={"caller": "1001"}, duration_ms=200,
                          workdir=tmp_path, timeout=15)
    res.check()
    (await uas.wait_async(5)).check()
    invites = res.sent("INVITE")
    assert "Proxy-Authorization: Digest username=\"1001\"" in invites[1]
    assert "CSeq: 2 INVITE" in invites[1]
    assert _branch(res.sent("ACK")[0]) == _branch(invites[0])


FLOWS = [
    # (uas scenario or (name, replacements), uac scenario, uac -d ms)
    ("uas_answer", "uac_auth_call", 300),
    ("uas_busy", "uac_auth_busy", None),
    (("uas_busy", {"486 Busy Here": "404 Not Found"}), "uac_auth_notfound", None),
    (("uas_busy", {"486 Busy Here": "480 Temporarily Unavailable"}), "uac_auth_notfound", None),
    (("uas_busy", {"486 Busy Here": "408 Request Timeout"}), "uac_auth_noanswer", None),
    (("uas_busy", {"486 Busy Here": "480 Temporarily Unavailable"}), "uac_auth_noanswer", None),
    ("uas_noanswer", "uac_auth_cancel", None),
    ("uas_bye", "uac_auth_recv_bye", None),
]


# Put in front of a UAS scenario's first <recv request="INVITE": the UAS then challenges the
# first INVITE with 407 as the switch does, exercising the uac_* scenarios' challenged path.
CHALLENGE_FIRST = """<recv request="INVITE"/>
  <send>
    <![CDATA[

      SIP/2.0 407 Proxy Authentication Required
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag09[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Proxy-Authenticate: Digest realm="test", nonce="n0nce", algorithm=MD5
      Content-Length: 0

    ]]>
  </send>
  <recv request="ACK"/>
  <recv request="INVITE\""""


@needs_sipp
@pytest.mark.peer
@pytest.mark.parametrize("challenge", [False, True], ids=["plain", "challenged"])
@pytest.mark.parametrize("transport", ["u1", "t1"])
async def test_sipp_call_flows(tmp_path: Path, transport: str, challenge: bool) -> None:
    """Every UAS scenario against its UAC counterpart, over UDP and TCP, with and without a
    407 challenge of the first INVITE."""
    for uas_spec, uac_name, hold in FLOWS:
        name, repl = uas_spec if isinstance(uas_spec, tuple) else (uas_spec, {})
        replacements = list(repl.items())
        if challenge:
            replacements.append(('<recv request="INVITE"', CHALLENGE_FIRST))
        uas_path = sipp.render_scenario(name, tmp_path, replacements)
        uas = sipp.start(uas_path, transport=transport, workdir=tmp_path, duration_ms=300)
        await uas.wait_ready()
        res = await sipp.arun(uac_name, uas.local_port, transport=transport, service="2000",
                              keys={"caller": "1001"}, duration_ms=hold, workdir=tmp_path,
                              timeout=15)
        uas_res = await uas.wait_async(5)
        assert res.ok, f"{uas_spec} / {uac_name}\n{res.describe()}"
        assert uas_res.ok, f"{uas_spec} / {uac_name}\n{uas_res.describe()}"
        invites = res.sent("INVITE")
        assert len(invites) == (2 if challenge else 1)
        if challenge:
            assert "Proxy-Authorization: Digest" in invites[1]
            assert _branch(res.sent("ACK")[0]) == _branch(invites[0])
        if uac_name == "uac_auth_cancel":
            cancel = res.sent("CANCEL")[0]
            assert _branch(cancel) == _branch(invites[-1])       # RFC 3261 9.1
            assert _branch(res.sent("ACK")[-1]) == _branch(invites[-1])


@needs_sipp
@pytest.mark.peer
async def test_sipp_dtmf_scenario_and_trace_stat(tmp_path: Path) -> None:
    """Several calls (-m/-r) with uac_auth_dtmf; RFC 2833 digits counted; stat CSV readable."""
    if os.geteuid() != 0:
        pytest.skip("SIPp play_pcap_audio sends through a raw socket: run as root")
    async with sipp.RtpSink() as sink:
        uas = sipp.start("uas_answer", calls=3, workdir=tmp_path, keys={"rtpport": sink.port})
        await uas.wait_ready()
        res = await sipp.arun("uac_auth_dtmf", uas.local_port, calls=3, rate=10,
                              service="2000", duration_ms=0, trace_stat=True,
                              workdir=tmp_path, timeout=20)
        res.check()
        (await uas.wait_async(5)).check()
        await sink.wait_quiet(0.2)
    assert res.successful == 3
    # The three calls replay the same pcap (same SSRC and timestamps) and overlap in time, so
    # one call's end packets can be read as a new press of another's: every digit of every
    # call must be there, and nothing else.
    digits = sink.dtmf_digits(101)
    assert set(digits) == {"1", "2", "#"}, digits
    assert all(digits.count(d) >= 3 for d in "12#"), digits
    rows = res.stats()
    assert rows and rows[-1]["SuccessfulCall(C)"] == "3"


# --------------------------------------------------------------------------- baresip


@needs_baresip
@pytest.mark.peer
async def test_baresip_calls_baresip_direct_with_audio_and_dtmf(tmp_path: Path) -> None:
    tone = audio.write_tone_wav(tmp_path / "tone800.wav", 800.0, 30.0)
    async with baresip.BaresipInstance(tmp_path / "a", user="alice", audio_source=tone) as a, \
            baresip.BaresipInstance(tmp_path / "b", user="bob", tone_hz=1200) as b:
        await a.dial(b.contact_uri)
        await a.wait_event("CALL_ESTABLISHED")
        incoming = await b.wait_event("CALL_ESTABLISHED")
        assert incoming["direction"] == "incoming"
        await asyncio.sleep(1.0)
        await a.send_dtmf("7")
        dtmf = await b.wait_event("CALL_DTMF_START")
        assert dtmf["param"] == "7"
        await asyncio.sleep(0.5)
        await a.hangup()
        await b.wait_event("CALL_CLOSED")
        await a.wait_event("CALL_CLOSED")
    heard_b = b.recorded_files()
    heard_a = a.recorded_files()
    assert heard_b and heard_a
    assert abs(audio.dominant_frequency(heard_b[-1]) - 800.0) < 10     # bob heard alice's wav
    assert abs(audio.dominant_frequency(heard_a[-1]) - 1200.0) < 10    # alice heard ausine
    assert audio.rms(heard_b[-1]) > 0.05


@needs_baresip
@needs_sipp
@pytest.mark.peer
@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_baresip_registers_and_calls_through_sipp(tmp_path: Path, transport: str) -> None:
    st = "t1" if transport == "tcp" else "u1"
    reg = sipp.start("uas_registrar", transport=st, workdir=tmp_path,
                     keys={"auth_user": "1001", "auth_pass": "pw", "expires": 300})
    await reg.wait_ready()
    async with baresip.BaresipInstance(tmp_path / "r", user="1001", password="pw",
                                       registrar=f"127.0.0.1:{reg.local_port}",
                                       transport=transport) as phone:
        ev = await phone.wait_event("REGISTER_OK", "REGISTER_FAIL")
        assert ev["type"] == "REGISTER_OK", ev
    (await reg.wait_async(5)).check()

    async with sipp.RtpSink() as sink:
        uas = sipp.start("uas_answer", transport=st, workdir=tmp_path,
                         keys={"rtpport": sink.port})
        await uas.wait_ready()
        async with baresip.BaresipInstance(tmp_path / "c", user="1001",
                                           registrar=f"127.0.0.1:{uas.local_port}", regint=0,
                                           transport=transport, tone_hz=700,
                                           codecs=("PCMA", "PCMU")) as phone:
            await phone.dial("trunk")
            await phone.wait_event("CALL_ESTABLISHED")
            await sink.wait_for(25)
            await sink.send_tone(1500.0, 1.0, payload_type=8)      # back to the phone
            await phone.hangup()
            await phone.wait_event("CALL_CLOSED")
        (await uas.wait_async(5)).check()
    assert sink.payload_types() == {8}
    assert abs(audio.dominant_frequency(sink.audio(8), 8000) - 700.0) < 10
    assert abs(audio.dominant_frequency(phone.recorded_files()[-1]) - 1500.0) < 10


# --------------------------------------------------------------------------- pjsua2


@needs_pjsua
@needs_sipp
@pytest.mark.peer
async def test_pjsua_registers_to_sipp_registrar(tmp_path: Path) -> None:
    reg = sipp.start("uas_registrar", workdir=tmp_path,
                     keys={"auth_user": "1001", "auth_pass": "pw", "unregister": "yes"})
    await reg.wait_ready()
    res = await pjsua.register(registrar=f"127.0.0.1:{reg.local_port}", user="1001",
                               password="pw", workdir=tmp_path)
    assert res["reg_status"] == 200 and res["unreg_status"] == 200, res
    (await reg.wait_async(5)).check()


@needs_pjsua
@needs_sipp
@pytest.mark.peer
async def test_pjsua_calls_sipp_uas_with_audio_both_ways(tmp_path: Path) -> None:
    tone = audio.write_tone_wav(tmp_path / "tone600.wav", 600.0, 10.0)
    heard = tmp_path / "heard.wav"
    async with sipp.RtpSink() as sink:
        uas = sipp.start("uas_answer", workdir=tmp_path, keys={"rtpport": sink.port})
        await uas.wait_ready()
        call = asyncio.create_task(pjsua.call(
            f"sip:trunk@127.0.0.1:{uas.local_port}", play=tone, record=heard, hold=2.5,
            dtmf="4", workdir=tmp_path))
        await sink.wait_for(10)
        await sink.send_tone(1300.0, 1.5, payload_type=8)
        res = await call
        (await uas.wait_async(5)).check()
    assert res["ok"] and res["connected"] and res["final_status"] == 200, res
    assert res["states"][-1] == "DISCONNECTED"
    assert abs(audio.dominant_frequency(sink.audio(8), 8000) - 600.0) < 10
    assert "4" in sink.dtmf_digits()
    assert abs(audio.dominant_frequency(heard) - 1300.0) < 10


@needs_pjsua
@needs_sipp
@needs_root
@pytest.mark.peer
async def test_pjsua_answers_sipp_uac_and_receives_dtmf(tmp_path: Path) -> None:
    callee = await pjsua.start_answerer(record=tmp_path / "callee.wav", hold=None,
                                        workdir=tmp_path)
    await callee.wait_event("ready")
    res = await sipp.arun("uac_auth_dtmf", callee.sip_port, service="pjsua",
                          duration_ms=300, workdir=tmp_path, timeout=15)
    res.check()
    out = await callee.result(10)
    assert out["ok"] and out["dtmf_received"] == "12#", out


# --------------------------------------------------------------------------- switch process


@pytest.mark.peer
def test_switchproc_starts_healthy_and_stops(tmp_path: Path) -> None:
    """SwitchProcess against the real switch: config accepted, /healthz 200, clean SIGTERM."""
    sp = SwitchProcess(tmp_path / "sw", extensions=["1001", "1002"],
                       trunks=[{"name": "pstn", "host": "127.0.0.1", "port": free_udp_tcp_port(),
                                "dids": {"+902121234567": "1001"}}],
                       routes=[{"pattern": "^\\+", "trunk": "pstn"}],
                       calls={"ring_timeout": 5}, auth={"algorithms": ["MD5"]})
    with sp:
        assert sp.running()
        assert sp.healthz()
        assert set(sp.passwords) == {"1001", "1002"}
    assert not sp.running()
    assert sp.proc is not None and sp.proc.returncode == 0, sp.log()[-3000:]
