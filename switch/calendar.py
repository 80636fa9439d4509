"""Service hours: a weekly calendar of opening windows in a time zone.

Windows are wall-clock times in the calendar's zone, so "09:00-18:00" means 09:00 local all
year round, across DST changes. A local time that does not exist (the hour skipped when
clocks go forward) is simply never seen; a window starting inside that gap opens at the
instant the clocks jump. A local time that happens twice (the hour repeated when clocks go
back) is open both times.

Config (the shape kept in job data so a schedule survives a restart)::

    {"timezone": "Europe/Istanbul",
     "mon": ["09:00-12:30", "13:30-18:00"], ..., "sun": [],
     "closed_dates": ["2026-12-31"]}

A missing day is closed; "24:00" is allowed as an end; a missing timezone means UTC.
"""

from __future__ import annotations

import copy
import datetime as dt
import itertools
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["DAYS", "ServiceHours"]

#: Config keys of the week days, Monday first (the index is :meth:`datetime.date.weekday`).
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

_RANGE = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
_DAY_SECONDS = 86_400
# How far the sampling around a local day reaches, so a DST change near midnight is not
# missed whichever way the offset moved.
_MARGIN = 3 * 3600


@dataclass(frozen=True)
class ServiceHours:
    """Weekly opening windows in a time zone, with closed dates.

    Build it with :meth:`from_config`; ``config`` keeps a copy of that dict.
    """

    tz: ZoneInfo
    #: Per weekday (0 = Monday): sorted, non-overlapping (start, end) seconds after midnight.
    week: tuple[tuple[tuple[int, int], ...], ...]
    closed_dates: frozenset[dt.date]
    config: dict[str, Any] = field(compare=False, hash=False, repr=False)

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any], *, key: str = "service_hours"
    ) -> ServiceHours:
        """Parse and validate a config dict.

        ``key`` prefixes error messages (e.g. ``"service_hours.mon: '18:00-09:00' ends
        before it starts"``). Raises :class:`ValueError` on any invalid entry.
        """
        if not isinstance(config, Mapping):
            raise ValueError(f"{key}: expected a table, got {type(config).__name__}")
        known = {"timezone", "closed_dates", *DAYS}
        unknown = sorted(str(k) for k in config if k not in known)
        if unknown:
            # Catches "monday" or "tz" instead of silently leaving the day closed.
            raise ValueError(f"{key}: unknown key(s) {', '.join(unknown)}")

        tz_name = config.get("timezone", "UTC")
        if not isinstance(tz_name, str) or not tz_name:
            raise ValueError(f"{key}.timezone: expected a zone name such as 'Europe/Madrid'")
        try:
            tz = ZoneInfo(tz_name)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"{key}.timezone: unknown time zone {tz_name!r}") from exc

        week = tuple(_parse_day(config.get(day, []), f"{key}.{day}") for day in DAYS)

        raw_dates = config.get("closed_dates", [])
        if not isinstance(raw_dates, list | tuple):
            raise ValueError(f"{key}.closed_dates: expected a list of 'YYYY-MM-DD' dates")
        dates: set[dt.date] = set()
        for raw in raw_dates:
            if isinstance(raw, dt.date) and not isinstance(raw, dt.datetime):
                dates.add(raw)
                continue
            try:
                dates.add(dt.date.fromisoformat(str(raw)))
            except ValueError as exc:
                raise ValueError(
                    f"{key}.closed_dates: {raw!r} is not a 'YYYY-MM-DD' date"
                ) from exc

        return cls(tz=tz, week=week, closed_dates=frozenset(dates), config=_plain(config))

    def is_open(self, t: float) -> bool:
        """Whether the calendar is open at unix time ``t``."""
        # Whole seconds plus the exact fraction: fromtimestamp() rounds to the microsecond,
        # which would call 08:59:59.9999998 "09:00" and disagree with next_open().
        whole = math.floor(t)
        local = dt.datetime.fromtimestamp(whole, self.tz)
        if local.date() in self.closed_dates:
            return False
        sod = local.hour * 3600 + local.minute * 60 + local.second + (t - whole)
        return any(start <= sod < end for start, end in self.week[local.weekday()])

    @property
    def ever_open(self) -> bool:
        """False when no week day has any window (``next_open`` would never succeed)."""
        return any(self.week)

    def next_open(self, t: float) -> float:
        """``t`` itself when open, otherwise the first instant after ``t`` that is open.

        Raises :class:`ValueError` when the calendar is never open.
        """
        if self.is_open(t):
            return t
        if not self.ever_open:
            raise ValueError("service hours are never open (no day has a window)")
        first = dt.datetime.fromtimestamp(math.floor(t), self.tz).date()
        last_closed = max(self.closed_dates, default=first)
        # Past the last closed date a plain week repeats, so eight more days always suffice;
        # one day before `first` covers a clock change that moved the date backwards.
        horizon = max((last_closed - first).days, 0) + 9
        found: float | None = None
        for offset in range(-1, horizon):
            day = first + dt.timedelta(days=offset)
            hits = [c for c in self._candidates(day) if c > t and self.is_open(c)]
            if hits:
                best = min(hits)
                if found is not None:
                    return min(found, best)
                # Local dates are not quite monotonic in UTC around a clock change, so the
                # next day's candidates are checked too before settling.
                found = best
            elif found is not None:
                return found
        if found is not None:
            return found
        raise ValueError("service hours never open after the given time")

    def _candidates(self, day: dt.date) -> Iterator[float]:
        """Instants around ``day`` where the calendar may go from closed to open.

        Openness depends only on the local wall time, so it can only switch on when the wall
        time reaches a window start (either occurrence of a repeated time) or jumps at a UTC
        offset change into the middle of a window.
        """
        for start, _ in self.week[day.weekday()]:
            wall = dt.datetime.combine(day, dt.time()) + dt.timedelta(seconds=start)
            for fold in (0, 1):
                ts = wall.replace(tzinfo=self.tz, fold=fold).timestamp()
                # A time in a skipped gap does not round-trip; its opening is the
                # transition itself, found below.
                if dt.datetime.fromtimestamp(ts, self.tz).replace(tzinfo=None) == wall:
                    yield ts
        lo = int(dt.datetime.combine(day, dt.time(), self.tz).timestamp()) - _MARGIN
        hi = lo + _DAY_SECONDS + 2 * _MARGIN
        for x in _transitions(self.tz, lo, hi):
            # Each transition belongs to the local day it lands in, so days stay ordered.
            if dt.datetime.fromtimestamp(x, self.tz).date() == day:
                yield float(x)


def _transitions(tz: ZoneInfo, lo: int, hi: int) -> Iterator[int]:
    """UTC offset changes of ``tz`` in ``(lo, hi]`` (whole seconds), at most one per hour."""

    def offset(x: int) -> dt.timedelta | None:
        return dt.datetime.fromtimestamp(x, tz).utcoffset()

    step = 3600
    a = lo
    while a < hi:
        b = min(a + step, hi)
        if offset(a) != offset(b):
            left, right = a, b
            # Bisect to the first second with the new offset (tzdb changes on whole seconds).
            while right - left > 1:
                mid = (left + right) // 2
                if offset(mid) == offset(left):
                    left = mid
                else:
                    right = mid
            yield right
        a = b


def _parse_day(raw: Any, key: str) -> tuple[tuple[int, int], ...]:
    if raw is None:
        return ()
    if isinstance(raw, str) or not isinstance(raw, list | tuple):
        raise ValueError(f"{key}: expected a list of 'HH:MM-HH:MM' ranges")
    ranges: list[tuple[int, int, str]] = []
    for item in raw:
        if not isinstance(item, str):
            raise ValueError(f"{key}: {item!r} is not a 'HH:MM-HH:MM' range")
        m = _RANGE.match(item)
        if not m:
            raise ValueError(f"{key}: {item!r} is not a 'HH:MM-HH:MM' range")
        sh, sm, eh, em = (int(g) for g in m.groups())
        if sh > 23 or sm > 59:
            raise ValueError(f"{key}: {item!r} has an invalid start time")
        if em > 59 or eh > 24 or (eh == 24 and em != 0):
            raise ValueError(f"{key}: {item!r} has an invalid end time (latest is 24:00)")
        start, end = sh * 3600 + sm * 60, eh * 3600 + em * 60
        if end < start:
            raise ValueError(f"{key}: {item!r} ends before it starts")
        if end == start:
            raise ValueError(f"{key}: {item!r} is empty")
        ranges.append((start, end, item))
    ranges.sort()
    for (_, prev_end, prev), (start, _, item) in itertools.pairwise(ranges):
        if start < prev_end:
            raise ValueError(f"{key}: {item!r} overlaps {prev!r}")
    return tuple((s, e) for s, e, _ in ranges)


def _plain(config: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON-friendly deep copy of the config (dates back to ISO strings)."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        if k == "closed_dates":
            out[k] = [x.isoformat() if isinstance(x, dt.date) else str(x) for x in v]
        elif isinstance(v, tuple):
            out[k] = list(v)
        else:
            out[k] = copy.deepcopy(v)
    return out
