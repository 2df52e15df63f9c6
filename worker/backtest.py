"""`python -m worker backtest`: the fleet's trading code over bar files, on virtual time.

Each session day of the data runs one in-process fleet (`worker.app.run_fleet`): the same
strategy and trading code, the real lock protocol in Redis and the real ledger schema in
Postgres, with the `broker.backtest.BarBroker` fill model over that day's bars as the venue
and a virtual clock, so a day takes as long as the work and the same data gives the same
ledger. Afterwards the ledger is read back: per-day and total figures (`ledger.stats`) and
the reconciliation of every day (summary = trades = fills, to the won).

Servers: embedded Postgres and Valkey (fresh, thrown away) unless DATABASE_URL / REDIS_URL
are set. With them, each run creates a fresh database ``backtest_<UTC time>_<hex>`` on that
server (kept, so `summary` and `report` can read it; its name goes to stderr) and uses a
fresh key prefix ``bt-<hex>`` whose keys it deletes at the end.

`run_backtest(...)` is the in-process entry point (`tune` calls it repeatedly).
"""

from __future__ import annotations

import contextlib
import json
import secrets
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
from loguru import logger
from sqlalchemy import text

from broker.backtest import BarBroker, FillModel
from ledger.db import create_engine
from ledger.records import TradeRecord
from ledger.repository import Ledger
from ledger.stats import DayInput, Figures, day_figures, total_figures
from market.bars import DayBars, load_bars
from market.calendar import default_calendar
from worker.app import Plan, cost_model
from worker.settings import ConfigError, Settings

#: the worker id stem of a backtest's workers (fixed, so two runs write the same ledger)
WORKER_STEM = "backtest"


@dataclass(frozen=True)
class DayResult:
    day: date
    figures: Figures
    summary_pnl: Decimal
    fills_pnl: Decimal
    symbol_minutes: int
    inputs: DayInput = field(repr=False)
    #: the virtual clock's account of the day: participant -> (turns, busy wall seconds)
    busy: Mapping[str, tuple[int, float]] = field(default_factory=dict, repr=False,
                                                   compare=False)  # fmt: skip

    @property
    def reconciled(self) -> bool:
        return self.summary_pnl == self.figures.pnl == self.fills_pnl


@dataclass(frozen=True)
class BacktestResult:
    """What a backtest measured; `as_dict` is exactly what `--json` prints."""

    data: str
    first: date
    last: date
    workers: int
    strategy: str
    days: tuple[DayResult, ...]
    total: Figures
    wall_s: float = field(compare=False)
    database_url: str | None = field(default=None, compare=False)

    @property
    def reconciled(self) -> bool:
        return all(d.reconciled for d in self.days)

    @property
    def symbol_minutes(self) -> int:
        return sum(d.symbol_minutes for d in self.days)

    def as_dict(self) -> dict[str, Any]:
        return {
            "data": self.data,
            "from": self.first.isoformat(),
            "to": self.last.isoformat(),
            "workers": self.workers,
            "strategy": self.strategy,
            "days": [
                {
                    "date": d.day.isoformat(),
                    **d.figures.as_dict(),
                    "summary_pnl": str(d.summary_pnl),
                    "fills_pnl": str(d.fills_pnl),
                    "reconciled": d.reconciled,
                }
                for d in self.days
            ],
            "total": self.total.as_dict(),
            "reconciled": self.reconciled,
        }


#: one bar: the quotes and the fill model of a backtest move a minute at a time
BAR_S = 60.0
#: the account reconciler's interval in a backtest unless RECONCILE_INTERVAL_S is given
RECONCILE_S = 1_800.0


def backtest_settings(settings: Settings, day: date, prefix: str) -> Settings:
    """The settings a backtest day runs on: the paper broker's planning for `day`, fixed
    worker ids, the run's key prefix, no health server, and HOLD checking at most once a bar.

    Within one bar every HOLD step sees the same quote (the last completed bar), a position's
    time rules turn at bar starts (it opened at a fill, and fills execute at bar starts and
    ends), and a sell placed after the bar's start is matched from the next bar on; so a
    second step in the same bar decides nothing the first did not, and hold intervals under a bar
    (HOLD_INTERVAL_S, VOL_SURGE_HOLD_S) are raised to one bar: one step in every bar, at the
    phase the position's HOLD began (a bar start when its buy was learned there).

    The account reconciler (broker account against the ledger) passes every `RECONCILE_S`
    unless RECONCILE_INTERVAL_S is given: the account is the fill model's own bookkeeping, a
    pass costs a dozen ledger reads, and in a consistent run it changes no trade.
    """
    reconcile_s = settings.reconcile_interval_s
    if "reconcile_interval_s" not in settings.model_fields_set:
        reconcile_s = max(reconcile_s, RECONCILE_S)
    return Settings.model_construct(
        **{
            **settings.model_dump(),
            "hold_interval_s": max(settings.hold_interval_s, BAR_S),
            "vol_surge_hold_s": max(settings.vol_surge_hold_s, BAR_S),
            "reconcile_interval_s": reconcile_s,
            "paper_day": day,
            "paper_speed": 60.0,  # planning only: the virtual clock replaces the clock
            "worker_id": WORKER_STEM,
            "fleet_prefix": prefix,
            "health_port": 0,
            "broker": "paper",
            "paper_venue": None,
        }
    )


async def run_days(
    settings: Settings,
    days: Sequence[DayBars],
    *,
    database_url: str,
    redis_url: str,
    workers: int,
    prefix: str,
    strategy: Any = None,
    model: FillModel | None = None,
) -> list[DayResult]:
    """Trade every day in order on one ledger; return each day's figures from the ledger."""
    from worker.app import run_fleet
    from worker.settings import strategy_of

    costs = cost_model(settings, default_calendar())
    results: list[DayResult] = []
    for bars in days:
        day_settings = backtest_settings(settings, bars.session.day, prefix)
        # the strategy given, so the fleet runs it on fixed parameters: the fleet's live
        # parameters (a Redis round trip every step) are not the backtest's to follow
        day_strategy = strategy if strategy is not None else strategy_of(day_settings)

        def venue(plan: Plan, bars: DayBars = bars) -> BarBroker:
            if plan.session != bars.session:
                raise AssertionError(f"planned {plan.session.day}, data for {bars.session.day}")
            return BarBroker(bars, plan.clock, model=model, costs=costs,
                             cash=settings.exchange_cash)  # fmt: skip

        logger.info("backtest day {}: {} symbols", bars.session.day, len(bars.symbols))
        plan = await run_fleet(
            day_settings,
            database_url=database_url,
            redis_url=redis_url,
            workers=workers,
            handle_signals=False,
            virtual=True,
            venue=venue,
            strategy=day_strategy,
        )
        result = await _read_day(database_url, settings, bars, workers)
        busy = getattr(plan.clock, "busy", None)
        results.append(replace(result, busy=busy()) if callable(busy) else result)
    return results


async def _read_day(
    database_url: str, settings: Settings, bars: DayBars, workers: int
) -> DayResult:
    day = bars.session.day
    engine = create_engine(database_url)
    try:
        ledger = Ledger(engine, cost_model(settings, default_calendar()))
        summary = await ledger.day_summary(day)
        fills_pnl = await ledger.recompute_from_fills(day)
        trades = await _trades(engine, day)
        async with engine.connect() as conn:
            forced = (
                await conn.execute(
                    text(
                        "SELECT coalesce(sum(shortfall_won), 0) FROM tuning_forced_exits"
                        " WHERE trading_day = :d"
                    ),
                    {"d": day},
                )
            ).scalar_one()
    finally:
        await engine.dispose()
    session_s = (bars.session.close - bars.session.open).total_seconds()
    inputs = DayInput(day, tuple(trades), session_s, workers, Decimal(forced))
    figures = day_figures(inputs)
    return DayResult(
        day=day,
        figures=figures,
        summary_pnl=summary.total.summary.pnl if summary is not None else Decimal(0),
        fills_pnl=fills_pnl,
        symbol_minutes=bars.symbol_minutes,
        inputs=inputs,
    )


async def _trades(engine: Any, day: date) -> list[TradeRecord]:
    from sqlalchemy import select
    from sqlalchemy.ext.asyncio import AsyncSession

    from ledger.convert import trade_record
    from ledger.models import Trade

    async with AsyncSession(engine) as s:
        rows = (
            await s.execute(select(Trade).where(Trade.trading_day == day).order_by(Trade.id))
        ).scalars()
        return [trade_record(t) for t in rows]


@contextlib.contextmanager
def servers(settings: Settings, *, keep: bool = True) -> Iterator[tuple[str, str, str]]:
    """(database URL, Redis URL, key prefix) for one run: embedded ones, or a fresh database
    and prefix on the configured servers (the database dropped at the end unless `keep`)."""
    from ledger.migrate import upgrade_head

    tag = secrets.token_hex(3)
    prefix = f"bt-{tag}"
    if settings.embedded:
        from worker.servers import embedded_postgres, embedded_redis

        with (
            embedded_postgres("tradefleet-backtest") as database_url,
            embedded_redis() as redis_url,
        ):
            upgrade_head(database_url)
            yield database_url, redis_url, prefix
        return
    if not settings.database_url or not settings.redis_url:
        missing = "DATABASE_URL" if not settings.database_url else "REDIS_URL"
        raise ConfigError(f"{missing}: set both DATABASE_URL and REDIS_URL, or neither "
                          "(embedded servers)")  # fmt: skip
    name = f"backtest_{datetime.now(UTC):%Y%m%d%H%M%S}_{tag}"
    database_url = _create_database(str(settings.database_url), name)
    upgrade_head(database_url)
    if keep:
        sys.stderr.write(f"backtest ledger: database {name}\n")
    try:
        yield database_url, str(settings.redis_url), prefix
    finally:
        _drop_keys(str(settings.redis_url), prefix)
        if not keep:
            _drop_database(str(settings.database_url), name)


def _create_database(url: str, name: str) -> str:
    from sqlalchemy.engine import make_url

    _outside_transaction(url, f'CREATE DATABASE "{name}"')
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def _drop_database(url: str, name: str) -> None:
    _outside_transaction(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _outside_transaction(url: str, statement: str) -> None:
    """Run one statement that Postgres refuses inside a transaction (CREATE/DROP DATABASE)."""
    from sqlalchemy import create_engine as sync_engine

    engine = sync_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(statement))
    finally:
        engine.dispose()


def _drop_keys(redis_url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for i in range(0, len(keys), 500):
            client.unlink(*keys[i : i + 500])
    finally:
        client.close()


def load_strategy(settings: Settings, spec: str | None, params: Mapping[str, Any] | None) -> Any:
    """The strategy `spec` names (None: the configured one) with `params` applied, or None
    when neither is given (run_fleet builds the configured one)."""
    if spec is None and not params:
        return None
    from worker.settings import strategy_of

    strategy = strategy_of(settings, spec=spec, setting="--strategy")
    if params:
        from strategy.base import ParamError

        try:
            strategy = strategy.with_params(**params)
        except ParamError as exc:
            raise ConfigError(str(exc)) from None
    return strategy


def run_backtest(
    data: Path | str,
    first: date | None = None,
    last: date | None = None,
    workers: int = 4,
    strategy_spec: str | None = None,
    params: Mapping[str, Any] | None = None,
    *,
    settings: Settings,
    report: Path | None = None,
    model: FillModel | None = None,
    days: Sequence[DayBars] | None = None,
    keep_database: bool = True,
) -> BacktestResult:
    """Load `data` (or take pre-loaded `days`, e.g. `load_bars` once for many runs), trade
    first..last on `workers` workers with the strategy `strategy_spec` (None: the configured
    one) and its parameters overridden by `params` (field name -> value), and return the
    figures. Raises `market.bars.BarDataError` on bad data and `ConfigError` on bad arguments
    or parameters. Safe to call repeatedly in one process: each call has its own ledger (a
    fresh embedded server, or a fresh database on DATABASE_URL's server, dropped at the end
    when not `keep_database`)."""
    started = time.monotonic()
    if workers < 1:
        raise ConfigError(f"--workers: must be >= 1, got {workers}")
    if first is not None and last is not None and first > last:
        raise ConfigError(f"--from: {first} is after --to {last}")
    if days is None:
        loaded = load_bars(Path(data), default_calendar(), first, last)
    else:
        loaded = [
            d for d in days
            if (first is None or d.session.day >= first) and (last is None or d.session.day <= last)
        ]  # fmt: skip
        if not loaded:
            raise ConfigError(f"--from: no session of the data falls in {first}..{last}")
    strategy = load_strategy(settings, strategy_spec, params)
    from strategy.loading import DEFAULT_SPEC

    spec = strategy_spec or settings.strategy or DEFAULT_SPEC
    with servers(settings, keep=keep_database) as (database_url, redis_url, prefix):
        results = anyio.run(
            _run_and_report, settings, loaded, database_url, redis_url, workers, prefix,
            strategy, model, report,
        )  # fmt: skip
        kept = None if settings.embedded or not keep_database else database_url
    return BacktestResult(
        data=str(data),
        first=loaded[0].session.day,
        last=loaded[-1].session.day,
        workers=workers,
        strategy=str(spec),
        days=tuple(results),
        total=total_figures([r.inputs for r in results]),
        wall_s=time.monotonic() - started,
        database_url=kept,
    )


async def _run_and_report(
    settings: Settings,
    loaded: Sequence[DayBars],
    database_url: str,
    redis_url: str,
    workers: int,
    prefix: str,
    strategy: Any,
    model: FillModel | None,
    report: Path | None,
) -> list[DayResult]:
    results = await run_days(
        settings, loaded, database_url=database_url, redis_url=redis_url, workers=workers,
        prefix=prefix, strategy=strategy, model=model,
    )  # fmt: skip
    if report is not None:
        days = [d.session.day for d in loaded]
        await write_report(database_url, days, report, f"backtest {days[0]}..{days[-1]}")
    return results


async def write_report(
    database_url: str, days: Sequence[date], out: Path, title: str | None = None
) -> None:
    """The HTML report of the run's days (`worker.report_html`)."""
    try:
        from worker.report_html import NoReportData
        from worker.report_html import write_report as build
    except ImportError:
        raise ConfigError("--report: the HTML report is not available in this build") from None
    try:
        await build(database_url, days, out, title=title)
    except NoReportData as exc:
        logger.warning("no report written: {}", exc)


# ----- rendering ------------------------------------------------------------------------


def render_table(result: BacktestResult) -> str:
    cols = (
        ("day", 10), ("trades", 6), ("win%", 6), ("PnL", 12), ("fees", 9), ("taxes", 9),
        ("avg win", 9), ("avg loss", 9), ("PF", 5), ("max DD", 10), ("Sharpe", 7),
        ("expo%", 6), ("forced", 9), ("rec", 3),
    )  # fmt: skip
    header = " ".join(f"{n:>{w}}" if i else f"{n:<{w}}" for i, (n, w) in enumerate(cols))
    rule = "-" * len(header)

    def row(name: str, f: Figures, rec: bool) -> str:
        def num(x: Decimal | None, fmt: str = ",.0f") -> str:
            return "-" if x is None else format(x, fmt)

        cells = (
            name, str(f.trades),
            "-" if f.win_rate is None else f"{f.win_rate * 100:.1f}",
            num(f.pnl, "+,.0f"), num(f.fees), num(f.taxes), num(f.avg_win, "+,.0f"),
            num(f.avg_loss, "+,.0f"), num(f.profit_factor, ".2f"), num(f.max_drawdown),
            num(f.sharpe, ".2f"), f"{f.exposure * 100:.1f}", num(f.forced_exit_cost),
            "ok" if rec else "NO",
        )  # fmt: skip
        return " ".join(
            f"{c:>{w}}" if i else f"{c:<{w}}"
            for i, (c, (_, w)) in enumerate(zip(cells, cols, strict=True))
        )

    lines = [
        f"backtest {result.data}: {result.first}..{result.last}, {len(result.days)} day(s), "
        f"{result.workers} worker(s), strategy {result.strategy}",
        "",
        header,
        rule,
        *(row(d.day.isoformat(), d.figures, d.reconciled) for d in result.days),
        rule,
        row("TOTAL", result.total, result.reconciled),
    ]
    return "\n".join(lines)


def backtest_command(
    settings: Settings,
    *,
    data: Path,
    first: date | None,
    last: date | None,
    workers: int,
    strategy: str | None,
    report: Path | None,
    as_json: bool,
) -> int:
    """The CLI verb: 0 when every day reconciles, 1 when one does not; bad data raises
    `BarDataError` (the CLI prints its one line and exits 2)."""
    result = run_backtest(data, first, last, workers, strategy, settings=settings, report=report)
    if as_json:
        sys.stdout.write(json.dumps(result.as_dict(), sort_keys=False) + "\n")
    else:
        sys.stdout.write(render_table(result) + "\n")
    sys.stderr.write(
        f"backtest: {result.symbol_minutes:,} symbol-minutes in {result.wall_s:.1f}s wall\n"
    )
    if report is not None:
        sys.stderr.write(f"report: {report}\n")
    if not result.reconciled:
        sys.stderr.write("backtest: the ledger does not reconcile (summary, trades, fills)\n")
        return 1
    return 0
