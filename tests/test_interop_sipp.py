"""SIPp interop: the switch against real SIPp 3.6.1 phones, trunks and registrars (issue #2).

Every test starts a real switch process (tests/peers/switchproc.py) on free loopback ports and
drives it with SIPp scenarios from tests/peers/scenarios (tests/peers/sipp.py). Assertions read
what the peers actually exchanged: SIPp's ``-trace_msg`` logs (parsed by ``SippResult``), the
RTP a test-owned :class:`RtpSink` received on the port a SIPp UAS advertised, and the switch's
log. The topology, unless a test says otherwise::

    SIPp UAC (extension 1001, digest) --> switch --> SIPp UAS on the "pstn" trunk port
                                                     (m= port = the test's RtpSink)

SIPp answers only MD5 digest challenges, so the switch offers MD5 here. Skips (never passes)
when SIPp is missing; the media test also needs root (SIPp's play_pcap_audio uses a raw socket).
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from media.engine import PARK_IDLE

try:  # tests/ is not a package: pytest puts tests/ itself on sys.path (rootdir-relative)
    from peers import sipp
    from peers.ports import free_udp_tcp_port
    from peers.switchproc import SwitchProcess
except ModuleNotFoundError:  # pragma: no cover - tests/ turned into a package
    from tests.peers import sipp
    from tests.peers.ports import free_udp_tcp_port
    from tests.peers.switchproc import SwitchProcess

pytestmark = [
    pytest.mark.peer,
    pytest.mark.skipif(not sipp.available(), reason=sipp.INSTALL_HINT),
]
needs_root = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="SIPp play_pcap_audio sends through a raw socket: run the tests as root")

OUT_NUMBER = "+905321234567"   # a valid TR mobile number: routed to the "pstn" trunk
DID = "+902121234567"          # the trunk's DID, mapped to extension 1001
TRUNK_USER = "trunkuser"
TRUNK_PASS = "trunk-secret-42"
G711A = sipp.PCAP_DIR / "g711a.pcap"
DTMF_PCAPS = [sipp.PCAP_DIR / f"dtmf_2833_{d}.pcap" for d in ("1", "2", "pound")]


# --------------------------------------------------------------------------- helpers

_COMPACT = {"contact": "m", "via": "v", "from": "f", "to": "t", "call-id": "i",
            "content-type": "c", "content-length": "l", "cseq": "cseq"}


def headers(msg: str, name: str) -> list[str]:
    """Values of header ``name`` (compact form too) in one SIP message from a trace."""
    wanted = {name.lower(), _COMPACT.get(name.lower(), name.lower())}
    head = msg.split("\n\n", 1)[0]
    out: list[str] = []
    for line in head.splitlines()[1:]:
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in wanted:
            out.append(value.strip())
    return out


def header(msg: str, name: str) -> str:
    """The single value of header ``name`` (AssertionError with the message if absent)."""
    values = headers(msg, name)
    assert values, f"no {name} header in:\n{msg}"
    return values[0]


def body(msg: str) -> str:
    """The body of a SIP message from a trace ('' if none)."""
    parts = msg.split("\n\n", 1)
    return parts[1].strip() if len(parts) == 2 else ""


def sdp_of(msg: str) -> dict[str, Any]:
    """The audio connection address, port and rtpmap of a message's SDP body."""
    text = body(msg)
    assert text.startswith("v=0"), f"no SDP in:\n{msg}"
    conn = re.findall(r"^c=IN IP4 (\S+)", text, re.M)
    media = re.search(r"^m=audio (\d+) RTP/AVP ([\d ]+)", text, re.M)
    assert conn and media, f"no c=/m=audio in SDP:\n{text}"
    rtpmap = {int(pt): name.split("/")[0].lower()
              for pt, name in re.findall(r"^a=rtpmap:(\d+) (\S+)", text, re.M)}
    return {"address": conn[-1], "port": int(media.group(1)),
            "formats": [int(f) for f in media.group(2).split()], "rtpmap": rtpmap}


def contacts(msg: str) -> list[tuple[str, int | None]]:
    """``(uri, expires)`` for every Contact of a REGISTER response."""
    out: list[tuple[str, int | None]] = []
    for value in headers(msg, "Contact"):
        for uri, params in re.findall(r"<([^>]*)>([^,]*)", value):
            m = re.search(r";\s*expires\s*=\s*(\d+)", params, re.I)
            out.append((uri, int(m.group(1)) if m else None))
    return out


def status_of(msg: str) -> int:
    m = re.match(r"SIP/2\.0 (\d{3})", msg)
    assert m, msg
    return int(m.group(1))


def branch(msg: str) -> str:
    m = re.search(r";branch=([^;,\s]+)", header(msg, "Via"))
    assert m, msg
    return m.group(1)


def tag(value: str) -> str | None:
    m = re.search(r";\s*tag=([^;>\s]+)", value)
    return m.group(1) if m else None


def in_range(port: int, rng: tuple[int, int]) -> bool:
    return rng[0] <= port <= rng[1]


def diag(sw: SwitchProcess, *results: sipp.SippResult) -> str:
    """Diagnostics for an assertion: every SIPp run and the switch log tail."""
    parts = [r.describe() for r in results]
    parts.append(f"--- switch log tail ({sw.log_path}):\n{sw.log()[-5000:]}")
    return "\n\n".join(parts)


def check(sw: SwitchProcess, res: sipp.SippResult, *others: sipp.SippResult) -> None:
    """``res`` succeeded (SIPp's own verdict), else fail with every log."""
    assert res.ok, diag(sw, res, *others)


def no_crash(sw: SwitchProcess) -> None:
    assert sw.running(), f"switch died\n{sw.log()[-5000:]}"
    problems = sw.log_problems()
    assert not problems, "switch logged errors:\n" + "\n".join(problems[:20]) + \
        f"\n--- log tail:\n{sw.log()[-4000:]}"


def udp_bound(port: int) -> bool:
    """Whether some socket is bound to UDP ``port`` (read from /proc, never by binding)."""
    want = f":{port:04X}"
    for name in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(name) as f:
                next(f, None)
                if any(line.split()[1].endswith(want) for line in f if len(line.split()) > 1):
                    return True
        except OSError:
            continue
    return False


async def assert_media_released(sw: SwitchProcess, *rtp_ports: int,
                                timeout: float = PARK_IDLE + 5.0) -> None:
    """After a call ended, the switch closes its RTP/RTCP sockets (no leaked port pairs).

    The media engine keeps a finished call's sockets parked for reuse until they have been
    idle for ``PARK_IDLE`` seconds, so that is part of the wait; a leaked pair stays bound."""
    ports = [p for rtp in rtp_ports for p in (rtp, rtp + 1)]
    deadline = time.monotonic() + timeout
    while True:
        held = [p for p in ports if udp_bound(p)]
        if not held:
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"switch still holds RTP/RTCP ports {held} after the call "
                                 f"ended\n--- switch log tail:\n{sw.log()[-4000:]}")
        await asyncio.sleep(0.1)


@pytest.fixture
def trunk_port() -> int:
    """The port the 'pstn' trunk is configured on (a SIPp UAS / UAC binds it)."""
    return free_udp_tcp_port()


@pytest.fixture
def make_switch(tmp_path: Path, trunk_port: int) -> Iterator[Callable[..., SwitchProcess]]:
    """Start a switch with extensions 1001/1002, the 'pstn' trunk on ``trunk_port`` (DID ->
    1001), a route for every E.164 number, MD5 digest; keywords override/extend."""
    started: list[SwitchProcess] = []

    def make(*, trunk: dict[str, Any] | None = None, **kwargs: Any) -> SwitchProcess:
        trunk_cfg: dict[str, Any] = {"name": "pstn", "host": "127.0.0.1", "port": trunk_port,
                                     "dids": {DID: "1001"}, **(trunk or {})}
        opts: dict[str, Any] = {
            "extensions": ["1001", "1002"],
            "trunks": [trunk_cfg],
            "routes": [{"pattern": "^\\+", "trunk": "pstn"}],
            "auth": {"algorithms": ["MD5"]},
            **kwargs,
        }
        sw = SwitchProcess(tmp_path / f"switch{len(started)}", **opts)
        started.append(sw)
        return sw.start()

    yield make
    for sw in started:
        sw.stop()


def reject_scenario(tmp_path: Path, status: int) -> Path:
    """t_uac_reject expecting ``status``."""
    return sipp.render_scenario("t_uac_reject", tmp_path,
                                {'response="599"': f'response="{status}"'})


def register_reject_scenario(tmp_path: Path, status: int) -> Path:
    """t_register_reject expecting ``status``."""
    return sipp.render_scenario("t_register_reject", tmp_path,
                                {'response="599"': f'response="{status}"'})


async def place_call(sw: SwitchProcess, scenario: str | Path, tmp_path: Path, *,
                     service: str = OUT_NUMBER, caller: str = "1001",
                     duration_ms: int | None = 200, timeout: float = 20,
                     **options: Any) -> sipp.SippResult:
    """A SIPp UAC authenticated as extension ``caller`` places a call through the switch."""
    return await sipp.arun(scenario, sw.sip_port, service=service, auth_user=caller,
                           auth_pass=sw.password(caller), keys={"caller": caller},
                           duration_ms=duration_ms, workdir=tmp_path, timeout=timeout,
                           **options)


def assert_challenged_once(sw: SwitchProcess, res: sipp.SippResult) -> None:
    """The caller's INVITE got a 407 and was re-sent with Proxy-Authorization (MD5)."""
    invites = res.sent("INVITE")
    assert len(invites) == 2, diag(sw, res)
    challenges = res.received("SIP/2.0 407")
    assert len(challenges) == 1, diag(sw, res)
    assert any('algorithm=MD5' in v for v in headers(challenges[0], "Proxy-Authenticate")), \
        challenges[0]
    assert not headers(invites[0], "Proxy-Authorization")
    assert header(invites[1], "Proxy-Authorization").startswith('Digest username="1001"')
    assert branch(res.sent("ACK")[0]) == branch(invites[0])


# --------------------------------------------------------------------------- 1. registrar


async def test_register_refresh_unregister(make_switch: Callable[..., SwitchProcess],
                                           tmp_path: Path) -> None:
    """401 then 200 listing the contact with its expiry; a refresh in the same Call-ID updates
    the expiry; Expires: 0 removes it (the 200 lists no contact); then calls to it get 480."""
    sw = make_switch()
    port = free_udp_tcp_port()
    res = await sipp.arun("t_register_cycle", sw.sip_port, local_port=port, service="1001",
                          auth_user="1001", auth_pass=sw.password("1001"), workdir=tmp_path,
                          keys={"expires": 120, "expires2": 300}, timeout=15)
    check(sw, res)
    registers = res.sent("REGISTER")
    assert not headers(registers[0], "Authorization")
    assert header(registers[1], "Authorization").startswith('Digest username="1001"')
    assert len(res.received("SIP/2.0 401")) >= 1
    oks = res.received("SIP/2.0 200")
    assert len(oks) == 3, diag(sw, res)
    ours = f"sip:1001@127.0.0.1:{port};transport=UDP".lower()

    first = contacts(oks[0])
    assert [u.lower() for u, _ in first] == [ours], oks[0]
    assert first[0][1] is not None and 110 <= first[0][1] <= 120, oks[0]

    refreshed = contacts(oks[1])
    assert [u.lower() for u, _ in refreshed] == [ours], oks[1]      # one binding, not two
    assert refreshed[0][1] is not None and 290 <= refreshed[0][1] <= 300, oks[1]

    assert "Expires: 0" in res.sent("REGISTER")[-1]
    assert contacts(oks[2]) == [], oks[2]                             # unregistered

    # Nothing left to ring: 1002 calling 1001 gets 480.
    call = await place_call(sw, "uac_auth_notfound", tmp_path, service="1001", caller="1002")
    check(sw, call)
    assert [status_of(m) for m in call.received("SIP/2.0 4")] == [407, 480], diag(sw, call)
    no_crash(sw)


async def test_register_wrong_password_is_403_and_binds_nothing(
        make_switch: Callable[..., SwitchProcess], tmp_path: Path) -> None:
    sw = make_switch()
    res = await sipp.arun(register_reject_scenario(tmp_path, 403), sw.sip_port,
                          service="1001", auth_user="1001", auth_pass="not-the-password",
                          keys={"expires": 120}, workdir=tmp_path, timeout=15)
    check(sw, res)
    assert header(res.sent("REGISTER")[1], "Authorization").startswith('Digest username="1001"')
    assert len(res.received("SIP/2.0 403")) == 1
    assert not res.received("SIP/2.0 200")

    call = await place_call(sw, "uac_auth_notfound", tmp_path, service="1001", caller="1002")
    check(sw, call)
    assert call.received("SIP/2.0 480"), diag(sw, call)
    assert not call.received("SIP/2.0 404")
    no_crash(sw)


async def test_register_below_min_expires_is_423(make_switch: Callable[..., SwitchProcess],
                                                 tmp_path: Path) -> None:
    sw = make_switch(registrar={"min_expires": 60, "max_expires": 3600,
                                "default_expires": 600})
    res = await sipp.arun(register_reject_scenario(tmp_path, 423), sw.sip_port,
                          service="1001", auth_user="1001", auth_pass=sw.password("1001"),
                          keys={"expires": 10}, workdir=tmp_path, timeout=15)
    check(sw, res)
    too_brief = res.received("SIP/2.0 423")
    assert len(too_brief) == 1, diag(sw, res)
    assert header(too_brief[0], "Min-Expires") == "60"

    # Asking for Min-Expires then works (RFC 3261 10.2.8).
    ok = await sipp.arun("register_auth", sw.sip_port, service="1001", auth_user="1001",
                         auth_pass=sw.password("1001"), keys={"expires": 60},
                         workdir=tmp_path, timeout=15)
    check(sw, ok)
    got = contacts(ok.received("SIP/2.0 200")[0])
    assert len(got) == 1 and got[0][1] is not None and 50 <= got[0][1] <= 60
    no_crash(sw)


# --------------------------------------------------------------------------- 2. media


@needs_root
async def pcap_call_to_trunk(sw: SwitchProcess, trunk_port: int, workdir: Path,
                             ) -> tuple[sipp.SippResult, sipp.SippResult, sipp.RtpSink]:
    """1001 calls +905321234567 with the g711a.pcap audio and RFC 2833 digits; the trunk UAS
    answers PCMA with telephone-event on PT 96 and its RTP goes to the returned sink."""
    uas_scn = sipp.render_scenario("uas_answer", workdir, {
        "RTP/AVP 8 0 101": "RTP/AVP 8 0 96",
        "a=rtpmap:101 telephone-event/8000": "a=rtpmap:96 telephone-event/8000",
        "a=fmtp:101 0-15": "a=fmtp:96 0-15",
    })
    async with sipp.RtpSink() as sink:
        uas = sipp.start(uas_scn, local_port=trunk_port, keys={"rtpport": sink.port},
                         workdir=workdir)
        await uas.wait_ready()
        res = await place_call(sw, "uac_auth_pcap", workdir, duration_ms=300, timeout=30)
        uas_res = await uas.wait_async(10)
        await sink.wait_quiet(0.3, timeout=5)
    return res, uas_res, sink


async def test_call_to_trunk_relays_pcap_audio_and_rfc2833(
        make_switch: Callable[..., SwitchProcess], trunk_port: int, tmp_path: Path) -> None:
    """1001 (407, then credentials) dials +905321234567; the trunk UAS answers PCMA with
    telephone-event on PT 96. The g711a.pcap RTP and the RFC 2833 digits 1, 2, # (other SSRC,
    PT 101 from the caller) arrive at the trunk's RTP port from the switch's RTP range, the
    audio payloads byte for byte, the digits re-labelled with the far side's PT 96."""
    sw = make_switch()
    res, uas_res, sink = await pcap_call_to_trunk(sw, trunk_port, tmp_path)
    check(sw, res, uas_res)
    check(sw, uas_res, res)
    assert_challenged_once(sw, res)

    # Leg B's offer names the switch, not the caller.
    invite_b = uas_res.received("INVITE")[0]
    assert invite_b.startswith(f"INVITE sip:{OUT_NUMBER}@127.0.0.1:{trunk_port}"), invite_b
    offer_b = sdp_of(invite_b)
    assert offer_b["address"] == "127.0.0.1"
    assert in_range(offer_b["port"], sw.rtp_range), (offer_b, sw.rtp_range)
    assert offer_b["port"] != res.media_port
    assert offer_b["rtpmap"].get(8) == "pcma"

    # Leg A's answer names the switch too (another port), with PCMA and the caller's PT 101.
    answer_a = sdp_of(res.received("SIP/2.0 200")[0])
    assert answer_a["address"] == "127.0.0.1"
    assert in_range(answer_a["port"], sw.rtp_range), (answer_a, sw.rtp_range)
    assert answer_a["port"] not in (offer_b["port"], sink.port, res.media_port)
    assert answer_a["formats"][0] == 8, answer_a
    assert answer_a["rtpmap"].get(101) == "telephone-event", answer_a

    # The audio: every pcap packet, in order, byte for byte, from the switch's RTP range.
    expected_audio = sipp.pcap_payloads([G711A])
    got_audio = [p.payload for p in sink.received(8)]
    assert len(got_audio) == len(expected_audio) and got_audio == expected_audio, (
        f"{len(got_audio)}/{len(expected_audio)} PCMA packets, PTs seen "
        f"{sorted(sink.payload_types())}\n{diag(sw, res, uas_res)}")
    for ip, port in sink.sources():
        assert ip == "127.0.0.1" and in_range(port, sw.rtp_range), sink.sources()
        assert port != res.media_port            # not straight from the caller: anchored

    # The digits: the far side's telephone-event PT, the pcaps' events, after an SSRC change.
    expected_dtmf = sipp.pcap_payloads(DTMF_PCAPS)
    assert sink.count(101) == 0, "telephone-event sent with the caller's PT, not the answer's"
    assert [p.payload for p in sink.received(96)] == expected_dtmf, diag(sw, res, uas_res)
    assert sink.dtmf_digits(96) == "12#"
    assert sink.payload_types() == {8, 96}
    audio_ssrc = {p.ssrc for p in sipp.read_pcap_rtp(G711A)}
    dtmf_ssrc = {p.ssrc for p in sipp.read_pcap_rtp(DTMF_PCAPS[0])}
    assert audio_ssrc != dtmf_ssrc              # the premise: the caller changed SSRC
    await assert_media_released(sw, offer_b["port"], answer_a["port"])
    no_crash(sw)


async def test_next_call_reuses_the_parked_ports_and_relays_all_its_audio(
        make_switch: Callable[..., SwitchProcess], trunk_port: int, tmp_path: Path) -> None:
    """A finished call's port pairs are parked and, past their quarantine, carry the next
    call: the second call gets the first call's switch ports, and every pcap packet of the
    second call still reaches the trunk, from those ports (nothing of the first call)."""
    sw = make_switch()
    expected_audio = sipp.pcap_payloads([G711A])
    ports: list[set[int]] = []
    for n in range(2):
        workdir = tmp_path / f"call{n}"
        workdir.mkdir()
        res, uas_res, sink = await pcap_call_to_trunk(sw, trunk_port, workdir)
        check(sw, res, uas_res)
        check(sw, uas_res, res)
        switch_ports = {sdp_of(uas_res.received("INVITE")[0])["port"],
                        sdp_of(res.received("SIP/2.0 200")[0])["port"]}
        ports.append(switch_ports)
        got_audio = [p.payload for p in sink.received(8)]
        assert got_audio == expected_audio, (
            f"call {n}: {len(got_audio)}/{len(expected_audio)} PCMA packets\n"
            f"{diag(sw, res, uas_res)}")
        assert {port for _, port in sink.sources()} <= switch_ports, sink.sources()
        await asyncio.sleep(1.5)  # past the parked pairs' quarantine (1 s)
    assert ports[1] == ports[0], ports
    no_crash(sw)


async def test_call_over_tcp_both_legs(make_switch: Callable[..., SwitchProcess],
                                       trunk_port: int, tmp_path: Path) -> None:
    """The same call with the phone on TCP and a TCP trunk (a SIPp UAS listening on TCP)."""
    sw = make_switch(trunk={"transport": "tcp"})
    async with sipp.RtpSink() as sink:
        uas = sipp.start("uas_answer", local_port=trunk_port, transport="t1",
                         keys={"rtpport": sink.port}, workdir=tmp_path)
        await uas.wait_ready()
        res = await place_call(sw, "uac_auth_call", tmp_path, transport="t1", duration_ms=300)
        uas_res = await uas.wait_async(10)
    check(sw, res, uas_res)
    check(sw, uas_res, res)
    assert_challenged_once(sw, res)
    invite_b = uas_res.received("INVITE")[0]
    assert header(invite_b, "Via").upper().startswith("SIP/2.0/TCP"), invite_b
    assert in_range(sdp_of(invite_b)["port"], sw.rtp_range)
    assert len(uas_res.received("BYE")) == 1
    no_crash(sw)


# --------------------------------------------------------------------------- 3-5. call ends


async def test_cancel_while_ringing(make_switch: Callable[..., SwitchProcess],
                                    trunk_port: int, tmp_path: Path) -> None:
    sw = make_switch()
    uas = sipp.start("uas_noanswer", local_port=trunk_port, workdir=tmp_path)
    await uas.wait_ready()
    res = await place_call(sw, "uac_auth_cancel", tmp_path)
    uas_res = await uas.wait_async(10)
    check(sw, res, uas_res)
    check(sw, uas_res, res)
    assert_challenged_once(sw, res)
    assert res.received("SIP/2.0 180")
    cancel_oks = [m for m in res.received("SIP/2.0 200") if "CANCEL" in header(m, "CSeq")]
    assert len(cancel_oks) >= 1, diag(sw, res)
    terminated = res.received("SIP/2.0 487")
    assert terminated and header(terminated[0], "CSeq") == "2 INVITE"
    cancels = uas_res.received("CANCEL")
    assert len(cancels) == 1, diag(sw, uas_res)
    # The CANCEL matches the INVITE it cancels (RFC 3261 9.1).
    invite_b = uas_res.received("INVITE")[0]
    assert branch(cancels[0]) == branch(invite_b)
    assert header(cancels[0], "Call-ID") == header(invite_b, "Call-ID")
    assert all("INVITE" not in header(m, "CSeq") for m in res.received("SIP/2.0 200"))
    await assert_media_released(sw, sdp_of(invite_b)["port"])
    no_crash(sw)


async def test_cancel_before_the_trunk_rings_waits_for_its_provisional(
        make_switch: Callable[..., SwitchProcess], trunk_port: int, tmp_path: Path) -> None:
    """The caller CANCELs right after the 100, before the trunk sent anything: the caller gets
    487 at once, and the switch CANCELs the trunk only after its 180 (RFC 3261 9.1: no CANCEL
    before a provisional response; a CANCEL during the UAS's pause would fail it)."""
    sw = make_switch()
    uac_scn = sipp.render_scenario("uac_auth_cancel", tmp_path, {
        # the authenticated INVITE's wait for 180 becomes: 100, then CANCEL (element count
        # kept, so the scenario's [branch-N] offsets stay right)
        '  <recv response="100" optional="true"/>\n  <recv response="183" optional="true"/>\n'
        '  <recv response="180"/>\n  <pause milliseconds="300"/>':
        '  <recv response="100"/>\n  <pause milliseconds="1"/>\n'
        '  <pause milliseconds="1"/>\n  <pause milliseconds="1"/>',
    })
    uas_scn = sipp.render_scenario("uas_noanswer", tmp_path, {
        "  <send>\n    <![CDATA[\n\n      SIP/2.0 180 Ringing":
        '  <pause milliseconds="300"/>\n\n  <send>\n    <![CDATA[\n\n      SIP/2.0 180 Ringing',
    })
    uas = sipp.start(uas_scn, local_port=trunk_port, workdir=tmp_path)
    await uas.wait_ready()
    res = await place_call(sw, uac_scn, tmp_path)
    uas_res = await uas.wait_async(10)
    check(sw, res, uas_res)
    check(sw, uas_res, res)
    assert res.received("SIP/2.0 487") and not res.received("SIP/2.0 180")
    flow = [m.split("\n", 1)[0] for _d, m in uas_res.messages()]
    assert [f.split(" ")[0] for f in flow[:3]] == ["INVITE", "SIP/2.0", "CANCEL"], flow
    assert "180" in flow[1], flow
    assert len(uas_res.received("CANCEL")) == 1
    await assert_media_released(sw, sdp_of(uas_res.received("INVITE")[0])["port"])
    no_crash(sw)


async def test_busy_trunk_gives_486(make_switch: Callable[..., SwitchProcess],
                                    trunk_port: int, tmp_path: Path) -> None:
    sw = make_switch()
    uas = sipp.start("uas_busy", local_port=trunk_port, workdir=tmp_path)
    await uas.wait_ready()
    res = await place_call(sw, "uac_auth_busy", tmp_path)
    uas_res = await uas.wait_async(10)
    check(sw, res, uas_res)
    check(sw, uas_res, res)
    assert_challenged_once(sw, res)
    assert len(res.received("SIP/2.0 486")) == 1
    assert len(uas_res.received("ACK")) == 1          # the switch ACKed the trunk's 486
    await assert_media_released(sw, sdp_of(uas_res.received("INVITE")[0])["port"])
    no_crash(sw)


async def test_no_answer_gives_480_and_cancels_the_trunk(
        make_switch: Callable[..., SwitchProcess], trunk_port: int, tmp_path: Path) -> None:
    sw = make_switch(calls={"ring_timeout": 2})
    uas = sipp.start("uas_noanswer", local_port=trunk_port, workdir=tmp_path)
    await uas.wait_ready()
    res = await place_call(sw, "uac_auth_noanswer", tmp_path, timeout=20)
    uas_res = await uas.wait_async(10)
    check(sw, res, uas_res)
    check(sw, uas_res, res)
    assert_challenged_once(sw, res)
    assert res.received("SIP/2.0 180")
    assert len(res.received("SIP/2.0 480")) == 1, diag(sw, res)
    assert not res.received("SIP/2.0 408")
    assert len(uas_res.received("CANCEL")) == 1, diag(sw, uas_res)
    await assert_media_released(sw, sdp_of(uas_res.received("INVITE")[0])["port"])
    no_crash(sw)


# --------------------------------------------------------------------------- 6. not reachable


async def test_unregistered_extension_480_and_unknown_number_404(
        make_switch: Callable[..., SwitchProcess], tmp_path: Path) -> None:
    sw = make_switch()
    res = await place_call(sw, "uac_auth_notfound", tmp_path, service="1002")
    check(sw, res)
    assert_challenged_once(sw, res)
    assert [status_of(m) for m in res.received("SIP/2.0 4")] == [407, 480], diag(sw, res)

    res = await place_call(sw, "uac_auth_notfound", tmp_path, service="9999")
    check(sw, res)
    assert_challenged_once(sw, res)
    assert [status_of(m) for m in res.received("SIP/2.0 4")] == [407, 404], diag(sw, res)
    no_crash(sw)


# --------------------------------------------------------------------------- 7. inbound


@pytest.mark.parametrize("dialled", [DID, "02121234567"])
async def test_inbound_did_from_trunk_rings_registered_extension(
        make_switch: Callable[..., SwitchProcess], trunk_port: int, tmp_path: Path,
        dialled: str) -> None:
    """The trunk (SIPp UAC bound to the trunk's configured port) calls the DID (E.164 or
    national form: DIDs are compared in E.164); 1001, a registered SIPp UAS, rings and
    answers; the trunk is never challenged."""
    sw = make_switch()
    phone_port = free_udp_tcp_port()
    reg = await sipp.arun("register_auth", sw.sip_port, local_port=phone_port, service="1001",
                          auth_user="1001", auth_pass=sw.password("1001"),
                          keys={"expires": 300}, workdir=tmp_path, timeout=15)
    check(sw, reg)
    async with sipp.RtpSink() as sink:
        phone = sipp.start("uas_answer", local_port=phone_port, keys={"rtpport": sink.port},
                           workdir=tmp_path)
        await phone.wait_ready()
        res = await sipp.arun("uac_auth_call", sw.sip_port, local_port=trunk_port,
                              service=dialled, keys={"caller": OUT_NUMBER}, duration_ms=300,
                              workdir=tmp_path, timeout=20)
        phone_res = await phone.wait_async(10)
    check(sw, res, phone_res)
    check(sw, phone_res, res)
    assert len(res.sent("INVITE")) == 1, diag(sw, res)       # no challenge for the trunk
    assert not res.received("SIP/2.0 401") and not res.received("SIP/2.0 407")
    assert res.received("SIP/2.0 180"), diag(sw, res)        # it rang
    answer = res.received("SIP/2.0 200")[0]
    answer_sdp = sdp_of(answer)
    assert answer_sdp["address"] == "127.0.0.1" and in_range(answer_sdp["port"], sw.rtp_range)

    invite = phone_res.received("INVITE")[0]
    assert re.match(rf"INVITE sip:1001@127\.0\.0\.1:{phone_port}\b", invite), invite
    assert OUT_NUMBER in header(invite, "From")              # the caller's number passed on
    offer = sdp_of(invite)
    assert offer["address"] == "127.0.0.1" and in_range(offer["port"], sw.rtp_range)
    assert offer["port"] != res.media_port
    assert len(phone_res.received("BYE")) == 1               # the trunk's BYE reached 1001
    await assert_media_released(sw, offer["port"], answer_sdp["port"])
    no_crash(sw)


@pytest.mark.parametrize("dialled", ["1002", OUT_NUMBER])
async def test_trunk_reaches_only_its_dids(make_switch: Callable[..., SwitchProcess],
                                           trunk_port: int, tmp_path: Path,
                                           dialled: str) -> None:
    """From the trunk (not challenged) only DIDs are reachable: an extension number or an
    outside number (transit = false) is 404, not a free call."""
    sw = make_switch()
    res = await sipp.arun(reject_scenario(tmp_path, 404), sw.sip_port, local_port=trunk_port,
                          service=dialled, keys={"caller": OUT_NUMBER, "max_forwards": 70},
                          workdir=tmp_path, timeout=15)
    check(sw, res)
    assert len(res.received("SIP/2.0 404")) == 1
    assert not res.received("SIP/2.0 407")
    no_crash(sw)


@pytest.mark.parametrize(("identify", "status"), [("address", 407), ("ip", 480)])
async def test_tcp_trunk_on_its_own_connection(make_switch: Callable[..., SwitchProcess],
                                               tmp_path: Path, identify: str,
                                               status: int) -> None:
    """A carrier that opens its own TCP connection comes from an ephemeral port, not the
    trunk's configured one: with ``identify = "ip"`` it is still the trunk (its DID call is
    routed to 1001, not registered here: 480, no challenge); by address it is challenged like
    anyone else (407)."""
    sw = make_switch(trunk={"transport": "tcp", "identify": identify})
    res = await sipp.arun(reject_scenario(tmp_path, status), sw.sip_port, transport="t1",
                          service=DID, keys={"caller": OUT_NUMBER, "max_forwards": 70},
                          workdir=tmp_path, timeout=15)
    check(sw, res)
    assert len(res.received(f"SIP/2.0 {status}")) == 1, diag(sw, res)
    assert identify == "address" or not res.received("SIP/2.0 407")
    no_crash(sw)


async def test_unauthenticated_invite_to_outside_is_challenged_and_never_reaches_trunk(
        make_switch: Callable[..., SwitchProcess], trunk_port: int, tmp_path: Path) -> None:
    sw = make_switch()
    uas = sipp.start("uas_answer", local_port=trunk_port, workdir=tmp_path)
    await uas.wait_ready()
    try:
        res = await sipp.arun(reject_scenario(tmp_path, 407), sw.sip_port,
                              service=OUT_NUMBER, keys={"caller": "1002", "max_forwards": 70},
                              workdir=tmp_path, timeout=15)
        check(sw, res)
        assert header(res.received("SIP/2.0 407")[0], "Proxy-Authenticate").startswith("Digest")
        # Bounded look for a leaked INVITE at the trunk (it is listening: see below).
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and uas.running():
            await asyncio.sleep(0.1)
        assert uas.running(), "the trunk UAS ended: it received something"
        # The trunk UAS really is reachable: an authenticated call lands there, and it is
        # the only INVITE it ever saw.
        call = await place_call(sw, "uac_auth_call", tmp_path, caller="1001")
        uas_res = await uas.wait_async(10)
    finally:
        uas.stop()
    check(sw, call, uas_res)
    check(sw, uas_res, call)
    invites = uas_res.received("INVITE")
    assert len(invites) == 1, diag(sw, uas_res)
    assert "sip:1001@" in header(invites[0], "From")
    no_crash(sw)


# --------------------------------------------------------------------------- 8. trunk auth


async def test_trunk_digest_challenge_is_answered_with_trunk_credentials(
        make_switch: Callable[..., SwitchProcess], trunk_port: int, tmp_path: Path) -> None:
    sw = make_switch(trunk={"username": TRUNK_USER, "password": TRUNK_PASS})
    async with sipp.RtpSink() as sink:
        uas = sipp.start("uas_auth_challenge", local_port=trunk_port, workdir=tmp_path,
                         keys={"rtpport": sink.port, "auth_user": TRUNK_USER,
                               "auth_pass": TRUNK_PASS})
        await uas.wait_ready()
        res = await place_call(sw, "uac_auth_call", tmp_path, duration_ms=300)
        uas_res = await uas.wait_async(10)
    check(sw, res, uas_res)
    check(sw, uas_res, res)          # verifyauth accepted the switch's credentials
    assert_challenged_once(sw, res)
    assert not res.received("SIP/2.0 401")        # the trunk's challenge stays on leg B
    assert res.received("SIP/2.0 200")
    invites = uas_res.received("INVITE")
    assert len(invites) == 2, diag(sw, uas_res)
    assert not headers(invites[0], "Authorization")
    auth = header(invites[1], "Authorization")
    assert auth.startswith("Digest ") and f'username="{TRUNK_USER}"' in auth, auth
    assert 'realm="trunk.test"' in auth and "algorithm=MD5" in auth.replace('"', ""), auth
    assert header(invites[1], "CSeq") != header(invites[0], "CSeq")
    assert header(invites[1], "Call-ID") == header(invites[0], "Call-ID")
    assert TRUNK_PASS not in invites[1]
    assert branch(uas_res.received("ACK")[0]) == branch(invites[0])   # ACK for the 401
    no_crash(sw)


async def test_trunk_rejecting_credentials_is_answered_only_once(
        make_switch: Callable[..., SwitchProcess], trunk_port: int, tmp_path: Path) -> None:
    """A trunk that challenges again after our credentials: no third INVITE, and the caller
    gets a plain failure (the trunk's challenge is not passed back to the phone)."""
    sw = make_switch(trunk={"username": TRUNK_USER, "password": TRUNK_PASS})
    uas = sipp.start("t_uas_double_challenge", local_port=trunk_port, workdir=tmp_path)
    await uas.wait_ready()
    res = await place_call(sw, "t_uac_auth_fail", tmp_path)
    uas_res = await uas.wait_async(10)
    check(sw, res, uas_res)
    check(sw, uas_res, res)
    invites = uas_res.received("INVITE")
    assert len(invites) == 2, diag(sw, uas_res)
    assert f'username="{TRUNK_USER}"' in header(invites[1], "Authorization")
    finals = [status_of(m) for m in res.received("SIP/2.0") if status_of(m) >= 300]
    assert finals[0] == 407 and len(finals) == 2, finals      # ours, then one plain failure
    assert finals[1] not in (401, 407), finals
    assert len(uas_res.received("ACK")) == 2                  # both 401s ACKed
    no_crash(sw)


async def test_trunk_credentials_never_answer_a_phone_challenge(
        make_switch: Callable[..., SwitchProcess], tmp_path: Path) -> None:
    """A registered phone (1002) that challenges the switch's INVITE gets no credentials:
    the trunk's are only for the trunk (and the caller gets a plain failure)."""
    sw = make_switch(trunk={"username": TRUNK_USER, "password": TRUNK_PASS})
    phone_port = free_udp_tcp_port()
    reg = await sipp.arun("register_auth", sw.sip_port, local_port=phone_port, service="1002",
                          auth_user="1002", auth_pass=sw.password("1002"),
                          keys={"expires": 300}, workdir=tmp_path, timeout=15)
    check(sw, reg)
    phone = sipp.start("t_uas_double_challenge", local_port=phone_port, workdir=tmp_path)
    await phone.wait_ready()
    try:
        res = await place_call(sw, "t_uac_auth_fail", tmp_path, service="1002")
        # A second INVITE would come at once; give it a bounded moment.
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and phone.running():
            await asyncio.sleep(0.1)
    finally:
        phone_res = phone.stop()
    check(sw, res, phone_res)
    invites = phone_res.received("INVITE")
    assert len(invites) == 1, diag(sw, phone_res)
    for msg in invites:
        assert not headers(msg, "Authorization") and not headers(msg, "Proxy-Authorization")
        assert TRUNK_USER not in msg
    finals = [status_of(m) for m in res.received("SIP/2.0") if status_of(m) >= 300]
    assert finals[0] == 407 and len(finals) == 2 and finals[1] not in (401, 407), finals
    no_crash(sw)


# --------------------------------------------------------------------------- 9. Max-Forwards


async def test_max_forwards_zero_is_483(make_switch: Callable[..., SwitchProcess],
                                        tmp_path: Path) -> None:
    sw = make_switch()
    res = await sipp.arun(reject_scenario(tmp_path, 483), sw.sip_port, service=OUT_NUMBER,
                          keys={"caller": "1001", "max_forwards": 0}, workdir=tmp_path,
                          timeout=15)
    check(sw, res)
    assert len(res.received("SIP/2.0 483")) == 1
    no_crash(sw)


async def test_max_forwards_is_decremented_toward_the_trunk(
        make_switch: Callable[..., SwitchProcess], trunk_port: int, tmp_path: Path) -> None:
    sw = make_switch()
    uac_scn = sipp.render_scenario("uac_auth_call", tmp_path,
                                   {"Max-Forwards: 70": "Max-Forwards: 10"})
    uas = sipp.start("uas_answer", local_port=trunk_port, workdir=tmp_path)
    await uas.wait_ready()
    res = await place_call(sw, uac_scn, tmp_path)
    uas_res = await uas.wait_async(10)
    check(sw, res, uas_res)
    check(sw, uas_res, res)
    assert header(res.sent("INVITE")[1], "Max-Forwards") == "10"
    assert header(uas_res.received("INVITE")[0], "Max-Forwards") == "9"
    no_crash(sw)


# --------------------------------------------------------------------------- 10. trunk REGISTER


async def test_trunk_registration_with_digest(make_switch: Callable[..., SwitchProcess],
                                              trunk_port: int, tmp_path: Path) -> None:
    """register = true: the switch REGISTERs to the trunk (a SIPp registrar that challenges),
    answers the 401 with the trunk's credentials, and unregisters when it shuts down."""
    registrar = sipp.start("uas_registrar", local_port=trunk_port, workdir=tmp_path,
                           keys={"auth_user": TRUNK_USER, "auth_pass": TRUNK_PASS,
                                 "expires": 600, "unregister": "yes"})
    await registrar.wait_ready()
    try:
        sw = make_switch(trunk={"username": TRUNK_USER, "password": TRUNK_PASS,
                                "register": True, "register_expires": 600})
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            oks = [m for d, m in registrar_messages(registrar) if d == "sent"
                   and m.startswith("SIP/2.0 200")]
            if oks:
                break
            await asyncio.sleep(0.1)
        assert sw.running()
        await asyncio.to_thread(sw.stop)                # shutdown: REGISTER Expires: 0
        reg_res = await registrar.wait_async(10)
    finally:
        registrar.stop()
    registers = reg_res.received("REGISTER")
    assert len(registers) >= 2, diag(sw, reg_res)
    assert not headers(registers[0], "Authorization")
    auth = header(registers[1], "Authorization")
    assert auth.startswith("Digest ") and f'username="{TRUNK_USER}"' in auth, auth
    assert 'realm="registrar.test"' in auth, auth
    assert TRUNK_PASS not in registers[1]
    assert header(registers[0], "Expires") == "600"
    assert f"sip:{TRUNK_USER}@127.0.0.1" in header(registers[0], "To")
    assert reg_res.sent("SIP/2.0 200"), diag(sw, reg_res)   # verifyauth accepted them
    # On shutdown the switch removed its binding (README: "unregister from trunks").
    assert any(header(r, "Expires") == "0" for r in registers[2:]), diag(sw, reg_res)
    assert reg_res.ok, diag(sw, reg_res)


def registrar_messages(proc: sipp.SippProcess) -> list[tuple[str, str]]:
    """The -trace_msg log of a still-running SIPp (read while it runs)."""
    cmd = proc.command
    if "-message_file" not in cmd:
        return []
    log = Path(cmd[cmd.index("-message_file") + 1])
    if not log.exists():
        return []
    return sipp.split_messages(log.read_text(errors="replace"))


# --------------------------------------------------------------------------- 11. far-end BYE


async def test_bye_from_trunk_reaches_the_caller(make_switch: Callable[..., SwitchProcess],
                                                 trunk_port: int, tmp_path: Path) -> None:
    sw = make_switch()
    uas = sipp.start("uas_bye", local_port=trunk_port, duration_ms=500, workdir=tmp_path)
    await uas.wait_ready()
    res = await place_call(sw, "uac_auth_recv_bye", tmp_path, duration_ms=None)
    uas_res = await uas.wait_async(10)
    check(sw, res, uas_res)
    check(sw, uas_res, res)
    assert_challenged_once(sw, res)
    byes = res.received("BYE")
    assert len(byes) == 1, diag(sw, res)
    ok = res.received("SIP/2.0 200")[0]
    # The BYE belongs to the caller's dialog: its Call-ID, and the tags swapped.
    assert header(byes[0], "Call-ID") == header(res.sent("INVITE")[0], "Call-ID")
    assert tag(header(byes[0], "From")) == tag(header(ok, "To"))
    assert tag(header(byes[0], "To")) == tag(header(res.sent("INVITE")[0], "From"))
    assert uas_res.received("SIP/2.0 200")          # the trunk's BYE was answered
    await assert_media_released(sw, sdp_of(uas_res.received("INVITE")[0])["port"],
                                sdp_of(ok)["port"])
    no_crash(sw)
