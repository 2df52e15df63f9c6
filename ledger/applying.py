"""Applying what is learnt about an order inside one open transaction: the broker's ack
(`apply_ack`), a status the caller decided (`apply_mark`), the broker's cumulative report
(`apply_status`: fills, position, trade).

Called by `Ledger` with the order row already locked (FOR UPDATE), so two pollers of one order
serialize; the position is guarded by a per-symbol advisory lock so two orders of one symbol
cannot both create it.
"""

from __future__ import annotations

from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from ledger.convert import (
    fill_record,
    position_record,
    position_state,
    store_position_state,
    trade_record,
)
from ledger.errors import LedgerInconsistent
from ledger.models import Fill, Order, Position, Trade
from ledger.money import (
    AVG_PRICE_QUANTUM,
    FillCosts,
    PositionState,
    apply_fill,
    fill_costs,
    fill_increment,
    realized_pnl,
)
from ledger.orders import OrderState, check_transition
from ledger.records import AppliedResult, FillRecord, TradeRecord
from ledger.risk import hold_loss_guard
from market.costs import CostModel
from market.orders import BrokerOrderId, OrderStatus, Side, canonical_broker_order_id
from market.types import Board


def target_state(order_qty: int, status: OrderStatus) -> OrderState:
    """The order state the broker's cumulative report implies."""
    if status.filled_qty >= order_qty:
        return OrderState.FILLED
    if status.done:
        if status.canceled:
            return OrderState.CANCELED
        if status.filled_qty == 0 and status.rejected_qty > 0:
            return OrderState.REJECTED
        # Nothing working any more, not canceled by us: the session ended on it.
        return OrderState.EXPIRED
    return OrderState.PARTIALLY_FILLED if status.filled_qty > 0 else OrderState.SENT


def _check_matches(order: Order, status: OrderStatus) -> None:
    if (status.symbol, status.side.value, status.qty) != (order.symbol, order.side, order.qty):
        raise LedgerInconsistent(
            f"order {order.client_order_id}: broker reports {status.side} {status.qty} "
            f"{status.symbol}, ledger has {order.side} {order.qty} {order.symbol}"
        )
    # canonical on both sides: a row written before ids were canonical still matches
    known = canonical_broker_order_id(order.broker_order_id) if order.broker_order_id else None
    if known is not None and known != canonical_broker_order_id(status.broker_order_id):
        raise LedgerInconsistent(
            f"order {order.client_order_id} is broker order {order.broker_order_id}, "
            f"not {status.broker_order_id}"
        )


def apply_ack(order: Order, broker_id: BrokerOrderId, at: datetime) -> None:
    """SUBMITTING/UNKNOWN -> SENT with the broker's (canonical) id; the same id again: no-op."""
    if order.broker_order_id is not None:
        if canonical_broker_order_id(order.broker_order_id) == broker_id:
            return
        raise LedgerInconsistent(
            f"order {order.client_order_id} is already broker order {order.broker_order_id}"
        )
    check_transition(order.client_order_id, OrderState(order.status), OrderState.SENT)
    order.status = OrderState.SENT.value
    order.broker_order_id = broker_id
    order.updated_at = at


def apply_mark(order: Order, status: OrderState, at: datetime, reason: str | None) -> None:
    """Move the order to `status` as `Ledger.mark_order` documents; same state: no-op."""
    if status in (OrderState.PARTIALLY_FILLED, OrderState.FILLED):
        raise ValueError(f"{status} is set by apply_order_status, not mark_order")
    if status in (OrderState.SUBMITTING, OrderState.WITHDRAWN):
        raise ValueError(f"{status} is fenced: use begin_submit or withdraw_orders")
    current = OrderState(order.status)
    if current is status:
        return
    check_transition(order.client_order_id, current, status)
    if status in (OrderState.CANCELED, OrderState.EXPIRED) and order.broker_order_id is not None:
        raise ValueError(
            f"order {order.client_order_id} is at the broker: apply its final status instead"
        )
    order.status = status.value
    order.status_reason = reason if reason is not None else order.status_reason
    order.updated_at = at


async def apply_status(
    session: AsyncSession,
    costs: CostModel,
    order: Order,
    status: OrderStatus,
    board: Board,
    at: datetime,
) -> AppliedResult:
    _check_matches(order, status)
    current = OrderState(order.status)
    if status.filled_qty < order.filled_qty:
        # An older poll answered late: the ledger already holds more. Nothing to learn.
        return AppliedResult((), None, current)
    try:
        qty, amount = fill_increment(
            order.filled_qty, order.filled_amount, status.filled_qty, status.filled_amount
        )
    except ValueError as exc:
        raise LedgerInconsistent(f"order {order.client_order_id}: {exc}") from exc
    target = target_state(order.qty, status)
    if qty == 0 and target == current and order.broker_order_id is not None:
        return AppliedResult((), None, current)  # already applied

    # A NEW order cannot be at the broker (sending goes through the fenced SUBMITTING claim),
    # so a report on one fails here; SUBMITTING and UNKNOWN reach any broker state directly.
    if target != current:
        check_transition(order.client_order_id, current, target)

    new_fills: tuple[FillRecord, ...] = ()
    trade: TradeRecord | None = None
    if qty > 0:
        fill = await _insert_fill(session, costs, order, status, qty, amount, board, at)
        new_fills = (fill,)
        trade = await _apply_to_position(session, order, fill, at)

    order.status = target.value
    order.broker_order_id = order.broker_order_id or canonical_broker_order_id(
        status.broker_order_id
    )
    order.filled_qty = status.filled_qty
    order.filled_amount = status.filled_amount
    order.updated_at = at
    return AppliedResult(new_fills, trade, target)


async def _insert_fill(
    session: AsyncSession,
    costs: CostModel,
    order: Order,
    status: OrderStatus,
    qty: int,
    amount: Decimal,
    board: Board,
    at: datetime,
) -> FillRecord:
    c: FillCosts = fill_costs(costs, Side(order.side), amount, board, order.trading_day)
    stmt = (
        pg_insert(Fill)
        .values(
            order_id=order.id,
            worker_id=order.worker_id,
            symbol=order.symbol,
            side=order.side,
            qty=qty,
            price=(amount / qty).quantize(AVG_PRICE_QUANTUM, ROUND_HALF_EVEN),
            amount=amount,
            fee=c.fee,
            tax=c.tax,
            transaction_tax=c.transaction_tax,
            rural_tax=c.rural_tax,
            cum_qty=status.filled_qty,
            filled_at=at,
            trading_day=order.trading_day,
        )
        .on_conflict_do_nothing(index_elements=["order_id", "cum_qty"])
        .returning(Fill)
    )
    row = (await session.execute(stmt)).scalar_one_or_none()
    if row is None:
        # The order row is locked and its filled_qty was below cum_qty, so this row cannot
        # exist unless the two disagree.
        raise LedgerInconsistent(
            f"order {order.client_order_id}: fill at cum_qty {status.filled_qty} already recorded"
        )
    return fill_record(row)


async def _apply_to_position(
    session: AsyncSession, order: Order, fill: FillRecord, at: datetime
) -> TradeRecord | None:
    await session.execute(
        select(func.pg_advisory_xact_lock(func.hashtext("position:" + order.symbol)))
    )
    pos = (
        await session.execute(
            select(Position)
            .where(Position.symbol == order.symbol, Position.status != "CLOSED")
            .with_for_update()
        )
    ).scalar_one_or_none()
    if pos is None:
        if fill.side is Side.SELL:
            raise LedgerInconsistent(f"{order.symbol}: sell fill with no open position")
        pos = Position(
            worker_id=order.worker_id,
            symbol=order.symbol,
            status="OPEN",
            entry_reason=order.reason,
            opened_at=at,
            updated_at=at,
            trading_day=order.trading_day,
        )
        store_position_state(pos, PositionState())
        session.add(pos)
    try:
        state = apply_fill(
            position_state(pos), fill.side, fill.qty, fill.amount, fill.fee, fill.tax
        )
    except ValueError as exc:
        raise LedgerInconsistent(f"{order.symbol}: {exc}") from exc
    store_position_state(pos, state)
    pos.updated_at = at
    if not state.closed:
        await session.flush()
        return None
    # Closing a trade changes the day's realized pnl: exclusive against BUY admission.
    await hold_loss_guard(session, order.trading_day, exclusive=True)
    pos.status = "CLOSED"
    pos.closed_at = at
    await session.flush()
    record = position_record(pos)
    trade = Trade(
        position_id=record.id,
        worker_id=record.worker_id,
        symbol=record.symbol,
        qty=state.buy_qty,
        buy_amount=state.buy_amount,
        sell_amount=state.sell_amount,
        fees=state.fees,
        taxes=state.taxes,
        pnl=realized_pnl(state),
        opened_at=record.opened_at,
        closed_at=at,
        exit_reason=order.reason,
        entry_reason=record.entry_reason,
        trading_day=order.trading_day,
    )
    session.add(trade)
    await session.flush()
    return trade_record(trade)
