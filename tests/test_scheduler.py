"""Scheduled calls: timing, retries, cancel, restart recovery and service hours.

Everything runs on a VirtualClock: time moves only through ``clock.advance``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Callable
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from switch.calendar import ServiceHours
from switch.clock import VirtualClock
from switch.scheduler import MemoryScheduleStore, RetryPolicy, Scheduler

T0 = 1_800_000_000.0
MADRID = ZoneInfo("Europe/Madrid")
OFFICE = {
    "timezone": "Europe/Madrid",
    **{d: ["09:00-18:00"] for d in ("mon", "tue", "wed", "thu", "fri")},
}


class Placer:
    """A fake ``place``: records calls and returns scripted outcomes."""

    def __init__(self, clock: VirtualClock, *, default: str = "answered") -> None:
        self.clock = clock
        self.default = default
        self.script: dict[str, list[str | Exception]] = {}
        self.calls: list[tuple[str, float]] = []
        self.duration = 0.0
        self.gate: asyncio.Event | None = None
        self.active = 0
        self.max_active = 0
        self.store: MemoryScheduleStore | None = None
        self.states_seen: list[str] = []

    def placed(self, job_id: str) -> list[float]:
        return [t for j, t in self.calls if j == job_id]

    async def __call__(self, job_id: str, request: dict[str, Any]) -> str:
        self.calls.append((job_id, self.clock.now()))
        if self.store is not None:
            row = await self.store.schedule_get(job_id)
            assert row is not None
            self.states_seen.append(row["state"])
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if self.duration:
                await self.clock.sleep(self.duration)
            if self.gate is not None:
                await self.gate.wait()
            script = self.script.get(job_id)
            outcome = script.pop(0) if script else self.default
            if isinstance(outcome, Exception):
                raise outcome
            return outcome
        finally:
            self.active -= 1


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(T0)


@pytest.fixture
def store(clock: VirtualClock) -> MemoryScheduleStore:
    return MemoryScheduleStore(clock=clock)


@pytest.fixture
def placer(clock: VirtualClock) -> Placer:
    return Placer(clock)


MakeScheduler = Callable[..., Scheduler]


@pytest.fixture
async def make(
    clock: VirtualClock, store: MemoryScheduleStore, placer: Placer
) -> AsyncIterator[MakeScheduler]:
    made: list[Scheduler] = []

    def factory(**kw: Any) -> Scheduler:
        kw.setdefault("clock", clock)
        sched = Scheduler(kw.pop("store", store), kw.pop("place", placer), **kw)
        made.append(sched)
        return sched

    yield factory
    for sched in made:
        await sched.stop()


async def started(make: MakeScheduler, **kw: Any) -> Scheduler:
    sched = make(**kw)
    await sched.start()
    return sched


# -- timing ----------------------------------------------------------------------------------


async def test_placed_when_due_and_not_before(
    make: MakeScheduler, clock: VirtualClock, placer: Placer
) -> None:
    sched = await started(make)
    a = await sched.schedule({"to": "+34600000001"}, at=T0 + 10)
    b = await sched.schedule({"to": "+34600000002"}, at=T0 + 25.5)
    await clock.advance(9.9)
    assert placer.calls == []
    await clock.advance(0.1)
    assert placer.calls == [(a, T0 + 10)]
    await clock.advance(15.4)
    assert len(placer.calls) == 1
    await clock.advance(0.1)
    assert placer.calls == [(a, T0 + 10), (b, T0 + 25.5)]
    job = await sched.get(a)
    assert job is not None
    assert job["state"] == "done"
    assert job["outcome"] == "answered"
    assert job["attempt"] == 1
    assert job["request"] == {"to": "+34600000001"}
    assert [x["outcome"] for x in job["attempts"]] == ["answered"]


async def test_schedule_wakes_a_sleeping_loop(
    make: MakeScheduler, clock: VirtualClock, placer: Placer
) -> None:
    sched = await started(make)
    await sched.schedule({"to": "far"}, at=T0 + 3600)
    await clock.advance(0)
    now_job = await sched.schedule({"to": "now"})
    # No virtual time passes: the loop must have been woken, not have timed out.
    await clock.advance(0)
    assert placer.calls == [(now_job, T0)]


async def test_place_is_called_after_dialing_is_written(
    make: MakeScheduler, clock: VirtualClock, placer: Placer, store: MemoryScheduleStore
) -> None:
    placer.store = store
    sched = await started(make)
    job = await sched.schedule({"to": "x"})
    await clock.advance(0)
    assert placer.states_seen == ["dialing"]
    assert store.writes == [(job, "pending"), (job, "dialing"), (job, "done")]


async def test_on_update_sees_every_state(make: MakeScheduler, clock: VirtualClock) -> None:
    seen: list[tuple[str, str]] = []

    async def on_update(job: dict[str, Any]) -> None:
        seen.append((job["id"], job["state"]))

    sched = await started(make, on_update=on_update)
    a = await sched.schedule({"to": "a"}, at=T0 + 5)
    b = await sched.schedule({"to": "b"}, at=T0 + 50)
    assert await sched.cancel(b)
    await clock.advance(5)
    assert seen == [
        (a, "pending"), (b, "pending"), (b, "canceled"), (a, "dialing"), (a, "done"),
    ]


# -- retries ---------------------------------------------------------------------------------


async def test_busy_then_answered_retries_once_after_interval(
    make: MakeScheduler, clock: VirtualClock, placer: Placer
) -> None:
    placer.duration = 5.0  # each attempt rings for 5 s
    sched = await started(make)
    job = await sched.schedule(
        {"to": "x"}, retry=RetryPolicy.from_dict({"busy": {"count": 3, "interval": 30}})
    )
    placer.script[job] = ["busy", "answered"]
    await clock.advance(34.9)
    assert placer.placed(job) == [T0]
    pending = await sched.get(job)
    assert pending is not None
    assert (pending["state"], pending["due_at"]) == ("pending", T0 + 35)
    # The interval counts from the end of the attempt (T0 + 5), not its start.
    await clock.advance(0.1)
    assert placer.placed(job) == [T0, T0 + 35]
    await clock.advance(1000)
    assert len(placer.placed(job)) == 2
    done = await sched.get(job)
    assert done is not None
    assert done["state"] == "done"
    assert done["attempt"] == 2
    assert [a["outcome"] for a in done["attempts"]] == ["busy", "answered"]
    assert done["attempts"][0]["ended_at"] == T0 + 5


async def test_retries_exhausted_is_failed(
    make: MakeScheduler, clock: VirtualClock, placer: Placer
) -> None:
    placer.default = "no-answer"
    sched = await started(make)
    job = await sched.schedule({"to": "x"}, retry=RetryPolicy(no_answer=(2, 60.0)))
    await clock.advance(10_000)
    assert placer.placed(job) == [T0, T0 + 60, T0 + 120]
    final = await sched.get(job)
    assert final is not None
    assert (final["state"], final["outcome"], final["attempt"]) == ("failed", "no-answer", 3)


async def test_no_retry_policy_means_one_attempt(
    make: MakeScheduler, clock: VirtualClock, placer: Placer
) -> None:
    placer.default = "busy"
    sched = await started(make)
    job = await sched.schedule({"to": "x"})
    await clock.advance(10_000)
    assert len(placer.placed(job)) == 1
    final = await sched.get(job)
    assert final is not None and final["state"] == "failed"


async def test_retry_budgets_are_per_outcome(
    make: MakeScheduler, clock: VirtualClock, placer: Placer
) -> None:
    sched = await started(make)
    job = await sched.schedule(
        {"to": "x"}, retry=RetryPolicy(busy=(1, 10.0), no_answer=(1, 20.0), failed=(1, 30.0))
    )
    placer.script[job] = ["busy", "no-answer", "rejected", "busy"]
    await clock.advance(10_000)
    # busy (retry 1/1), no-answer (1/1), rejected counts as failed (1/1), busy: exhausted.
    assert placer.placed(job) == [T0, T0 + 10, T0 + 30, T0 + 60]
    final = await sched.get(job)
    assert final is not None
    assert (final["state"], final["outcome"]) == ("failed", "busy")


async def test_exception_from_place_is_failed_and_loop_survives(
    make: MakeScheduler, clock: VirtualClock, placer: Placer
) -> None:
    sched = await started(make)
    bad = await sched.schedule({"to": "x"}, retry=RetryPolicy(failed=(1, 5.0)))
    odd = await sched.schedule({"to": "y"})
    placer.script[bad] = [RuntimeError("trunk exploded"), RuntimeError("again")]
    placer.script[odd] = ["maybe?"]
    later = await sched.schedule({"to": "z"}, at=T0 + 100)
    await clock.advance(100)
    assert placer.placed(bad) == [T0, T0 + 5]
    assert placer.placed(later) == [T0 + 100]
    job = await sched.get(bad)
    assert job is not None
    assert (job["state"], job["outcome"]) == ("failed", "failed")
    assert "trunk exploded" in job["attempts"][0]["error"]
    weird = await sched.get(odd)
    assert weird is not None and weird["state"] == "failed"
    assert sched.running


async def test_canceled_outcome(make: MakeScheduler, clock: VirtualClock, placer: Placer) -> None:
    placer.default = "canceled"
    sched = await started(make)
    job = await sched.schedule({"to": "x"}, retry=RetryPolicy(failed=(5, 1.0)))
    await clock.advance(100)
    assert len(placer.placed(job)) == 1
    final = await sched.get(job)
    assert final is not None and final["state"] == "canceled"


# -- cancel ----------------------------------------------------------------------------------


async def test_cancel(make: MakeScheduler, clock: VirtualClock, placer: Placer) -> None:
    sched = await started(make)
    job = await sched.schedule({"to": "x"}, at=T0 + 60)
    keep = await sched.schedule({"to": "y"}, at=T0 + 60)
    assert await sched.cancel(job)
    assert not await sched.cancel(job)  # already canceled
    assert not await sched.cancel("no-such-job")
    await clock.advance(120)
    assert placer.placed(job) == []
    assert placer.placed(keep) == [T0 + 60]
    assert not await sched.cancel(keep)  # done
    states = {j["id"]: j["state"] for j in await sched.list()}
    assert states == {job: "canceled", keep: "done"}
    assert [j["id"] for j in await sched.list(states=["canceled"])] == [job]


async def test_cancel_while_dialing_is_refused(
    make: MakeScheduler, clock: VirtualClock, placer: Placer
) -> None:
    placer.gate = asyncio.Event()
    sched = await started(make)
    job = await sched.schedule({"to": "x"})
    await clock.advance(0)
    assert not await sched.cancel(job)
    placer.gate.set()
    await clock.advance(0)
    final = await sched.get(job)
    assert final is not None and final["state"] == "done"


# -- concurrency -----------------------------------------------------------------------------


async def test_due_jobs_run_concurrently_up_to_the_bound(
    make: MakeScheduler, clock: VirtualClock, placer: Placer
) -> None:
    placer.duration = 10.0
    sched = await started(make, max_concurrent=2)
    jobs = [await sched.schedule({"n": i}) for i in range(5)]
    await clock.advance(0)
    assert placer.active == 2
    await clock.advance(100)
    assert placer.max_active == 2
    assert sorted(j for j, _ in placer.calls) == sorted(jobs)  # each exactly once
    assert sorted(t - T0 for _, t in placer.calls) == [0, 0, 10, 10, 20]


# -- restart ---------------------------------------------------------------------------------


async def test_restart_places_each_pending_job_once(
    make: MakeScheduler, clock: VirtualClock, placer: Placer
) -> None:
    first = await started(make)
    jobs = [await first.schedule({"n": i}, at=T0 + 10 * (i + 1)) for i in range(3)]
    await first.stop()
    second = await started(make)
    await clock.advance(100)
    assert sorted(placer.calls) == sorted((j, T0 + 10 * (i + 1)) for i, j in enumerate(jobs))
    assert {j["state"] for j in await second.list()} == {"done"}


async def test_crash_while_dialing_becomes_unknown(
    make: MakeScheduler, clock: VirtualClock, placer: Placer, store: MemoryScheduleStore
) -> None:
    placer.gate = asyncio.Event()  # the call never finishes: the process "dies" mid-call
    first = await started(make)
    job = await first.schedule({"to": "x"}, retry=RetryPolicy(failed=(3, 1.0)))
    await clock.advance(0)
    await first.stop()
    row = await store.schedule_get(job)
    assert row is not None and row["state"] == "dialing"

    placer.gate = None
    second = await started(make)
    await clock.advance(1000)
    assert placer.placed(job) == [T0]  # never redialled
    final = await second.get(job)
    assert final is not None
    assert (final["state"], final["outcome"]) == ("unknown", "unknown")
    assert [a["outcome"] for a in final["attempts"]] == ["unknown"]


async def test_crash_while_dialing_redials_when_at_least_once(
    make: MakeScheduler, clock: VirtualClock, placer: Placer
) -> None:
    placer.gate = asyncio.Event()
    first = await started(make)
    job = await first.schedule({"to": "x"}, at_least_once=True)
    await clock.advance(5)
    await first.stop()

    placer.gate = None
    await clock.advance(20)
    second = await started(make)
    await clock.advance(1000)
    assert placer.placed(job) == [T0, T0 + 25]
    final = await second.get(job)
    assert final is not None
    assert final["state"] == "done"
    assert [a["outcome"] for a in final["attempts"]] == ["unknown", "answered"]


# -- service hours ---------------------------------------------------------------------------


def madrid(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> float:
    return dt.datetime(y, mo, d, h, mi, tzinfo=MADRID).timestamp()


FRIDAY_20H = madrid(2026, 3, 6, 20, 0)
MONDAY_9H = madrid(2026, 3, 9, 9, 0)


@pytest.mark.parametrize("by_name", [True, False])
async def test_service_hours_friday_evening_goes_out_monday(by_name: bool) -> None:
    clock = VirtualClock(FRIDAY_20H)
    store = MemoryScheduleStore(clock=clock)
    placer = Placer(clock)
    office = ServiceHours.from_config(OFFICE)
    sched = Scheduler(store, placer, clock=clock, calendars={"office": office})
    await sched.start()
    try:
        job = await sched.schedule({"to": "x"}, service_hours="office" if by_name else office)
        info = await sched.get(job)
        assert info is not None and info["due_at"] == MONDAY_9H
        await clock.advance(MONDAY_9H - FRIDAY_20H - 1)
        assert placer.calls == []
        await clock.advance(1)
        assert placer.calls == [(job, MONDAY_9H)]
    finally:
        await sched.stop()


async def test_retry_moves_to_next_opening_and_survives_restart() -> None:
    start = madrid(2026, 3, 6, 17, 58)
    clock = VirtualClock(start)
    store = MemoryScheduleStore(clock=clock)
    placer = Placer(clock, default="busy")
    office = ServiceHours.from_config(OFFICE)
    first = Scheduler(store, placer, clock=clock)
    await first.start()
    job = await first.schedule(
        {"to": "x"}, service_hours=office, retry=RetryPolicy(busy=(1, 300.0))
    )
    await clock.advance(0)
    await first.stop()
    row = await store.schedule_get(job)
    assert row is not None
    # 17:58 + 5 min is after closing: the retry waits for Monday 09:00.
    assert (row["state"], row["due_at"]) == ("pending", MONDAY_9H)

    # A new scheduler without any calendars still knows the hours (kept in job data).
    second = Scheduler(store, placer, clock=clock)
    await second.start()
    try:
        await clock.advance(MONDAY_9H - start)
        assert placer.placed(job) == [start, MONDAY_9H]
    finally:
        await second.stop()


async def test_schedule_validation(make: MakeScheduler) -> None:
    sched = make(calendars={"office": ServiceHours.from_config(OFFICE)})
    with pytest.raises(ValueError, match="unknown service hours calendar 'shop'"):
        await sched.schedule({"to": "x"}, service_hours="shop")
    with pytest.raises(ValueError, match="never open"):
        await sched.schedule({"to": "x"}, service_hours=ServiceHours.from_config({}))
    with pytest.raises(ValueError, match="JSON"):
        await sched.schedule({"to": object()})
    await sched.schedule({"to": "x"}, job_id="job-1")
    with pytest.raises(ValueError, match="already exists"):
        await sched.schedule({"to": "y"}, job_id="job-1")


# -- store and policy ----------------------------------------------------------------------


async def test_memory_store_copies_data(store: MemoryScheduleStore) -> None:
    data: dict[str, Any] = {"request": {"to": "x"}, "attempts": []}
    await store.schedule_put("j", state="pending", due_at=T0, attempt=0, data=data)
    data["attempts"].append("mutated")
    row = await store.schedule_get("j")
    assert row is not None and row["data"]["attempts"] == []
    row["data"]["attempts"].append("mutated")
    again = await store.schedule_get("j")
    assert again is not None and again["data"]["attempts"] == []
    await store.schedule_put("k", state="done", due_at=T0 - 5, attempt=1, data={})
    assert [r["id"] for r in await store.schedule_list()] == ["k", "j"]
    assert [r["id"] for r in await store.schedule_list(due_before=T0 - 1)] == ["k"]
    assert [r["id"] for r in await store.schedule_list(states=["pending"])] == ["j"]


def test_retry_policy_from_dict() -> None:
    policy = RetryPolicy.from_dict(
        {"busy": {"count": 2, "interval": 30}, "no-answer": {"count": 1, "interval": 120}}
    )
    assert policy == RetryPolicy(busy=(2, 30.0), no_answer=(1, 120.0))
    assert RetryPolicy.from_dict(policy.to_dict()) == policy
    cases: list[tuple[dict[str, Any], str]] = [
        ({"bussy": {"count": 1}}, "unknown outcome"),
        ({"busy": {"count": -1}}, "count"),
        ({"busy": {"count": True}}, "count"),
        ({"busy": {"count": 1, "interval": "soon"}}, "interval"),
        ({"busy": {"count": 1, "every": 5}}, "unknown key"),
        ({"busy": 3}, "expected"),
    ]
    for bad, message in cases:
        with pytest.raises(ValueError, match=message):
            RetryPolicy.from_dict(bad)
