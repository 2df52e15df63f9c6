"""When a long-running worker (WAIT_FOR_SESSION) wakes for the next session."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from market.calendar import default_calendar
from market.clock import KST
from worker.app import next_wake

LEAD = timedelta(minutes=5)


@pytest.mark.parametrize(
    ("now", "wake"),
    [
        # a normal day, before the open: today's open
        (datetime(2026, 11, 24, 7, 0, tzinfo=KST), datetime(2026, 11, 24, 8, 55, tzinfo=KST)),
        # during the session: today's (the worker joins in progress)
        (datetime(2026, 11, 24, 11, 0, tzinfo=KST), datetime(2026, 11, 24, 8, 55, tzinfo=KST)),
        # after Tuesday's close: Wednesday
        (datetime(2026, 11, 24, 15, 31, tzinfo=KST), datetime(2026, 11, 25, 8, 55, tzinfo=KST)),
        # Friday evening: Monday
        (datetime(2026, 11, 27, 18, 0, tzinfo=KST), datetime(2026, 11, 30, 8, 55, tzinfo=KST)),
        # the evening before the exam day: it opens an hour late
        (datetime(2026, 11, 18, 20, 0, tzinfo=KST), datetime(2026, 11, 19, 9, 55, tzinfo=KST)),
        # before the local-election holiday (2026-06-03, missing from XKRX): June 4th
        (datetime(2026, 6, 2, 16, 0, tzinfo=KST), datetime(2026, 6, 4, 8, 55, tzinfo=KST)),
    ],
)
def test_next_wake(now: datetime, wake: datetime) -> None:
    assert next_wake(now, default_calendar(), LEAD) == wake
