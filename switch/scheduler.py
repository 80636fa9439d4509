"""Scheduled outbound calls with retries, service hours and crash-safe bookkeeping.

A job is a call request to be placed at a time. Its life::

    pending -> dialing -> done                     (answered)
                       -> pending                  (busy/no-answer/failed with a retry left)
                       -> failed                   (retries exhausted)
                       -> canceled                 (the attempt reported "canceled")
    pending -> canceled                            (cancel())
    dialing -> unknown                             (found "dialing" at start-up: the process
                                                    died mid-call, the outcome is unknown)

Every transition is written to the :class:`ScheduleStore` before it takes effect: a job is
stored as "dialing" *before* ``place`` is called, so after a crash the scheduler can tell a
call that may have gone out from one that never started, and never redials it blindly (a
duplicate call to a customer is worse than a missed one) unless the job was scheduled with
``at_least_once=True``.

One scheduler per store: the in-process lock and in-flight set are what keep a job from
being placed twice at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import inspect
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from switch.calendar import ServiceHours
from switch.clock import Clock

__all__ = [
    "OUTCOMES",
    "STATES",
    "MemoryScheduleStore",
    "PlaceCall",
    "RetryPolicy",
    "ScheduleStore",
    "Scheduler",
]

logger = logging.getLogger(__name__)

#: What ``place`` may return.
OUTCOMES = frozenset({"answered", "busy", "no-answer", "rejected", "failed", "canceled"})
#: Job states.
STATES = ("pending", "dialing", "done", "failed", "canceled", "unknown")

#: ``(job_id, request) -> outcome``; see :data:`OUTCOMES`.
PlaceCall = Callable[[str, dict[str, Any]], Awaitable[str]]

# Which retry budget an outcome draws on.
_RETRY_CATEGORY = {
    "busy": "busy",
    "no-answer": "no_answer",
    "rejected": "failed",
    "failed": "failed",
}


class ScheduleStore(Protocol):
    """Persistence of jobs (a SQL store implements the same methods).

    Rows read back are ``{"id", "state", "due_at", "attempt", "data", "created_at",
    "updated_at"}``; ``data`` is a JSON-serialisable dict.
    """

    async def schedule_put(
        self, job_id: str, *, state: str, due_at: float, attempt: int, data: dict[str, Any]
    ) -> None:
        """Insert or replace a job (``created_at`` is kept across updates)."""
        ...

    async def schedule_get(self, job_id: str) -> dict[str, Any] | None:
        """One job, or None."""
        ...

    async def schedule_list(
        self,
        *,
        states: Iterable[str] | None = None,
        due_before: float | None = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        """Jobs in ``states`` (all when None) with ``due_at <= due_before``, by ``due_at``."""
        ...


class MemoryScheduleStore:
    """An in-memory :class:`ScheduleStore` for tests and single-process use.

    Data is deep-copied in and out, as a database would, so code that mutates a job without
    writing it back is caught. ``writes`` logs every ``(job_id, state)`` put, in order.
    """

    def __init__(self, *, clock: Clock | None = None) -> None:
        self._clock = clock
        self._rows: dict[str, dict[str, Any]] = {}
        self.writes: list[tuple[str, str]] = []

    def _now(self) -> float:
        return self._clock.now() if self._clock is not None else time.time()

    async def schedule_put(
        self, job_id: str, *, state: str, due_at: float, attempt: int, data: dict[str, Any]
    ) -> None:
        """Insert or replace a job."""
        now = self._now()
        old = self._rows.get(job_id)
        self._rows[job_id] = {
            "id": job_id,
            "state": state,
            "due_at": float(due_at),
            "attempt": int(attempt),
            "data": copy.deepcopy(data),
            "created_at": old["created_at"] if old else now,
            "updated_at": now,
        }
        self.writes.append((job_id, state))

    async def schedule_get(self, job_id: str) -> dict[str, Any] | None:
        """A copy of one job, or None."""
        row = self._rows.get(job_id)
        return copy.deepcopy(row) if row is not None else None

    async def schedule_list(
        self,
        *,
        states: Iterable[str] | None = None,
        due_before: float | None = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        """Copies of matching jobs, earliest ``due_at`` first."""
        wanted = set(states) if states is not None else None
        rows = [
            r
            for r in self._rows.values()
            if (wanted is None or r["state"] in wanted)
            and (due_before is None or r["due_at"] <= due_before)
        ]
        rows.sort(key=lambda r: (r["due_at"], r["created_at"], r["id"]))
        return copy.deepcopy(rows[: max(0, limit)])


def _retry_entry(value: Any, key: str) -> tuple[int, float]:
    if isinstance(value, Mapping):
        unknown = sorted(str(k) for k in value if k not in ("count", "interval"))
        if unknown:
            raise ValueError(f"retry.{key}: unknown key(s) {', '.join(unknown)}")
        count, interval = value.get("count", 0), value.get("interval", 60.0)
    elif isinstance(value, list | tuple) and len(value) == 2:
        count, interval = value
    else:
        raise ValueError(f"retry.{key}: expected {{'count': n, 'interval': seconds}}")
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"retry.{key}.count: must be an integer >= 0, got {count!r}")
    if isinstance(interval, bool) or not isinstance(interval, int | float) or interval < 0:
        raise ValueError(f"retry.{key}.interval: must be a number of seconds >= 0")
    return count, float(interval)


@dataclass(frozen=True)
class RetryPolicy:
    """How often, and how far apart, to retry after each kind of failed attempt.

    Each entry is ``(max retries, interval seconds)``; the budgets are separate, so
    ``busy=(2, 30)`` allows two retries after busy outcomes whatever else happens.
    ``failed`` covers both "failed" and "rejected".
    """

    busy: tuple[int, float] = (0, 60.0)
    no_answer: tuple[int, float] = (0, 60.0)
    failed: tuple[int, float] = (0, 60.0)

    def __post_init__(self) -> None:
        for name in ("busy", "no_answer", "failed"):
            _retry_entry(getattr(self, name), name)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RetryPolicy:
        """Parse ``{"busy": {"count": 2, "interval": 30}, "no_answer": ..., "failed": ...}``.

        "no-answer" is accepted for "no_answer". Raises :class:`ValueError` on bad input.
        """
        if not isinstance(d, Mapping):
            raise ValueError("retry: expected a table")
        fields: dict[str, tuple[int, float]] = {}
        for raw_key, value in d.items():
            key = str(raw_key).replace("-", "_")
            if key not in ("busy", "no_answer", "failed"):
                raise ValueError(f"retry: unknown outcome {raw_key!r}")
            fields[key] = _retry_entry(value, key)
        return cls(**fields)

    def to_dict(self) -> dict[str, dict[str, float]]:
        """The :meth:`from_dict` shape (what is stored in job data)."""
        return {
            name: {"count": getattr(self, name)[0], "interval": getattr(self, name)[1]}
            for name in ("busy", "no_answer", "failed")
        }


class Scheduler:
    """Places scheduled calls when due, retrying per policy, within service hours.

    ``calendars`` names the service-hours calendars jobs may refer to; ``on_update`` (sync
    or async) receives the job dict (see :meth:`get`) after every state change; at most
    ``max_concurrent`` attempts run at once. The loop re-reads the store at least every
    ``max_sleep`` seconds even when nothing wakes it.
    """

    def __init__(
        self,
        store: ScheduleStore,
        place: PlaceCall,
        *,
        clock: Clock,
        calendars: Mapping[str, ServiceHours] | None = None,
        on_update: Callable[[dict[str, Any]], Any] | None = None,
        max_concurrent: int = 50,
        max_sleep: float = 60.0,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be >= 1")
        self._store = store
        self._place = place
        self._clock = clock
        self._calendars: dict[str, ServiceHours] = dict(calendars or {})
        self._on_update = on_update
        self._max_concurrent = max_concurrent
        self._max_sleep = max_sleep
        # Serialises read-modify-write of a job between the loop, attempts and cancel().
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._paused = False

    @property
    def running(self) -> bool:
        """Whether the dispatch loop is running."""
        return self._loop_task is not None and not self._loop_task.done()

    @property
    def in_flight(self) -> int:
        """Attempts currently being placed."""
        return len(self._inflight)

    @property
    def paused(self) -> bool:
        """Whether dispatching is paused (see :meth:`pause`)."""
        return self._paused

    def pause(self) -> None:
        """Stop starting attempts (a draining switch): due jobs stay "pending" in the store,
        so they are placed by the next run; attempts already in flight carry on."""
        self._paused = True

    def resume(self) -> None:
        """Undo :meth:`pause`."""
        self._paused = False
        self._wake.set()

    async def start(self) -> None:
        """Recover jobs interrupted mid-call, then start the dispatch loop.

        A job found "dialing" was being placed when the process died: it becomes "unknown"
        (not redialled), or "pending" due now if it was scheduled ``at_least_once``.
        """
        if self.running:
            return
        await self._recover()
        self._loop_task = asyncio.create_task(self._run(), name="call-scheduler")

    async def stop(self, *, wait: bool = False) -> None:
        """Stop dispatching. In-flight attempts are cancelled, or awaited when ``wait``.

        A cancelled attempt stays "dialing" in the store, so the next :meth:`start`
        treats it like a crash (its outcome is unknown).
        """
        task, self._loop_task = self._loop_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        attempts = list(self._inflight.values())
        if not wait:
            for attempt in attempts:
                attempt.cancel()
        await asyncio.gather(*attempts, return_exceptions=True)

    async def schedule(
        self,
        request: dict[str, Any],
        *,
        at: float | None = None,
        retry: RetryPolicy | None = None,
        service_hours: str | ServiceHours | None = None,
        at_least_once: bool = False,
        job_id: str | None = None,
    ) -> str:
        """Persist a new job (state "pending") and return its id.

        ``at`` defaults to now; with ``service_hours`` (a name from ``calendars`` or a
        :class:`ServiceHours`) the due time moves to the next opening. Raises
        :class:`ValueError` for an unknown calendar, one that is never open, a request that
        is not JSON-serialisable, or an id already in use.
        """
        if not isinstance(request, dict):
            raise ValueError("request must be a dict")
        try:
            json.dumps(request)
        except (TypeError, ValueError) as exc:
            # The store may be a database: refuse now rather than fail at the first write.
            raise ValueError(f"request must be JSON-serialisable: {exc}") from exc
        if isinstance(service_hours, str):
            if service_hours not in self._calendars:
                raise ValueError(f"unknown service hours calendar {service_hours!r}")
            calendar: ServiceHours | None = self._calendars[service_hours]
            hours_ref: dict[str, Any] | None = {
                "name": service_hours,
                "config": self._calendars[service_hours].config,
            }
        elif isinstance(service_hours, ServiceHours):
            calendar = service_hours
            hours_ref = {"name": None, "config": service_hours.config}
        elif service_hours is None:
            calendar, hours_ref = None, None
        else:
            raise ValueError("service_hours must be a calendar name or a ServiceHours")

        requested = self._clock.now() if at is None else float(at)
        due = calendar.next_open(requested) if calendar is not None else requested
        job_id = job_id or uuid.uuid4().hex
        data: dict[str, Any] = {
            "request": copy.deepcopy(request),
            "requested_at": requested,
            "retry": (retry or RetryPolicy()).to_dict(),
            "service_hours": hours_ref,
            "at_least_once": bool(at_least_once),
            "attempts": [],
            "retries": {},
            "outcome": None,
        }
        async with self._lock:
            if await self._store.schedule_get(job_id) is not None:
                raise ValueError(f"job {job_id!r} already exists")
            await self._store.schedule_put(
                job_id, state="pending", due_at=due, attempt=0, data=data
            )
        await self._notify(job_id)
        self._wake.set()
        return job_id

    async def cancel(self, job_id: str) -> bool:
        """Cancel a pending job; False when it is unknown or not pending (e.g. dialling)."""
        async with self._lock:
            row = await self._store.schedule_get(job_id)
            if row is None or row["state"] != "pending" or job_id in self._inflight:
                return False
            await self._store.schedule_put(
                job_id,
                state="canceled",
                due_at=row["due_at"],
                attempt=row["attempt"],
                data=row["data"],
            )
        await self._notify(job_id)
        self._wake.set()
        return True

    async def get(self, job_id: str) -> dict[str, Any] | None:
        """The job as ``{"id", "state", "due_at", "attempt", "attempts", "outcome",
        "request", "at_least_once", "service_hours", "retry", "created_at",
        "updated_at"}``, or None. ``attempts`` lists ``{"at", "ended_at", "outcome"}``."""
        row = await self._store.schedule_get(job_id)
        return _view(row) if row is not None else None

    async def list(
        self, *, states: Iterable[str] | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """Jobs (as :meth:`get` returns them) in ``states``, earliest due first."""
        rows = await self._store.schedule_list(
            states=list(states) if states is not None else None, limit=limit
        )
        return [_view(r) for r in rows]

    # -- internals ---------------------------------------------------------------------

    async def _recover(self) -> None:
        now = self._clock.now()
        while True:
            rows = await self._store.schedule_list(states=["dialing"], limit=100)
            if not rows:
                return
            for row in rows:
                data = row["data"]
                data.setdefault("attempts", []).append(
                    {"at": data.get("dialing_since", row["due_at"]), "ended_at": None,
                     "outcome": "unknown"}
                )
                if data.get("at_least_once"):
                    state, due = "pending", now
                    logger.warning("scheduler: job %s interrupted mid-call; redialling", row["id"])
                else:
                    state, due = "unknown", row["due_at"]
                    data["outcome"] = "unknown"
                    logger.warning("scheduler: job %s interrupted mid-call; outcome unknown",
                                   row["id"])
                async with self._lock:
                    await self._store.schedule_put(
                        row["id"], state=state, due_at=due, attempt=row["attempt"], data=data
                    )
                await self._notify(row["id"])

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                delay = await self._dispatch_due()
            except Exception:
                # A store hiccup must not end scheduling; try again shortly.
                logger.exception("scheduler: dispatch failed")
                delay = min(1.0, self._max_sleep)
            await self._sleep_or_wake(delay)

    async def _dispatch_due(self) -> float:
        """Start attempts for due jobs; return how long to sleep before looking again."""
        if self._paused:
            return self._max_sleep  # resume() wakes the loop
        free = self._max_concurrent - len(self._inflight)
        # In-flight jobs may still read "pending" for a moment, so over-fetch by that many,
        # plus one to learn when the next job is due.
        rows = await self._store.schedule_list(
            states=["pending"], limit=max(free, 0) + len(self._inflight) + 1
        )
        now = self._clock.now()
        delay = self._max_sleep
        for row in rows:
            if row["id"] in self._inflight:
                continue
            if row["due_at"] > now:
                delay = min(delay, row["due_at"] - now)
                break
            if free <= 0:
                break  # a finishing attempt wakes the loop
            free -= 1
            self._inflight[row["id"]] = asyncio.create_task(
                self._attempt(row["id"]), name=f"scheduled-call-{row['id']}"
            )
        return delay

    async def _sleep_or_wake(self, delay: float) -> None:
        if self._wake.is_set():
            return
        waker = asyncio.ensure_future(self._wake.wait())
        sleeper = asyncio.ensure_future(self._clock.sleep(delay))
        try:
            await asyncio.wait({waker, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waker.cancel()
            sleeper.cancel()

    async def _attempt(self, job_id: str) -> None:
        try:
            async with self._lock:
                row = await self._store.schedule_get(job_id)
                if row is None or row["state"] != "pending":
                    return  # canceled (or otherwise moved on) since it was listed
                data = row["data"]
                attempt = int(row["attempt"]) + 1
                started = self._clock.now()
                data["dialing_since"] = started
                # Written before dialling, so a crash mid-call is recognisable at restart.
                await self._store.schedule_put(
                    job_id, state="dialing", due_at=row["due_at"], attempt=attempt, data=data
                )
            await self._notify(job_id)

            error: str | None = None
            try:
                outcome: Any = await self._place(job_id, copy.deepcopy(data["request"]))
            except Exception as exc:
                logger.exception("scheduler: placing job %s raised", job_id)
                outcome, error = "failed", f"{type(exc).__name__}: {exc}"
            if outcome not in OUTCOMES:
                logger.warning("scheduler: job %s: unexpected outcome %r", job_id, outcome)
                error = error or f"unexpected outcome {outcome!r}"
                outcome = "failed"
            ended = self._clock.now()

            record: dict[str, Any] = {"at": started, "ended_at": ended, "outcome": outcome}
            if error:
                record["error"] = error
            data.setdefault("attempts", []).append(record)
            data["outcome"] = outcome
            data.pop("dialing_since", None)
            state, due = self._next_state(outcome, data, ended, row["due_at"])
            async with self._lock:
                await self._store.schedule_put(
                    job_id, state=state, due_at=due, attempt=attempt, data=data
                )
            await self._notify(job_id)
        except Exception:
            # Only bookkeeping can get here (place() errors are outcomes); the job may be
            # left "dialing", which the next start() resolves.
            logger.exception("scheduler: job %s bookkeeping failed", job_id)
        finally:
            self._inflight.pop(job_id, None)
            self._wake.set()

    def _next_state(
        self, outcome: str, data: dict[str, Any], ended: float, due_at: float
    ) -> tuple[str, float]:
        if outcome == "answered":
            return "done", due_at
        if outcome == "canceled":
            return "canceled", due_at
        category = _RETRY_CATEGORY[outcome]
        policy = RetryPolicy.from_dict(data.get("retry") or {})
        max_retries, interval = getattr(policy, category)
        retries: dict[str, int] = data.setdefault("retries", {})
        used = retries.get(category, 0)
        if used >= max_retries:
            return "failed", due_at
        retries[category] = used + 1
        # The interval runs from the end of the attempt, then waits for opening hours.
        due = ended + interval
        calendar = self._calendar_for(data)
        if calendar is not None:
            try:
                due = calendar.next_open(due)
            except ValueError:
                logger.warning("scheduler: service hours for a retry are never open")
                return "failed", due_at
        return "pending", due

    def _calendar_for(self, data: dict[str, Any]) -> ServiceHours | None:
        ref = data.get("service_hours")
        if not ref:
            return None
        name = ref.get("name")
        if name and name in self._calendars:
            # The live calendar wins, so edited opening hours apply to queued retries.
            return self._calendars[name]
        config = ref.get("config")
        if config is None:
            return None
        return ServiceHours.from_config(config)

    async def _notify(self, job_id: str) -> None:
        if self._on_update is None:
            return
        try:
            job = await self.get(job_id)
            if job is None:
                return
            result = self._on_update(job)
            if inspect.isawaitable(result):
                await result
        except Exception:
            logger.exception("scheduler: on_update failed for job %s", job_id)


def _view(row: dict[str, Any]) -> dict[str, Any]:
    data = row.get("data") or {}
    ref = data.get("service_hours")
    return {
        "id": row["id"],
        "state": row["state"],
        "due_at": row["due_at"],
        "attempt": row["attempt"],
        "attempts": data.get("attempts", []),
        "outcome": data.get("outcome"),
        "request": data.get("request"),
        "at_least_once": bool(data.get("at_least_once")),
        "service_hours": (ref.get("name") or ref.get("config")) if ref else None,
        "retry": data.get("retry"),
        "requested_at": data.get("requested_at"),
        "created_at": row.get("created_at"),
        "updated_at": row.get("updated_at"),
    }
