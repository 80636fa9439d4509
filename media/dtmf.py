"""DTMF: one pipeline for three transports, sans-IO.

A key press reaches the switch in one (or more) of three ways:

* **RFC 4733 telephone-events** in the RTP stream: :class:`Rfc4733Receiver` turns the packets
  (with their loss, duplication, reordering and segmentation) into exactly one
  :class:`DtmfEvent` per press; :class:`Rfc4733Sender` produces the packets for a press.
* **SIP INFO** bodies (``application/dtmf-relay``, ``application/dtmf``): :func:`parse_sip_info`
  and :func:`info_event`.
* **In-band tones** in the audio: :class:`InbandDetector` (one channel, any block size) and
  :class:`InbandDetectorBank` (many channels, 20 ms frames, vectorised with numpy) run Goertzel
  filters against ITU-T Q.24-style acceptance criteria; :func:`inband_tone` generates tones
  (ITU-T Q.23 frequencies) for legs that did not negotiate telephone-event, and for tests.

:class:`DtmfMerger` takes the events of one leg from all three and emits one stream without
duplicates (a phone that sends RFC 4733 *and* leaves the tones in the audio yields one digit).

Nothing here reads a clock or sleeps: every entry point takes ``now`` (seconds, any monotonic
clock the caller likes) and returns the events it produced.

**Event times.** A :class:`DtmfEvent` describes a *completed* press and is produced once, when
the end of the press is known. ``time`` is when that happened: the ``now`` of the call that
produced it for RFC 4733 and INFO; for in-band audio, the time of the audio sample at which the
end was decided (the end of a 10 ms block, so equal to ``now`` when audio is fed in 10 or 20 ms
frames). ``start`` is the estimated start of the press in the same clock, and
``start + duration_ms / 1000`` its end. A detector's ``active`` view shows a press while it is
still going on (for relaying the start early and for measuring detection latency).

**Levels.** ``dBm0`` is referred to G.711: a sine wave of +3.17 dBm0 just reaches the mu-law
overload point, +-8159 in the 14-bit scale, i.e. +-32636 in the 16-bit linear scale used by
:mod:`media.g711` (ITU-T G.711, section 2 and tables 1a/2a). A 0 dBm0 sine therefore has a peak
of :data:`DBM0_PEAK` = 32636 x 10^(-3.17/20) ~ 22657 (RMS ~ 16021); the A-law reference
(+3.14 dBm0 at +-32768) differs by less than 0.1 dB.

This module never imports :mod:`sip` or :mod:`switch`.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import numpy as np
import numpy.typing as npt

__all__ = [
    "DBM0_PEAK",
    "DEFAULT_INFO_DURATION_MS",
    "DIGITS",
    "DIGIT_FREQUENCIES",
    "HIGH_GROUP_HZ",
    "LOW_GROUP_HZ",
    "TRANSPORTS",
    "DtmfEvent",
    "DtmfMerger",
    "InbandDetector",
    "InbandDetectorBank",
    "InbandParams",
    "Rfc4733Packet",
    "Rfc4733Receiver",
    "Rfc4733Sender",
    "TelephoneEvent",
    "Transport",
    "build_telephone_event",
    "digit_to_event",
    "event_to_digit",
    "goertzel_power",
    "inband_tone",
    "info_event",
    "parse_sip_info",
    "parse_telephone_event",
    "parse_telephone_events",
]

Transport = Literal["rfc4733", "info", "inband"]
#: The three transports, in order of preference (:class:`DtmfMerger` keeps the first).
TRANSPORTS: tuple[Transport, ...] = ("rfc4733", "info", "inband")

#: DTMF digits in RFC 4733 event-code order (section 3.2, table 3): codes 0-9 are the digits,
#: 10 is ``*``, 11 is ``#``, 12-15 are ``A``-``D``. Code 16 (flash) is not a digit.
DIGITS = "0123456789*#ABCD"

#: ITU-T Q.23 low-group ("row") frequencies, Hz.
LOW_GROUP_HZ: tuple[float, ...] = (697.0, 770.0, 852.0, 941.0)
#: ITU-T Q.23 high-group ("column") frequencies, Hz.
HIGH_GROUP_HZ: tuple[float, ...] = (1209.0, 1336.0, 1477.0, 1633.0)
# The keypad, row by row (ITU-T Q.23 figure 1): KEYPAD[4 * row + column].
_KEYPAD = "123A456B789C*0#D"
#: digit -> (low-group Hz, high-group Hz), ITU-T Q.23.
DIGIT_FREQUENCIES: dict[str, tuple[float, float]] = {
    d: (LOW_GROUP_HZ[i // 4], HIGH_GROUP_HZ[i % 4]) for i, d in enumerate(_KEYPAD)
}

_MU_LAW_OVERLOAD = 32636.0  # G.711 mu-law decision value 8159 (14-bit scale) x 4
#: Peak amplitude, in the 16-bit linear scale, of a 0 dBm0 sine (see the module docstring).
DBM0_PEAK = _MU_LAW_OVERLOAD * 10.0 ** (-3.17 / 20.0)

#: Duration given to a SIP INFO digit whose body does not say (``application/dtmf``, or a
#: ``dtmf-relay`` body without ``Duration``).
DEFAULT_INFO_DURATION_MS = 250

Int16Array = npt.NDArray[np.int16]
FloatArray = npt.NDArray[np.floating[Any]]


def event_to_digit(code: int) -> str | None:
    """The digit for an RFC 4733 event code (section 3.2), or None for anything else."""
    return DIGITS[code] if 0 <= code < 16 else None


def digit_to_event(digit: str) -> int:
    """The RFC 4733 event code (section 3.2) for a digit; ValueError for anything else.

    Letters are accepted in either case.
    """
    index = DIGITS.find(digit.upper()) if len(digit) == 1 else -1
    if index < 0:
        raise ValueError(f"not a DTMF digit: {digit!r}")
    return index


# --------------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class DtmfEvent:
    """One completed key press, from whichever transport carried it.

    ``digit`` is one of :data:`DIGITS`; ``duration_ms`` the length of the press (RFC 4733
    duration field, INFO ``Duration``, or the measured tone length); ``transport`` where it came
    from. ``time`` is when the event was produced and ``start`` the estimated start of the press,
    both in the caller's clock (see the module docstring). ``level_dbm0`` is the tone power:
    the RFC 4733 volume field negated, the measured in-band level (both tones together), or
    None when unknown (INFO).
    """

    digit: str
    duration_ms: int
    transport: Transport
    time: float
    start: float
    level_dbm0: float | None = None

    def __post_init__(self) -> None:
        if len(self.digit) != 1 or self.digit not in DIGITS:
            raise ValueError(f"not a DTMF digit: {self.digit!r}")
        if self.transport not in TRANSPORTS:
            raise ValueError(f"unknown DTMF transport {self.transport!r}")
        if self.duration_ms < 0:
            raise ValueError("duration_ms must be >= 0")

    @property
    def end(self) -> float:
        """Estimated end of the press: ``start + duration_ms / 1000``."""
        return self.start + self.duration_ms / 1000.0


# ------------------------------------------------------------------ RFC 4733 payload format

_MASK32 = 0xFFFFFFFF
_MAX_DURATION = 0xFFFF  # RFC 4733 section 2.3.5: 16-bit duration field


class TelephoneEvent(NamedTuple):
    """One 4-octet RFC 4733 event block (section 2.3).

    ``event`` is the code (section 2.3.1), ``end`` the E bit (2.3.2), ``reserved`` the R bit
    (2.3.3, sent as zero, ignored on receipt), ``volume`` the power level as 0..63 meaning
    0..-63 dBm0 (2.3.4), ``duration`` the length so far in RTP timestamp units (2.3.5).
    """

    event: int
    end: bool
    volume: int
    duration: int
    reserved: bool = False


def parse_telephone_events(payload: bytes | bytearray | memoryview) -> list[TelephoneEvent]:
    """Parse every 4-octet event block of an RFC 4733 payload.

    Normally there is one block; RFC 4733 section 2.5.1.5 lets a sender pack several
    consecutive events into one packet. ValueError if the payload is shorter than 4 octets or
    not a whole number of blocks (RTP padding must already be removed, RFC 3550 section 5.1).
    """
    data = bytes(payload)
    n = len(data)
    if n < 4:
        raise ValueError(f"telephone-event payload too short ({n} octets, need 4)")
    if n % 4:
        raise ValueError(f"telephone-event payload of {n} octets is not a multiple of 4")
    out = []
    for i in range(0, n, 4):
        b1 = data[i + 1]
        out.append(
            TelephoneEvent(
                event=data[i],
                end=bool(b1 & 0x80),
                volume=b1 & 0x3F,
                duration=(data[i + 2] << 8) | data[i + 3],
                reserved=bool(b1 & 0x40),
            )
        )
    return out


def parse_telephone_event(payload: bytes | bytearray | memoryview) -> TelephoneEvent:
    """Parse the first (usually only) event block; see :func:`parse_telephone_events`."""
    return parse_telephone_events(payload)[0]


def build_telephone_event(
    event: int | str, *, end: bool = False, volume: int = 10, duration: int = 0
) -> bytes:
    """Serialise one RFC 4733 event block (section 2.3), R bit zero.

    ``event`` is a code 0..255 or a DTMF digit. ValueError for a volume outside 0..63 or a
    duration outside 0..0xFFFF.
    """
    code = digit_to_event(event) if isinstance(event, str) else event
    if not 0 <= code <= 255:
        raise ValueError("event code must be 0..255")
    if not 0 <= volume <= 63:
        raise ValueError("volume must be 0..63 (0 to -63 dBm0)")
    if not 0 <= duration <= _MAX_DURATION:
        raise ValueError("duration must be 0..65535 timestamp units")
    return bytes((code, (0x80 if end else 0) | volume, duration >> 8, duration & 0xFF))


def _ts_before(a: int, b: int) -> bool:
    """RTP timestamp ``a`` is earlier than ``b`` in modulo-2^32 serial arithmetic."""
    return a != b and ((b - a) & _MASK32) < 0x80000000


# ----------------------------------------------------------------------- RFC 4733 receiver


@dataclass(slots=True)
class _Press:
    code: int
    first_ts: int  # timestamp of the first segment: the start of the event
    seg_ts: int  # timestamp of the current segment (RFC 4733 section 2.5.1.3)
    done_units: int  # length of the completed segments
    seg_units: int  # longest duration seen in the current segment
    start: float
    last_update: float
    volume: int
    step_units: int = 0  # smallest duration increment seen: the sender's update interval
    keys: list[tuple[int, int]] = field(default_factory=list)


class Rfc4733Receiver:
    """RFC 4733 telephone-event receiver: packets in, one :class:`DtmfEvent` per press out.

    Receiver rules (RFC 4733 section 2.5.2, with the reliability reasoning of section 2.6):

    * An event is identified by its RTP timestamp, the time it began (section 2.5.1.1), so the
      marker bit is not needed: when the first packet is lost the event is still recognised
      from any later one. The start time is estimated from the earliest ``now - duration``.
    * Repeated packets (the final packet is sent three times, section 2.5.1.4) and packets
      arriving after their event was reported are dropped: finished ``(timestamp, event)``
      keys are remembered (the last ``history`` of them).
    * A press ends at the first packet with the E bit (its duration is final), when a packet of
      a *later* event arrives (its end packets were lost or are still on the way), or, from
      :meth:`poll`, when nothing has been heard of it for ``max(timeout, 3 x the sender's update
      interval)`` (default ``timeout`` 0.2 s; the update interval is the smallest increase of
      the duration field seen in the event). A press reported early keeps its key, so its late
      packets are still recognised as duplicates.
    * Long events (section 2.5.1.3 and 2.5.2.3): when the duration would overflow 0xFFFF the
      sender starts a new segment with a new timestamp and sets E only in the last one. A new
      timestamp for the same event code, arriving while the previous segment is open, less than
      0xFFFF + 1 s after its start, once that segment has reached 0xFFFF - 1 s, continues the
      same press (an ordinary press never lasts 7 s, so this cannot join two presses).
    * Several events in one packet (section 2.5.1.5 / 2.5.2.4) are taken one after the other,
      each starting where the previous one ended.
    * An event whose first packet arrives after a later event already ended (reordering beyond
      the whole event) is dropped as late rather than reported out of order, unless it is more
      than ten seconds back, which is taken as a timestamp discontinuity. A change of ``ssrc``
      (when given) also resets the memory (RFC 3550 section 8).

    Only DTMF events (codes 0-15) are reported; other codes are counted in ``ignored``.
    Malformed payloads are counted in ``malformed`` instead of raising.
    """

    def __init__(
        self, *, clock_rate: int = 8000, timeout: float = 0.2, history: int = 64
    ) -> None:
        if clock_rate <= 0:
            raise ValueError("clock_rate must be positive")
        self.clock_rate = clock_rate
        self.timeout = timeout
        self.history = history
        self._open: dict[tuple[int, int], _Press] = {}
        self._finished: OrderedDict[tuple[int, int], None] = OrderedDict()
        self._newest_done: int | None = None
        self._ssrc: int | None = None
        self._highest_seq: int | None = None
        self._slack = clock_rate  # 1 s of timestamp units
        self._late_window = 10 * clock_rate
        #: Packets given to :meth:`feed`.
        self.packets = 0
        #: Packets of an event already reported (including the repeated final packets).
        self.duplicates = 0
        #: Packets with a sequence number not above the highest seen (RFC 3550 A.1 style).
        self.out_of_order = 0
        #: Events dropped because a later event had already ended.
        self.late = 0
        #: Payloads that failed to parse.
        self.malformed = 0
        #: Event blocks with a non-DTMF code (e.g. 16, flash).
        self.ignored = 0

    # -- input ------------------------------------------------------------------------------
    def feed(
        self,
        payload: bytes | bytearray | memoryview,
        *,
        timestamp: int,
        sequence: int,
        marker: bool,
        now: float,
        ssrc: int | None = None,
    ) -> list[DtmfEvent]:
        """Take one telephone-event RTP packet's payload and header fields.

        Returns the presses that this packet completed (usually none or one). ``marker`` is
        accepted for completeness but not needed (see the class docstring); ``sequence`` only
        feeds the ``out_of_order`` counter.
        """
        self.packets += 1
        try:
            blocks = parse_telephone_events(payload)
        except ValueError:
            self.malformed += 1
            return []
        out: list[DtmfEvent] = []
        if ssrc is not None and ssrc != self._ssrc:
            if self._ssrc is not None:
                out.extend(self.flush(now))
                self._forget()
            self._ssrc = ssrc
        seq = sequence & 0xFFFF
        if self._highest_seq is None or ((seq - self._highest_seq) & 0xFFFF) - 1 < 0x7FFF:
            self._highest_seq = seq
        else:
            self.out_of_order += 1
        ts = timestamp & _MASK32
        for block in blocks:
            out.extend(self._block(block, ts, now))
            ts = (ts + block.duration) & _MASK32  # RFC 4733 section 2.5.1.5: contiguous events
        return out

    def poll(self, now: float) -> list[DtmfEvent]:
        """End the presses not heard of for their timeout (their end packets were lost)."""
        expired = [p for p in self._open.values() if now >= p.last_update + self._timeout_of(p)]
        return [self._finish(p, now) for p in self._sorted(expired)]

    def flush(self, now: float) -> list[DtmfEvent]:
        """End every open press now (e.g. when the call or the stream ends)."""
        return [self._finish(p, now) for p in self._sorted(list(self._open.values()))]

    def next_deadline(self) -> float | None:
        """When :meth:`poll` should next be called, or None if no press is open."""
        if not self._open:
            return None
        return min(p.last_update + self._timeout_of(p) for p in self._open.values())

    @property
    def active(self) -> tuple[str, float] | None:
        """The press in progress, as ``(digit, estimated start)``, or None."""
        if not self._open:
            return None
        press = self._sorted(list(self._open.values()))[-1]
        return DIGITS[press.code], press.start

    # -- internals ---------------------------------------------------------------------------
    def _forget(self) -> None:
        self._open.clear()
        self._finished.clear()
        self._newest_done = None
        self._highest_seq = None

    def _timeout_of(self, press: _Press) -> float:
        step = press.step_units / self.clock_rate if press.step_units else 0.0
        return max(self.timeout, 3.0 * step)

    def _sorted(self, presses: list[_Press]) -> list[_Press]:
        if len(presses) < 2:
            return presses
        ref = presses[0].first_ts
        return sorted(presses, key=lambda p: ((p.first_ts - ref + 0x80000000) & _MASK32))

    def _block(self, block: TelephoneEvent, ts: int, now: float) -> list[DtmfEvent]:
        code = block.event
        if code > 15:
            self.ignored += 1
            return []
        key = (ts, code)
        if key in self._finished:
            self.duplicates += 1
            return []
        out: list[DtmfEvent] = []
        press = self._open.get(key)
        if press is None:
            done = self._newest_done
            if done is not None and _ts_before(ts, done):
                if (done - ts) & _MASK32 <= self._late_window:
                    self.late += 1
                    return []
                self._forget()  # a jump back of more than 10 s: a new timeline
            press = self._continued(code, ts)
            if press is None:
                # A new press; every open press that began earlier has ended (its E packets
                # were lost or are behind this one).
                earlier = [p for p in self._open.values() if _ts_before(p.seg_ts, ts)]
                out.extend(self._finish(p, now) for p in self._sorted(earlier))
                press = _Press(code, ts, ts, 0, 0, math.inf, now, block.volume)
                press.keys.append(key)
                self._open[key] = press
        # apply the update
        units = block.duration
        if units > press.seg_units:
            step = units - press.seg_units
            if press.seg_units and (press.step_units == 0 or step < press.step_units):
                press.step_units = step
            press.seg_units = units
        press.start = min(press.start, now - (press.done_units + units) / self.clock_rate)
        press.last_update = now
        press.volume = block.volume
        if block.end:
            out.append(self._finish(press, now))
        elif any(_ts_before(ts, p.seg_ts) for p in self._open.values() if p is not press):
            # a later event is already under way: this one is over
            out.append(self._finish(press, now))
        return out

    def _continued(self, code: int, ts: int) -> _Press | None:
        """The open press that a new segment with timestamp ``ts`` continues, if any."""
        for press in list(self._open.values()):
            if press.code != code or not _ts_before(press.seg_ts, ts):
                continue
            gap = (ts - press.seg_ts) & _MASK32
            if press.seg_units >= _MAX_DURATION - self._slack and gap <= (
                _MAX_DURATION + self._slack
            ):
                del self._open[(press.seg_ts, code)]
                # the old segment's repeated final packets are now duplicates
                self._finished[(press.seg_ts, code)] = None
                press.done_units += gap
                press.seg_ts = ts
                press.seg_units = 0
                press.keys.append((ts, code))
                self._open[(ts, code)] = press
                return press
        return None

    def _finish(self, press: _Press, now: float) -> DtmfEvent:
        self._open.pop((press.seg_ts, press.code), None)
        for key in press.keys:
            self._finished[key] = None
            self._finished.move_to_end(key)
        while len(self._finished) > self.history:
            self._finished.popitem(last=False)
        if self._newest_done is None or _ts_before(self._newest_done, press.seg_ts):
            self._newest_done = press.seg_ts
        units = press.done_units + press.seg_units
        start = press.start if math.isfinite(press.start) else now
        return DtmfEvent(
            digit=DIGITS[press.code],
            duration_ms=round(units * 1000 / self.clock_rate),
            transport="rfc4733",
            time=now,
            start=start,
            level_dbm0=-float(press.volume),
        )


# ------------------------------------------------------------------------- RFC 4733 sender


class Rfc4733Packet(NamedTuple):
    """One telephone-event packet to send: payload and the RTP header fields it needs.

    ``offset_ms`` is when to send it, relative to the start of the press.
    """

    payload: bytes
    marker: bool
    timestamp: int
    is_end: bool
    offset_ms: float


class Rfc4733Sender:
    """Builds the RFC 4733 packet train for one key press (section 2.5.1).

    Every ``interval_ms`` (default 20 ms, the usual audio ptime; RFC 4733 leaves the update
    rate to the sender) an update carries the duration so far; the first packet has the marker
    bit (section 2.5.1.1) and a duration of one interval. All packets of a segment carry the
    segment's start timestamp (section 2.5.1.2). The final packet, with the E bit and the full
    duration, is sent ``end_repeats`` (3) times at the update interval (section 2.5.1.4).
    Presses longer than 0xFFFF units are split into segments with new timestamps; only the
    last segment's final packet has E, and each segment's final packet is repeated too
    (section 2.5.1.3). The marker bit is set only on the very first packet.
    """

    def __init__(
        self,
        *,
        interval_ms: float = 20.0,
        clock_rate: int = 8000,
        volume: int = 10,
        end_repeats: int = 3,
    ) -> None:
        if interval_ms <= 0 or clock_rate <= 0:
            raise ValueError("interval_ms and clock_rate must be positive")
        if not 0 <= volume <= 63:
            raise ValueError("volume must be 0..63")
        if end_repeats < 1:
            raise ValueError("end_repeats must be >= 1")
        self.interval_ms = interval_ms
        self.clock_rate = clock_rate
        self.volume = volume
        self.end_repeats = end_repeats

    def packets(
        self, digit: str, duration_ms: float, timestamp: int, *, volume: int | None = None
    ) -> list[Rfc4733Packet]:
        """The packets for ``digit`` pressed for ``duration_ms``, starting at RTP ``timestamp``,
        in sending order."""
        code = digit_to_event(digit)
        vol = self.volume if volume is None else volume
        if not 0 <= vol <= 63:
            raise ValueError("volume must be 0..63")
        step = max(1, round(self.interval_ms * self.clock_rate / 1000))
        total = max(step, round(duration_ms * self.clock_rate / 1000))
        ms_per_unit = 1000.0 / self.clock_rate
        out: list[tuple[float, int, Rfc4733Packet]] = []
        seg_start = 0
        first = True
        while seg_start < total:
            seg_len = min(_MAX_DURATION, total - seg_start)
            last_segment = seg_start + seg_len >= total
            ts = (timestamp + seg_start) & _MASK32
            done = 0
            while done < seg_len:
                done = min(done + step, seg_len)
                final = done == seg_len
                end = final and last_segment
                payload = build_telephone_event(code, end=end, volume=vol, duration=done)
                repeats = self.end_repeats if final else 1
                for r in range(repeats):
                    offset = (seg_start + done) * ms_per_unit + r * self.interval_ms
                    packet = Rfc4733Packet(payload, first, ts, end, offset)
                    out.append((offset, len(out), packet))
                    first = False
            seg_start += seg_len
        out.sort(key=lambda item: (item[0], item[1]))
        return [item[2] for item in out]


# -------------------------------------------------------------------------------- SIP INFO

_MAX_INFO_BODY = 1024


def _info_signal(value: str) -> str | None:
    text = value.strip()
    if len(text) == 1 and text.upper() in DIGITS:
        return text.upper()
    if text.isdigit() and len(text) <= 2:
        return event_to_digit(int(text))  # 10 = *, 11 = #, 12-15 = A-D (RFC 4733 codes)
    return None


def parse_sip_info(content_type: str, body: bytes) -> tuple[str, int] | None:
    """A DTMF digit and its duration (ms) from a SIP INFO body, or None.

    * ``application/dtmf-relay``: ``key=value`` lines (CRLF or LF, keys case-insensitive,
      whitespace ignored); ``Signal`` is a digit, or 10/11 for ``*``/``#`` (and 12-15 for
      A-D, as in RFC 4733); ``Duration`` in milliseconds (default
      :data:`DEFAULT_INFO_DURATION_MS`). Other keys are ignored.
    * ``application/dtmf``: the body is the digit alone (same signal spellings).

    Parameters of the content type are ignored. Anything else (another type, a missing or
    repeated ``Signal``, an unknown signal, a bad duration, non-ASCII, a body over 1 KiB)
    gives None.
    """
    ctype = content_type.split(";", 1)[0].strip().lower()
    if ctype not in ("application/dtmf-relay", "application/dtmf") or len(body) > _MAX_INFO_BODY:
        return None
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        return None
    if ctype == "application/dtmf":
        digit = _info_signal(text)
        return None if digit is None else (digit, DEFAULT_INFO_DURATION_MS)
    signal: str | None = None
    duration: int | None = None
    seen: set[str] = set()
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep:
            return None
        key = key.strip().lower()
        if key in seen and key in ("signal", "duration"):
            return None
        seen.add(key)
        if key == "signal":
            signal = _info_signal(value)
            if signal is None:
                return None
        elif key == "duration":
            value = value.strip()
            if not value.isdigit() or len(value) > 6:
                return None
            duration = int(value)
    if signal is None:
        return None
    return signal, DEFAULT_INFO_DURATION_MS if duration is None else duration


def info_event(content_type: str, body: bytes, now: float) -> DtmfEvent | None:
    """:func:`parse_sip_info` as a :class:`DtmfEvent` (``time`` = ``start`` = ``now``; a SIP
    INFO is normally sent when the key goes down), or None."""
    parsed = parse_sip_info(content_type, body)
    if parsed is None:
        return None
    digit, duration = parsed
    return DtmfEvent(digit, duration, "info", now, now)


# ------------------------------------------------------------------------ in-band: signals


def inband_tone(
    digit: str,
    duration_ms: float,
    level_dbm0: float = -10.0,
    rate: int = 8000,
    twist_db: float = 0.0,
    freq_offset: float = 0.0,
    *,
    low_offset: float | None = None,
    high_offset: float | None = None,
    phases: tuple[float, float] = (0.0, 0.0),
) -> Int16Array:
    """A DTMF tone pair (ITU-T Q.23 frequencies) as int16 samples.

    The low-group tone has ``level_dbm0`` (per-frequency level, :data:`DBM0_PEAK` scale); the
    high-group tone is ``twist_db`` lower, so a positive twist is *normal* twist (low group
    louder) and a negative one *reverse* twist. ``freq_offset`` shifts both frequencies by that
    fraction (0.015 = +1.5 %); ``low_offset``/``high_offset`` override it per group. ``phases``
    are the starting phases in radians. Samples are rounded and clipped to int16 (two 0 dBm0
    tones overload the 16-bit range; G.711 itself tops out at +3.17 dBm0).
    """
    freqs = DIGIT_FREQUENCIES.get(digit.upper()) if len(digit) == 1 else None
    if freqs is None:
        raise ValueError(f"not a DTMF digit: {digit!r}")
    low, high = freqs
    n = max(0, round(duration_ms * rate / 1000.0))
    t = np.arange(n, dtype=np.float64) / rate
    lo = freq_offset if low_offset is None else low_offset
    hi = freq_offset if high_offset is None else high_offset
    a_low = DBM0_PEAK * 10.0 ** (level_dbm0 / 20.0)
    a_high = DBM0_PEAK * 10.0 ** ((level_dbm0 - twist_db) / 20.0)
    signal = a_low * np.sin(2 * np.pi * low * (1 + lo) * t + phases[0]) + a_high * np.sin(
        2 * np.pi * high * (1 + hi) * t + phases[1]
    )
    out: Int16Array = np.clip(np.rint(signal), -32768, 32767).astype(np.int16)
    return out


def goertzel_power(samples: npt.ArrayLike, freq: float, rate: int = 8000) -> float:
    """``|X(freq)|^2`` of ``samples`` by the Goertzel recurrence (Goertzel 1958).

    ``s[n] = x[n] + 2 cos(w) s[n-1] - s[n-2]``, then
    ``|X|^2 = s[N-1]^2 + s[N-2]^2 - 2 cos(w) s[N-1] s[N-2]`` with ``w = 2 pi freq / rate``.
    This is the reference form; the detectors evaluate the same DFT terms as a matrix product
    so that numpy can do many channels and frequencies at once.
    """
    x = np.asarray(samples, dtype=np.float64)
    coeff = 2.0 * math.cos(2.0 * math.pi * freq / rate)
    s1 = s2 = 0.0
    for value in x.tolist():
        s1, s2 = value + coeff * s1 - s2, s1
    return s1 * s1 + s2 * s2 - coeff * s1 * s2


# ---------------------------------------------------------------------- in-band: detector


@dataclass(frozen=True, slots=True)
class InbandParams:
    """Acceptance thresholds of the in-band detector (ITU-T Q.24-style; see the bench).

    * ``min_level_dbm0``: the louder tone must be at least this loud (Q.24 asks for operation
      down to -36 dBm0 or so, depending on the administration; 6 dB of margin below that).
    * ``freq_tolerance``: largest accepted frequency deviation, as a fraction. Q.24 requires
      operation within +-1.5 % and non-operation beyond +-3.5 %; the boundary is in between.
    * ``normal_twist_db`` / ``reverse_twist_db``: largest accepted level difference with the
      low group louder (normal) / the high group louder (reverse). Q.24 asks for 8 and 4 dB.
    * ``min_tone_ratio``: share of the 20 ms window's energy that must be in the two tones
      (talk-off protection: speech spreads its energy).
    * ``max_harmonic_db``: largest second-harmonic level relative to its tone (speech is rich
      in harmonics, a DTMF generator is not).
    * ``min_steadiness``: smallest power ratio between the two 10 ms halves of a window; this
      is what lets only whole windows count, so that tones of 23 ms are never accepted while
      tones of 40 ms always are.
    """

    min_level_dbm0: float = -42.0
    freq_tolerance: float = 0.025
    normal_twist_db: float = 10.0
    reverse_twist_db: float = 6.0
    min_tone_ratio: float = 0.85
    max_harmonic_db: float = -12.0
    min_steadiness: float = 0.7


_RATE = 8000
_BLOCK = 80  # 10 ms sub-block
_WINDOW = 2 * _BLOCK  # 20 ms analysis window, one new window every 10 ms
_BIN_HZ = _RATE / _WINDOW  # 50 Hz
_END_MISSES = 4  # windows without the digit that end a press (bridges 10 ms interruptions)
_CONFIRM = 2  # consecutive valid windows (30 ms of steady tone) that start a press


def _analysis_frequencies() -> npt.NDArray[np.float64]:
    tones = np.array(LOW_GROUP_HZ + HIGH_GROUP_HZ, dtype=np.float64)
    # 0-7: the eight tones; 8-15: one bin (50 Hz) below; 16-23: one bin above; 24-31: 2nd harmonics
    return np.concatenate((tones, tones - _BIN_HZ, tones + _BIN_HZ, 2 * tones))


_FREQS = _analysis_frequencies()


def _basis() -> npt.NDArray[np.float32]:
    # Columns interleave cos and -sin so that the float32 product viewed as complex64 is the
    # DFT term sum(x[i] * exp(-j w i)) of each 10 ms sub-block, i = 0..79.
    i = np.arange(_BLOCK, dtype=np.float64)[:, None]
    w = 2 * np.pi * _FREQS[None, :] / _RATE
    basis = np.empty((_BLOCK, 2 * len(_FREQS)), dtype=np.float64)
    basis[:, 0::2] = np.cos(w * i)
    basis[:, 1::2] = -np.sin(w * i)
    return basis.astype(np.float32)


_BASIS = _basis()
# A window is two sub-blocks; the second one's terms are rotated by its 80-sample delay.
_ROTATION = np.exp(-2j * np.pi * _FREQS * _BLOCK / _RATE).astype(np.complex64)
# Candan's bias correction for the three-bin estimator with a rectangular window of N samples
_CANDAN = math.tan(math.pi / _WINDOW) / (math.pi / _WINDOW)
_TONE_HZ = np.array(LOW_GROUP_HZ + HIGH_GROUP_HZ, dtype=np.float32)


def _row_harmonic_usable() -> npt.NDArray[np.bool_]:
    # 2 x a low-group frequency can sit within a few bins of a high-group tone (2 x 697 = 1394
    # is 58 Hz from 1336); with a 160-sample window that tone leaks into the harmonic filter,
    # so the low-group harmonic check is only made where the two are >= 180 Hz apart.
    table = np.zeros((4, 4), dtype=np.bool_)
    for r, low in enumerate(LOW_GROUP_HZ):
        for c, high in enumerate(HIGH_GROUP_HZ):
            table[r, c] = abs(2 * low - high) >= 180.0
    return table


_ROW_HARMONIC_OK = _row_harmonic_usable()


def _leakage() -> npt.NDArray[np.complex64]:
    # _LEAK[r, c] = sum over n < 80 of exp(j (w_c - w_r) n): how much of a high-group tone
    # appears in the 80-sample filter of a low-group one (conjugate for the other way round)
    n = np.arange(_BLOCK)
    table = np.empty((4, 4), dtype=np.complex64)
    for r, low in enumerate(LOW_GROUP_HZ):
        for c, high in enumerate(HIGH_GROUP_HZ):
            table[r, c] = np.exp(2j * np.pi * (high - low) * n / _RATE).sum()
    return table


_LEAK = _leakage()


def _power(z: npt.NDArray[np.complex64]) -> npt.NDArray[np.float32]:
    out: npt.NDArray[np.float32] = (z.real * z.real + z.imag * z.imag).astype(np.float32)
    return out


def _pair_power(
    y: npt.NDArray[np.complex64], digit: npt.NDArray[np.integer[Any]]
) -> npt.NDArray[np.float32]:
    """Power of each digit's tone pair in 10 ms sub-blocks ``y`` (shape (K, 32)), with the
    mutual leakage of the two tones removed.

    A sidelobe of one tone puts up to 9 % of its amplitude into the other's 80-sample filter.
    With complex amplitudes a, b: ``y_low = 80 a + L b`` and ``y_high = conj(L) a + 80 b``;
    solving gives a and b up to the common factor ``80^2 - |L|^2`` (ignored: only ratios of
    these powers are used).
    """
    row = digit // 4
    col = digit % 4
    k = np.arange(len(digit))
    y_low = y[k, row]
    y_high = y[k, 4 + col]
    leak = _LEAK[row, col]
    a = _BLOCK * y_low - leak * y_high
    b = _BLOCK * y_high - np.conj(leak) * y_low
    return _power(a) + _power(b)


def _coverage(
    part: npt.NDArray[np.complex64],
    full: npt.NDArray[np.complex64],
    digit: npt.NDArray[np.integer[Any]],
) -> npt.NDArray[np.float32]:
    """How much of sub-block ``part`` the digit's tones fill, relative to sub-block ``full``
    (0..1: the DFT magnitude of a tone present in a fraction c of a block scales with c)."""
    qp = _pair_power(part, digit)
    qf = _pair_power(full, digit)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(qf > 0, qp / qf, 0.0)
    out: npt.NDArray[np.float32] = np.sqrt(np.clip(ratio, 0.0, 1.0)).astype(np.float32)
    return out


class InbandDetectorBank:
    """In-band DTMF detection for ``channels`` audio channels at 8 kHz, vectorised with numpy.

    Feed :meth:`process` one frame per channel at a time (normally 20 ms, shape
    ``(channels, 160)``; any multiple of 80 samples works). Each 10 ms a 20 ms window (the
    last two 10 ms sub-blocks) is analysed with Goertzel filters at the eight Q.23 frequencies,
    one bin (50 Hz) either side of each and the second harmonics, all computed as one matrix
    product (:func:`goertzel_power` is the same quantity by the recurrence). A window holds a
    digit when:

    1. the strongest low-group and high-group tones are within ``freq_tolerance`` of nominal,
       the frequency being estimated from the three bins (Candan's estimator for a rectangular
       window) and the tone power corrected for the offset;
    2. the louder tone reaches ``min_level_dbm0`` and the twist is within limits;
    3. the two tones hold ``min_tone_ratio`` of the window's energy and their second harmonics
       are ``max_harmonic_db`` down (talk-off protection);
    4. both 10 ms halves carry the tones at nearly the same power (``min_steadiness``).

    A press starts after two consecutive windows with the same digit (30 ms of steady tone,
    so a 40 ms tone is always caught whatever its alignment and a 23 ms one never is; the
    latency from tone onset is under 40 ms) and ends after four windows without it (bridging
    interruptions of up to 10 ms; a 40 ms pause always separates two presses). Its start and
    end are refined to a fraction of a sub-block from the tone power in the partly covered
    edge sub-blocks.

    Cost is dominated by one (channels x 2, 80) x (80, 64) float32 product per 20 ms frame;
    ``python -m bench.dtmf_quality`` measures it. The product is too small to gain from a
    multi-threaded BLAS: running the process with ``OPENBLAS_NUM_THREADS=1`` keeps the same
    throughput for about half the CPU time.
    """

    def __init__(self, channels: int, params: InbandParams | None = None) -> None:
        if channels < 1:
            raise ValueError("channels must be >= 1")
        self.channels = channels
        self.params = params or InbandParams()
        p = self.params
        amp = DBM0_PEAK * 10.0 ** (p.min_level_dbm0 / 20.0)
        self._min_energy = np.float32(_WINDOW * amp * amp / 2.0)
        self._normal = np.float32(10.0 ** (p.normal_twist_db / 10.0))
        self._reverse = np.float32(10.0 ** (p.reverse_twist_db / 10.0))
        self._harmonic = np.float32(10.0 ** (p.max_harmonic_db / 10.0))
        self._ref_power = DBM0_PEAK * DBM0_PEAK / 2.0
        c = channels
        # DFT terms and energies of the last two sub-blocks (windows straddle calls)
        self._prev_y = np.zeros((c, 2, len(_FREQS)), dtype=np.complex64)
        self._prev_e = np.zeros(c, dtype=np.float32)
        self._cand = np.full(c, -1, dtype=np.int8)
        self._cand_len = np.zeros(c, dtype=np.int16)
        self._cand_lead = np.zeros(c, dtype=np.float32)
        self._active = np.full(c, -1, dtype=np.int8)
        self._act_start = np.zeros(c, dtype=np.float64)  # sample positions
        self._act_at = np.zeros(c, dtype=np.float64)
        self._last_hit = np.zeros(c, dtype=np.float64)
        self._miss = np.zeros(c, dtype=np.int16)
        self._trail = np.zeros(c, dtype=np.float32)
        self._level = np.zeros(c, dtype=np.float32)
        self._pending = False
        self._samples = 0  # samples seen per channel (the sample clock)
        self._clock = 0.0  # caller time of sample position self._samples

    # -- public ------------------------------------------------------------------------------
    def process(self, frames: npt.ArrayLike, now: float) -> list[list[DtmfEvent]]:
        """Analyse one frame per channel; ``now`` is the time of the end of the frames.

        ``frames`` has shape ``(channels, 80 * k)``, int16 (other dtypes are converted).
        Returns, per channel, the presses that ended in these frames.
        """
        x = np.asarray(frames)
        if x.ndim != 2 or x.shape[0] != self.channels or x.shape[1] % _BLOCK or not x.shape[1]:
            raise ValueError(f"frames must have shape ({self.channels}, 80 * k)")
        return self._run(x, now)

    def active(self, channel: int) -> tuple[str, float, float] | None:
        """The press going on in ``channel``: ``(digit, estimated start, detection time)``."""
        d = int(self._active[channel])
        if d < 0:
            return None
        start = self._time_of(float(self._act_start[channel]))
        return _KEYPAD[d], start, self._time_of(float(self._act_at[channel]))

    def active_digits(self) -> list[str | None]:
        """The digit going on in each channel (None where there is none)."""
        return [_KEYPAD[d] if d >= 0 else None for d in self._active.tolist()]

    def flush(self, now: float) -> list[list[DtmfEvent]]:
        """End every press in progress (e.g. at the end of a call); ``time`` is ``now``."""
        out: list[list[DtmfEvent]] = [[] for _ in range(self.channels)]
        for ch in np.nonzero(self._active >= 0)[0].tolist():
            trail = float(self._trail[ch]) if self._miss[ch] else 0.0
            out[ch].append(self._event(ch, float(self._last_hit[ch]) + _BLOCK * trail, now))
        self._active[:] = -1
        self._cand[:] = -1
        self._cand_len[:] = 0
        self._pending = False
        return out

    def reset_channel(self, channel: int) -> None:
        """Forget everything about ``channel`` (e.g. when its slot is given to a new call)."""
        self._prev_y[channel] = 0
        self._prev_e[channel] = 0
        self._cand_len[channel] = 0
        self._miss[channel] = 0
        self._cand[channel] = -1
        self._active[channel] = -1

    # -- internals ---------------------------------------------------------------------------
    def _time_of(self, position: float) -> float:
        return self._clock - (self._samples - position) / _RATE

    def _event(self, ch: int, end_pos: float, when: float) -> DtmfEvent:
        start_pos = float(self._act_start[ch])
        duration = max(0, round((end_pos - start_pos) * 1000 / _RATE))
        level = float(self._level[ch])
        return DtmfEvent(
            digit=_KEYPAD[int(self._active[ch])],
            duration_ms=duration,
            transport="inband",
            time=when,
            start=self._time_of(start_pos),
            level_dbm0=round(level, 1) if math.isfinite(level) else None,
        )

    def _run(self, x: npt.NDArray[Any], now: float) -> list[list[DtmfEvent]]:
        c = self.channels
        s_count = x.shape[1] // _BLOCK
        base = self._samples
        self._samples += x.shape[1]
        self._clock = now
        digits, level, y = self._analyse(x, s_count)
        out: list[list[DtmfEvent]] = [[] for _ in range(c)]
        valid_any: list[bool] = np.any(digits >= 0, axis=0).tolist()
        for s in range(s_count):
            if not self._pending and not valid_any[s]:
                continue
            pos = float(base + (s + 1) * _BLOCK)
            # window s is sub-blocks s + 1 and s + 2 of y (y[0] and y[1] are from before)
            self._step(digits[:, s], level[:, s], y[:, s : s + 3], pos, out)
        return out

    def _analyse(
        self, x: npt.NDArray[Any], s_count: int
    ) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.float32], npt.NDArray[np.complex64]]:
        """Per-window digit (-1 for none) and level, shape (C, S), and the sub-block DFT terms
        (C, S + 2, 32) including the two previous sub-blocks."""
        p = self.params
        c = self.channels
        nf = len(_FREQS)
        blocks = x.astype(np.float32, copy=False).reshape(c * s_count, _BLOCK)
        y_new = (blocks @ _BASIS).view(np.complex64).reshape(c, s_count, nf)
        e_new = np.einsum("ij,ij->i", blocks, blocks).reshape(c, s_count)
        y = np.concatenate((self._prev_y, y_new), axis=1)  # (C, S + 2, F)
        e = np.concatenate((self._prev_e[:, None], e_new), axis=1)  # (C, S + 1)
        self._prev_y = y[:, -2:].copy()
        self._prev_e = e_new[:, -1].copy()
        ya = y[:, 1:-1]  # first sub-block of each window
        yb = y[:, 2:]  # second sub-block
        energy = e[:, :-1] + e[:, 1:]

        # nominal-frequency powers of the 20 ms windows
        pn = _power(ya[..., :8] + _ROTATION[:8] * yb[..., :8])
        digits = np.full((c, s_count), -1, dtype=np.int8)
        level = np.full((c, s_count), -np.inf, dtype=np.float32)
        # cheap pre-screen: enough energy in the strongest bin of each group (allowing for the
        # loss of an off-frequency tone, up to ~4 dB) and enough level; the full checks run
        # on the survivors only
        tone = (pn[..., :4].max(axis=-1) + pn[..., 4:].max(axis=-1)) * (2.0 / _WINDOW)
        screen = (tone >= 0.3 * p.min_tone_ratio * energy) & (tone >= 0.25 * self._min_energy)
        idx = np.nonzero(screen)
        if idx[0].size == 0:
            return digits, level, y
        pn_s = pn[idx]
        r = np.argmax(pn_s[:, :4], axis=-1)
        k = np.argmax(pn_s[:, 4:], axis=-1) + 4
        ya_s = ya[idx]  # (K, F)
        yb_s = yb[idx]
        xw = ya_s + _ROTATION * yb_s  # all 32 window terms of the survivors
        rows = np.arange(len(r))

        def tone_check(
            t: npt.NDArray[np.intp],
        ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_], npt.NDArray[np.float32]]:
            """(offset-corrected tone energy, frequency ok, harmonic energy) for tones t."""
            x0 = xw[rows, t]
            xm = xw[rows, 8 + t]
            xp = xw[rows, 16 + t]
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                delta = _CANDAN * np.real((xm - xp) / (2 * x0 - xm - xp))
                delta = np.nan_to_num(delta, nan=9.0, posinf=9.0, neginf=-9.0)
                ok = np.abs(delta * _BIN_HZ) <= p.freq_tolerance * _TONE_HZ[t]
                d = np.clip(np.abs(delta), 1e-6, 0.9)
                # |Dirichlet kernel| of a 160-sample rectangular window at delta bins
                gain = np.sin(np.pi * d) / (_WINDOW * np.sin(np.pi * d / _WINDOW))
                corrected = _power(x0) / (gain * gain) * (2.0 / _WINDOW)
            harm = _power(xw[rows, 24 + t]) * np.float32(2.0 / _WINDOW)
            return corrected.astype(np.float32), ok, harm

        er, ok_r, hr = tone_check(r)
        ec, ok_c, hc = tone_check(k)
        good = ok_r & ok_c
        good &= np.maximum(er, ec) >= self._min_energy
        good &= (er <= ec * self._normal) & (ec <= er * self._reverse)
        good &= (er + ec) >= p.min_tone_ratio * energy[idx]
        good &= hc <= ec * self._harmonic
        good &= ~_ROW_HARMONIC_OK[r, k - 4] | (hr <= er * self._harmonic)
        digit = (r * 4 + (k - 4)).astype(np.int8)
        qa = _pair_power(ya_s, digit)
        qb = _pair_power(yb_s, digit)
        good &= np.minimum(qa, qb) >= p.min_steadiness * np.maximum(qa, qb)
        digits[idx] = np.where(good, digit, -1).astype(np.int8)
        with np.errstate(divide="ignore"):
            lvl = 10.0 * np.log10((er + ec) / _WINDOW / self._ref_power)
        level[idx] = lvl.astype(np.float32)
        return digits, level, y

    def _step(
        self,
        d: npt.NDArray[np.int8],
        level: npt.NDArray[np.float32],
        y3: npt.NDArray[np.complex64],
        pos: float,
        out: list[list[DtmfEvent]],
    ) -> None:
        """Advance every channel's press state by one window ending at sample ``pos``.

        ``y3`` holds the sub-block before the window and the window's two sub-blocks.
        """
        valid = d >= 0
        same = valid & (d == self._cand)
        new_cand = valid & ~same
        if new_cand.any():
            # how much of the sub-block just before the run already carries the tones
            ch = np.nonzero(new_cand)[0]
            self._cand_lead[ch] = _coverage(y3[ch, 0], y3[ch, 1], d[ch])
        self._cand_len = np.where(same, self._cand_len + 1, valid).astype(np.int16)
        self._cand = np.where(valid, d, -1).astype(np.int8)

        active = self._active
        is_active = active >= 0
        hit = is_active & (d == active)
        missing = is_active & ~hit
        self._miss = np.where(hit, 0, self._miss + missing).astype(np.int16)
        first_miss = missing & (self._miss == 1)
        if first_miss.any():
            # how much of the sub-block after the last whole window still carries the tones
            ch = np.nonzero(first_miss)[0]
            self._trail[ch] = _coverage(y3[ch, 2], y3[ch, 1], active[ch])
        self._last_hit = np.where(hit, pos, self._last_hit)
        confirmed = valid & (self._cand_len >= _CONFIRM)
        ending = missing & ((self._miss >= _END_MISSES) | confirmed)
        if ending.any():
            when = self._time_of(pos)
            for ch_i in np.nonzero(ending)[0].tolist():
                end = float(self._last_hit[ch_i]) + _BLOCK * float(self._trail[ch_i])
                out[ch_i].append(self._event(ch_i, end, when))
            self._active = active = np.where(ending, -1, active).astype(np.int8)
        starting = (active < 0) & confirmed
        if starting.any():
            self._active = np.where(starting, d, active).astype(np.int8)
            begin = pos - (self._cand_len + 1) * _BLOCK - _BLOCK * self._cand_lead
            self._act_start = np.where(starting, begin, self._act_start)
            self._act_at = np.where(starting, pos, self._act_at)
            self._last_hit = np.where(starting, pos, self._last_hit)
            self._miss = np.where(starting, 0, self._miss).astype(np.int16)
            self._level = np.where(starting, level, self._level)
        self._pending = bool((self._active >= 0).any() or (self._cand_len > 0).any())


class InbandDetector:
    """In-band DTMF detection for one channel of 8 kHz audio, fed in blocks of any length.

    A thin wrapper over a one-channel :class:`InbandDetectorBank`: samples are buffered into
    10 ms sub-blocks, so the decisions are the same whatever the block size.
    """

    def __init__(self, params: InbandParams | None = None) -> None:
        self._bank = InbandDetectorBank(1, params)
        self._rest = np.zeros(0, dtype=np.int16)

    @property
    def params(self) -> InbandParams:
        """The thresholds in use."""
        return self._bank.params

    def feed(self, samples: npt.ArrayLike, now: float) -> list[DtmfEvent]:
        """Take samples (int16, 8 kHz); ``now`` is the time of the end of the last sample.

        Returns the presses that ended in them.
        """
        x = np.asarray(samples)
        if x.ndim != 1:
            raise ValueError("samples must be one-dimensional")
        if x.dtype != np.int16:
            x = np.clip(np.rint(x), -32768, 32767).astype(np.int16)
        if self._rest.size:
            x = np.concatenate((self._rest, x))
        usable = (x.size // _BLOCK) * _BLOCK
        self._rest = x[usable:].copy()
        if not usable:
            return []
        end_time = now - self._rest.size / _RATE
        return self._bank.process(x[None, :usable], end_time)[0]

    @property
    def active(self) -> tuple[str, float, float] | None:
        """The press going on: ``(digit, estimated start, detection time)``, or None."""
        return self._bank.active(0)

    def flush(self, now: float) -> list[DtmfEvent]:
        """End a press in progress (e.g. at the end of the audio)."""
        return self._bank.flush(now)[0]


# ------------------------------------------------------------------------------- merging

_PRIORITY: dict[str, int] = {t: i for i, t in enumerate(TRANSPORTS)}


@dataclass(slots=True)
class _Copy:
    """A press as the merger knows it: the event kept and every transport that reported it."""

    event: DtmfEvent
    transports: set[str]
    release: float = math.inf  # for held presses: when to emit


class DtmfMerger:
    """One leg's DTMF from all three transports as one stream without duplicates.

    Two events are the same press when they have the same digit, come from *different*
    transports and are close in time: an RFC 4733 and an in-band event when their
    ``[start, end]`` intervals overlap or leave a gap of at most ``window`` seconds (default
    25 ms); a SIP INFO, whose ``Duration`` is only nominal (it is sent when the key goes down),
    when the starts are at most ``info_window`` apart (default 40 ms). Two presses of the same
    digit separated by the Q.24 minimum pause of 40 ms are therefore never merged. Events of
    one transport are never merged with each other: each receiver already reports each press
    once. Among several candidates the one with the nearest start is taken.

    Preference is RFC 4733, then INFO, then in-band. An event of a less preferred transport is
    emitted at once unless a more preferred transport has delivered an event on this leg in
    the last ``memory`` seconds; then it is held until ``hold`` seconds after the press ended
    (an INFO announces its end in advance) so that the preferred copy, if it comes, replaces
    it. An event matching a press already emitted is dropped, as
    is the less preferred of two held copies; both count in ``suppressed``. So nothing is
    reported twice. Held presses are released in start order, before any later press, so the
    digit order is kept.

    Sans-IO: :meth:`push` and :meth:`poll` return what is emitted (and call ``on_event`` for
    each, if given); call :meth:`poll` at :meth:`next_deadline`.
    """

    def __init__(
        self,
        on_event: Callable[[DtmfEvent], None] | None = None,
        *,
        window: float = 0.025,
        info_window: float = 0.04,
        hold: float = 0.3,
        memory: float = 60.0,
        history: float = 10.0,
    ) -> None:
        self.on_event = on_event
        self.window = window
        self.info_window = info_window
        self.hold = hold
        self.memory = memory
        self.history = history
        self._recent: deque[_Copy] = deque()
        self._held: list[_Copy] = []
        self._last_seen: dict[str, float] = {}
        #: Events dropped as copies of a press already emitted or held.
        self.suppressed = 0

    def push(self, event: DtmfEvent, now: float) -> list[DtmfEvent]:
        """Take one event from any transport; returns the events emitted now."""
        out = self.poll(now)
        self._last_seen[event.transport] = now
        done = self._best(event, self._recent)
        if done is not None:
            done.transports.add(event.transport)
            self.suppressed += 1
            return out
        transports: set[str] = {event.transport}
        held = self._best(event, self._held)
        if held is not None:
            self.suppressed += 1
            if _PRIORITY[held.event.transport] < _PRIORITY[event.transport]:
                held.transports.add(event.transport)  # the held copy is the better one
                return out
            self._held.remove(held)
            transports |= held.transports
        if self._preferred_in_use(event.transport, now):
            self._held.append(_Copy(event, transports, max(now, event.end) + self.hold))
            self._held.sort(key=lambda h: h.event.start)
            return out
        for h in [h for h in self._held if h.event.start < event.start]:
            self._held.remove(h)
            self._emit(h, out)
        self._emit(_Copy(event, transports), out)
        return out

    def poll(self, now: float) -> list[DtmfEvent]:
        """Release held presses whose hold time is over; forget old history."""
        out: list[DtmfEvent] = []
        due = [h.event.start for h in self._held if h.release <= now]
        if due:
            # keep the order: whatever is held and started before a due press goes out with it
            last_start = max(due)
            for h in [h for h in self._held if h.event.start <= last_start]:
                self._held.remove(h)
                self._emit(h, out)
        while self._recent and self._recent[0].event.end < now - self.history:
            self._recent.popleft()
        return out

    def flush(self, now: float) -> list[DtmfEvent]:
        """Release every held press now."""
        out: list[DtmfEvent] = []
        held, self._held = self._held, []
        for h in held:
            self._emit(h, out)
        return out

    def next_deadline(self) -> float | None:
        """When :meth:`poll` should next be called, or None if nothing is held."""
        return min((h.release for h in self._held), default=None)

    def _preferred_in_use(self, transport: str, now: float) -> bool:
        better = TRANSPORTS[: _PRIORITY[transport]]
        return any(now - self._last_seen.get(t, -math.inf) <= self.memory for t in better)

    def _best(self, event: DtmfEvent, copies: Iterable[_Copy]) -> _Copy | None:
        """The copy of the same press as ``event`` among ``copies`` (nearest start), if any."""
        best: _Copy | None = None
        for copy in copies:
            other = copy.event
            if other.digit != event.digit or event.transport in copy.transports:
                continue
            if "info" in (other.transport, event.transport):
                near = abs(other.start - event.start) <= self.info_window
            else:
                w = self.window
                near = other.start - w <= event.end and event.start - w <= other.end
            if near:
                if best is None or abs(other.start - event.start) < abs(
                    best.event.start - event.start
                ):
                    best = copy
        return best

    def _emit(self, copy: _Copy, out: list[DtmfEvent]) -> None:
        copy.release = math.inf
        self._recent.append(copy)
        out.append(copy.event)
        if self.on_event is not None:
            self.on_event(copy.event)
