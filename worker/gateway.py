"""`python -m worker gateway`: the KIS gateway of one app key (`broker.kis.gateway.Gateway`).

Start two (or more): one holds the lease and is active, the others stand by and take over
within a few seconds when it dies. First stdout line, once the relay listens:
``gateway relay=URL id=ID domain=D``. With HEALTH_PORT: /livez, /healthz, /readyz (200 on the
active gateway and on a standby alike, the body says which) and /metrics.

The gateway needs KIS_APP_KEY, KIS_APP_SECRET and KIS_ACCOUNT (KIS_BASE_URL / KIS_WS_URL point
it at an exchange); workers with BROKER=kis need no secret: they reach KIS through it.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from functools import partial
from typing import Any

import anyio
import orjson
from aiohttp import web
from anyio.abc import TaskStatus
from loguru import logger
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from broker.kis import KisConfig
from broker.kis.fanout import Holders
from broker.kis.gateway import Gateway, GatewayContext, Service
from market.calendar import default_calendar
from market.clock import KST, Clock, RealClock, SimClock
from worker.settings import ConfigError, Settings, kis_config


def gateway_services(settings: Settings) -> list[Service]:
    """The components the active gateway runs besides its relay (market-data fan-out, the
    WebSocket notice router, account reconciliation). Each is started when this gateway
    becomes active and cancelled when it stops being active."""
    from broker.kis.fanout import publish_market_data, realtime

    return [
        # the universe's quotations for every BROKER=kis worker, N_BARS minute bars a symbol
        partial(publish_market_data, holders_of=lock_holders, n_bars=settings.n_bars),
        # the app key's WebSocket: fill notices to their owners, held symbols' trades
        partial(realtime, holders_of=lock_holders),
    ]


def lock_holders(ctx: GatewayContext) -> Holders:
    """Who holds which symbol, read from the fleet's symbol locks (`broker` never reads the
    coordination keys itself): routes fill notices and picks the symbols to watch live."""
    from coordination.keys import Keyspace
    from coordination.locks import RedisSymbolLock

    locks = RedisSymbolLock(ctx.redis, Keyspace(ctx.prefix), f"gateway-{ctx.gateway_id}")

    async def holders() -> Mapping[str, str]:
        return {info.symbol: info.worker_id for info in await locks.live_locks()}

    return holders


def gateway_clock(settings: Settings) -> Clock:
    """Real time against KIS. Rehearsing on an exchange (`Settings.kis_on_exchange`) with
    PAPER_SPEED > 1: the exchange's simulated clock (PAPER_SPEED, PAPER_EPOCH, PAPER_DAY), which
    the workers follow too, so the token's expiry, the market data's day and its timestamps read
    the same everywhere. The request budget stays in wall time, as KIS's is."""
    if not (settings.kis_on_exchange and settings.paper_speed > 1):
        return RealClock()
    calendar = default_calendar()
    day = settings.paper_day or datetime.now(KST).date()
    session = calendar.session(day) or calendar.next_session(day)
    epoch = settings.paper_epoch.timestamp() if settings.paper_epoch is not None else None
    return SimClock(session.open, settings.paper_speed, epoch)


def kis_gateway_config(settings: Settings) -> KisConfig:
    """The gateway's `KisConfig`: the whole credentials (it alone holds the secret)."""
    for name in ("kis_app_key", "kis_app_secret", "kis_account"):
        if not getattr(settings, name):
            raise ConfigError(f"{name.upper()}: required for the gateway")
    return kis_config(settings, app_secret=settings.kis_app_secret or "")


def gateway(settings: Settings) -> int:
    """Run until SIGTERM / SIGINT; exit 0."""
    if not settings.redis_url:
        raise ConfigError("REDIS_URL: required for the gateway")
    config = kis_gateway_config(settings)
    anyio.run(_serve, settings, config)
    return 0


async def _serve(settings: Settings, config: Any) -> None:
    from coordination.connection import connect

    assert settings.redis_url
    redis = await connect(settings.redis_url, attempts=settings.connect_attempts)
    try:
        gw = Gateway(
            config,
            redis,
            settings.fleet_prefix,
            clock=gateway_clock(settings),
            gateway_id=settings.worker_id,
            host=settings.gateway_host,
            port=settings.gateway_port,
            advertise_url=settings.gateway_url,
            lease_ttl_s=settings.gateway_lease_ttl_ms / 1000,
            services=gateway_services(settings),
        )
        async with anyio.create_task_group() as tg:
            url = await tg.start(gw.run)
            print(f"gateway relay={url} id={gw.id} domain={config.domain}", flush=True)
            if settings.health_port > 0:
                await tg.start(_health, gw, settings.health_host, settings.health_port)
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    logger.info("KIS gateway {}: {} received, stopping", gw.id,
                                signal.Signals(signum).name)  # fmt: skip
                    break
            tg.cancel_scope.cancel()  # leaves the lease (compare-and-delete) on the way out
    finally:
        await redis.aclose()
    sys.stdout.flush()


async def _health(
    gw: Gateway, host: str, port: int, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED
) -> None:
    """/livez and /healthz (alive), /readyz (bound: a standby is ready too, it is what a rolling
    update waits for; the body says which it is) and /metrics, until cancelled."""
    metrics = _Metrics(gw)

    async def live(request: web.Request) -> web.Response:
        return _json({"status": "ok", "role": _role(gw), "id": gw.id})

    async def ready(request: web.Request) -> web.Response:
        ok = gw.bound.is_set()
        body = {"status": "ready" if ok else "not_ready", "role": _role(gw), "id": gw.id}
        return _json(body, 200 if ok else 503)

    async def exposition(request: web.Request) -> web.Response:
        return web.Response(
            body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    for path, handler in (("/livez", live), ("/healthz", live), ("/readyz", ready),
                          ("/metrics", exposition)):  # fmt: skip
        app.router.add_get(path, handler)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        logger.info("KIS gateway health and metrics on http://{}:{}/", host, port)
        task_status.started(port)
        await anyio.sleep_forever()
    finally:
        with anyio.CancelScope(shield=True):
            await runner.cleanup()


def _role(gw: Gateway) -> str:
    return "active" if gw.active else "standby"


def _json(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body),
                        headers={"Content-Type": "application/json"})  # fmt: skip


class _Collector(Collector):
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    def collect(self) -> Iterator[Any]:
        stats = self.gw.stats()
        yield GaugeMetricFamily("kis_gateway_active", "1 while this gateway holds the lease",
                                value=1 if stats["active"] else 0)  # fmt: skip
        yield CounterMetricFamily("kis_gateway_activations", "times this gateway became active",
                                  value=stats["activations"])  # fmt: skip
        yield CounterMetricFamily("kis_gateway_rate_refusals",
                                  "EGW00201 answers from KIS (should stay 0)",
                                  value=stats["rate_refusals"])  # fmt: skip
        budget = stats["budget"]
        granted = CounterMetricFamily("kis_gateway_granted", "slots granted", labels=["lane"])
        waiting = GaugeMetricFamily("kis_gateway_waiting", "requests waiting", labels=["lane"])
        wait = GaugeMetricFamily("kis_gateway_wait_p99_seconds", "p99 wait for a slot",
                                 labels=["lane"])  # fmt: skip
        for lane, row in budget["lanes"].items():
            granted.add_metric([lane], row["granted"])
            waiting.add_metric([lane], row["waiting"])
            wait.add_metric([lane], row["wait_p99_ms"] / 1000)
        yield from (granted, waiting, wait)

    def describe(self) -> Sequence[Any]:
        return []


class _Metrics:
    def __init__(self, gw: Gateway) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(gw))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
