"""The ledger's rows for a report over a range of trading days, read in one snapshot.

`read_report_rows` reads, inside one read-only REPEATABLE READ transaction (every figure from
the same instant of the ledger): the closed trades, the fills with their order's signal price,
tier and reason, the lock events of the range's grants (placed on the trading clock:
`on_trading_clock`), the stored daily summaries, the PnL recomputed from the fills
per day, and the `tuning_exit_reasons` / `tuning_forced_exits` views. Slippage by tier is the
`tuning_slippage` formula summed over the range (with the notional, so basis points add up).

`fills_by_trade` assigns each fill to the closed trade it belongs to (pure): a symbol has at
most one live position at a time, so its fills, in the order they were recorded, split into
round trips exactly where the held quantity returns to zero.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import case, func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ledger.convert import trade_record
from ledger.models import DailySummary, Fill, Order, Trade
from ledger.money import ZERO
from ledger.records import TradeRecord
from market.clock import KST
from market.orders import Side


@dataclass(frozen=True, slots=True)
class ReportFill:
    """One fill increment with what its order knew: the price the signal saw, the symbol's
    liquidity tier and why the order was placed. `slippage` is the cost to us against the
    signal price (BUY: paid above it; SELL: received below it); None without a signal price."""

    id: int
    order_id: int
    worker_id: str
    symbol: str
    side: Side
    qty: int
    amount: Decimal
    fee: Decimal
    tax: Decimal
    filled_at: datetime
    trading_day: date
    signal_price: Decimal | None
    tier: int | None
    reason: str | None

    @property
    def slippage(self) -> Decimal | None:
        if self.signal_price is None:
            return None
        at_signal = self.signal_price * self.qty
        return self.amount - at_signal if self.side is Side.BUY else at_signal - self.amount


@dataclass(frozen=True, slots=True)
class LockEventRow:
    symbol: str
    worker_id: str
    fence: int
    event: str  # acquired, released, expired, recovered, lost
    at: datetime  # as recorded: the wall clock
    trading_at: datetime  # the same instant on the trading clock (`on_trading_clock`)


@dataclass(frozen=True, slots=True)
class StoredDay:
    """A `daily_summaries` row's figures (None when the day was never summarized)."""

    pnl: Decimal
    trades_count: int
    fees: Decimal
    taxes: Decimal


@dataclass(frozen=True, slots=True)
class ExitReasonRow:
    """`tuning_exit_reasons` summed over the range."""

    exit_reason: str
    trades: int
    wins: int
    pnl: Decimal
    worst: Decimal


@dataclass(frozen=True, slots=True)
class SlippageRow:
    """The `tuning_slippage` formula over the range: filled orders with a signal price."""

    tier: int | None
    side: Side
    orders: int
    qty: int
    slippage_won: Decimal
    notional: Decimal  # signal price x filled qty

    @property
    def bps(self) -> Decimal | None:
        return self.slippage_won / self.notional * 10_000 if self.notional else None


@dataclass(frozen=True, slots=True)
class ForcedExitRow:
    """`tuning_forced_exits` for one day: the forced liquidation's sells and their trades."""

    trading_day: date
    symbols: int
    qty: int
    shortfall_won: Decimal  # signal price x qty - proceeds
    trades_pnl: Decimal


@dataclass(frozen=True, slots=True)
class ReportRows:
    first: date
    last: date
    days: tuple[date, ...]  # days in the range with an order or a trade
    trades: tuple[TradeRecord, ...]  # by close time
    fills: tuple[ReportFill, ...]  # by id
    lock_events: tuple[LockEventRow, ...]  # by time
    stored: Mapping[date, StoredDay]
    pnl_from_fills: Mapping[date, Decimal]
    exit_reasons: tuple[ExitReasonRow, ...]
    slippage: tuple[SlippageRow, ...]
    forced_exits: tuple[ForcedExitRow, ...]


async def read_report_rows(engine: AsyncEngine, first: date, last: date) -> ReportRows:
    """Everything a report over [first, last] shows, from one snapshot of the ledger."""
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="REPEATABLE READ")
        async with conn.begin():
            await conn.execute(text("SET TRANSACTION READ ONLY"))
            return await _read(conn, first, last)


async def latest_day(engine: AsyncEngine) -> date | None:
    """The latest trading day with an order recorded; None for an empty ledger."""
    async with engine.connect() as conn:
        day: date | None = (await conn.execute(select(func.max(Order.trading_day)))).scalar_one()
        return day


async def _read(conn: AsyncConnection, first: date, last: date) -> ReportRows:
    trades = await _trades(conn, first, last)
    fills = await _fills(conn, first, last)
    events = await _lock_events(conn, first, last)
    order_days = (
        await conn.execute(
            select(Order.trading_day).where(Order.trading_day.between(first, last)).distinct()
        )
    ).scalars()
    days = sorted(set(order_days) | {t.trading_day for t in trades})
    return ReportRows(
        first=first,
        last=last,
        days=tuple(days),
        trades=trades,
        fills=fills,
        lock_events=events,
        stored=await _stored(conn, first, last),
        pnl_from_fills=await _pnl_from_fills(conn, first, last),
        exit_reasons=await _exit_reasons(conn, first, last),
        slippage=await _slippage(conn, first, last),
        forced_exits=await _forced_exits(conn, first, last),
    )


async def _trades(conn: AsyncConnection, first: date, last: date) -> tuple[TradeRecord, ...]:
    stmt = (
        select(Trade)
        .where(Trade.trading_day.between(first, last))
        .order_by(Trade.closed_at, Trade.id)
    )
    rows = (await conn.execute(stmt)).all()
    return tuple(trade_record(Trade(**row._asdict())) for row in rows)


async def _fills(conn: AsyncConnection, first: date, last: date) -> tuple[ReportFill, ...]:
    stmt = (
        select(
            Fill.id,
            Fill.order_id,
            Fill.worker_id,
            Fill.symbol,
            Fill.side,
            Fill.qty,
            Fill.amount,
            Fill.fee,
            Fill.tax,
            Fill.filled_at,
            Fill.trading_day,
            Order.signal_price,
            Order.tier,
            Order.reason,
        )
        .join(Order, Order.id == Fill.order_id)
        .where(Fill.trading_day.between(first, last))
        .order_by(Fill.id)
    )
    return tuple(
        ReportFill(
            id=r.id,
            order_id=r.order_id,
            worker_id=r.worker_id,
            symbol=r.symbol,
            side=Side(r.side),
            qty=r.qty,
            amount=r.amount,
            fee=r.fee,
            tax=r.tax,
            filled_at=r.filled_at,
            trading_day=r.trading_day,
            signal_price=r.signal_price,
            tier=r.tier,
            reason=r.reason,
        )
        for r in (await conn.execute(stmt)).all()
    )


async def _lock_events(conn: AsyncConnection, first: date, last: date) -> tuple[LockEventRow, ...]:
    """The events of the grants the range's orders were placed under (with the grant's trading
    day), and any other event within the wall-clock span the range's orders were written in."""
    stmt = text(
        """WITH o AS (SELECT symbol, fence, trading_day, recorded_at FROM orders
                      WHERE trading_day BETWEEN :first AND :last),
                span AS (SELECT min(recorded_at) AS lo, max(recorded_at) AS hi FROM o)
           SELECT e.symbol, e.worker_id, e.fence, e.event, e.at,
                  (SELECT min(o.trading_day) FROM o
                    WHERE o.symbol = e.symbol AND o.fence = e.fence) AS day
           FROM lock_events e, span
           WHERE e.at BETWEEN span.lo AND span.hi
              OR EXISTS (SELECT 1 FROM o WHERE o.symbol = e.symbol AND o.fence = e.fence)
           ORDER BY e.at, e.id"""
    )
    rows = (await conn.execute(stmt, {"first": first, "last": last})).all()
    pairs = await _clock_pairs(conn, first, last)
    # a grant's events are placed among its own day's writes; the others among all of them
    groups: defaultdict[date | None, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        groups[r.day].append(i)
    placed: dict[int, datetime] = {}
    for day, idx in groups.items():
        own = [(w, t) for w, t, d in pairs if day is None or d == day]
        for i, at in zip(idx, on_trading_clock(own, [rows[i].at for i in idx]), strict=True):
            placed[i] = at
    return tuple(
        LockEventRow(r.symbol, r.worker_id, r.fence, r.event, r.at, placed[i])
        for i, r in enumerate(rows)
    )


async def _clock_pairs(
    conn: AsyncConnection, first: date, last: date
) -> list[tuple[datetime, datetime, date]]:
    """(wall instant written, trading-clock instant, trading day) of the range's orders and
    fills."""
    stmt = text(
        """SELECT recorded_at, created_at, trading_day FROM orders
            WHERE trading_day BETWEEN :first AND :last
           UNION ALL
           SELECT recorded_at, filled_at, trading_day FROM fills
            WHERE trading_day BETWEEN :first AND :last
           ORDER BY 1"""
    )
    return [(w, t, d) for w, t, d in (await conn.execute(stmt, {"first": first, "last": last}))]


def on_trading_clock(
    pairs: Sequence[tuple[datetime, datetime]], instants: Sequence[datetime]
) -> list[datetime]:
    """Wall-clock instants placed on the trading clock.

    Lock events are stamped with the wall clock (the lock's TTL runs on it), while orders,
    fills and trades carry the trading clock, which runs faster in a simulated or backtested
    day. Each order and fill row holds both (`recorded_at`, and `created_at` / `filled_at`), so
    an instant is placed by linear interpolation between the nearest such pairs. Outside them,
    and between two pairs on different trading days (the night is not interpolated), it is
    placed at real speed from the nearest earlier pair (the first pair when none is earlier).
    The trading times are made non-decreasing first, so the events keep their order. On a
    real-time day this is the identity, give or take the write lag.
    """
    if not pairs:
        return list(instants)
    walls = [w for w, _ in sorted(pairs)]
    trading: list[datetime] = []
    for _, t in sorted(pairs):
        trading.append(max(t, trading[-1]) if trading else t)
    out = []
    for at in instants:
        i = bisect_right(walls, at)
        if i == 0:
            out.append(trading[0] - (walls[0] - at))
            continue
        w0, t0 = walls[i - 1], trading[i - 1]
        if i == len(walls):
            out.append(t0 + (at - w0))
            continue
        w1, t1 = walls[i], trading[i]
        if t0.astimezone(KST).date() != t1.astimezone(KST).date():
            out.append(min(t0 + (at - w0), t1))
        else:
            share = (at - w0) / (w1 - w0) if w1 > w0 else 0.0
            out.append(t0 + (t1 - t0) * share)
    return out


async def _stored(conn: AsyncConnection, first: date, last: date) -> dict[date, StoredDay]:
    stmt = select(
        DailySummary.date,
        DailySummary.pnl,
        DailySummary.trades_count,
        DailySummary.fees,
        DailySummary.taxes,
    ).where(DailySummary.date.between(first, last))
    return {
        r.date: StoredDay(r.pnl, r.trades_count, r.fees, r.taxes)
        for r in (await conn.execute(stmt)).all()
    }


async def _pnl_from_fills(conn: AsyncConnection, first: date, last: date) -> dict[date, Decimal]:
    signed = case((Fill.side == "SELL", Fill.amount), else_=-Fill.amount)
    stmt = (
        select(Fill.trading_day, func.sum(signed - Fill.fee - Fill.tax))
        .where(Fill.trading_day.between(first, last))
        .group_by(Fill.trading_day)
    )
    return {day: Decimal(v) for day, v in (await conn.execute(stmt)).all()}


async def _exit_reasons(
    conn: AsyncConnection, first: date, last: date
) -> tuple[ExitReasonRow, ...]:
    stmt = text(
        "SELECT exit_reason, sum(trades)::int, sum(wins)::int, sum(pnl), min(worst)"
        " FROM tuning_exit_reasons WHERE trading_day BETWEEN :first AND :last"
        " GROUP BY exit_reason ORDER BY sum(pnl), exit_reason"
    )
    rows = (await conn.execute(stmt, {"first": first, "last": last})).all()
    return tuple(ExitReasonRow(*r) for r in rows)


async def _slippage(conn: AsyncConnection, first: date, last: date) -> tuple[SlippageRow, ...]:
    at_signal = Order.signal_price * Order.filled_qty
    cost = case(
        (Order.side == "BUY", Order.filled_amount - at_signal),
        else_=at_signal - Order.filled_amount,
    )
    stmt = (
        select(
            Order.tier,
            Order.side,
            func.count(),
            func.sum(Order.filled_qty),
            func.sum(cost),
            func.sum(at_signal),
        )
        .where(
            Order.trading_day.between(first, last),
            Order.filled_qty > 0,
            Order.signal_price.is_not(None),
        )
        .group_by(Order.tier, Order.side)
        .order_by(Order.tier, Order.side)
    )
    return tuple(
        SlippageRow(tier, Side(side), n, int(qty), Decimal(won), Decimal(notional))
        for tier, side, n, qty, won, notional in (await conn.execute(stmt)).all()
    )


async def _forced_exits(
    conn: AsyncConnection, first: date, last: date
) -> tuple[ForcedExitRow, ...]:
    stmt = text(
        "SELECT trading_day, symbols::int, qty::int, shortfall_won, trades_pnl"
        " FROM tuning_forced_exits WHERE trading_day BETWEEN :first AND :last"
        " ORDER BY trading_day"
    )
    rows = (await conn.execute(stmt, {"first": first, "last": last})).all()
    return tuple(ForcedExitRow(*r) for r in rows)


def fills_by_trade(
    trades: Sequence[TradeRecord], fills: Sequence[ReportFill]
) -> dict[int, list[ReportFill]]:
    """Trade id -> its fills. Per symbol, fills (by id) accumulate into a round trip until the
    held quantity is back at zero; the n-th completed round trip is the symbol's n-th trade (by
    close). Fills of a position still open are left out."""
    by_symbol: defaultdict[str, list[TradeRecord]] = defaultdict(list)
    for t in sorted(trades, key=lambda t: (t.closed_at, t.id)):
        by_symbol[t.symbol].append(t)
    out: dict[int, list[ReportFill]] = {t.id: [] for t in trades}
    held: defaultdict[str, int] = defaultdict(int)
    pending: defaultdict[str, list[ReportFill]] = defaultdict(list)
    done: defaultdict[str, int] = defaultdict(int)
    for f in sorted(fills, key=lambda f: f.id):
        held[f.symbol] += f.qty if f.side is Side.BUY else -f.qty
        pending[f.symbol].append(f)
        if held[f.symbol] == 0:
            closed = by_symbol[f.symbol]
            n = done[f.symbol]
            if n < len(closed):  # else: a round trip before the range's first trade
                out[closed[n].id] = pending[f.symbol]
            done[f.symbol] = n + 1
            pending[f.symbol] = []
    return out


def slippage_of(fills: Sequence[ReportFill]) -> Decimal:
    """Summed slippage of fills that carry a signal price."""
    return sum((s for f in fills if (s := f.slippage) is not None), ZERO)
