"""Compile exchange-calendars' XKRX schedule into the session table `market.calendar` reads.

    python -m market.calendar_build            # rewrite market/krx_sessions.json
    python -m market.calendar_build --check    # exit 1 if the table differs from XKRX
    python -m market.calendar_build --start 2023-01-01 --end 2028-12-31

exchange-calendars (and pandas under it) is a development dependency, `tradefleet[calendar]`:
it is the source of the table, imported only here, never by a running worker. Regenerate after
upgrading it or to widen the range, review the diff, then check `overrides.toml` still lists
only what XKRX gets wrong (tests/test_calendar.py fails while the table and XKRX disagree).

The table is XKRX as published, without the overrides: `KrxCalendar` applies those on top.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from datetime import date, datetime
from pathlib import Path

from market.calendar import CALENDAR_END, CALENDAR_START, DEFAULT_TABLE, SessionTable
from market.clock import KST


def xkrx_sessions(start: date, end: date) -> tuple[tuple[date, datetime, datetime], ...]:
    """(day, open, close) of every XKRX session from `start` to `end`, in Asia/Seoul time."""
    try:
        import exchange_calendars as xcals
    except ImportError:
        raise SystemExit(
            "exchange-calendars is not installed: pip install 'tradefleet[calendar]'"
        ) from None
    with warnings.catch_warnings():
        # exchange-calendars trips pandas deprecation warnings internally; none are ours to fix.
        warnings.simplefilter("ignore")
        cal = xcals.get_calendar("XKRX", start=start.isoformat(), end=end.isoformat())
    schedule = cal.schedule
    rows = zip(schedule.index, schedule["open"], schedule["close"], strict=True)
    return tuple(
        (
            label.date(),
            opens.to_pydatetime().astimezone(KST),
            closes.to_pydatetime().astimezone(KST),
        )
        for label, opens, closes in rows
    )


def xkrx_version() -> str:
    from importlib.metadata import version

    return f"exchange-calendars {version('exchange-calendars')} XKRX"


def build(start: date, end: date) -> SessionTable:
    """The table of XKRX's sessions from `start` to `end`."""
    rows = tuple((d, o.time(), c.time()) for d, o, c in xkrx_sessions(start, end))
    return SessionTable(start, end, xkrx_version(), rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m market.calendar_build",
        description="Compile exchange-calendars' XKRX sessions into market/krx_sessions.json.",
    )
    parser.add_argument("--start", type=date.fromisoformat, help="first day (default: table's)")
    parser.add_argument("--end", type=date.fromisoformat, help="last day (default: table's)")
    parser.add_argument("--out", type=Path, default=DEFAULT_TABLE, help="the table file")
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 on drift")
    args = parser.parse_args(argv)
    current = SessionTable.load(args.out) if args.out.exists() else None
    start = args.start or (current.start if current else CALENDAR_START)
    end = args.end or (current.end if current else CALENDAR_END)
    if start > end:
        parser.error("--start must not be after --end")
    fresh = build(start, end)
    if args.check:
        if current is None:
            print(f"{args.out}: missing", file=sys.stderr)
            return 1
        drift = current.differences(fresh)
        for line in drift[:20]:
            print(line, file=sys.stderr)
        if drift:
            print(f"{len(drift)} difference(s): run 'python -m market.calendar_build'",
                  file=sys.stderr)  # fmt: skip
            return 1
        print(f"{args.out}: matches {fresh.source} ({len(fresh.sessions)} sessions)")
        return 0
    args.out.write_text(fresh.dumps(), encoding="utf-8")
    print(f"{args.out}: {len(fresh.sessions)} sessions {start}..{end} from {fresh.source}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
