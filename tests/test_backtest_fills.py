"""The backtest fill model (broker/backtest.py) over hand-made bars: through the price, the next
bar's open plus slippage, the volume cap, partial fills, the closing auction."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from broker.backtest import BarBroker, FillModel
from broker.errors import OrderRejected
from broker.port import OrderRequest, OrderType, Side
from market.bars import DayBars, load_bars
from market.calendar import default_calendar
from market.clock import ManualClock
from market.costs import CostModel

DAY = date(2026, 3, 10)
HEADER = "symbol,board,minute,open,high,low,close,volume,prev_close,prev_high,prev_low,tier"
# minute: (open, high, low, close, volume); prices on the 10-won grid, prev_close 10,000
BARS = {
    0: (10_000, 10_050, 9_990, 10_020, 1_000),
    1: (10_000, 10_030, 9_980, 10_010, 1_000),
    2: (10_010, 10_040, 9_990, 10_030, 1_000),
    3: (10_030, 10_060, 10_000, 10_050, 1_000),
    4: (10_050, 10_050, 10_050, 10_050, 0),
}
AUCTION = 10_100


@pytest.fixture
def day(tmp_path: Path) -> DayBars:
    session = default_calendar().session(DAY)
    assert session is not None
    rows = [HEADER]
    for tier, symbol in (("MID", "000001"), ("THIN", "000002")):
        for m, (o, h, lo, c, v) in BARS.items():
            at = session.open + timedelta(minutes=m)
            rows.append(f"{symbol},KOSDAQ,{at.isoformat()},{o},{h},{lo},{c},{v},"
                        f"10000,10100,9900,{tier}")  # fmt: skip
        rows.append(f"{symbol},KOSDAQ,{session.close.isoformat()},{AUCTION},{AUCTION},{AUCTION},"
                    f"{AUCTION},5000,10000,10100,9900,{tier}")  # fmt: skip
    path = tmp_path / "bars.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    (bars,) = load_bars(path, default_calendar())
    return bars


def at(day: DayBars, minutes: float) -> datetime:
    return day.session.open + timedelta(minutes=minutes)


def broker(day: DayBars, minutes: float, **kw: object) -> tuple[BarBroker, ManualClock]:
    clock = ManualClock(at(day, minutes))
    return BarBroker(day, clock, model=FillModel(**kw), costs=CostModel()), clock  # type: ignore[arg-type]


def buy(qty: int, price: int | None = None, symbol: str = "000001") -> OrderRequest:
    kind = OrderType.MARKET if price is None else OrderType.LIMIT
    return OrderRequest(symbol, Side.BUY, qty, kind, None if price is None else Decimal(price))


def sell(qty: int, price: int | None = None, symbol: str = "000001") -> OrderRequest:
    kind = OrderType.MARKET if price is None else OrderType.LIMIT
    return OrderRequest(symbol, Side.SELL, qty, kind, None if price is None else Decimal(price))


@pytest.mark.anyio
async def test_market_order_fills_at_the_next_bars_open_plus_slippage(day: DayBars) -> None:
    b, clock = broker(day, 0.5)  # inside bar 0: the next bar is bar 1 (open 10,000)
    ack = await b.submit_order(buy(10))
    assert (await b.order_status(ack.broker_order_id)).filled_qty == 0
    clock.set(at(day, 1))
    status = await b.order_status(ack.broker_order_id)
    assert (status.filled_qty, status.filled_amount) == (10, 10 * Decimal(10_010))  # +1 tick
    assert b.executions(ack.broker_order_id)[0].at == at(day, 1)


@pytest.mark.anyio
async def test_slippage_grows_for_thin_names_and_stays_inside_the_bar(day: DayBars) -> None:
    b, clock = broker(day, 0.5)
    thin = await b.submit_order(buy(10, symbol="000002"))  # THIN: 3 ticks, bar 1 high 10,030
    down = await b.submit_order(sell(10, symbol="000002"))  # 3 ticks below 10,000, low 9,980
    clock.set(at(day, 1))
    assert (await b.order_status(thin.broker_order_id)).avg_price == Decimal(10_030)
    assert (await b.order_status(down.broker_order_id)).avg_price == Decimal(9_980)


@pytest.mark.anyio
async def test_limit_fills_only_when_a_bar_trades_through_it(day: DayBars) -> None:
    b, clock = broker(day, 0.5)
    through = await b.submit_order(buy(10, 9_990))  # bar 1 low 9,980 < 9,990
    touched = await b.submit_order(sell(10, 10_040))  # bar 2 high 10,040: touch only
    clock.set(at(day, 1.99))
    assert (await b.order_status(through.broker_order_id)).filled_qty == 0  # known at bar end
    clock.set(at(day, 2))
    status = await b.order_status(through.broker_order_id)
    assert (status.filled_qty, status.avg_price) == (10, Decimal(9_990))
    assert b.executions(through.broker_order_id)[0].at == at(day, 2)
    clock.set(at(day, 3))
    assert (await b.order_status(touched.broker_order_id)).filled_qty == 0
    clock.set(at(day, 4))  # bar 3 high 10,060 > 10,040: through
    assert (await b.order_status(touched.broker_order_id)).avg_price == Decimal(10_040)


@pytest.mark.anyio
async def test_a_marketable_limit_fills_at_the_open_plus_slippage_capped_at_the_limit(
    day: DayBars,
) -> None:
    b, clock = broker(day, 0.5)
    wide = await b.submit_order(buy(10, 10_050))
    tight = await b.submit_order(buy(10, 10_000))  # open 10,000 + 1 tick is over the limit
    clock.set(at(day, 1))
    assert (await b.order_status(wide.broker_order_id)).avg_price == Decimal(10_010)
    assert (await b.order_status(tight.broker_order_id)).avg_price == Decimal(10_000)


@pytest.mark.anyio
async def test_volume_cap_makes_partial_fills_that_continue_on_later_bars(day: DayBars) -> None:
    b, clock = broker(day, 0.5, participation=0.1)  # 100 shares of a 1,000-share bar
    first = await b.submit_order(buy(250))
    second = await b.submit_order(buy(30))  # same side, same bars: shares the cap
    clock.set(at(day, 1))
    s1, s2 = (await b.order_status(first.broker_order_id),
              await b.order_status(second.broker_order_id))  # fmt: skip
    assert (s1.filled_qty, s1.remaining_qty, s2.filled_qty) == (100, 150, 0)
    clock.set(at(day, 3))
    s1, s2 = (await b.order_status(first.broker_order_id),
              await b.order_status(second.broker_order_id))  # fmt: skip
    assert (s1.filled_qty, s2.filled_qty) == (250, 30)  # bar 2: 100 + 0; bar 3: 50 + 30
    assert [e.qty for e in b.executions(first.broker_order_id)] == [100, 100, 50]
    assert s1.filled_amount == 100 * Decimal(10_010) + 100 * Decimal(10_020) + 50 * Decimal(10_040)


@pytest.mark.anyio
async def test_a_bar_without_volume_fills_nothing(day: DayBars) -> None:
    b, clock = broker(day, 3.5)
    ack = await b.submit_order(sell(10))
    clock.set(at(day, 5))
    assert (await b.order_status(ack.broker_order_id)).filled_qty == 0


@pytest.mark.anyio
async def test_the_closing_auction_fills_crossing_orders_and_expires_the_rest(
    day: DayBars,
) -> None:
    session = day.session
    clock = ManualClock(session.continuous_close + timedelta(minutes=1))
    b = BarBroker(day, clock)
    crossing = await b.submit_order(sell(5_000))
    away = await b.submit_order(buy(10, 10_000))
    assert (await b.order_status(crossing.broker_order_id)).filled_qty == 0
    clock.set(session.close)
    assert (await b.order_status(crossing.broker_order_id)).avg_price == Decimal(AUCTION)
    status = await b.order_status(away.broker_order_id)
    assert (status.filled_qty, status.remaining_qty, status.canceled) == (0, 0, False)
    with pytest.raises(OrderRejected, match="market closed"):
        await b.submit_order(buy(1))


@pytest.mark.anyio
async def test_account_cash_moves_with_fees_and_taxes(day: DayBars) -> None:
    b, clock = broker(day, 0.5)
    await b.submit_order(buy(10))
    clock.set(at(day, 1))
    await b.submit_order(sell(10))
    clock.set(at(day, 2))
    account = await b.account()
    costs = CostModel()
    bought, sold = 10 * Decimal(10_010), 10 * Decimal(9_990)  # bar 1: open -+ 1 tick
    fees = costs.commission(bought) + costs.commission(sold)
    taxes = costs.sell_taxes(sold, day.board("000001"), DAY).total
    assert account.cash == sold - bought - fees - taxes
    assert account.holdings == {}


@pytest.mark.anyio
async def test_one_read_only_snapshot_per_instant_which_the_strategy_ranks_once(
    day: DayBars,
) -> None:
    from strategy.momentum import MomentumBreakout

    b, clock = broker(day, 3)
    first = await b.snapshot(30)
    assert await b.snapshot(30) is first  # every worker scanning this instant: one snapshot
    with pytest.raises(ValueError, match="read-only"):
        first.closes[0, 0] = 1.0  # read-only: it cannot change under a cached ranking
    assert await b.snapshot(20) is not first
    clock.set(at(day, 3.5))
    later = await b.snapshot(30)
    assert later is not first
    assert later.at == at(day, 3.5)

    strategy = MomentumBreakout()
    ranked = strategy.candidates(later)
    assert strategy.candidates(later) is ranked  # ranked once
    writable = b.market.snapshot_at(at(day, 3.5), 30)  # arrays a caller may change: no memo
    assert list(strategy.candidates(writable)) == list(ranked)
    assert strategy.candidates(writable) is not strategy.candidates(writable)


@pytest.mark.anyio
async def test_brokers_over_one_loaded_day_share_its_market_under_their_own_clocks(
    day: DayBars,
) -> None:
    first, _ = broker(day, 1)
    second, _ = broker(day, 3)  # another backtest of the same loaded day (tune)
    assert second.market.clock is second.clock
    assert first.market.clock is first.clock
    assert await second.instruments() is await first.instruments()  # built once
    assert (await first.quote("000001")).price == BARS[0][3]
    assert (await second.quote("000001")).price == BARS[2][3]
