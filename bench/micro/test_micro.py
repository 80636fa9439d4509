"""Micro-benchmarks of the hot functions (run with ``--benchmark-only``; see bench/README.md).

Every benchmark times one call of the function under test with realistic input and then checks
the result, so a body that stops doing its job fails (also under ``--benchmark-disable``, which
runs each body once: the smoke test in tests/test_bench_smoke.py). ``extra_info["items"]`` is
how many units of work one call does (samples, packets, channel-frames) and ``extra_info
["unit"]`` names the unit; the ``bench.micro`` runner divides by it.

Groups: ``sip`` (parse/serialise), ``digest`` (verify), ``rtp`` (header parse/build/rewrite and
the relay's per-packet path), ``g711``, ``dtmf`` (Goertzel and the in-band detector), ``sdp``.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from bench.micro.samples import SDP_OFFER, SIP_MESSAGES, call_flow
from media.dtmf import InbandDetector, InbandDetectorBank, goertzel_power, inband_tone
from media.engine import MediaEngine, RtpEndpoint
from media.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode, ulaw_to_alaw
from media.rtp import (
    RtpHeader,
    build_rtp,
    parse_rtp,
    rtp_header_length,
    set_sequence,
    set_ssrc,
    set_timestamp,
)
from media.sdp import Codec, SessionDescription, build_answer, build_offer, negotiate
from sip.digest import DigestClient, DigestServer
from sip.message import Request, Response
from sip.parser import parse_message

Benchmark = Any  # the pytest-benchmark fixture (BenchmarkFixture)

PCMU = Codec("PCMU", 0, 8000)
PCMA = Codec("PCMA", 8, 8000)
TE_101 = Codec("telephone-event", 101, 8000, "0-16")
TE_96 = Codec("telephone-event", 96, 8000, "0-16")

FRAME = 160  # samples in a 20 ms G.711 frame at 8 kHz


def _info(benchmark: Benchmark, items: int = 1, unit: str = "call") -> None:
    benchmark.extra_info["items"] = items
    benchmark.extra_info["unit"] = unit


def _speech_like(n: int, seed: int = 7) -> np.ndarray[Any, np.dtype[np.int16]]:
    """Low-pass noise around -20 dBm0: not a tone, so the detector runs its no-digit path."""
    rng = np.random.default_rng(seed)
    white = rng.normal(0.0, 1500.0, n + 8)
    smooth = np.convolve(white, np.ones(8) / 8.0, mode="valid")[:n]
    return np.clip(np.rint(smooth), -32768, 32767).astype(np.int16)


# ------------------------------------------------------------------------------------ sip


@pytest.mark.parametrize("kind", list(SIP_MESSAGES))
def test_sip_parse(benchmark: Benchmark, kind: str) -> None:
    benchmark.group = "sip"
    _info(benchmark, 1, "message")
    data = SIP_MESSAGES[kind]
    message = benchmark(parse_message, data)
    assert isinstance(message, Response if kind == "200" else Request)
    assert message.call_id == "1-4711@127.0.0.1"


def test_sip_parse_call_flow(benchmark: Benchmark) -> None:
    """INVITE, 200, ACK and BYE of a new call per round (own Call-ID, tags, branches), so a
    parser that caches per-value work is measured at a realistic hit rate, not at 100 %.
    Includes about 2 µs per round of formatting the four messages."""
    benchmark.group = "sip"
    _info(benchmark, 4, "message")
    calls = itertools.count(1)

    def parse_call() -> list[Request | Response]:
        return [parse_message(m) for m in call_flow(next(calls))]

    messages = benchmark(parse_call)
    assert [m.cseq[1] for m in messages] == ["INVITE", "INVITE", "ACK", "BYE"]
    assert len({m.call_id for m in messages}) == 1


@pytest.mark.parametrize("kind", list(SIP_MESSAGES))
def test_sip_serialize(benchmark: Benchmark, kind: str) -> None:
    benchmark.group = "sip"
    _info(benchmark, 1, "message")
    message = parse_message(SIP_MESSAGES[kind])
    wire = benchmark(message.to_bytes)
    assert parse_message(wire).headers.get("CSeq") == message.headers.get("CSeq")


# --------------------------------------------------------------------------------- digest


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_digest_verify(benchmark: Benchmark, algorithm: str) -> None:
    """A REGISTER's Authorization with qop=auth, accepted (the success path, replay table
    update included). Each round needs a fresh nonce count, so the credentials are built in
    pedantic's untimed setup."""
    benchmark.group = "digest"
    _info(benchmark, 1, "verify")
    server = DigestServer("bench.example", b"k" * 32, algorithms=(algorithm,))
    now = 1000.0
    challenge = server.challenges(now)[0]
    counter = itertools.count(1)

    def password_for(user: str) -> str | None:
        return "secret" if user == "alice" else None

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        value = DigestClient.answer(
            challenge, method="REGISTER", uri="sip:bench.example", username="alice",
            password="secret", cnonce="0a4f113b", nc=next(counter),
        )
        return (value, "REGISTER", password_for, now + 1.0), {}

    result = benchmark.pedantic(server.verify, setup=setup, rounds=2000, warmup_rounds=50)
    assert result.ok, result.reason


# ------------------------------------------------------------------------------------ rtp

_PACKET = build_rtp(
    RtpHeader(payload_type=0, sequence=4711, timestamp=160 * 4711, ssrc=0x1234ABCD),
    bytes(range(256))[:FRAME],
)


def test_rtp_parse(benchmark: Benchmark) -> None:
    benchmark.group = "rtp"
    _info(benchmark, 1, "packet")
    header = benchmark(parse_rtp, _PACKET)
    assert header.sequence == 4711 and header.header_length == 12


def test_rtp_header_length(benchmark: Benchmark) -> None:
    """The allocation-free validity check the relay runs on packets with P/X/CC bits."""
    benchmark.group = "rtp"
    _info(benchmark, 1, "packet")
    assert benchmark(rtp_header_length, _PACKET) == 12


def test_rtp_build(benchmark: Benchmark) -> None:
    benchmark.group = "rtp"
    _info(benchmark, 1, "packet")
    header = RtpHeader(payload_type=8, sequence=1, timestamp=160, ssrc=0xCAFE, marker=True)
    payload = bytes(FRAME)
    packet = benchmark(build_rtp, header, payload)
    assert len(packet) == 12 + FRAME and packet[1] == 0x88


def test_rtp_rewrite_fields(benchmark: Benchmark) -> None:
    """Copy a packet and rewrite sequence, timestamp and SSRC with the media.rtp setters."""
    benchmark.group = "rtp"
    _info(benchmark, 1, "packet")

    def rewrite(data: bytes) -> bytearray:
        out = bytearray(data)
        set_sequence(out, 1)
        set_timestamp(out, 2)
        set_ssrc(out, 3)
        return out

    out = benchmark(rewrite, _PACKET)
    assert parse_rtp(out).ssrc == 3 and out[12:] == _PACKET[12:]


class _SinkTransport:
    """Stands in for the peer's asyncio datagram transport: counts instead of sending, so the
    figure is the relay's own Python cost (no syscall)."""

    def __init__(self) -> None:
        self.sent = 0
        self.last: bytes | bytearray = b""

    def sendto(self, data: bytes | bytearray, addr: Any = None) -> None:
        self.sent += 1
        self.last = data


_CALLER = ("127.0.0.1", 40000)
_CALLEE = ("127.0.0.1", 40002)


def _bridge(a_codecs: list[Codec], b_codecs: list[Codec]) -> tuple[RtpEndpoint, _SinkTransport]:
    """Two bridged endpoints without sockets; returns the caller-side endpoint (feed it) and
    the callee side's transport (where the relayed packets land)."""
    engine = MediaEngine("127.0.0.1", 46000, 46010)
    a = RtpEndpoint(engine, 46000, False)
    b = RtpEndpoint(engine, 46002, False)
    sink = _SinkTransport()
    a._rtp_transport = _SinkTransport()  # type: ignore[assignment]
    b._rtp_transport = sink  # type: ignore[assignment]
    a.set_remote(_CALLER, a_codecs)
    b.set_remote(_CALLEE, b_codecs)
    engine.bridge(a, b)
    return a, sink


def _relay_packets(pt: int) -> Iterator[bytes]:
    """An endless stream of distinct packets (sequence/timestamp advance) from 8 prebuilt."""
    packets = [
        build_rtp(
            RtpHeader(payload_type=pt, sequence=s, timestamp=160 * s, ssrc=0x51), bytes(FRAME)
        )
        for s in range(8)
    ]
    return itertools.cycle(packets)


@pytest.mark.parametrize(
    "case", ["passthrough", "pt-rewrite", "transcode", "restamp"],
)
def test_relay_datagram(benchmark: Benchmark, case: str) -> None:
    """RtpEndpoint.datagram_received: source check, header check, optional PT rewrite
    (telephone-event 101 -> 96), PCMU -> PCMA transcoding, or re-stamping into the stream the
    switch already injected into (after a prompt)."""
    benchmark.group = "rtp"
    _info(benchmark, 1, "packet")
    if case == "passthrough":
        a, sink = _bridge([PCMU, TE_101], [PCMU, TE_101])
        pt = 0
    elif case == "pt-rewrite":
        a, sink = _bridge([PCMU, TE_101], [PCMU, TE_96])
        pt = 101
    elif case == "transcode":
        a, sink = _bridge([PCMU], [PCMA])
        pt = 0
    else:
        a, sink = _bridge([PCMU], [PCMU])
        peer = a.peer
        assert peer is not None
        assert peer.send_rtp(next(_relay_packets(0)))  # switch-originated: starts re-stamping
        pt = 0
    packets = _relay_packets(pt)
    receive = a.datagram_received

    def relay() -> None:
        receive(next(packets), _CALLER)

    before = sink.sent
    benchmark(relay)
    assert sink.sent > before
    out = bytes(sink.last)
    want_pt = {"passthrough": 0, "pt-rewrite": 96, "transcode": 8, "restamp": 0}[case]
    assert out[1] & 0x7F == want_pt
    assert a.dropped_malformed == a.dropped_wrong_source == 0


@pytest.mark.parametrize("case", ["inband-pcmu", "te-leg-audio"])
def test_relay_with_legmedia(benchmark: Benchmark, case: str) -> None:
    """The relay with the switch's per-leg hook (switch.legmedia.LegMedia) installed, as on a
    real call: ``inband-pcmu`` is a leg without telephone-event, so every audio packet is
    decoded and fed to the in-band DTMF detector; ``te-leg-audio`` negotiated telephone-event,
    so audio packets only pass the hook's PT test."""
    from switch.legmedia import LegMedia

    benchmark.group = "rtp"
    _info(benchmark, 1, "packet")
    codecs = [PCMU] if case == "inband-pcmu" else [PCMU, TE_101]
    a, sink = _bridge(codecs, codecs)
    loop = asyncio.new_event_loop()
    try:
        async def attach() -> LegMedia:
            return LegMedia(a, codecs, lambda event: None)

        leg = loop.run_until_complete(attach())
        assert (leg.inband is not None) == (case == "inband-pcmu")
        speech = ulaw_encode(_speech_like(FRAME * 8))
        packets = itertools.cycle([
            build_rtp(RtpHeader(payload_type=0, sequence=s, timestamp=160 * s, ssrc=0x52),
                      speech[s * FRAME : (s + 1) * FRAME])
            for s in range(8)
        ])
        receive = a.datagram_received

        def relay() -> None:
            receive(next(packets), _CALLER)

        before = sink.sent
        benchmark(relay)
        assert sink.sent > before
    finally:
        loop.close()


# ----------------------------------------------------------------------------------- g711

_SPEECH_FRAME = _speech_like(FRAME)
_ULAW_FRAME = ulaw_encode(_SPEECH_FRAME)
_ALAW_FRAME = alaw_encode(_SPEECH_FRAME)


@pytest.mark.parametrize("law", ["ulaw", "alaw"])
def test_g711_encode(benchmark: Benchmark, law: str) -> None:
    benchmark.group = "g711"
    _info(benchmark, FRAME, "sample")
    encode = ulaw_encode if law == "ulaw" else alaw_encode
    out = benchmark(encode, _SPEECH_FRAME)
    assert len(out) == FRAME


@pytest.mark.parametrize("law", ["ulaw", "alaw"])
def test_g711_decode(benchmark: Benchmark, law: str) -> None:
    benchmark.group = "g711"
    _info(benchmark, FRAME, "sample")
    decode = ulaw_decode if law == "ulaw" else alaw_decode
    out = benchmark(decode, _ULAW_FRAME if law == "ulaw" else _ALAW_FRAME)
    # G.711 is lossy, but never by more than half its largest step (about 1/16 of the level)
    assert out.shape == (FRAME,) and int(np.max(np.abs(out - _SPEECH_FRAME))) < 1100


def test_g711_ulaw_to_alaw(benchmark: Benchmark) -> None:
    """The relay's PCMU -> PCMA byte translation of one frame."""
    benchmark.group = "g711"
    _info(benchmark, FRAME, "sample")
    out = benchmark(ulaw_to_alaw, _ULAW_FRAME)
    assert len(out) == FRAME


# ----------------------------------------------------------------------------------- dtmf


def test_goertzel_reference(benchmark: Benchmark) -> None:
    """The pure-Python reference recurrence over one 20 ms frame at one frequency (the
    detectors use the vectorised form below; this is the baseline it replaced)."""
    benchmark.group = "dtmf"
    _info(benchmark, FRAME, "sample")
    tone = inband_tone("5", 20.0)
    power = benchmark(goertzel_power, tone, 770.0)
    assert power > 100 * goertzel_power(tone, 941.0)


def _clock() -> Callable[[], float]:
    ticks = itertools.count(1)
    return lambda: next(ticks) * 0.02


@pytest.mark.parametrize("signal", ["speech", "tone"])
def test_inband_detector_feed(benchmark: Benchmark, signal: str) -> None:
    """One channel, one 20 ms frame per call: ``speech`` exercises the no-digit path, ``tone``
    a digit held down (the per-window state machine runs)."""
    benchmark.group = "dtmf"
    _info(benchmark, 1, "channel-frame")
    source = _speech_like(FRAME * 50) if signal == "speech" else inband_tone("7", 1000.0)
    frames = itertools.cycle([source[i : i + FRAME] for i in range(0, len(source), FRAME)])
    detector = InbandDetector()
    clock = _clock()

    def feed() -> None:
        detector.feed(next(frames), clock())

    benchmark(feed)
    active = detector.active
    if signal == "tone":
        # under --benchmark-disable there was one frame only: too short to confirm a press
        assert active is None or active[0] == "7"
    else:
        assert active is None


@pytest.mark.parametrize("channels", [1, 100, 500])
def test_inband_bank_process(benchmark: Benchmark, channels: int) -> None:
    """The vectorised bank: one 20 ms frame for each of ``channels`` channels per call (the
    shape a media loop would use); a tenth of the channels carry a digit."""
    benchmark.group = "dtmf"
    _info(benchmark, channels, "channel-frame")
    bank = InbandDetectorBank(channels)
    speech = _speech_like(FRAME * channels, seed=channels).reshape(channels, FRAME)
    tone = inband_tone("3", 20.0)
    frames = speech.copy()
    frames[:: 10] = tone
    clock = _clock()

    def process() -> list[list[Any]]:
        return bank.process(frames, clock())

    events = benchmark(process)
    assert len(events) == channels
    assert math.isfinite(float(np.sum(frames)))


# ------------------------------------------------------------------------------------ sdp


def test_sdp_parse(benchmark: Benchmark) -> None:
    benchmark.group = "sdp"
    _info(benchmark, 1, "body")
    sdp = benchmark(SessionDescription.parse, SDP_OFFER)
    assert [c for c in sdp.media[0].formats] == ["0", "8", "101"]


def test_sdp_build_offer(benchmark: Benchmark) -> None:
    benchmark.group = "sdp"
    _info(benchmark, 1, "body")

    def build() -> bytes:
        return build_offer("127.0.0.2", 46000, [PCMU, PCMA, TE_101], session_id=4242).to_bytes()

    body = benchmark(build)
    assert b"m=audio 46000 RTP/AVP 0 8 101\r\n" in body


def test_sdp_answer(benchmark: Benchmark) -> None:
    """What the switch does with an offer: parse, negotiate against its codecs, build and
    serialise the answer."""
    benchmark.group = "sdp"
    _info(benchmark, 1, "body")

    def answer() -> bytes:
        offer = SessionDescription.parse(SDP_OFFER)
        chosen = negotiate(offer, ("PCMA", "PCMU", "telephone-event"))
        return build_answer(offer, "127.0.0.2", 46000, chosen, session_id=4242).to_bytes()

    body = benchmark(answer)
    assert b"m=audio 46000 RTP/AVP" in body
