"""The Prometheus registry of a process: no `_created` series, latencies in wall seconds, the
position gauges follow the worker, the process-wide gauges exist from the start."""

from __future__ import annotations

import math
from decimal import Decimal

from prometheus_client.parser import text_string_to_metric_families

from market.orders import Side
from trading.state import WorkerState
from worker.metrics import FleetMetrics

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _samples(metrics: FleetMetrics) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(metrics.exposition().decode())
        for s in family.samples
    }


def _one(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def test_no_created_series() -> None:
    metrics = FleetMetrics()
    hooks = metrics.for_worker("w1")
    hooks.trade_closed(Decimal(1_000))
    hooks.order_done(Side.BUY, "FILLED", 3.0)
    metrics.bad_redis_data("lock", "fleet:lock:005930")
    text = metrics.exposition().decode()
    assert "tradefleet_trades_closed_total" in text
    assert "_created" not in text


def test_process_wide_gauges_exist_from_the_start() -> None:
    samples = _samples(FleetMetrics())
    for name in ("redis_up", "postgres_up", "schema_current", "ready"):
        assert _one(samples, f"tradefleet_{name}") == 0
    assert math.isnan(_one(samples, "tradefleet_loss_budget_left_won"))  # unknown until read


def test_order_latency_is_in_wall_seconds() -> None:
    metrics = FleetMetrics()
    metrics.for_worker("w1", clock_speed=60.0).order_done(Side.SELL, "FILLED", 120.0)
    samples = _samples(metrics)
    assert _one(samples, "tradefleet_order_latency_seconds_sum", worker="w1", side="SELL") == 2.0
    le_2 = {"worker": "w1", "side": "SELL", "le": "2.0"}
    assert _one(samples, "tradefleet_order_latency_seconds_bucket", **le_2) == 1


def test_position_gauges_follow_the_held_position() -> None:
    metrics = FleetMetrics()
    hooks = metrics.for_worker("w1")
    samples = _samples(metrics)
    assert _one(samples, "tradefleet_open_exposure_won", worker="w1") == 0
    assert _one(samples, "tradefleet_unrealized_pnl_won", worker="w1") == 0

    hooks.state_changed(WorkerState.HOLD)
    hooks.position_marked(100, Decimal(50_000), Decimal(49_500))
    samples = _samples(metrics)
    assert _one(samples, "tradefleet_open_exposure_won", worker="w1") == 4_950_000
    assert _one(samples, "tradefleet_unrealized_pnl_won", worker="w1") == -50_000

    hooks.state_changed(WorkerState.SCAN)  # flat: sold or handed off
    samples = _samples(metrics)
    assert _one(samples, "tradefleet_open_exposure_won", worker="w1") == 0
    assert _one(samples, "tradefleet_unrealized_pnl_won", worker="w1") == 0
