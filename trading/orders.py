"""The order path: intent row first, a fenced claim just before the broker call, then the
tracker follows the order to its end.

    create_order (fenced INSERT, NEW)  ->  begin_submit (fenced NEW -> SUBMITTING)
        ->  submit_order  ->  SENT (ack) | UNKNOWN (no clear answer) | REJECTED (a definite no)
        ->  OrderTracker follows it until the broker says it is final

The ledger refuses the intent when the worker's fence is not the newest for the symbol
(Invariant 1) or, for a BUY, once the day's loss limit has been reached (Invariant 5). The claim
NEW -> SUBMITTING is a compare-and-set under the symbol's lock row in the same transaction as
the fence check, and is refused locally once the lease's local deadline has passed, so a worker
that stalled past its TTL can never reach the broker with its old fence. An adopter withdraws
another worker's NEW rows (NEW -> WITHDRAWN) under its own fence: exactly one of the two wins.
A submit whose outcome is unknown is never resent.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import anyio

from broker.errors import BrokerUnavailable, OrderOutcomeUnknown, OrderRejected
from broker.port import Broker
from ledger.errors import LedgerError, LossLimitReached, OrderNotNew, StaleFence, SymbolDrifted
from ledger.orders import OrderState
from ledger.records import OrderIntent, OrderRecord
from ledger.repository import Ledger
from market.clock import Clock
from market.orders import (
    ClientOrderId,
    OrderRequest,
    OrderType,
    Side,
    canonical_broker_order_id,
)
from trading.tracker import OrderTracker


class LeaseInvalid(Exception):
    """The worker may no longer act on the symbol (lease lost, deadline passed, fence stale)."""


class LeaseExpired(LeaseInvalid):
    """The lease's local deadline passed before the submit: ownership must be re-verified."""


class BuyRefused(Exception):
    """The risk guard refused a BUY (daily loss limit, liquidation window)."""


class DriftRefused(BuyRefused):
    """The ledger refused a BUY on a symbol with an open account drift (that symbol only)."""


@dataclass(frozen=True, slots=True)
class Placement:
    symbol: str
    side: Side
    qty: int
    order_type: OrderType
    price: Decimal | None
    fence: int
    reason: str
    signal_price: Decimal | None
    tier: int | None = None


@dataclass(frozen=True, slots=True)
class Limits:
    """The money limits a BUY intent carries into the ledger's checks."""

    capital_limit: Decimal
    daily_loss_limit: Decimal


class OrderPlacer:
    """Places one worker's orders; the `OrderTracker` follows them to their end."""

    def __init__(
        self,
        *,
        worker_id: str,
        broker: Broker,
        ledger: Ledger,
        tracker: OrderTracker,
        clock: Clock,
        trading_day: datetime,
        limits: Limits,
        log: Any,
    ) -> None:
        self.worker_id = worker_id
        self.broker = broker
        self.ledger = ledger
        self.tracker = tracker
        self.clock = clock
        self.trading_day = trading_day.date()
        self.limits = limits
        self.log = log

    async def place(
        self,
        p: Placement,
        cancel_at: datetime,
        may_submit: Callable[[], bool],
        *,
        buy_cutoff: datetime | None = None,
    ) -> OrderRecord:
        """Place one order and wait until the broker says it is final; return its record.

        `may_submit()` is asked just before the claim (the lease's local deadline). Raises
        `LeaseInvalid` when the ledger refuses the fence or the lease may not act any more,
        `BuyRefused` on the loss limit or the liquidation window (`DriftRefused` when an
        account drift on the symbol is open). Cancelling the caller leaves
        the order with the tracker, which follows it to its end.
        """
        cid = ClientOrderId(str(uuid.uuid4()))
        now = self.clock.now()
        buy = p.side is Side.BUY
        if buy and buy_cutoff is not None and now >= buy_cutoff:
            # checked against the very instant recorded as the order's created_at
            raise BuyRefused(f"no new buys from {buy_cutoff:%H:%M:%S} (liquidation window)")
        intent = OrderIntent(
            client_order_id=cid,
            worker_id=self.worker_id,
            symbol=p.symbol,
            side=p.side,
            order_type=p.order_type,
            qty=p.qty,
            price=p.price,
            fence=p.fence,
            reason=p.reason,
            signal_price=p.signal_price,
            trading_day=self.trading_day,
            created_at=now,
            capital_limit=self.limits.capital_limit if buy else None,
            daily_loss_limit=self.limits.daily_loss_limit if buy else None,
            tier=p.tier,
        )
        self.tracker.claim(cid, p.symbol)
        order: OrderRecord | None = None
        try:
            try:
                order = await self.ledger.create_order(intent)
            except StaleFence as exc:
                self.log.error("order refused by the ledger: stale fence {} on {}", p.fence,
                               p.symbol)  # fmt: skip
                raise LeaseInvalid(str(exc)) from exc
            except LossLimitReached as exc:
                raise BuyRefused(str(exc)) from exc
            except SymbolDrifted as exc:
                raise DriftRefused(str(exc)) from exc
            if not may_submit():
                raise LeaseExpired(f"lease on {p.symbol} past its local deadline: not submitted")
            try:
                claimed_at = self.clock.now()
                order = await self.ledger.begin_submit(cid, self.worker_id, p.fence, claimed_at)
            except (StaleFence, OrderNotNew) as exc:
                # a newer owner holds the symbol, or already withdrew this intent
                raise LeaseInvalid(str(exc)) from exc
            order = await self._submit(order, OrderRequest(p.symbol, p.side, p.qty,
                                                          p.order_type, p.price))  # fmt: skip
        finally:
            with anyio.CancelScope(shield=True):
                await self._hand_over(cid, order, cancel_at)
        return await self.tracker.final(cid)

    async def _submit(self, order: OrderRecord, request: OrderRequest) -> OrderRecord:
        cid = order.client_order_id
        try:
            ack = await self.broker.submit_order(request)
        except OrderRejected as exc:
            self.log.warning("order rejected on {}: {}", request.symbol, exc.reason)
            return await self.ledger.mark_order(cid, OrderState.REJECTED, self.clock.now(),
                                                exc.reason)  # fmt: skip
        except BrokerUnavailable as exc:
            self.log.error("broker unavailable, {} not placed: {}", request.symbol, exc)
            return await self.ledger.mark_order(
                cid, OrderState.REJECTED, self.clock.now(), f"not placed: {exc}"
            )
        except OrderOutcomeUnknown as exc:
            self.log.error("order outcome unknown on {}: {}; the tracker looks it up",
                           request.symbol, exc)  # fmt: skip
            return await self.ledger.mark_order(cid, OrderState.UNKNOWN, self.clock.now(),
                                                str(exc))  # fmt: skip
        broker_id = canonical_broker_order_id(ack.broker_order_id)
        return await self.ledger.mark_order_sent(cid, broker_id, self.clock.now())

    async def _hand_over(
        self, cid: ClientOrderId, order: OrderRecord | None, cancel_at: datetime
    ) -> None:
        """Whatever happened above, the order ends with the tracker (or withdrawn when it
        never left NEW), never forgotten."""
        if order is None:
            self.tracker.release_claim(cid)
            return
        if order.status is OrderState.NEW:
            self.tracker.release_claim(cid)
            try:
                await self.ledger.withdraw_orders(
                    order.symbol, self.worker_id, order.fence, self.clock.now()
                )
            except StaleFence:
                pass  # a newer owner holds the symbol: its tenure withdraws the intent
            except LedgerError as exc:
                # left NEW: the symbol's next tenure (this worker's or an adopter's) withdraws it
                self.log.error("order {} left NEW, not withdrawn: {}", cid, exc)
            return
        self.tracker.hand(order, cancel_at)
