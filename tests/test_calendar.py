"""KRX sessions: the compiled XKRX table plus the override file (market/calendar.py), and the
table against exchange-calendars (market/calendar_build.py)."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import pytest

from market.calendar import DEFAULT_TABLE, KrxCalendar, Session, SessionTable, default_calendar
from market.clock import KST


def kst(day: date, hh: int, mm: int) -> datetime:
    return datetime(day.year, day.month, day.day, hh, mm, tzinfo=KST)


@pytest.fixture(scope="module")
def cal() -> KrxCalendar:
    return default_calendar()


@pytest.mark.slow
def test_default_calendar_is_cached() -> None:
    assert default_calendar() is default_calendar()


@pytest.mark.parametrize("day", [date(2026, 6, 3), date(2026, 7, 17)])
def test_override_closes_days_xkrx_shows_open(cal: KrxCalendar, day: date) -> None:
    assert KrxCalendar(overrides_path=None).is_session(day)  # the gap the override fills
    assert cal.session(day) is None
    assert not cal.is_session(day)


@pytest.mark.parametrize("day", [date(2026, 11, 19), date(2025, 11, 13)])
def test_exam_day_shifts_the_schedule_one_hour(cal: KrxCalendar, day: date) -> None:
    s = cal.session(day)
    assert s is not None
    assert (s.open, s.continuous_close, s.close) == (
        kst(day, 10, 0),
        kst(day, 16, 20),
        kst(day, 16, 30),
    )
    plain = KrxCalendar(overrides_path=None).session(day)
    assert plain is not None
    assert plain.open == kst(day, 9, 0)


def test_normal_day(cal: KrxCalendar) -> None:
    day = date(2026, 3, 10)
    s = cal.session(day)
    assert s == Session(day, kst(day, 9, 0), kst(day, 15, 20), kst(day, 15, 30))
    assert s.open.utcoffset() == timedelta(hours=9)


def test_first_session_of_the_year_opens_at_ten_once(cal: KrxCalendar) -> None:
    day = date(2026, 1, 2)
    s = cal.session(day)
    assert s is not None
    # XKRX already shifts the open; the close and the auction keep their usual times.
    assert (s.open, s.continuous_close, s.close) == (
        kst(day, 10, 0),
        kst(day, 15, 20),
        kst(day, 15, 30),
    )


def test_weekend_and_navigation(cal: KrxCalendar) -> None:
    saturday = date(2026, 3, 14)
    assert cal.session(saturday) is None
    assert cal.next_session(saturday).day == date(2026, 3, 16)
    assert cal.next_session(date(2026, 3, 16)).day == date(2026, 3, 16)  # on or after
    assert cal.previous_session(date(2026, 3, 16)).day == date(2026, 3, 13)  # strictly before
    # Around a closed override day.
    assert cal.next_session(date(2026, 6, 3)).day == date(2026, 6, 4)
    assert cal.previous_session(date(2026, 6, 4)).day == date(2026, 6, 2)


def test_settlement_across_the_new_year(cal: KrxCalendar) -> None:
    assert cal.settlement_day(date(2024, 12, 27)) == date(2025, 1, 2)
    assert cal.settlement_day(date(2025, 12, 30)) == date(2026, 1, 5)
    assert cal.settlement_day(date(2026, 3, 12)) == date(2026, 3, 16)  # over a weekend
    with pytest.raises(ValueError, match="not a KRX session"):
        cal.settlement_day(date(2026, 3, 14))


def test_aware_datetime_is_read_as_its_seoul_day(cal: KrxCalendar) -> None:
    # 2026-03-13 16:00 UTC is already Saturday in Seoul.
    assert cal.session(datetime(2026, 3, 13, 16, 0, tzinfo=UTC)) is None


def test_outside_range_raises(cal: KrxCalendar) -> None:
    with pytest.raises(ValueError, match="outside the calendar range"):
        cal.session(date(2030, 1, 2))


def test_session_contains_and_liquidation_start(cal: KrxCalendar) -> None:
    s = cal.session(date(2026, 3, 10))
    assert s is not None
    assert not s.contains(s.open - timedelta(microseconds=1))
    assert s.contains(s.open)
    assert s.contains(s.close - timedelta(microseconds=1))
    assert not s.contains(s.close)
    assert s.in_closing_auction(s.continuous_close)
    assert not s.in_continuous(s.continuous_close)
    assert s.liquidation_start(timedelta(minutes=15)) == kst(s.day, 15, 15)


def test_session_requires_aware_ordered_instants() -> None:
    day = date(2026, 3, 10)
    with pytest.raises(ValueError, match="timezone-aware"):
        Session(day, datetime(2026, 3, 10, 9), kst(day, 15, 20), kst(day, 15, 30))
    with pytest.raises(ValueError, match="open < continuous_close"):
        Session(day, kst(day, 15, 20), kst(day, 9, 0), kst(day, 15, 30))


def test_custom_override_file(tmp_path: Path) -> None:
    path = tmp_path / "o.toml"
    path.write_text(
        "[[closed]]\nday = 2026-03-10\nreason = 'test'\n"
        "[[hours]]\nday = 2026-03-11\nopen = 09:30:00\ncontinuous_close = 14:50:00\n"
        "close = 15:00:00\nreason = 'test'\n",
        encoding="utf-8",
    )
    cal = KrxCalendar(overrides_path=path)
    assert not cal.is_session(date(2026, 3, 10))
    s = cal.session(date(2026, 3, 11))
    assert s is not None
    assert s.open == kst(s.day, 9, 30)
    assert s.close == kst(s.day, 15, 0)
    # The packaged overrides are not applied on top of a custom file.
    assert cal.is_session(date(2026, 6, 3))


BAD_FILES = [
    ("[[closed]\n", "not valid TOML"),
    ("[[closed]]\nday = 2026-06-03\n", r"closed\[0\] \(2026-06-03\).*reason"),
    ("[[closed]]\nday = '2026-06-03'\nreason = 'x'\n", r"closed\[0\].*local date"),
    ("[[closed]]\nday = 2026-06-03T00:00:00\nreason = 'x'\n", r"closed\[0\].*local date"),
    ("[[closed]]\nday = 2026-06-03\nreason = 'x'\nwhy = 1\n", r"closed\[0\].*unknown keys"),
    ("[[closed]]\nday = 2031-06-03\nreason = 'x'\n", r"closed\[0\].*outside the calendar"),
    (
        "[[closed]]\nday = 2026-06-03\nreason = 'x'\n[[closed]]\nday = 2026-06-03\nreason = 'y'\n",
        r"closed\[1\].*already overridden by .*closed\[0\]",
    ),
    (
        "[[hours]]\nday = 2026-11-19\nopen = 16:00:00\ncontinuous_close = 10:00:00\n"
        "close = 16:30:00\nreason = 'x'\n",
        r"hours\[0\] \(2026-11-19\).*open < continuous_close",
    ),
    (
        "[[hours]]\nday = 2026-11-19\nopen = '10:00'\ncontinuous_close = 16:20:00\n"
        "close = 16:30:00\nreason = 'x'\n",
        r"hours\[0\].*'open'.*local time",
    ),
    ("[holidays]\nday = 2026-06-03\n", "unknown sections"),
    ("closed = 3\n", "array of tables"),
]


@pytest.mark.parametrize(("text", "message"), BAD_FILES)
def test_bad_override_file_names_the_entry(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        KrxCalendar(overrides_path=path)


def test_packaged_overrides_cover_the_known_gaps(cal: KrxCalendar) -> None:
    assert set(cal.overrides.closed) == {date(2026, 6, 3), date(2026, 7, 17)}
    assert {date(2025, 11, 13), date(2026, 11, 19)} <= set(cal.overrides.hours)


# ----- the compiled table ----------------------------------------------------------------------


def test_table_matches_exchange_calendars() -> None:
    """The packaged table is XKRX as exchange-calendars computes it today; on a difference,
    regenerate it (`python -m market.calendar_build`) and review overrides.toml."""
    from market.calendar_build import build

    table = SessionTable.load(DEFAULT_TABLE)
    assert (table.start, table.end) == (date(2023, 1, 1), date(2027, 12, 31))
    fresh = build(table.start, table.end)
    assert table.differences(fresh) == []
    assert SessionTable.loads(fresh.dumps()) == fresh  # what the command writes reads back


def test_calendar_reads_without_pandas_or_exchange_calendars() -> None:
    code = (
        "import sys\n"
        "from market.calendar import default_calendar\n"
        "assert default_calendar().is_session(__import__('datetime').date(2026, 3, 10))\n"
        "print(sorted({'pandas', 'exchange_calendars'} & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)  # fmt: skip
    assert out.stdout.strip() == "[]"


def test_differences_name_the_day() -> None:
    a = SessionTable(date(2026, 3, 9), date(2026, 3, 10), "a", (
        (date(2026, 3, 9), time(9), time(15, 30)),
        (date(2026, 3, 10), time(9), time(15, 30)),
    ))  # fmt: skip
    b = SessionTable(date(2026, 3, 9), date(2026, 3, 10), "b", (
        (date(2026, 3, 9), time(10), time(15, 30)),
    ))  # fmt: skip
    assert a.differences(b) == [
        "2026-03-09: table 09:00-15:30, b 10:00-15:30",
        "2026-03-10: table 09:00-15:30, b closed",
    ]
    assert a.differences(a) == []


def test_range_beyond_the_table_names_the_command() -> None:
    with pytest.raises(ValueError, match=r"not covered by .*python -m market.calendar_build"):
        KrxCalendar(start=date(2022, 1, 1))
    with pytest.raises(ValueError, match=r"outside the calendar range 2023-01-01\.\.2027-12-31"):
        default_calendar().next_session(date(2028, 1, 3))


def test_narrower_range_keeps_only_its_sessions() -> None:
    cal = KrxCalendar(overrides_path=None, start=date(2026, 3, 1), end=date(2026, 3, 31))
    assert cal.next_session(date(2026, 3, 1)).day == date(2026, 3, 3)  # 3/2: a holiday
    with pytest.raises(ValueError, match="no session before"):
        cal.previous_session(date(2026, 3, 3))


_ROW = '["2026-03-10", "09:00", "15:30"]'
BAD_TABLES = [
    ("[", "not a session table"),
    ('{"source": "x", "start": "2026-03-01", "sessions": []}', "not a session table"),
    (f'{{"source": "x", "start": "2026-03-01", "end": "2026-03-31", "sessions": [{_ROW}]}}',
     "Asia/Seoul"),
    ('["2026-03-10", "9h", "15:30"]', r"sessions\[0\]"),
    ('["2026-03-10", "09:00"]', r"sessions\[0\]"),
    ('["2026-04-01", "09:00", "15:30"]', r"sessions\[0\] outside"),
    ('["2026-03-10", "15:30", "09:00"]', "open before it closes"),
    (f"{_ROW}, {_ROW}", r"sessions\[1\] not after"),
]  # fmt: skip


@pytest.mark.parametrize(("rows", "message"), BAD_TABLES)
def test_bad_table_names_the_row(tmp_path: Path, rows: str, message: str) -> None:
    text = (
        rows
        if not rows.startswith('["')
        else (
            '{"source": "x", "start": "2026-03-01", "end": "2026-03-31", "timezone": "Asia/Seoul",'
            f' "sessions": [{rows}]}}'
        )
    )
    path = tmp_path / "table.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        KrxCalendar(table_path=path, start=date(2026, 3, 1), end=date(2026, 3, 31))
