"""Call recording to a WAV file that stays playable if the process dies mid-call.

A :class:`CallRecorder` writes 8 kHz 16-bit PCM: one channel per leg (``stereo=True``, leg 0
left, leg 1 right) or all legs mixed into one channel. Each leg is fed with decoded samples
(:meth:`~CallRecorder.write`), G.711 payloads (:meth:`~CallRecorder.write_g711`) or whole RTP
packets (:meth:`~CallRecorder.write_rtp`, or :meth:`~CallRecorder.packet_hook` as an
:attr:`media.engine.RtpEndpoint.on_packet` hook).

Timeline: sample ``k`` of the file is ``k / rate`` seconds after the recorder was created.
A chunk is placed by its RTP timestamp when given (exact spacing, so lost packets and
silence suppression leave exact gaps; the first packet of a stream, a new SSRC or a
timestamp that strays more than a second from the arrival time re-anchors the stream at its
arrival time), else by its arrival time, appended to the leg's previous chunk when it
arrives within ``tolerance`` of where that one ended (absorbing network jitter). Whatever
no leg filled is silence, and :meth:`~CallRecorder.close` pads the file to the call's
duration.

Crash safety: audio is kept in memory for ``hold_back`` seconds (to place late, reordered
packets), then written; every ``flush_interval`` seconds (on the next write, or from an
asyncio timer) the RIFF and ``data`` sizes in the header are patched to cover what was
written and the file is flushed to the OS. A process that dies leaves a valid WAV that is
complete up to the last flush.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt

from .g711 import alaw_decode, ulaw_decode
from .rtp import RtpError, split_rtp

__all__ = ["CallRecorder", "RecordingMetadata"]

#: What :meth:`CallRecorder.close` returns (JSON-serialisable).
RecordingMetadata = dict[str, Any]

_HEADER_SIZE = 44
_MAX_DATA = 0xFFFFFFFF - 36  # RIFF sizes are 32-bit
_DEFAULT_PT = {0: "PCMU", 8: "PCMA"}
_DECODERS: dict[str, Callable[[bytes | bytearray | memoryview], npt.NDArray[np.int16]]] = {
    "PCMU": ulaw_decode,
    "PCMA": alaw_decode,
}


def _signed32(x: int) -> int:
    x &= 0xFFFFFFFF
    return x - (1 << 32) if x & 0x80000000 else x


class _Leg:
    __slots__ = ("end", "pos_base", "ssrc", "ts_base")

    def __init__(self) -> None:
        self.end: int | None = None  # timeline position after the latest chunk
        self.ts_base: int | None = None  # RTP timestamp of the latest chunk ...
        self.pos_base = 0  # ... and its timeline position
        self.ssrc: int | None = None


class CallRecorder:
    """Record the legs of a call into the WAV file ``path`` (created or truncated now).

    ``stereo``: one channel per leg (``legs`` of them), else a mono mix. ``clock`` gives the
    time (seconds, monotonic) that ``arrival`` arguments are measured on; it defaults to
    :func:`time.monotonic`, which is also what asyncio's ``loop.time()`` uses. ``autoflush``
    arms an asyncio timer (if a loop is running) so the header is patched every
    ``flush_interval`` seconds even while no audio arrives. ``fsync`` also syncs the file to
    disk at each flush (survives power loss, not only a process crash).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        stereo: bool = True,
        legs: int = 2,
        rate: int = 8000,
        clock: Callable[[], float] = time.monotonic,
        flush_interval: float = 1.0,
        hold_back: float = 0.2,
        tolerance: float = 0.06,
        autoflush: bool = True,
        fsync: bool = False,
    ) -> None:
        if legs < 1:
            raise ValueError("legs must be >= 1")
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.path = Path(path)
        self.stereo = stereo
        self.legs = legs
        self.rate = rate
        self.channels = legs if stereo else 1
        self.flush_interval = flush_interval
        self._clock = clock
        self._hold_back = max(0, round(hold_back * rate))
        self._tolerance = max(0, round(tolerance * rate))
        self._resync = rate  # 1 s: RTP timestamp vs arrival disagreement that re-anchors
        self._max_lead = rate  # a leg may run at most 1 s ahead of its arrival times
        self._fsync = fsync
        self._legs = [_Leg() for _ in range(legs)]
        self._start = clock()
        self._wall_start = time.time()
        self._pending = np.zeros((legs, rate), dtype=np.int16)  # from _committed onwards
        self._pending_len = 0
        self._committed = 0  # frames written to the file
        self._header_frames = -1  # frames the header covers
        self._last_flush = self._start
        self._closed = False
        self._full = False
        self._metadata: RecordingMetadata | None = None
        self._file: BinaryIO = self.path.open("w+b")
        self._file.write(self._header(0))
        self._file.flush()
        self._timer: asyncio.TimerHandle | None = None
        if autoflush:
            try:
                self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
            except RuntimeError:
                self._loop = None
            self._arm_timer()

    def __enter__(self) -> CallRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- feeding -------------------------------------------------------------------------
    def write(
        self,
        leg: int,
        samples: npt.ArrayLike,
        *,
        rtp_timestamp: int | None = None,
        ssrc: int | None = None,
        arrival: float | None = None,
    ) -> None:
        """Add int16 ``samples`` (8 kHz if the recorder's rate is) of ``leg``.

        ``rtp_timestamp``/``ssrc``: place the chunk by its RTP timestamp (see the module
        docstring). ``arrival``: when it arrived, on the recorder's clock (default now).
        Ignored after :meth:`close`.
        """
        if self._closed or self._full:
            return
        if not 0 <= leg < self.legs:
            raise ValueError(f"leg must be 0..{self.legs - 1}")
        chunk = np.asarray(samples)
        if chunk.dtype != np.int16:
            chunk = np.clip(np.rint(chunk), -32768, 32767).astype(np.int16)
        chunk = chunk.reshape(-1)
        now = self._clock()
        t = now if arrival is None else arrival
        self._place(self._legs[leg], leg, chunk, self._position(t), rtp_timestamp, ssrc)
        if now - self._last_flush >= self.flush_interval:
            self.flush()

    def write_g711(
        self,
        leg: int,
        payload: bytes | bytearray | memoryview,
        codec: str = "PCMU",
        *,
        rtp_timestamp: int | None = None,
        ssrc: int | None = None,
        arrival: float | None = None,
    ) -> None:
        """Add a G.711 payload (``codec`` ``"PCMU"`` or ``"PCMA"``) of ``leg``; see
        :meth:`write`."""
        decoder = _DECODERS.get(codec.upper())
        if decoder is None:
            raise ValueError(f"unsupported codec {codec!r} (PCMU or PCMA)")
        self.write(leg, decoder(payload), rtp_timestamp=rtp_timestamp, ssrc=ssrc, arrival=arrival)

    def write_rtp(
        self,
        leg: int,
        packet: bytes | bytearray,
        *,
        arrival: float | None = None,
        payload_types: dict[int, str] | None = None,
    ) -> bool:
        """Add an RTP packet of ``leg``, placed by its timestamp and SSRC.

        ``payload_types`` maps PT to ``"PCMU"``/``"PCMA"`` (default: the static 0 and 8).
        Returns False (and records nothing) for a malformed packet or another payload type,
        e.g. telephone-event.
        """
        try:
            header, payload = split_rtp(packet)
        except RtpError:
            return False
        codec = (payload_types or _DEFAULT_PT).get(header.payload_type)
        if codec is None or codec.upper() not in _DECODERS:
            return False
        self.write_g711(
            leg,
            payload,
            codec,
            rtp_timestamp=header.timestamp,
            ssrc=header.ssrc,
            arrival=arrival,
        )
        return True

    def packet_hook(
        self, leg: int, payload_types: dict[int, str] | None = None
    ) -> Callable[[Any, bytes], None]:
        """A :data:`media.engine.PacketHook` recording what an endpoint receives as ``leg``
        (it returns None, so the relay still forwards every packet)."""

        def hook(_endpoint: Any, data: bytes) -> None:
            self.write_rtp(leg, data, payload_types=payload_types)

        return hook

    # -- state ---------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    @property
    def frames_written(self) -> int:
        """Sample frames in the file so far (covered by the header after a flush)."""
        return self._committed

    @property
    def duration(self) -> float:
        """Seconds of recording: the call so far (or the final length once closed)."""
        if self._closed:
            return self._committed / self.rate
        now = max(self._position(self._clock()), self._committed + self._pending_len)
        return now / self.rate

    def flush(self) -> None:
        """Write what is older than ``hold_back``, patch the header sizes, flush the file."""
        if self._closed:
            return
        self._commit(self._position(self._clock()) - self._hold_back)
        self._patch_header()
        self._last_flush = self._clock()

    def close(self) -> RecordingMetadata:
        """Write everything, padding with silence to the call's duration, finalise the header
        and close the file. Returns the metadata (also on repeated calls): ``path``, ``start``
        (Unix time), ``start_iso``, ``duration`` (s), ``channels``, ``sample_rate``,
        ``frames``, ``bytes``, ``legs``, ``stereo``, ``truncated`` (hit the 4 GB WAV limit).
        """
        if self._metadata is not None:
            return self._metadata
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        end = max(self._position(self._clock()), self._committed + self._pending_len)
        try:
            self._commit(end)
            self._patch_header()
        finally:
            self._closed = True
            self._file.close()
        data_bytes = self._committed * self.channels * 2
        self._metadata = {
            "path": str(self.path),
            "start": self._wall_start,
            "start_iso": dt.datetime.fromtimestamp(self._wall_start, dt.UTC).isoformat(),
            "duration": self._committed / self.rate,
            "channels": self.channels,
            "sample_rate": self.rate,
            "frames": self._committed,
            "bytes": _HEADER_SIZE + data_bytes,
            "legs": self.legs,
            "stereo": self.stereo,
            "truncated": self._full,
        }
        return self._metadata

    # -- internals -----------------------------------------------------------------------
    def _position(self, t: float) -> int:
        return round((t - self._start) * self.rate)

    def _anchor(self, state: _Leg, apos: int) -> int:
        end = state.end
        if end is not None and apos - self._tolerance <= end <= apos + self._max_lead:
            return end  # continues the previous chunk (jitter)
        return apos

    def _place(
        self,
        state: _Leg,
        leg: int,
        chunk: npt.NDArray[np.int16],
        apos: int,
        rtp_timestamp: int | None,
        ssrc: int | None,
    ) -> None:
        if rtp_timestamp is None:
            pos = self._anchor(state, apos)
        else:
            if state.ts_base is None or ssrc != state.ssrc:
                pos = self._anchor(state, apos)
            else:
                pos = state.pos_base + _signed32(rtp_timestamp - state.ts_base)
                if abs(pos - apos) > self._resync:
                    pos = self._anchor(state, apos)
            state.ts_base = rtp_timestamp & 0xFFFFFFFF
            state.pos_base = pos
            state.ssrc = ssrc
        n = chunk.size
        state.end = pos + n if state.end is None else max(state.end, pos + n)
        offset = pos - self._committed
        if offset < 0:  # too late: that part of the file is written already
            chunk = chunk[-offset:]
            offset = 0
        if chunk.size == 0:
            return
        stop = offset + chunk.size
        if stop > self._pending.shape[1]:
            grown = np.zeros((self.legs, max(stop, 2 * self._pending.shape[1])), np.int16)
            grown[:, : self._pending_len] = self._pending[:, : self._pending_len]
            self._pending = grown
        self._pending[leg, offset:stop] = chunk
        self._pending_len = max(self._pending_len, stop)

    def _commit(self, upto: int) -> None:
        frames = upto - self._committed
        if frames <= 0 or self._full:
            return
        block_size = self.channels * 2
        room = (_MAX_DATA - self._committed * block_size) // block_size
        if frames > room:
            frames = room  # 32-bit RIFF sizes: stop here and ignore the rest of the call
            self._full = True
        if self._pending.shape[1] < frames:
            grown = np.zeros((self.legs, frames), np.int16)
            grown[:, : self._pending_len] = self._pending[:, : self._pending_len]
            self._pending = grown
        block = self._pending[:, :frames]
        if self.stereo:
            out = block.T
        else:
            out = np.clip(block.astype(np.int32).sum(axis=0), -32768, 32767)
        self._file.seek(_HEADER_SIZE + self._committed * block_size)
        self._file.write(np.ascontiguousarray(out, dtype="<i2").tobytes())
        rest = max(0, self._pending_len - frames)
        fresh = np.zeros_like(self._pending)
        fresh[:, :rest] = self._pending[:, frames : frames + rest]
        self._pending = fresh
        self._pending_len = rest
        self._committed += frames

    def _patch_header(self) -> None:
        if self._header_frames != self._committed:
            self._header_frames = self._committed
            self._file.seek(0)
            self._file.write(self._header(self._committed * self.channels * 2))
            self._file.seek(0, os.SEEK_END)
        self._file.flush()
        if self._fsync:
            os.fsync(self._file.fileno())

    def _header(self, data_bytes: int) -> bytes:
        block = self.channels * 2
        return struct.pack(
            "<4sI4s4sIHHIIHH4sI",
            b"RIFF",
            36 + data_bytes,
            b"WAVE",
            b"fmt ",
            16,
            1,
            self.channels,
            self.rate,
            self.rate * block,
            block,
            16,
            b"data",
            data_bytes,
        )

    def _arm_timer(self) -> None:
        if self._loop is not None and not self._closed and not self._loop.is_closed():
            self._timer = self._loop.call_later(self.flush_interval, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._closed:
            return
        if self._clock() - self._last_flush >= self.flush_interval * 0.5:
            self.flush()
        self._arm_timer()
