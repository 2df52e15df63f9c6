"""The CLI's commands that run things: `run`, `migrate` and the `exchange`. Each returns the
process exit code. The read-only inspection commands are in `worker.inspect`."""

from __future__ import annotations

import signal
from datetime import datetime, timedelta
from functools import partial

import anyio
from loguru import logger

from ledger.migrate import upgrade_head
from market.calendar import default_calendar
from market.clock import KST
from worker.app import MarketClosed, next_wake, run_fleet
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
