"""Wiring: settings -> servers, clock, market, broker, ledger, coordination -> workers.

`run_fleet` runs one or more workers in this process against the given servers;
`python -m worker run` uses it with one worker, the embedded default with several.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Coroutine, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
import redis.asyncio as aioredis
from anyio.abc import TaskGroup
from loguru import logger
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.port import Broker, MarketData
from coordination.connection import connect
from coordination.fences import FenceSeeder
from coordination.keys import Keyspace
from coordination.locks import RedisSymbolLock
from coordination.notices import Notices
from coordination.params import RedisParams
from coordination.reaper import LeaseReaper
from coordination.registry import WorkerRegistry
from coordination.singleton import RedisSingleton
from ledger.db import create_engine, wait_ready
from ledger.repository import Ledger
from market.calendar import KrxCalendar, Session, default_calendar
from market.clock import KST, Clock, RealClock, SimClock
from market.costs import CostModel
from market.types import Board, Instrument
from market.vclock import Participant, VirtualClock
from strategy import Strategy
from trading.config import TradingConfig
from trading.deps import Deps
from trading.live import FIXED_PARAMS, ParamSource
from trading.loop import Worker
from trading.reconcile import LEASE_NAME, AccountReconciler, ReconcileConfig, run_exclusive
from worker.alerts import FleetAlerts
from worker.health import (
    FleetHealth,
    HealthServer,
    Phase,
    ProcessHealth,
    probe_stall_s,
    stall_after_s,
)
from worker.metrics import FleetMetrics, PrometheusAccountMetrics
from worker.mirror import LockMirror
from worker.params import FleetParams, republish
from worker.reaper import run_reaper
from worker.settings import ConfigError, Settings, kis_config, strategy_of

if TYPE_CHECKING:  # imported lazily: each venue's code only on its own path (memory)
    from broker.backtest import BarBroker
    from broker.kis import KisBroker


class WorkerFailed(RuntimeError):
    """A worker of the fleet stopped on an error its siblings survived."""


class MarketClosed(Exception):
    """No session to trade today (holiday, weekend, or already closed)."""


@dataclass(frozen=True)
class Plan:
    session: Session
    clock: Clock


def plan_session(
    settings: Settings,
    calendar: KrxCalendar,
    speed: float,
    epoch: float | None,
    *,
    virtual: bool = False,
) -> Plan:
    """Which session to trade and on which clock.

    Real time (speed 1): today's KRX session, if any. Simulated (speed > 1): PAPER_DAY, or today
    when it is a session day, else the next session; the session opens at the epoch.
    `virtual`: the simulated day's session on a `VirtualClock` at its open (speed and epoch do
    not apply).
    """
    if virtual and (settings.broker == "kis" or settings.paper_venue):
        raise ConfigError("BROKER: virtual time needs the in-process paper broker "
                          "(BROKER=paper, no PAPER_VENUE)")  # fmt: skip
    today = datetime.now(KST).date()
    if speed <= 1 and not virtual:
        session = calendar.session(today)
        if session is None:
            raise MarketClosed(f"{today} is not a KRX session day")
        if datetime.now(KST) >= session.close:
            raise MarketClosed(f"today's session closed at {session.close:%H:%M} KST")
        return Plan(session, RealClock())
    day: date = settings.paper_day or today
    found = calendar.session(day)
    session = found if found is not None else calendar.next_session(day)
    if virtual:
        return Plan(session, VirtualClock(session.open))
    return Plan(session, SimClock(session.open, speed, epoch))


def cost_model(settings: Settings, calendar: KrxCalendar) -> CostModel:
    return CostModel(
        commission_rate=settings.commission_rate, settlement_of=calendar.settlement_day
    )


async def run_fleet(
    settings: Settings,
    *,
    database_url: str,
    redis_url: str,
    workers: int = 1,
    speed: float | None = None,
    epoch: float | None = None,
    on_started: Callable[[Sequence[Worker], Plan, Ledger], None] | None = None,
    handle_signals: bool = True,
    signalled: anyio.Event | None = None,
    clock_factory: Callable[[Plan], Clock] | None = None,
    exclusive_paper: bool = False,
    metrics: FleetMetrics | None = None,
    virtual: bool = False,
    venue: Callable[[Plan], BarBroker] | None = None,
    strategy: Strategy[Any] | None = None,
) -> Plan:
    """Run `workers` workers in this process for one session; return the session plan.

    `clock_factory`, if given, replaces the planned clock (e.g. an instrumented wrapper of
    `plan.clock`, as bench/day.py uses to measure how late the workers wake).
    `exclusive_paper` (`python -m worker run`): on the in-process paper broker, refuse to start
    while other workers are registered in the fleet, since adoption must never meet an order
    it cannot see (`PAPER_VENUE` is the shared venue for a fleet of processes).
    `metrics`, if given, is the caller's registry, which the caller serves (`python -m worker
    run` serves health and metrics for the whole process lifetime); otherwise the fleet has a
    registry of its own and, with HEALTH_PORT, serves it while the session runs.
    `virtual` (the embedded default, backtests): the session on a `VirtualClock`
    (`market.vclock`), which moves to the next wake-up once every worker, order tracker and the
    reconciler waits on it, opens once all of them are in place, and orders same-instant turns
    by name, so the same seed and settings give the same ledger. A `clock_factory` returning a
    `VirtualClock` is run the same way. Only with the in-process paper broker.
    `venue`, if given, builds the session's broker and market data (`python -m worker
    backtest`: a `BarBroker` over the day's bars) instead of the settings' paper or KIS venue;
    `strategy`, if given, replaces the one the settings name (a backtest's or tuner's).
    """
    calendar = default_calendar()
    speed = settings.paper_speed if speed is None else speed
    if settings.broker == "kis" and not settings.kis_on_exchange:
        speed = 1.0  # a real account trades the real session in real time
    if epoch is None and settings.paper_epoch is not None:
        epoch = settings.paper_epoch.timestamp()
    plan = plan_session(settings, calendar, speed, epoch, virtual=virtual)
    if clock_factory is not None:
        plan = Plan(plan.session, clock_factory(plan))
    costs = cost_model(settings, calendar)
    await wait_ready(database_url, attempts=settings.connect_attempts, backoff_s=0.5)
    async with AsyncExitStack() as stack:
        redis = await connect(redis_url, attempts=settings.connect_attempts)
        stack.push_async_callback(redis.aclose)
        engine = create_engine(database_url)
        stack.push_async_callback(engine.dispose)
        ledger = Ledger(engine, costs)
        keys = Keyspace(settings.fleet_prefix)
        serve_health = metrics is None and settings.health_port > 0
        metrics = FleetMetrics() if metrics is None else metrics
        bad_data = metrics.bad_redis_data
        notices = Notices(redis, keys, maxlen=settings.events_maxlen, on_bad_data=bad_data)
        # Fence counters lost in a Redis restart are reseeded from the ledger before anyone
        # here acquires; the reaper loop repeats the check every pass.
        seeder = FenceSeeder(redis, keys, on_bad_data=bad_data)
        await seeder.ensure(ledger.max_fences)
        reaper = LeaseReaper(redis, keys, settings.events_maxlen, on_bad_data=bad_data)
        mirror = LockMirror(notices, ledger, settings.worker_id, reaper=reaper)
        # the live parameters: the ledger's set published again if Redis lost it (a restart)
        live_params = RedisParams(redis, keys, on_bad_data=bad_data)
        await republish(await ledger.live_params(), live_params)
        alerts = FleetAlerts.build(settings, redis, keys, notices, metrics.registry)
        broker, market_data, instruments = await _venue(settings, redis, keys, plan, stack,
                                                        exclusive_paper, venue)  # fmt: skip
        boards = {i.symbol: i.board for i in instruments}
        tiers = {i.symbol: i.tier for i in instruments}
        # live parameters apply to the settings' strategy, not to a backtest's or tuner's
        follow_params = strategy is None
        if strategy is None:
            strategy = strategy_of(settings)  # one value shared by the fleet
        fleet: list[Worker] = []
        for n in range(workers):
            ws = settings if workers == 1 else replace_id(settings, n)
            lock = RedisSymbolLock(redis, keys, ws.worker_id, ttl_ms=ws.lock_ttl_ms,
                                   on_bad_data=bad_data,
                                   reseed_fence=seeder.reseeder(ledger.max_fences))  # fmt: skip
            config = trading_config(ws, strategy)
            params: ParamSource = FIXED_PARAMS
            if follow_params:
                params = FleetParams(live_params, ws, trading_config)
                config = await params.load(config)
            deps = Deps(
                config=config,
                clock=plan.clock,
                session=plan.session,
                broker=broker,
                market=market_data,
                ledger=ledger,
                lock=lock,
                registry=WorkerRegistry(redis, keys, ttl_ms=ws.worker_ttl_ms),
                notices=notices,
                costs=costs,
                boards=boards,
                tiers=tiers,
                fences=seeder,
                metrics=metrics.for_worker(ws.worker_id, plan.clock.speed),
                params=params,
            )
            fleet.append(Worker(deps))
        logger.info(
            "session {} {}-{} KST, clock {}, {} worker(s), {} symbols",
            plan.session.day,
            f"{plan.session.open:%H:%M}",
            f"{plan.session.close:%H:%M}",
            _clock_name(plan.clock, speed),
            workers,
            len(instruments),
        )
        if on_started is not None:
            on_started(fleet, plan, ledger)
        async with anyio.create_task_group() as tg:
            if handle_signals:
                tg.start_soon(_stop_on_signal, fleet, tg.cancel_scope, signalled)
            if serve_health:
                # Bound before the workers start, closed with tg once they finish.
                await _serve_health(tg, settings, fleet, plan, metrics, redis, engine)
            # One reaper and one mirror per process; cancelled with tg once the workers finish.
            tg.start_soon(mirror.run)
            # One alert sender per fleet (a lease); this process announces its workers' crashes.
            tg.start_soon(alerts.run)
            tg.start_soon(alerts.watch_crashes, fleet)
            # One account reconciler per fleet: every process stands by for its lease.
            lease, reconciler = reconciliation(settings, redis, keys, broker, ledger, notices,
                                               plan, boards, metrics)  # fmt: skip
            reconcile, runs = _bodies(plan.clock, fleet, partial(run_exclusive, lease, reconciler))
            tg.start_soon(reconcile)
            tg.start_soon(
                partial(
                    run_reaper,
                    reaper,
                    ledger,
                    settings.heartbeat_s,
                    seeder=seeder,
                    max_fences=ledger.max_fences,
                    # mirror rows are heartbeaten every heartbeat; well past the TTL they are
                    # leases nobody can reap in Redis any more
                    stale_after_s=3 * settings.lock_ttl_ms / 1000 + 2 * settings.heartbeat_s,
                )
            )
            # Each worker catches its own failure (`Worker.crashed`): one never cancels another.
            async with anyio.create_task_group() as workers_tg:
                for run in runs:
                    workers_tg.start_soon(run)
            await alerts.close_day(ledger, plan.session, plan.clock, fleet)
            tg.cancel_scope.cancel()
        await ledger.summarize_day(plan.session.day)
    crashed = [w for w in fleet if w.crashed is not None]
    if crashed:
        first = crashed[0]
        raise WorkerFailed(f"{len(crashed)} of {len(fleet)} worker(s) failed; {first.id}: "
                           f"{first.crashed!r}")  # fmt: skip
    return plan


_Body = Callable[[], Coroutine[Any, Any, None]]


def _clock_name(clock: Clock, speed: float) -> str:
    return "virtual" if isinstance(clock, VirtualClock) else f"x{speed:g}"


def _bodies(clock: Clock, fleet: Sequence[Worker], reconcile: _Body) -> tuple[_Body, list[_Body]]:
    """The reconciler's and the workers' task bodies. On a `VirtualClock` each is a participant,
    all registered here, before any of them runs, so time waits for every one of them."""
    if not isinstance(clock, VirtualClock):
        return reconcile, [w.run for w in fleet]
    runs = [_participating(clock.participant(w.id), w.run) for w in fleet]
    reconciler = _participating(clock.participant("reconciler"), reconcile)
    clock.start()
    return reconciler, runs


def _participating(participant: Participant, body: _Body) -> _Body:
    async def run() -> None:
        with participant.bound():
            await body()

    return run


async def _serve_health(
    tg: TaskGroup,
    settings: Settings,
    fleet: Sequence[Worker],
    plan: Plan,
    metrics: FleetMetrics,
    redis: aioredis.Redis,
    engine: AsyncEngine,
) -> None:
    """/livez, /readyz and /metrics for this session's fleet, probing its own servers."""
    from worker.probe import ServerProbe

    health = ProcessHealth(probe_stall_s())
    health.fleet = FleetHealth(fleet, stall_after_s(settings, plan.clock.speed))
    health.show_session(plan.session)
    health.enter(Phase.TRADING, f"trading the session of {plan.session.day}")
    probe = ServerProbe(health, metrics, redis, engine, settings.daily_loss_limit,
                        trading_day=plan.session.day)  # fmt: skip
    await tg.start(probe.run)
    await tg.start(HealthServer(health, metrics).serve, settings.health_host, settings.health_port)


def kis_broker(settings: Settings, redis: aioredis.Redis, clock: Clock) -> KisBroker:
    """`KisBroker` for BROKER=kis: every request goes through the fleet's active KIS gateway
    (`python -m worker gateway`, found through the lease key in `redis`), which holds the
    token, the secret and the request budget; this worker holds neither.

    Only its orders are used (`_venue`): market data and fill notices come from what the
    gateway publishes in Redis (`broker.kis.fanout`, read by `broker.kis.feed`).
    """
    from broker.kis import KisBroker, KisClient
    from broker.kis.client import GatewayRoute
    from broker.kis.keys import KisKeys
    from broker.kis.market import DEFAULT_UNIVERSE

    config = kis_config(settings)  # no secret: the gateway's alone
    keys = KisKeys(settings.fleet_prefix, config.domain, config.app_key)
    route = GatewayRoute(redis, keys, settings.worker_id)
    client = KisClient(config, redis, settings.fleet_prefix, clock=clock, route=route)
    universe = DEFAULT_UNIVERSE if settings.kis_domain == "mock" else None
    return KisBroker(client, clock, universe=universe)


async def _venue(
    settings: Settings,
    redis: aioredis.Redis,
    keys: Keyspace,
    plan: Plan,
    stack: AsyncExitStack,
    exclusive_paper: bool,
    bars_venue: Callable[[Plan], BarBroker] | None = None,
) -> tuple[Broker, MarketData, list[Instrument]]:
    """Where orders go, where market data comes from, and the day's universe."""
    if bars_venue is not None:  # a backtest: orders and market data over the day's bars
        bars = bars_venue(plan)
        return bars, bars, list(await bars.instruments())
    if settings.broker == "kis":
        # orders through the gateway's relay; market data and fill notices from what the
        # gateway publishes in Redis: no quotation request, no WebSocket, no snapshot cache here
        from broker.kis.feed import GatewayFills, GatewayMarketData, HintedBroker
        from broker.kis.keys import KisKeys

        kis = kis_broker(settings, redis, plan.clock)
        stack.push_async_callback(kis.client.aclose)
        kis_keys = KisKeys(settings.fleet_prefix, settings.kis_domain, kis.client.config.app_key)
        feed = GatewayMarketData(redis, kis_keys, plan.clock)
        instruments = list(await feed.instruments())
        if feed.n_bars < settings.n_bars:
            raise ConfigError(f"N_BARS: the KIS gateway publishes {feed.n_bars} minute bars, "
                              f"this worker wants {settings.n_bars}")  # fmt: skip
        return HintedBroker(kis, GatewayFills(redis, kis_keys)), feed, instruments
    # the simulator (numpy.random, the day's arrays) only for the paper venue: a KIS worker
    # never imports it
    from broker.paper import PaperBroker
    from market.sim import SimulatedMarket

    market = SimulatedMarket(settings.paper_seed, plan.session, settings.paper_symbols)
    # the account's cash moves with fees and taxes, so the reconciliation can check it
    paper = PaperBroker(market, plan.clock, costs=cost_model(settings, default_calendar()),
                        cash=settings.exchange_cash)  # fmt: skip
    if settings.paper_venue:
        # orders and fills through the fleet's one venue; market data from the local simulation
        # of the same seed and clock, which the venue runs too
        venue = venue_broker(settings, redis, plan.clock)
        stack.push_async_callback(venue.client.aclose)
        return venue, paper, list(market.instruments)
    if exclusive_paper:
        await _refuse_beside_others(redis, keys, settings.worker_id)
    return paper, paper, list(market.instruments)


class SharedVenueRequired(RuntimeError):
    """Other workers are registered and this one would trade on a private paper broker."""


async def _refuse_beside_others(redis: aioredis.Redis, keys: Keyspace, worker_id: str) -> None:
    registered = await WorkerRegistry(redis, keys, ttl_ms=1_000).list_workers()
    others = [w for w in registered if w.worker_id != worker_id]
    if others:
        raise SharedVenueRequired(
            f"{len(others)} other worker(s) registered in this fleet (e.g. {others[0].worker_id})"
            " and this one would trade on an in-process paper broker they cannot see: start"
            " 'python -m worker exchange' and set PAPER_VENUE to its URL on every worker"
        )


def venue_broker(settings: Settings, redis: aioredis.Redis, clock: Clock) -> KisBroker:
    """The KIS adapter pointed at the fleet's exchange (`PAPER_VENUE`), with the credentials
    the exchange accepts (`EXCHANGE_*`). A paper venue runs without a rate limit
    (`EXCHANGE_RATE_LIMIT=0`), so the client's own budget is generous unless set."""
    from broker.kis import KisBroker, KisClient, KisConfig

    if not settings.exchange_app_key or not settings.exchange_app_secret:
        raise ConfigError("EXCHANGE_APP_KEY: required with PAPER_VENUE (with EXCHANGE_APP_SECRET)")
    try:
        config = KisConfig(
            app_key=settings.exchange_app_key,
            app_secret=settings.exchange_app_secret,
            account=settings.exchange_account,
            domain=settings.kis_domain,
            base_url=settings.paper_venue,
            hts_id=settings.exchange_hts_id,
            rate_per_s=settings.kis_rate_per_s or VENUE_RATE_PER_S,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return KisBroker(KisClient(config, redis, settings.fleet_prefix, clock=clock), clock)


def reconciliation(
    settings: Settings,
    redis: aioredis.Redis,
    keys: Keyspace,
    broker: Broker,
    ledger: Ledger,
    notices: Notices,
    plan: Plan,
    boards: dict[str, Board],
    metrics: FleetMetrics,
) -> tuple[RedisSingleton, AccountReconciler]:
    """The fleet's account reconciler and the lease it runs under (`trading.reconcile`)."""
    lease = RedisSingleton(redis, keys, LEASE_NAME, settings.worker_id,
                           ttl_ms=settings.lock_ttl_ms)  # fmt: skip
    reconciler = AccountReconciler(
        reconciler_id=settings.worker_id, broker=broker, ledger=ledger, notices=notices,
        clock=plan.clock, session=plan.session, boards=boards,
        # a report the ledger lacks is the owner's, or its adopter's (within a lock TTL of
        # wall time), well past the point where either would have applied it
        config=ReconcileConfig(
            interval_s=settings.reconcile_interval_s,
            catch_up_after_s=max(600.0, 10 * settings.lock_ttl_ms / 1000 * plan.clock.speed),
        ),
        metrics=PrometheusAccountMetrics.for_fleet(metrics),
    )  # fmt: skip
    return lease, reconciler


#: the client-side request budget toward a paper venue (which normally has no limit)
VENUE_RATE_PER_S = 500.0


def trading_config(s: Settings, strategy: Strategy[Any] | None = None) -> TradingConfig:
    """The trading core's parameters from the settings (settings flow down, never up);
    `strategy` defaults to the one the settings name (`strategy_of`)."""
    return TradingConfig(
        worker_id=s.worker_id,
        capital_limit=s.capital_limit,
        daily_loss_limit=s.daily_loss_limit,
        scan_interval_s=s.scan_interval_s,
        hold_interval_s=s.hold_interval_s,
        tick_stops=s.tick_stops,
        vol_surge_ratio=s.vol_surge_ratio,
        vol_surge_hold_s=s.vol_surge_hold_s,
        order_poll_s=s.order_poll_s,
        order_timeout_s=s.order_timeout_s,
        heartbeat_s=s.heartbeat_s,
        n_bars=s.n_bars,
        liquidation_lead_min=s.liquidation_lead_min,
        thin_liquidation_lead_min=s.thin_liquidation_lead_min,
        listing_lag_s=s.listing_lag_s,
        strategy=strategy if strategy is not None else strategy_of(s),
    )


def replace_id(settings: Settings, n: int) -> Settings:
    return Settings.model_construct(
        settings.model_fields_set | {"worker_id"},
        **{**settings.model_dump(), "worker_id": f"{settings.worker_id[:8]}-w{n + 1}"},
    )


async def _stop_on_signal(
    fleet: Sequence[Worker], scope: anyio.CancelScope, signalled: anyio.Event | None = None
) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            logger.warning("signal {} received: stopping gracefully", signal.Signals(signum).name)
            if signalled is not None:
                signalled.set()
            for w in fleet:
                w.request_stop()


def next_wake(now: datetime, calendar: KrxCalendar, lead: timedelta) -> datetime:
    """When a long-running worker should wake for the next session: `lead` before its open.

    The session of `now`'s day counts while it has not closed yet."""
    today = now.astimezone(KST).date()
    session = calendar.next_session(today)
    if session.close <= now:
        session = calendar.next_session(today + timedelta(days=1))
    return session.open - lead


def epoch_soon(lead_s: float = 0.5) -> float:
    return time.time() + lead_s


__all__ = ["MarketClosed", "Plan", "WorkerFailed", "plan_session", "run_fleet"]
