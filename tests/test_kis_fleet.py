"""A BROKER=kis fleet day on the exchange, smaller than `bench/kis_fleet.py`: the exchange (rate
limit on, real domain), two `python -m worker gateway` processes and four `python -m worker run`
workers, every one a separate process on the exchange's simulated clock; the active gateway is
SIGKILLed while the fleet trades. At the close: every worker exited 0, flat in the ledger and at
the exchange, every order final, per order the ledger's fills equal the exchange's to the share
and the won, no request refused for rate, one access token all day, the standby took over and
served, and fill notices reached the ledger.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from kis_fleet import DayPlan, run_day

pytestmark = pytest.mark.slow


@pytest.fixture
def closing() -> Iterator[Callable[[Callable[[], object]], None]]:
    stops: list[Callable[[], object]] = []
    yield stops.append
    for stop in reversed(stops):
        stop()


def test_a_kis_fleet_loses_its_active_gateway_and_ends_the_day_exact(
    database_url: str,
    redis_url: str,
    prefix: str,
    tmp_path: Path,
    closing: Callable[[Callable[[], object]], None],
) -> None:
    plan = DayPlan(
        domain="real", workers=4, speed=75.0, join="15:07", kill="15:11", symbols=4,
        order_poll_s=150.0, lead_s=6.0,
    )  # fmt: skip
    result = run_day(plan, root=tmp_path, database_url=database_url, redis_url=redis_url,
                     prefix=prefix, on_close=closing)  # fmt: skip
    figures = result.figures
    print(" ".join(f"{k}={v}" for k, v in figures.items()))
    assert result.failures == [], (result.failures, figures)
    assert figures["rate_refusals"] == 0
    assert figures["token_issues"] == 1
    assert figures["orders"] > 0
    assert figures["takeover_s"] < 6.0  # GATEWAY_LEASE_TTL_MS 3000 plus the standby's poll
    assert figures["takeover_serving_s"] < 10.0
    assert figures["notices"] > 0
