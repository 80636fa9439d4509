"""Interop: DTMF, prompts and recording of an EMBEDDED switch against real SIPp and baresip.

Unlike the other interop files, these tests run the switch in the test's own event loop
(``async with Switch(parse_config(...))``, the embedding API of issue #3) so that they can
subscribe to its call events and drive ``play``/``send_dtmf``/``record`` while real peers talk
to it over 127.0.0.1:

* RFC 4733 digits from a SIPp caller (the Debian ``dtmf_2833_*.pcap`` files) and from a baresip
  caller (``sndcode``) are reported once each, in order, on the caller's leg;
* digits the switch generates reach a baresip callee (``CALL_DTMF_START``) and a SIPp UAS's RTP
  port (an :class:`RtpSink`: marker on the first packet, three End packets per digit);
* a prompt played to a leg is what that phone hears (tone frequency, duration, spectrum), and
  the other phone's audio is not mixed into it;
* a call recording is a stereo WAV with the caller on channel 0 and the callee on channel 1;
* SIP INFO digits (``application/dtmf-relay`` and ``application/dtmf``) and in-band tones
  (a leg that negotiated no telephone-event) are reported with their transport.

Everything is judged with code independent of the switch's ``media`` package (tests/peers/audio.py
and the numpy helpers below). Peers: SIPp (``apt-get install sip-tester``; pcap playback needs
root) and baresip 1.0 (``apt-get install baresip-core``; MD5 digest only).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import math
import os
import secrets
import time
import wave
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from media.prompts import builtin_prompt
from switch.app import Switch
from switch.b2bua import CallEvent
from switch.config import parse_config

try:  # tests/ is not a package: pytest puts tests/ itself on sys.path (rootdir-relative)
    from peers import audio, baresip, sipp
    from peers.ports import free_port_range, free_udp_tcp_port
except ModuleNotFoundError:  # pragma: no cover - tests/ turned into a package
    from tests.peers import audio, baresip, sipp
    from tests.peers.ports import free_port_range, free_udp_tcp_port

pytestmark = pytest.mark.peer

needs_sipp = pytest.mark.skipif(not sipp.available(), reason=sipp.INSTALL_HINT)
needs_root = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="SIPp play_pcap_audio sends through a raw socket: run the tests as root")
needs_baresip = pytest.mark.skipif(not baresip.available(), reason=baresip.INSTALL_HINT)

OUT_NUMBER = "+905321234567"   # a valid TR mobile number: routed to the "pstn" trunk
CALLER_HZ = 1000.0
CALLEE_HZ = 600.0
PROMPT_HZ = 2000.0
FloatArray = npt.NDArray[np.float64]

DTMF_FREQS: dict[str, tuple[float, float]] = {
    d: (lo, hi)
    for row, lo in zip(("123A", "456B", "789C", "*0#D"), (697.0, 770.0, 852.0, 941.0),
                       strict=True)
    for d, hi in zip(row, (1209.0, 1336.0, 1477.0, 1633.0), strict=True)
}


# --------------------------------------------------------------------------- the embedded switch


class _LogTail(logging.Handler):
    """Keeps the switch's last log records for assertion messages."""

    def __init__(self, size: int = 400) -> None:
        super().__init__(logging.DEBUG)
        self.records: collections.deque[str] = collections.deque(maxlen=size)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.records.append(self.format(record))
        except Exception:  # pragma: no cover - never break the switch over a log line
            pass


class EmbeddedSwitch:
    """A :class:`Switch` in this event loop on free ports, with every :class:`CallEvent` kept.

    Extensions 1001/1002 (random passwords), a "pstn" trunk on :attr:`trunk_port` (a SIPp UAS
    binds it), a route for every E.164 number, MD5 digest (SIPp and baresip 1.0), no HTTP.
    """

    def __init__(self, workdir: Path, *, calls: dict[str, Any] | None = None,
                 algorithms: Sequence[str] = ("MD5",),
                 extra: dict[str, Any] | None = None, dids: dict[str, str] | None = None,
                 **switch_options: Any) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.sip_port = free_udp_tcp_port()
        self.trunk_port = free_udp_tcp_port()
        self.rtp_range = free_port_range(100)
        self.passwords = {n: f"pw-{n}-{secrets.token_hex(6)}" for n in ("1001", "1002")}
        self.config = parse_config({
            "sip": {"address": "127.0.0.1", "port": self.sip_port, "transports": ["udp", "tcp"]},
            "rtp": {"address": "127.0.0.1", "port_min": self.rtp_range[0],
                    "port_max": self.rtp_range[1]},
            "http": {"enabled": False},
            "auth": {"algorithms": list(algorithms)},
            "calls": {"ring_timeout": 15, "recordings_dir": str(workdir / "recordings"),
                      **(calls or {})},
            "store": {"url": f"sqlite:///{workdir / 'switch.db'}"},
            "extensions": [{"number": n, "password": p} for n, p in self.passwords.items()],
            "trunks": [{"name": "pstn", "host": "127.0.0.1", "port": self.trunk_port,
                        "dids": dict(dids or {})}],
            "routes": [{"pattern": "^\\+", "trunk": "pstn"}],
            **(extra or {}),
        })
        self.sw = Switch(self.config, **switch_options)
        self.events: list[CallEvent] = []
        self._changed = asyncio.Event()
        self._unsubscribe: Callable[[], None] | None = None
        self._log = _LogTail()
        self.callbacks: list[Callable[[CallEvent], object]] = []

    @property
    def registrar(self) -> str:
        return f"127.0.0.1:{self.sip_port}"

    async def __aenter__(self) -> EmbeddedSwitch:
        for name in ("sip", "media", "switch"):
            logging.getLogger(name).addHandler(self._log)
        await self.sw.start()
        self._unsubscribe = self.sw.subscribe(self._on_event)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            await self.sw.stop()
        finally:
            if self._unsubscribe is not None:
                self._unsubscribe()
            for name in ("sip", "media", "switch"):
                logging.getLogger(name).removeHandler(self._log)

    def _on_event(self, event: CallEvent) -> None:
        self.events.append(event)
        self._changed.set()
        for callback in self.callbacks:
            callback(event)

    def of(self, name: str) -> list[CallEvent]:
        """Events named ``name`` so far, in order."""
        return [e for e in self.events if e.name == name]

    async def wait_event(self, name: str, *, count: int = 1, timeout: float = 10.0,
                         predicate: Callable[[CallEvent], bool] | None = None) -> list[CallEvent]:
        """Wait until ``count`` events named ``name`` (matching ``predicate``) happened."""
        deadline = time.monotonic() + timeout
        while True:
            got = [e for e in self.of(name) if predicate is None or predicate(e)]
            if len(got) >= count:
                return got
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"switch: {len(got)}/{count} {name!r} events in {timeout}s\n{self.diag()}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.2))
            except TimeoutError:
                pass

    def diag(self) -> str:
        events = "\n".join(f"  {e.seq} {e.name} leg={e.leg_id} {e.data}" for e in self.events)
        logs = "\n".join(list(self._log.records)[-80:])
        return f"--- switch events:\n{events}\n--- switch log tail:\n{logs}"

    def problems(self) -> list[str]:
        """ERROR/CRITICAL log lines and tracebacks (a crash in a callback or task)."""
        return [r for r in self._log.records if " ERROR " in r or " CRITICAL " in r
                or "Traceback" in r]


def no_switch_errors(sw: EmbeddedSwitch) -> None:
    problems = sw.problems()
    assert not problems, "switch logged errors:\n" + "\n".join(problems[:20]) + "\n" + sw.diag()


async def sipp_call(sw: EmbeddedSwitch, scenario: str | Path, tmp_path: Path, *,
                    duration_ms: int = 200, timeout: float = 25.0) -> sipp.SippResult:
    """A SIPp UAC authenticated as extension 1001 calls OUT_NUMBER (the "pstn" trunk)."""
    return await sipp.arun(scenario, sw.sip_port, service=OUT_NUMBER, auth_user="1001",
                           auth_pass=sw.passwords["1001"], keys={"caller": "1001"},
                           duration_ms=duration_ms, workdir=tmp_path, timeout=timeout)


def sipp_diag(sw: EmbeddedSwitch, *results: sipp.SippResult) -> str:
    return "\n\n".join([r.describe() for r in results] + [sw.diag()])


def start_trunk(sw: EmbeddedSwitch, tmp_path: Path, sink: sipp.RtpSink,
                scenario: str | Path = "uas_answer") -> sipp.SippProcess:
    return sipp.start(scenario, local_port=sw.trunk_port, keys={"rtpport": sink.port},
                      workdir=tmp_path)


def digits_of(events: list[CallEvent]) -> list[str]:
    return [str(e.data.get("digit")) for e in events]


# --------------------------------------------------------------------------- baresip helpers


def silence_wav(path: Path, seconds: float = 60.0) -> Path:
    """A silent 8 kHz WAV for baresip's aufile source (a phone that says nothing, and no
    aubridge loopback echoing what it hears back into the call)."""
    return audio.write_wav(path, np.zeros(round(seconds * 8000)), 8000)


def phone(tmp_path: Path, sw: EmbeddedSwitch, user: str, *, source: Path,
          record: bool = False) -> baresip.BaresipInstance:
    return baresip.BaresipInstance(
        tmp_path / user, user=user, password=sw.passwords[user], registrar=sw.registrar,
        audio_source=source, codecs=("PCMU",), record=record)


async def registered(p: baresip.BaresipInstance, sw: EmbeddedSwitch) -> None:
    try:
        ev = await p.wait_event("REGISTER_OK", "REGISTER_FAIL", timeout=10)
    except baresip.BaresipError as exc:
        raise AssertionError(f"{exc}\n{sw.diag()}") from exc
    assert ev["type"] == "REGISTER_OK", f"{p.user}: {ev}\n{sw.diag()}"


async def connect(caller: baresip.BaresipInstance, callee: baresip.BaresipInstance,
                  sw: EmbeddedSwitch) -> CallEvent:
    """Register both, 1001 dials 1002 (auto-answer); returns the switch's ``bridged`` event."""
    await registered(caller, sw)
    await registered(callee, sw)
    await caller.dial(callee.user)
    for p in (caller, callee):
        ev = await p.wait_event("CALL_ESTABLISHED", "CALL_CLOSED", timeout=10)
        assert ev["type"] == "CALL_ESTABLISHED", f"{p.user}: {ev}\n{sw.diag()}"
    (bridged,) = await sw.wait_event("bridged", timeout=5)
    return bridged


async def hang_up(caller: baresip.BaresipInstance, callee: baresip.BaresipInstance,
                  sw: EmbeddedSwitch) -> None:
    await caller.hangup()
    await caller.wait_event("CALL_CLOSED", timeout=10)
    await callee.wait_event("CALL_CLOSED", timeout=10)
    await sw.wait_event("completed", timeout=5)


def heard(p: baresip.BaresipInstance) -> Path:
    files = p.recorded_files()
    assert files, f"{p.user}: no sndfile recording in {p.rec_dir}"
    return files[-1]


# --------------------------------------------------------------------------- signal analysis


def to_8k(samples: FloatArray, rate: int) -> FloatArray:
    """Resample to 8 kHz (linear interpolation after a moving-average low-pass)."""
    if rate == 8000:
        return samples
    factor = rate / 8000.0
    width = max(1, round(factor))
    smoothed = np.convolve(samples, np.ones(width) / width, mode="same")
    t = np.arange(math.floor(len(samples) / factor)) * factor
    return np.interp(t, np.arange(len(samples)), smoothed)


def read_8k(path: Path) -> FloatArray:
    data, rate = audio.read_wav(path)
    return to_8k(data, rate)


def block_power(x: FloatArray, freq: float, block: int = 160, rate: int = 8000) -> FloatArray:
    """Per-block power at ``freq`` (a windowed single-bin DFT of each ``block`` samples)."""
    n = len(x) // block
    if n == 0:
        return np.zeros(0)
    blocks = x[: n * block].reshape(n, block) * np.hanning(block)
    kernel = np.exp(-2j * np.pi * freq * np.arange(block) / rate)
    return np.asarray(np.abs(blocks @ kernel) ** 2, dtype=np.float64)


def block_rms(x: FloatArray, block: int = 80) -> FloatArray:
    n = len(x) // block
    if n == 0:
        return np.zeros(0)
    blocks = x[: n * block].reshape(n, block)
    return np.asarray(np.sqrt(np.mean(blocks * blocks, axis=1)), dtype=np.float64)


def loud_span(x: FloatArray, threshold: float = 0.01, block: int = 80) -> tuple[float, float]:
    """(start, end) in seconds of the first and last 10 ms block above ``threshold`` RMS."""
    levels = block_rms(x, block)
    loud = np.flatnonzero(levels > threshold)
    if len(loud) == 0:
        return (0.0, 0.0)
    return (float(loud[0] * block / 8000), float((loud[-1] + 1) * block / 8000))


def best_lag(recording: FloatArray, reference: FloatArray) -> int:
    """The offset of ``reference`` inside ``recording`` (FFT cross-correlation)."""
    n = len(recording) + len(reference)
    size = 1 << (n - 1).bit_length()
    corr = np.fft.irfft(np.fft.rfft(recording, size) * np.conj(np.fft.rfft(reference, size)),
                        size)
    return int(np.argmax(corr[: len(recording)]))


def magnitude_spectrum(x: FloatArray, nfft: int = 512) -> FloatArray:
    """Welch-style average magnitude spectrum (Hann, 50 % overlap), 100 Hz .. 3.6 kHz."""
    hop = nfft // 2
    frames = [x[i : i + nfft] for i in range(0, len(x) - nfft + 1, hop)]
    if not frames:
        return np.zeros(0)
    window = np.hanning(nfft)
    spec = np.mean([np.abs(np.fft.rfft(f * window)) for f in frames], axis=0)
    freqs = np.fft.rfftfreq(nfft, 1 / 8000)
    return np.asarray(spec[(freqs >= 100) & (freqs <= 3600)], dtype=np.float64)


def correlation(a: FloatArray, b: FloatArray) -> float:
    n = min(len(a), len(b))
    if n < 2:
        return 0.0
    a, b = a[:n] - a[:n].mean(), b[:n] - b[:n].mean()
    denom = float(np.sqrt(np.sum(a * a) * np.sum(b * b)))
    return float(np.sum(a * b) / denom) if denom > 0 else 0.0


def dtmf_signal(digits: str, *, tone_ms: int = 100, gap_ms: int = 120, lead_ms: int = 300,
                tail_ms: int = 400, amplitude: float = 0.2) -> FloatArray:
    """Dual-tone DTMF (ITU-T Q.23 frequencies) with silence around and between the digits."""
    parts: list[FloatArray] = [np.zeros(8 * lead_ms)]
    t = np.arange(8 * tone_ms) / 8000.0
    for digit in digits:
        lo, hi = DTMF_FREQS[digit]
        parts.append(amplitude * (np.sin(2 * np.pi * lo * t) + np.sin(2 * np.pi * hi * t)))
        parts.append(np.zeros(8 * gap_ms))
    parts.append(np.zeros(8 * tail_ms))
    return np.concatenate(parts)


def read_stereo(path: Path) -> tuple[FloatArray, int, int]:
    """A WAV as (frames x channels) floats, its rate and channel count."""
    with wave.open(str(path), "rb") as w:
        channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
        raw = w.readframes(w.getnframes())
    assert width == 2, f"{path}: {8 * width}-bit samples, expected 16-bit PCM"
    data = np.frombuffer(raw, dtype="<i2").astype(np.float64) / 32768.0
    return data[: len(data) - len(data) % channels].reshape(-1, channels), rate, channels


# --------------------------------------------------------------------------- 1. RFC 4733 in


@needs_sipp
@needs_root
@pytest.mark.timeout(60)
async def test_rfc4733_digits_from_sipp_caller_reported_once_in_order(tmp_path: Path) -> None:
    """1001 (SIPp) calls the trunk and plays dtmf_2833_1/2/pound.pcap: the switch reports 1, 2,
    # once each, in order, as rfc4733, on the caller's leg (and relays them to the trunk)."""
    async with EmbeddedSwitch(tmp_path / "sw") as sw, sipp.RtpSink() as sink:
        uas = start_trunk(sw, tmp_path, sink)
        try:
            await uas.wait_ready()
            res = await sipp_call(sw, "uac_auth_dtmf", tmp_path, duration_ms=300)
            uas_res = await uas.wait_async(10)
        finally:
            uas.stop()
        await sw.wait_event("completed", timeout=5)
        await asyncio.sleep(0.3)   # nothing more may trickle in after the end
    assert res.ok and uas_res.ok, sipp_diag(sw, res, uas_res)
    (initiated,) = sw.of("initiated")
    (bridged,) = sw.of("bridged")
    a_leg = bridged.data["a_leg"]
    assert initiated.leg_id == a_leg, sw.diag()
    dtmf = sw.of("dtmf")
    assert digits_of(dtmf) == ["1", "2", "#"], sw.diag()
    for ev in dtmf:
        assert ev.leg_id == a_leg, f"digit reported on leg {ev.leg_id}, caller is {a_leg}"
        assert ev.data["transport"] == "rfc4733", ev
        assert ev.call_id == bridged.call_id
        # each pcap is one press whose End packets carry duration 0x08c0 = 2240 units of the
        # 8 kHz clock = 280 ms
        assert ev.data["duration_ms"] == 280, ev
    assert [e.seq for e in dtmf] == sorted(e.seq for e in dtmf)
    assert sink.dtmf_digits(101) == "12#", "digits were not relayed to the trunk"
    no_switch_errors(sw)


# --------------------------------------------------------------------------- 2. baresip sndcode


@needs_baresip
@pytest.mark.timeout(60)
async def test_baresip_caller_digits_reported_once_in_order(tmp_path: Path) -> None:
    """baresip 1001 calls baresip 1002; the caller sends 1, 5, # with sndcode: the switch
    reports them once each, in order, on the caller's leg; the callee receives them too."""
    quiet = silence_wav(tmp_path / "silence.wav")
    async with EmbeddedSwitch(tmp_path / "sw") as sw:
        caller = phone(tmp_path, sw, "1001", source=quiet)
        callee = phone(tmp_path, sw, "1002", source=quiet)
        async with caller, callee:
            bridged = await connect(caller, callee, sw)
            await asyncio.sleep(0.3)
            for digit in "15#":
                await caller.send_dtmf(digit)
                await asyncio.sleep(0.5)
            await sw.wait_event("dtmf", count=3, timeout=5)
            await asyncio.sleep(0.5)     # a duplicate would show up by now
            callee_digits = [str(e.get("param")) for e in callee.events_of("CALL_DTMF_START")]
            await hang_up(caller, callee, sw)
    dtmf = sw.of("dtmf")
    assert digits_of(dtmf) == ["1", "5", "#"], sw.diag()
    for ev in dtmf:
        assert ev.leg_id == bridged.data["a_leg"], ev
        assert ev.data["transport"] == "rfc4733", ev
    assert callee_digits == ["1", "5", "#"], (
        f"callee heard {callee_digits} (telephone-events not relayed to leg B)\n{sw.diag()}")
    no_switch_errors(sw)


# --------------------------------------------------------------------------- 3. RFC 4733 out


@needs_baresip
@pytest.mark.timeout(60)
async def test_switch_sends_rfc4733_digits_to_baresip_callee(tmp_path: Path) -> None:
    """During a baresip call, send_dtmf(leg B, "123"): the callee reports 1, 2, 3 and the
    caller none (the digits go to one leg only)."""
    quiet = silence_wav(tmp_path / "silence.wav")
    async with EmbeddedSwitch(tmp_path / "sw") as sw:
        caller = phone(tmp_path, sw, "1001", source=quiet)
        callee = phone(tmp_path, sw, "1002", source=quiet)
        async with caller, callee:
            bridged = await connect(caller, callee, sw)
            await asyncio.sleep(0.3)
            seconds = sw.sw.send_dtmf(bridged.data["b_leg"], "123")
            assert 0 < seconds < 5, seconds
            deadline = time.monotonic() + seconds + 3.0
            while (len(callee.events_of("CALL_DTMF_START")) < 3
                   and time.monotonic() < deadline):
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            got = [str(e.get("param")) for e in callee.events_of("CALL_DTMF_START")]
            caller_got = [str(e.get("param")) for e in caller.events_of("CALL_DTMF_START")]
            await hang_up(caller, callee, sw)
    assert got == ["1", "2", "3"], f"callee reported {got}\n{callee.log()[-2000:]}\n{sw.diag()}"
    assert caller_got == [], f"the caller got digits meant for the callee: {caller_got}"
    assert sw.of("dtmf") == [], "digits the switch sent were reported as received"
    no_switch_errors(sw)


@needs_sipp
@pytest.mark.timeout(60)
async def test_switch_sends_rfc4733_packets_to_sipp_uas(tmp_path: Path) -> None:
    """send_dtmf(leg B, "123") toward a SIPp UAS: its RTP port receives three RFC 4733
    events 1, 2, 3 on the negotiated PT, each with the marker on its first packet only, one
    timestamp per event, non-decreasing durations and exactly three End packets (2.5.1.4)."""
    async with EmbeddedSwitch(tmp_path / "sw") as sw, sipp.RtpSink() as sink:
        sent: list[float] = []

        def on_bridged(ev: CallEvent) -> None:
            if ev.name == "bridged":
                asyncio.get_running_loop().call_later(
                    0.3, lambda: sent.append(sw.sw.send_dtmf(ev.data["b_leg"], "123")))

        sw.callbacks.append(on_bridged)
        uas = start_trunk(sw, tmp_path, sink)
        try:
            await uas.wait_ready()
            res = await sipp_call(sw, "uac_auth_call", tmp_path, duration_ms=2500)
            uas_res = await uas.wait_async(10)
        finally:
            uas.stop()
        await sw.wait_event("completed", timeout=5)
    assert res.ok and uas_res.ok, sipp_diag(sw, res, uas_res)
    assert sent, "send_dtmf never ran (no bridged event?)\n" + sw.diag()
    events = sink.received(101)
    assert sink.dtmf_digits(101) == "123", (
        f"sink got {sink.dtmf_digits(101)!r}; PTs seen {sorted(sink.payload_types())}\n"
        + sw.diag())
    runs: dict[int, list[sipp.RtpPacket]] = {}
    for p in events:
        runs.setdefault(p.timestamp, []).append(p)
    assert len(runs) == 3, f"{len(runs)} event timestamps: {sorted(runs)}"
    assert len({p.ssrc for p in sink.packets}) == 1, "more than one stream toward the UAS"
    seqs = [p.sequence for p in sink.packets]
    assert all((b - a) % 65536 == 1 for a, b in itertools.pairwise(seqs)), seqs
    for digit, run in zip("123", sorted(runs.values(), key=lambda r: r[0].received_at),
                          strict=True):
        codes = {p.payload[0] for p in run}
        assert codes == {int(digit)}, (digit, codes)
        assert run[0].marker and not any(p.marker for p in run[1:]), (
            f"digit {digit}: markers {[p.marker for p in run]}")
        ends = [p for p in run if p.payload[1] & 0x80]
        assert len(ends) == 3 and run[-3:] == ends, (
            f"digit {digit}: {len(ends)} End packets, E bits {[p.payload[1] >> 7 for p in run]}")
        durations = [int.from_bytes(p.payload[2:4], "big") for p in run]
        assert durations == sorted(durations) and durations[-1] >= 800, durations
        assert len({p.payload for p in ends}) == 1, "End packets differ"
    no_switch_errors(sw)


# --------------------------------------------------------------------------- 4. prompts


@needs_baresip
@pytest.mark.timeout(60)
async def test_prompt_tone_replaces_relayed_audio_for_its_duration(tmp_path: Path) -> None:
    """The caller sends 1000 Hz; the switch plays a 1.0 s 2000 Hz WAV to the callee. The callee
    hears 1000 Hz, then 2000 Hz alone for 1.0 s (+-60 ms) with no 1000 Hz mixed in or
    interleaved, then 1000 Hz again."""
    caller_tone = audio.write_tone_wav(tmp_path / "caller.wav", CALLER_HZ, 60.0)
    prompt_seconds = 1.0
    prompt = audio.write_tone_wav(tmp_path / "prompt-2000hz.wav", PROMPT_HZ, prompt_seconds,
                                  amplitude=0.4)
    quiet = silence_wav(tmp_path / "silence.wav")
    async with EmbeddedSwitch(tmp_path / "sw") as sw:
        caller = phone(tmp_path, sw, "1001", source=caller_tone)
        callee = phone(tmp_path, sw, "1002", source=quiet, record=True)
        async with caller, callee:
            bridged = await connect(caller, callee, sw)
            await asyncio.sleep(1.0)
            handle = sw.sw.play(bridged.data["b_leg"], prompt)
            reason = await asyncio.wait_for(handle.wait(), prompt_seconds + 3.0)
            await asyncio.sleep(1.0)
            await hang_up(caller, callee, sw)
    assert str(reason) == "finished", reason
    rec = read_8k(heard(callee))
    p_prompt = block_power(rec, PROMPT_HZ)
    p_caller = block_power(rec, CALLER_HZ)
    prompt_blocks = np.flatnonzero(p_prompt > 100 * np.maximum(p_caller, 1e-9))
    assert len(prompt_blocks) > 0, f"the callee never heard the prompt\n{sw.diag()}"
    first, last = int(prompt_blocks[0]), int(prompt_blocks[-1])
    span = (last - first + 1) * 0.02
    assert abs(span - prompt_seconds) <= 0.06 + 0.02, (
        f"prompt heard for {span:.3f} s, it lasts {prompt_seconds:.3f} s")
    inner = range(first + 1, last)        # edge blocks may straddle the switch-over
    mixed = [i for i in inner if p_caller[i] * 100 > p_prompt[i]]
    assert not mixed, (
        f"caller's 1000 Hz audible in {len(mixed)} of {len(inner)} prompt blocks "
        f"(at {[round(i * 0.02, 2) for i in mixed[:10]]} s): prompt and relay interleave")
    before = np.flatnonzero(p_caller[:first] > 100 * np.maximum(p_prompt[:first], 1e-9))
    after = np.flatnonzero(p_caller[last + 1:] > 100 * np.maximum(p_prompt[last + 1:], 1e-9))
    assert len(before) * 0.02 >= 0.5, "the callee did not hear the caller before the prompt"
    assert len(after) * 0.02 >= 0.5, "the caller's audio did not come back after the prompt"
    no_switch_errors(sw)


@needs_baresip
@pytest.mark.timeout(60)
async def test_builtin_connecting_prompt_heard_whole(tmp_path: Path) -> None:
    """Both phones silent; the switch plays the built-in "connecting" prompt to the callee. Its
    recording holds the prompt: the loud span matches the prompt's own within 60 ms, the
    envelope and the magnitude spectrum correlate with the prompt (> 0.8), and the caller
    heard nothing of it."""
    reference = read_8k(builtin_prompt("connecting", "en"))
    ref_start, ref_end = loud_span(reference)
    assert ref_end - ref_start > 0.5, "the built-in prompt is (nearly) silent"
    quiet = silence_wav(tmp_path / "silence.wav")
    async with EmbeddedSwitch(tmp_path / "sw") as sw:
        caller = phone(tmp_path, sw, "1001", source=quiet, record=True)
        callee = phone(tmp_path, sw, "1002", source=quiet, record=True)
        async with caller, callee:
            bridged = await connect(caller, callee, sw)
            await asyncio.sleep(0.5)
            handle = sw.sw.play(bridged.data["b_leg"], "connecting")
            reason = await asyncio.wait_for(handle.wait(), len(reference) / 8000 + 3.0)
            await asyncio.sleep(0.7)
            await hang_up(caller, callee, sw)
    assert str(reason) == "finished", reason
    rec = read_8k(heard(callee))
    start, end = loud_span(rec)
    assert end > start, f"the callee heard silence (rms {audio.rms(rec, 8000):.5f})\n{sw.diag()}"
    assert abs((end - start) - (ref_end - ref_start)) <= 0.06, (
        f"loud span heard {end - start:.3f} s, the prompt's is {ref_end - ref_start:.3f} s")
    lag = best_lag(rec, reference)
    segment = rec[lag : lag + len(reference)]
    assert len(segment) == len(reference), "the recording ends inside the prompt"
    env = correlation(block_rms(segment, 160), block_rms(reference, 160))
    spec = correlation(magnitude_spectrum(segment), magnitude_spectrum(reference))
    assert env > 0.8, f"envelope correlation {env:.3f}"
    assert spec > 0.8, f"magnitude-spectrum correlation {spec:.3f}"
    # the prompt starts where the loud span starts (the cross-correlation agrees)
    assert abs((lag / 8000 + ref_start) - start) <= 0.06, (lag / 8000, ref_start, start)
    caller_rms = audio.rms(read_8k(heard(caller)), 8000)
    assert caller_rms < 0.003, f"the caller heard something (rms {caller_rms:.4f})"
    no_switch_errors(sw)


# --------------------------------------------------------------------------- 5. recording


@needs_baresip
@pytest.mark.timeout(60)
async def test_stereo_recording_caller_left_callee_right(tmp_path: Path) -> None:
    """The caller sends 1000 Hz, the callee 600 Hz; record(call) from the moment the call is
    bridged. After hang-up a recording-ready event names the file: 8 kHz 16-bit stereo,
    channel 0 ~1000 Hz, channel 1 ~600 Hz, as long as the answered call (+-0.5 s)."""
    caller_tone = audio.write_tone_wav(tmp_path / "caller.wav", CALLER_HZ, 60.0)
    callee_tone = audio.write_tone_wav(tmp_path / "callee.wav", CALLEE_HZ, 60.0)
    target = tmp_path / "rec" / "call.wav"
    async with EmbeddedSwitch(tmp_path / "sw") as sw:
        started: list[Path] = []

        def on_bridged(ev: CallEvent) -> None:
            if ev.name == "bridged":
                started.append(sw.sw.record(ev.call_id, target))

        sw.callbacks.append(on_bridged)
        caller = phone(tmp_path, sw, "1001", source=caller_tone)
        callee = phone(tmp_path, sw, "1002", source=callee_tone)
        async with caller, callee:
            bridged = await connect(caller, callee, sw)
            await asyncio.sleep(3.0)
            await hang_up(caller, callee, sw)
        (ready,) = await sw.wait_event("recording-ready", timeout=5)
        (answered,) = sw.of("answered")
        (completed,) = sw.of("completed")
    assert started == [target], started
    assert ready.call_id == bridged.call_id
    assert Path(ready.data["path"]) == target, ready.data
    frames, rate, channels = read_stereo(target)
    assert channels == 2 and rate == 8000, (channels, rate)
    call_seconds = completed.time - answered.time
    file_seconds = len(frames) / rate
    assert abs(file_seconds - call_seconds) <= 0.5, (file_seconds, call_seconds)
    assert abs(float(ready.data["duration"]) - file_seconds) <= 0.05, ready.data
    for ch, freq, who in ((0, CALLER_HZ, "caller (leg A)"), (1, CALLEE_HZ, "callee (leg B)")):
        x = frames[:, ch]
        loud = float(np.count_nonzero(block_rms(x, 160) > 0.05)) * 0.02
        assert loud >= 2.0, f"channel {ch} ({who}): only {loud:.2f} s of audio"
        got = audio.dominant_frequency(x, rate)
        assert abs(got - freq) < 5.0, f"channel {ch} ({who}): {got:.1f} Hz, expected {freq}"
    no_switch_errors(sw)


# --------------------------------------------------------------------------- 6. SIP INFO


@needs_sipp
@pytest.mark.timeout(60)
async def test_sip_info_digits_reported(tmp_path: Path) -> None:
    """1001 (SIPp) sends INFO application/dtmf-relay (Signal=5, Duration=160) and INFO
    application/dtmf ("7") in the call: both get 200, the switch reports 5 then 7 as "info"
    on the caller's leg."""
    async with EmbeddedSwitch(tmp_path / "sw") as sw, sipp.RtpSink() as sink:
        uas = start_trunk(sw, tmp_path, sink)
        try:
            await uas.wait_ready()
            res = await sipp_call(sw, "t_uac_info_dtmf", tmp_path, duration_ms=500)
            uas_res = await uas.wait_async(10)
        finally:
            uas.stop()
        await sw.wait_event("completed", timeout=5)
    assert res.ok and uas_res.ok, sipp_diag(sw, res, uas_res)
    info_answers = [m for m in res.received("SIP/2.0") if " INFO" in m.split("CSeq:", 1)[-1]
                    .splitlines()[0]]
    assert [m.split(" ", 2)[1] for m in info_answers] == ["200", "200"], sipp_diag(sw, res)
    dtmf = sw.of("dtmf")
    assert digits_of(dtmf) == ["5", "7"], sw.diag()
    (bridged,) = sw.of("bridged")
    for ev in dtmf:
        assert ev.data["transport"] == "info", ev
        assert ev.leg_id == bridged.data["a_leg"], ev
    assert dtmf[0].data["duration_ms"] == 160, dtmf[0]
    no_switch_errors(sw)


# --------------------------------------------------------------------------- 7. in-band


@needs_sipp
@pytest.mark.timeout(60)
async def test_inband_digits_on_a_leg_without_telephone_event(tmp_path: Path) -> None:
    """The trunk (SIPp UAS) answers PCMU only, no telephone-event. From its RTP port the test
    sends G.711 audio with the DTMF tones 3, 8, # (100 ms each, numpy dual tones): the switch
    reports 3, 8, # once each, as "inband", on the trunk's leg."""
    uas_scn = sipp.render_scenario("uas_answer", tmp_path, {
        "RTP/AVP 8 0 101": "RTP/AVP 0",
        "a=rtpmap:8 PCMA/8000": "a=ptime:20",
        "a=rtpmap:101 telephone-event/8000": "a=sendrecv",
        "a=fmtp:101 0-15": "a=maxptime:20",
    })
    signal = dtmf_signal("38#")
    async with EmbeddedSwitch(tmp_path / "sw") as sw, sipp.RtpSink() as sink:
        uas = start_trunk(sw, tmp_path, sink, uas_scn)
        try:
            await uas.wait_ready()
            call = asyncio.create_task(sipp_call(sw, "uac_auth_call", tmp_path,
                                                 duration_ms=4000))
            (bridged,) = await sw.wait_event("bridged", timeout=10)
            leg_b = sw.sw.b2bua.legs[bridged.data["b_leg"]]
            assert leg_b.rtp is not None
            assert not any(c.name.lower() == "telephone-event" for c in leg_b.codecs), (
                f"leg B negotiated {leg_b.codecs}")
            dest = (str(leg_b.rtp.local_address[0]), int(leg_b.rtp.local_address[1]))
            t0 = time.monotonic()
            for n, i in enumerate(range(0, len(signal) - 159, 160)):
                sink.send(audio.ulaw_encode(signal[i : i + 160]), payload_type=0,
                          marker=(n == 0), dest=dest)
                delay = t0 + (n + 1) * 0.02 - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await sw.wait_event("dtmf", count=3, timeout=3)
            res = await call
            uas_res = await uas.wait_async(10)
        finally:
            uas.stop()
        await sw.wait_event("completed", timeout=5)
    assert res.ok and uas_res.ok, sipp_diag(sw, res, uas_res)
    dtmf = sw.of("dtmf")
    assert digits_of(dtmf) == ["3", "8", "#"], sw.diag()
    for ev in dtmf:
        assert ev.data["transport"] == "inband", ev
        assert ev.leg_id == bridged.data["b_leg"], ev
        assert 60 <= ev.data["duration_ms"] <= 140, ev
    no_switch_errors(sw)
