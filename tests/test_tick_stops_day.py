"""Stops that react to every trade, over a whole simulated day on virtual time: with the HOLD
check every 10 minutes, each stop loss and take profit is still sold at the print that reached
its level (within the order tracker's poll of it), because the holder waits on the market's
prints; with `TICK_STOPS=0` the same rules wait for the next check."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

import anyio
import psycopg
import pytest
from support import libpq

from market.calendar import default_calendar
from market.sim import SimulatedMarket
from worker.app import run_fleet
from worker.settings import load_settings

pytestmark = pytest.mark.slow  # two whole simulated days

DAY = date(2026, 11, 24)
SEED, SYMBOLS = 11, 120
HOLD_S = 600.0  # the periodic check: every 10 minutes
STOP, TAKE = Decimal("0.6"), Decimal("0.8")  # tight levels, so a day has many of each
SLACK = timedelta(seconds=5)  # the entry's fill poll (ORDER_POLL_S) before HOLD's first wait


def _day(database_url: str, redis_url: str, prefix: str, tick_stops: bool) -> list[tuple]:
    settings = load_settings(
        database_url=database_url,
        redis_url=redis_url,
        fleet_prefix=f"{prefix}{int(tick_stops)}",
        worker_id="ticks",
        paper_seed=SEED,
        paper_symbols=SYMBOLS,
        paper_day=DAY,
        hold_interval_s=HOLD_S,
        tick_stops=tick_stops,
        stop_loss_pct=STOP,
        take_profit_pct=TAKE,
        max_hold_min=120,
    )
    anyio.run(lambda: run_fleet(settings, database_url=database_url, redis_url=redis_url,
                                workers=2, virtual=True, handle_signals=False))  # fmt: skip
    with psycopg.connect(libpq(database_url)) as conn:
        return conn.execute(
            """
            SELECT t.worker_id, t.symbol, t.exit_reason, t.opened_at, p.avg_price,
                   (SELECT min(o.created_at) FROM orders o
                     WHERE o.worker_id = t.worker_id AND o.symbol = t.symbol AND o.side = 'SELL'
                       AND o.reason = t.exit_reason AND o.created_at <= t.closed_at
                       -- after the BUY that opened this position (a re-entry can open at the
                       -- instant the previous position's SELL was placed: order ids tell)
                       AND o.id > (SELECT max(b.id) FROM orders b
                                    WHERE b.worker_id = t.worker_id AND b.symbol = t.symbol
                                      AND b.side = 'BUY' AND b.created_at <= t.opened_at))
            FROM trades t JOIN positions p ON p.id = t.position_id
            WHERE t.trading_day = %s AND t.worker_id LIKE %s
              AND t.exit_reason IN ('stop_loss', 'take_profit')
            """,
            (DAY, "ticks%"),
        ).fetchall()


def _lags(rows: list[tuple]) -> list[timedelta]:
    """Per price exit: its SELL's intent time - max(the first print through its level, the
    position's open)."""
    session = default_calendar().session(DAY)
    assert session is not None
    market = SimulatedMarket(SEED, session, SYMBOLS)
    lags = []
    for _worker, symbol, reason, opened, avg, sold_at in rows:
        assert sold_at is not None, f"{symbol}: a {reason} exit without its SELL order"
        below = avg * (1 - STOP / 100) if reason == "stop_loss" else None
        above = avg * (1 + TAKE / 100) if reason == "take_profit" else None
        touched = market.first_touch(symbol, below, above, opened, sold_at + timedelta(seconds=1))
        assert touched is not None, f"{symbol}: {reason} at {sold_at} without a print through it"
        lags.append(sold_at - max(touched, opened))
    return lags


def test_price_exits_sell_at_the_print_not_at_the_next_check(
    database_url: str, redis_url: str, prefix: str
) -> None:
    rows = _day(database_url, redis_url, prefix, tick_stops=True)
    lags = _lags(rows)
    assert len(lags) >= 5, "tight stops over a whole day: several price exits"
    late = [lag for lag in lags if lag > SLACK]
    assert not late, f"sold {max(late)} after the print with HOLD checks every {HOLD_S:.0f}s"


def test_without_tick_stops_the_same_rules_wait_for_the_check(
    database_url: str, redis_url: str, prefix: str
) -> None:
    lags = _lags(_day(database_url, redis_url, prefix, tick_stops=False))
    assert lags, "price exits happen on polling too"
    assert max(lags) > timedelta(seconds=60), "polling every 10 minutes sells some exits late"
