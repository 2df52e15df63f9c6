"""`Ledger`: the worker's only door to Postgres. One transaction per method call.

Every method opens its own session (`async_sessionmaker`, nothing shared across calls), so a
failure leaves nothing half-written, and translates driver errors at the boundary
(`ledger.errors`). Returned values are plain records, never ORM objects.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Delete,
    Insert,
    Integer,
    Text,
    Update,
    and_,
    delete,
    func,
    literal_column,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.sql.selectable import CompoundSelect
from sqlalchemy.types import DateTime

from ledger.applying import apply_status
from ledger.convert import (
    lock_record,
    order_record,
    position_record,
    worker_record,
)
from ledger.errors import (
    LedgerInconsistent,
    OrderNotFound,
    translate_db_errors,
)
from ledger.fencing import (
    check_intent,
    day_pnl,
    explain_refusal,
    fenced_insert,
    hold_loss_guard,
    typed_literal,
)
from ledger.models import (
    LockEvent,
    Order,
    Position,
    StockLock,
    Worker,
)
from ledger.orders import UNFINISHED, OrderState, check_transition
from ledger.records import (
    AppliedResult,
    DaySummaryRecord,
    LockRecord,
    OrderIntent,
    OrderRecord,
    PositionRecord,
    ScanView,
    WorkerRecord,
)
from ledger.summaries import load_day_summary, pnl_from_fills, store_day_summary
from market.costs import CostModel
from market.orders import BrokerOrderId, ClientOrderId, OrderStatus, Side
from market.types import Board

LOCK_END_EVENTS = frozenset({"released", "expired", "recovered", "lost"})
_UNFINISHED = [s.value for s in UNFINISHED]


class Ledger:
    """The trading ledger on Postgres: workers, the lock mirror, orders, fills, positions,
    trades and daily summaries. Safe to share between tasks; holds no per-call state.
    """

    def __init__(self, engine: AsyncEngine, costs: CostModel) -> None:
        self._engine = engine
        self._costs = costs
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        # single-statement reads need no transaction: one round trip instead of three
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[AsyncSession]:
        with translate_db_errors():
            async with self._sessions.begin() as session:
                yield session

    # -- workers -----------------------------------------------------------------------------

    async def register_worker(
        self,
        worker_id: str,
        pid: int,
        host: str,
        capital_limit: Decimal | None,
        at: datetime,
        status: str = "STARTING",
    ) -> None:
        """Insert or refresh the worker's row (a restart keeps its id)."""
        values = {"pid": pid, "host": host, "status": status, "capital_limit": capital_limit,
                  "current_symbol": None, "started_at": at, "heartbeat_at": at}  # fmt: skip
        stmt = pg_insert(Worker).values(worker_id=worker_id, **values)
        stmt = stmt.on_conflict_do_update(index_elements=["worker_id"], set_=values)
        async with self._tx() as s:
            await s.execute(stmt)

    async def set_worker_status(
        self, worker_id: str, status: str, symbol: str | None, at: datetime
    ) -> bool:
        """Record the worker's state and current symbol; False if the worker is unknown."""
        stmt = (
            update(Worker)
            .where(Worker.worker_id == worker_id)
            .values(status=status, current_symbol=symbol, heartbeat_at=at)
        )
        async with self._tx() as s:
            return await _changed(s, stmt) == 1

    async def worker_heartbeat(self, worker_id: str, at: datetime) -> bool:
        stmt = update(Worker).where(Worker.worker_id == worker_id).values(heartbeat_at=at)
        async with self._tx() as s:
            return await _changed(s, stmt) == 1

    async def workers(self) -> list[WorkerRecord]:
        async with self._tx() as s:
            rows = (await s.execute(select(Worker).order_by(Worker.worker_id))).scalars()
            return [worker_record(w) for w in rows]

    # -- lock mirror -------------------------------------------------------------------------

    async def lock_acquired(
        self, symbol: str, worker_id: str, fence: int, ttl_ms: int, at: datetime
    ) -> bool:
        """Mirror a Redis lock grant. The row moves only forward: a fence not above every fence
        recorded for the symbol leaves it untouched. Returns whether the mirror shows this grant
        afterwards (also when it already did). The audit row is written either way, once.
        """
        # Refused when a newer fence was seen, or when this very lease already ended (a late
        # `lock.acquired` replayed by the mirror must not resurrect a dead lease's row).
        newer_seen = select(LockEvent.id).where(
            LockEvent.symbol == symbol,
            or_(
                LockEvent.fence > fence,
                and_(LockEvent.fence == fence, LockEvent.event != "acquired"),
            ),
        )
        src = select(
            typed_literal(symbol, Text()),
            typed_literal(worker_id, Text()),
            typed_literal(fence, BigInteger()),
            typed_literal(at, DateTime(timezone=True)),
            typed_literal(ttl_ms, Integer()),
            typed_literal(at, DateTime(timezone=True)),
        ).where(~newer_seen.exists())
        cols = ["symbol", "worker_id", "fence", "locked_at", "ttl", "heartbeat_at"]
        ins = pg_insert(StockLock).from_select(cols, src)
        upsert = ins.on_conflict_do_update(
            index_elements=["symbol"],
            set_={c: ins.excluded[c] for c in cols[1:]},
            where=StockLock.fence < ins.excluded.fence,
        )
        current = select(StockLock.symbol).where(
            StockLock.symbol == symbol, StockLock.worker_id == worker_id, StockLock.fence == fence
        )
        async with self._tx() as s:
            await _changed(s, upsert)
            await self._lock_event(s, symbol, worker_id, fence, "acquired", at)
            # True when the mirror now shows this grant, whoever wrote it first (the worker or
            # the stream mirror applying the same lock.acquired notice)
            return (await s.execute(current)).first() is not None

    async def lock_heartbeat(self, symbol: str, worker_id: str, fence: int, at: datetime) -> bool:
        """Refresh the mirror's heartbeat; False if the mirror no longer holds this fence."""
        stmt = (
            update(StockLock)
            .where(
                StockLock.symbol == symbol,
                StockLock.worker_id == worker_id,
                StockLock.fence == fence,
            )
            .values(heartbeat_at=at)
        )
        async with self._tx() as s:
            return await _changed(s, stmt) == 1

    async def lock_released(
        self, symbol: str, worker_id: str, fence: int, at: datetime, event: str = "released"
    ) -> bool:
        """Drop the mirror row if it still carries `fence`; audit `event` (released, expired,
        recovered or lost) once. Returns whether a row was deleted.
        """
        if event not in LOCK_END_EVENTS:
            raise ValueError(f"unknown lock end event {event!r}")
        stmt = delete(StockLock).where(StockLock.symbol == symbol, StockLock.fence == fence)
        async with self._tx() as s:
            deleted = await _changed(s, stmt) == 1
            await self._lock_event(s, symbol, worker_id, fence, event, at)
            return deleted

    @staticmethod
    async def _lock_event(
        s: AsyncSession, symbol: str, worker_id: str, fence: int, event: str, at: datetime
    ) -> None:
        stmt = pg_insert(LockEvent).values(
            symbol=symbol, worker_id=worker_id, fence=fence, event=event, at=at
        )
        await s.execute(stmt.on_conflict_do_nothing(index_elements=["symbol", "fence", "event"]))

    async def max_fences(self) -> dict[str, int]:
        """Highest fence ever recorded per symbol (lock events, mirror, orders): the floor to
        reseed Redis fence counters from after Redis lost them.
        """
        every = union_all(
            select(LockEvent.symbol, LockEvent.fence),
            select(StockLock.symbol, StockLock.fence),
            select(Order.symbol, Order.fence),
        ).subquery()
        stmt = select(every.c.symbol, func.max(every.c.fence)).group_by(every.c.symbol)
        async with self._tx() as s:
            return {sym: int(f) for sym, f in (await s.execute(stmt)).all()}

    async def locks(self) -> list[LockRecord]:
        async with self._tx() as s:
            rows = (await s.execute(select(StockLock).order_by(StockLock.symbol))).scalars()
            return [lock_record(r) for r in rows]

    # -- orders ------------------------------------------------------------------------------

    async def create_order(self, intent: OrderIntent) -> OrderRecord:
        """Insert the order as NEW, fenced by the database.

        One INSERT ... SELECT inserts only while `stock_locks` holds (symbol, worker_id, fence)
        (Invariant 1; the row is read FOR SHARE, so a concurrent takeover waits for this insert
        or makes it insert nothing) and, for a BUY with a daily loss limit, only while the day's
        realized pnl is above −limit (Invariant 5). Raises `StaleFence`, `LossLimitReached`,
        `CapitalLimitExceeded` (Invariant 6) or ValueError. Retrying with the same client
        order id returns the order already inserted.
        """
        check_intent(intent, self._costs)
        stmt = fenced_insert(intent)
        async with self._tx() as s:
            if intent.side is Side.BUY and intent.daily_loss_limit is not None:
                await hold_loss_guard(s, intent.trading_day, exclusive=False)
            row = (await s.execute(stmt)).scalar_one_or_none()
            if row is not None:
                return order_record(row)
            return await explain_refusal(s, intent)

    async def _locked_order(self, s: AsyncSession, client_order_id: str) -> Order:
        order = (
            await s.execute(
                select(Order).where(Order.client_order_id == client_order_id).with_for_update()
            )
        ).scalar_one_or_none()
        if order is None:
            raise OrderNotFound(f"no order {client_order_id}")
        return order

    async def mark_order_sent(
        self, client_order_id: ClientOrderId, broker_order_id: BrokerOrderId, at: datetime
    ) -> OrderRecord:
        """NEW/UNKNOWN -> SENT with the broker's id. Repeating it is a no-op."""
        async with self._tx() as s:
            order = await self._locked_order(s, client_order_id)
            if order.broker_order_id == broker_order_id:
                return order_record(order)
            if order.broker_order_id is not None:
                raise LedgerInconsistent(
                    f"order {client_order_id} is already broker order {order.broker_order_id}"
                )
            check_transition(client_order_id, OrderState(order.status), OrderState.SENT)
            order.status = OrderState.SENT.value
            order.broker_order_id = broker_order_id
            order.updated_at = at
            await s.flush()
            return order_record(order)

    async def mark_order(
        self,
        client_order_id: ClientOrderId,
        status: OrderState,
        at: datetime,
        reason: str | None = None,
    ) -> OrderRecord:
        """Move the order to `status` (validated by the transition table; same state: no-op).

        Fill states come only from `apply_order_status`, which carries the figures; so do
        CANCELED and EXPIRED once the broker knows the order (a cancel can lose the race with
        a fill: apply the final status `Broker.cancel_order` returns instead).
        """
        if status in (OrderState.PARTIALLY_FILLED, OrderState.FILLED):
            raise ValueError(f"{status} is set by apply_order_status, not mark_order")
        async with self._tx() as s:
            order = await self._locked_order(s, client_order_id)
            current = OrderState(order.status)
            if current is status:
                return order_record(order)
            check_transition(client_order_id, current, status)
            broker_owned = (OrderState.CANCELED, OrderState.EXPIRED)
            if status in broker_owned and order.broker_order_id is not None:
                raise ValueError(
                    f"order {client_order_id} is at the broker: apply its final status instead"
                )
            order.status = status.value
            order.status_reason = reason if reason is not None else order.status_reason
            order.updated_at = at
            await s.flush()
            return order_record(order)

    async def apply_order_status(
        self, client_order_id: ClientOrderId, status: OrderStatus, board: Board, at: datetime
    ) -> AppliedResult:
        """Apply the broker's cumulative report: new fill, order status, position, trade.

        Idempotent by cumulative filled qty: a report already applied (or older) changes
        nothing. All in one transaction, with the order row locked.
        """
        async with self._tx() as s:
            order = await self._locked_order(s, client_order_id)
            result = await apply_status(s, self._costs, order, status, board, at)
            await s.flush()
            return result

    async def order(self, client_order_id: str) -> OrderRecord | None:
        async with self._tx() as s:
            row = (
                await s.execute(select(Order).where(Order.client_order_id == client_order_id))
            ).scalar_one_or_none()
            return order_record(row) if row is not None else None

    async def unfinished_orders(self, worker_id: str) -> list[OrderRecord]:
        """NEW, SENT, PARTIALLY_FILLED and UNKNOWN orders of the worker, oldest first."""
        stmt = (
            select(Order)
            .where(Order.worker_id == worker_id, Order.status.in_(_UNFINISHED))
            .order_by(Order.id)
        )
        async with self._tx() as s:
            return [order_record(o) for o in (await s.execute(stmt)).scalars()]

    async def known_broker_order_ids(self, symbol: str, trading_day: date) -> set[str]:
        """Broker order ids already linked to an order of ours for the symbol and day: a
        reconciliation must not claim one of these for a different order."""
        stmt = select(Order.broker_order_id).where(
            Order.symbol == symbol,
            Order.trading_day == trading_day,
            Order.broker_order_id.is_not(None),
        )
        async with self._tx() as s:
            return {str(b) for b in (await s.execute(stmt)).scalars() if b is not None}

    async def scan_view(self, trading_day: date) -> ScanView:
        """`ScanView` in one statement, outside a transaction (a scan's hot path)."""
        stmt: CompoundSelect[Any] = union_all(
            select(literal_column("'P'"), Position.symbol, Position.worker_id, literal_column(
                "NULL::numeric")).where(Position.status != "CLOSED"),
            select(literal_column("'O'"), Order.symbol, Order.worker_id, literal_column(
                "NULL::numeric")).where(Order.status.in_(_UNFINISHED)),
            select(literal_column("'R'"), literal_column("NULL"), literal_column("NULL"),
                   day_pnl(trading_day)),
        )  # fmt: skip
        with translate_db_errors():
            async with self._autocommit.connect() as conn:
                rows = (await conn.execute(stmt)).all()
        positions: dict[str, str] = {}
        unfinished: dict[str, str] = {}
        pnl = Decimal(0)
        for kind, symbol, worker_id, value in rows:
            if kind == "P":
                positions[symbol] = worker_id
            elif kind == "O":
                unfinished.setdefault(symbol, worker_id)
            else:
                pnl = Decimal(value)
        return ScanView(positions, unfinished, pnl)

    # -- positions ---------------------------------------------------------------------------

    async def open_positions(self, worker_id: str | None = None) -> list[PositionRecord]:
        """Positions not closed (OPEN or ORPHANED), optionally of one worker."""
        stmt = select(Position).where(Position.status != "CLOSED").order_by(Position.symbol)
        if worker_id is not None:
            stmt = stmt.where(Position.worker_id == worker_id)
        async with self._tx() as s:
            return [position_record(p) for p in (await s.execute(stmt)).scalars()]

    async def open_position(self, symbol: str) -> PositionRecord | None:
        stmt = select(Position).where(Position.symbol == symbol, Position.status != "CLOSED")
        async with self._tx() as s:
            row = (await s.execute(stmt)).scalar_one_or_none()
            return position_record(row) if row is not None else None

    async def mark_position_orphaned(self, symbol: str, worker_id: str) -> bool:
        """OPEN -> ORPHANED for the worker's position in `symbol` (its owner is gone)."""
        stmt = (
            update(Position)
            .where(
                Position.symbol == symbol,
                Position.worker_id == worker_id,
                Position.status == "OPEN",
            )
            .values(status="ORPHANED")
        )
        async with self._tx() as s:
            return await _changed(s, stmt) == 1

    async def adopt_position(self, symbol: str, new_worker_id: str) -> bool:
        """Hand the symbol's live position and its unfinished orders to `new_worker_id`.

        The caller must hold the symbol's lock. Returns whether a position was adopted; the
        unfinished orders on the symbol move in any case, so an orphaned BUY with no fill yet
        is reconciled by the new owner too.
        """
        pos_stmt = (
            update(Position)
            .where(Position.symbol == symbol, Position.status != "CLOSED")
            .values(worker_id=new_worker_id, status="OPEN")
        )
        ord_stmt = (
            update(Order)
            .where(Order.symbol == symbol, Order.status.in_(_UNFINISHED))
            .values(worker_id=new_worker_id)
        )
        async with self._tx() as s:
            adopted = await _changed(s, pos_stmt) == 1
            await s.execute(ord_stmt)
            return adopted

    # -- pnl and summaries -------------------------------------------------------------------

    async def realized_pnl(self, trading_day: date) -> Decimal:
        """Sum of the day's closed trades' pnl."""
        async with self._tx() as s:
            return Decimal((await s.execute(select(day_pnl(trading_day)))).scalar_one())

    async def summarize_day(
        self, trading_day: date, at: datetime | None = None
    ) -> DaySummaryRecord:
        """Recompute the day's summary (total and per worker) from `trades` and store it.
        Idempotent: running it again replaces the rows with the same figures. `at` stamps
        `computed_at` (default: the database's now()).
        """
        async with self._tx() as s:
            return await store_day_summary(s, trading_day, at)

    async def day_summary(self, trading_day: date) -> DaySummaryRecord | None:
        """The stored summary of the day, or None if `summarize_day` never ran for it."""
        async with self._tx() as s:
            return await load_day_summary(s, trading_day)

    async def recompute_from_fills(self, trading_day: date) -> Decimal:
        """Sell proceeds − buy cost − fees − taxes straight from the day's fills (Invariant 3:
        equals the summary's pnl once every position of the day is closed).
        """
        async with self._tx() as s:
            return await pnl_from_fills(s, trading_day)


async def _changed(s: AsyncSession, stmt: Insert | Update | Delete) -> int:
    """Rows a DML statement touched, counted from RETURNING (the async psycopg cursor reports
    rowcount -1 for some statements, e.g. INSERT ... SELECT ... ON CONFLICT)."""
    conn = await s.connection()
    return len((await conn.execute(stmt.returning(literal_column("1")))).all())
