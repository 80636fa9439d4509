"""Prompt playback into one RTP stream: a queue of prompts paced by the shared media clock.

A :class:`Player` owns the sending side of one RTP stream (RFC 3550): its SSRC, a sequence
number that increases by one per packet and a timestamp that follows the 8 kHz sampling
clock, both continuous across every prompt it plays. It sends one 20 ms packet (160 G.711
samples) per tick of a :class:`~media.clock.MediaClock`; ``send`` is any callable taking the
packet, typically :meth:`media.engine.RtpEndpoint.send_rtp`.

Timestamps are tied to the clock's frame number, so when the player is idle (nothing queued)
the timestamp keeps advancing with time while the sequence number does not, which is how RTP
represents silence (RFC 3550 section 5.1). The first packet after silence, the start of a
talk spurt, carries the marker bit (RFC 3551 section 4.1); prompts queued back to back form
one talk spurt.

:meth:`Player.play` queues a prompt and returns a :class:`PlaybackHandle`: it completes with
a :class:`DoneReason` (``finished``, ``stopped`` or ``barge-in``) through callbacks and an
awaitable :meth:`PlaybackHandle.wait`. A looping prompt (music on hold) plays until stopped.
Prompts played with ``stop_on_dtmf=True`` are cut short by :meth:`Player.dtmf_received`
(barge-in); the DTMF detector is the caller's.

G.711 encodings are computed once per prompt and codec (:meth:`media.wav.Prompt.encoded`) and
shared by all players; a tick only slices the payload and packs a 12-octet header.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import secrets
import struct
from collections import deque
from collections.abc import Callable
from typing import Literal

from .clock import MediaClock, shared_clock
from .sdp import Codec
from .wav import Prompt

__all__ = ["DoneCallback", "DoneReason", "PlaybackHandle", "Player"]

logger = logging.getLogger(__name__)

_HEADER = struct.Struct("!BBHII")
_STATIC_PT = {"PCMU": 0, "PCMA": 8}


class DoneReason(enum.StrEnum):
    """Why a prompt's playback ended."""

    #: played to the end
    FINISHED = "finished"
    #: :meth:`PlaybackHandle.stop`, :meth:`Player.stop` or :meth:`Player.close`
    STOPPED = "stopped"
    #: cut short by DTMF (:meth:`Player.dtmf_received`, prompt played with ``stop_on_dtmf``)
    BARGE_IN = "barge-in"


DoneCallback = Callable[["PlaybackHandle"], object]


class PlaybackHandle:
    """One queued prompt of a :class:`Player`: its options, progress and outcome."""

    __slots__ = (
        "_callbacks",
        "_player",
        "_waiters",
        "digit",
        "frames_sent",
        "loop",
        "loops",
        "prompt",
        "reason",
        "stop_on_dtmf",
    )

    def __init__(self, player: Player, prompt: Prompt, loop: bool, stop_on_dtmf: bool) -> None:
        self._player = player
        #: the prompt being played
        self.prompt = prompt
        #: True: start again at the end until stopped
        self.loop = loop
        #: True: :meth:`Player.dtmf_received` stops this prompt (barge-in)
        self.stop_on_dtmf = stop_on_dtmf
        #: outcome, None while queued or playing
        self.reason: DoneReason | None = None
        #: the DTMF digit that barged in, if the caller gave one
        self.digit: str | None = None
        #: packets sent for this prompt
        self.frames_sent = 0
        #: completed passes through a looping prompt
        self.loops = 0
        self._callbacks: list[DoneCallback] = []
        self._waiters: list[asyncio.Future[DoneReason]] = []

    def __repr__(self) -> str:
        state = self.reason.value if self.reason is not None else "pending"
        return f"<PlaybackHandle {self.prompt.name or 'prompt'} {state}>"

    def done(self) -> bool:
        """True once the prompt finished or was stopped."""
        return self.reason is not None

    def stop(self) -> None:
        """Stop this prompt (reason ``stopped``) whether playing or still queued; no-op once
        done. Other queued prompts are not affected."""
        if self.reason is None:
            self._player._stop_handle(self)

    def add_done_callback(self, callback: DoneCallback) -> None:
        """Call ``callback(handle)`` when done (at once if already done). Callbacks run inside
        the media tick, so they must be quick; they may call :meth:`Player.play`."""
        if self.reason is not None:
            _run_callback(callback, self)
        else:
            self._callbacks.append(callback)

    async def wait(self) -> DoneReason:
        """Wait until done and return the reason."""
        if self.reason is not None:
            return self.reason
        waiter: asyncio.Future[DoneReason] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        return await waiter

    def _complete(self, reason: DoneReason, digit: str | None = None) -> None:
        if self.reason is not None:
            return
        self.reason = reason
        self.digit = digit
        callbacks, self._callbacks = self._callbacks, []
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(reason)
        for callback in callbacks:
            _run_callback(callback, self)


def _run_callback(callback: DoneCallback, handle: PlaybackHandle) -> None:
    try:
        callback(handle)
    except Exception:
        logger.exception("playback done callback %r failed", callback)


class Player:
    """Plays prompts into one RTP stream.

    ``send`` gets each packet (bytes), e.g. ``endpoint.send_rtp``. ``codec`` is ``"PCMU"``,
    ``"PCMA"`` or a negotiated :class:`~media.sdp.Codec` (whose payload type is used);
    ``payload_type`` overrides the PT. ``ssrc``, ``sequence`` and ``timestamp`` are random
    by default (RFC 3550 section 5.1). ``clock`` is the :class:`~media.clock.MediaClock` that
    paces the player (``"shared"``: :func:`~media.clock.shared_clock` of the running loop,
    taken at the first :meth:`play`; None: nobody, the owner calls :meth:`tick`). The player
    is registered with the clock while it has something to play and for ``linger`` idle
    frames after that, so that a prompt played right after the previous one ended (e.g.
    after ``await handle.wait()``) keeps the stream's phase on the clock.
    """

    def __init__(
        self,
        send: Callable[[bytes], object],
        *,
        codec: str | Codec = "PCMU",
        payload_type: int | None = None,
        ssrc: int | None = None,
        sequence: int | None = None,
        timestamp: int | None = None,
        clock: MediaClock | Literal["shared"] | None = "shared",
        frame_samples: int = 160,
        linger: int = 10,
    ) -> None:
        if frame_samples <= 0:
            raise ValueError("frame_samples must be positive")
        if isinstance(clock, MediaClock) and round(clock.interval * 8000) != frame_samples:
            raise ValueError(
                f"clock interval {clock.interval}s does not match {frame_samples} samples/packet"
            )
        self._send = send
        self._clock_spec = clock
        self._clock: MediaClock | None = clock if isinstance(clock, MediaClock) else None
        self._attached = False
        self._idle = 0  # ticks without anything to send
        self.linger = linger
        self.frame_samples = frame_samples
        self._codec = ""
        self._pt = 0
        self._current: PlaybackHandle | None = None
        self.set_codec(codec, payload_type)
        #: synchronisation source identifier of the stream
        self.ssrc = secrets.randbits(32) if ssrc is None else ssrc & 0xFFFFFFFF
        self._seq = secrets.randbits(16) if sequence is None else sequence & 0xFFFF
        self._first_ts = secrets.randbits(32) if timestamp is None else timestamp & 0xFFFFFFFF
        self._ts_offset: int | None = None  # timestamp = offset + n * frame_samples
        self._last_frame: int | None = None  # clock frame of the last packet sent
        self._last_ts = 0
        self._queue: deque[PlaybackHandle] = deque()
        self._data = b""  # encoded current prompt
        self._pos = 0
        self._closed = False
        #: packets and payload octets sent (for RTCP sender reports)
        self.packets_sent = 0
        self.octets_sent = 0
        #: send() calls that raised
        self.send_errors = 0

    def __repr__(self) -> str:
        return f"<Player ssrc={self.ssrc:#010x} {self._codec} playing={self.playing}>"

    # -- public API ----------------------------------------------------------------------
    @property
    def codec(self) -> str:
        """``"PCMU"`` or ``"PCMA"``."""
        return self._codec

    @property
    def payload_type(self) -> int:
        """The RTP payload type sent."""
        return self._pt

    @property
    def sequence(self) -> int:
        """The sequence number of the next packet."""
        return self._seq

    @property
    def last_timestamp(self) -> int:
        """RTP timestamp of the last packet sent (0 before the first)."""
        return self._last_ts

    @property
    def playing(self) -> bool:
        """True while a prompt is playing or queued."""
        return self._current is not None or bool(self._queue)

    @property
    def current(self) -> PlaybackHandle | None:
        """The prompt playing now (None between prompts or when idle)."""
        return self._current

    @property
    def queued(self) -> tuple[PlaybackHandle, ...]:
        """Prompts waiting after the current one."""
        return tuple(self._queue)

    def set_codec(self, codec: str | Codec, payload_type: int | None = None) -> None:
        """Switch codec (e.g. after a re-INVITE); a playing prompt continues at the same
        sample in the new encoding."""
        if isinstance(codec, Codec):
            name = codec.name.upper()
            pt = codec.payload_type if payload_type is None else payload_type
            if codec.clock_rate != 8000:
                raise ValueError(f"codec {codec.name}/{codec.clock_rate} is not 8 kHz")
        else:
            name = codec.upper()
            pt = _STATIC_PT.get(name, -1) if payload_type is None else payload_type
        if name not in _STATIC_PT:
            raise ValueError(f"unsupported codec {name!r} (PCMU or PCMA)")
        if not 0 <= pt <= 127:
            raise ValueError(f"bad payload type {pt}")
        self._codec = name
        self._pt = pt
        if self._current is not None:
            self._data = self._current.prompt.encoded(name, self.frame_samples)

    def play(
        self,
        prompt: Prompt,
        *,
        loop: bool = False,
        stop_on_dtmf: bool = False,
        on_done: DoneCallback | None = None,
    ) -> PlaybackHandle:
        """Queue ``prompt`` after whatever is playing or queued and return its handle.

        ``loop``: repeat until stopped (a looping prompt holds the queue behind it until it
        is stopped). ``stop_on_dtmf``: :meth:`dtmf_received` stops it (barge-in).
        ``on_done``: shorthand for :meth:`PlaybackHandle.add_done_callback`.
        """
        if self._closed:
            raise RuntimeError("player is closed")
        handle = PlaybackHandle(self, prompt, loop, stop_on_dtmf)
        if on_done is not None:
            handle.add_done_callback(on_done)
        prompt.encoded(self._codec, self.frame_samples)  # encode now, not in the tick
        self._queue.append(handle)
        self._attach()
        return handle

    def stop(self) -> list[PlaybackHandle]:
        """Stop the current prompt and empty the queue (reason ``stopped``); returns the
        handles stopped."""
        return self._stop_where(lambda h: True, DoneReason.STOPPED, None)

    def dtmf_received(self, digit: str | None = None) -> list[PlaybackHandle]:
        """Barge-in: stop the current and queued prompts that were played with
        ``stop_on_dtmf`` (reason ``barge-in``, ``digit`` recorded on them); others play on.
        Returns the handles stopped."""
        return self._stop_where(lambda h: h.stop_on_dtmf, DoneReason.BARGE_IN, digit)

    def close(self) -> None:
        """Stop everything and leave the clock; the player cannot be used again."""
        self._closed = True
        self.stop()
        self._detach()

    # -- clock stream --------------------------------------------------------------------
    def tick(self, n: int) -> None:
        """Send the packet of clock frame ``n`` (called by the clock, once per frame)."""
        last = self._last_frame
        if n == last:
            return  # this frame was sent already (e.g. re-added in a later clock phase)
        handle = self._current
        if handle is None:
            handle = self._next_prompt()
            if handle is None:
                self._idle += 1
                if self._idle > self.linger:
                    self._detach()
                return
        self._idle = 0
        fs = self.frame_samples
        if self._ts_offset is None:
            self._ts_offset = self._first_ts - n * fs
        elif last is not None and n <= last:
            # the frame count went back (another clock): keep the timestamp moving forward
            self._ts_offset = self._last_ts + fs - n * fs
        ts = (self._ts_offset + n * fs) & 0xFFFFFFFF
        marker = last is None or n != last + 1  # first packet after silence (RFC 3551 4.1)
        pos = self._pos
        payload = self._data[pos : pos + fs]
        seq = self._seq
        packet = _HEADER.pack(0x80, (self._pt | 0x80) if marker else self._pt, seq, ts, self.ssrc)
        self._seq = (seq + 1) & 0xFFFF
        self._last_frame = n
        self._last_ts = ts
        self.packets_sent += 1
        self.octets_sent += len(payload)
        handle.frames_sent += 1
        pos += fs
        try:
            self._send(packet + payload)
        except Exception:
            self.send_errors += 1
            if self.send_errors == 1:
                logger.exception("player %r: send failed", self)
        if pos < len(self._data):
            self._pos = pos
            return
        self._pos = 0
        if handle.loop:
            handle.loops += 1
            return
        self._current = None
        handle._complete(DoneReason.FINISHED)

    # -- internals -----------------------------------------------------------------------
    def _next_prompt(self) -> PlaybackHandle | None:
        while self._queue:
            handle = self._queue.popleft()
            data = handle.prompt.encoded(self._codec, self.frame_samples)
            if data:
                self._current = handle
                self._data = data
                self._pos = 0
                return handle
            handle._complete(DoneReason.FINISHED)  # an empty prompt ends at once
        return None

    def _stop_handle(self, handle: PlaybackHandle) -> None:
        self._stop_where(lambda h: h is handle, DoneReason.STOPPED, None)

    def _stop_where(
        self, match: Callable[[PlaybackHandle], bool], reason: DoneReason, digit: str | None
    ) -> list[PlaybackHandle]:
        stopped: list[PlaybackHandle] = []
        current = self._current
        if current is not None and match(current):
            stopped.append(current)
            self._current = None
            self._data = b""
            self._pos = 0
        kept: deque[PlaybackHandle] = deque()
        for handle in self._queue:
            (stopped if match(handle) else kept).append(handle)
        self._queue = kept
        # state is consistent before any callback runs (callbacks may play() again)
        for handle in stopped:
            handle._complete(reason, digit)
        return stopped

    def _attach(self) -> None:
        self._idle = 0
        if self._attached:
            return
        if self._clock is None and self._clock_spec == "shared":
            self._clock = shared_clock()
        if self._clock is not None:
            self._clock.add(self)
            self._attached = True

    def _detach(self) -> None:
        if self._attached and self._clock is not None:
            self._clock.remove(self)
        self._attached = False
