"""The metrics port of the trading core: hooks a worker calls as things happen.

The process shell (`worker.metrics`) implements it on a Prometheus registry; code built without
a fleet (unit tests, tools) gets `NULL_METRICS`. Implementations are in-memory updates that
never raise and never wait.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Protocol

from ledger.orders import OrderState
from market.orders import Side
from trading.state import WorkerState

#: `orders_total` status for an order the broker never took: rejected, broker unavailable,
#: or found not placed (or left UNKNOWN) by reconciliation of an unanswered submit.
NOT_PLACED = "NOT_PLACED"
ORDER_STATUSES: tuple[str, ...] = (
    OrderState.FILLED.value,
    OrderState.CANCELED.value,
    OrderState.EXPIRED.value,
    OrderState.REJECTED.value,
    NOT_PLACED,
)


class WorkerMetrics(Protocol):
    """Hooks one worker calls as things happen. Implementations must be cheap and never raise."""

    def state_changed(self, state: WorkerState) -> None:
        """The worker entered `state`."""

    def trade_closed(self, pnl: Decimal) -> None:
        """A fill applied by this worker closed a round trip with realized `pnl` (won)."""

    def position_marked(self, qty: int, avg_price: Decimal, price: Decimal) -> None:
        """A HOLD step priced the worker's position: `qty` shares bought at `avg_price` on
        average, last traded at `price` (won)."""

    def order_done(self, side: Side, status: str, latency_s: float | None) -> None:
        """An order reached its final `status` (an `OrderState` value or `NOT_PLACED`);
        `latency_s` is submit -> done in clock seconds, None when it was never placed."""

    def lock_acquired(self) -> None:
        """The worker took a symbol's lock (and the ledger accepted its fence)."""

    def lock_contended(self) -> None:
        """A scan's best candidate was owned by another worker."""

    def lease_lost(self) -> None:
        """A lease was lost while the worker held the symbol."""

    def tick_stop(self) -> None:
        """A sell rule fired on the trade that woke the HOLD loop (not on its periodic step)."""

    def scan_done(self, wall_s: float) -> None:
        """One SCAN tick finished after `wall_s` wall seconds."""

    def risk_halted(self) -> None:
        """The daily loss limit stopped this worker's buys."""


class NullWorkerMetrics:
    """Records nothing: the default when no fleet registry is wired in."""

    def state_changed(self, state: WorkerState) -> None:
        pass

    def trade_closed(self, pnl: Decimal) -> None:
        pass

    def position_marked(self, qty: int, avg_price: Decimal, price: Decimal) -> None:
        pass

    def order_done(self, side: Side, status: str, latency_s: float | None) -> None:
        pass

    def lock_acquired(self) -> None:
        pass

    def lock_contended(self) -> None:
        pass

    def lease_lost(self) -> None:
        pass

    def tick_stop(self) -> None:
        pass

    def scan_done(self, wall_s: float) -> None:
        pass

    def risk_halted(self) -> None:
        pass


NULL_METRICS: WorkerMetrics = NullWorkerMetrics()


class AccountMetrics(Protocol):
    """Hooks the account reconciliation (`trading.reconcile`) calls; one per fleet process.
    Implementations must be cheap and never raise."""

    def account_drifted(self, kind: str, symbol: str) -> None:
        """An unexplained drift was recorded (new, or its figures changed): `kind` is
        "holding" or "cash", `symbol` '' for cash."""

    def account_drifts_open(self, n: int) -> None:
        """`n` drift episodes are open after the latest pass."""

    def account_reconciled(self, outcome: str) -> None:
        """A pass ended: "consistent", "drift" (some drift is open) or "failed"."""


class NullAccountMetrics:
    """Records nothing."""

    def account_drifted(self, kind: str, symbol: str) -> None:
        pass

    def account_drifts_open(self, n: int) -> None:
        pass

    def account_reconciled(self, outcome: str) -> None:
        pass


NULL_ACCOUNT_METRICS: AccountMetrics = NullAccountMetrics()
