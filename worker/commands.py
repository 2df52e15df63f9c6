"""The CLI's commands against configured servers (`run`, `migrate`, `locks`, `workers`,
`summary`) and the `exchange`. Each returns the process exit code."""

from __future__ import annotations

import signal
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Any

import anyio
import orjson
from loguru import logger

from coordination.connection import connect
from coordination.keys import Keyspace
from coordination.locks import RedisSymbolLock
from coordination.registry import WorkerRegistry
from ledger.db import create_engine
from ledger.migrate import upgrade_head
from ledger.records import DaySummaryRecord
from ledger.repository import Ledger
from market.calendar import default_calendar
from market.clock import KST
from market.costs import CostModel
from worker.app import MarketClosed, next_wake, run_fleet
from worker.report import summary_dict, summary_table
from worker.settings import Settings

_WAKE_LEAD = timedelta(minutes=5)


def run(settings: Settings) -> int:
    anyio.run(_run, settings)
    return 0


async def _run(settings: Settings) -> None:
    """One session (or none, when the market is closed); with WAIT_FOR_SESSION, every session
    from now on, sleeping in between, until SIGTERM."""
    assert settings.database_url
    assert settings.redis_url
    forever = settings.wait_for_session and settings.paper_speed <= 1
    while True:
        signalled = anyio.Event()
        try:
            await run_fleet(settings, database_url=settings.database_url,
                            redis_url=settings.redis_url, signalled=signalled,
                            exclusive_paper=True)  # fmt: skip
        except MarketClosed as exc:
            logger.info("nothing to trade now: {}", exc)
        if not forever or signalled.is_set() or not await _sleep_until_next_session():
            return


async def _sleep_until_next_session() -> bool:
    """Sleep until shortly before the next KRX session; False if a signal came first."""
    wake = next_wake(datetime.now(KST), default_calendar(), _WAKE_LEAD)
    logger.info("sleeping until {} for the next session", wake)
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        with anyio.move_on_after(max(0.0, (wake - datetime.now(KST)).total_seconds())):
            async for signum in signals:
                logger.warning("signal {} while waiting: exiting", signal.Signals(signum).name)
                return False
    return True


def migrate(settings: Settings) -> int:
    assert settings.database_url
    upgrade_head(settings.database_url)
    print("database is at the latest migration")
    return 0


def locks(settings: Settings) -> int:
    rows = anyio.run(_locks, settings)
    if not rows:
        print("no live locks")
        return 0
    print(f"{'symbol':<8} {'worker_id':<38} {'fence':>7} {'ttl_ms':>7}  mirror")
    for r in rows:
        print(
            f"{r['symbol']:<8} {r['worker_id']:<38} {r['fence']:>7} {r['pttl_ms']:>7}  {r['drift']}"
        )
    return 0


async def _locks(settings: Settings) -> list[dict[str, Any]]:
    assert settings.redis_url
    redis = await connect(settings.redis_url)
    try:
        lock = RedisSymbolLock(redis, Keyspace(settings.fleet_prefix), "cli")
        live = await lock.live_locks()
    finally:
        await redis.aclose()
    mirror: dict[str, tuple[str, int]] = {}
    if settings.database_url:
        engine = create_engine(settings.database_url)
        try:
            ledger = Ledger(engine, CostModel())
            mirror = {m.symbol: (m.worker_id, m.fence) for m in await ledger.locks()}
        finally:
            await engine.dispose()
    rows: list[dict[str, Any]] = []
    for info in sorted(live, key=lambda i: i.symbol):
        seen = mirror.pop(info.symbol, None)
        if not settings.database_url:
            drift = "(no DATABASE_URL)"
        elif seen is None:
            drift = "MISSING in stock_locks"
        elif seen != (info.worker_id, info.fence):
            drift = f"DRIFT: mirror has {seen[0]}:{seen[1]}"
        else:
            drift = "ok"
        rows.append(
            {
                "symbol": info.symbol,
                "worker_id": info.worker_id,
                "fence": info.fence,
                "pttl_ms": info.pttl_ms,
                "drift": drift,
            }
        )
    for symbol, (worker_id, fence) in sorted(mirror.items()):
        rows.append(
            {
                "symbol": symbol,
                "worker_id": worker_id,
                "fence": fence,
                "pttl_ms": -2,
                "drift": "STALE in stock_locks (no Redis lock)",
            }
        )
    return rows


def workers(settings: Settings) -> int:
    infos = anyio.run(_workers, settings)
    if not infos:
        print("no registered workers")
        return 0
    now = datetime.now(UTC)
    print(f"{'worker_id':<38} {'state':<5} {'symbol':<8} {'heartbeat':>10}  pid@host")
    for w in infos:
        age = (now - w.heartbeat_at).total_seconds() if w.heartbeat_at else None
        stale = age is None or age * 1000 > settings.worker_ttl_ms / 2
        shown = "-" if age is None else f"{age:.1f}s"
        flag = "  STALE" if stale else ""
        print(
            f"{w.worker_id:<38} {w.state:<5} {w.symbol or '-':<8} {shown:>10}  "
            f"{w.pid}@{w.host}{flag}"
        )
    return 0


async def _workers(settings: Settings) -> list[Any]:
    assert settings.redis_url
    redis = await connect(settings.redis_url)
    try:
        registry = WorkerRegistry(redis, Keyspace(settings.fleet_prefix), settings.worker_ttl_ms)
        return sorted(await registry.list_workers(), key=lambda w: w.worker_id)
    finally:
        await redis.aclose()


def summary(settings: Settings, day: date, *, as_json: bool) -> int:
    found = anyio.run(_summary, settings, day)
    if found is None:
        print(f"no trades recorded for {day}")
        return 0
    record, from_fills = found
    if as_json:
        data = summary_dict(record, from_fills)
        print(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
        return 0
    check = "matches" if from_fills == record.total.summary.pnl else "DOES NOT MATCH"
    print(
        f"daily summary {day}\n\n{summary_table(record)}\n\n"
        f"PnL recomputed from fills: {from_fills:+,.0f} won ({check} the summary)"
    )
    return 0


async def _summary(settings: Settings, day: date) -> tuple[DaySummaryRecord, Decimal] | None:
    assert settings.database_url
    engine = create_engine(settings.database_url)
    try:
        ledger = Ledger(engine, CostModel(commission_rate=settings.commission_rate))
        record = await ledger.summarize_day(day)
        if record.total.summary.trades_count == 0:
            return None
        return record, await ledger.recompute_from_fills(day)
    finally:
        await engine.dispose()


_EXCHANGE_PORTS = {"real": (9443, 21000), "mock": (29443, 31000)}  # KIS's own, per domain


def exchange(
    settings: Settings, *, host: str, port: int | None, ws_port: int | None, domain: str
) -> int:
    """`python -m worker exchange`: serve until SIGTERM/SIGINT."""
    import secrets

    from exchange import ExchangeAccount, ExchangeConfig
    from exchange.server import RunningExchange, run_until_signalled
    from market.clock import RealClock
    from worker.app import Plan, plan_session

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
