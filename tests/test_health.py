"""/livez, /readyz, /healthz and /metrics: a short real fleet (Redis, Postgres, paper broker)
serves them while it runs and closes the port when it ends; the verdicts themselves against stub
workers and a stub probe clock; the server probe against the real servers (and a dead one)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, date, datetime

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import free_port

from trading.state import WorkerState
from worker.app import run_fleet
from worker.health import FleetHealth, HealthServer, Phase, ProcessHealth
from worker.metrics import FleetMetrics
from worker.probe import ServerProbe
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
    "tradefleet_open_exposure_won",
    "tradefleet_unrealized_pnl_won",
    "tradefleet_redis_up",
    "tradefleet_postgres_up",
    "tradefleet_schema_current",
    "tradefleet_ready",
    "tradefleet_loss_budget_left_won",
)
PROCESS_WIDE = {
    "tradefleet_redis_up",
    "tradefleet_postgres_up",
    "tradefleet_schema_current",
    "tradefleet_ready",
    "tradefleet_loss_budget_left_won",
}

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
    ready: dict[str, object] | None = None
    samples: Samples = {}
    async with anyio.create_task_group() as tg:
        tg.start_soon(fleet)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=2.0) as client:
            with anyio.fail_after(30):
                # until the fleet is healthy and each worker has finished a scan
                while not finished.is_set():
                    try:
                        health = await client.get("/healthz")
                        readyz = await client.get("/readyz")
                        metrics = await client.get("/metrics")
                    except httpx.ConnectError:
                        await anyio.sleep(0.05)  # not bound yet
                        continue
                    samples = _samples(metrics.text)
                    if (
                        health.status_code == 200
                        and readyz.status_code == 200
                        and all(_scans(samples, w) for w in WORKERS)
                    ):
                        healthy, ready = health.json(), readyz.json()
                        assert (await client.get("/livez")).status_code == 200
                        assert metrics.headers["content-type"].startswith("text/plain")
                        break
                    await anyio.sleep(0.05)
            await finished.wait()
            with pytest.raises(httpx.ConnectError):
                await client.get("/healthz")

    assert healthy is not None, "the fleet ended before /healthz answered 200 with scans counted"
    assert healthy["status"] == "ok"
    assert set(healthy["workers"]) == set(WORKERS)  # type: ignore[arg-type]
    assert ready is not None
    assert ready["status"] == "ready"
    assert ready["phase"] == "trading"
    assert ready["redis"] == {"up": True, "error": None}
    assert ready["postgres"] == {"up": True, "error": None}
    assert ready["schema"]["state"] == "current"  # type: ignore[index]
    assert ready["session"]["day"] == "2026-11-24"  # type: ignore[index]
    names = {name for name, _labels in samples}
    assert set(METRIC_NAMES) <= names
    assert not [name for name in names if name.endswith("_created")]
    for name in PROCESS_WIDE:
        assert samples[(name, frozenset())] == (2_000_000 if "budget" in name else 1), name
    for name, labels in samples:
        if name in METRIC_NAMES and name not in PROCESS_WIDE:
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


async def _get(server: HealthServer, path: str) -> httpx.Response:
    async with anyio.create_task_group() as tg:
        port = await tg.start(server.serve, "127.0.0.1", 0)
        async with httpx.AsyncClient(timeout=2.0) as client:
            response = await client.get(f"http://127.0.0.1:{port}{path}")
        tg.cancel_scope.cancel()
    return response


async def _get_healthz(workers: list[_Stub]) -> httpx.Response:
    return await _get(HealthServer(FleetHealth(workers, stall_after_s=5.0), FleetMetrics()),
                      "/healthz")  # fmt: skip


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


def test_metrics_before_the_registry_exists_is_503() -> None:
    server = HealthServer(ProcessHealth(probe_stall_s=18.0))
    assert server.respond(b"GET /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 503 ")
    assert server.respond(b"GET /livez HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 200 ")


class _Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def _process(clock: _Clock) -> ProcessHealth:
    health = ProcessHealth(probe_stall_s=18.0, monotonic=clock)
    health.redis.up = health.postgres.up = True
    from ledger.migrate import head_revision, status_of

    health.schema = status_of(head_revision())
    health.last_probe_at = clock.now
    return health


@pytest.mark.anyio
async def test_livez_follows_the_probe_and_the_workers() -> None:
    clock = _Clock()
    health = _process(clock)
    server = HealthServer(health)
    assert (await _get(server, "/livez")).status_code == 200
    clock.now += 19  # the probe made no pass for longer than its limit
    response = await _get(server, "/livez")
    assert response.status_code == 503
    assert "the server probe made no progress for 19.0s" in response.json()["reason"]
    assert (await _get(server, "/healthz")).json() == response.json()

    health.last_probe_at = clock.now
    health.fleet = FleetHealth([_Stub("w1", WorkerState.HOLD, clock.now - 60)], 5.0, clock)
    health.enter(Phase.TRADING, "trading")
    body = (await _get(server, "/livez")).json()
    assert body["status"] == "unhealthy"
    assert "worker w1 made no progress" in body["reason"]
    assert body["workers"] == {"w1": {"state": "HOLD", "last_tick_age_s": 60.0}}


@pytest.mark.anyio
async def test_readyz_names_every_reason() -> None:
    clock = _Clock()
    health = _process(clock)
    server = HealthServer(health)
    health.enter(Phase.WAITING_FOR_SESSION, "waiting for the session of 2026-12-01")
    response = await _get(server, "/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "not_ready"
    assert body["reason"] == "waiting for the session of 2026-12-01"
    assert body["phase"] == "waiting_for_session"

    health.redis.up, health.redis.error = False, "ConnectionError: refused"
    health.fleet = FleetHealth([_Stub("w1", WorkerState.SCAN, clock.now)], 5.0, clock)
    health.enter(Phase.TRADING, "trading the session of 2026-12-01")
    body = (await _get(server, "/readyz")).json()
    assert body["reason"] == "Redis unreachable: ConnectionError: refused"
    assert body["redis"] == {"up": False, "error": "ConnectionError: refused"}

    health.redis.up, health.redis.error = True, None
    response = await _get(server, "/readyz")
    assert response.status_code == 200
    assert response.json()["status"] == "ready"
    assert response.json()["workers"] == {"w1": {"state": "SCAN", "last_tick_age_s": 0.0}}
    assert (await _get(server, "/livez")).status_code == 200


@pytest.mark.anyio
async def test_probe_reports_servers_schema_and_loss_budget(
    database_url: str, redis_url: str
) -> None:
    from decimal import Decimal

    import redis.asyncio as aioredis

    from ledger.db import create_engine
    from ledger.repository import Ledger
    from market.costs import CostModel

    metrics = FleetMetrics()
    health = ProcessHealth(probe_stall_s=18.0)
    engine = create_engine(database_url)
    good = aioredis.Redis.from_url(redis_url)
    dead = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=1.0)
    day = date(2026, 11, 24)
    try:
        probe = ServerProbe(health, metrics, good, engine, Decimal(2_000_000), trading_day=day)
        await probe.probe_once()
        samples = _samples(metrics.exposition().decode())
        for name in ("redis_up", "postgres_up", "schema_current"):
            assert samples[(f"tradefleet_{name}", frozenset())] == 1
        assert samples[("tradefleet_loss_budget_left_won", frozenset())] == 2_000_000
        assert health.schema is not None
        assert health.schema.current
        assert health.last_probe_at is not None

        await Ledger(engine, CostModel()).record_halt(
            day, datetime.now(UTC), Decimal(-2_000_000), Decimal(2_000_000), "w1", "test"
        )
        probe.redis = dead
        await probe.probe_once()
        samples = _samples(metrics.exposition().decode())
        assert samples[("tradefleet_loss_budget_left_won", frozenset())] == 0
        assert samples[("tradefleet_redis_up", frozenset())] == 0
        assert health.redis.up is False
        ok, body = health.ready()
        assert not ok
        assert body["reason"].startswith("Redis unreachable: ")
    finally:
        await good.aclose()
        await dead.aclose()
        await engine.dispose()


@pytest.mark.anyio
async def test_probe_follows_a_postgres_outage_and_recovery(
    database_url: str, redis_url: str
) -> None:
    from decimal import Decimal

    import redis.asyncio as aioredis
    from support import ServerProxy

    from ledger.db import create_engine

    metrics = FleetMetrics()
    health = ProcessHealth(probe_stall_s=18.0)
    redis = aioredis.Redis.from_url(redis_url)
    async with anyio.create_task_group() as tg:
        proxy = ServerProxy(database_url)
        await tg.start(proxy.serve)
        engine = create_engine(proxy.url_for(database_url), connect_timeout_s=1)
        probe = ServerProbe(health, metrics, redis, engine, Decimal(1), timeout_s=1.0)
        try:
            await probe.probe_once()
            assert health.postgres.up is True
            for outage in (proxy.cut, proxy.stall):
                outage()
                await probe.probe_once()
                assert health.postgres.up is False, outage
                assert health.postgres.error
                assert "Postgres unreachable" in health.ready()[1]["reason"]
                samples = _samples(metrics.exposition().decode())
                assert samples[("tradefleet_postgres_up", frozenset())] == 0
                proxy.resume()
                await probe.probe_once()
                assert health.postgres.up is True, health.postgres.error
                assert health.postgres.error is None
        finally:
            await engine.dispose()
            await redis.aclose()
            tg.cancel_scope.cancel()
