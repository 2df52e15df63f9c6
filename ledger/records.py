"""Plain values the ledger takes and returns; callers never see ORM objects or sessions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal

from ledger.money import DaySummary
from ledger.orders import OrderState
from market.orders import BrokerOrderId, ClientOrderId, OrderType, Side


@dataclass(frozen=True, slots=True)
class OrderIntent:
    """What a worker wants to place; `Ledger.create_order` admits it or refuses it.

    `capital_limit` (Invariant 6) and `daily_loss_limit` (Invariant 5, a positive number of won)
    are checked for BUYs only; None skips the check. A MARKET order has `price=None` and is
    checked against `signal_price`.
    """

    client_order_id: ClientOrderId
    worker_id: str
    symbol: str
    side: Side
    order_type: OrderType
    qty: int
    price: Decimal | None
    fence: int
    reason: str | None
    signal_price: Decimal | None
    trading_day: date
    created_at: datetime
    capital_limit: Decimal | None = None
    daily_loss_limit: Decimal | None = None
    tier: int | None = None  # liquidity tier of the symbol, kept for tuning


@dataclass(frozen=True, slots=True)
class OrderRecord:
    id: int
    client_order_id: ClientOrderId
    worker_id: str
    symbol: str
    side: Side
    order_type: OrderType
    qty: int
    price: Decimal | None
    status: OrderState
    broker_order_id: BrokerOrderId | None
    fence: int
    reason: str | None
    status_reason: str | None
    signal_price: Decimal | None
    filled_qty: int
    filled_amount: Decimal
    trading_day: date
    created_at: datetime
    updated_at: datetime

    @property
    def remaining_qty(self) -> int:
        return self.qty - self.filled_qty


@dataclass(frozen=True, slots=True)
class FillRecord:
    id: int
    order_id: int
    worker_id: str
    symbol: str
    side: Side
    qty: int
    price: Decimal
    amount: Decimal
    fee: Decimal
    tax: Decimal
    transaction_tax: Decimal
    rural_tax: Decimal
    cum_qty: int
    filled_at: datetime
    trading_day: date


@dataclass(frozen=True, slots=True)
class PositionRecord:
    id: int
    worker_id: str
    symbol: str
    qty: int
    avg_price: Decimal
    buy_qty: int
    buy_amount: Decimal
    sell_qty: int
    sell_amount: Decimal
    fees: Decimal
    taxes: Decimal
    status: str  # OPEN, ORPHANED or CLOSED
    entry_reason: str | None
    opened_at: datetime
    updated_at: datetime
    closed_at: datetime | None
    trading_day: date


@dataclass(frozen=True, slots=True)
class TradeRecord:
    id: int
    position_id: int
    worker_id: str
    symbol: str
    qty: int
    buy_amount: Decimal
    sell_amount: Decimal
    fees: Decimal
    taxes: Decimal
    pnl: Decimal
    opened_at: datetime
    closed_at: datetime
    exit_reason: str | None
    entry_reason: str | None
    trading_day: date


@dataclass(frozen=True, slots=True)
class AppliedResult:
    """What one `apply_order_status` changed: no new fills means it was already applied."""

    new_fills: tuple[FillRecord, ...]
    closed_trade: TradeRecord | None
    order_status: OrderState


@dataclass(frozen=True, slots=True)
class LockRecord:
    symbol: str
    worker_id: str
    fence: int
    locked_at: datetime
    ttl: int  # ms
    heartbeat_at: datetime


@dataclass(frozen=True, slots=True)
class WorkerRecord:
    worker_id: str
    pid: int | None
    host: str | None
    status: str
    capital_limit: Decimal | None
    current_symbol: str | None
    started_at: datetime
    heartbeat_at: datetime


@dataclass(frozen=True, slots=True)
class SummaryFigures:
    """A `DaySummary` plus the fees and taxes of the same trades."""

    summary: DaySummary
    fees: Decimal
    taxes: Decimal


@dataclass(frozen=True, slots=True)
class ScanView:
    """What a scanning worker needs from the ledger, read in one round trip: who holds an open
    position on which symbol, who has unfinished orders where, the day's realized pnl, its low
    point so far (`low_pnl`: the loss limit latches on it), whether the day's loss-limit
    halt is recorded (`halted`), and the symbols with an open account drift (`drifted`: no
    new BUY on them)."""

    positions: Mapping[str, str]  # symbol -> worker_id
    unfinished: Mapping[str, str]  # symbol -> worker_id
    realized_pnl: Decimal
    low_pnl: Decimal = Decimal(0)
    halted: bool = False
    drifted: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class HaltRecord:
    """The day's loss-limit halt: who recorded it, when, and the figures it saw."""

    trading_day: date
    at: datetime
    realized_pnl: Decimal
    loss_limit: Decimal
    worker_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class DaySummaryRecord:
    trading_day: date
    total: SummaryFigures
    computed_at: datetime
    by_worker: Mapping[str, SummaryFigures] = field(default_factory=dict)
