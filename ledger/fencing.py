"""The fenced order insert: Invariants 1, 5 and 6 as checks and one SQL statement.

`fenced_insert` builds a single INSERT ... SELECT that produces a row only while
`stock_locks` holds (symbol, worker_id, fence), reading that row FOR SHARE: a concurrent
takeover (an UPDATE of the row) either waits for the insert to commit or makes the insert see
the new fence and produce nothing. For a BUY the same statement also requires that the day's
loss-limit halt is not recorded, that no account drift on the symbol is open (`ledger.drift`)
and, under a daily loss limit, that the day's realized pnl has never reached −limit
(`ledger.risk`: the limit latches). When no row comes back,
`explain_refusal` says why.
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Date,
    Integer,
    Numeric,
    SmallInteger,
    Table,
    Text,
    and_,
    literal,
    select,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.dml import ReturningInsert
from sqlalchemy.types import DateTime, TypeEngine

from ledger.convert import order_record
from ledger.drift import drift_open
from ledger.errors import (
    CapitalLimitExceeded,
    LedgerError,
    LossLimitReached,
    StaleFence,
    SymbolDrifted,
)
from ledger.models import Order, StockLock
from ledger.orders import OrderState
from ledger.records import OrderIntent, OrderRecord
from ledger.risk import buy_refusal, day_low_pnl, halt_recorded
from market.costs import CostModel
from market.orders import OrderType, Side
from market.ticks import is_on_grid


def stale_fence(symbol: str, worker_id: str, fence: int, lock: StockLock | None) -> StaleFence:
    """The error for a fence the mirror row does not hold, naming what it holds instead."""
    held = f"{lock.worker_id} fence {lock.fence}" if lock else "no lock"
    return StaleFence(f"{symbol}: {worker_id} fence {fence} is not current (mirror: {held})")


def check_intent(intent: OrderIntent, costs: CostModel) -> None:
    """The checks that need no database: shape, tick grid, capital limit (Invariant 6)."""
    if intent.qty <= 0:
        raise ValueError(f"order qty must be positive, got {intent.qty}")
    if intent.order_type is OrderType.LIMIT and intent.price is None:
        raise ValueError("a LIMIT order needs a price")
    if intent.price is not None and not is_on_grid(intent.price):
        raise ValueError(f"price {intent.price} is not on the KRX tick grid")
    if intent.side is not Side.BUY or intent.capital_limit is None:
        return
    ref = intent.price if intent.price is not None else intent.signal_price
    if ref is None:
        raise ValueError("a MARKET BUY under a capital limit needs signal_price")
    notional = ref * intent.qty
    cost = notional + costs.commission(notional)
    if cost > intent.capital_limit:
        raise CapitalLimitExceeded(
            f"BUY {intent.qty} {intent.symbol} @ {ref} costs {cost} > capital limit "
            f"{intent.capital_limit}"
        )


def typed_literal(value: object, type_: TypeEngine[Any]) -> ColumnElement[Any]:
    # Typed explicitly: an untyped NULL in an INSERT ... SELECT list would resolve as text.
    return sql_cast(literal(value), type_)


def fenced_insert(intent: OrderIntent) -> ReturningInsert[Order]:
    """INSERT the order as NEW only under the current fence (and, for a BUY, only while the
    day's loss limit has not been reached)."""
    locks = cast(Table, StockLock.__table__)
    conds: list[ColumnElement[bool]] = [
        locks.c.symbol == intent.symbol,
        locks.c.worker_id == intent.worker_id,
        locks.c.fence == intent.fence,
    ]
    if intent.side is Side.BUY:
        conds.append(~halt_recorded(intent.trading_day))
        conds.append(~drift_open(intent.symbol))
        if intent.daily_loss_limit is not None:
            conds.append(day_low_pnl(intent.trading_day) > -intent.daily_loss_limit)
    money, tstz = Numeric(), DateTime(timezone=True)
    values: dict[str, ColumnElement[Any]] = {
        "client_order_id": typed_literal(intent.client_order_id, Text()),
        "worker_id": typed_literal(intent.worker_id, Text()),
        "symbol": typed_literal(intent.symbol, Text()),
        "side": typed_literal(intent.side.value, Text()),
        "order_type": typed_literal(intent.order_type.value, Text()),
        "qty": typed_literal(intent.qty, Integer()),
        "price": typed_literal(intent.price, money),
        "status": typed_literal(OrderState.NEW.value, Text()),
        "fence": typed_literal(intent.fence, BigInteger()),
        "reason": typed_literal(intent.reason, Text()),
        "signal_price": typed_literal(intent.signal_price, money),
        "tier": typed_literal(intent.tier, SmallInteger()),
        "trading_day": typed_literal(intent.trading_day, Date()),
        "created_at": typed_literal(intent.created_at, tstz),
        "updated_at": typed_literal(intent.created_at, tstz),
    }
    src = (
        select(*values.values())
        .select_from(locks)
        .where(and_(*conds))
        .with_for_update(read=True, of=locks)
    )
    return (
        pg_insert(Order)
        .from_select(list(values), src)
        .on_conflict_do_nothing(index_elements=["client_order_id"])
        .returning(Order)
    )


async def explain_refusal(s: AsyncSession, intent: OrderIntent) -> OrderRecord:
    """Why `fenced_insert` inserted nothing: return the order if this is a retry of an insert
    that succeeded, else raise `StaleFence`, `LossLimitReached` or `SymbolDrifted`.
    """
    existing = (
        await s.execute(select(Order).where(Order.client_order_id == intent.client_order_id))
    ).scalar_one_or_none()
    if existing is not None:
        same = (existing.worker_id, existing.symbol, existing.side, existing.qty,
                existing.fence) == (intent.worker_id, intent.symbol, intent.side.value,
                                    intent.qty, intent.fence)  # fmt: skip
        if same:
            return order_record(existing)
        raise LedgerError(f"client order id {intent.client_order_id} is already used")
    lock = await s.get(StockLock, intent.symbol)
    if lock is None or (lock.worker_id, lock.fence) != (intent.worker_id, intent.fence):
        raise stale_fence(intent.symbol, intent.worker_id, intent.fence, lock)
    if intent.side is Side.BUY:
        why = await buy_refusal(s, intent.trading_day, intent.daily_loss_limit)
        if why is not None:
            raise LossLimitReached(why)
        if await s.scalar(select(drift_open(intent.symbol))):
            raise SymbolDrifted(
                f"{intent.symbol}: an account drift is open (the broker's holdings differ from "
                "the ledger's, unexplained): no new BUY on it until a reconciliation clears it"
            )
    # The lock matched and no loss limit applied, yet nothing was inserted: the lock row
    # changed between the statement and this check. Report it as the fence race it is.
    raise StaleFence(f"{intent.symbol}: lock changed while inserting {intent.client_order_id}")
