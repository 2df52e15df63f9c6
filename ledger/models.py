"""The ledger schema as SQLAlchemy 2 declarative models.

migrations/versions/*.py create exactly this (tests/test_migrations.py compares the two).

Decisions:
* Money columns are unconstrained `NUMERIC`: Postgres stores the exact value and never rounds
  silently on insert. Averages that are rounded by rule carry their scale
  (avg prices 4 dp, win rate 4 dp, avg pnl 2 dp).
* Enumerations are `TEXT` + CHECK, not Postgres enum types, so adding a state is one
  constraint swap in a migration.
* `worker_id` columns carry no foreign key to `workers`: the lock mirror and the audit trail
  must accept a write even when the worker row is missing or was purged.
* Idempotency keys: `lock_events (symbol, fence, event)`, `fills (order_id, cum_qty)`
  (broker order + cumulative filled qty), `trades (position_id)`, `risk_halts (trading_day)`.
* `orders.broker_order_id` is stored canonical (`market.orders.canonical_broker_order_id`).
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    Numeric,
    PrimaryKeyConstraint,
    SmallInteger,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

MONEY = Numeric(asdecimal=True)
PRICE4 = Numeric(18, 4, asdecimal=True)
TSTZ = DateTime(timezone=True)

LOCK_EVENTS = ("acquired", "released", "expired", "recovered", "lost")
ORDER_STATES = (
    "NEW", "SUBMITTING", "SENT", "PARTIALLY_FILLED", "FILLED", "CANCELED", "REJECTED", "EXPIRED",
    "UNKNOWN", "WITHDRAWN",
)  # fmt: skip
POSITION_STATES = ("OPEN", "ORPHANED", "CLOSED")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Worker(Base):
    __tablename__ = "workers"

    worker_id: Mapped[str] = mapped_column(Text, primary_key=True)
    pid: Mapped[int | None] = mapped_column(Integer)
    host: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text)
    capital_limit: Mapped[Decimal | None] = mapped_column(MONEY)
    current_symbol: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(TSTZ)
    heartbeat_at: Mapped[datetime] = mapped_column(TSTZ)

    __table_args__ = (CheckConstraint("capital_limit >= 0", name="capital_limit_nonneg"),)


class StockLock(Base):
    """Postgres mirror of the Redis lock: the row the fenced order insert checks."""

    __tablename__ = "stock_locks"

    symbol: Mapped[str] = mapped_column(Text, primary_key=True)
    worker_id: Mapped[str] = mapped_column(Text)
    fence: Mapped[int] = mapped_column(BigInteger)
    locked_at: Mapped[datetime] = mapped_column(TSTZ)
    ttl: Mapped[int] = mapped_column(Integer)  # milliseconds
    heartbeat_at: Mapped[datetime] = mapped_column(TSTZ)

    __table_args__ = (
        CheckConstraint("fence > 0", name="fence_positive"),
        CheckConstraint("ttl > 0", name="ttl_positive"),
    )


class LockEvent(Base):
    """Append-only audit of lock ownership changes."""

    __tablename__ = "lock_events"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    symbol: Mapped[str] = mapped_column(Text)
    worker_id: Mapped[str] = mapped_column(Text)
    fence: Mapped[int] = mapped_column(BigInteger)
    event: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(TSTZ)

    __table_args__ = (
        UniqueConstraint("symbol", "fence", "event"),
        CheckConstraint(_in("event", LOCK_EVENTS), name="event_known"),
        CheckConstraint("fence > 0", name="fence_positive"),
        Index(None, "at"),
    )


class Order(Base):
    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    client_order_id: Mapped[str] = mapped_column(Text, unique=True)
    worker_id: Mapped[str] = mapped_column(Text)
    symbol: Mapped[str] = mapped_column(Text)
    side: Mapped[str] = mapped_column(Text)
    order_type: Mapped[str] = mapped_column(Text)
    qty: Mapped[int] = mapped_column(Integer)
    price: Mapped[Decimal | None] = mapped_column(MONEY)  # NULL for market orders
    status: Mapped[str] = mapped_column(Text)
    broker_order_id: Mapped[str | None] = mapped_column(Text)
    fence: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str | None] = mapped_column(Text)  # why the worker placed it (trade exit_reason)
    status_reason: Mapped[str | None] = mapped_column(Text)  # why it was rejected/canceled
    signal_price: Mapped[Decimal | None] = mapped_column(MONEY)
    tier: Mapped[int | None] = mapped_column(SmallInteger)  # liquidity tier, for tuning
    filled_qty: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    filled_amount: Mapped[Decimal] = mapped_column(MONEY, server_default=text("0"))
    trading_day: Mapped[date] = mapped_column(Date)
    created_at: Mapped[datetime] = mapped_column(TSTZ)
    # wall-clock instant the row was written (database clock), for commit-order audits
    recorded_at: Mapped[datetime] = mapped_column(
        TSTZ, server_default=text("clock_timestamp()"), nullable=False
    )
    updated_at: Mapped[datetime] = mapped_column(TSTZ)

    __table_args__ = (
        CheckConstraint("side IN ('BUY', 'SELL')", name="side_known"),
        CheckConstraint("order_type IN ('LIMIT', 'MARKET')", name="order_type_known"),
        CheckConstraint(_in("status", ORDER_STATES), name="status_known"),
        CheckConstraint("qty > 0", name="qty_positive"),
        CheckConstraint("price IS NULL OR price > 0", name="price_positive"),
        CheckConstraint("order_type = 'MARKET' OR price IS NOT NULL", name="limit_has_price"),
        CheckConstraint("filled_qty >= 0 AND filled_qty <= qty", name="filled_qty_range"),
        CheckConstraint("filled_amount >= 0", name="filled_amount_nonneg"),
        CheckConstraint("fence > 0", name="fence_positive"),
        Index(None, "worker_id", "status"),
        Index(None, "symbol", "status"),
        Index(None, "broker_order_id"),
        Index(None, "trading_day"),
    )


class Fill(Base):
    """One increment of an order's cumulative fill, with its fee and taxes."""

    __tablename__ = "fills"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    order_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("orders.id"))
    worker_id: Mapped[str] = mapped_column(Text)
    symbol: Mapped[str] = mapped_column(Text)
    side: Mapped[str] = mapped_column(Text)
    qty: Mapped[int] = mapped_column(Integer)
    price: Mapped[Decimal] = mapped_column(PRICE4)  # average price of this increment
    amount: Mapped[Decimal] = mapped_column(MONEY)
    fee: Mapped[Decimal] = mapped_column(MONEY)
    tax: Mapped[Decimal] = mapped_column(MONEY)  # transaction_tax + rural_tax
    transaction_tax: Mapped[Decimal] = mapped_column(MONEY)
    rural_tax: Mapped[Decimal] = mapped_column(MONEY)
    cum_qty: Mapped[int] = mapped_column(Integer)
    filled_at: Mapped[datetime] = mapped_column(TSTZ)
    # wall-clock instant the row was written (database clock), for commit-order audits
    recorded_at: Mapped[datetime] = mapped_column(
        TSTZ, server_default=text("clock_timestamp()"), nullable=False
    )
    trading_day: Mapped[date] = mapped_column(Date)

    __table_args__ = (
        UniqueConstraint("order_id", "cum_qty"),
        CheckConstraint("side IN ('BUY', 'SELL')", name="side_known"),
        CheckConstraint("qty > 0 AND cum_qty >= qty", name="qty_positive"),
        CheckConstraint("amount > 0 AND price > 0", name="amount_positive"),
        CheckConstraint(
            "fee >= 0 AND transaction_tax >= 0 AND rural_tax >= 0", name="costs_nonneg"
        ),
        CheckConstraint("tax = transaction_tax + rural_tax", name="tax_is_sum"),
        Index(None, "trading_day"),
        Index(None, "symbol", "trading_day"),
    )


class Position(Base):
    __tablename__ = "positions"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    worker_id: Mapped[str] = mapped_column(Text)
    symbol: Mapped[str] = mapped_column(Text)
    qty: Mapped[int] = mapped_column(Integer)
    avg_price: Mapped[Decimal] = mapped_column(PRICE4)
    buy_qty: Mapped[int] = mapped_column(Integer)
    buy_amount: Mapped[Decimal] = mapped_column(MONEY)
    sell_qty: Mapped[int] = mapped_column(Integer)
    sell_amount: Mapped[Decimal] = mapped_column(MONEY)
    fees: Mapped[Decimal] = mapped_column(MONEY)
    taxes: Mapped[Decimal] = mapped_column(MONEY)
    status: Mapped[str] = mapped_column(Text)
    entry_reason: Mapped[str | None] = mapped_column(Text)
    opened_at: Mapped[datetime] = mapped_column(TSTZ)
    updated_at: Mapped[datetime] = mapped_column(TSTZ)
    closed_at: Mapped[datetime | None] = mapped_column(TSTZ)
    trading_day: Mapped[date] = mapped_column(Date)

    __table_args__ = (
        CheckConstraint(_in("status", POSITION_STATES), name="status_known"),
        CheckConstraint("qty >= 0 AND qty = buy_qty - sell_qty", name="qty_balances"),
        CheckConstraint(
            "(status = 'CLOSED') = (closed_at IS NOT NULL) AND (status <> 'CLOSED' OR qty = 0)",
            name="closed_is_flat",
        ),
        # At most one live (not closed) position per symbol: the symbol's single owner.
        Index(
            "uq_positions_symbol_live",
            "symbol",
            unique=True,
            postgresql_where=text("status <> 'CLOSED'"),
        ),
        Index(None, "worker_id", "status"),
        Index(None, "trading_day"),
    )


class Trade(Base):
    """A closed round trip. pnl = sell_amount − buy_amount − fees − taxes (checked)."""

    __tablename__ = "trades"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    position_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("positions.id"), unique=True)
    worker_id: Mapped[str] = mapped_column(Text)
    symbol: Mapped[str] = mapped_column(Text)
    qty: Mapped[int] = mapped_column(Integer)
    buy_amount: Mapped[Decimal] = mapped_column(MONEY)
    sell_amount: Mapped[Decimal] = mapped_column(MONEY)
    fees: Mapped[Decimal] = mapped_column(MONEY)
    taxes: Mapped[Decimal] = mapped_column(MONEY)
    pnl: Mapped[Decimal] = mapped_column(MONEY)
    opened_at: Mapped[datetime] = mapped_column(TSTZ)
    closed_at: Mapped[datetime] = mapped_column(TSTZ)
    # wall-clock instant the row was written (database clock), for commit-order audits
    recorded_at: Mapped[datetime] = mapped_column(
        TSTZ, server_default=text("clock_timestamp()"), nullable=False
    )
    exit_reason: Mapped[str | None] = mapped_column(Text)
    entry_reason: Mapped[str | None] = mapped_column(Text)
    trading_day: Mapped[date] = mapped_column(Date)

    __table_args__ = (
        CheckConstraint("qty > 0", name="qty_positive"),
        CheckConstraint("pnl = sell_amount - buy_amount - fees - taxes", name="pnl_balances"),
        Index(None, "trading_day"),
        Index(None, "worker_id", "trading_day"),
    )


class _SummaryFigures:
    pnl: Mapped[Decimal] = mapped_column(MONEY)
    win_rate: Mapped[Decimal] = mapped_column(Numeric(5, 4, asdecimal=True))
    avg_pnl: Mapped[Decimal] = mapped_column(Numeric(20, 2, asdecimal=True))
    max_loss: Mapped[Decimal] = mapped_column(MONEY)
    trades_count: Mapped[int] = mapped_column(Integer)
    wins: Mapped[int] = mapped_column(Integer)
    fees: Mapped[Decimal] = mapped_column(MONEY)
    taxes: Mapped[Decimal] = mapped_column(MONEY)
    computed_at: Mapped[datetime] = mapped_column(TSTZ)


class DailySummary(_SummaryFigures, Base):
    __tablename__ = "daily_summaries"

    date: Mapped[date] = mapped_column(Date, primary_key=True)

    __table_args__ = (
        CheckConstraint("wins >= 0 AND wins <= trades_count", name="wins_range"),
        CheckConstraint("max_loss <= 0", name="max_loss_nonpos"),
    )


class DailyWorkerSummary(_SummaryFigures, Base):
    __tablename__ = "daily_worker_summaries"

    date: Mapped[date] = mapped_column(Date)
    worker_id: Mapped[str] = mapped_column(Text)

    __table_args__ = (
        PrimaryKeyConstraint("date", "worker_id"),
        CheckConstraint("wins >= 0 AND wins <= trades_count", name="wins_range"),
        CheckConstraint("max_loss <= 0", name="max_loss_nonpos"),
    )


class RiskHalt(Base):
    """The day's loss-limit halt, recorded once (Invariant 5): from then on no BUY that day."""

    __tablename__ = "risk_halts"

    trading_day: Mapped[date] = mapped_column(Date, primary_key=True)
    at: Mapped[datetime] = mapped_column(TSTZ)
    realized_pnl: Mapped[Decimal] = mapped_column(MONEY)
    loss_limit: Mapped[Decimal] = mapped_column(MONEY)
    worker_id: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)

    __table_args__ = (CheckConstraint("loss_limit > 0", name="loss_limit_positive"),)


DRIFT_KINDS = ("holding", "cash")


class AccountDrift(Base):
    """A difference between the broker's account and the ledger that nothing explains.

    One row per episode: recorded by the account reconciliation when it finds the drift,
    updated if the figures change while it lasts, and cleared (`cleared_at`, by whom, why) when
    a later reconciliation finds the subject consistent again. While a `holding` row is open
    (not cleared), no BUY on its symbol is admitted. `symbol` is '' for a `cash` drift.
    """

    __tablename__ = "account_drifts"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    kind: Mapped[str] = mapped_column(Text)
    symbol: Mapped[str] = mapped_column(Text)
    trading_day: Mapped[date] = mapped_column(Date)
    detected_at: Mapped[datetime] = mapped_column(TSTZ)
    seen_at: Mapped[datetime] = mapped_column(TSTZ)  # last reconciliation that saw it
    broker_qty: Mapped[int | None] = mapped_column(Integer)
    ledger_qty: Mapped[int | None] = mapped_column(Integer)
    broker_avg_price: Mapped[Decimal | None] = mapped_column(PRICE4)
    ledger_avg_price: Mapped[Decimal | None] = mapped_column(PRICE4)
    broker_cash: Mapped[Decimal | None] = mapped_column(MONEY)
    expected_cash: Mapped[Decimal | None] = mapped_column(MONEY)
    detail: Mapped[str] = mapped_column(Text)
    recorded_by: Mapped[str] = mapped_column(Text)
    cleared_at: Mapped[datetime | None] = mapped_column(TSTZ)
    cleared_by: Mapped[str | None] = mapped_column(Text)
    clear_reason: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        CheckConstraint(_in("kind", DRIFT_KINDS), name="kind_known"),
        CheckConstraint("(kind = 'cash') = (symbol = '')", name="symbol_of_kind"),
        CheckConstraint("(cleared_at IS NULL) = (cleared_by IS NULL)", name="cleared_by_whom"),
        # at most one open episode per subject: recording it again is idempotent
        Index(
            "uq_account_drifts_open",
            "kind",
            "symbol",
            unique=True,
            postgresql_where=text("cleared_at IS NULL"),
        ),
        Index(None, "trading_day"),
    )


class ParamChange(Base):
    """Append-only record of the fleet's live parameters (`python -m worker params`).

    One `version` per change (rising), one row per setting it touched; the values are the
    effective ones as text, `live` false when the change returned the setting to the
    environment's value. The latest row per `key` says what is live now.
    """

    __tablename__ = "param_changes"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    key: Mapped[str] = mapped_column(Text)
    old_value: Mapped[str] = mapped_column(Text)
    new_value: Mapped[str] = mapped_column(Text)
    live: Mapped[bool] = mapped_column(Boolean)
    changed_by: Mapped[str] = mapped_column(Text)
    changed_at: Mapped[datetime] = mapped_column(TSTZ)
    forced: Mapped[bool] = mapped_column(Boolean)

    __table_args__ = (
        UniqueConstraint("version", "key"),
        CheckConstraint("version > 0", name="version_positive"),
        Index(None, "key"),
    )
