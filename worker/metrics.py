"""Operator metrics: one Prometheus registry per fleet process, one hook object per worker.

The worker loop and the order path call `WorkerMetrics` hooks (`trade_closed(pnl)`,
`order_done(side, status, latency_s)`, ...). They are in-memory updates that never raise and
never wait, so the loop's pacing and behaviour do not depend on whether anyone scrapes.
`NullWorkerMetrics` is the default for code built without a fleet (unit tests, tools).

Every series carries a `worker` label and nothing with unbounded cardinality (no symbols,
no order ids). Exposed names (`tradefleet_` prefix):

    worker_state{worker,state}              gauge, 1 for the worker's current state, else 0
    trades_closed_total{worker}             counter of round trips closed by the worker's fills
    realized_pnl_won{worker}                gauge, sum of those trades' pnl (won, may be < 0)
    open_exposure_won{worker}               gauge, qty x last price of the position it holds
                                            (0 when flat), marked at every HOLD step
    unrealized_pnl_won{worker}              gauge, qty x (last price - average price) of that
                                            position, before the sell's fees and tax
    orders_total{worker,side,status}        counter of the worker's orders by final status
    order_latency_seconds{worker,side}      histogram, submit -> done in wall seconds (clock
                                            seconds divided by PAPER_SPEED)
    lock_acquisitions_total{worker}         counter of locks taken (entries and adoptions)
    lock_contention_total{worker}           counter of scans whose first choice was owned
    leases_lost_total{worker}               counter of leases lost while holding
    tick_sells_total{worker}                counter of sells fired by the trade that reached a
                                            sell level (not by the periodic HOLD check)
    scan_duration_seconds{worker}           histogram, one SCAN tick in wall seconds
    risk_halts_total{worker}                counter of daily-loss-limit halts
    redis_bad_data_total{kind}              counter of garbage met in Redis (lock, lease, fence,
                                            event), each repaired or skipped alone

Process-wide gauges (no labels), set by the server probe (`worker.probe.ServerProbe`) every
couple of seconds over the whole life of the process:

    redis_up                                1 when Redis answered the last PING, else 0
    postgres_up                             1 when Postgres answered the last query, else 0
    schema_current                          1 when the database is at the code's migration head
    ready                                   1 when /readyz answers 200, else 0
    loss_budget_left_won                    DAILY_LOSS_LIMIT + the trading day's lowest realized
                                            pnl (the halt latches on it), 0 once halted; NaN
                                            until first read

No `_created` series: `disable_created_metrics()` (they double the series count and nothing
here reads them).
"""

from __future__ import annotations

from decimal import Decimal

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from broker.port import Side
from trading.metrics import (
    NOT_PLACED,
    NULL_METRICS,
    ORDER_STATUSES,
    NullWorkerMetrics,
    WorkerMetrics,
)
from trading.state import WorkerState

# process-wide: this module is the process's metrics
disable_created_metrics()  # type: ignore[no-untyped-call]

PREFIX = "tradefleet"

# Wall seconds: in real time a marketable order fills in one or two polls (ORDER_POLL_S = 2), a
# passive one waits up to ORDER_TIMEOUT_S (60) before it is cancelled; a simulated session at
# PAPER_SPEED N divides those by N.
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0,
                    120.0, 300.0)  # fmt: skip
# Wall seconds: a scan is one snapshot, one ranking and at most a few Redis/ledger round trips.
_SCAN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class FleetMetrics:
    """The metric families of one fleet process, in a registry of its own (not the global
    one), so several fleets can run in one process (tests) without colliding."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        w = ("worker",)
        self.state = Gauge(
            f"{PREFIX}_worker_state",
            "1 for the worker's current state, 0 for the others",
            (*w, "state"),
            registry=r,
        )
        self.trades = Counter(
            f"{PREFIX}_trades_closed", "Round trips closed by the worker's fills", w, registry=r
        )
        self.pnl = Gauge(
            f"{PREFIX}_realized_pnl_won",
            "Realized pnl of the trades the worker closed, in won",
            w,
            registry=r,
        )
        self.orders = Counter(
            f"{PREFIX}_orders",
            "Orders by side and final status (NOT_PLACED: the broker never took it)",
            (*w, "side", "status"),
            registry=r,
        )
        self.exposure = Gauge(
            f"{PREFIX}_open_exposure_won",
            "Quantity x last price of the position the worker holds (0 when flat), in won",
            w,
            registry=r,
        )
        self.unrealized = Gauge(
            f"{PREFIX}_unrealized_pnl_won",
            "Quantity x (last price - average price) of the position the worker holds, in won "
            "(before the sell's fees and tax)",
            w,
            registry=r,
        )
        self.latency = Histogram(
            f"{PREFIX}_order_latency_seconds",
            "Order submit -> done, in wall seconds",
            (*w, "side"),
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.acquired = Counter(f"{PREFIX}_lock_acquisitions", "Symbol locks taken", w, registry=r)
        self.contended = Counter(
            f"{PREFIX}_lock_contention",
            "Scans whose best candidate was owned by another worker",
            w,
            registry=r,
        )
        self.lost = Counter(f"{PREFIX}_leases_lost", "Leases lost while held", w, registry=r)
        self.tick_sells = Counter(
            f"{PREFIX}_tick_sells",
            "Sells fired by the trade that reached a sell level",
            w,
            registry=r,
        )
        self.scan = Histogram(
            f"{PREFIX}_scan_duration_seconds",
            "One SCAN tick, in wall seconds",
            w,
            buckets=_SCAN_BUCKETS,
            registry=r,
        )
        self.halts = Counter(
            f"{PREFIX}_risk_halts", "Daily loss limit halts of new buys", w, registry=r
        )

        self.bad_data = Counter(
            f"{PREFIX}_redis_bad_data",
            "Redis keys or stream entries found holding garbage (repaired or skipped), by kind",
            ("kind",),
            registry=r,
        )

        # process-wide, set by the health probe
        self.redis_up = Gauge(f"{PREFIX}_redis_up", "1 when Redis answered the last PING",
                              registry=r)  # fmt: skip
        self.postgres_up = Gauge(
            f"{PREFIX}_postgres_up", "1 when Postgres answered the last query", registry=r
        )
        self.schema_current = Gauge(
            f"{PREFIX}_schema_current",
            "1 when the database is at the code's migration head",
            registry=r,
        )
        self.ready = Gauge(f"{PREFIX}_ready", "1 when /readyz answers 200", registry=r)
        self.loss_budget = Gauge(
            f"{PREFIX}_loss_budget_left_won",
            "Daily loss limit + the trading day's lowest realized pnl (0 once halted), in won",
            registry=r,
        )
        self.loss_budget.set(float("nan"))  # unknown until the probe has read the ledger

    def bad_redis_data(self, kind: str, key: str) -> None:
        """`coordination`'s on_bad_data hook: count by kind (keys are unbounded)."""
        self.bad_data.labels(kind).inc()

    def for_worker(self, worker_id: str, clock_speed: float = 1.0) -> PrometheusWorkerMetrics:
        """The hooks of one worker whose clock runs `clock_speed` times real time."""
        return PrometheusWorkerMetrics(self, worker_id, clock_speed)

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format (version 0.0.4)."""
        return generate_latest(self.registry)


class PrometheusWorkerMetrics:
    """`WorkerMetrics` writing into a `FleetMetrics` registry under one `worker` label.

    Every series is created up front with zero values, so a scrape shows all of them for
    every worker from the start (rate() and absent() behave, dashboards are not empty).
    Latencies come in clock seconds and are kept in wall seconds (divided by `clock_speed`)."""

    def __init__(self, fleet: FleetMetrics, worker_id: str, clock_speed: float = 1.0) -> None:
        if not clock_speed > 0:
            raise ValueError(f"clock_speed must be positive, got {clock_speed}")
        self._speed = clock_speed
        self._states = {s: fleet.state.labels(worker_id, s.value) for s in WorkerState}
        self._trades = fleet.trades.labels(worker_id)
        self._pnl = fleet.pnl.labels(worker_id)
        self._exposure = fleet.exposure.labels(worker_id)
        self._unrealized = fleet.unrealized.labels(worker_id)
        self._orders = {
            (side, status): fleet.orders.labels(worker_id, side.value, status)
            for side in Side
            for status in ORDER_STATUSES
        }
        self._latency = {side: fleet.latency.labels(worker_id, side.value) for side in Side}
        self._acquired = fleet.acquired.labels(worker_id)
        self._contended = fleet.contended.labels(worker_id)
        self._lost = fleet.lost.labels(worker_id)
        self._tick_sells = fleet.tick_sells.labels(worker_id)
        self._scan = fleet.scan.labels(worker_id)
        self._halts = fleet.halts.labels(worker_id)
        self.state_changed(WorkerState.IDLE)

    def state_changed(self, state: WorkerState) -> None:
        for s, gauge in self._states.items():
            gauge.set(1 if s is state else 0)
        if state is not WorkerState.HOLD:  # only a holding worker has a position
            self._exposure.set(0)
            self._unrealized.set(0)

    def position_marked(self, qty: int, avg_price: Decimal, price: Decimal) -> None:
        self._exposure.set(float(qty * price))
        self._unrealized.set(float(qty * (price - avg_price)))

    def trade_closed(self, pnl: Decimal) -> None:
        self._trades.inc()
        # Prometheus samples are float64; the ledger stays the exact record of money.
        self._pnl.inc(float(pnl))

    def order_done(self, side: Side, status: str, latency_s: float | None) -> None:
        counter = self._orders.get((side, status))
        if counter is not None:  # an unexpected status is dropped, not a new series
            counter.inc()
        if latency_s is not None:
            self._latency[side].observe(max(0.0, latency_s) / self._speed)

    def lock_acquired(self) -> None:
        self._acquired.inc()

    def lock_contended(self) -> None:
        self._contended.inc()

    def lease_lost(self) -> None:
        self._lost.inc()

    def tick_stop(self) -> None:
        self._tick_sells.inc()

    def scan_done(self, wall_s: float) -> None:
        self._scan.observe(wall_s)

    def risk_halted(self) -> None:
        self._halts.inc()


class PrometheusAccountMetrics:
    """`trading.metrics.AccountMetrics` on a `FleetMetrics` registry (one per registry,
    `for_fleet`). Series (`tradefleet_` prefix): ``account_drift_total{kind,symbol}``, a
    counter of drifts the reconciliation recorded (symbol '' for cash; symbols appear only when
    they drift, which is rare, so the label stays bounded); ``account_drifts_open``, a gauge of
    the drift episodes open after the latest pass; ``reconciliations_total{outcome}``, a counter
    of passes (consistent, drift, failed).
    """

    def __init__(self, fleet: FleetMetrics) -> None:
        r = fleet.registry
        self.drifts = Counter(
            f"{PREFIX}_account_drift",
            "Unexplained differences between the broker's account and the ledger, recorded",
            ("kind", "symbol"),
            registry=r,
        )
        self.open = Gauge(
            f"{PREFIX}_account_drifts_open", "Account drift episodes open", registry=r
        )
        self.passes = Counter(
            f"{PREFIX}_reconciliations", "Account reconciliation passes by outcome",
            ("outcome",), registry=r,
        )  # fmt: skip
        for outcome in ("consistent", "drift", "failed"):
            self.passes.labels(outcome)

    @classmethod
    def for_fleet(cls, fleet: FleetMetrics) -> PrometheusAccountMetrics:
        """The one instance on `fleet`'s registry (created on first use)."""
        existing = getattr(fleet, "_account_metrics", None)
        if existing is None:
            existing = cls(fleet)
            fleet._account_metrics = existing  # type: ignore[attr-defined]
        assert isinstance(existing, cls)
        return existing

    def account_drifted(self, kind: str, symbol: str) -> None:
        self.drifts.labels(kind, symbol).inc()

    def account_drifts_open(self, n: int) -> None:
        self.open.set(n)

    def account_reconciled(self, outcome: str) -> None:
        self.passes.labels(outcome).inc()


__all__ = [
    "NOT_PLACED",
    "NULL_METRICS",
    "FleetMetrics",
    "NullWorkerMetrics",
    "PrometheusAccountMetrics",
    "PrometheusWorkerMetrics",
    "WorkerMetrics",
]
