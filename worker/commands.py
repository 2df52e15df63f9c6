"""The CLI's commands that run things: `run`, `migrate` and the `exchange`. Each returns the
process exit code. The read-only inspection commands are in `worker.inspect`."""

from __future__ import annotations

import signal
from collections.abc import Sequence
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskStatus
from loguru import logger

from market.clock import KST
from worker.health import HealthServer, Phase, ProcessHealth, probe_stall_s
from worker.settings import Settings, describe_venue

if TYPE_CHECKING:  # the trading code is imported once the health port answers
    from market.calendar import Session
    from trading.loop import Worker
    from worker.app import Plan
    from worker.metrics import FleetMetrics
    from worker.probe import ServerProbe

_WAKE_LEAD = timedelta(minutes=5)
#: the longest single sleep while waiting for a session (the wake time is re-read after each)
_MAX_NAP_S = 60.0


def run(settings: Settings) -> int:
    """`python -m worker run`: exit 0 after the session (or at once when there is none and
    WAIT_FOR_SESSION is off) or after SIGTERM/SIGINT; 1 on a runtime failure, including a
    database schema that is not current (`worker.schema.SchemaNotCurrent`)."""
    from worker.memory import tune_allocator

    tune_allocator()  # a process that lives all day: freed blocks go back (worker.memory)
    return anyio.run(_run, settings)


async def _run(settings: Settings) -> int:
    """The process's whole life: health from the first second, the schema gate, then one
    session (or none, when the market is closed); with WAIT_FOR_SESSION, every session from
    now on, waiting (not ready) in between, until SIGTERM.

    The health port is bound before anything else (before the trading code is imported and
    before a server is reached), and answers until the process returns.
    """
    assert settings.database_url
    assert settings.redis_url
    logger.info("{}", describe_venue(settings))  # broker, domain, masked account: real money?
    health = ProcessHealth(probe_stall_s())
    server = HealthServer(health)
    life = _Lifetime(settings, health)
    code = 1
    async with anyio.create_task_group() as tg:
        await tg.start(life.watch_signals)
        if settings.health_port > 0:
            await tg.start(server.serve, settings.health_host, settings.health_port)
        try:
            code = await _with_probe(settings, health, server, life)
        finally:
            tg.cancel_scope.cancel()
    return code


async def _with_probe(
    settings: Settings, health: ProcessHealth, server: HealthServer, life: _Lifetime
) -> int:
    """Build the registry and the server probe (own connections, short deadlines), then live."""
    assert settings.database_url
    assert settings.redis_url
    # The trading code takes a second or so to import; in a thread, so that the event loop
    # answers /livez meanwhile (the imports below then find the modules loaded).
    await anyio.to_thread.run_sync(_import_trading_code)
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    from ledger.db import create_engine
    from worker.health import PROBE_TIMEOUT_S
    from worker.metrics import FleetMetrics
    from worker.probe import ServerProbe

    metrics = FleetMetrics()
    server.metrics = metrics
    async with AsyncExitStack() as stack:
        # no retries of its own: a PING that fails is "down" until the next pass
        redis = aioredis.Redis.from_url(settings.redis_url, socket_timeout=PROBE_TIMEOUT_S,
                                        socket_connect_timeout=PROBE_TIMEOUT_S,
                                        retry=Retry(NoBackoff(), 0))  # fmt: skip
        stack.push_async_callback(redis.aclose)
        engine = create_engine(settings.database_url, connect_timeout_s=int(PROBE_TIMEOUT_S),
                               statement_timeout_s=PROBE_TIMEOUT_S,
                               lock_timeout_s=PROBE_TIMEOUT_S)  # fmt: skip
        stack.push_async_callback(engine.dispose)
        probe = ServerProbe(health, metrics, redis, engine, settings.daily_loss_limit)
        async with anyio.create_task_group() as tg:
            await tg.start(probe.run)
            try:
                code = await _live(settings, health, metrics, probe, life)
            finally:
                tg.cancel_scope.cancel()
    return code


def _import_trading_code() -> None:
    import importlib

    for name in ("worker.metrics", "worker.probe", "worker.schema", "worker.app"):
        importlib.import_module(name)


async def _live(
    settings: Settings,
    health: ProcessHealth,
    metrics: FleetMetrics,
    probe: ServerProbe,
    life: _Lifetime,
) -> int:
    assert settings.database_url
    assert settings.redis_url
    from market.calendar import default_calendar
    from worker.app import MarketClosed, plan_session, run_fleet

    if not await _schema_gate(settings, health, probe, life):
        return 0
    calendar = default_calendar()
    # a real account trades the real session in real time; a rehearsal on an exchange
    # (`Settings.kis_on_exchange`) runs on the exchange's simulated clock
    real_time = settings.broker == "kis" and not settings.kis_on_exchange
    speed = 1.0 if real_time else settings.paper_speed
    epoch = settings.paper_epoch.timestamp() if settings.paper_epoch is not None else None
    forever = settings.wait_for_session and speed <= 1
    while not life.stopped:
        try:
            plan = plan_session(settings, calendar, speed, epoch)
        except MarketClosed as exc:
            if not settings.wait_for_session:
                logger.info("nothing to trade now: {}", exc)
                return 0
            if not await _sleep_until_next_session(health, probe, life, why=str(exc)):
                return 0
            continue
        if settings.wait_for_session and _wall_s_to_wake(plan) > 0:
            if not await _wait_for_open(health, probe, life, plan):
                return 0
            continue  # plan again: now within the wake lead of the open
        day = plan.session.day
        probe.trading_day = day
        health.show_session(plan.session, clock_speed=plan.clock.speed)
        health.enter(Phase.STARTING, f"starting the session of {day}")
        try:
            with life.startup_scope():
                await run_fleet(settings, database_url=settings.database_url,
                                redis_url=settings.redis_url, handle_signals=False,
                                on_started=life.started, exclusive_paper=True,
                                metrics=metrics)  # fmt: skip
        except MarketClosed as exc:  # the close came while the session was being opened
            logger.info("nothing to trade now: {}", exc)
        finally:
            life.ended()
        if not forever:
            return 0
    return 0


async def _schema_gate(
    settings: Settings, health: ProcessHealth, probe: ServerProbe, life: _Lifetime
) -> bool:
    """Return once the schema is current (True) or a signal came (False); raise
    `SchemaNotCurrent` when it is ahead, or behind without WAIT_FOR_SCHEMA."""
    assert settings.database_url
    from ledger.db import wait_ready
    from worker.schema import SchemaNotCurrent, schema_status

    health.enter(Phase.STARTING, "checking the database schema")
    with life.startup_scope():
        await wait_ready(settings.database_url, attempts=settings.connect_attempts, backoff_s=0.5)
        status = await schema_status(probe.engine)
    if life.stopped:
        return False
    health.schema = status
    while not status.current:
        if status.state == "ahead" or not settings.wait_for_schema:
            raise SchemaNotCurrent(status)
        health.enter(Phase.WAITING_FOR_SCHEMA, "waiting for a current schema (WAIT_FOR_SCHEMA=1)")
        with life.startup_scope():
            await probe.next_pass()
        if life.stopped:
            return False
        status = health.schema or status
    return True


def _wall_s_to_wake(plan: Plan) -> float:
    """Wall seconds until `_WAKE_LEAD` (clock time) before the plan's open; <= 0 when due."""
    clock_s = (plan.session.open - _WAKE_LEAD - plan.clock.now()).total_seconds()
    return clock_s / plan.clock.speed


async def _wait_for_open(
    health: ProcessHealth, probe: ServerProbe, life: _Lifetime, plan: Plan
) -> bool:
    """Wait (not ready) until shortly before the open of the planned session; False if a
    signal came first."""
    wake = datetime.now(UTC) + timedelta(seconds=_wall_s_to_wake(plan))
    return await _wait_until(health, probe, life, plan.session, wake, plan.clock.speed, None)


async def _sleep_until_next_session(
    health: ProcessHealth, probe: ServerProbe, life: _Lifetime, *, why: str
) -> bool:
    """Wait (not ready) until shortly before the next KRX session in real time; False if a
    signal came first."""
    from market.calendar import default_calendar
    from worker.app import next_wake

    calendar = default_calendar()
    wake = next_wake(datetime.now(KST), calendar, _WAKE_LEAD)
    session = calendar.session((wake + _WAKE_LEAD).astimezone(KST).date())
    assert session is not None
    return await _wait_until(health, probe, life, session, wake, 1.0, why)


async def _wait_until(
    health: ProcessHealth,
    probe: ServerProbe,
    life: _Lifetime,
    session: Session,
    wake: datetime,
    speed: float,
    why: str | None,
) -> bool:
    on_clock = f" on the x{speed:g} clock" if speed != 1 else ""
    reason = (
        f"{why + '; ' if why else ''}waiting for the session of {session.day} (opens "
        f"{session.open.astimezone(KST):%Y-%m-%d %H:%M} KST{on_clock}): starting at "
        f"{wake.astimezone(UTC).isoformat(timespec='seconds')}"
    )
    probe.trading_day = session.day
    health.show_session(session, wake_at=wake.astimezone(UTC), clock_speed=speed)
    health.enter(Phase.WAITING_FOR_SESSION, reason)
    while not life.stopped:
        left = (wake - datetime.now(UTC)).total_seconds()
        if left <= 0:
            return True
        await life.sleep(min(left, _MAX_NAP_S))
    return False


class _Lifetime:
    """Signals for the whole life of `run` (one receiver, so no gap leaves SIGTERM at its
    default): before a session's workers exist a signal cancels what is under way (waits,
    connecting, the schema gate); once they exist it asks each to stop gracefully."""

    def __init__(self, settings: Settings, health: ProcessHealth) -> None:
        self.settings = settings
        self.health = health
        self.stopped = False
        self._stop = anyio.Event()
        self._fleet: Sequence[Worker] = ()
        self._scopes: list[anyio.CancelScope] = []

    async def watch_signals(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            task_status.started()
            async for signum in signals:
                logger.warning("signal {} received: stopping gracefully",
                               signal.Signals(signum).name)  # fmt: skip
                self.stop()

    def stop(self) -> None:
        self.stopped = True
        self._stop.set()
        self.health.enter(Phase.STOPPING, "signal received")
        for scope in self._scopes:
            scope.cancel()
        for w in self._fleet:
            w.request_stop()

    def startup_scope(self) -> anyio.CancelScope:
        """A scope the next signal cancels, until `started` (the workers exist)."""
        scope = anyio.CancelScope()
        if self.stopped:
            scope.cancel()
        self._scopes.append(scope)
        return scope

    def started(self, fleet: Sequence[Worker], plan: Plan, _ledger: Any) -> None:
        """`run_fleet`'s on_started: the workers exist (not yet running)."""
        from worker.health import FleetHealth, stall_after_s

        self._scopes.clear()
        self._fleet = fleet
        self.health.fleet = FleetHealth(fleet, stall_after_s(self.settings, plan.clock.speed))
        if self.stopped:
            for w in fleet:
                w.request_stop()
            return
        self.health.enter(Phase.TRADING, f"trading the session of {plan.session.day}")

    def ended(self) -> None:
        self._scopes.clear()
        self._fleet = ()
        self.health.fleet = None
        if not self.stopped:
            self.health.enter(Phase.STOPPING, "the session ended")

    async def sleep(self, seconds: float) -> None:
        with anyio.move_on_after(seconds):
            await self._stop.wait()


def migrate(settings: Settings) -> int:
    from ledger.migrate import upgrade_head

    assert settings.database_url
    upgrade_head(settings.database_url)
    print("database is at the latest migration")
    return 0


_EXCHANGE_PORTS = {"real": (9443, 21000), "mock": (29443, 31000)}  # KIS's own, per domain


def exchange(
    settings: Settings, *, host: str, port: int | None, ws_port: int | None, domain: str
) -> int:
    """`python -m worker exchange`: serve until SIGTERM/SIGINT."""
    import secrets

    from exchange import ExchangeAccount, ExchangeConfig
    from exchange.server import RunningExchange, run_until_signalled
    from market.calendar import default_calendar
    from market.clock import RealClock
    from worker.app import MarketClosed, Plan, plan_session

    calendar = default_calendar()
    epoch = settings.paper_epoch.timestamp() if settings.paper_epoch else None
    try:
        plan = plan_session(settings, calendar, settings.paper_speed, epoch)
    except MarketClosed:  # real time, no session left today: serve the next one (closed now)
        today = datetime.now(KST).date()
        plan = Plan(calendar.next_session(today + timedelta(days=1)), RealClock())
    account = ExchangeAccount(
        app_key=settings.exchange_app_key or "PS" + secrets.token_urlsafe(26),
        app_secret=settings.exchange_app_secret or secrets.token_urlsafe(135),
        account=settings.exchange_account,
        hts_id=settings.exchange_hts_id,
        cash=settings.exchange_cash,
    )
    config = ExchangeConfig(
        accounts=(account,),
        domain="real" if domain == "real" else "mock",
        seed=settings.paper_seed,
        n_symbols=settings.paper_symbols,
        session=plan.session,
        rate_limit=settings.exchange_rate_limit,
        listing_lag_s=settings.exchange_listing_lag_s,
        ambiguous_rate=settings.exchange_ambiguous_rate,
        commission_rate=settings.commission_rate,
    )
    rest_port, ws_default = _EXCHANGE_PORTS[config.domain]

    def ready(running: RunningExchange) -> None:
        print(
            f"exchange rest={running.rest_url} ws={running.ws_url} domain={config.domain}",
            flush=True,
        )
        shown = "(EXCHANGE_APP_SECRET)" if settings.exchange_app_secret else account.app_secret
        print(
            f"credentials app_key={account.app_key} app_secret={shown} "
            f"account={account.account} hts_id={account.hts_id} cash={account.cash} "
            f"session={plan.session.day}",
            flush=True,
        )

    anyio.run(
        partial(
            run_until_signalled,
            config,
            plan.clock,
            host=host,
            port=rest_port if port is None else port,
            ws_port=ws_default if ws_port is None else ws_port,
            on_ready=ready,
        )
    )
    return 0
