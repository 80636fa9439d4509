"""Concurrency and call-rate limits with a bounded, fair wait.

A :class:`Limiter` guards one key (a tenant, an account, a trunk): a permit holds one of
``max_concurrent`` slots until released, and taking it also spends one token of a token
bucket refilled at ``cps`` per second (holding at most ``burst``). A request that cannot be
served at once joins a FIFO queue of at most ``queue_size`` waiters and waits up to its
``max_wait``; that bound matters because a caller is usually holding a SIP transaction open
and would rather answer 503 than stall.

:class:`Limits` is the registry of limiters by key and takes several at once, all or
nothing, for a call that counts against e.g. both its tenant and its trunk.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

from switch.clock import Clock, SystemClock

__all__ = ["LimitExceeded", "Limiter", "Limits", "Permit"]

# Virtual and real timestamps near 1.8e9 carry ~2.4e-7 s of float error; a token due within
# this much is treated as available so pacing does not stall on rounding.
_EPSILON = 1e-6

Reason = Literal["queue_full", "timeout"]


class LimitExceeded(Exception):
    """A permit could not be had: the wait queue was full, or ``max_wait`` ran out."""

    def __init__(self, key: str, reason: Reason, waited: float) -> None:
        super().__init__(f"limit {key!r}: {reason} after {waited:.3f}s")
        self.key = key
        self.reason: Reason = reason
        self.waited = waited


class Permit:
    """Proof of admission; call :meth:`release` (idempotent) or use ``async with``.

    ``waited`` is how long the acquire waited, in seconds.
    """

    def __init__(self, waited: float, releases: Sequence[Callable[[], None]] = ()) -> None:
        self.waited = waited
        self._releases = list(releases)

    @property
    def released(self) -> bool:
        """Whether :meth:`release` has run."""
        return not self._releases

    def release(self) -> None:
        """Give back every slot this permit holds; later calls do nothing."""
        releases, self._releases = self._releases, []
        for release in reversed(releases):
            release()

    async def __aenter__(self) -> Permit:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


@dataclass(eq=False)
class _Waiter:
    future: asyncio.Future[None]
    since: float


class Limiter:
    """One concurrency cap plus one token-bucket rate, with a FIFO wait queue.

    ``max_concurrent=None`` means no cap on slots, ``cps=None`` no rate limit.
    """

    def __init__(
        self,
        key: str,
        *,
        max_concurrent: int | None = None,
        cps: float | None = None,
        burst: int = 1,
        queue_size: int = 100,
        clock: Clock | None = None,
    ) -> None:
        if max_concurrent is not None and (
            isinstance(max_concurrent, bool) or not isinstance(max_concurrent, int)
            or max_concurrent < 1
        ):
            raise ValueError(f"{key}.max_concurrent: must be an integer >= 1")
        if cps is not None and (isinstance(cps, bool) or not isinstance(cps, int | float)
                                or not cps > 0):
            raise ValueError(f"{key}.cps: must be a number > 0")
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise ValueError(f"{key}.burst: must be an integer >= 1")
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 0:
            raise ValueError(f"{key}.queue_size: must be an integer >= 0")
        self.key = key
        self.max_concurrent = max_concurrent
        self.cps = float(cps) if cps is not None else None
        self.burst = burst
        self.queue_size = queue_size
        self._clock: Clock = clock or SystemClock()
        self._active = 0
        self._queue: deque[_Waiter] = deque()
        # The bucket as GCRA: `_tat` is the theoretical arrival time of the next request at
        # the steady rate; a request may go `(burst - 1)` intervals ahead of it. Starting in
        # the past means the bucket starts full.
        self._tat = float("-inf")
        self._timer: asyncio.Task[None] | None = None

    @property
    def active(self) -> int:
        """Permits currently held."""
        return self._active

    @property
    def waiting(self) -> int:
        """Requests queued for a permit."""
        return sum(1 for w in self._queue if not w.future.done())

    async def acquire(self, max_wait: float = 0.0) -> Permit:
        """Take a slot and a rate token, waiting at most ``max_wait`` seconds in FIFO order.

        Raises :class:`LimitExceeded` with reason ``"queue_full"`` when the queue is full and
        ``"timeout"`` when the wait ran out (at once when ``max_wait <= 0``).
        """
        start = self._clock.now()
        if not self._queue and self._can_take(start):
            self._take(start)
            return self._permit(0.0)
        if max_wait <= 0:
            raise LimitExceeded(self.key, "timeout", 0.0)
        if self.waiting >= self.queue_size:
            raise LimitExceeded(self.key, "queue_full", 0.0)

        waiter = _Waiter(asyncio.get_running_loop().create_future(), start)
        self._queue.append(waiter)
        self._pump()
        deadline = asyncio.ensure_future(self._clock.sleep(max_wait))
        try:
            await asyncio.wait({waiter.future, deadline}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            deadline.cancel()
            self._abandon(waiter)
            raise
        deadline.cancel()
        waited = max(0.0, self._clock.now() - start)
        if waiter.future.done() and not waiter.future.cancelled():
            return self._permit(waited)
        self._abandon(waiter)
        raise LimitExceeded(self.key, "timeout", waited)

    def _permit(self, waited: float) -> Permit:
        return Permit(waited, [self._release])

    def _can_take(self, now: float) -> bool:
        if self.max_concurrent is not None and self._active >= self.max_concurrent:
            return False
        return self._next_token_at() <= now + _EPSILON

    def _next_token_at(self) -> float:
        if self.cps is None:
            return float("-inf")
        return self._tat - (self.burst - 1) / self.cps

    def _take(self, now: float) -> None:
        self._active += 1
        if self.cps is not None:
            self._tat = max(self._tat, now) + 1.0 / self.cps

    def _release(self) -> None:
        self._active -= 1
        self._pump()

    def _abandon(self, waiter: _Waiter) -> None:
        """Take a waiter that gave up out of the queue, undoing a grant it never saw."""
        if waiter.future.done() and not waiter.future.cancelled():
            # Granted in the same loop turn as the cancel/timeout: the slot goes back (the
            # rate token stays spent, which only errs on the safe side).
            self._release()
        else:
            waiter.future.cancel()
        with contextlib.suppress(ValueError):
            self._queue.remove(waiter)
        self._pump()

    def _pump(self) -> None:
        """Serve waiters from the head of the queue while both a slot and a token are free."""
        now = self._clock.now()
        while self._queue:
            head = self._queue[0]
            if head.future.done():
                self._queue.popleft()
                continue
            if self.max_concurrent is not None and self._active >= self.max_concurrent:
                return  # the next release pumps again
            token_at = self._next_token_at()
            if token_at > now + _EPSILON:
                self._arm_timer(token_at - now)
                return
            self._queue.popleft()
            self._take(now)
            head.future.set_result(None)

    def _arm_timer(self, delay: float) -> None:
        # One timer is enough: the next token time only moves when a token is taken, and
        # while anyone waits tokens are only taken here.
        if self._timer is not None and not self._timer.done():
            return
        self._timer = asyncio.ensure_future(self._tick(delay))

    async def _tick(self, delay: float) -> None:
        await self._clock.sleep(delay)
        self._timer = None
        self._pump()


class Limits:
    """Limiters by key (``"tenant:acme"``, ``"trunk:pstn"``, ...).

    ``config`` maps each key to ``{"max_concurrent", "cps", "burst", "queue_size"}`` (all
    optional). Keys without a limiter are unlimited.
    """

    _FIELDS = frozenset({"max_concurrent", "cps", "burst", "queue_size"})

    def __init__(
        self,
        config: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        clock: Clock | None = None,
    ) -> None:
        self._clock: Clock = clock or SystemClock()
        self._limiters: dict[str, Limiter] = {}
        for key, spec in (config or {}).items():
            self.configure(key, spec)

    def configure(self, key: str, spec: Mapping[str, Any]) -> Limiter:
        """Add (or replace) the limiter for ``key``; ValueError on a bad spec.

        A replaced limiter keeps serving the permits and waiters it already has.
        """
        if not isinstance(spec, Mapping):
            raise ValueError(f"limits.{key}: expected a table")
        unknown = sorted(str(k) for k in spec if k not in self._FIELDS)
        if unknown:
            raise ValueError(f"limits.{key}: unknown key(s) {', '.join(unknown)}")
        try:
            limiter = Limiter(key, clock=self._clock, **dict(spec))
        except ValueError as exc:
            raise ValueError(f"limits.{exc}") from exc
        self._limiters[key] = limiter
        return limiter

    def get(self, key: str) -> Limiter | None:
        """The limiter for ``key``, if one is configured."""
        return self._limiters.get(key)

    async def acquire(self, keys: Sequence[str], max_wait: float = 0.0) -> Permit:
        """Take a permit from every configured limiter in ``keys``, all or nothing.

        ``max_wait`` bounds the total wait across all of them. On failure the permits already
        taken are released and :class:`LimitExceeded` (naming the key that failed, with the
        total time waited) is raised. The returned permit releases them all.
        """
        # A fixed order, so two callers needing the same keys queue in the same order
        # instead of each holding one and waiting for the other.
        limiters = [self._limiters[k] for k in sorted(set(keys)) if k in self._limiters]
        taken: list[Permit] = []
        waited = 0.0
        try:
            for limiter in limiters:
                try:
                    permit = await limiter.acquire(max(0.0, max_wait - waited))
                except LimitExceeded as exc:
                    raise LimitExceeded(exc.key, exc.reason, waited + exc.waited) from None
                taken.append(permit)
                waited += permit.waited
        except BaseException:
            for permit in reversed(taken):
                permit.release()
            raise
        return Permit(waited, [p.release for p in taken])

    def snapshot(self) -> dict[str, dict[str, int]]:
        """``{key: {"active": n, "waiting": n}}`` for metrics."""
        return {
            key: {"active": lim.active, "waiting": lim.waiting}
            for key, lim in sorted(self._limiters.items())
        }
