"""Concurrency and rate limits on a virtual clock (nothing sleeps for real)."""

from __future__ import annotations

import asyncio

import pytest

from switch.clock import VirtualClock
from switch.limits import Limiter, LimitExceeded, Limits, Permit

T0 = 1_800_000_000.0


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(T0)


def spawn(limiter: Limiter, max_wait: float) -> asyncio.Task[Permit]:
    return asyncio.ensure_future(limiter.acquire(max_wait))


# -- concurrency ---------------------------------------------------------------------------


async def test_concurrency_cap_immediate_failure(clock: VirtualClock) -> None:
    lim = Limiter("trunk:pstn", max_concurrent=2, clock=clock)
    a = await lim.acquire()
    b = await lim.acquire()
    assert lim.active == 2
    with pytest.raises(LimitExceeded) as info:
        await lim.acquire()
    assert (info.value.reason, info.value.key, info.value.waited) == ("timeout", "trunk:pstn", 0)
    a.release()
    a.release()  # idempotent: must not free a second slot
    assert lim.active == 1
    c = await lim.acquire()
    assert lim.active == 2
    with pytest.raises(LimitExceeded):
        await lim.acquire()
    b.release()
    c.release()
    assert lim.active == 0


async def test_waiter_gets_slot_on_release_and_reports_wait(clock: VirtualClock) -> None:
    lim = Limiter("k", max_concurrent=1, clock=clock)
    held = await lim.acquire()
    task = spawn(lim, 10.0)
    await clock.advance(3.0)
    assert not task.done()
    assert lim.waiting == 1
    held.release()
    await clock.advance(0)
    permit = task.result()
    assert permit.waited == pytest.approx(3.0)
    assert (lim.active, lim.waiting) == (1, 0)


async def test_async_context_manager_releases(clock: VirtualClock) -> None:
    lim = Limiter("k", max_concurrent=1, clock=clock)
    async with await lim.acquire() as permit:
        assert lim.active == 1
        assert not permit.released
    assert lim.active == 0
    assert permit.released


# -- rate ------------------------------------------------------------------------------------


async def test_cps_pacing(clock: VirtualClock) -> None:
    lim = Limiter("k", cps=5, clock=clock)
    done_at: list[float] = []

    async def one() -> None:
        await lim.acquire(max_wait=10)
        done_at.append(clock.now() - T0)

    tasks = [asyncio.ensure_future(one()) for _ in range(6)]
    await clock.advance(0)
    assert done_at == [0.0]
    await clock.advance(0.19)
    assert len(done_at) == 1  # not a moment early
    await clock.advance(2.0)
    assert done_at == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0], abs=1e-5)
    await asyncio.gather(*tasks)
    assert lim.active == 6  # cps alone does not cap concurrency


async def test_cps_burst_then_steady(clock: VirtualClock) -> None:
    lim = Limiter("k", cps=2, burst=3, clock=clock)
    for _ in range(3):
        await lim.acquire()  # the bucket starts full
    with pytest.raises(LimitExceeded):
        await lim.acquire()
    await clock.advance(0.5)
    await lim.acquire()
    with pytest.raises(LimitExceeded):
        await lim.acquire()
    # Idle refills up to the burst and no further.
    await clock.advance(100)
    for _ in range(3):
        await lim.acquire()
    with pytest.raises(LimitExceeded):
        await lim.acquire()


async def test_concurrency_and_rate_together(clock: VirtualClock) -> None:
    lim = Limiter("k", max_concurrent=1, cps=1, clock=clock)
    first = await lim.acquire()
    task = spawn(lim, 10)
    # The slot is freed at once but the token only comes back after one second.
    first.release()
    await clock.advance(0.5)
    assert not task.done()
    await clock.advance(0.5)
    assert task.done()
    assert task.result().waited == pytest.approx(1.0)


# -- fairness, bounds, cancellation -----------------------------------------------------------


async def test_fifo_order(clock: VirtualClock) -> None:
    lim = Limiter("k", max_concurrent=1, clock=clock)
    held = await lim.acquire()
    order: list[int] = []

    async def one(i: int) -> None:
        permit = await lim.acquire(max_wait=60)
        order.append(i)
        await clock.sleep(1)
        permit.release()

    tasks = []
    for i in range(5):
        tasks.append(asyncio.ensure_future(one(i)))
        await clock.advance(0)  # queue them in a known order
    held.release()
    await clock.advance(10)
    assert order == [0, 1, 2, 3, 4]
    await asyncio.gather(*tasks)


async def test_newcomer_does_not_jump_the_queue(clock: VirtualClock) -> None:
    lim = Limiter("k", cps=1, clock=clock)
    await lim.acquire()
    newcomer_result: list[str] = []

    async def newcomer() -> None:
        # Wakes at t=1.0 just before the limiter's own timer: the token is there, but it
        # belongs to the request already queued.
        await clock.sleep(1.0)
        try:
            await lim.acquire()
            newcomer_result.append("granted")
        except LimitExceeded as exc:
            newcomer_result.append(exc.reason)

    late = asyncio.ensure_future(newcomer())
    await clock.advance(0)
    waiter = spawn(lim, 5)
    await clock.advance(1.0)
    await late
    assert newcomer_result == ["timeout"]
    assert waiter.done()
    assert waiter.result().waited == pytest.approx(1.0)


async def test_timeout(clock: VirtualClock) -> None:
    lim = Limiter("k", max_concurrent=1, clock=clock)
    held = await lim.acquire()
    task = spawn(lim, 2.5)
    await clock.advance(2.4)
    assert not task.done()
    await clock.advance(0.2)
    assert task.done()
    exc = task.exception()
    assert isinstance(exc, LimitExceeded)
    assert exc.reason == "timeout"
    assert exc.waited == pytest.approx(2.5)
    assert lim.waiting == 0
    held.release()
    assert lim.active == 0


async def test_queue_full(clock: VirtualClock) -> None:
    lim = Limiter("k", max_concurrent=1, queue_size=2, clock=clock)
    held = await lim.acquire()
    waiters = [spawn(lim, 10), spawn(lim, 10)]
    await clock.advance(0)
    assert lim.waiting == 2
    with pytest.raises(LimitExceeded) as info:
        await lim.acquire(max_wait=10)
    assert info.value.reason == "queue_full"
    held.release()
    await clock.advance(0)
    assert waiters[0].done() and not waiters[1].done()
    waiters[0].result().release()
    await clock.advance(0)
    waiters[1].result().release()


async def test_cancelled_waiter_leaves_queue_cleanly(clock: VirtualClock) -> None:
    lim = Limiter("k", max_concurrent=1, clock=clock)
    held = await lim.acquire()
    first = spawn(lim, 60)
    second = spawn(lim, 60)
    await clock.advance(0)
    assert lim.waiting == 2
    first.cancel()
    await clock.advance(0)
    assert first.cancelled()
    assert lim.waiting == 1
    held.release()
    await clock.advance(0)
    # The slot went to the second waiter, not to the cancelled one.
    assert second.done()
    assert lim.active == 1
    second.result().release()
    assert lim.active == 0


async def test_cancel_after_grant_returns_the_slot(clock: VirtualClock) -> None:
    lim = Limiter("k", max_concurrent=1, clock=clock)
    held = await lim.acquire()
    task = spawn(lim, 60)
    await clock.advance(0)
    held.release()  # grants the waiter synchronously...
    task.cancel()  # ...which is cancelled before it ever runs again
    await clock.advance(0)
    assert task.cancelled()
    assert lim.active == 0
    await lim.acquire()


def test_bad_limiter_config() -> None:
    with pytest.raises(ValueError, match="max_concurrent"):
        Limiter("k", max_concurrent=0)
    with pytest.raises(ValueError, match="cps"):
        Limiter("k", cps=0)
    with pytest.raises(ValueError, match="burst"):
        Limiter("k", burst=0)
    with pytest.raises(ValueError, match=r"limits\.tenant:acme: unknown key\(s\) cpz"):
        Limits({"tenant:acme": {"cpz": 5}})
    with pytest.raises(ValueError, match=r"limits\.tenant:acme\.cps"):
        Limits({"tenant:acme": {"cps": "fast"}})


# -- registry --------------------------------------------------------------------------------


async def test_limits_unknown_keys_are_unlimited(clock: VirtualClock) -> None:
    limits = Limits({"trunk:pstn": {"max_concurrent": 1}}, clock=clock)
    permits = [await limits.acquire(["tenant:nobody"]) for _ in range(100)]
    assert len(permits) == 100
    assert limits.snapshot() == {"trunk:pstn": {"active": 0, "waiting": 0}}


async def test_limits_all_or_nothing(clock: VirtualClock) -> None:
    limits = Limits(
        {"tenant:acme": {"max_concurrent": 5}, "trunk:pstn": {"max_concurrent": 1}},
        clock=clock,
    )
    held = await limits.acquire(["trunk:pstn"])
    with pytest.raises(LimitExceeded) as info:
        await limits.acquire(["tenant:acme", "trunk:pstn"])
    assert info.value.key == "trunk:pstn"
    # The tenant slot taken first was given back.
    assert limits.snapshot()["tenant:acme"]["active"] == 0
    held.release()
    both = await limits.acquire(["trunk:pstn", "tenant:acme"])
    assert limits.snapshot() == {
        "tenant:acme": {"active": 1, "waiting": 0},
        "trunk:pstn": {"active": 1, "waiting": 0},
    }
    both.release()
    both.release()
    assert limits.snapshot()["tenant:acme"]["active"] == 0
    assert limits.snapshot()["trunk:pstn"]["active"] == 0


async def test_limits_total_wait_budget_and_waited(clock: VirtualClock) -> None:
    limits = Limits(
        {"tenant:acme": {"max_concurrent": 1}, "trunk:pstn": {"max_concurrent": 1}},
        clock=clock,
    )
    tenant = await limits.acquire(["tenant:acme"])
    trunk = await limits.acquire(["trunk:pstn"])
    task = asyncio.ensure_future(limits.acquire(["tenant:acme", "trunk:pstn"], max_wait=5))
    await clock.advance(2)
    tenant.release()  # tenant after 2 s...
    await clock.advance(1)
    trunk.release()  # ...trunk after 1 more
    await clock.advance(0)
    permit = task.result()
    assert permit.waited == pytest.approx(3.0)
    permit.release()

    # Budget is shared: 4 s spent on the first key leaves 1 s for the second.
    tenant = await limits.acquire(["tenant:acme"])
    trunk = await limits.acquire(["trunk:pstn"])
    task = asyncio.ensure_future(limits.acquire(["tenant:acme", "trunk:pstn"], max_wait=5))
    await clock.advance(4)
    tenant.release()
    await clock.advance(0.9)
    assert not task.done()
    await clock.advance(0.2)
    exc = task.exception()
    assert isinstance(exc, LimitExceeded)
    assert (exc.key, exc.reason) == ("trunk:pstn", "timeout")
    assert exc.waited == pytest.approx(5.0)
    assert limits.snapshot()["tenant:acme"]["active"] == 0
    trunk.release()


async def test_limits_cancellation_releases_partial(clock: VirtualClock) -> None:
    limits = Limits(
        {"tenant:acme": {"max_concurrent": 1}, "trunk:pstn": {"max_concurrent": 1}},
        clock=clock,
    )
    trunk = await limits.acquire(["trunk:pstn"])
    task = asyncio.ensure_future(limits.acquire(["tenant:acme", "trunk:pstn"], max_wait=60))
    await clock.advance(1)
    assert limits.snapshot() == {
        "tenant:acme": {"active": 1, "waiting": 0},
        "trunk:pstn": {"active": 1, "waiting": 1},
    }
    task.cancel()
    await clock.advance(0)
    assert task.cancelled()
    assert limits.snapshot() == {
        "tenant:acme": {"active": 0, "waiting": 0},
        "trunk:pstn": {"active": 1, "waiting": 0},
    }
    trunk.release()
