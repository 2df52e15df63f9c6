"""Buy and sell rules and the orders that carry them out (worker/signals.py): pure, no I/O."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.port import OrderType
from market.clock import KST
from market.ticks import is_on_grid, price_limits, round_to_tick, step, tick_size
from market.types import Quote, Tier
from strategy.scan import Candidate
from strategy.signals import (
    ExitReason,
    HeldPosition,
    SellSignal,
    SignalParams,
    Urgency,
    buy_order,
    evaluate_buy_signal,
    evaluate_sell_signal,
    sell_order,
)

OPENED = datetime(2026, 3, 10, 10, 0, tzinfo=KST)
LIQ = datetime(2026, 3, 10, 15, 15, tzinfo=KST)
PARAMS = SignalParams(
    min_score=0.5,
    stop_loss_pct=Decimal("1.5"),
    take_profit_pct=Decimal("3.0"),
    max_hold=timedelta(minutes=90),
    trend_break_pct=Decimal("0.5"),
    trend_min_hold=timedelta(minutes=5),
)
POSITION = HeldPosition("005930", 10, Decimal(10_000), OPENED)
LATE = replace(POSITION, opened_at=LIQ - timedelta(minutes=10))
SOON = OPENED + timedelta(minutes=1)  # too early for the trend break and the time exit
HELD = OPENED + timedelta(minutes=30)


def quote(
    price: Decimal | int,
    *,
    short_ma: Decimal | None = None,
    bid: Decimal | int | None = None,
    ask: Decimal | int | None = None,
    prev_close: Decimal | int = 10_000,
) -> Quote:
    price = Decimal(price)
    lower, upper = price_limits(Decimal(prev_close))
    return Quote(
        symbol="005930",
        at=OPENED,
        price=price,
        bid=Decimal(bid) if bid is not None else price,
        ask=Decimal(ask) if ask is not None else step(price, 1),
        bid_qty=100,
        ask_qty=100,
        volume=1_000_000,
        traded_value=Decimal(10_000_000_000),
        day_high=price,
        day_low=price,
        prev_close=Decimal(prev_close),
        prev_high=Decimal(prev_close),
        prev_low=Decimal(prev_close),
        upper_limit=upper,
        lower_limit=lower,
        tier=Tier.MID,
        short_ma=short_ma,
    )


def sell(q: Quote, now: datetime = SOON, position: HeldPosition = POSITION) -> SellSignal | None:
    return evaluate_sell_signal(position, q, now, PARAMS, LIQ)


# ----- each sell reason fires at its threshold and not before ---------------------------------

# (reason, quote and instant just before the threshold, at the threshold)
THRESHOLDS = [
    # stop loss at 10,000 x 0.985 = 9,850; one tick (10 won) above does not fire
    (ExitReason.STOP_LOSS, (quote(9_860), SOON), (quote(9_850), SOON)),
    # take profit at 10,000 x 1.03 = 10,300
    (ExitReason.TAKE_PROFIT, (quote(10_290), SOON), (quote(10_300), SOON)),
    # trend break: more than 0.5% below the short MA (10,000 -> 9,950; the rule is strict, so
    # 9,950 itself holds and the next tick down breaks) ...
    (
        ExitReason.TREND_BREAK,
        (quote(9_950, short_ma=Decimal(10_000)), HELD),
        (quote(9_940, short_ma=Decimal(10_000)), HELD),
    ),
    # ... once held five minutes
    (
        ExitReason.TREND_BREAK,
        (quote(9_940, short_ma=Decimal(10_000)), OPENED + timedelta(minutes=5, microseconds=-1)),
        (quote(9_940, short_ma=Decimal(10_000)), OPENED + timedelta(minutes=5)),
    ),
    # time exit after MAX_HOLD
    (
        ExitReason.TIME_EXIT,
        (quote(10_000), OPENED + timedelta(minutes=90) - timedelta(microseconds=1)),
        (quote(10_000), OPENED + timedelta(minutes=90)),
    ),
    # forced liquidation from the liquidation start (a position opened late: no time exit yet)
    (
        ExitReason.FORCED_LIQUIDATION,
        (quote(10_000), LIQ - timedelta(microseconds=1), LATE),
        (quote(10_000), LIQ, LATE),
    ),
]


@pytest.mark.parametrize(("reason", "before", "at"), THRESHOLDS, ids=lambda x: str(x)[:20])
def test_sell_reason_fires_at_its_threshold_and_not_before(
    reason: ExitReason, before: tuple[Any, ...], at: tuple[Any, ...]
) -> None:
    assert sell(*before) is None
    signal = sell(*at)
    assert signal is not None
    assert signal.reason is reason
    assert signal.trigger_price == at[0].price


URGENCY = {
    ExitReason.FORCED_LIQUIDATION: Urgency.MARKETABLE,
    ExitReason.STOP_LOSS: Urgency.MARKETABLE,
    ExitReason.TREND_BREAK: Urgency.MARKETABLE,
    ExitReason.TAKE_PROFIT: Urgency.PASSIVE,
    ExitReason.TIME_EXIT: Urgency.PASSIVE,
}


@pytest.mark.parametrize(("reason", "before", "at"), THRESHOLDS, ids=lambda x: str(x)[:20])
def test_each_reason_carries_its_urgency(
    reason: ExitReason, before: tuple[Any, ...], at: tuple[Any, ...]
) -> None:
    signal = sell(*at)
    assert signal is not None
    assert signal.urgency is URGENCY[reason]


def test_first_matching_rule_wins() -> None:
    crash = quote(9_000, short_ma=Decimal(9_500))
    late = OPENED + timedelta(minutes=120)
    assert sell(crash, LIQ).reason is ExitReason.FORCED_LIQUIDATION  # type: ignore[union-attr]
    assert sell(crash, late).reason is ExitReason.STOP_LOSS  # type: ignore[union-attr]
    rally_below_ma = quote(10_400, short_ma=Decimal(10_500))
    assert sell(rally_below_ma, late).reason is ExitReason.TAKE_PROFIT  # type: ignore[union-attr]
    dip = quote(9_900, short_ma=Decimal(10_000))
    assert sell(dip, late).reason is ExitReason.TREND_BREAK  # type: ignore[union-attr]


def test_no_short_ma_means_no_trend_break() -> None:
    assert sell(quote(9_990), OPENED + timedelta(minutes=10)) is None


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 2_000), st.integers(0, 120))
def test_stop_loss_fires_exactly_at_or_below_its_threshold(ticks_down: int, minutes: int) -> None:
    price = step(POSITION.avg_price, -ticks_down)
    now = OPENED + timedelta(minutes=minutes)
    signal = sell(quote(price), now)
    threshold = POSITION.avg_price * (1 - PARAMS.stop_loss_pct / 100)
    fired = signal is not None and signal.reason is ExitReason.STOP_LOSS
    assert fired == (price <= threshold)


# ----- urgency -> order type ------------------------------------------------------------------


def test_urgency_maps_to_the_order_type() -> None:
    q = quote(10_000, bid=9_990, ask=10_010)
    assert sell_order(Urgency.PASSIVE, q) == (OrderType.LIMIT, Decimal(10_010))  # rests at ask
    assert sell_order(Urgency.MARKETABLE, q) == (OrderType.LIMIT, Decimal(9_990))  # hits bid
    assert sell_order(Urgency.MARKET, q) == (OrderType.MARKET, None)
    assert buy_order(q) == (OrderType.LIMIT, Decimal(10_010))


def test_urgency_escalates_to_market_and_stays() -> None:
    assert Urgency.PASSIVE.escalate() is Urgency.MARKETABLE
    assert Urgency.MARKETABLE.escalate() is Urgency.MARKET
    assert Urgency.MARKET.escalate() is Urgency.MARKET


# ----- every price the worker produces is on the grid and inside the limits -------------------

_GRID_PRICES = st.integers(1_000, 900_000).map(lambda x: round_to_tick(Decimal(x), "down"))


@st.composite
def quotes(draw: st.DrawFn) -> Quote:
    prev_close = draw(_GRID_PRICES)
    lower, upper = price_limits(prev_close)
    lo_i, hi_i = int(lower), int(upper)
    price = round_to_tick(Decimal(draw(st.integers(lo_i, hi_i))), "down")
    price = max(price, lower)
    # Bid and ask anywhere near the band, on or off the grid, even outside the limits: the
    # order functions must still produce a valid price.
    near = st.decimals(
        min_value=Decimal(lo_i) * Decimal("0.9"),
        max_value=Decimal(hi_i) * Decimal("1.1"),
        places=2,
        allow_nan=False,
        allow_infinity=False,
    )
    on_grid = st.integers(lo_i, hi_i).map(lambda x: max(round_to_tick(Decimal(x), "down"), lower))
    bid = draw(st.one_of(on_grid, near))
    ask = draw(st.one_of(on_grid, near))
    return quote(price, bid=bid, ask=ask, prev_close=prev_close)


def within(price: Decimal | None, q: Quote) -> bool:
    return price is not None and is_on_grid(price) and q.lower_limit <= price <= q.upper_limit


@settings(max_examples=500, deadline=None)
@given(quotes(), st.sampled_from(list(Urgency)))
def test_order_prices_are_on_the_grid_and_inside_the_limits(q: Quote, urgency: Urgency) -> None:
    kind, buy_price = buy_order(q)
    assert kind is OrderType.LIMIT
    assert within(buy_price, q)
    kind, sell_price = sell_order(urgency, q)
    if urgency is Urgency.MARKET:
        assert (kind, sell_price) == (OrderType.MARKET, None)
    else:
        assert kind is OrderType.LIMIT
        assert within(sell_price, q)


@settings(max_examples=300, deadline=None)
@given(quotes())
def test_on_grid_quotes_inside_the_limits_are_priced_as_quoted(q: Quote) -> None:
    inside = q.lower_limit <= q.bid <= q.upper_limit and q.lower_limit <= q.ask <= q.upper_limit
    if not (inside and is_on_grid(q.bid) and is_on_grid(q.ask)):
        return
    assert buy_order(q)[1] == q.ask
    assert sell_order(Urgency.PASSIVE, q)[1] == q.ask
    assert sell_order(Urgency.MARKETABLE, q)[1] == q.bid


def test_off_grid_prices_round_away_from_crossing_too_far() -> None:
    q = quote(10_000, bid=Decimal("9993.5"), ask=Decimal("10001"))
    assert tick_size(Decimal(10_000)) == 10
    assert buy_order(q)[1] == Decimal(10_010)  # up: still marketable against the ask
    assert sell_order(Urgency.PASSIVE, q)[1] == Decimal(10_010)
    assert sell_order(Urgency.MARKETABLE, q)[1] == Decimal(9_990)  # down: still hits the bid


def test_prices_beyond_the_limits_are_clamped() -> None:
    q = quote(12_900, bid=12_990, ask=13_100)  # upper limit 13,000
    assert q.upper_limit == 13_000
    assert buy_order(q)[1] == q.upper_limit
    assert sell_order(Urgency.PASSIVE, q)[1] == q.upper_limit
    low = quote(7_000, bid=6_900, ask=6_950)  # lower limit 7,000
    assert sell_order(Urgency.MARKETABLE, low)[1] == low.lower_limit


# ----- the buy rule ---------------------------------------------------------------------------

CANDIDATE = Candidate(
    symbol="005930",
    price=Decimal(10_000),
    score=0.5,
    fast_ma=10_010.0,
    slow_ma=10_000.0,
    breakout_nbar=True,
    breakout_prev_high=False,
    surge=1.0,
    tier=Tier.MID,
    reasons=("momentum +0.10%",),
)


@pytest.mark.parametrize(
    ("change", "buys"),
    [
        ({}, True),  # score exactly at the minimum
        ({"score": 0.4999}, False),
        ({"fast_ma": 10_000.0}, False),  # flat: no uptrend
        ({"breakout_nbar": False}, False),  # no breakout at all
        ({"breakout_nbar": False, "breakout_prev_high": True}, True),
    ],
)
def test_buy_signal_table(change: dict[str, object], buys: bool) -> None:
    assert evaluate_buy_signal(replace(CANDIDATE, **change), PARAMS) is buys  # type: ignore[arg-type]
