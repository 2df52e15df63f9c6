"""The figures of the HTML report, computed from the ledger's rows (`ledger.reporting`); pure.

Money stays Decimal, exact to the won; conversion to floats happens only where a chart is
drawn. Definitions:

* equity: the realized PnL (after fees and taxes) summed over the trades closed so far, across
  the days of the range; it starts at 0 at the first day's 09:00 KST;
* drawdown: equity minus its running peak (the peak starts at 0), so <= 0 won;
* slippage: fill amount against the order's signal price x quantity, as a cost (positive =
  paid above the signal on a BUY or received below it on a SELL);
* forced-exit cost: the forced liquidation's shortfall against its signal prices and the PnL of
  the trades it closed (`tuning_forced_exits`);
* locks held: acquisitions minus ends (released, expired, recovered, lost) of the same grant;
  a grant "changed hands" when the symbol's previous grant that day was another worker's.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal

from ledger.money import ZERO
from ledger.records import TradeRecord
from ledger.reporting import (
    ExitReasonRow,
    ForcedExitRow,
    LockEventRow,
    ReportFill,
    ReportRows,
    SlippageRow,
    fills_by_trade,
    slippage_of,
)
from market.clock import KST

#: Width of the lock activity buckets.
LOCK_BUCKET = timedelta(minutes=10)
#: Lock event kinds as the contention chart stacks them ("changed hands" split from "acquired").
LOCK_KINDS = ("acquired", "changed hands", "released", "expired", "recovered", "lost")
SESSION_OPEN = time(9, 0)


@dataclass(frozen=True, slots=True)
class TradeRow:
    trade: TradeRecord
    entry_price: Decimal  # average buy price
    exit_price: Decimal  # average sell price
    slippage: Decimal  # summed over the trade's fills (won, positive = cost)


@dataclass(frozen=True, slots=True)
class Figures:
    """PnL figures of a set of trades."""

    trades: int
    wins: int
    pnl: Decimal
    fees: Decimal
    taxes: Decimal
    gross_win: Decimal
    gross_loss: Decimal  # <= 0

    @property
    def win_rate(self) -> Decimal:
        return Decimal(self.wins) / self.trades if self.trades else ZERO

    @property
    def profit_factor(self) -> Decimal | None:
        return self.gross_win / -self.gross_loss if self.gross_loss else None


@dataclass(frozen=True, slots=True)
class DayRow:
    day: date
    figures: Figures
    stored_pnl: Decimal | None  # daily_summaries.pnl; None when never summarized
    pnl_from_fills: Decimal
    slippage: Decimal


@dataclass(frozen=True, slots=True)
class EquityPoint:
    at: datetime
    equity: Decimal
    drawdown: Decimal


@dataclass(frozen=True, slots=True)
class LockBucket:
    start: datetime
    counts: dict[str, int]


@dataclass(frozen=True, slots=True)
class ReportData:
    first: date
    last: date
    days: tuple[date, ...]
    total: Figures
    day_rows: tuple[DayRow, ...]
    workers: dict[str, Figures]
    equity: tuple[EquityPoint, ...]
    trades: tuple[TradeRow, ...]
    exit_reasons: tuple[ExitReasonRow, ...]
    slippage: tuple[SlippageRow, ...]
    forced_exits: tuple[ForcedExitRow, ...]
    locks_held: tuple[tuple[datetime, int], ...]
    lock_buckets: tuple[LockBucket, ...]
    slippage_total: Decimal  # every fill with a signal price, open positions included
    open_fills: int  # fills of positions not closed in the range
    names: dict[str, str]  # worker id -> its shortest unique prefix of 8 or more characters

    @property
    def max_drawdown(self) -> Decimal:
        return min((p.drawdown for p in self.equity), default=ZERO)

    @property
    def pnl_from_fills(self) -> Decimal:
        return sum((d.pnl_from_fills for d in self.day_rows), ZERO)

    @property
    def forced_shortfall(self) -> Decimal:
        return sum((f.shortfall_won for f in self.forced_exits), ZERO)

    @property
    def forced_pnl(self) -> Decimal:
        return sum((f.trades_pnl for f in self.forced_exits), ZERO)


def figures(trades: Sequence[TradeRecord]) -> Figures:
    pnls = [t.pnl for t in trades]
    return Figures(
        trades=len(trades),
        wins=sum(1 for p in pnls if p > 0),
        pnl=sum(pnls, ZERO),
        fees=sum((t.fees for t in trades), ZERO),
        taxes=sum((t.taxes for t in trades), ZERO),
        gross_win=sum((p for p in pnls if p > 0), ZERO),
        gross_loss=sum((p for p in pnls if p < 0), ZERO),
    )


def build_report(rows: ReportRows) -> ReportData:
    trades = rows.trades
    matched = fills_by_trade(trades, rows.fills)
    trade_rows = tuple(
        TradeRow(t, t.buy_amount / t.qty, t.sell_amount / t.qty, slippage_of(matched[t.id]))
        for t in trades
    )
    by_day: defaultdict[date, list[TradeRow]] = defaultdict(list)
    for r in trade_rows:
        by_day[r.trade.trading_day].append(r)
    fills_by_day: defaultdict[date, list[ReportFill]] = defaultdict(list)
    for f in rows.fills:
        fills_by_day[f.trading_day].append(f)
    day_rows = tuple(
        DayRow(
            day=d,
            figures=figures([r.trade for r in by_day[d]]),
            stored_pnl=rows.stored[d].pnl if d in rows.stored else None,
            pnl_from_fills=rows.pnl_from_fills.get(d, ZERO),
            slippage=slippage_of(fills_by_day[d]),
        )
        for d in rows.days
    )
    by_worker: defaultdict[str, list[TradeRecord]] = defaultdict(list)
    for t in trades:
        by_worker[t.worker_id].append(t)
    in_trades = sum(len(fs) for fs in matched.values())
    held, buckets = lock_activity(rows.lock_events)
    return ReportData(
        first=rows.first,
        last=rows.last,
        days=rows.days,
        total=figures(trades),
        day_rows=day_rows,
        workers={w: figures(ts) for w, ts in sorted(by_worker.items())},
        equity=equity_curve(trades, rows.days[0] if rows.days else rows.first),
        trades=trade_rows,
        exit_reasons=rows.exit_reasons,
        slippage=rows.slippage,
        forced_exits=rows.forced_exits,
        locks_held=held,
        lock_buckets=buckets,
        slippage_total=slippage_of(rows.fills),
        open_fills=len(rows.fills) - in_trades,
        names=short_names({t.worker_id for t in trades} | {e.worker_id for e in rows.lock_events}),
    )


def short_names(ids: set[str], least: int = 8) -> dict[str, str]:
    """Each id's shortest prefix (at least `least` characters) that no other id shares: the
    first 8 characters of a UUID, the whole of `backtest-w1`."""
    longest = max((len(i) for i in ids), default=0)
    for n in range(least, longest + 1):
        if len({i[:n] for i in ids}) == len(ids):
            return {i: i[:n] for i in ids}
    return {i: i for i in ids}


def equity_curve(trades: Sequence[TradeRecord], start_day: date) -> tuple[EquityPoint, ...]:
    """Equity and drawdown after each trade close (trades by close time), from 0 at the open."""
    start = datetime.combine(start_day, SESSION_OPEN, KST)
    points = [EquityPoint(start, ZERO, ZERO)]
    equity = peak = ZERO
    for t in sorted(trades, key=lambda t: (t.closed_at, t.id)):
        equity += t.pnl
        peak = max(peak, equity)
        points.append(EquityPoint(t.closed_at, equity, equity - peak))
    return tuple(points)


def lock_activity(
    events: Sequence[LockEventRow],
) -> tuple[tuple[tuple[datetime, int], ...], tuple[LockBucket, ...]]:
    """Locks held after each event, and the events per `LOCK_BUCKET` by kind."""
    held = 0
    live: set[tuple[str, int]] = set()
    last_holder: dict[tuple[str, date], str] = {}
    timeline: list[tuple[datetime, int]] = []
    counts: defaultdict[datetime, Counter[str]] = defaultdict(Counter)
    for e in events:  # in the order recorded
        kind = e.event
        if e.event == "acquired":
            key = (e.symbol, e.trading_at.astimezone(KST).date())
            before = last_holder.get(key)
            if before is not None and before != e.worker_id:
                kind = "changed hands"
            last_holder[key] = e.worker_id
            if (e.symbol, e.fence) not in live:
                live.add((e.symbol, e.fence))
                held += 1
        elif (e.symbol, e.fence) in live:
            live.discard((e.symbol, e.fence))
            held -= 1
        timeline.append((e.trading_at, held))
        counts[_bucket(e.trading_at)][kind] += 1
    buckets = tuple(
        LockBucket(start, {k: c[k] for k in LOCK_KINDS}) for start, c in sorted(counts.items())
    )
    return tuple(timeline), buckets


def _bucket(at: datetime) -> datetime:
    local = at.astimezone(KST)
    width = int(LOCK_BUCKET.total_seconds())
    seconds = local.hour * 3600 + local.minute * 60 + local.second
    floor = seconds - seconds % width
    return datetime.combine(local.date(), time(floor // 3600, floor % 3600 // 60), KST)
