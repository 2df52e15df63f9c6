"""The invariant figures of a fleet's day, read from the ledger (and the venue's own records).

Pure functions over rows (`Day`), so they can be checked on a synthetic ledger, plus
`load_day` to read those rows from Postgres. Every figure counts violations; 0 is the goal.

Times: `orders.created_at`/`updated_at` and `fills.filled_at` are on the simulated clock of the
process that wrote them; `recorded_at` is the database's wall clock at the write. Processes
share one simulated clock (wall-driven from the same epoch), so `Day.sim` maps a wall instant
onto it and every interval below is on the simulated clock. An order's interval starts when
its row was written (`recorded_at`: a worker stalled between deciding and writing shows up
when it wrote) and, once final, ends at `updated_at`.

* overlaps: a *tenure* is one holder's lease on a symbol, known in the ledger by the fence its
  orders carry (an adopter takes over the unfinished orders' worker_id, not their fence).
  Leases on one symbol never overlap and their fences increase, so the spans of the tenures'
  order writes must be disjoint and ordered by fence. Counted: pairs of tenures whose spans
  intersect or whose order contradicts their fences, and stretches of holding (from fills: the
  symbol's net quantity above zero) in which more than one tenure bought.
* double_orders: pairs of orders on one symbol that could both be working at the venue at
  one instant (sent, filled, or of unknown outcome; a row withdrawn before sending never
  worked). A non-final order works until the end of time.
* not_flat: symbols whose fills do not net to zero, or with a position not closed, or (when
  the venue's holdings are given) held at the venue.
* open_orders: orders not in a final state.
* pnl_mismatch_won: the largest difference between daily_summaries.pnl, sum(trades.pnl) and
  sells - buys - fees - taxes from fills.
* fills_mismatch: per order, the ledger's filled quantity and amount against the sum of its
  fill rows and against the venue's figures for the same broker order id (when given); venue
  orders the ledger does not know count too.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

EPS = timedelta(milliseconds=1)


@dataclass(frozen=True)
class OrderRow:
    id: int
    worker_id: str
    symbol: str
    side: str
    qty: int
    status: str
    fence: int
    broker_order_id: str | None
    filled_qty: int
    filled_amount: Decimal
    created_at: datetime
    updated_at: datetime
    recorded_at: datetime


@dataclass(frozen=True)
class FillRow:
    id: int
    order_id: int
    symbol: str
    side: str
    qty: int
    amount: Decimal
    fee: Decimal
    tax: Decimal
    recorded_at: datetime


@dataclass(frozen=True)
class PositionRow:
    symbol: str
    worker_id: str
    qty: int
    status: str


@dataclass
class Day:
    """One trading day of the ledger, and how to put a wall instant on the simulated clock."""

    day: date
    orders: list[OrderRow]
    fills: list[FillRow]
    positions: list[PositionRow]
    trades_pnl: Decimal
    trades: int
    summary_pnl: Decimal | None
    stock_locks: int
    terminal: frozenset[str]
    sim: Callable[[datetime], datetime] = field(default=lambda t: t)


def _start(o: OrderRow, day: Day) -> datetime:
    return day.sim(o.recorded_at)


# ----- overlaps ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tenure:
    symbol: str
    fence: int
    workers: tuple[str, ...]  # the placer, and an adopter its unfinished orders moved to
    first: datetime
    last: datetime


def tenures(day: Day) -> dict[str, list[Tenure]]:
    """Per symbol, each fence that wrote orders, with the span of its writes."""
    spans: dict[tuple[str, int], list[OrderRow]] = defaultdict(list)
    for o in day.orders:
        spans[(o.symbol, o.fence)].append(o)
    out: dict[str, list[Tenure]] = defaultdict(list)
    for (symbol, fence), orders in spans.items():
        times = [_start(o, day) for o in orders]
        workers = tuple(sorted({o.worker_id for o in orders}))
        out[symbol].append(Tenure(symbol, fence, workers, min(times), max(times)))
    for ts in out.values():
        ts.sort(key=lambda t: (t.first, t.fence))
    return out


def tenure_conflicts(day: Day) -> list[tuple[Tenure, Tenure]]:
    """Pairs of tenures of one symbol that overlap in time or contradict their fences."""
    bad: list[tuple[Tenure, Tenure]] = []
    for ts in tenures(day).values():
        for i, a in enumerate(ts):
            for b in ts[i + 1 :]:  # b.first >= a.first
                if b.first < a.last - EPS or b.fence < a.fence:
                    bad.append((a, b))
    return bad


def holding_stretches(day: Day) -> list[tuple[str, list[FillRow]]]:
    """Per symbol, the runs of fills (in commit order) during which the net quantity was > 0."""
    by_symbol: dict[str, list[FillRow]] = defaultdict(list)
    for f in day.fills:
        by_symbol[f.symbol].append(f)
    out: list[tuple[str, list[FillRow]]] = []
    for symbol, fills in by_symbol.items():
        fills.sort(key=lambda f: (f.recorded_at, f.id))
        net, run = 0, []
        for f in fills:
            run.append(f)
            net += f.qty if f.side == "BUY" else -f.qty
            if net <= 0:
                out.append((symbol, run))
                net, run = 0, []
        if run:
            out.append((symbol, run))
    return out


def multi_buyer_stretches(day: Day) -> list[tuple[str, set[int]]]:
    """Holding stretches in which more than one tenure (fence) bought: a second holder's BUY."""
    orders = {o.id: o for o in day.orders}
    bad = []
    for symbol, run in holding_stretches(day):
        buyers = {orders[f.order_id].fence for f in run if f.side == "BUY" and f.order_id in orders}
        if len(buyers) > 1:
            bad.append((symbol, buyers))
    return bad


def overlaps(day: Day) -> int:
    return len(tenure_conflicts(day)) + len(multi_buyer_stretches(day))


# ----- orders -----------------------------------------------------------------------------------


def may_have_worked(o: OrderRow) -> bool:
    """Could the order have been working at the venue at some instant?"""
    if o.filled_qty > 0 or o.broker_order_id:
        return True
    return o.status not in ("NEW", "REJECTED", "CANCELED", "WITHDRAWN")


def double_order_pairs(day: Day) -> list[tuple[OrderRow, OrderRow]]:
    by_symbol: dict[str, list[tuple[datetime, datetime, OrderRow]]] = defaultdict(list)
    for o in day.orders:
        if not may_have_worked(o):
            continue
        end = o.updated_at if o.status in day.terminal else None
        start = _start(o, day)
        by_symbol[o.symbol].append((start, end or start.replace(year=9999), o))
    bad = []
    for items in by_symbol.values():
        items.sort(key=lambda x: (x[0], x[2].id))
        for i, (_s, a_end, a) in enumerate(items):
            for b_start, _e, b in items[i + 1 :]:
                if b_start >= a_end - EPS:
                    break
                bad.append((a, b))
    return bad


def open_orders(day: Day) -> list[OrderRow]:
    return [o for o in day.orders if o.status not in day.terminal]


# ----- close ------------------------------------------------------------------------------------


def net_by_fills(day: Day) -> dict[str, int]:
    net: dict[str, int] = defaultdict(int)
    for f in day.fills:
        net[f.symbol] += f.qty if f.side == "BUY" else -f.qty
    return {s: q for s, q in net.items() if q != 0}


def open_positions(day: Day) -> list[PositionRow]:
    return [p for p in day.positions if p.status != "CLOSED" or p.qty != 0]


def not_flat(day: Day, venue_holdings: Mapping[str, int] | None = None) -> set[str]:
    symbols = set(net_by_fills(day)) | {p.symbol for p in open_positions(day)}
    if venue_holdings:
        symbols |= {s for s, q in venue_holdings.items() if q != 0}
    return symbols


def pnl_from_fills(day: Day) -> Decimal:
    total = Decimal(0)
    for f in day.fills:
        total += (f.amount if f.side == "SELL" else -f.amount) - f.fee - f.tax
    return total


def pnl_mismatch(day: Day) -> Decimal:
    """Largest pairwise difference of the day's three PnL figures (a missing summary: the
    other two figures' largest magnitude, so a day with money moved and no summary shows)."""
    figures = [day.trades_pnl, pnl_from_fills(day)]
    worst = abs(figures[0] - figures[1])
    if day.summary_pnl is None:
        return max(worst, *(abs(f) for f in figures)) if day.trades or day.fills else worst
    return max(worst, *(abs(day.summary_pnl - f) for f in figures))


# ----- against the venue ------------------------------------------------------------------------


@dataclass(frozen=True)
class Mismatch:
    what: str
    broker_order_id: str | None
    ledger: tuple[int, Decimal] | None
    other: tuple[int, Decimal] | None


def fill_mismatches(
    day: Day,
    venue: Mapping[str, tuple[int, Decimal]] | None = None,
    canonical: Callable[[str], str] = lambda s: s.lstrip("0") or "0",
) -> list[Mismatch]:
    """Per order: ledger figures vs its fill rows, and vs the venue's (canonical ids)."""
    bad: list[Mismatch] = []
    sums: dict[int, tuple[int, Decimal]] = {}
    for f in day.fills:
        q, a = sums.get(f.order_id, (0, Decimal(0)))
        sums[f.order_id] = (q + f.qty, a + f.amount)
    by_id: dict[str, OrderRow] = {}
    for o in day.orders:
        mine = (o.filled_qty, o.filled_amount)
        rows = sums.get(o.id, (0, Decimal(0)))
        if rows != mine:
            bad.append(Mismatch("fill rows", o.broker_order_id, mine, rows))
        if o.broker_order_id:
            by_id[canonical(o.broker_order_id)] = o
    if venue is None:
        return bad
    seen = {canonical(k): v for k, v in venue.items()}
    for key, theirs in seen.items():
        found = by_id.get(key)
        if found is None:
            bad.append(Mismatch("not in ledger", key, None, theirs))
        elif (found.filled_qty, found.filled_amount) != theirs:
            bad.append(Mismatch("venue", key, (found.filled_qty, found.filled_amount), theirs))
    for key, o in by_id.items():
        if key not in seen:
            bad.append(Mismatch("not at venue", key, (o.filled_qty, o.filled_amount), None))
    return bad


# ----- loading ----------------------------------------------------------------------------------


def load_day(
    conn: Any, day: date, terminal: Iterable[str], sim: Callable[[datetime], datetime]
) -> Day:
    """Read `day` from an open psycopg connection."""
    orders = [
        OrderRow(*r)
        for r in conn.execute(
            """SELECT id, worker_id, symbol, side, qty, status, fence, broker_order_id,
                      filled_qty, filled_amount, created_at, updated_at, recorded_at
               FROM orders WHERE trading_day = %s ORDER BY id""",
            (day,),
        ).fetchall()
    ]
    fills = [
        FillRow(*r)
        for r in conn.execute(
            """SELECT id, order_id, symbol, side, qty, amount, fee, tax, recorded_at
               FROM fills WHERE trading_day = %s ORDER BY id""",
            (day,),
        ).fetchall()
    ]
    positions = [
        PositionRow(*r)
        for r in conn.execute(
            "SELECT symbol, worker_id, qty, status FROM positions WHERE trading_day = %s", (day,)
        ).fetchall()
    ]
    trades_pnl, trades = conn.execute(
        "SELECT coalesce(sum(pnl), 0), count(*) FROM trades WHERE trading_day = %s", (day,)
    ).fetchone()
    summary = conn.execute("SELECT pnl FROM daily_summaries WHERE date = %s", (day,)).fetchone()
    (locks,) = conn.execute("SELECT count(*) FROM stock_locks").fetchone()
    return Day(
        day=day,
        orders=orders,
        fills=fills,
        positions=positions,
        trades_pnl=Decimal(trades_pnl),
        trades=int(trades),
        summary_pnl=None if summary is None else Decimal(summary[0]),
        stock_locks=int(locks),
        terminal=frozenset(terminal),
        sim=sim,
    )


def describe(
    day: Day,
    venue: Mapping[str, tuple[int, Decimal]] | None = None,
    canonical: Callable[[str], str] = lambda s: s.lstrip("0") or "0",
) -> list[str]:
    """One line per violation, for stderr."""
    lines = []
    for a, b in tenure_conflicts(day):
        lines.append(f"overlap {a.symbol}: fence {a.fence} {a.workers} [{a.first:%H:%M:%S}-"
                     f"{a.last:%H:%M:%S}] vs fence {b.fence} {b.workers} [{b.first:%H:%M:%S}-"
                     f"{b.last:%H:%M:%S}]")  # fmt: skip
    for symbol, buyers in multi_buyer_stretches(day):
        lines.append(f"overlap {symbol}: one holding bought under fences {sorted(buyers)}")
    for x, y in double_order_pairs(day):
        lines.append(f"double order {x.symbol}: #{x.id} {x.side} {x.status} ({x.worker_id}) "
                     f"and #{y.id} {y.side} {y.status} ({y.worker_id})")  # fmt: skip
    for o in open_orders(day):
        lines.append(f"open order #{o.id} {o.symbol} {o.side} {o.status} ({o.worker_id})")
    for symbol, q in sorted(net_by_fills(day).items()):
        lines.append(f"not flat by fills: {symbol} {q:+d}")
    for p in open_positions(day):
        lines.append(f"position not closed: {p.symbol} {p.qty} {p.status} ({p.worker_id})")
    for m in fill_mismatches(day, venue, canonical):
        lines.append(f"fills mismatch ({m.what}) order {m.broker_order_id}: ledger {m.ledger}"
                     f" other {m.other}")  # fmt: skip
    return lines


def sim_clock(open_: datetime, epoch: float, speed: float) -> Callable[[datetime], datetime]:
    """Wall instant -> the simulated clock that opened the session `open_` at `epoch`."""

    def sim(t: datetime) -> datetime:
        return open_ + timedelta(seconds=(t.timestamp() - epoch) * speed)

    return sim


__all__: Sequence[str] = [
    "Day",
    "FillRow",
    "OrderRow",
    "PositionRow",
    "describe",
    "double_order_pairs",
    "fill_mismatches",
    "load_day",
    "not_flat",
    "open_orders",
    "overlaps",
    "pnl_mismatch",
    "sim_clock",
]
