"""ORM rows -> the plain records of `ledger.records` (kept out of the repository's way)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row

from ledger.models import (
    DailySummary,
    DailyWorkerSummary,
    Fill,
    Order,
    Position,
    StockLock,
    Trade,
    Worker,
)
from ledger.money import DaySummary, PositionState
from ledger.orders import OrderState
from ledger.records import (
    FillRecord,
    LockRecord,
    OrderRecord,
    PositionRecord,
    SummaryFigures,
    TradeRecord,
    WorkerRecord,
)
from market.orders import BrokerOrderId, ClientOrderId, OrderType, Side


def order_record(o: Order | Row[Any]) -> OrderRecord:
    """From the model or from a row of its table (the same column names)."""
    return OrderRecord(
        id=o.id,
        client_order_id=ClientOrderId(o.client_order_id),
        worker_id=o.worker_id,
        symbol=o.symbol,
        side=Side(o.side),
        order_type=OrderType(o.order_type),
        qty=o.qty,
        price=o.price,
        status=OrderState(o.status),
        broker_order_id=BrokerOrderId(o.broker_order_id) if o.broker_order_id else None,
        fence=o.fence,
        reason=o.reason,
        status_reason=o.status_reason,
        signal_price=o.signal_price,
        filled_qty=o.filled_qty,
        filled_amount=o.filled_amount,
        trading_day=o.trading_day,
        created_at=o.created_at,
        updated_at=o.updated_at,
    )


def fill_record(f: Fill) -> FillRecord:
    return FillRecord(
        id=f.id,
        order_id=f.order_id,
        worker_id=f.worker_id,
        symbol=f.symbol,
        side=Side(f.side),
        qty=f.qty,
        price=f.price,
        amount=f.amount,
        fee=f.fee,
        tax=f.tax,
        transaction_tax=f.transaction_tax,
        rural_tax=f.rural_tax,
        cum_qty=f.cum_qty,
        filled_at=f.filled_at,
        trading_day=f.trading_day,
    )


def position_record(p: Position | Row[Any]) -> PositionRecord:
    """From the model or from a row of its table (the same column names)."""
    return PositionRecord(
        id=p.id,
        worker_id=p.worker_id,
        symbol=p.symbol,
        qty=p.qty,
        avg_price=p.avg_price,
        buy_qty=p.buy_qty,
        buy_amount=p.buy_amount,
        sell_qty=p.sell_qty,
        sell_amount=p.sell_amount,
        fees=p.fees,
        taxes=p.taxes,
        status=p.status,
        entry_reason=p.entry_reason,
        opened_at=p.opened_at,
        updated_at=p.updated_at,
        closed_at=p.closed_at,
        trading_day=p.trading_day,
    )


def position_state(p: Position) -> PositionState:
    return PositionState(
        qty=p.qty,
        avg_price=p.avg_price,
        buy_qty=p.buy_qty,
        buy_amount=p.buy_amount,
        sell_qty=p.sell_qty,
        sell_amount=p.sell_amount,
        fees=p.fees,
        taxes=p.taxes,
    )


def store_position_state(p: Position, state: PositionState) -> None:
    p.qty = state.qty
    p.avg_price = state.avg_price
    p.buy_qty = state.buy_qty
    p.buy_amount = state.buy_amount
    p.sell_qty = state.sell_qty
    p.sell_amount = state.sell_amount
    p.fees = state.fees
    p.taxes = state.taxes


def trade_record(t: Trade) -> TradeRecord:
    return TradeRecord(
        id=t.id,
        position_id=t.position_id,
        worker_id=t.worker_id,
        symbol=t.symbol,
        qty=t.qty,
        buy_amount=t.buy_amount,
        sell_amount=t.sell_amount,
        fees=t.fees,
        taxes=t.taxes,
        pnl=t.pnl,
        opened_at=t.opened_at,
        closed_at=t.closed_at,
        exit_reason=t.exit_reason,
        entry_reason=t.entry_reason,
        trading_day=t.trading_day,
    )


def lock_record(lock: StockLock) -> LockRecord:
    return LockRecord(
        symbol=lock.symbol,
        worker_id=lock.worker_id,
        fence=lock.fence,
        locked_at=lock.locked_at,
        ttl=lock.ttl,
        heartbeat_at=lock.heartbeat_at,
    )


def worker_record(w: Worker) -> WorkerRecord:
    return WorkerRecord(
        worker_id=w.worker_id,
        pid=w.pid,
        host=w.host,
        status=w.status,
        capital_limit=w.capital_limit,
        current_symbol=w.current_symbol,
        started_at=w.started_at,
        heartbeat_at=w.heartbeat_at,
    )


def summary_figures(row: DailySummary | DailyWorkerSummary) -> SummaryFigures:
    return SummaryFigures(
        summary=DaySummary(
            pnl=row.pnl,
            win_rate=row.win_rate,
            avg_pnl=row.avg_pnl,
            max_loss=row.max_loss,
            trades_count=row.trades_count,
            wins=row.wins,
        ),
        fees=row.fees,
        taxes=row.taxes,
    )


def summary_columns(figures: SummaryFigures) -> dict[str, object]:
    s = figures.summary
    return {
        "pnl": s.pnl,
        "win_rate": s.win_rate,
        "avg_pnl": s.avg_pnl,
        "max_loss": s.max_loss,
        "trades_count": s.trades_count,
        "wins": s.wins,
        "fees": figures.fees,
        "taxes": figures.taxes,
    }
