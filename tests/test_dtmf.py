"""DTMF over RFC 4733, SIP INFO and in-band audio, and the merger (media/dtmf.py).

Times are virtual: every ``now`` is computed by the test, nothing reads a clock.
"""

from __future__ import annotations

import random
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from media.dtmf import (
    DBM0_PEAK,
    DEFAULT_INFO_DURATION_MS,
    DIGIT_FREQUENCIES,
    DIGITS,
    DtmfEvent,
    DtmfMerger,
    InbandDetector,
    InbandDetectorBank,
    InbandParams,
    Rfc4733Packet,
    Rfc4733Receiver,
    Rfc4733Sender,
    TelephoneEvent,
    build_telephone_event,
    digit_to_event,
    event_to_digit,
    goertzel_power,
    inband_tone,
    info_event,
    parse_sip_info,
    parse_telephone_event,
    parse_telephone_events,
)
from media.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode

Int16Array = npt.NDArray[np.int16]
RATE = 8000


# =============================================================================== RFC 4733


class TestPayload:
    def test_build_known_octets(self) -> None:
        # RFC 4733 section 2.3: event 5, E=1, R=0, volume 10, duration 800 (100 ms)
        assert build_telephone_event("5", end=True, volume=10, duration=800) == bytes(
            (5, 0x8A, 0x03, 0x20)
        )
        assert build_telephone_event(11, volume=63, duration=0xFFFF) == bytes((11, 63, 255, 255))

    def test_parse_fields(self) -> None:
        ev = parse_telephone_event(bytes((10, 0xC0 | 25, 0x12, 0x34)))
        assert ev == TelephoneEvent(event=10, end=True, volume=25, duration=0x1234, reserved=True)

    def test_several_blocks(self) -> None:
        payload = build_telephone_event("1", end=True, duration=400) + build_telephone_event(
            "2", duration=160
        )
        events = parse_telephone_events(payload)
        assert [(e.event, e.end, e.duration) for e in events] == [(1, True, 400), (2, False, 160)]

    @pytest.mark.parametrize("size", [0, 1, 2, 3, 5, 6, 7, 9])
    def test_bad_length(self, size: int) -> None:
        with pytest.raises(ValueError):
            parse_telephone_events(bytes(size))

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"event": 256},
            {"event": -1},
            {"event": "X"},
            {"event": "5", "volume": 64},
            {"event": "5", "volume": -1},
            {"event": "5", "duration": 0x10000},
            {"event": "5", "duration": -1},
        ],
    )
    def test_build_rejects(self, kwargs: dict[str, object]) -> None:
        event = kwargs.pop("event")
        with pytest.raises(ValueError):
            build_telephone_event(event, **kwargs)  # type: ignore[arg-type]

    def test_codes(self) -> None:
        assert [event_to_digit(i) for i in range(16)] == list(DIGITS)
        assert event_to_digit(16) is None and event_to_digit(-1) is None
        assert digit_to_event("*") == 10 and digit_to_event("#") == 11
        assert digit_to_event("a") == 12 and digit_to_event("D") == 15
        for bad in ("", "E", "55", " "):
            with pytest.raises(ValueError):
                digit_to_event(bad)

    @given(st.binary(max_size=40))
    def test_random_bytes_parse_or_value_error(self, data: bytes) -> None:
        try:
            events = parse_telephone_events(data)
        except ValueError:
            assert len(data) < 4 or len(data) % 4
            return
        assert len(events) == len(data) // 4
        for ev in events:
            assert 0 <= ev.event <= 255 and 0 <= ev.volume <= 63 and 0 <= ev.duration <= 0xFFFF
            rebuilt = build_telephone_event(
                ev.event, end=ev.end, volume=ev.volume, duration=ev.duration
            )
            assert rebuilt[0] == ev.event and rebuilt[2:] == build_telephone_event(
                ev.event, duration=ev.duration
            )[2:]

    @given(
        st.integers(0, 255), st.booleans(), st.integers(0, 63), st.integers(0, 0xFFFF)
    )
    def test_round_trip(self, code: int, end: bool, volume: int, duration: int) -> None:
        payload = build_telephone_event(code, end=end, volume=volume, duration=duration)
        assert parse_telephone_event(payload) == TelephoneEvent(code, end, volume, duration)


# -- helpers for driving a receiver ----------------------------------------------------------


@dataclass
class Arrival:
    """One packet as it reaches the receiver."""

    packet: Rfc4733Packet
    seq: int
    at: float


def train(
    digits: str,
    *,
    duration_ms: float = 100,
    gap_ms: float = 100,
    t0: float = 10.0,
    ts0: int = 12345,
    sender: Rfc4733Sender | None = None,
) -> list[Arrival]:
    """The packets of ``digits`` pressed one after the other, in sending order, no jitter."""
    sender = sender or Rfc4733Sender()
    out: list[Arrival] = []
    start_ms = 0.0
    for digit in digits:
        ts = (ts0 + round(start_ms * RATE / 1000)) & 0xFFFFFFFF
        for packet in sender.packets(digit, duration_ms, ts):
            out.append(Arrival(packet, len(out), t0 + (start_ms + packet.offset_ms) / 1000))
        start_ms += duration_ms + gap_ms
    return out


def deliver(
    receiver: Rfc4733Receiver, arrivals: Sequence[Arrival], *, poll: bool = True
) -> list[DtmfEvent]:
    """Feed arrivals in order, polling like a timer would; flush at the end."""
    events: list[DtmfEvent] = []
    last = 0.0
    for a in arrivals:
        if poll:
            events += receiver.poll(a.at)
        p = a.packet
        events += receiver.feed(
            p.payload, timestamp=p.timestamp, sequence=a.seq, marker=p.marker, now=a.at
        )
        last = a.at
    events += receiver.poll(last + 5.0)
    events += receiver.flush(last + 5.0)
    return events


def digits_of(events: Sequence[DtmfEvent]) -> str:
    return "".join(e.digit for e in events)


class TestReceiver:
    def test_clean_press(self) -> None:
        events = deliver(Rfc4733Receiver(), train("5"))
        assert len(events) == 1
        ev = events[0]
        assert (ev.digit, ev.duration_ms, ev.transport, ev.level_dbm0) == ("5", 100, "rfc4733", -10)
        assert ev.start == pytest.approx(10.0)
        assert ev.end == pytest.approx(10.1)
        assert ev.time == pytest.approx(10.1)  # produced by the first end packet

    def test_triple_end_packets_are_one_event(self) -> None:
        receiver = Rfc4733Receiver()
        arrivals = train("7")
        ends = [a for a in arrivals if a.packet.is_end]
        assert len(ends) == 3
        events = deliver(receiver, arrivals)
        assert digits_of(events) == "7"
        assert receiver.duplicates == 2

    def test_every_packet_duplicated(self) -> None:
        arrivals = [a for a in train("0123") for _ in range(2)]
        assert digits_of(deliver(Rfc4733Receiver(), arrivals)) == "0123"

    def test_reordered_within_press(self) -> None:
        arrivals = train("9", duration_ms=200)
        presses = list(reversed(arrivals))  # end packets first, then the updates backwards
        for a, b in zip(arrivals, presses, strict=True):
            b.at = a.at
        receiver = Rfc4733Receiver()
        events = deliver(receiver, presses)
        assert digits_of(events) == "9"
        assert events[0].duration_ms == 200
        assert receiver.out_of_order > 0

    def test_lost_first_packet(self) -> None:
        arrivals = train("3")
        assert arrivals[0].packet.marker
        events = deliver(Rfc4733Receiver(), arrivals[1:])
        assert digits_of(events) == "3"
        # start recovered from now - duration of the first packet seen
        assert events[0].start == pytest.approx(10.0)
        assert events[0].duration_ms == 100

    def test_lost_end_packets_end_by_timeout(self) -> None:
        receiver = Rfc4733Receiver()
        arrivals = [a for a in train("8") if not a.packet.is_end]
        out: list[DtmfEvent] = []
        for a in arrivals:
            p = a.packet
            out += receiver.feed(
                p.payload, timestamp=p.timestamp, sequence=a.seq, marker=p.marker, now=a.at
            )
        assert out == []
        last = arrivals[-1].at
        deadline = receiver.next_deadline()
        assert deadline == pytest.approx(last + 0.2)
        assert receiver.poll(deadline - 0.01) == []
        assert receiver.active == ("8", pytest.approx(10.0))
        events = receiver.poll(deadline)
        assert digits_of(events) == "8"
        assert events[0].duration_ms == 80  # the last update seen
        assert receiver.next_deadline() is None and receiver.active is None

    def test_timeout_follows_slow_updates(self) -> None:
        # updates every 100 ms: the timeout is 3 intervals, not the 200 ms floor
        receiver = Rfc4733Receiver()
        arrivals = [
            a
            for a in train("2", duration_ms=500, sender=Rfc4733Sender(interval_ms=100))
            if not a.packet.is_end
        ]
        deliver_no_flush = [
            receiver.feed(
                a.packet.payload,
                timestamp=a.packet.timestamp,
                sequence=a.seq,
                marker=a.packet.marker,
                now=a.at,
            )
            for a in arrivals
        ]
        assert not any(deliver_no_flush)
        assert receiver.next_deadline() == pytest.approx(arrivals[-1].at + 0.3)

    def test_lost_end_packets_then_next_press(self) -> None:
        arrivals = [a for a in train("45") if not (a.packet.is_end and a.packet.payload[0] == 4)]
        receiver = Rfc4733Receiver()
        events: list[DtmfEvent] = []
        for a in arrivals:  # no polling: the second press ends the first
            p = a.packet
            got = receiver.feed(
                p.payload, timestamp=p.timestamp, sequence=a.seq, marker=p.marker, now=a.at
            )
            if got and got[0].digit == "4":
                assert p.payload[0] == 5  # reported when the "5" started
            events += got
        assert digits_of(events) == "45"

    def test_late_packets_of_a_reported_press_are_duplicates(self) -> None:
        arrivals = train("12")
        # the first press's last end packet arrives after the second press has ended
        late = arrivals.pop(6)
        assert late.packet.is_end and late.packet.payload[0] == 1
        late.at = arrivals[-1].at + 0.01
        arrivals.append(late)
        receiver = Rfc4733Receiver()
        assert digits_of(deliver(receiver, arrivals)) == "12"
        assert receiver.duplicates >= 3

    def test_whole_press_arriving_late_is_dropped_not_misordered(self) -> None:
        arrivals = train("12")
        first = [a for a in arrivals if a.packet.payload[0] == 1]
        second = [a for a in arrivals if a.packet.payload[0] == 2]
        receiver = Rfc4733Receiver()
        events = deliver(receiver, second + first)
        assert digits_of(events) == "2"
        assert receiver.late == len(first)

    def test_same_digit_twice(self) -> None:
        events = deliver(Rfc4733Receiver(), train("5555", gap_ms=50))
        assert digits_of(events) == "5555"
        assert [e.duration_ms for e in events] == [100] * 4

    def test_volume(self) -> None:
        sender = Rfc4733Sender(volume=27)
        events = deliver(Rfc4733Receiver(), train("#", sender=sender))
        assert events[0].level_dbm0 == -27
        assert parse_telephone_event(train("#", sender=sender)[0].packet.payload).volume == 27

    @pytest.mark.parametrize("ts0", [1000, 0xFFFFFF00])  # also across the timestamp wrap
    def test_long_event_segments_are_one_press(self, ts0: int) -> None:
        arrivals = train("*", duration_ms=20_000, ts0=ts0)
        timestamps = sorted({a.packet.timestamp for a in arrivals})
        assert len(timestamps) == 3  # 65535-unit segments
        events = deliver(Rfc4733Receiver(), arrivals)
        assert digits_of(events) == "*"
        assert events[0].duration_ms == 20_000

    def test_long_event_with_segment_ends_lost(self) -> None:
        arrivals = train("0", duration_ms=20_000)
        final = 0xFFFF.to_bytes(2, "big")
        kept = [a for a in arrivals if a.packet.payload[2:] != final]
        assert len(kept) < len(arrivals)
        events = deliver(Rfc4733Receiver(), kept)
        assert digits_of(events) == "0"
        assert events[0].duration_ms == 20_000

    def test_multiple_events_in_one_packet(self) -> None:
        # RFC 4733 section 2.5.1.5: "1" (ended, 400 units) then "2" starting right after it
        receiver = Rfc4733Receiver()
        payload = build_telephone_event("1", end=True, duration=400) + build_telephone_event(
            "2", duration=160
        )
        events = receiver.feed(payload, timestamp=8000, sequence=1, marker=True, now=1.0)
        assert digits_of(events) == "1"
        end2 = build_telephone_event("2", end=True, duration=480)
        events = receiver.feed(end2, timestamp=8400, sequence=2, marker=False, now=1.04)
        assert digits_of(events) == "2" and events[0].duration_ms == 60

    def test_non_dtmf_events_and_garbage(self) -> None:
        receiver = Rfc4733Receiver()
        flash = build_telephone_event(16, end=True, duration=800)
        assert receiver.feed(flash, timestamp=1, sequence=1, marker=True, now=0.0) == []
        assert receiver.feed(b"\x01\x02", timestamp=2, sequence=2, marker=False, now=0.0) == []
        assert (receiver.ignored, receiver.malformed) == (1, 1)

    def test_ssrc_change_resets(self) -> None:
        receiver = Rfc4733Receiver()
        first = train("1", ts0=50_000)
        second = train("1", ts0=50_000, t0=20.0)  # a new stream reusing the timestamps
        out: list[DtmfEvent] = []
        for ssrc, arrivals in ((1, first), (2, second)):
            for a in arrivals:
                p = a.packet
                out += receiver.feed(
                    p.payload,
                    timestamp=p.timestamp,
                    sequence=a.seq,
                    marker=p.marker,
                    now=a.at,
                    ssrc=ssrc,
                )
        assert digits_of(out) == "11"

    def test_clock_rate(self) -> None:
        sender = Rfc4733Sender(clock_rate=16000)
        receiver = Rfc4733Receiver(clock_rate=16000)
        events = deliver(receiver, train("6", duration_ms=120, sender=sender))
        assert events[0].duration_ms == 120

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        digits=st.text(alphabet=DIGITS, min_size=1, max_size=8),
        durations=st.lists(st.integers(40, 400), min_size=8, max_size=8),
        gaps=st.lists(st.integers(60, 300), min_size=8, max_size=8),
        interval=st.sampled_from([10, 20, 30, 50]),
        seed=st.integers(0, 2**32 - 1),
        loss=st.floats(0.0, 0.6),
        dup=st.floats(0.0, 0.5),
        jitter_ms=st.floats(0.0, 50.0),
    )
    def test_impaired_streams_give_exact_digits(
        self,
        digits: str,
        durations: list[int],
        gaps: list[int],
        interval: int,
        seed: int,
        loss: float,
        dup: float,
        jitter_ms: float,
    ) -> None:
        """Random loss (never a whole press), duplication and reordering by network jitter
        (less than the pause between presses): the digit string comes out exactly."""
        rng = random.Random(seed)
        sender = Rfc4733Sender(interval_ms=interval)
        sent: list[tuple[float, Rfc4733Packet]] = []
        t = 0.0
        ts = rng.randrange(2**32)
        for i, digit in enumerate(digits):
            packets = sender.packets(digit, durations[i], (ts + round(t * RATE)) & 0xFFFFFFFF)
            keep = [p for p in packets if rng.random() >= loss] or [rng.choice(packets)]
            sent += [(t + p.offset_ms / 1000, p) for p in keep]
            t += (durations[i] + gaps[i]) / 1000
        arrivals = []
        for seq, (when, packet) in enumerate(sent):
            copies = 2 if rng.random() < dup else 1
            for _ in range(copies):
                delay = rng.uniform(0, jitter_ms) / 1000
                arrivals.append(Arrival(packet, seq, 5.0 + when + delay))
        arrivals.sort(key=lambda a: a.at)
        receiver = Rfc4733Receiver()
        assert digits_of(deliver(receiver, arrivals)) == digits


class TestSender:
    def test_packet_train(self) -> None:
        packets = Rfc4733Sender().packets("5", 100, 4242)
        parsed = [parse_telephone_event(p.payload) for p in packets]
        assert [p.marker for p in packets] == [True] + [False] * 6
        assert {p.timestamp for p in packets} == {4242}  # RFC 4733 section 2.5.1.2
        assert [e.duration for e in parsed] == [160, 320, 480, 640, 800, 800, 800]
        assert [e.end for e in parsed] == [False] * 4 + [True] * 3  # section 2.5.1.4
        assert [p.is_end for p in packets] == [e.end for e in parsed]
        assert [p.offset_ms for p in packets] == [20, 40, 60, 80, 100, 120, 140]
        assert all(e.event == 5 and e.volume == 10 and not e.reserved for e in parsed)

    def test_interval_and_odd_duration(self) -> None:
        packets = Rfc4733Sender(interval_ms=50).packets("#", 130, 0)
        durations = [parse_telephone_event(p.payload).duration for p in packets]
        assert durations == [400, 800, 1040, 1040, 1040]
        assert [p.offset_ms for p in packets] == [50, 100, 130, 180, 230]

    def test_short_press_gets_one_interval(self) -> None:
        packets = Rfc4733Sender().packets("1", 5, 0)
        assert [parse_telephone_event(p.payload).duration for p in packets] == [160] * 3

    def test_long_press_segments(self) -> None:
        packets = Rfc4733Sender().packets("D", 20_000, 0xFFFFFFF0)
        segments: dict[int, list[TelephoneEvent]] = {}
        for p in packets:
            segments.setdefault(p.timestamp, []).append(parse_telephone_event(p.payload))
        starts = [(0xFFFFFFF0 + k * 0xFFFF) & 0xFFFFFFFF for k in range(3)]
        assert list(segments) == starts  # RFC 4733 section 2.5.1.3
        for ts in starts[:2]:
            finals = [e for e in segments[ts] if e.duration == 0xFFFF]
            assert len(finals) == 3 and not any(e.end for e in segments[ts])
        last = segments[starts[2]]
        assert [e.duration for e in last if e.end] == [160_000 - 2 * 0xFFFF] * 3
        assert sum(p.marker for p in packets) == 1
        offsets = [p.offset_ms for p in packets]
        assert offsets == sorted(offsets)

    def test_rejects(self) -> None:
        with pytest.raises(ValueError):
            Rfc4733Sender(volume=64)
        with pytest.raises(ValueError):
            Rfc4733Sender(interval_ms=0)
        with pytest.raises(ValueError):
            Rfc4733Sender().packets("E", 100, 0)

    @settings(max_examples=60, deadline=None)
    @given(
        digits=st.text(alphabet=DIGITS + "abcd", min_size=1, max_size=6),
        duration=st.integers(1, 3000),
        interval=st.integers(5, 100),
        volume=st.integers(0, 63),
    )
    def test_round_trip(self, digits: str, duration: int, interval: int, volume: int) -> None:
        sender = Rfc4733Sender(interval_ms=interval, volume=volume)
        events = deliver(
            Rfc4733Receiver(), train(digits, duration_ms=duration, gap_ms=80, sender=sender)
        )
        assert digits_of(events) == digits.upper()
        expected = max(duration, interval)
        assert all(abs(e.duration_ms - expected) <= 1 for e in events)
        assert all(e.level_dbm0 == -volume for e in events)


# =============================================================================== SIP INFO


class TestSipInfo:
    @pytest.mark.parametrize(
        ("ctype", "body", "expected"),
        [
            ("application/dtmf-relay", b"Signal=5\r\nDuration=160\r\n", ("5", 160)),
            ("application/dtmf-relay", b"signal= 9\nduration =200\n", ("9", 200)),
            ("Application/DTMF-Relay; charset=us-ascii", b"SIGNAL=#\r\n", ("#", 250)),
            ("application/dtmf-relay", b"Signal=10\r\nDuration=100", ("*", 100)),
            ("application/dtmf-relay", b"Signal=11\r\nDuration=100", ("#", 100)),
            ("application/dtmf-relay", b"Signal=12\r\nDuration=100", ("A", 100)),
            ("application/dtmf-relay", b"Signal=*\r\nDuration=0\r\n", ("*", 0)),
            ("application/dtmf-relay", b"Signal=d\r\nDuration=90\r\n", ("D", 90)),
            ("application/dtmf-relay", b"Duration=160\r\nSignal=0\r\n", ("0", 160)),
            ("application/dtmf-relay", b"Signal=3\r\nFoo=bar\r\n\r\n", ("3", 250)),
            ("application/dtmf", b"5", ("5", DEFAULT_INFO_DURATION_MS)),
            ("application/dtmf", b"#\r\n", ("#", DEFAULT_INFO_DURATION_MS)),
            ("application/dtmf", b"11", ("#", DEFAULT_INFO_DURATION_MS)),
        ],
    )
    def test_accepts(self, ctype: str, body: bytes, expected: tuple[str, int]) -> None:
        assert parse_sip_info(ctype, body) == expected

    @pytest.mark.parametrize(
        ("ctype", "body"),
        [
            ("text/plain", b"Signal=5\r\nDuration=160\r\n"),
            ("application/sdp", b"v=0\r\n"),
            ("application/dtmf-relay", b""),
            ("application/dtmf-relay", b"Duration=160\r\n"),
            ("application/dtmf-relay", b"Signal=X\r\n"),
            ("application/dtmf-relay", b"Signal=16\r\n"),
            ("application/dtmf-relay", b"Signal=55\r\n"),
            ("application/dtmf-relay", b"Signal=\r\n"),
            ("application/dtmf-relay", b"Signal=5\r\nDuration=abc\r\n"),
            ("application/dtmf-relay", b"Signal=5\r\nDuration=-5\r\n"),
            ("application/dtmf-relay", b"Signal=5\r\nDuration=99999999\r\n"),
            ("application/dtmf-relay", b"Signal=5\r\nSignal=6\r\n"),
            ("application/dtmf-relay", b"Signal 5\r\n"),
            ("application/dtmf-relay", "Signal=5\r\nNote=\u00e7\r\n".encode()),
            ("application/dtmf-relay", b"Signal=5\r\n" + b"x=y\r\n" * 400),
            ("application/dtmf", b""),
            ("application/dtmf", b"55"),
            ("application/dtmf", b"Signal=5"),
        ],
    )
    def test_rejects(self, ctype: str, body: bytes) -> None:
        assert parse_sip_info(ctype, body) is None

    def test_event(self) -> None:
        ev = info_event("application/dtmf-relay", b"Signal=7\r\nDuration=180\r\n", 3.5)
        assert ev == DtmfEvent("7", 180, "info", 3.5, 3.5)
        assert info_event("text/plain", b"7", 1.0) is None

    @given(st.sampled_from(["application/dtmf-relay", "application/dtmf"]), st.binary(max_size=64))
    def test_never_raises(self, ctype: str, body: bytes) -> None:
        result = parse_sip_info(ctype, body)
        assert result is None or (result[0] in DIGITS and result[1] >= 0)


# ================================================================================ in-band


def silence(ms: float) -> Int16Array:
    return np.zeros(round(ms * RATE / 1000), dtype=np.int16)


def detect(signal: Int16Array, *, chunk: int = 160, params: InbandParams | None = None) -> list[
    DtmfEvent
]:
    """Run a detector over ``signal`` (fed in ``chunk``-sample pieces) with 200 ms of
    silence after it; times are sample times from 0."""
    detector = InbandDetector(params)
    audio = np.concatenate((signal, silence(200)))
    events: list[DtmfEvent] = []
    done = 0
    for i in range(0, len(audio), chunk):
        piece = audio[i : i + chunk]
        done += len(piece)
        events += detector.feed(piece, done / RATE)
    return events + detector.flush(done / RATE)


def pressed(digit: str, ms: float = 100, lead_ms: float = 50, **kwargs: float) -> Int16Array:
    return np.concatenate((silence(lead_ms), inband_tone(digit, ms, **kwargs)))  # type: ignore[arg-type]


def add_noise(signal: Int16Array, noise_power: float, rng: np.random.Generator) -> Int16Array:
    noisy = signal + rng.normal(0.0, np.sqrt(noise_power), len(signal))
    return np.clip(np.rint(noisy), -32768, 32767).astype(np.int16)


class TestToneGeneration:
    def test_level_and_frequencies(self) -> None:
        tone = inband_tone("1", 1000, level_dbm0=-3.0, twist_db=6.0).astype(np.float64)
        spectrum = np.abs(np.fft.rfft(tone)) / (len(tone) / 2)  # 1 Hz bins, amplitude
        assert spectrum[697] == pytest.approx(DBM0_PEAK * 10 ** (-3 / 20), rel=1e-3)
        assert spectrum[1209] == pytest.approx(DBM0_PEAK * 10 ** (-9 / 20), rel=1e-3)
        assert DBM0_PEAK == pytest.approx(22657, abs=1)

    def test_offsets_and_clipping(self) -> None:
        tone = inband_tone("5", 1000, freq_offset=0.01).astype(np.float64)
        spectrum = np.abs(np.fft.rfft(tone))
        assert {int(np.argmax(spectrum[:1000])), int(np.argmax(spectrum[1000:])) + 1000} == {
            round(770 * 1.01),
            round(1336 * 1.01),
        }
        loud = inband_tone("5", 50, level_dbm0=3.0)
        assert loud.max() == 32767 and loud.min() == -32768
        assert len(inband_tone("5", 23)) == 184
        with pytest.raises(ValueError):
            inband_tone("E", 50)

    def test_goertzel_matches_dft(self) -> None:
        rng = np.random.default_rng(1)
        x = rng.normal(0, 1000, 160)
        for freq in (697.0, 1633.0, 2 * 941.0):
            dft = np.sum(x * np.exp(-2j * np.pi * freq * np.arange(160) / RATE))
            assert goertzel_power(x, freq) == pytest.approx(abs(dft) ** 2, rel=1e-9)


class TestInbandDetection:
    @pytest.mark.parametrize("level", [-3.0, -10.0, -20.0, -30.0, -36.0])
    def test_every_digit_at_every_level(self, level: float) -> None:
        for digit in DIGITS:
            events = detect(pressed(digit, level_dbm0=level))
            assert digits_of(events) == digit, (digit, level)
            assert events[0].transport == "inband"

    def test_minus_36_dbm0_through_g711(self) -> None:
        for encode, decode in ((ulaw_encode, ulaw_decode), (alaw_encode, alaw_decode)):
            for digit in DIGITS:
                signal = decode(encode(pressed(digit, 60, level_dbm0=-36.0)))
                assert digits_of(detect(signal)) == digit

    def test_too_quiet_is_ignored(self) -> None:
        assert detect(pressed("5", level_dbm0=-50.0)) == []

    def test_measured_timing_and_level(self) -> None:
        for ms in (40, 65, 100, 333):
            lead = 57.3
            events = detect(pressed("4", ms, lead_ms=lead, level_dbm0=-10.0))
            assert len(events) == 1
            ev = events[0]
            start = round(lead * RATE / 1000) / RATE
            assert ev.start == pytest.approx(start, abs=0.002)
            assert ev.duration_ms == pytest.approx(ms, abs=3)
            # two tones of -10 dBm0 make -7 dBm0 together
            assert ev.level_dbm0 == pytest.approx(-7.0, abs=1.0)
            # the end is decided after four 10 ms windows without the tone: 30-40 ms after it
            assert 0.029 <= ev.time - ev.end <= 0.041

    @pytest.mark.parametrize("offset", [0.015, -0.015])
    def test_frequency_deviation_accepted(self, offset: float) -> None:
        for digit in DIGITS:
            for lo, hi in ((offset, offset), (offset, -offset), (offset, 0.0), (0.0, offset)):
                signal = pressed(digit, low_offset=lo, high_offset=hi)
                assert digits_of(detect(signal)) == digit, (digit, lo, hi)

    @pytest.mark.parametrize("offset", [0.035, -0.035])
    def test_frequency_deviation_rejected(self, offset: float) -> None:
        for digit in DIGITS:
            for lo, hi in ((offset, offset), (offset, 0.0), (0.0, offset)):
                assert detect(pressed(digit, low_offset=lo, high_offset=hi)) == [], (digit, lo, hi)

    def test_40_ms_detected_at_every_alignment(self) -> None:
        rng = np.random.default_rng(40)
        for digit in "1#9D":
            for lead in range(80):  # every sample offset within a 10 ms block
                phases = (float(rng.uniform(0, 6.3)), float(rng.uniform(0, 6.3)))
                signal = np.concatenate(
                    (np.zeros(400 + lead, np.int16), inband_tone(digit, 40, phases=phases))
                )
                assert digits_of(detect(signal)) == digit, (digit, lead)

    # the steadiness check alone must hold 23 ms tones off, also with a looser energy ratio
    @pytest.mark.parametrize("params", [None, InbandParams(min_tone_ratio=0.6)])
    def test_23_ms_rejected_at_every_alignment(self, params: InbandParams | None) -> None:
        rng = np.random.default_rng(23)
        for digit in "1#9D":
            for lead in range(80):
                phases = (float(rng.uniform(0, 6.3)), float(rng.uniform(0, 6.3)))
                signal = np.concatenate(
                    (np.zeros(400 + lead, np.int16), inband_tone(digit, 23, phases=phases))
                )
                assert detect(signal, params=params) == [], (digit, lead)

    @pytest.mark.parametrize("twist", [8.0, -4.0])
    def test_twist_accepted(self, twist: float) -> None:
        for digit in DIGITS:
            assert digits_of(detect(pressed(digit, level_dbm0=-10.0, twist_db=twist))) == digit

    @pytest.mark.parametrize("twist", [14.0, -9.0])
    def test_excessive_twist_rejected(self, twist: float) -> None:
        for digit in DIGITS:
            assert detect(pressed(digit, level_dbm0=-6.0, twist_db=twist)) == []

    def test_white_noise_at_15_db_snr(self) -> None:
        rng = np.random.default_rng(15)
        for _ in range(3):
            for digit in DIGITS:
                tone = inband_tone(
                    digit, 80, level_dbm0=-20.0, phases=(rng.uniform(0, 6.3), rng.uniform(0, 6.3))
                )
                power = float(np.mean(tone.astype(np.float64) ** 2))
                signal = add_noise(
                    np.concatenate((silence(100), tone, silence(100))), power / 10**1.5, rng
                )
                assert digits_of(detect(signal)) == digit

    def test_short_interruption_is_bridged_and_pause_separates(self) -> None:
        for lead in range(0, 80, 11):
            tone = inband_tone("7", 80, level_dbm0=-15.0)
            for gap, expected in ((5, "7"), (10, "7"), (40, "77"), (60, "77")):
                signal = np.concatenate((silence(50), np.zeros(lead, np.int16), tone,
                                         silence(gap), tone))
                assert digits_of(detect(signal)) == expected, (lead, gap)

    def test_digit_sequence(self) -> None:
        parts = [np.concatenate((inband_tone(d, 60, -12.0), silence(60))) for d in DIGITS]
        assert digits_of(detect(np.concatenate(parts))) == DIGITS

    def test_block_size_does_not_matter(self) -> None:
        rng = np.random.default_rng(3)
        parts = [np.concatenate((inband_tone(d, 70, -15.0), silence(55))) for d in "159#"]
        signal = add_noise(np.concatenate(parts), 100.0, rng)
        reference = detect(signal, chunk=len(signal) + 2000)
        assert digits_of(reference) == "159#"
        for chunk in (1, 33, 80, 160, 241, 1000):
            events = detect(signal, chunk=chunk)
            assert [(e.digit, e.duration_ms) for e in events] == [
                (e.digit, e.duration_ms) for e in reference
            ]
            assert [e.start for e in events] == pytest.approx([e.start for e in reference])

    def test_detection_latency_under_40_ms(self) -> None:
        for lead in range(0, 160, 7):
            detector = InbandDetector()
            onset = (800 + lead) / RATE
            signal = np.concatenate((np.zeros(800 + lead, np.int16), inband_tone("3", 100)))
            seen = None
            for i in range(0, len(signal), 80):
                detector.feed(signal[i : i + 80], (i + 80) / RATE)
                if detector.active is not None and seen is None:
                    seen = detector.active
            assert seen is not None
            digit, start, detected_at = seen
            assert digit == "3"
            assert 0.0 < detected_at - onset < 0.040
            assert start == pytest.approx(onset, abs=0.002)

    def test_silence_and_noise_give_nothing(self) -> None:
        rng = np.random.default_rng(0)
        assert detect(silence(3000)) == []
        noise = add_noise(silence(20_000), 3000.0**2, rng)
        assert detect(noise) == []

    def test_speech_like_signals_give_nothing(self) -> None:
        assert detect(speech_like(20.0, seed=11)) == []
        assert detect(harmonics_with_vibrato(30.0, seed=12)) == []

    def test_single_tones_and_wrong_pairs_give_nothing(self) -> None:
        t = np.arange(RATE) / RATE
        for freq in (697.0, 941.0, 1209.0, 1633.0, 1000.0):
            tone = (8000 * np.sin(2 * np.pi * freq * t)).astype(np.int16)
            assert detect(tone) == []
        # two low-group tones together
        pair = 5000 * np.sin(2 * np.pi * 697 * t) + 5000 * np.sin(2 * np.pi * 852 * t)
        assert detect(pair.astype(np.int16)) == []
        # a DTMF pair with a strong second harmonic (a distorted tone, or a voice)
        low, high = DIGIT_FREQUENCIES["0"]
        dirty = (
            4000 * np.sin(2 * np.pi * low * t)
            + 4000 * np.sin(2 * np.pi * high * t)
            + 2500 * np.sin(2 * np.pi * 2 * high * t)
        )
        assert detect(dirty.astype(np.int16)) == []

    @pytest.mark.skipif(
        shutil.which("espeak-ng") is None or shutil.which("sox") is None,
        reason="espeak-ng and sox are needed to synthesise speech",
    )
    def test_espeak_speech_gives_nothing(self) -> None:
        texts = {
            "en": "Thank you for calling. Please say or enter your account number, followed "
            "by the pound key. If you know your party's extension, you may dial it at any time.",
            "es": "Gracias por llamar. Por favor, diga o marque su número de cuenta seguido "
            "de la tecla almohadilla. Si conoce la extensión, puede marcarla en cualquier momento.",
            "tr": "Aradığınız için teşekkür ederiz. Lütfen hesap numaranızı söyleyin veya "
            "tuşlayın. Dahili numarayı biliyorsanız istediğiniz zaman tuşlayabilirsiniz.",
        }
        for lang, text in texts.items():
            for voice in (lang, lang + "+f3"):
                audio = espeak(voice, text)
                assert len(audio) > RATE
                assert detect(audio) == [], voice


def espeak(voice: str, text: str) -> Int16Array:
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "--stdout", text], capture_output=True, check=True, timeout=60
    ).stdout
    raw = subprocess.run(
        ["sox", "-t", "wav", "-", "-t", "raw", "-r", "8000", "-c", "1", "-b", "16",
         "-e", "signed-integer", "-", "gain", "-n", "-10"],
        input=wav, capture_output=True, check=True, timeout=60,
    ).stdout
    return np.frombuffer(raw, dtype=np.int16).copy()


def speech_like(seconds: float, seed: int) -> Int16Array:
    """Voiced-speech-like audio: glottal pulses with jitter and vibrato through four formant
    resonators, in syllables of random length, pitch and formants."""
    rng = np.random.default_rng(seed)
    parts: list[npt.NDArray[np.float64]] = []
    total = 0
    while total < seconds * RATE:
        n = int(rng.uniform(0.08, 0.4) * RATE)
        t = np.arange(n) / RATE
        f0 = rng.uniform(85, 280) * (1 + 0.03 * np.sin(2 * np.pi * rng.uniform(4, 7) * t))
        f0 *= 1 + rng.uniform(-0.3, 0.3) * t
        pulses = np.diff(np.floor(np.cumsum(f0) / RATE), prepend=0.0)
        sig = resonate(pulses, 0.0, 0.95)  # glottal roll-off
        for lo, hi, bw in ((250, 900, 80), (800, 2300, 100), (2000, 3000, 150), (3000, 3600, 200)):
            sig = resonate(sig, rng.uniform(lo, hi), np.exp(-np.pi * bw / RATE))
        sig = np.diff(sig, prepend=0.0)  # lip radiation
        sig *= np.hanning(n) * rng.uniform(2000, 12000) / max(1e-9, float(np.abs(sig).max()))
        parts += [sig, np.zeros(int(rng.uniform(0, 0.12) * RATE))]
        total += n
    return np.clip(np.concatenate(parts), -32768, 32767).astype(np.int16)


def resonate(x: npt.NDArray[np.float64], freq: float, r: float) -> npt.NDArray[np.float64]:
    """Two-pole resonator (a one-pole low-pass when freq is 0), direct form, in Python."""
    a1 = 2 * r * np.cos(2 * np.pi * freq / RATE) if freq else r
    a2 = -r * r if freq else 0.0
    y = np.zeros_like(x)
    y1 = y2 = 0.0
    gain = 1 - r
    for i, v in enumerate(x.tolist()):
        y0 = gain * v + a1 * y1 + a2 * y2
        y[i] = y0
        y1, y2 = y0, y1
    return y


def harmonics_with_vibrato(seconds: float, seed: int) -> Int16Array:
    """Sums of harmonics (1/h roll-off) with vibrato and pitch glides, in syllables."""
    rng = np.random.default_rng(seed)
    parts: list[npt.NDArray[np.float64]] = []
    total = 0
    while total < seconds * RATE:
        n = int(rng.uniform(0.1, 0.5) * RATE)
        t = np.arange(n) / RATE
        f0 = rng.uniform(90, 300) * (1 + 0.05 * np.sin(2 * np.pi * rng.uniform(3, 7) * t))
        phase = 2 * np.pi * np.cumsum(f0) / RATE
        sig = sum(np.sin(h * phase) / h for h in range(1, int(3800 / f0.max()) + 1))
        sig = np.asarray(sig) * np.hanning(n) * rng.uniform(1000, 8000)
        parts += [sig, np.zeros(int(rng.uniform(0, 0.1) * RATE))]
        total += n
    return np.clip(np.concatenate(parts), -32768, 32767).astype(np.int16)


class TestBank:
    def test_matches_single_channel_detectors(self) -> None:
        rng = np.random.default_rng(7)
        channels = 6
        length = RATE  # one second
        audio = np.zeros((channels, length), np.int16)
        for ch in range(channels):
            pos = int(rng.integers(0, 800))
            for digit in rng.choice(list(DIGITS), 3):
                tone = inband_tone(str(digit), float(rng.integers(45, 120)), -15.0)
                audio[ch, pos : pos + len(tone)] = tone
                pos += len(tone) + int(rng.integers(400, 900))
        bank = InbandDetectorBank(channels)
        bank_events: list[list[DtmfEvent]] = [[] for _ in range(channels)]
        for i in range(0, length, 160):
            for ch, evs in enumerate(bank.process(audio[:, i : i + 160], (i + 160) / RATE)):
                bank_events[ch] += evs
        for ch, evs in enumerate(bank.flush(length / RATE)):
            bank_events[ch] += evs
        assert sum(map(len, bank_events)) >= 12
        for ch in range(channels):
            single = InbandDetector()
            expected = single.feed(audio[ch], length / RATE) + single.flush(length / RATE)
            assert [(e.digit, e.duration_ms, e.level_dbm0) for e in bank_events[ch]] == [
                (e.digit, e.duration_ms, e.level_dbm0) for e in expected
            ]
            assert [(e.start, e.time) for e in bank_events[ch]] == [
                (pytest.approx(e.start), pytest.approx(e.time)) for e in expected
            ]

    def test_active_and_reset(self) -> None:
        bank = InbandDetectorBank(3)
        frames = np.zeros((3, 160), np.int16)
        tone = inband_tone("9", 200, -10.0)
        now = 0.0
        for i in range(0, 480, 160):
            frames[1] = tone[i : i + 160]
            now += 0.02
            bank.process(frames, now)
        assert bank.active_digits() == [None, "9", None]
        active = bank.active(1)
        assert active is not None and active[0] == "9"
        bank.reset_channel(1)
        assert bank.active_digits() == [None, None, None]
        with pytest.raises(ValueError):
            bank.process(np.zeros((2, 160), np.int16), now)
        with pytest.raises(ValueError):
            bank.process(np.zeros((3, 100), np.int16), now)


# ================================================================================= merger


def ev(
    digit: str, transport: str, start: float, ms: int = 100, at: float | None = None
) -> DtmfEvent:
    end = start + ms / 1000
    return DtmfEvent(digit, ms, transport, end if at is None else at, start)  # type: ignore[arg-type]


class TestMerger:
    def test_rfc4733_then_inband_same_press(self) -> None:
        merger = DtmfMerger()
        assert merger.push(ev("5", "rfc4733", 1.0), 1.1) == [ev("5", "rfc4733", 1.0)]
        assert merger.push(ev("5", "inband", 1.004, 97, at=1.145), 1.145) == []
        assert merger.suppressed == 1

    def test_inband_first_then_rfc4733(self) -> None:
        merger = DtmfMerger()
        inband = ev("5", "inband", 1.0, 100, at=1.14)
        assert merger.push(inband, 1.14) == [inband]  # no RFC 4733 seen yet: no waiting
        assert merger.push(ev("5", "rfc4733", 1.0, 100, at=1.3), 1.3) == []

    def test_inband_held_and_replaced_once_rfc4733_is_in_use(self) -> None:
        merger = DtmfMerger(hold=0.3)
        merger.push(ev("1", "rfc4733", 0.0), 0.1)
        inband = ev("2", "inband", 1.0, at=1.14)
        assert merger.push(inband, 1.14) == []  # held until 0.3 s after the press ended
        assert merger.next_deadline() == pytest.approx(1.44)
        preferred = ev("2", "rfc4733", 1.0, at=1.2)
        assert merger.push(preferred, 1.2) == [preferred]
        assert merger.poll(2.0) == [] and merger.next_deadline() is None

    def test_held_inband_released_when_rfc4733_does_not_come(self) -> None:
        merger = DtmfMerger(hold=0.3)
        merger.push(ev("1", "rfc4733", 0.0), 0.1)
        inband = ev("2", "inband", 1.0, at=1.14)
        merger.push(inband, 1.14)
        assert merger.poll(1.43) == []
        assert merger.poll(1.44) == [inband]

    def test_order_is_kept(self) -> None:
        merger = DtmfMerger(hold=0.3)
        merger.push(ev("0", "rfc4733", 0.0), 0.1)
        out = merger.push(ev("1", "inband", 1.0, at=1.14), 1.14)  # held
        out += merger.push(ev("2", "rfc4733", 1.2, at=1.3), 1.3)  # the "1" went only in-band
        assert digits_of(out) == "12"

    def test_two_presses_of_the_same_digit_both_ways(self) -> None:
        merger = DtmfMerger()
        out: list[DtmfEvent] = []
        for start in (1.0, 1.16):  # 60 ms pause between them
            out += merger.push(ev("4", "rfc4733", start), start + 0.1)
            out += merger.push(ev("4", "inband", start + 0.003, 95, at=start + 0.14), start + 0.14)
        out += merger.flush(3.0)
        assert digits_of(out) == "44"
        assert {e.transport for e in out} == {"rfc4733"}

    def test_info_and_rfc4733(self) -> None:
        merger = DtmfMerger()
        out = merger.push(ev("9", "info", 1.02, 250, at=1.02), 1.02)
        out += merger.push(ev("9", "rfc4733", 1.0, at=1.1), 1.1)
        out += merger.push(ev("9", "inband", 1.0, at=1.14), 1.14)
        assert digits_of(out) == "9"
        assert merger.suppressed == 2

    def test_held_copies_of_one_press_become_one(self) -> None:
        merger = DtmfMerger()
        merger.push(ev("0", "rfc4733", 0.0), 0.1)
        out = merger.push(ev("3", "inband", 1.0, at=1.14), 1.14)
        out += merger.push(ev("3", "info", 1.02, 250, at=1.02), 1.15)  # replaces the in-band copy
        out += merger.poll(2.0)
        assert [(e.digit, e.transport) for e in out] == [("3", "info")]

    def test_callback(self) -> None:
        seen: list[DtmfEvent] = []
        merger = DtmfMerger(seen.append)
        merger.push(ev("A", "inband", 0.0), 0.14)
        merger.push(ev("A", "rfc4733", 0.0), 0.2)
        assert digits_of(seen) == "A"

    @settings(max_examples=150, deadline=None)
    @given(
        presses=st.lists(
            st.tuples(
                st.sampled_from(DIGITS),
                st.integers(40, 300),  # duration ms
                st.integers(40, 400),  # pause after, ms
                st.sets(st.sampled_from(["rfc4733", "info", "inband"]), min_size=1),
            ),
            min_size=1,
            max_size=10,
        ),
        seed=st.integers(0, 2**32 - 1),
    )
    def test_random_transport_mixes_give_each_press_once(
        self, presses: list[tuple[str, int, int, set[str]]], seed: int
    ) -> None:
        rng = random.Random(seed)
        arrivals: list[tuple[float, DtmfEvent]] = []
        t = 1.0
        for digit, ms, pause, transports in presses:
            for transport in transports:
                if transport == "rfc4733":
                    start, dur = t + rng.uniform(-0.005, 0.005), ms
                    at = t + ms / 1000 + rng.uniform(0, 0.03)
                elif transport == "inband":
                    start, dur = t + rng.uniform(0, 0.003), ms - rng.randint(0, 4)
                    at = t + ms / 1000 + 0.045
                else:  # sent at key-down, with a nominal duration
                    start = at = t + rng.uniform(0.0, 0.02)
                    dur = 250
                arrivals.append((at, DtmfEvent(digit, dur, transport, at, start)))  # type: ignore[arg-type]
            t += (ms + pause) / 1000
        arrivals.sort(key=lambda item: item[0])
        merger = DtmfMerger()
        out: list[DtmfEvent] = []
        for at, event in arrivals:
            out += merger.push(event, at)
        out += merger.poll(t + 10.0)
        assert digits_of(out) == "".join(p[0] for p in presses)
        # once RFC 4733 is known to be in use on the leg, it is the copy kept
        in_use = False
        for (_, _, _, transports), got in zip(presses, out, strict=True):
            if in_use and "rfc4733" in transports:
                assert got.transport == "rfc4733"
            in_use = in_use or "rfc4733" in transports


def test_event_validation() -> None:
    with pytest.raises(ValueError):
        DtmfEvent("E", 100, "inband", 0.0, 0.0)
    with pytest.raises(ValueError):
        DtmfEvent("5", -1, "inband", 0.0, 0.0)
    with pytest.raises(ValueError):
        DtmfEvent("5", 100, "carrier-pigeon", 0.0, 0.0)  # type: ignore[arg-type]
    assert DtmfEvent("5", 250, "info", 2.0, 1.0).end == pytest.approx(1.25)
