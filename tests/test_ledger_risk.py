"""The daily loss limit latches (Invariant 5): once the day's realized pnl has reached −limit,
or the day's halt is recorded, no BUY is admitted that day, even after later trades recover."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from decimal import Decimal

import anyio
import psycopg
import pytest
from support import libpq
from test_ledger import DAY, SYM, T0, intent, round_trip
from test_ledger_ownership import _outcome, _wait_for_lock_waiters

from ledger.errors import LossLimitReached
from ledger.repository import Ledger
from market.orders import Side

pytestmark = pytest.mark.anyio

D = Decimal
LIMIT = D(50_000)


async def test_recovery_above_the_limit_does_not_reopen_buying(ledger: Ledger) -> None:
    await ledger.lock_acquired(SYM, "w1", 1, 30_000, T0)
    # KOSDAQ round trips: buy 10 @ 50,000 / sell @ 45,000 -> -50,808; sell @ 60,000 -> +98,946
    await round_trip(ledger, "w1", 1, SYM, 50_000, 45_000)
    assert await ledger.realized_pnl(DAY) == D(-50_808)
    with pytest.raises(LossLimitReached):
        await ledger.create_order(intent("w1", 1, daily_loss_limit=LIMIT))
    # a holding sold at a profit afterwards: the day is back above the limit ...
    await round_trip(ledger, "w1", 1, SYM, 50_000, 60_000)
    assert await ledger.realized_pnl(DAY) > -LIMIT
    assert await ledger.day_halt(DAY) is None  # ... and nobody recorded the halt
    # ... yet the limit was reached today: no BUY, and the refusal says so
    with pytest.raises(LossLimitReached, match="reached -50808") as info:
        await ledger.create_order(intent("w1", 1, daily_loss_limit=LIMIT))
    assert "halt" not in str(info.value)
    await ledger.create_order(intent("w1", 1, Side.SELL, daily_loss_limit=LIMIT))  # selling is
    # a limit the day's low never reached still admits BUYs
    await ledger.create_order(intent("w1", 1, daily_loss_limit=D(50_809)))
    tomorrow = replace(intent("w1", 1, daily_loss_limit=LIMIT), trading_day=DAY + timedelta(1))
    await ledger.create_order(tomorrow)


async def test_the_low_counts_the_running_sum_not_single_trades(ledger: Ledger) -> None:
    await ledger.lock_acquired(SYM, "w1", 1, 30_000, T0)
    # one losing trade is worse than the limit tested below, yet the day's sum never was
    await round_trip(ledger, "w1", 1, SYM, 50_000, 60_000)  # +98,946
    await round_trip(ledger, "w1", 1, SYM, 50_000, 45_000)  # -50,808: sum +48,138
    await ledger.create_order(intent("w1", 1, daily_loss_limit=D(3_000)))
    await round_trip(ledger, "w1", 1, SYM, 50_000, 45_000)  # -50,808: sum -2,670
    view = await ledger.scan_view(DAY)
    assert (view.realized_pnl, view.low_pnl, view.halted) == (D(-2_670), D(-2_670), False)
    await ledger.create_order(intent("w1", 1, daily_loss_limit=D(2_671)))
    with pytest.raises(LossLimitReached, match="reached -2670"):
        await ledger.create_order(intent("w1", 1, daily_loss_limit=D(2_670)))


async def test_a_recorded_halt_refuses_every_buy_that_day(ledger: Ledger) -> None:
    await ledger.lock_acquired(SYM, "w1", 1, 30_000, T0)
    await ledger.create_order(intent("w1", 1, daily_loss_limit=LIMIT))
    assert await ledger.record_halt(DAY, T0, D(-60_000), LIMIT, "w2", "realized -60000 <= -50000")
    assert not await ledger.record_halt(DAY, T0, D(-70_000), LIMIT, "w3", "again")  # once a day
    halt = await ledger.day_halt(DAY)
    assert halt is not None
    assert (halt.worker_id, halt.realized_pnl, halt.loss_limit) == ("w2", D(-60_000), LIMIT)
    # the ledger's own pnl never reached the limit: the halt row alone latches the day, also
    # for a BUY placed with another limit or none
    for limit in (LIMIT, D(10**9), None):
        with pytest.raises(LossLimitReached, match=r"halt of .* recorded .* by w2"):
            await ledger.create_order(intent("w1", 1, daily_loss_limit=limit))
    await ledger.create_order(intent("w1", 1, Side.SELL, daily_loss_limit=LIMIT))
    view = await ledger.scan_view(DAY)
    assert view.halted
    assert not (await ledger.scan_view(DAY + timedelta(1))).halted
    with pytest.raises(ValueError, match="positive"):
        await ledger.record_halt(DAY, T0, D(0), D(0), "w1", "no limit")


async def test_a_buy_waiting_on_the_halt_sees_it(ledger: Ledger, database_url: str) -> None:
    """The halt is recorded while a BUY is being admitted: the BUY waits for the halt's commit
    (shared against exclusive loss guard) and is refused, never admitted on a snapshot taken
    before it."""
    await ledger.lock_acquired(SYM, "w1", 1, 30_000, T0)
    halt: list[object] = []
    buy: list[object] = []
    with psycopg.connect(libpq(database_url)) as third:
        # park record_halt after it took the exclusive guard: the day's key is taken here
        third.execute(
            "INSERT INTO risk_halts (trading_day, at, realized_pnl, loss_limit, worker_id, reason)"
            " VALUES (%s, now(), -1, 1, 'w9', 'parked')",
            (DAY,),
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(_outcome, lambda: ledger.record_halt(DAY, T0, D(-60_000), LIMIT, "w2",
                                                               "reached"), halt)  # fmt: skip
            await _wait_for_lock_waiters(database_url, 1)
            tg.start_soon(_outcome, lambda: ledger.create_order(intent("w1", 1)), buy)
            await _wait_for_lock_waiters(database_url, 2)  # the BUY waits for the halt
            assert halt == buy == []
            third.rollback()
    assert halt == [True]
    [refused] = buy
    assert isinstance(refused, LossLimitReached)
