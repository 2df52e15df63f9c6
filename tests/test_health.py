"""/healthz and /metrics: a short real fleet (Redis, Postgres, paper broker) serves both while it
runs and closes the port when it ends; the health verdict itself against stub workers."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import date

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import free_port

from trading.state import WorkerState
from worker.app import run_fleet
from worker.health import FleetHealth, HealthServer
from worker.metrics import FleetMetrics
from worker.settings import load_settings

SPEED = 2_000.0
JOIN_AT_S = 4 * 3600  # join at 13:00 KST: ~4 s of wall time to the liquidation start at 15:15
WORKERS = ("hl-w1", "hl-w2")
METRIC_NAMES = (
    "tradefleet_worker_state",
    "tradefleet_trades_closed_total",
    "tradefleet_realized_pnl_won",
    "tradefleet_orders_total",
    "tradefleet_order_latency_seconds_count",
    "tradefleet_lock_acquisitions_total",
    "tradefleet_lock_contention_total",
    "tradefleet_leases_lost_total",
    "tradefleet_scan_duration_seconds_count",
    "tradefleet_risk_halts_total",
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _samples(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _scans(samples: Samples, worker: str) -> float:
    key = ("tradefleet_scan_duration_seconds_count", frozenset({("worker", worker)}))
    return samples.get(key, 0.0)


@pytest.mark.slow
@pytest.mark.anyio
async def test_fleet_serves_health_and_metrics_then_closes(
    database_url: str, redis_url: str, prefix: str
) -> None:
    port = free_port()
    settings = load_settings(
        database_url=database_url,
        redis_url=redis_url,
        fleet_prefix=prefix,
        worker_id="hl",
        paper_seed=7,
        paper_symbols=300,
        paper_day=date(2026, 11, 24),
        lock_ttl_ms=3_000,
        health_port=port,
    )
    epoch = time.time() + 0.5 - JOIN_AT_S / SPEED
    finished = anyio.Event()

    async def fleet() -> None:
        await run_fleet(
            settings,
            database_url=database_url,
            redis_url=redis_url,
            workers=len(WORKERS),
            speed=SPEED,
            epoch=epoch,
            handle_signals=False,
        )
        finished.set()

    healthy: dict[str, object] | None = None
    samples: Samples = {}
    async with anyio.create_task_group() as tg:
        tg.start_soon(fleet)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=2.0) as client:
            with anyio.fail_after(30):
                # until the fleet is healthy and each worker has finished a scan
                while not finished.is_set():
                    try:
                        health = await client.get("/healthz")
                        metrics = await client.get("/metrics")
                    except httpx.ConnectError:
                        await anyio.sleep(0.05)  # not bound yet
                        continue
                    samples = _samples(metrics.text)
                    if health.status_code == 200 and all(_scans(samples, w) for w in WORKERS):
                        healthy = health.json()
                        assert metrics.headers["content-type"].startswith("text/plain")
                        break
                    await anyio.sleep(0.05)
            await finished.wait()
            with pytest.raises(httpx.ConnectError):
                await client.get("/healthz")

    assert healthy is not None, "the fleet ended before /healthz answered 200 with scans counted"
    assert healthy["status"] == "ok"
    assert set(healthy["workers"]) == set(WORKERS)  # type: ignore[arg-type]
    names = {name for name, _labels in samples}
    assert set(METRIC_NAMES) <= names
    for name, labels in samples:
        if name.startswith("tradefleet_"):
            assert dict(labels)["worker"] in WORKERS, (name, labels)
    for w in WORKERS:
        assert _scans(samples, w) > 0
        live = {
            dict(labels)["state"]
            for name, labels in samples
            if name == "tradefleet_worker_state"
            and dict(labels)["worker"] == w
            and samples[(name, labels)] == 1
        }
        assert live in ({"SCAN"}, {"HOLD"})


@dataclass
class _Stub:
    id: str
    state: WorkerState
    last_tick_at: float | None


async def _get_healthz(workers: list[_Stub]) -> httpx.Response:
    server = HealthServer(FleetHealth(workers, stall_after_s=5.0), FleetMetrics())
    async with anyio.create_task_group() as tg:
        port = await tg.start(server.serve, "127.0.0.1", 0)
        async with httpx.AsyncClient(timeout=2.0) as client:
            response = await client.get(f"http://127.0.0.1:{port}/healthz")
        tg.cancel_scope.cancel()
    return response


@pytest.mark.anyio
async def test_stalled_worker_makes_healthz_503() -> None:
    now = time.monotonic()
    response = await _get_healthz(
        [_Stub("fresh", WorkerState.SCAN, now), _Stub("stuck", WorkerState.HOLD, now - 60)]
    )
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unhealthy"
    assert "worker stuck made no progress" in body["reason"]
    assert "fresh" not in body["reason"]


@pytest.mark.anyio
async def test_exited_worker_makes_healthz_503() -> None:
    response = await _get_healthz([_Stub("done", WorkerState.EXIT, time.monotonic())])
    assert response.status_code == 503
    assert "worker done has exited" in response.json()["reason"]


@pytest.mark.anyio
async def test_ticking_and_waiting_workers_are_healthy() -> None:
    response = await _get_healthz(
        [
            _Stub("ticking", WorkerState.SCAN, time.monotonic()),
            _Stub("early", WorkerState.IDLE, None),
        ]
    )
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_unknown_path_and_method() -> None:
    server = HealthServer(FleetHealth([], stall_after_s=5.0), FleetMetrics())
    assert server.respond(b"GET /nope HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 404 ")
    assert server.respond(b"POST /healthz HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 405 ")
    assert server.respond(b"garbage\r\n\r\n").startswith(b"HTTP/1.1 400 ")
