"""Interop: real softphones register to and call through a running switch (``python -m switch``).

baresip 1.0 (Debian ``baresip-core``) and pjsua2 (PJSIP 2.15, ``pip install pjsua2-python``)
register as extensions with digest auth, call each other through the B2BUA and exchange real
audio through the switch's RTP relay: each phone sends a different tone and records what it
hears, and the test checks the dominant frequency of each recording, so a call only passes
when media actually crossed the switch in both directions.

Digest algorithms: the switch offers SHA-256 then MD5 by default (RFC 8760). baresip 1.0 /
libre 1.1.0 aborts authentication with ENOSYS ("Function not implemented") as soon as ANY
challenge names an algorithm other than MD5 (with ``["SHA-256", "MD5"]`` and also with
``["MD5", "SHA-256"]``), instead of ignoring that challenge as RFC 8760 section 2 asks; so every
switch a baresip registers to offers ``["MD5"]`` only (see /tmp/bugs/test_interop_phones.md).
pjsua2 answers SHA-256, which :func:`test_pjsua_registers_with_sha256_digest` asserts from the
PJSIP message log.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

try:  # tests/ is not a package: pytest puts tests/ itself on sys.path (rootdir-relative)
    from peers import audio, baresip, pjsua
    from peers.switchproc import SwitchProcess, switch_factory
except ModuleNotFoundError:  # pragma: no cover - tests/ turned into a package
    from tests.peers import audio, baresip, pjsua
    from tests.peers.switchproc import SwitchProcess, switch_factory  # noqa: F401

pytestmark = pytest.mark.peer

needs_baresip = pytest.mark.skipif(not baresip.available(), reason=baresip.INSTALL_HINT)
needs_pjsua = pytest.mark.skipif(not pjsua.available(), reason=pjsua.INSTALL_HINT)

SwitchFactory = Callable[..., SwitchProcess]

# baresip 1.0 can only answer MD5 challenges and fails if any other is offered (module docstring)
BARESIP_AUTH: dict[str, Any] = {"algorithms": ["MD5"]}

CALLER_HZ = 1000.0          # what the caller sends
CALLEE_HZ = 600.0           # what the callee sends
FREQ_TOLERANCE = 5.0        # Hz
HOLD = 3.0                  # seconds of connected call before hanging up
MIN_TONE_SECONDS = 1.0      # a recording must hold at least this much loud tone


# --------------------------------------------------------------------------- helpers


def _assert_heard(path: Path | None, freq: float, who: str) -> None:
    """``path`` (a recording of what ``who`` heard) holds a tone of ``freq`` Hz, not silence."""
    assert path is not None and path.exists(), f"{who}: no recording"
    heard = audio.dominant_frequency(path)
    loud = audio.loud_seconds(path)
    assert loud >= MIN_TONE_SECONDS, (
        f"{who} heard almost nothing: {loud:.2f} s above -26 dBFS in {path} "
        f"({audio.duration(path):.2f} s, rms {audio.rms(path):.4f})")
    assert abs(heard - freq) < FREQ_TOLERANCE, (
        f"{who} heard {heard:.1f} Hz, expected {freq:.0f} Hz ({path})")


def _heard_file(phone: baresip.BaresipInstance) -> Path | None:
    files = phone.recorded_files()
    return files[-1] if files else None


async def _registered(phone: baresip.BaresipInstance, sw: SwitchProcess) -> None:
    try:
        ev = await phone.wait_event("REGISTER_OK", "REGISTER_FAIL", timeout=10)
    except baresip.BaresipError as exc:
        raise AssertionError(f"{exc}\n--- switch log tail:\n{sw.log()[-3000:]}") from exc
    assert ev["type"] == "REGISTER_OK", (
        f"{phone.user}: {ev}\n--- switch log tail:\n{sw.log()[-3000:]}")


async def _remote_rtp(phone: baresip.BaresipInstance) -> tuple[str, int]:
    """The RTP address:port baresip sends to (the c=/m= of the SDP it got), via audio_debug."""
    text = str((await phone.command("audio_debug")).get("data", ""))
    m = re.search(r"remote:\s*([\d.]+):(\d+)", text)
    assert m, f"{phone.user}: no remote RTP address in audio_debug:\n{text}"
    return m.group(1), int(m.group(2))


def _rtp_sources(phone: baresip.BaresipInstance) -> list[tuple[str, int]]:
    """Where baresip says its incoming RTP came from ("receiving from A:P" log lines)."""
    return [(h, int(p)) for h, p in
            re.findall(r"receiving from ([\d.]+):(\d+)", phone.log())]


def _assert_anchored(sw: SwitchProcess, phone: baresip.BaresipInstance,
                     remote: tuple[str, int]) -> None:
    """The phone's media peer is the switch (127.0.0.1, a port of [rtp]), never another phone."""
    host, port = remote
    lo, hi = sw.rtp_range
    assert host == "127.0.0.1" and lo <= port <= hi, (
        f"{phone.user} sends RTP to {host}:{port}, not into the switch's RTP range {lo}-{hi}")
    assert port % 2 == 0, f"{phone.user}: RTP port {port} is odd (RFC 3550 11)"
    sources = _rtp_sources(phone)
    assert sources, f"{phone.user}: no incoming RTP reported in its log"
    assert all(s == (host, port) for s in sources), (
        f"{phone.user}: RTP came from {sources}, SDP said {host}:{port} (not symmetric)")


def _no_switch_crash(sw: SwitchProcess) -> None:
    problems = sw.log_problems()
    assert not problems, "switch logged errors:\n" + "\n".join(problems) + \
        "\n--- log tail:\n" + sw.log()[-4000:]


def _close_reason(phone: baresip.BaresipInstance) -> str:
    closed = phone.events_of("CALL_CLOSED")
    return str(closed[-1].get("param", "")) if closed else ""


def _tcp_connections(sipstat: str) -> list[tuple[int, int]]:
    """(local port, remote port) of the TCP connections listed by baresip's ``sipstat``."""
    return [(int(lp), int(rp)) for lp, rp in
            re.findall(r"TCP\s+127\.0\.0\.1:(\d+)\s+\S+\s+127\.0\.0\.1:(\d+)", sipstat)]


def _tcp_bytes_received(local_port: int, remote_port: int) -> int | None:
    """Bytes received so far on an established loopback TCP connection (``ss -ti``)."""
    if shutil.which("ss") is None:
        return None
    out = subprocess.run(
        ["ss", "-tinH", "state", "established", "src", f"127.0.0.1:{local_port}",
         "dst", f"127.0.0.1:{remote_port}"],
        capture_output=True, text=True, timeout=5, check=False).stdout
    if not out.strip():
        return None
    m = re.search(r"bytes_received:(\d+)", out)
    return int(m.group(1)) if m else 0


def _digest_algorithms(log_file: str, header: str) -> list[str]:
    """``algorithm=`` of every ``header`` line (e.g. Authorization) in a PJSIP message log."""
    text = Path(log_file).read_text(errors="replace")
    return re.findall(rf"^{header}:\s*Digest\b.*?\balgorithm=\"?([\w-]+)", text, re.M)


# --------------------------------------------------------------------------- baresip <-> baresip


async def _baresip_call(tmp_path: Path, sw: SwitchProcess, *, transport: str,
                        hangup_by: str) -> tuple[baresip.BaresipInstance,
                                                 baresip.BaresipInstance]:
    """1001 (aufile, 1000 Hz) dials 1002 (ausine, 600 Hz, auto-answer); both record; after
    HOLD seconds ``hangup_by`` ("caller" | "callee") hangs up. Asserts signalling, anchoring
    and (TCP) connection reuse on the way; returns the stopped phones for audio checks."""
    tone = audio.write_tone_wav(tmp_path / "caller-1000hz.wav", CALLER_HZ, 60.0)
    tcp = transport == "tcp"
    extra = ["module debug_cmd.so"] if tcp else []        # sipstat: the phone's SIP connections
    caller = baresip.BaresipInstance(
        tmp_path / "1001", user="1001", password=sw.password("1001"), registrar=sw.registrar,
        transport=transport, audio_source=tone, codecs=("PCMU",), extra_config=extra)
    callee = baresip.BaresipInstance(
        tmp_path / "1002", user="1002", password=sw.password("1002"), registrar=sw.registrar,
        transport=transport, tone_hz=int(CALLEE_HZ), codecs=("PCMU",), extra_config=extra)
    async with caller, callee:
        await _registered(caller, sw)
        await _registered(callee, sw)

        before: list[tuple[int, int]] = []
        received_before: int | None = None
        if tcp:
            before = _tcp_connections(str((await callee.command("sipstat"))["data"]))
            assert len(before) == 1 and before[0][1] == sw.sip_port, (
                f"callee should hold exactly its registration connection: {before}")
            received_before = _tcp_bytes_received(*before[0])

        await caller.dial("1002")
        out = await caller.wait_event("CALL_ESTABLISHED", "CALL_CLOSED", timeout=10)
        assert out["type"] == "CALL_ESTABLISHED", f"caller: {out}\n{sw.log()[-3000:]}"
        inc = await callee.wait_event("CALL_ESTABLISHED", "CALL_CLOSED", timeout=10)
        assert inc["type"] == "CALL_ESTABLISHED", f"callee: {inc}\n{sw.log()[-3000:]}"
        assert out["direction"] == "outgoing" and inc["direction"] == "incoming"
        assert "1001" in str(inc.get("peeruri", "")), inc      # caller identity passed on

        if tcp:
            # RFC 5626-style reuse (RFC 3261 18.2.2 / 18.1.1): the INVITE to 1002 came over
            # the connection 1002 registered on, not over a new connection to its listener
            # (and not over UDP: the bytes show up on that very connection).
            after = _tcp_connections(str((await callee.command("sipstat"))["data"]))
            assert after == before, (
                f"switch opened another connection to the callee: {before} -> {after}")
            received_after = _tcp_bytes_received(*before[0])
            if received_before is not None and received_after is not None:
                assert received_after - received_before > 300, (
                    "the INVITE did not arrive on the registration's TCP connection "
                    f"({received_before} -> {received_after} bytes)")

        await asyncio.sleep(HOLD)
        remote_caller = await _remote_rtp(caller)
        remote_callee = await _remote_rtp(callee)

        if hangup_by == "caller":
            await caller.hangup()
        else:
            await callee.hangup()
        closed_a = await caller.wait_event("CALL_CLOSED", timeout=10)
        closed_b = await callee.wait_event("CALL_CLOSED", timeout=10)
        assert closed_a["direction"] == "outgoing" and closed_b["direction"] == "incoming"

    _assert_anchored(sw, caller, remote_caller)
    _assert_anchored(sw, callee, remote_callee)
    assert remote_caller != remote_callee, "both legs share one relay port"
    return caller, callee


@needs_baresip
@pytest.mark.timeout(60)
async def test_baresip_call_over_udp_with_audio(
        tmp_path: Path, switch_factory: SwitchFactory) -> None:
    sw = switch_factory(extensions=["1001", "1002"], auth=BARESIP_AUTH)
    caller, callee = await _baresip_call(tmp_path, sw, transport="udp", hangup_by="caller")
    for phone in (caller, callee):
        assert phone.events_of("CALL_ESTABLISHED") and phone.events_of("CALL_CLOSED")
    _assert_heard(_heard_file(callee), CALLER_HZ, "callee 1002")
    _assert_heard(_heard_file(caller), CALLEE_HZ, "caller 1001")
    _no_switch_crash(sw)


@needs_baresip
@pytest.mark.timeout(60)
async def test_baresip_call_over_tcp_reuses_registration_connection(
        tmp_path: Path, switch_factory: SwitchFactory) -> None:
    sw = switch_factory(extensions=["1001", "1002"], auth=BARESIP_AUTH)
    caller, callee = await _baresip_call(tmp_path, sw, transport="tcp", hangup_by="caller")
    assert str(caller.events_of("CALL_ESTABLISHED")[0]["peeruri"]).endswith(";transport=tcp")
    _assert_heard(_heard_file(callee), CALLER_HZ, "callee 1002")
    _assert_heard(_heard_file(caller), CALLEE_HZ, "caller 1001")
    _no_switch_crash(sw)


@needs_baresip
@pytest.mark.timeout(60)
async def test_baresip_callee_hangs_up(tmp_path: Path,
                                       switch_factory: SwitchFactory) -> None:
    sw = switch_factory(extensions=["1001", "1002"], auth=BARESIP_AUTH)
    caller, callee = await _baresip_call(tmp_path, sw, transport="udp", hangup_by="callee")
    # the caller did not hang up itself: its CALL_CLOSED comes from the switch's BYE
    assert _close_reason(caller) != "Connection reset by user", caller.events_of("CALL_CLOSED")
    assert _close_reason(callee) == "Connection reset by user", callee.events_of("CALL_CLOSED")
    _assert_heard(_heard_file(callee), CALLER_HZ, "callee 1002")
    _assert_heard(_heard_file(caller), CALLEE_HZ, "caller 1001")
    _no_switch_crash(sw)


@needs_baresip
@pytest.mark.timeout(60)
async def test_baresip_call_to_unregistered_extension_gets_480(
        tmp_path: Path, switch_factory: SwitchFactory) -> None:
    sw = switch_factory(extensions=["1001", "1002"], auth=BARESIP_AUTH)   # 1002 never registers
    async with baresip.BaresipInstance(
            tmp_path / "1001", user="1001", password=sw.password("1001"),
            registrar=sw.registrar, codecs=("PCMU",), record=False) as caller:
        await _registered(caller, sw)
        await caller.dial("1002")
        ev = await caller.wait_event("CALL_ESTABLISHED", "CALL_CLOSED", timeout=10)
    assert ev["type"] == "CALL_CLOSED", ev
    assert str(ev.get("param", "")).startswith("480"), (
        f"expected 480 Temporarily Unavailable, got {ev.get('param')!r}\n{sw.log()[-3000:]}")
    assert not caller.events_of("CALL_ESTABLISHED")
    _no_switch_crash(sw)


# --------------------------------------------------------------------------- pjsua2


@needs_pjsua
@pytest.mark.timeout(60)
async def test_pjsua_registers_with_sha256_digest(
        tmp_path: Path, switch_factory: SwitchFactory) -> None:
    sw = switch_factory(extensions=["1003"])                 # default: SHA-256, then MD5
    res = await pjsua.register(registrar=sw.registrar, user="1003", password=sw.password("1003"),
                               workdir=tmp_path, log_level=5)
    assert res["reg_status"] == 200 and res.get("unreg_status") == 200, res
    challenges = _digest_algorithms(res["log_file"], "WWW-Authenticate")
    assert challenges[:2] == ["SHA-256", "MD5"], (
        f"switch should challenge SHA-256 first, then MD5: {challenges}")
    answers = _digest_algorithms(res["log_file"], "Authorization")
    assert answers and all(a == "SHA-256" for a in answers), (
        f"pjsua2 answered with {answers}, expected SHA-256")
    _no_switch_crash(sw)


@needs_pjsua
@pytest.mark.timeout(60)
async def test_passwords_kept_as_ha1_only(
        tmp_path: Path, switch_factory: SwitchFactory) -> None:
    """The config file holds only H(number:realm:password) ([[extensions]] ha1_md5 and
    ha1_sha256): pjsua2 registers with SHA-256, a wrong password is still refused."""
    sw = switch_factory(extensions=["1003"], hashed_passwords=True)
    text = sw.config_path.read_text()
    assert sw.password("1003") not in text and "ha1_sha256" in text, text
    res = await pjsua.register(registrar=sw.registrar, user="1003", password=sw.password("1003"),
                               workdir=tmp_path / "right", log_level=5)
    assert res["reg_status"] == 200, res
    assert _digest_algorithms(res["log_file"], "Authorization")[:1] == ["SHA-256"], res
    wrong = await pjsua.register(registrar=sw.registrar, user="1003", password="not-it",
                                 workdir=tmp_path / "wrong", log_level=5)
    assert wrong["reg_status"] in (401, 403), wrong
    _no_switch_crash(sw)


@needs_baresip
@pytest.mark.timeout(60)
async def test_baresip_call_with_md5_ha1_only_config(
        tmp_path: Path, switch_factory: SwitchFactory) -> None:
    sw = switch_factory(extensions=["1001", "1002"], auth=BARESIP_AUTH, hashed_passwords=True)
    assert "ha1_md5" in sw.config_path.read_text()
    caller, callee = await _baresip_call(tmp_path, sw, transport="udp", hangup_by="caller")
    assert caller.events_of("CALL_ESTABLISHED") and callee.events_of("CALL_ESTABLISHED")
    _assert_heard(_heard_file(callee), CALLER_HZ, "callee 1002")
    _no_switch_crash(sw)


@needs_pjsua
@needs_baresip
@pytest.mark.timeout(60)
async def test_pjsua_calls_baresip_with_audio(
        tmp_path: Path, switch_factory: SwitchFactory) -> None:
    sw = switch_factory(extensions=["1001", "1003"], auth=BARESIP_AUTH)
    tone = audio.write_tone_wav(tmp_path / "pjsua-1000hz.wav", CALLER_HZ, 10.0)
    heard = tmp_path / "pjsua-heard.wav"
    async with baresip.BaresipInstance(
            tmp_path / "1001", user="1001", password=sw.password("1001"),
            registrar=sw.registrar, tone_hz=int(CALLEE_HZ), codecs=("PCMU",)) as phone:
        await _registered(phone, sw)
        call = asyncio.create_task(pjsua.call(
            sw.uri("1001"), registrar=sw.registrar, user="1003", password=sw.password("1003"),
            play=tone, record=heard, hold=HOLD, workdir=tmp_path, timeout=20, log_level=5))
        try:
            inc = await phone.wait_event("CALL_ESTABLISHED", "CALL_CLOSED", timeout=15)
            assert inc["type"] == "CALL_ESTABLISHED", f"{inc}\n{sw.log()[-3000:]}"
            await asyncio.sleep(1.0)
            remote = await _remote_rtp(phone)
            res = await call
        finally:
            call.cancel()
        closed = await phone.wait_event("CALL_CLOSED", timeout=10)
    assert res["reg_status"] == 200, res
    assert res["connected"] and res["ok"], res
    assert res["states"][-1] == "DISCONNECTED", res
    assert inc["direction"] == "incoming" and "1003" in str(inc.get("peeruri", "")), inc
    assert closed["direction"] == "incoming"
    assert _digest_algorithms(res["log_file"], "Proxy-Authorization") == ["MD5"], (
        "pjsua2 should authenticate its INVITE (407) once, with MD5")
    _assert_heard(_heard_file(phone), CALLER_HZ, "baresip 1001")
    _assert_heard(heard, CALLEE_HZ, "pjsua2 1003")
    _assert_anchored(sw, phone, remote)
    _no_switch_crash(sw)


@needs_pjsua
@pytest.mark.timeout(60)
async def test_pjsua_calls_pjsua_with_sha256_and_audio(
        tmp_path: Path, switch_factory: SwitchFactory) -> None:
    sw = switch_factory(extensions=["1002", "1003"])         # default: SHA-256, then MD5
    callee_tone = audio.write_tone_wav(tmp_path / "callee-600hz.wav", CALLEE_HZ, 10.0)
    caller_tone = audio.write_tone_wav(tmp_path / "caller-1000hz.wav", CALLER_HZ, 10.0)
    callee_heard = tmp_path / "callee-heard.wav"
    caller_heard = tmp_path / "caller-heard.wav"
    callee = await pjsua.start_answerer(
        registrar=sw.registrar, user="1002", password=sw.password("1002"), play=callee_tone,
        record=callee_heard, hold=None, timeout=25, workdir=tmp_path / "callee", log_level=5)
    try:
        await callee.wait_event("ready", timeout=10)
        res = await pjsua.call(sw.uri("1002"), registrar=sw.registrar, user="1003",
                               password=sw.password("1003"), play=caller_tone,
                               record=caller_heard, hold=HOLD, timeout=20,
                               workdir=tmp_path / "caller", log_level=5)
        out = await callee.result(timeout=15)
    finally:
        callee.stop()
    assert res["connected"] and res["ok"], res
    assert out["connected"] and out["ok"], out       # the callee saw the switch's BYE
    assert out["states"][-1] == "DISCONNECTED", out
    assert _digest_algorithms(res["log_file"], "Proxy-Authorization") == ["SHA-256"], (
        "pjsua2 should authenticate its INVITE (407) once, with SHA-256")
    _assert_heard(callee_heard, CALLER_HZ, "pjsua2 callee 1002")
    _assert_heard(caller_heard, CALLEE_HZ, "pjsua2 caller 1003")
    _no_switch_crash(sw)
