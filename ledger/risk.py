"""The daily loss limit as the ledger enforces it (Invariant 5): it latches.

Once the day's realized pnl has reached −limit, no BUY is admitted for the rest of the day, even
when later trades bring the pnl back above it. Two facts latch the day, and the fenced BUY
insert checks both:

* the day's low: the running minimum of the cumulative sum of `trades.pnl` in close order.
  Trades are closed under the day's exclusive advisory lock (`hold_loss_guard`), so their ids
  are in close order and the low can be recomputed from `trades` alone, by anyone, at any time.
* a `risk_halts` row: the halt a worker recorded once for the day (`record_halt`), also when
  the limit in force then differs from a later BUY's.

BUY admission holds the same lock shared, so it sees every close that committed before it.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import ColumnElement, exists, func, literal_column, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from ledger.models import RiskHalt, Trade
from ledger.records import HaltRecord

_LOSS_GUARD_BASE = 0x5446_0000_0000  # "TF" + day ordinal: one advisory lock key per day


def loss_guard_key(trading_day: date) -> int:
    """Advisory-lock key that orders BUY admission against trade closes of one day."""
    return _LOSS_GUARD_BASE + trading_day.toordinal()


async def hold_loss_guard(s: AsyncSession, trading_day: date, *, exclusive: bool) -> None:
    """Serialize the loss-limit check (shared) against closing a trade or recording the halt
    (exclusive).

    Under READ COMMITTED a BUY's INSERT would otherwise not see a losing trade committed by
    another worker while it runs, and both could slip past the limit. Holding the shared lock
    first, the BUY's INSERT takes its snapshot after any in-flight close has committed.
    """
    fn = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
    await s.execute(select(getattr(func, fn)(loss_guard_key(trading_day))))


def day_pnl(trading_day: date) -> ColumnElement[Decimal]:
    """The day's realized pnl (sum of closed trades), as a scalar subquery."""
    return (
        select(func.coalesce(func.sum(Trade.pnl), 0))
        .where(Trade.trading_day == trading_day)
        .scalar_subquery()
    )


def day_low_pnl(trading_day: date) -> ColumnElement[Decimal]:
    """The lowest the day's realized pnl has been (0 before the first trade), as a scalar
    subquery: the running minimum of the cumulative pnl in close (id) order."""
    running = (
        select(func.sum(Trade.pnl).over(order_by=Trade.id).label("running"))
        .where(Trade.trading_day == trading_day)
        .subquery()
    )
    low = func.coalesce(func.min(running.c.running), 0)
    return select(func.least(literal_column("0"), low)).scalar_subquery()


def halt_recorded(trading_day: date) -> ColumnElement[bool]:
    """Whether the day's halt is recorded, as an EXISTS clause."""
    return exists(select(RiskHalt.trading_day).where(RiskHalt.trading_day == trading_day))


async def record_halt(
    s: AsyncSession,
    trading_day: date,
    at: datetime,
    realized_pnl: Decimal,
    loss_limit: Decimal,
    worker_id: str,
    reason: str,
) -> bool:
    """Insert the day's halt unless one is recorded; True for the first."""
    if loss_limit <= 0:
        raise ValueError(f"loss limit must be positive, got {loss_limit}")
    # exclusive: a BUY admitted after this commits sees the row
    await hold_loss_guard(s, trading_day, exclusive=True)
    row = {"trading_day": trading_day, "at": at, "realized_pnl": realized_pnl,
           "loss_limit": loss_limit, "worker_id": worker_id, "reason": reason}  # fmt: skip
    stmt = (
        pg_insert(RiskHalt)
        .values(**row)
        .on_conflict_do_nothing(index_elements=["trading_day"])
        .returning(RiskHalt.trading_day)
    )
    return (await s.execute(stmt)).first() is not None


async def load_halt(s: AsyncSession, trading_day: date) -> HaltRecord | None:
    row = await s.get(RiskHalt, trading_day)
    if row is None:
        return None
    return HaltRecord(row.trading_day, row.at, row.realized_pnl, row.loss_limit, row.worker_id,
                      row.reason)  # fmt: skip


async def buy_refusal(s: AsyncSession, trading_day: date, limit: Decimal | None) -> str | None:
    """Why a BUY on the day is refused by the loss limit (the halt row, or the day's low), or
    None when it is not."""
    halt = await load_halt(s, trading_day)
    if halt is not None:
        return (
            f"the loss-limit halt of {trading_day} was recorded at {halt.at.isoformat()} by "
            f"{halt.worker_id} ({halt.reason}): no new BUY that day"
        )
    if limit is None:
        return None
    low, now = (await s.execute(select(day_low_pnl(trading_day), day_pnl(trading_day)))).one()
    if low > -limit:
        return None
    return (
        f"realized pnl on {trading_day} reached {low} (now {now}), the daily loss limit "
        f"{limit} was reached: no new BUY that day"
    )
