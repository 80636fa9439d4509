"""Injectable wall-clock time for the control plane (scheduler, limits, service hours).

Everything that waits on the wall clock takes a :class:`Clock`, so tests can drive time with a
:class:`VirtualClock` instead of sleeping for real. This is the slow, seconds-scale clock of
the call-control side; the 20 ms media tick lives in :mod:`media.clock`.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol

__all__ = ["Clock", "SystemClock", "VirtualClock"]


class Clock(Protocol):
    """A source of wall-clock time and a way to wait for it to pass."""

    def now(self) -> float:
        """Current time in unix seconds."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait until ``seconds`` have passed on this clock."""
        ...


class SystemClock:
    """The real clock: :func:`time.time` and :func:`asyncio.sleep`."""

    def now(self) -> float:
        """Current unix time."""
        return time.time()

    async def sleep(self, seconds: float) -> None:
        """Sleep on the event loop (``seconds <= 0`` just yields once)."""
        await asyncio.sleep(max(0.0, seconds))


class VirtualClock:
    """A clock for tests: time stands still until :meth:`advance` moves it.

    :meth:`sleep` parks the caller until ``advance`` carries time past its deadline.
    ``advance`` steps through the pending deadlines in order, setting the time to each one and
    letting the woken tasks run (it yields to the event loop ``settle`` times per step), so a
    task that wakes and sleeps again within the advanced span is woken again in the same call,
    exactly as it would be with real time.
    """

    def __init__(self, start: float = 1_800_000_000.0, *, settle: int = 50) -> None:
        self._now = float(start)
        self._settle = settle
        # (deadline, sequence, future): the sequence keeps equal deadlines in FIFO order and
        # stops heapq from ever comparing futures.
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        """The virtual time in unix seconds."""
        return self._now

    @property
    def pending(self) -> int:
        """How many sleepers are parked (cancelled ones excluded)."""
        return sum(1 for _, _, fut in self._sleepers if not fut.done())

    async def sleep(self, seconds: float) -> None:
        """Park until virtual time reaches ``now + seconds``; ``seconds <= 0`` yields once."""
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._seq), fut))
        # A cancelled sleep cancels the future; advance() skips done futures.
        await fut

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, waking every sleeper whose deadline is passed.

        Deadlines are visited in order; at each one the time is set to that deadline before
        the sleepers are woken and given a chance to run. ``advance(0)`` just lets ready tasks
        run and wakes sleepers already due.
        """
        if seconds < 0:
            raise ValueError("cannot move a clock backwards")
        target = self._now + seconds
        await self._yield()
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, fut = heapq.heappop(self._sleepers)
            if fut.done():
                continue
            self._now = max(self._now, deadline)
            fut.set_result(None)
            # Wake everyone else due at this same instant before letting tasks run.
            while self._sleepers and self._sleepers[0][0] <= self._now:
                _, _, other = heapq.heappop(self._sleepers)
                if not other.done():
                    other.set_result(None)
            await self._yield()
        self._now = max(self._now, target)
        await self._yield()

    async def _yield(self) -> None:
        for _ in range(self._settle):
            await asyncio.sleep(0)
