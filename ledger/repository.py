"""`Ledger`: the worker's only door to Postgres. One transaction per method call.

Every method opens its own session (`async_sessionmaker`, nothing shared across calls), so a
failure leaves nothing half-written, and translates driver errors at the boundary
(`ledger.errors`). Returned values are plain records, never ORM objects. Every call has a
deadline: the engine's connect, statement and lock timeouts (`ledger.db.create_engine`) and
this facade's per-call deadline, each surfacing as `LedgerUnavailable`.

The statements live by topic: the lock mirror in `ledger.lock_mirror`, the fenced ownership
writes in `ledger.ownership`, the fenced order insert in `ledger.fencing`, the loss limit in
`ledger.risk`, fills and trades in `ledger.applying`, summaries in `ledger.summaries`, the
account reconciliation's reads and drift records in `ledger.drift`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import replace
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import anyio
from sqlalchemy import Executable, Result, Table, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from ledger import drift, lock_mirror, ownership, params, risk
from ledger.applying import apply_ack, apply_mark, apply_status
from ledger.convert import order_record, position_record, worker_record
from ledger.errors import LedgerUnavailable, translate_db_errors
from ledger.fencing import check_intent, explain_refusal, fenced_insert
from ledger.lock_mirror import LOCK_END_EVENTS, changed
from ledger.models import Order, Position, Worker
from ledger.orders import UNFINISHED, OrderState
from ledger.records import (
    AppliedResult,
    DaySummaryRecord,
    HaltRecord,
    LockRecord,
    OrderIntent,
    OrderRecord,
    PositionRecord,
    ScanView,
    WorkerRecord,
)
from ledger.scanning import scan_statement, scan_view_of
from ledger.summaries import load_day_summary, pnl_from_fills, store_day_summary
from market.costs import CostModel
from market.orders import (
    BrokerOrderId,
    ClientOrderId,
    OrderStatus,
    Side,
    canonical_broker_order_id,
)
from market.types import Board

#: Per-call deadline (s): every statement of the call, its commit, and waiting for a connection.
DEFAULT_CALL_TIMEOUT_S = 15.0
_UNFINISHED = [s.value for s in UNFINISHED]
#: the tables behind the models, for single-statement reads that skip the ORM session
_ORDERS: Table = Order.__table__  # type: ignore[assignment]
_POSITIONS: Table = Position.__table__  # type: ignore[assignment]


class Ledger:
    """The trading ledger on Postgres: workers, the lock mirror, orders, fills, positions,
    trades and daily summaries. Safe to share between tasks; holds no per-call state.
    """

    def __init__(
        self, engine: AsyncEngine, costs: CostModel, *,
        call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S,
    ) -> None:  # fmt: skip
        if not call_timeout_s > 0:
            raise ValueError(f"call_timeout_s must be positive, got {call_timeout_s}")
        self._engine = engine
        self._costs = costs
        self._call_timeout_s = call_timeout_s
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        # single-statement reads need no transaction: one round trip instead of three
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")

    @contextmanager
    def _deadline(self) -> Iterator[None]:
        """The per-call deadline: a stalled server or network becomes `LedgerUnavailable`.

        The cancellation lands inside the driver call; SQLAlchemy invalidates a connection a
        cancellation interrupted instead of returning it to the pool, so the next call starts
        on a fresh one.
        """
        try:
            with anyio.fail_after(self._call_timeout_s):
                yield
        except TimeoutError as exc:
            raise LedgerUnavailable(
                f"ledger call exceeded its deadline of {self._call_timeout_s:g} s"
            ) from exc

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[AsyncSession]:
        with self._deadline(), translate_db_errors():
            async with self._sessions.begin() as session:
                yield session

    async def _read(self, stmt: Executable) -> Result[Any]:
        """One statement outside a transaction (one round trip instead of three), under the
        call's deadline; its rows come back buffered."""
        with self._deadline(), translate_db_errors():
            async with self._autocommit.connect() as conn:
                return await conn.execute(stmt)

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
            return await changed(s, stmt) == 1

    async def worker_heartbeat(self, worker_id: str, at: datetime) -> bool:
        stmt = update(Worker).where(Worker.worker_id == worker_id).values(heartbeat_at=at)
        async with self._tx() as s:
            return await changed(s, stmt) == 1

    async def workers(self) -> list[WorkerRecord]:
        async with self._tx() as s:
            rows = (await s.execute(select(Worker).order_by(Worker.worker_id))).scalars()
            return [worker_record(w) for w in rows]

    # -- lock mirror (statements in ledger.lock_mirror) --------------------------------------

    async def lock_acquired(
        self, symbol: str, worker_id: str, fence: int, ttl_ms: int, at: datetime
    ) -> bool:
        """Mirror a Redis lock grant. The row moves only forward: a fence not above every fence
        recorded for the symbol leaves it untouched. Returns whether the mirror shows this grant
        afterwards (also when it already did). The audit row is written either way, once.
        """
        async with self._tx() as s:
            return await lock_mirror.lock_acquired(s, symbol, worker_id, fence, ttl_ms, at)

    async def lock_heartbeat(self, symbol: str, worker_id: str, fence: int, at: datetime) -> bool:
        """Refresh the mirror's heartbeat; False if the mirror no longer holds this fence."""
        async with self._tx() as s:
            return await lock_mirror.lock_heartbeat(s, symbol, worker_id, fence, at)

    async def lock_released(
        self, symbol: str, worker_id: str, fence: int, at: datetime, event: str = "released"
    ) -> bool:
        """Drop the mirror row if it still carries `fence`; audit `event` (released, expired,
        recovered or lost) once. Returns whether a row was deleted.
        """
        if event not in LOCK_END_EVENTS:
            raise ValueError(f"unknown lock end event {event!r}")
        async with self._tx() as s:
            return await lock_mirror.lock_released(s, symbol, worker_id, fence, at, event)

    async def max_fences(self) -> dict[str, int]:
        """Highest fence ever recorded per symbol (lock events, mirror, orders): the floor to
        reseed Redis fence counters from after Redis lost them.
        """
        async with self._tx() as s:
            return await lock_mirror.max_fences(s)

    async def locks(self) -> list[LockRecord]:
        async with self._tx() as s:
            return await lock_mirror.locks(s)

    # -- orders ------------------------------------------------------------------------------

    async def create_order(self, intent: OrderIntent) -> OrderRecord:
        """Insert the order as NEW, fenced by the database.

        One INSERT ... SELECT inserts only while `stock_locks` holds (symbol, worker_id, fence)
        (Invariant 1; the row is read FOR SHARE, so a concurrent takeover waits for this insert
        or makes it insert nothing) and, for a BUY, only while the day's loss-limit halt is not
        recorded and the day's realized pnl has never reached −`daily_loss_limit` (Invariant 5:
        the limit latches, see `ledger.risk`). Raises `StaleFence`, `LossLimitReached` (saying
        which of the two), `CapitalLimitExceeded` (Invariant 6) or ValueError. Retrying with
        the same client order id returns the order already inserted.
        """
        check_intent(intent, self._costs)
        stmt = fenced_insert(intent)
        async with self._tx() as s:
            if intent.side is Side.BUY:
                await risk.hold_loss_guard(s, intent.trading_day, exclusive=False)
            row = (await s.execute(stmt)).scalar_one_or_none()
            if row is not None:
                return order_record(row)
            return await explain_refusal(s, intent)

    async def begin_submit(
        self,
        client_order_id: ClientOrderId,
        worker_id: str,
        fence: int,
        at: datetime | None = None,
    ) -> OrderRecord:
        """Claim the order for sending: NEW -> SUBMITTING, just before the broker call.

        In one transaction: the symbol's mirror row is read FOR SHARE and must hold
        (worker_id, fence), the order must have been placed by that worker under that fence,
        and the order row moves NEW -> SUBMITTING (compare-and-set under its row lock). Raises
        `StaleFence` when the fence is not current (or the order is another tenure's),
        `OrderWithdrawn` when the symbol's owner withdrew it, `OrderNotNew` when it is past NEW
        otherwise, `OrderNotFound`. Repeating a claim that committed returns the order.
        `at` stamps `updated_at` (left as it was when None).
        """
        async with self._tx() as s:
            return await ownership.begin_submit(s, client_order_id, worker_id, fence, at)

    async def withdraw_orders(
        self, symbol: str, worker_id: str, fence: int, at: datetime
    ) -> list[OrderRecord]:
        """NEW -> WITHDRAWN for every NEW order on the symbol, whoever placed it; the caller
        must hold the symbol's current fence (checked in the same transaction, `StaleFence`
        otherwise). A SUBMITTING order is left alone: it may be at the broker. Returns the
        withdrawn orders, oldest first. Against a stale owner's `begin_submit` on the same
        order exactly one wins.
        """
        async with self._tx() as s:
            return await ownership.withdraw_orders(s, symbol, worker_id, fence, at)

    async def mark_order_sent(
        self, client_order_id: ClientOrderId, broker_order_id: BrokerOrderId, at: datetime
    ) -> OrderRecord:
        """SUBMITTING/UNKNOWN -> SENT with the broker's id (stored canonical, so "117057" and
        "0000117057" are one order). Repeating it is a no-op."""
        broker_id = canonical_broker_order_id(broker_order_id)
        async with self._tx() as s:
            order = await ownership.locked_order(s, client_order_id)
            apply_ack(order, broker_id, at)
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
        a fill: apply the final status `Broker.cancel_order` returns instead). SUBMITTING and
        WITHDRAWN are fenced: `begin_submit` and `withdraw_orders`.
        """
        async with self._tx() as s:
            order = await ownership.locked_order(s, client_order_id)
            apply_mark(order, status, at, reason)
            await s.flush()
            return order_record(order)

    async def apply_order_status(
        self, client_order_id: ClientOrderId, status: OrderStatus, board: Board, at: datetime
    ) -> AppliedResult:
        """Apply the broker's cumulative report: new fill, order status, position, trade.

        Idempotent by cumulative filled qty: a report already applied (or older) changes
        nothing. All in one transaction, with the order row locked. The report's broker order
        id is compared and stored canonical.
        """
        status = replace(status, broker_order_id=canonical_broker_order_id(status.broker_order_id))
        async with self._tx() as s:
            order = await ownership.locked_order(s, client_order_id)
            result = await apply_status(s, self._costs, order, status, board, at)
            await s.flush()
            return result

    async def order(self, client_order_id: str) -> OrderRecord | None:
        """The order, in one statement outside a transaction."""
        stmt = select(_ORDERS).where(_ORDERS.c.client_order_id == client_order_id)
        row = (await self._read(stmt)).one_or_none()
        return order_record(row) if row is not None else None

    async def unfinished_orders(self, worker_id: str) -> list[OrderRecord]:
        """NEW, SUBMITTING, SENT, PARTIALLY_FILLED and UNKNOWN orders of the worker, oldest
        first."""
        stmt = (
            select(_ORDERS)
            .where(_ORDERS.c.worker_id == worker_id, _ORDERS.c.status.in_(_UNFINISHED))
            .order_by(_ORDERS.c.id)
        )
        # outside a transaction: every tracker refresh reads it
        return [order_record(r) for r in (await self._read(stmt)).all()]

    async def known_broker_order_ids(self, symbol: str, trading_day: date) -> set[str]:
        """Broker order ids (canonical) already linked to an order of ours for the symbol and
        day: a reconciliation must not claim one of these for a different order."""
        stmt = select(Order.broker_order_id).where(
            Order.symbol == symbol,
            Order.trading_day == trading_day,
            Order.broker_order_id.is_not(None),
        )
        async with self._tx() as s:
            rows = (await s.execute(stmt)).scalars()
            return {canonical_broker_order_id(b) for b in rows if b is not None}

    async def scan_view(self, trading_day: date) -> ScanView:
        """`ScanView` in one statement, outside a transaction (a scan's hot path)."""
        return scan_view_of((await self._read(scan_statement(trading_day))).all())

    # -- positions (the ownership moves are fenced: ledger.ownership) ------------------------

    async def open_positions(self, worker_id: str | None = None) -> list[PositionRecord]:
        """Positions not closed (OPEN or ORPHANED), optionally of one worker."""
        stmt = select(Position).where(Position.status != "CLOSED").order_by(Position.symbol)
        if worker_id is not None:
            stmt = stmt.where(Position.worker_id == worker_id)
        async with self._tx() as s:
            return [position_record(p) for p in (await s.execute(stmt)).scalars()]

    async def open_position(self, symbol: str) -> PositionRecord | None:
        """The symbol's position that is not closed, in one statement outside a transaction
        (every HOLD step reads it: one round trip instead of three)."""
        table = _POSITIONS
        stmt = select(table).where(table.c.symbol == symbol, table.c.status != "CLOSED")
        row = (await self._read(stmt)).one_or_none()
        return position_record(row) if row is not None else None

    async def mark_position_orphaned(self, symbol: str, worker_id: str, fence: int) -> bool:
        """OPEN -> ORPHANED for the worker's position in `symbol` (its owner, holding or last
        holding `fence`, is gone or hands it off). Raises `StaleFence` once a newer fence was
        issued for the symbol (the position may already be someone's again). Returns whether a
        position was marked."""
        async with self._tx() as s:
            return await ownership.mark_position_orphaned(s, symbol, worker_id, fence)

    async def adopt_position(self, symbol: str, new_worker_id: str, fence: int) -> bool:
        """Hand the symbol's live position and its unfinished orders to `new_worker_id`.

        Only while the mirror holds (symbol, new_worker_id, fence), checked in the same
        transaction (`StaleFence` otherwise). Returns whether a position was adopted; the
        unfinished orders on the symbol move in any case, so an orphaned BUY with no fill yet
        is reconciled by the new owner too. An order claimed for sending under an earlier fence
        (SUBMITTING) becomes UNKNOWN: it may be at the broker, which has to be asked.
        """
        async with self._tx() as s:
            return await ownership.adopt_position(s, symbol, new_worker_id, fence)

    # -- pnl, the loss limit, summaries ------------------------------------------------------

    async def realized_pnl(self, trading_day: date) -> Decimal:
        """Sum of the day's closed trades' pnl."""
        async with self._tx() as s:
            return Decimal((await s.execute(select(risk.day_pnl(trading_day)))).scalar_one())

    async def record_halt(
        self,
        trading_day: date,
        at: datetime,
        realized_pnl: Decimal,
        loss_limit: Decimal,
        worker_id: str,
        reason: str,
    ) -> bool:
        """Record the day's loss-limit halt once (Invariant 5): from its commit on, no BUY is
        admitted that day. True for the first record of the day, False when one exists."""
        async with self._tx() as s:
            return await risk.record_halt(
                s, trading_day, at, realized_pnl, loss_limit, worker_id, reason
            )

    async def day_halt(self, trading_day: date) -> HaltRecord | None:
        """The day's recorded loss-limit halt, or None."""
        async with self._tx() as s:
            return await risk.load_halt(s, trading_day)

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

    # -- account reconciliation (statements in ledger.drift) --------------------------------

    async def account_view(self, trading_day: date) -> drift.AccountView:
        """Live positions per symbol (summed over workers), the day's activity per symbol,
        the unfinished orders and the day's cash flow from the fills, in one transaction."""
        async with self._tx() as s:
            return await drift.account_view(s, trading_day)

    async def record_drift(self, o: drift.DriftObservation) -> tuple[drift.DriftRecord, str]:
        """Open the drift episode of (kind, symbol) or update the open one; returns the row and
        "new", "changed" or "same". From its commit on, an open holding drift stops new BUYs on
        its symbol (`create_order` raises `SymbolDrifted`)."""
        async with self._tx() as s:
            return await drift.record_drift(s, o)

    async def clear_drift(
        self, kind: str, symbol: str, at: datetime, by: str, reason: str
    ) -> drift.DriftRecord | None:
        """Close the open drift episode of (kind, symbol), recording who and why; None when
        none was open."""
        async with self._tx() as s:
            return await drift.clear_drift(s, kind, symbol, at, by, reason)

    async def open_drifts(self) -> list[drift.DriftRecord]:
        """Drift episodes not cleared yet."""
        async with self._tx() as s:
            return await drift.open_drifts(s)

    # -- live parameters (statements in ledger.params) ---------------------------------------

    async def live_params(self) -> params.ParamState:
        """The fleet's live parameters and their version (0: never changed)."""
        async with self._tx() as s:
            return await params.read_state(s)

    async def change_params(
        self, plan: params.Plan, *, by: str, at: datetime, forced: bool = False
    ) -> tuple[params.ParamState, list[params.ParamChangeRecord]]:
        """Decide and record one change of the live parameters under the change lock: `plan`
        sees the live set and returns the edits, or raises to refuse (nothing is recorded).
        Returns the set after the change and its rows (none: nothing changed)."""
        async with self._tx() as s:
            return await params.change(s, plan, by=by, at=at, forced=forced)

    async def param_history(self, limit: int = 50) -> list[params.ParamChangeRecord]:
        """The latest `limit` recorded changes of the live parameters, newest first."""
        async with self._tx() as s:
            return await params.history(s, limit)

    async def recompute_from_fills(self, trading_day: date) -> Decimal:
        """Sell proceeds − buy cost − fees − taxes straight from the day's fills (Invariant 3:
        equals the summary's pnl once every position of the day is closed).
        """
        async with self._tx() as s:
            return await pnl_from_fills(s, trading_day)
