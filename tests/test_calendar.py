"""Service hours: parsing, is_open/next_open, DST weeks and closed dates."""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from switch.calendar import ServiceHours

MADRID = ZoneInfo("Europe/Madrid")
WEEKDAYS_9_18: dict[str, Any] = {d: ["09:00-18:00"] for d in ("mon", "tue", "wed", "thu", "fri")}


def ts(
    tz: ZoneInfo, y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0, *, fold: int = 0
) -> float:
    return dt.datetime(y, mo, d, h, mi, s, tzinfo=tz, fold=fold).timestamp()


def local(tz: ZoneInfo, t: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(t, tz)


def madrid(**days: Any) -> ServiceHours:
    return ServiceHours.from_config({"timezone": "Europe/Madrid", **days})


# -- parsing -----------------------------------------------------------------------------


def test_from_config_parses_windows_and_keeps_config() -> None:
    cfg = {
        "timezone": "Europe/Istanbul",
        "mon": ["13:30-18:00", "09:00-12:30"],
        "sat": ["10:00-24:00"],
        "sun": [],
        "closed_dates": ["2026-12-31"],
    }
    hours = ServiceHours.from_config(cfg)
    assert hours.week[0] == ((9 * 3600, 12 * 3600 + 1800), (13 * 3600 + 1800, 18 * 3600))
    assert hours.week[5] == ((10 * 3600, 24 * 3600),)
    assert hours.week[1] == () and hours.week[6] == ()
    assert hours.closed_dates == frozenset({dt.date(2026, 12, 31)})
    assert hours.config == cfg
    assert hours.config is not cfg
    # The stored config rebuilds the same calendar (that is how jobs survive a restart).
    assert ServiceHours.from_config(hours.config) == hours


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"mon": ["18:00-09:00"]}, "service_hours.mon: '18:00-09:00' ends before it starts"),
        ({"tue": ["09:00-09:00"]}, "service_hours.tue: '09:00-09:00' is empty"),
        ({"wed": ["9-17"]}, "service_hours.wed: '9-17' is not a 'HH:MM-HH:MM' range"),
        ({"thu": ["24:00-24:00"]}, "service_hours.thu: '24:00-24:00' has an invalid start"),
        ({"fri": ["09:00-24:30"]}, "service_hours.fri: '09:00-24:30' has an invalid end"),
        ({"fri": ["09:60-10:00"]}, "invalid start"),
        ({"sat": "09:00-10:00"}, "service_hours.sat: expected a list"),
        ({"mon": ["09:00-12:00", "11:00-13:00"]}, "'11:00-13:00' overlaps '09:00-12:00'"),
        ({"monday": ["09:00-12:00"]}, "unknown key(s) monday"),
        ({"timezone": "Mars/Olympus"}, "service_hours.timezone: unknown time zone"),
        ({"closed_dates": ["2026-02-30"]}, "service_hours.closed_dates: '2026-02-30'"),
    ],
)
def test_from_config_rejects_bad_input(cfg: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as info:
        ServiceHours.from_config(cfg)
    assert message in str(info.value)


def test_error_key_prefix_is_configurable() -> None:
    with pytest.raises(ValueError, match=r"^calendars\.support\.mon: "):
        ServiceHours.from_config({"mon": ["18:00-09:00"]}, key="calendars.support")


def test_adjacent_windows_are_allowed() -> None:
    hours = madrid(mon=["09:00-12:00", "12:00-13:00"])
    assert hours.is_open(ts(MADRID, 2026, 3, 2, 12, 0))


# -- is_open / next_open -------------------------------------------------------------------


def test_is_open_boundaries() -> None:
    hours = madrid(**WEEKDAYS_9_18)
    # Monday 2 March 2026.
    assert not hours.is_open(ts(MADRID, 2026, 3, 2, 8, 59, 59))
    assert hours.is_open(ts(MADRID, 2026, 3, 2, 9, 0))
    assert hours.is_open(ts(MADRID, 2026, 3, 2, 17, 59, 59))
    assert not hours.is_open(ts(MADRID, 2026, 3, 2, 18, 0))  # the end is exclusive
    assert not hours.is_open(ts(MADRID, 2026, 3, 7, 12, 0))  # Saturday: missing = closed


def test_window_until_midnight() -> None:
    hours = madrid(mon=["20:00-24:00"], tue=["00:00-02:00"])
    assert hours.is_open(ts(MADRID, 2026, 3, 2, 23, 59, 59))
    assert hours.is_open(ts(MADRID, 2026, 3, 3, 0, 0))
    assert not hours.is_open(ts(MADRID, 2026, 3, 3, 2, 0))


def test_next_open_returns_t_when_open() -> None:
    hours = madrid(**WEEKDAYS_9_18)
    t = ts(MADRID, 2026, 3, 2, 10, 15) + 0.25
    assert hours.next_open(t) == t


def test_next_open_same_day_and_between_windows() -> None:
    hours = ServiceHours.from_config(
        {"timezone": "Europe/Istanbul", "mon": ["09:00-12:30", "13:30-18:00"]}
    )
    ist = ZoneInfo("Europe/Istanbul")
    assert hours.next_open(ts(ist, 2026, 3, 2, 7, 0)) == ts(ist, 2026, 3, 2, 9, 0)
    assert hours.next_open(ts(ist, 2026, 3, 2, 12, 30)) == ts(ist, 2026, 3, 2, 13, 30)
    # After Monday's last window: next Monday.
    assert hours.next_open(ts(ist, 2026, 3, 2, 18, 0)) == ts(ist, 2026, 3, 9, 9, 0)


def test_friday_evening_to_monday_morning() -> None:
    hours = madrid(**WEEKDAYS_9_18)
    friday_evening = ts(MADRID, 2026, 3, 6, 20, 0)
    assert hours.next_open(friday_evening) == ts(MADRID, 2026, 3, 9, 9, 0)


def test_never_open_raises() -> None:
    with pytest.raises(ValueError, match="never open"):
        madrid().next_open(ts(MADRID, 2026, 3, 2, 9, 0))


# -- DST -----------------------------------------------------------------------------------


def test_dst_spring_forward_weekend_madrid() -> None:
    """Clocks go 02:00 CET -> 03:00 CEST on Sunday 29 March 2026."""
    hours = madrid(**WEEKDAYS_9_18)
    friday_evening = ts(MADRID, 2026, 3, 27, 19, 0)
    opened = hours.next_open(friday_evening)
    assert local(MADRID, opened).replace(tzinfo=None) == dt.datetime(2026, 3, 30, 9, 0)
    # 09:00 CEST is 07:00 UTC; counting whole days from Friday's +01:00 would give 08:00.
    assert opened == dt.datetime(2026, 3, 30, 7, 0, tzinfo=dt.UTC).timestamp()
    assert opened - friday_evening == (2 * 24 + 14 - 1) * 3600


def test_dst_spring_forward_window_starting_in_the_gap_opens_at_the_jump() -> None:
    hours = madrid(sun=["02:30-04:00"])
    before = ts(MADRID, 2026, 3, 29, 1, 0)
    opened = hours.next_open(before)
    # 02:30 never happens that night: the window opens when clocks jump to 03:00 CEST.
    assert opened == dt.datetime(2026, 3, 29, 1, 0, tzinfo=dt.UTC).timestamp()
    assert local(MADRID, opened).replace(tzinfo=None) == dt.datetime(2026, 3, 29, 3, 0)
    assert hours.is_open(opened)
    assert not hours.is_open(opened - 1)


def test_dst_spring_forward_window_inside_gap_is_skipped() -> None:
    hours = madrid(sun=["02:00-02:59"], mon=["10:00-11:00"])
    before = ts(MADRID, 2026, 3, 29, 0, 0)
    # 02:00-02:59 does not exist that Sunday; next is Monday 10:00.
    assert hours.next_open(before) == ts(MADRID, 2026, 3, 30, 10, 0)


def test_dst_fall_back_repeated_hour_is_open_twice() -> None:
    """Clocks go 03:00 CEST -> 02:00 CET on Sunday 25 October 2026."""
    hours = madrid(sun=["02:00-02:30"])
    first = ts(MADRID, 2026, 10, 25, 2, 0, fold=0)
    second = ts(MADRID, 2026, 10, 25, 2, 0, fold=1)
    assert second - first == 3600
    assert hours.next_open(ts(MADRID, 2026, 10, 25, 1, 0)) == first
    assert hours.is_open(first + 600) and hours.is_open(second + 600)
    between = ts(MADRID, 2026, 10, 25, 2, 45, fold=0)
    assert not hours.is_open(between)
    assert hours.next_open(between) == second


def test_dst_fall_back_week_opening_times() -> None:
    hours = madrid(**WEEKDAYS_9_18)
    opened = hours.next_open(ts(MADRID, 2026, 10, 23, 18, 30))
    assert opened == dt.datetime(2026, 10, 26, 8, 0, tzinfo=dt.UTC).timestamp()  # 09:00 CET


# -- closed dates --------------------------------------------------------------------------


def test_closed_dates_skip_whole_days() -> None:
    hours = madrid(**WEEKDAYS_9_18, closed_dates=["2026-12-31", "2027-01-01"])
    # Thursday 31 Dec and Friday 1 Jan are closed: next opening is Monday 4 Jan.
    assert not hours.is_open(ts(MADRID, 2026, 12, 31, 10, 0))
    assert hours.is_open(ts(MADRID, 2026, 12, 30, 10, 0))
    assert hours.next_open(ts(MADRID, 2026, 12, 30, 18, 0)) == ts(MADRID, 2027, 1, 4, 9, 0)


def test_closed_dates_spanning_weeks() -> None:
    dates = [(dt.date(2026, 8, 1) + dt.timedelta(days=i)).isoformat() for i in range(31)]
    hours = madrid(**WEEKDAYS_9_18, closed_dates=dates)
    # Closed all August; Tuesday 1 September 09:00 is next.
    assert hours.next_open(ts(MADRID, 2026, 7, 31, 18, 0)) == ts(MADRID, 2026, 9, 1, 9, 0)


def test_window_across_midnight_after_closed_date() -> None:
    hours = madrid(thu=["20:00-24:00"], fri=["00:00-03:00"], closed_dates=["2026-12-31"])
    # Thursday 31 Dec is closed, Friday 1 Jan opens at midnight.
    assert hours.next_open(ts(MADRID, 2026, 12, 31, 19, 0)) == ts(MADRID, 2027, 1, 1, 0, 0)


# -- properties ----------------------------------------------------------------------------

_PROPERTY_HOURS = [
    madrid(**WEEKDAYS_9_18),
    madrid(mon=["08:00-12:30", "13:30-17:00"], sat=["10:00-14:00"], sun=["02:30-04:00"]),
    ServiceHours.from_config(
        {"timezone": "America/New_York", "tue": ["00:00-01:30", "22:00-24:00"],
         "closed_dates": ["2026-11-03"]}
    ),
]


@settings(max_examples=60, deadline=None)
@given(
    index=st.integers(0, len(_PROPERTY_HOURS) - 1),
    t=st.floats(
        dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp(),
        dt.datetime(2027, 1, 1, tzinfo=dt.UTC).timestamp(),
    ),
)
@example(index=0, t=1798761599.9999998)  # rounding to microseconds once said "open" here
def test_next_open_is_the_first_open_instant(index: int, t: float) -> None:
    hours = _PROPERTY_HOURS[index]
    opened = hours.next_open(t)
    assert opened >= t
    assert hours.is_open(opened)
    if opened > t:
        # Every window is at least 30 minutes long, so a 10-minute scan cannot miss one.
        probe = t
        while probe < opened:
            assert not hours.is_open(probe)
            probe += 600
        assert not hours.is_open(max(t, opened - 0.5))
