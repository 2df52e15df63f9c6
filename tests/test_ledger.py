"""The ledger on a real Postgres: fencing, loss limit, idempotent fills, exact PnL, summaries."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime, timedelta
from decimal import Decimal

import anyio
import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.port import BrokerOrderId, ClientOrderId, OrderStatus, OrderType, Side
from ledger.db import create_engine
from ledger.errors import (
    CapitalLimitExceeded,
    InvalidOrderTransition,
    LedgerError,
    LedgerInconsistent,
    LedgerUnavailable,
    LossLimitReached,
    OrderNotFound,
    StaleFence,
)
from ledger.orders import TERMINAL, TRANSITIONS, OrderState
from ledger.records import OrderIntent, OrderRecord
from ledger.repository import Ledger
from market.clock import KST
from market.costs import CostModel
from market.types import Board

pytestmark = pytest.mark.anyio

D = Decimal
DAY = date(2025, 3, 10)
T0 = datetime(2025, 3, 10, 9, 5, tzinfo=KST)
SYM = "035720"


_seq = iter(range(1, 1_000_000))


def intent(
    worker: str = "w1",
    fence: int = 1,
    side: Side = Side.BUY,
    qty: int = 10,
    price: int | None = 50_000,
    symbol: str = SYM,
    reason: str | None = "breakout",
    **kw: object,
) -> OrderIntent:
    return OrderIntent(
        client_order_id=ClientOrderId(f"c{next(_seq)}"),
        worker_id=worker,
        symbol=symbol,
        side=side,
        order_type=OrderType.LIMIT if price is not None else OrderType.MARKET,
        qty=qty,
        price=D(price) if price is not None else None,
        fence=fence,
        reason=reason,
        signal_price=D(price) if price is not None else D(50_000),
        trading_day=DAY,
        created_at=T0,
        **kw,  # type: ignore[arg-type]
    )


def report(
    order: OrderRecord, filled: int, amount: int, *, done: bool = False, canceled: bool = False
) -> OrderStatus:
    return OrderStatus(
        broker_order_id=BrokerOrderId(f"B{order.client_order_id}"),
        symbol=order.symbol,
        side=order.side,
        qty=order.qty,
        filled_qty=filled,
        filled_amount=D(amount),
        remaining_qty=0 if done or filled == order.qty else order.qty - filled,
        rejected_qty=0,
        canceled=canceled,
        ordered_at=T0,
        updated_at=T0,
    )


async def placed(ledger: Ledger, i: OrderIntent) -> OrderRecord:
    """Inserted, claimed for sending and acked by the broker: SENT."""
    order = await ledger.create_order(i)
    await ledger.begin_submit(order.client_order_id, i.worker_id, i.fence)
    await ledger.mark_order_sent(
        order.client_order_id, BrokerOrderId(f"B{order.client_order_id}"), T0
    )
    return order


async def round_trip(
    ledger: Ledger, worker: str, fence: int, symbol: str, buy: int, sell: int, qty: int = 10
) -> None:
    b = await placed(ledger, intent(worker, fence, Side.BUY, qty, buy, symbol))
    await ledger.apply_order_status(b.client_order_id, report(b, qty, qty * buy), Board.KOSDAQ, T0)
    s = await placed(ledger, intent(worker, fence, Side.SELL, qty, sell, symbol, "take_profit"))
    await ledger.apply_order_status(s.client_order_id, report(s, qty, qty * sell), Board.KOSDAQ, T0)


async def count(engine: AsyncEngine, sql: str) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text(sql))).scalar_one())


# -- fencing (Invariant 1) ---------------------------------------------------------------------


async def test_order_with_current_fence_is_inserted(ledger: Ledger) -> None:
    await ledger.lock_acquired(SYM, "w1", 1, 30_000, T0)
    order = await ledger.create_order(intent("w1", 1))
    assert order.status is OrderState.NEW
    assert (order.fence, order.filled_qty, order.price) == (1, 0, D(50_000))


async def test_order_with_old_fence_is_refused(ledger: Ledger, engine: AsyncEngine) -> None:
    await ledger.lock_acquired(SYM, "w1", 1, 30_000, T0)
    assert await ledger.lock_acquired(SYM, "w2", 2, 30_000, T0)  # w1's lock expired, w2 took it
    stale = intent("w1", 1)
    with pytest.raises(StaleFence, match="w2 fence 2"):
        await ledger.create_order(stale)
    assert await ledger.order(stale.client_order_id) is None
    await ledger.create_order(intent("w2", 2))
    assert await count(engine, "SELECT count(*) FROM orders") == 1


async def test_same_worker_with_its_previous_fence_is_refused(ledger: Ledger) -> None:
    await ledger.lock_acquired(SYM, "w1", 1, 30_000, T0)
    await ledger.lock_acquired(SYM, "w1", 2, 30_000, T0)  # expired, then re-acquired
    with pytest.raises(StaleFence, match="w1 fence 2"):
        await ledger.create_order(intent("w1", 1))
    await ledger.create_order(intent("w1", 2))


async def test_order_after_release_is_refused(ledger: Ledger) -> None:
    await ledger.lock_acquired(SYM, "w1", 3, 30_000, T0)
    assert await ledger.lock_released(SYM, "w1", 3, T0)
    with pytest.raises(StaleFence, match="no lock"):
        await ledger.create_order(intent("w1", 3))


async def test_mirror_never_moves_back_to_an_older_fence(ledger: Ledger) -> None:
    assert await ledger.lock_acquired(SYM, "w2", 5, 30_000, T0)
    assert not await ledger.lock_acquired(SYM, "w1", 3, 30_000, T0)  # late, stale message
    assert [(lk.worker_id, lk.fence) for lk in await ledger.locks()] == [("w2", 5)]
    await ledger.lock_released(SYM, "w2", 5, T0)
    assert not await ledger.lock_acquired(SYM, "w1", 4, 30_000, T0)  # 5 was seen already
    assert await ledger.locks() == []
    assert not await ledger.lock_heartbeat(SYM, "w1", 4, T0)


async def test_a_grant_already_mirrored_is_reported_as_current(ledger: Ledger) -> None:
    # the stream mirror applied lock.acquired before the worker's own write
    assert await ledger.lock_acquired(SYM, "w1", 8, 30_000, T0)
    assert await ledger.lock_acquired(SYM, "w1", 8, 30_000, T0)
    assert [(lk.worker_id, lk.fence) for lk in await ledger.locks()] == [("w1", 8)]


async def test_a_replayed_grant_does_not_resurrect_an_ended_lease(ledger: Ledger) -> None:
    assert await ledger.lock_acquired(SYM, "w1", 6, 30_000, T0)
    assert await ledger.lock_released(SYM, "w1", 6, T0, event="expired")
    # the mirror replays lock.acquired for fence 6 late: the row must not come back
    assert not await ledger.lock_acquired(SYM, "w1", 6, 30_000, T0)
    assert await ledger.locks() == []
    with pytest.raises(StaleFence):
        await ledger.create_order(intent("w1", 6))


async def test_lock_events_are_recorded_once(ledger: Ledger, engine: AsyncEngine) -> None:
    await ledger.lock_acquired(SYM, "w1", 1, 30_000, T0)
    await ledger.lock_acquired(SYM, "w1", 1, 30_000, T0)
    assert await ledger.lock_heartbeat(SYM, "w1", 1, T0 + timedelta(seconds=5))
    assert await ledger.lock_released(SYM, "w1", 1, T0, event="expired")
    assert not await ledger.lock_released(SYM, "w1", 1, T0, event="expired")
    rows = await count(engine, "SELECT count(*) FROM lock_events")
    assert rows == 2  # one 'acquired', one 'expired'
    with pytest.raises(ValueError, match="unknown lock end event"):
        await ledger.lock_released(SYM, "w1", 1, T0, event="acquired")


async def test_max_fences_covers_events_mirror_and_orders(ledger: Ledger) -> None:
    await ledger.lock_acquired("000660", "w1", 4, 30_000, T0)
    await ledger.lock_released("000660", "w1", 4, T0)
    await ledger.lock_acquired(SYM, "w2", 9, 30_000, T0)
    assert await ledger.max_fences() == {"000660": 4, SYM: 9}


async def test_concurrent_create_order_only_current_fence_succeeds(
    ledger: Ledger, engine: AsyncEngine
) -> None:
    for fence in range(1, 8):  # one worker losing and re-acquiring the lock: fences differ
        await ledger.lock_acquired(SYM, "w1", fence, 30_000, T0)
    outcomes: list[str] = []

    async def attempt(i: OrderIntent) -> None:
        try:
            await ledger.create_order(i)
            outcomes.append(f"ok{i.fence}")
        except StaleFence:
            outcomes.append(f"stale{i.fence}")

    intents = [intent("w1", f, qty=1) for f in range(1, 8) for _ in range(4)]
    async with anyio.create_task_group() as tg:
        for i in intents:
            tg.start_soon(attempt, i)
    assert sorted(outcomes) == sorted(
        [f"ok{f}" if f == 7 else f"stale{f}" for f in range(1, 8) for _ in range(4)]
    )
    assert await count(engine, "SELECT count(*) FROM orders WHERE fence <> 7") == 0


async def test_takeover_racing_with_orders_leaves_no_stale_order_after_it(
    ledger: Ledger, engine: AsyncEngine
) -> None:
    await ledger.lock_acquired(SYM, "w1", 1, 30_000, T0)
    results: list[bool] = []

    async def attempt() -> None:
        try:
            await ledger.create_order(intent("w1", 1, qty=1))
            results.append(True)
        except StaleFence:
            results.append(False)

    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(attempt)
        tg.start_soon(ledger.lock_acquired, SYM, "w2", 2, 30_000, T0)
        for _ in range(10):
            tg.start_soon(attempt)
    assert len(results) == 20
    # Once the takeover has committed, the old fence gets nothing in.
    with pytest.raises(StaleFence):
        await ledger.create_order(intent("w1", 1, qty=1))
    assert await count(engine, "SELECT count(*) FROM orders") == results.count(True)


# -- risk limits (Invariants 5, 6) --------------------------------------------------------------


async def test_loss_limit_refuses_buy_but_not_sell(ledger: Ledger) -> None:
    await ledger.lock_acquired(SYM, "w1", 1, 30_000, T0)
    # KOSDAQ: buy 10 @ 50,000 (fee 70), sell 10 @ 45,000 = 450,000 (fee 63, tax 675)
    await round_trip(ledger, "w1", 1, SYM, 50_000, 45_000)
    assert await ledger.realized_pnl(DAY) == D(-50_808)
    with pytest.raises(LossLimitReached, match="-50808"):
        await ledger.create_order(intent("w1", 1, daily_loss_limit=D(50_000)))
    with pytest.raises(LossLimitReached):  # reaching the limit exactly is enough
        await ledger.create_order(intent("w1", 1, daily_loss_limit=D(50_808)))
    await ledger.create_order(intent("w1", 1, daily_loss_limit=D(50_809)))
    sell = await ledger.create_order(intent("w1", 1, Side.SELL, daily_loss_limit=D(50_000)))
    assert sell.side is Side.SELL


async def test_loss_limit_counts_only_that_day(ledger: Ledger) -> None:
    await ledger.lock_acquired(SYM, "w1", 1, 30_000, T0)
    await round_trip(ledger, "w1", 1, SYM, 50_000, 45_000)
    tomorrow = intent("w1", 1, daily_loss_limit=D(1_000))
    tomorrow = replace(tomorrow, trading_day=DAY + timedelta(days=1))
    await ledger.create_order(tomorrow)


async def test_capital_limit(ledger: Ledger) -> None:
    await ledger.lock_acquired(SYM, "w1", 1, 30_000, T0)
    # 10 × 50,000 = 500,000 + commission 70
    await ledger.create_order(intent("w1", 1, capital_limit=D(500_070)))
    with pytest.raises(CapitalLimitExceeded) as info:
        await ledger.create_order(intent("w1", 1, capital_limit=D(500_069)))
    assert isinstance(info.value, ValueError)
    with pytest.raises(CapitalLimitExceeded):  # a market order is checked at its signal price
        await ledger.create_order(intent("w1", 1, price=None, capital_limit=D(400_000)))
    with pytest.raises(ValueError, match="tick grid"):
        await ledger.create_order(intent("w1", 1, price=50_010))


# -- fills, positions, trades -------------------------------------------------------------------


async def test_same_status_twice_changes_nothing(ledger: Ledger, engine: AsyncEngine) -> None:
    await ledger.lock_acquired(SYM, "w1", 1, 30_000, T0)
    order = await placed(ledger, intent("w1", 1, qty=50))
    partial = report(order, 30, 1_500_000)
    first = await ledger.apply_order_status(order.client_order_id, partial, Board.KOSDAQ, T0)
    assert first.order_status is OrderState.PARTIALLY_FILLED
    assert [(f.qty, f.amount, f.fee, f.cum_qty) for f in first.new_fills] == [
        (30, D(1_500_000), D(210), 30)
    ]
    again = await ledger.apply_order_status(order.client_order_id, partial, Board.KOSDAQ, T0)
    assert again.new_fills == ()
    assert again.closed_trade is None
    late = report(order, 10, 500_000)  # an older poll answering late
    assert (
        await ledger.apply_order_status(order.client_order_id, late, Board.KOSDAQ, T0)
    ).new_fills == ()
    assert await count(engine, "SELECT count(*) FROM fills") == 1
    stored = await ledger.order(order.client_order_id)
    assert stored is not None
    assert (stored.filled_qty, stored.filled_amount) == (30, D(1_500_000))
    pos = await ledger.open_position(SYM)
    assert pos is not None
    assert pos.qty == 30


async def test_round_trip_closes_trade_with_exact_pnl(ledger: Ledger) -> None:
    await ledger.lock_acquired(SYM, "w1", 1, 30_000, T0)
    buy = await placed(ledger, intent("w1", 1, qty=50, price=10_050))
    cid = buy.client_order_id
    await ledger.apply_order_status(cid, report(buy, 30, 300_000), Board.KOSDAQ, T0)
    res = await ledger.apply_order_status(cid, report(buy, 50, 501_000), Board.KOSDAQ, T0)
    assert res.order_status is OrderState.FILLED
    assert res.new_fills[0].price == D(10_050)  # 201,000 / 20: the increment's own average
    pos = await ledger.open_position(SYM)
    assert pos is not None
    assert (pos.qty, pos.avg_price, pos.fees) == (50, D(10_020), D(70))

    sell = await placed(ledger, intent("w1", 1, Side.SELL, 50, 10_100, reason="trailing_stop"))
    scid = sell.client_order_id
    res = await ledger.apply_order_status(scid, report(sell, 25, 255_000), Board.KOSDAQ, T0)
    assert res.closed_trade is None
    t1 = T0 + timedelta(minutes=30)
    res = await ledger.apply_order_status(scid, report(sell, 50, 507_500), Board.KOSDAQ, t1)
    trade = res.closed_trade
    assert trade is not None
    # 507,500 − 501,000 − fees (42 + 28 + 35 + 35) − taxes (382 + 378)
    assert trade.pnl == D(5_600)
    assert (trade.qty, trade.fees, trade.taxes) == (50, D(140), D(760))
    assert (trade.exit_reason, trade.entry_reason) == ("trailing_stop", "breakout")
    assert (trade.opened_at, trade.closed_at) == (T0, t1)
    assert await ledger.open_position(SYM) is None
    assert await ledger.realized_pnl(DAY) == D(5_600)
    assert await ledger.recompute_from_fills(DAY) == D(5_600)


async def test_cancel_with_partial_fill_keeps_the_fill(ledger: Ledger) -> None:
    await ledger.lock_acquired(SYM, "w1", 1, 30_000, T0)
    order = await placed(ledger, intent("w1", 1, qty=10))
    res = await ledger.apply_order_status(
        order.client_order_id,
        report(order, 4, 200_000, done=True, canceled=True),
        Board.KOSDAQ,
        T0,
    )
    assert res.order_status is OrderState.CANCELED
    assert await ledger.unfinished_orders("w1") == []
    pos = await ledger.open_position(SYM)
    assert pos is not None
    assert pos.qty == 4


async def test_sell_fill_without_position_is_inconsistent(ledger: Ledger) -> None:
    await ledger.lock_acquired(SYM, "w1", 1, 30_000, T0)
    order = await placed(ledger, intent("w1", 1, Side.SELL))
    with pytest.raises(LedgerInconsistent, match="no open position"):
        await ledger.apply_order_status(
            order.client_order_id, report(order, 10, 500_000), Board.KOSDAQ, T0
        )
    stored = await ledger.order(order.client_order_id)
    assert stored is not None
    assert stored.filled_qty == 0  # rolled back as a whole


async def test_status_for_unsent_order_records_the_broker_id(ledger: Ledger) -> None:
    await ledger.lock_acquired(SYM, "w1", 1, 30_000, T0)
    order = await ledger.create_order(intent("w1", 1))
    await ledger.begin_submit(order.client_order_id, "w1", 1)
    await ledger.mark_order(order.client_order_id, OrderState.UNKNOWN, T0, "timeout")
    res = await ledger.apply_order_status(
        order.client_order_id, report(order, 0, 0), Board.KOSDAQ, T0
    )
    assert res.order_status is OrderState.SENT
    stored = await ledger.order(order.client_order_id)
    assert stored is not None
    assert stored.broker_order_id == f"B{order.client_order_id}"
    assert stored.status_reason == "timeout"


# -- order state machine ------------------------------------------------------------------------


def test_terminal_states_have_no_way_out() -> None:
    assert {OrderState.FILLED, OrderState.CANCELED, OrderState.REJECTED, OrderState.EXPIRED,
            OrderState.WITHDRAWN} == TERMINAL  # fmt: skip
    assert set(TRANSITIONS) == set(OrderState)


async def test_illegal_transitions_raise(ledger: Ledger) -> None:
    await ledger.lock_acquired(SYM, "w1", 1, 30_000, T0)
    new = await ledger.create_order(intent("w1", 1))
    with pytest.raises(InvalidOrderTransition, match="NEW -> EXPIRED"):
        await ledger.mark_order(new.client_order_id, OrderState.EXPIRED, T0)
    with pytest.raises(ValueError, match="apply_order_status"):
        await ledger.mark_order(new.client_order_id, OrderState.FILLED, T0)
    # a NEW order reaches the broker only through the fenced claim
    with pytest.raises(InvalidOrderTransition, match="NEW -> SENT"):
        await ledger.mark_order_sent(new.client_order_id, BrokerOrderId("1"), T0)
    with pytest.raises(InvalidOrderTransition, match="NEW -> UNKNOWN"):
        await ledger.mark_order(new.client_order_id, OrderState.UNKNOWN, T0)
    with pytest.raises(InvalidOrderTransition, match="NEW -> SENT"):
        await ledger.apply_order_status(new.client_order_id, report(new, 0, 0), Board.KOSDAQ, T0)
    for fenced in (OrderState.SUBMITTING, OrderState.WITHDRAWN):
        with pytest.raises(ValueError, match="fenced"):
            await ledger.mark_order(new.client_order_id, fenced, T0)
    filled = await placed(ledger, intent("w1", 1))
    await ledger.apply_order_status(
        filled.client_order_id, report(filled, 10, 500_000), Board.KOSDAQ, T0
    )
    with pytest.raises(InvalidOrderTransition, match="FILLED -> CANCELED"):
        await ledger.mark_order(filled.client_order_id, OrderState.CANCELED, T0)
    # mark_order_sent is idempotent for the same broker id
    again = await ledger.mark_order_sent(
        filled.client_order_id, BrokerOrderId(f"B{filled.client_order_id}"), T0
    )
    assert again.status is OrderState.FILLED
    sent = await placed(ledger, intent("w1", 1))
    with pytest.raises(ValueError, match="apply its final status"):
        await ledger.mark_order(sent.client_order_id, OrderState.CANCELED, T0)
    lost = await ledger.create_order(intent("w1", 1))  # send timed out, broker never had it
    await ledger.begin_submit(lost.client_order_id, "w1", 1)
    await ledger.mark_order(lost.client_order_id, OrderState.UNKNOWN, T0, "timeout")
    rejected = await ledger.mark_order(lost.client_order_id, OrderState.REJECTED, T0, "absent")
    assert (rejected.status, rejected.status_reason) == (OrderState.REJECTED, "absent")
    with pytest.raises(OrderNotFound):
        await ledger.mark_order(ClientOrderId("nope"), OrderState.CANCELED, T0)


async def test_retrying_create_order_returns_the_same_order(ledger: Ledger) -> None:
    await ledger.lock_acquired(SYM, "w1", 1, 30_000, T0)
    i = intent("w1", 1)
    first = await ledger.create_order(i)
    assert await ledger.create_order(i) == first


# -- workers, orphans, adoption -----------------------------------------------------------------


async def test_workers_register_status_heartbeat(ledger: Ledger) -> None:
    await ledger.register_worker("w1", 123, "host-a", D(1_000_000), T0)
    await ledger.register_worker("w1", 456, "host-b", D(2_000_000), T0)  # restart: upsert
    assert await ledger.set_worker_status("w1", "HOLD", SYM, T0)
    assert await ledger.worker_heartbeat("w1", T0 + timedelta(seconds=3))
    assert not await ledger.worker_heartbeat("ghost", T0)
    [w] = await ledger.workers()
    assert (w.pid, w.host, w.status, w.current_symbol) == (456, "host-b", "HOLD", SYM)
    assert w.heartbeat_at == T0 + timedelta(seconds=3)


async def test_adopt_orphaned_position_and_its_orders(ledger: Ledger) -> None:
    await ledger.lock_acquired(SYM, "w1", 1, 30_000, T0)
    buy = await placed(ledger, intent("w1", 1, qty=10))
    await ledger.apply_order_status(buy.client_order_id, report(buy, 10, 500_000), Board.KOSDAQ, T0)
    sell = await placed(ledger, intent("w1", 1, Side.SELL, 10, 51_000, reason="take_profit"))
    assert await ledger.mark_position_orphaned(SYM, "w1", 1)  # w1 died
    assert [p.status for p in await ledger.open_positions()] == ["ORPHANED"]

    await ledger.lock_acquired(SYM, "w2", 2, 30_000, T0)
    assert await ledger.adopt_position(SYM, "w2", 2)
    assert [p.worker_id for p in await ledger.open_positions("w2")] == ["w2"]
    assert await ledger.open_positions("w1") == []
    assert [o.client_order_id for o in await ledger.unfinished_orders("w2")] == [
        sell.client_order_id
    ]
    res = await ledger.apply_order_status(
        sell.client_order_id, report(sell, 10, 510_000), Board.KOSDAQ, T0
    )
    assert res.closed_trade is not None
    assert (res.closed_trade.worker_id, res.closed_trade.pnl) == ("w2", D(9_094))
    await ledger.lock_acquired(SYM, "w3", 3, 30_000, T0)
    assert not await ledger.adopt_position(SYM, "w3", 3)  # nothing live left


# -- daily summary (Invariant 3) ----------------------------------------------------------------


async def test_summary_equals_fills_to_the_won(ledger: Ledger) -> None:
    await ledger.lock_acquired(SYM, "w1", 1, 30_000, T0)
    await ledger.lock_acquired("000660", "w2", 1, 30_000, T0)
    await round_trip(ledger, "w1", 1, SYM, 50_000, 51_000)  # +9,094
    await round_trip(ledger, "w2", 1, "000660", 50_000, 45_000)  # −50,808
    await round_trip(ledger, "w1", 1, SYM, 12_340, 12_350, qty=37)
    # 37 × 12,340 = 456,580 (fee 64); 37 × 12,350 = 456,950 (fee 64, tax 685): 370 − 813 = −443
    summary = await ledger.summarize_day(DAY)
    fills_pnl = await ledger.recompute_from_fills(DAY)
    assert summary.total.summary.pnl == fills_pnl == await ledger.realized_pnl(DAY)
    assert fills_pnl == D(9_094 - 50_808 - 443)
    assert summary.total.summary.trades_count == 3
    assert summary.total.summary.wins == 1
    assert summary.total.summary.max_loss == D(-50_808)
    assert summary.by_worker["w1"].summary.pnl == D(9_094 - 443)
    assert summary.by_worker["w2"].summary.pnl == D(-50_808)
    assert sum(f.fees for f in summary.by_worker.values()) == summary.total.fees

    again = await ledger.summarize_day(DAY, at=summary.computed_at)
    assert again == summary
    stored = await ledger.day_summary(DAY)
    assert stored == summary
    assert await ledger.day_summary(DAY + timedelta(days=1)) is None


async def test_summary_of_a_day_without_trades(ledger: Ledger) -> None:
    s = await ledger.summarize_day(DAY)
    assert (s.total.summary.pnl, s.total.summary.trades_count, dict(s.by_worker)) == (0, 0, {})
    assert await ledger.recompute_from_fills(DAY) == 0


# -- error translation --------------------------------------------------------------------------


async def test_unreachable_database_raises_ledger_unavailable() -> None:
    eng = create_engine("postgresql+psycopg://postgres@127.0.0.1:1/nowhere")
    try:
        with pytest.raises(LedgerUnavailable) as info:
            await Ledger(eng, CostModel()).workers()
        assert isinstance(info.value.__cause__, sa_exc.OperationalError)
    finally:
        await eng.dispose()


async def test_constraint_violation_is_a_ledger_error_not_sqlalchemy(ledger: Ledger) -> None:
    with pytest.raises(LedgerError) as info:
        await ledger.register_worker("w1", 1, "h", D(-1), T0)  # CHECK capital_limit >= 0
    assert not isinstance(info.value, LedgerUnavailable)
    assert isinstance(info.value.__cause__, sa_exc.IntegrityError)


# -- a replayed pair of days across the 2025 tax change -------------------------------------


async def test_round_trips_either_side_of_the_2025_tax_cut(engine: AsyncEngine) -> None:
    """Golden by hand. KOSPI, 100 shares bought at 50,000 and sold at 51,000 each day.

    commission: floor(5,000,000 x 0.000140527) = 702 on the buy, floor(5,100,000 x ...) = 716
    2024-12-26 settles 2024-12-30: 0.03% + 0.15% -> 1,530 + 7,650 = 9,180; pnl 89,402
    2024-12-27 settles 2025-01-02 (12-31 and 01-01 closed): 0.00% + 0.15% -> 7,650; pnl 90,932
    """
    from market.calendar import default_calendar

    ledger = Ledger(engine, CostModel(settlement_of=default_calendar().settlement_day))
    days = {date(2024, 12, 26): D(89_402), date(2024, 12, 27): D(90_932)}
    for n, day in enumerate(days):
        at = datetime(day.year, day.month, day.day, 10, 0, tzinfo=KST)
        await ledger.lock_acquired("005930", "w1", n + 1, 30_000, at)
        for side, price in ((Side.BUY, 50_000), (Side.SELL, 51_000)):
            order = await placed(
                ledger,
                replace(intent("w1", n + 1, side, 100, price, "005930"), trading_day=day,
                        created_at=at),
            )  # fmt: skip
            await ledger.apply_order_status(
                order.client_order_id, report(order, 100, 100 * price), Board.KOSPI, at
            )
        summary = await ledger.summarize_day(day)
        assert summary.total.summary.pnl == days[day]
        assert await ledger.recompute_from_fills(day) == days[day]
    async with engine.connect() as conn:
        taxes = (
            await conn.execute(
                text(
                    "SELECT trading_day, transaction_tax, rural_tax, tax, fee FROM fills"
                    " WHERE side = 'SELL' ORDER BY trading_day"
                )
            )
        ).all()
    assert [tuple(t) for t in taxes] == [
        (date(2024, 12, 26), D(1_530), D(7_650), D(9_180), D(716)),
        (date(2024, 12, 27), D(0), D(7_650), D(7_650), D(716)),
    ]


async def test_scan_view_reads_positions_orders_and_pnl_at_once(ledger: Ledger) -> None:
    await ledger.lock_acquired(SYM, "w1", 1, 30_000, T0)
    await round_trip(ledger, "w1", 1, SYM, 50_000, 49_000)  # a closed losing trade
    await ledger.lock_acquired("000660", "w2", 1, 30_000, T0)
    held = await placed(ledger, intent("w2", 1, Side.BUY, 10, 100_000, "000660"))
    await ledger.apply_order_status(
        held.client_order_id, report(held, 4, 400_000), Board.KOSPI, T0
    )  # partly filled: an open position and an unfinished order
    view = await ledger.scan_view(DAY)
    assert dict(view.positions) == {"000660": "w2"}
    assert dict(view.unfinished) == {"000660": "w2"}
    assert view.realized_pnl == await ledger.realized_pnl(DAY) < 0
    assert (await ledger.scan_view(date(2020, 1, 2))).realized_pnl == 0
