"""Fenced writes that decide who may act on a symbol: the claim for sending, the withdrawal of
never-sent orders, and the moves of a position between owners. Statements on an open session;
`Ledger` runs each in its own transaction.

Each checks the caller's fence in the same transaction as the write it guards: the symbol's
mirror row is read FOR SHARE (`hold_fence`), so a takeover (the new owner's mirror write) either
waits for the write to commit or makes the check see the new fence. Hence a stale owner's claim
(NEW -> SUBMITTING) and an adopter's withdrawal (NEW -> WITHDRAWN) can never both win: whichever
commits first decides, and the other sees either a stale fence or an order no longer NEW.
Row locks are always taken in the same order (mirror row, then order rows, then the position).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ledger.convert import order_record
from ledger.errors import OrderNotFound, OrderNotNew, OrderWithdrawn, StaleFence
from ledger.lock_mirror import changed, hold_fence, hold_owner_guard, newest_fence
from ledger.models import Order, Position
from ledger.orders import UNFINISHED, OrderState
from ledger.records import OrderRecord

_UNFINISHED = [s.value for s in UNFINISHED]


async def locked_order(s: AsyncSession, client_order_id: str) -> Order:
    """The order row, locked FOR UPDATE until the transaction ends; `OrderNotFound` if none."""
    stmt = select(Order).where(Order.client_order_id == client_order_id).with_for_update()
    order = (await s.execute(stmt)).scalar_one_or_none()
    if order is None:
        raise OrderNotFound(f"no order {client_order_id}")
    return order


async def begin_submit(
    s: AsyncSession, client_order_id: str, worker_id: str, fence: int, at: datetime | None
) -> OrderRecord:
    """See `Ledger.begin_submit`."""
    symbol_of = select(Order.symbol).where(Order.client_order_id == client_order_id)
    symbol = (await s.execute(symbol_of)).scalar_one_or_none()  # immutable: no lock needed
    if symbol is None:
        raise OrderNotFound(f"no order {client_order_id}")
    await hold_fence(s, symbol, worker_id, fence)
    order = await locked_order(s, client_order_id)
    if (order.worker_id, order.fence) != (worker_id, fence):
        # placed under another tenure (or moved to its adopter): not this caller's to send
        raise StaleFence(
            f"order {client_order_id} was placed by {order.worker_id} fence {order.fence}, "
            f"not {worker_id} fence {fence}"
        )
    state = OrderState(order.status)
    if state is OrderState.SUBMITTING:
        return order_record(order)  # a retry of a claim that committed
    if state is OrderState.WITHDRAWN:
        raise OrderWithdrawn(client_order_id, state.value)
    if state is not OrderState.NEW:
        raise OrderNotNew(client_order_id, state.value)
    order.status = OrderState.SUBMITTING.value
    if at is not None:
        order.updated_at = at
    await s.flush()
    return order_record(order)


async def withdraw_orders(
    s: AsyncSession, symbol: str, worker_id: str, fence: int, at: datetime
) -> list[OrderRecord]:
    """See `Ledger.withdraw_orders`."""
    await hold_fence(s, symbol, worker_id, fence)
    stmt = (
        update(Order)
        .where(Order.symbol == symbol, Order.status == OrderState.NEW.value)
        .values(
            status=OrderState.WITHDRAWN.value,
            status_reason=f"withdrawn unsent by {worker_id} fence {fence}",
            updated_at=at,
        )
        .returning(Order)
        .execution_options(synchronize_session=False)
    )
    rows = (await s.execute(stmt)).scalars().all()
    return sorted((order_record(o) for o in rows), key=lambda o: o.id)


async def adopt_position(s: AsyncSession, symbol: str, new_worker_id: str, fence: int) -> bool:
    """See `Ledger.adopt_position`."""
    await hold_fence(s, symbol, new_worker_id, fence)
    # Claimed under an earlier tenure: it may be at the broker, and only the claimant could
    # have known. For its adopter the outcome is unknown until the broker has been asked.
    claimed_earlier = (
        update(Order)
        .where(Order.symbol == symbol, Order.status == OrderState.SUBMITTING.value,
               Order.fence != fence)
        .values(status=OrderState.UNKNOWN.value, status_reason=func.concat(
            "claimed for sending by ", Order.worker_id, " fence ", Order.fence,
            ": outcome unknown to its adopter"))
    )  # fmt: skip
    await s.execute(claimed_earlier)
    ord_stmt = (
        update(Order)
        .where(Order.symbol == symbol, Order.status.in_(_UNFINISHED))
        .values(worker_id=new_worker_id)
    )
    pos_stmt = (
        update(Position)
        .where(Position.symbol == symbol, Position.status != "CLOSED")
        .values(worker_id=new_worker_id, status="OPEN")
    )
    await s.execute(ord_stmt)
    return await changed(s, pos_stmt) == 1


async def mark_position_orphaned(s: AsyncSession, symbol: str, worker_id: str, fence: int) -> bool:
    """See `Ledger.mark_position_orphaned`."""
    # The guard orders this against a grant of the symbol even when no mirror row exists.
    await hold_owner_guard(s, symbol)
    newest = await newest_fence(s, symbol)
    if newest is not None and newest > fence:
        raise StaleFence(
            f"{symbol}: {worker_id} fence {fence} is older than fence {newest}: "
            "position not orphaned"
        )
    stmt = (
        update(Position)
        .where(Position.symbol == symbol, Position.worker_id == worker_id,
               Position.status == "OPEN")
        .values(status="ORPHANED")
    )  # fmt: skip
    return await changed(s, stmt) == 1
