"""Account drift: the ledger's side of the account reconciliation.

* `account_view` reads, in one statement, what the reconciliation compares with the broker:
  per symbol the ledger's live position (summed over workers), the day's orders and fills so
  far (an activity mark: two reads that differ mean something moved in between) and the
  unfinished orders; plus the day's cash flow from the fills.
* `record_drift` opens an episode (`account_drifts`, one open row per subject) or updates the
  open one; `clear_drift` closes it, saying who and why.
* `drift_open(symbol)` is the clause the fenced BUY insert and the scan view use: while a
  holding drift on the symbol is open, no BUY on it is admitted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from ledger.convert import order_record
from ledger.models import AccountDrift, Fill, Order, Position
from ledger.orders import UNFINISHED
from ledger.records import OrderRecord
from ledger.summaries import pnl_from_fills

HOLDING, CASH = "holding", "cash"
_UNFINISHED = [s.value for s in UNFINISHED]


@dataclass(frozen=True, slots=True)
class SymbolBook:
    """The ledger's figures for one symbol: the live position (summed over workers) and the
    activity mark of the day (orders, their filled quantity, fills)."""

    qty: int = 0
    avg_price: Decimal | None = None
    orders: int = 0
    filled_qty: int = 0
    fills: int = 0
    unfinished: int = 0


@dataclass(frozen=True, slots=True)
class AccountView:
    """What the ledger says the account should hold, and which orders are still in flight."""

    symbols: dict[str, SymbolBook]
    unfinished: tuple[OrderRecord, ...]
    cash_flow: Decimal  # the day's sell amounts − buy amounts − fees − taxes, from the fills
    fills: int  # the day's fills (for the cash tolerance)
    traded: Decimal = Decimal(0)  # the day's bought + sold amounts

    def qty(self, symbol: str) -> int:
        book = self.symbols.get(symbol)
        return book.qty if book is not None else 0


@dataclass(frozen=True, slots=True)
class DriftRecord:
    id: int
    kind: str
    symbol: str
    trading_day: date
    detected_at: datetime
    seen_at: datetime
    broker_qty: int | None
    ledger_qty: int | None
    broker_cash: Decimal | None
    expected_cash: Decimal | None
    detail: str
    recorded_by: str
    cleared_at: datetime | None = None
    cleared_by: str | None = None
    clear_reason: str | None = None


@dataclass(frozen=True, slots=True)
class DriftObservation:
    """One unexplained difference as a reconciliation saw it."""

    kind: str
    symbol: str
    trading_day: date
    at: datetime
    detail: str
    recorded_by: str
    broker_qty: int | None = None
    ledger_qty: int | None = None
    broker_avg_price: Decimal | None = None
    ledger_avg_price: Decimal | None = None
    broker_cash: Decimal | None = None
    expected_cash: Decimal | None = None


def drift_open(symbol: str | ColumnElement[str]) -> ColumnElement[bool]:
    """Whether a holding drift on `symbol` is open, as an EXISTS clause."""
    return exists(
        select(AccountDrift.id).where(
            AccountDrift.kind == HOLDING,
            AccountDrift.symbol == symbol,
            AccountDrift.cleared_at.is_(None),
        )
    )


def _record(row: AccountDrift) -> DriftRecord:
    return DriftRecord(
        id=row.id, kind=row.kind, symbol=row.symbol, trading_day=row.trading_day,
        detected_at=row.detected_at, seen_at=row.seen_at, broker_qty=row.broker_qty,
        ledger_qty=row.ledger_qty, broker_cash=row.broker_cash, expected_cash=row.expected_cash,
        detail=row.detail, recorded_by=row.recorded_by, cleared_at=row.cleared_at,
        cleared_by=row.cleared_by, clear_reason=row.clear_reason,
    )  # fmt: skip


async def account_view(s: AsyncSession, trading_day: date) -> AccountView:
    """The ledger's account (see `AccountView`), read in one snapshot (REPEATABLE READ is not
    needed: the caller brackets the broker's read with two of these and compares them)."""
    positions = (
        select(
            Position.symbol,
            func.sum(Position.qty).label("qty"),
            (
                func.sum(Position.qty * Position.avg_price) / func.nullif(func.sum(Position.qty), 0)
            ).label("avg"),
        )
        .where(Position.status != "CLOSED")
        .group_by(Position.symbol)
    )
    orders = (
        select(
            Order.symbol,
            func.count().label("orders"),
            func.coalesce(func.sum(Order.filled_qty), 0).label("filled"),
            func.count().filter(Order.status.in_(_UNFINISHED)).label("unfinished"),
        )
        .where(or_(Order.trading_day == trading_day, Order.status.in_(_UNFINISHED)))
        .group_by(Order.symbol)
    )
    fills = (
        select(Fill.symbol, func.count().label("fills"), func.sum(Fill.amount).label("amount"))
        .where(Fill.trading_day == trading_day)
        .group_by(Fill.symbol)
    )
    books: dict[str, dict[str, Any]] = {}
    for symbol, qty, avg in (await s.execute(positions)).all():
        books.setdefault(symbol, {}).update(qty=int(qty), avg_price=avg)
    for symbol, n, filled, working in (await s.execute(orders)).all():
        books.setdefault(symbol, {}).update(orders=n, filled_qty=int(filled), unfinished=working)
    n_fills, traded = 0, Decimal(0)  # the day's totals: the sums of the per-symbol figures
    for symbol, n, amount in (await s.execute(fills)).all():
        books.setdefault(symbol, {}).update(fills=n)
        n_fills, traded = n_fills + n, traded + amount
    pending = (
        await s.execute(select(Order).where(Order.status.in_(_UNFINISHED)).order_by(Order.id))
    ).scalars()
    unfinished = tuple(order_record(o) for o in pending)
    flow = await pnl_from_fills(s, trading_day)
    symbols = {k: SymbolBook(**v) for k, v in books.items()}
    return AccountView(symbols, unfinished, flow, int(n_fills), Decimal(traded))


async def open_drifts(s: AsyncSession) -> list[DriftRecord]:
    stmt = (
        select(AccountDrift)
        .where(AccountDrift.cleared_at.is_(None))
        .order_by(AccountDrift.kind, AccountDrift.symbol)
    )
    return [_record(r) for r in (await s.execute(stmt)).scalars()]


async def record_drift(s: AsyncSession, o: DriftObservation) -> tuple[DriftRecord, str]:
    """Open the episode for (kind, symbol), or update the open one. Returns the row and what
    happened: "new" (this call opened it), "changed" (it was open with other figures, now
    updated) or "same" (open with these figures: only `seen_at` moves)."""
    figures = {
        "broker_qty": o.broker_qty, "ledger_qty": o.ledger_qty,
        "broker_avg_price": o.broker_avg_price, "ledger_avg_price": o.ledger_avg_price,
        "broker_cash": o.broker_cash, "expected_cash": o.expected_cash,
    }  # fmt: skip
    row = await _open_row(s, o.kind, o.symbol)
    if row is None:  # (checked first: a conflicting insert would use up an identity value)
        row = await _insert(s, o, figures)
        if row is not None:
            return _record(row), "new"
        row = await _open_row(s, o.kind, o.symbol)  # opened meanwhile by another pass
        assert row is not None
    same = all(getattr(row, k) == v for k, v in figures.items())
    row.seen_at = max(row.seen_at, o.at)
    if not same:
        for k, v in figures.items():
            setattr(row, k, v)
        row.detail = o.detail
    await s.flush()
    return _record(row), "same" if same else "changed"


async def _open_row(s: AsyncSession, kind: str, symbol: str) -> AccountDrift | None:
    stmt = (
        select(AccountDrift)
        .where(
            AccountDrift.kind == kind,
            AccountDrift.symbol == symbol,
            AccountDrift.cleared_at.is_(None),
        )
        .with_for_update()
    )
    return (await s.execute(stmt)).scalar_one_or_none()


async def _insert(
    s: AsyncSession, o: DriftObservation, figures: dict[str, Any]
) -> AccountDrift | None:
    stmt = (
        pg_insert(AccountDrift)
        .values(kind=o.kind, symbol=o.symbol, trading_day=o.trading_day, detected_at=o.at,
                seen_at=o.at, detail=o.detail, recorded_by=o.recorded_by, **figures)
        .on_conflict_do_nothing(
            index_elements=["kind", "symbol"], index_where=AccountDrift.cleared_at.is_(None)
        )
        .returning(AccountDrift)
    )  # fmt: skip
    return (await s.execute(stmt)).scalar_one_or_none()


async def clear_drift(
    s: AsyncSession, kind: str, symbol: str, at: datetime, by: str, reason: str
) -> DriftRecord | None:
    """Close the open episode of (kind, symbol); the row closed, or None when none was open."""
    stmt = (
        update(AccountDrift)
        .where(
            and_(
                AccountDrift.kind == kind,
                AccountDrift.symbol == symbol,
                AccountDrift.cleared_at.is_(None),
            )
        )
        .values(cleared_at=at, cleared_by=by, clear_reason=reason, seen_at=at)
        .returning(AccountDrift)
    )
    row = (await s.execute(stmt)).scalar_one_or_none()
    return _record(row) if row is not None else None
