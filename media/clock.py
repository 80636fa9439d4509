"""One shared media clock: a single timer drives every timed media stream.

Per-stream timers do not scale: at 1000 streams, one ``call_later`` chain per stream measured
a p99 lateness of 15-21 ms, while one shared 20 ms tick serving all of them stayed around
2 ms. So every player (anything with a ``tick(n)`` method) registers with a
:class:`MediaClock`, and one chain of ``loop.call_at`` callbacks calls them all in turn.

Drift correction: frame ``n`` is due at the absolute time ``epoch + n * interval``, so a late
wake-up never shifts later frames. If a wake-up finds several frames due (the loop was
blocked), the streams get one ``tick`` per due frame, oldest first, in the same callback, so
they catch up instead of falling behind for good; at most ``max_burst`` frames are run in
one wake-up and older ones are skipped (counted in :attr:`ClockStats.skipped_frames`), so a
long stall does not end in a flood of stale packets. Streams see a skip as a jump in ``n``.

Phase slots: sending a frame for hundreds of streams takes milliseconds, and the streams at
the end of the burst inherit every variation in how long the burst took. With ``slots=K``
the interval is divided into K phases ``interval / K`` apart; a stream is pinned to one
phase when added (filling phase 0 up to ``slot_capacity`` streams, then the next, then the
least loaded), and each phase is run at its own absolute due time by the same timer chain.
Small loads stay on one wake-up per interval (empty phases are not woken for); large loads
are spread so that no burst holds more than about ``slot_capacity`` streams.

Frame ``n`` is always due ``n`` intervals after the clock first started, so ``n`` measures
time. The timer runs only while there are streams: it stops when the last one is removed and
restarts on the next :meth:`MediaClock.add` at the first frame not yet past (streams see the
idle spell as a jump in ``n``).

Time comes from an injectable scheduler (``time()`` and ``call_at()``, as on an asyncio
event loop), so tests drive the clock with a fake one.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "DEFAULT_INTERVAL",
    "DEFAULT_SLOTS",
    "DEFAULT_SLOT_CAPACITY",
    "ClockStats",
    "ClockStream",
    "MediaClock",
    "Scheduler",
    "TimerHandle",
    "shared_clock",
]

logger = logging.getLogger(__name__)

#: 20 ms: the RTP packetisation time used for G.711 (160 samples at 8 kHz).
DEFAULT_INTERVAL = 0.020
#: Phases per interval of :func:`shared_clock` (5 ms apart at 20 ms).
DEFAULT_SLOTS = 4
#: Streams per phase before the next phase is used.
DEFAULT_SLOT_CAPACITY = 100


class TimerHandle(Protocol):
    """What :meth:`Scheduler.call_at` returns (``asyncio.TimerHandle`` fits)."""

    def cancel(self) -> None:
        """Cancel the call."""


class Scheduler(Protocol):
    """Time source and timer: an asyncio event loop, or a fake one in tests."""

    def time(self) -> float:
        """Current time in seconds (monotonic)."""

    def call_at(self, when: float, callback: Callable[[], object], /) -> TimerHandle:
        """Call ``callback`` at ``when`` (same scale as :meth:`time`)."""


class ClockStream(Protocol):
    """Anything the clock drives: ``tick(n)`` is called once per frame, ``n`` being the
    clock's frame index (it increases by one per interval; a jump means frames were
    skipped or the stream was idle)."""

    def tick(self, n: int) -> None:
        """Produce frame ``n`` (e.g. send one RTP packet)."""


@dataclass(slots=True)
class ClockStats:
    """Counters of a :class:`MediaClock`."""

    #: timer callbacks that ran at least one phase
    wakeups: int = 0
    #: phase runs: one per frame for each phase that has streams (= frames with one phase)
    frames: int = 0
    #: wake-ups that ran more than one interval (``interval / slots``) behind time
    late_wakeups: int = 0
    #: phase runs dropped because more than ``max_burst`` frames were due at once
    skipped_frames: int = 0
    #: worst lateness of a wake-up behind its phase's due time, seconds
    max_lateness: float = 0.0
    #: time spent inside ``tick`` calls, seconds (``time.perf_counter``)
    busy: float = 0.0
    #: longest single wake-up, seconds
    max_busy: float = 0.0
    #: streams removed because their ``tick`` raised
    stream_errors: int = 0


class MediaClock:
    """A shared frame clock: calls ``tick(n)`` on every added stream once per ``interval``.

    ``loop`` is the scheduler (default: the running asyncio loop, taken on the first
    :meth:`add`). ``max_burst`` bounds the frames run in one wake-up when catching up.
    ``slots``/``slot_capacity`` spread large numbers of streams over phases of the interval
    (see the module docstring; ``slots=1`` runs every stream at the frame's start).
    ``early`` is how early (seconds) a wake-up may run a phase, to absorb timers with
    millisecond resolution (uvloop) that fire slightly before their time.
    """

    def __init__(
        self,
        interval: float = DEFAULT_INTERVAL,
        *,
        loop: Scheduler | None = None,
        max_burst: int = 5,
        slots: int = 1,
        slot_capacity: int = DEFAULT_SLOT_CAPACITY,
        early: float = 0.001,
    ) -> None:
        if not interval > 0:
            raise ValueError("interval must be positive")
        if max_burst < 1:
            raise ValueError("max_burst must be >= 1")
        if slots < 1 or slot_capacity < 1:
            raise ValueError("slots and slot_capacity must be >= 1")
        self.interval = float(interval)
        self.max_burst = max_burst
        self.slots = slots
        self.slot_capacity = slot_capacity
        self._step = self.interval / slots  # seconds between phases
        self._early = min(max(early, 0.0), self._step / 2) / self._step  # in steps
        self._loop = loop
        self._members: list[dict[ClockStream, None]] = [{} for _ in range(slots)]
        self._slot_of: dict[ClockStream, int] = {}
        self._handle: TimerHandle | None = None
        self._epoch_time = 0.0  # due time of frame 0
        self._started = False
        self._next = 0  # first step (frame * slots + phase) not yet run
        self._removed = False  # a stream was removed during the current phase run
        self._closed = False
        self.stats = ClockStats()

    # -- public API ----------------------------------------------------------------------
    def add(self, stream: ClockStream) -> None:
        """Start ticking ``stream`` from its next due phase (idempotent); starts the timer.

        Without an explicit scheduler this must be called with an asyncio loop running.
        """
        if self._closed:
            raise RuntimeError("media clock is closed")
        if stream in self._slot_of:
            return
        slot = self._choose_slot()
        self._members[slot][stream] = None
        self._slot_of[stream] = slot
        if self._handle is None:
            self._start()

    def remove(self, stream: ClockStream) -> None:
        """Stop ticking ``stream`` (no-op if absent). Safe to call from inside a ``tick``;
        the timer stops at the next wake-up if no stream is left."""
        slot = self._slot_of.pop(stream, None)
        if slot is not None:
            del self._members[slot][stream]
            self._removed = True

    def __contains__(self, stream: object) -> bool:
        return stream in self._slot_of

    def __len__(self) -> int:
        return len(self._slot_of)

    @property
    def running(self) -> bool:
        """True while the timer is armed."""
        return self._handle is not None

    @property
    def next_frame(self) -> int:
        """Index of the next frame whose phase 0 has not run."""
        return -(-self._next // self.slots)

    def slot_of(self, stream: ClockStream) -> int | None:
        """The phase ``stream`` is pinned to (None if not added)."""
        return self._slot_of.get(stream)

    @property
    def slot_sizes(self) -> list[int]:
        """Number of streams in each phase."""
        return [len(m) for m in self._members]

    def frame_time(self, n: int, slot: int = 0) -> float:
        """Due time of frame ``n`` (of its phase ``slot``) on the scheduler's time scale."""
        return self._epoch_time + n * self.interval + slot * self._step

    def close(self) -> None:
        """Stop the timer and drop every stream; the clock cannot be used again."""
        self._closed = True
        self._slot_of.clear()
        for members in self._members:
            members.clear()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    # -- internals -----------------------------------------------------------------------
    def _choose_slot(self) -> int:
        sizes = [len(m) for m in self._members]
        for slot, size in enumerate(sizes):
            if size < self.slot_capacity:
                return slot
        return sizes.index(min(sizes))

    def _scheduler(self) -> Scheduler:
        if self._loop is None:
            try:
                self._loop = asyncio.get_running_loop()
            except RuntimeError:
                raise RuntimeError(
                    "MediaClock needs a running asyncio loop (or an explicit scheduler)"
                ) from None
        return self._loop

    def _step_time(self, m: int) -> float:
        return self._epoch_time + m * self._step

    def _start(self) -> None:
        loop = self._scheduler()
        now = loop.time()
        if not self._started:
            self._started = True
            self._epoch_time = now
        else:
            # after an idle spell, frame numbers keep counting wall time (a stream sees the
            # idle time as a jump in n); start at the first phase not yet past
            self._next = max(
                self._next, math.ceil((now - self._epoch_time) / self._step - self._early)
            )
        self._arm(loop)

    def _arm(self, loop: Scheduler) -> None:
        """Set the timer for the next step whose phase has streams (none: stay idle)."""
        slots = self.slots
        m = self._next
        for _ in range(slots):
            if self._members[m % slots]:
                self._handle = loop.call_at(self._step_time(m), self._wake)
                return
            m += 1
        self._handle = None

    def _wake(self) -> None:
        self._handle = None
        if self._closed or not self._slot_of:
            return  # idle: the next add() restarts the timer
        loop = self._scheduler()
        now = loop.time()
        stats = self.stats
        slots = self.slots
        due = math.floor((now - self._epoch_time) / self._step + self._early)
        first = self._next
        if due >= first:
            began = time.perf_counter()
            budget = self.max_burst * slots
            if due - first + 1 > budget:
                for m in range(first, due - budget + 1):
                    if self._members[m % slots]:
                        stats.skipped_frames += 1
                first = due - budget + 1
            ran = False
            for m in range(first, due + 1):
                members = self._members[m % slots]
                if not members:
                    continue
                if not ran:
                    ran = True
                    stats.wakeups += 1
                    lateness = now - self._step_time(m)
                    stats.max_lateness = max(stats.max_lateness, lateness)
                    if lateness >= self._step:
                        stats.late_wakeups += 1
                stats.frames += 1
                self._run_phase(m // slots, members)
            self._next = due + 1
            spent = time.perf_counter() - began
            stats.busy += spent
            stats.max_busy = max(stats.max_busy, spent)
        if self._slot_of and not self._closed:
            self._arm(loop)

    def _run_phase(self, n: int, members: dict[ClockStream, None]) -> None:
        self._removed = False
        for stream in tuple(members):
            if self._removed and stream not in members:
                continue  # removed by an earlier stream's tick in this phase
            try:
                stream.tick(n)
            except Exception:
                logger.exception("media stream %r failed in tick(%d); removed", stream, n)
                self.stats.stream_errors += 1
                self.remove(stream)


_shared: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, MediaClock] = (
    weakref.WeakKeyDictionary()
)


def shared_clock() -> MediaClock:
    """The one 20 ms :class:`MediaClock` of the running asyncio loop (``DEFAULT_SLOTS``
    phases of up to ``DEFAULT_SLOT_CAPACITY`` streams), created on first use and again
    after it was closed. Must be called with a loop running."""
    loop = asyncio.get_running_loop()
    clock = _shared.get(loop)
    if clock is None or clock._closed:
        clock = MediaClock(DEFAULT_INTERVAL, loop=loop, slots=DEFAULT_SLOTS)
        _shared[loop] = clock
    return clock
