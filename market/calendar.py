"""KRX trading sessions: exchange-calendars' XKRX, compiled into a table, plus a small override
file for its gaps.

`krx_sessions.json` beside this module holds XKRX's sessions (day, open, close in Asia/Seoul,
including the 10:00 open of the first session of the year) for 2023-01-01 .. 2027-12-31; it is
generated from exchange-calendars by `python -m market.calendar_build`, and a test fails when
the two drift apart. Reading it needs neither exchange-calendars nor pandas, so a worker starts
in milliseconds rather than seconds and tens of megabytes lighter. A day outside the table's
range raises ValueError ("outside the calendar range"); widen the range by regenerating it.

`overrides.toml` beside this module corrects what XKRX gets wrong: days it shows as open that
KRX closes, and exam days when KRX shifts the whole schedule one hour later. We never keep a
hand-written full holiday list.

Every session has a continuous phase (`open` .. `continuous_close`) and a closing single-price
auction (`continuous_close` .. `close`); XKRX only knows the close, and the auction is the last
ten minutes unless an override says otherwise. `default_calendar()` caches the calendar with
the packaged table and overrides.
"""

from __future__ import annotations

import bisect
import functools
import json
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from market.clock import KST

CALENDAR_START = date(2023, 1, 1)
CALENDAR_END = date(2027, 12, 31)
#: Length of the closing single-price auction when only the close is known.
CLOSING_AUCTION = timedelta(minutes=10)
DEFAULT_OVERRIDES = Path(__file__).with_name("overrides.toml")
#: XKRX's sessions, compiled by `python -m market.calendar_build`.
DEFAULT_TABLE = Path(__file__).with_name("krx_sessions.json")


@dataclass(frozen=True)
class Session:
    """One KRX trading day. All instants are timezone-aware Asia/Seoul."""

    day: date
    open: datetime
    continuous_close: datetime  # the closing single-price auction starts here
    close: datetime  # the auction executes here; the session is over

    def __post_init__(self) -> None:
        for name in ("open", "continuous_close", "close"):
            if getattr(self, name).tzinfo is None:
                raise ValueError(f"Session.{name} must be timezone-aware")
        if not self.open < self.continuous_close <= self.close:
            raise ValueError(f"Session {self.day}: need open < continuous_close <= close")

    def liquidation_start(self, lead: timedelta) -> datetime:
        """When forced liquidation begins: `lead` before the close."""
        return self.close - lead

    def contains(self, at: datetime) -> bool:
        """True from the open (inclusive) to the close (exclusive)."""
        return self.open <= at < self.close

    def in_continuous(self, at: datetime) -> bool:
        return self.open <= at < self.continuous_close

    def in_closing_auction(self, at: datetime) -> bool:
        return self.continuous_close <= at < self.close


@dataclass(frozen=True)
class SessionHours:
    """An override's non-standard hours for one day (local Asia/Seoul times)."""

    day: date
    open: time
    continuous_close: time
    close: time
    reason: str

    def session(self) -> Session:
        def at(t: time) -> datetime:
            return datetime.combine(self.day, t, tzinfo=KST)

        return Session(self.day, at(self.open), at(self.continuous_close), at(self.close))


@dataclass(frozen=True)
class Overrides:
    closed: Mapping[date, str]  # day -> reason
    hours: Mapping[date, SessionHours]


def _entry_date(entry: Mapping[str, Any], key: str, where: str) -> date:
    value = entry.get(key)
    if not isinstance(value, date) or isinstance(value, datetime):
        raise ValueError(f"{where}: '{key}' must be a TOML local date like 2026-06-03")
    return value


def _entry_time(entry: Mapping[str, Any], key: str, where: str) -> time:
    value = entry.get(key)
    if not isinstance(value, time) or value.tzinfo is not None:
        raise ValueError(f"{where}: '{key}' must be a TOML local time like 10:00:00")
    return value


def _entry_reason(entry: Mapping[str, Any], where: str) -> str:
    reason = entry.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise ValueError(f"{where}: 'reason' must be a non-empty string")
    return reason


_ALLOWED_KEYS = {
    "closed": {"day", "reason"},
    "hours": {"day", "open", "continuous_close", "close", "reason"},
}


def _entries(doc: Mapping[str, Any], kind: str, name: str) -> list[tuple[str, Mapping[str, Any]]]:
    raw = doc.get(kind, [])
    if not isinstance(raw, list):
        raise ValueError(f"{name}: '{kind}' must be an array of tables ([[{kind}]])")
    out: list[tuple[str, Mapping[str, Any]]] = []
    for i, entry in enumerate(raw):
        where = f"{name}: {kind}[{i}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: must be a table")
        if isinstance(entry.get("day"), date):
            where += f" ({entry['day']})"
        unknown = set(entry) - _ALLOWED_KEYS[kind]
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
        out.append((where, entry))
    return out


def load_overrides(path: Path, start: date, end: date) -> Overrides:
    """Parse and validate an override file; any problem raises ValueError naming the entry."""
    name = str(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{name}: not valid TOML: {exc}") from exc
    unknown = set(doc) - set(_ALLOWED_KEYS)
    if unknown:
        raise ValueError(f"{name}: unknown sections {sorted(unknown)}")
    closed: dict[date, str] = {}
    hours: dict[date, SessionHours] = {}
    seen: dict[date, str] = {}

    def claim(day: date, where: str) -> None:
        if not start <= day <= end:
            raise ValueError(f"{where}: day outside the calendar range {start}..{end}")
        if day in seen:
            raise ValueError(f"{where}: day already overridden by {seen[day]}")
        seen[day] = where

    for where, entry in _entries(doc, "closed", name):
        day = _entry_date(entry, "day", where)
        reason = _entry_reason(entry, where)
        claim(day, where)
        closed[day] = reason
    for where, entry in _entries(doc, "hours", name):
        day = _entry_date(entry, "day", where)
        opens = _entry_time(entry, "open", where)
        auction = _entry_time(entry, "continuous_close", where)
        closes = _entry_time(entry, "close", where)
        reason = _entry_reason(entry, where)
        if not opens < auction <= closes:
            raise ValueError(f"{where}: need open < continuous_close <= close")
        claim(day, where)
        hours[day] = SessionHours(day, opens, auction, closes, reason)
    return Overrides(closed, hours)


@dataclass(frozen=True)
class SessionTable:
    """XKRX's sessions from `start` to `end` (both inclusive): (day, open, close) in Asia/Seoul
    local time, sorted by day; every other day in the range has no session."""

    start: date
    end: date
    source: str  # what it was compiled from, e.g. "exchange-calendars 4.13.2 XKRX"
    sessions: tuple[tuple[date, time, time], ...]

    @classmethod
    def load(cls, path: Path) -> SessionTable:
        return cls.loads(path.read_text(encoding="utf-8"), str(path))

    @classmethod
    def loads(cls, text: str, name: str = "session table") -> SessionTable:
        """Parse and validate; any problem raises ValueError naming the file and the row."""
        try:
            doc = json.loads(text)
            start = date.fromisoformat(doc["start"])
            end = date.fromisoformat(doc["end"])
            source = str(doc["source"])
            raw: Sequence[Sequence[str]] = doc["sessions"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{name}: not a session table: {exc!r}") from exc
        if doc.get("timezone") != "Asia/Seoul":
            raise ValueError(f"{name}: times must be Asia/Seoul local time")
        rows: list[tuple[date, time, time]] = []
        for i, row in enumerate(raw):
            try:
                day, opens, closes = row
                parsed = (date.fromisoformat(day), time.fromisoformat(opens),
                          time.fromisoformat(closes))  # fmt: skip
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{name}: sessions[{i}] {row!r}: {exc}") from exc
            if not start <= parsed[0] <= end:
                raise ValueError(f"{name}: sessions[{i}] outside {start}..{end}")
            if rows and parsed[0] <= rows[-1][0]:
                raise ValueError(f"{name}: sessions[{i}] not after the previous day")
            if not parsed[1] < parsed[2]:
                raise ValueError(f"{name}: sessions[{i}] must open before it closes")
            rows.append(parsed)
        return cls(start, end, source, tuple(rows))

    def dumps(self) -> str:
        """JSON, one session a line (a regenerated table diffs line by line)."""
        head = {"source": self.source, "start": self.start.isoformat(),
                "end": self.end.isoformat(), "timezone": "Asia/Seoul"}  # fmt: skip
        lines = [f'    ["{d}", "{o:%H:%M}", "{c:%H:%M}"]' for d, o, c in self.sessions]
        fields = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in head.items())
        body = ",\n".join(lines)
        return f'{{\n{fields},\n  "sessions": [\n{body}\n  ]\n}}\n'

    def differences(self, other: SessionTable) -> list[str]:
        """What `other` has that this table has not, one line each (empty: the same)."""
        out: list[str] = []
        if (self.start, self.end) != (other.start, other.end):
            out.append(f"range {self.start}..{self.end} != {other.start}..{other.end}")
        ours = {d: (o, c) for d, o, c in self.sessions}
        theirs = {d: (o, c) for d, o, c in other.sessions}
        for day in sorted(ours.keys() | theirs.keys()):
            a, b = ours.get(day), theirs.get(day)
            if a != b:
                shown = [f"{x[0]:%H:%M}-{x[1]:%H:%M}" if x else "closed" for x in (a, b)]
                out.append(f"{day}: table {shown[0]}, {other.source} {shown[1]}")
        return out


def _as_day(day: date) -> date:
    # A datetime is a date too; take its Seoul calendar day rather than its naive date part.
    if isinstance(day, datetime):
        if day.tzinfo is None:
            raise ValueError("datetime must be timezone-aware")
        return day.astimezone(KST).date()
    return day


class KrxCalendar:
    """KRX sessions for a bounded range of days (the XKRX table plus overrides)."""

    def __init__(
        self,
        overrides_path: Path | None = DEFAULT_OVERRIDES,
        start: date = CALENDAR_START,
        end: date = CALENDAR_END,
        table_path: Path = DEFAULT_TABLE,
    ) -> None:
        if start > end:
            raise ValueError("start must be <= end")
        table = SessionTable.load(table_path)
        if not table.start <= start <= end <= table.end:
            raise ValueError(
                f"calendar range {start}..{end} is not covered by {table_path} "
                f"({table.start}..{table.end}): widen it with 'python -m market.calendar_build "
                f"--start {min(start, table.start)} --end {max(end, table.end)}'"
            )
        self.start = start
        self.end = end
        overrides = (
            load_overrides(overrides_path, start, end)
            if overrides_path is not None
            else Overrides({}, {})
        )
        sessions: dict[date, Session] = {}
        for day, opens, closes in table.sessions:
            if day in overrides.closed or not start <= day <= end:
                continue
            at_open = datetime.combine(day, opens, tzinfo=KST)
            at_close = datetime.combine(day, closes, tzinfo=KST)
            sessions[day] = Session(day, at_open, at_close - CLOSING_AUCTION, at_close)
        for day, hours in overrides.hours.items():
            sessions[day] = hours.session()
        self._sessions = sessions
        self._days = sorted(sessions)
        self.overrides = overrides

    def _check_range(self, day: date) -> None:
        if not self.start <= day <= self.end:
            raise ValueError(f"{day} is outside the calendar range {self.start}..{self.end}")

    def session(self, day: date) -> Session | None:
        """The session on `day`, or None if KRX does not trade that day."""
        day = _as_day(day)
        self._check_range(day)
        return self._sessions.get(day)

    def is_session(self, day: date) -> bool:
        return self.session(day) is not None

    def next_session(self, day: date) -> Session:
        """The first session on or after `day`."""
        day = _as_day(day)
        self._check_range(day)
        i = bisect.bisect_left(self._days, day)
        if i == len(self._days):
            raise ValueError(f"no session on or after {day} within the calendar range")
        return self._sessions[self._days[i]]

    def previous_session(self, day: date) -> Session:
        """The last session strictly before `day`."""
        day = _as_day(day)
        self._check_range(day)
        i = bisect.bisect_left(self._days, day)
        if i == 0:
            raise ValueError(f"no session before {day} within the calendar range")
        return self._sessions[self._days[i - 1]]

    def settlement_day(self, trade_day: date) -> date:
        """T+2: the second session after the trade day (when shares and taxes settle)."""
        trade_day = _as_day(trade_day)
        if not self.is_session(trade_day):
            raise ValueError(f"{trade_day} is not a KRX session")
        i = bisect.bisect_left(self._days, trade_day) + 2
        if i >= len(self._days):
            raise ValueError(f"settlement of {trade_day} falls outside the calendar range")
        return self._days[i]

    def sessions_between(self, first: date, last: date) -> list[Session]:
        """Every session with first <= day <= last."""
        lo = bisect.bisect_left(self._days, _as_day(first))
        hi = bisect.bisect_right(self._days, _as_day(last))
        return [self._sessions[d] for d in self._days[lo:hi]]


@functools.cache
def default_calendar() -> KrxCalendar:
    """The process-wide calendar: the packaged XKRX table (2023..2027) plus overrides."""
    return KrxCalendar()
