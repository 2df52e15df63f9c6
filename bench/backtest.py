"""Backtest throughput: the whole simulated market for one day through `python -m worker backtest`.

    python bench/backtest.py [--symbols 2500] [--workers 10] [--no-embedded-day]

Generates one simulated session of `--symbols` symbols (seed 0, 2026-03-10) as a Parquet bar
file (`market.bars.write_simulated_parquet`), then runs `worker.backtest.run_backtest` over it
with `--workers` workers against the servers of DATABASE_URL / REDIS_URL (embedded ones when
unset; with them, on a fresh database dropped afterwards). Prints, one `name=value` a line:

* ``backtest_minutes_per_s``: symbol-minutes of data (symbols x continuous-session minutes)
  per wall second of the whole backtest (loading and checking the file, the day on virtual
  time, reading the figures back); the goal is >= 200,000.
* ``backtest_load_s``: of which reading and checking the file; ``backtest_wall_s``: the whole.
* ``backtest_trades``, ``backtest_pnl``, ``backtest_reconciled``: the run's result.
* ``backtest_statements``: SQL statements the run sent to Postgres (every engine's cursor
  executions: workers, trackers, reconciler, mirror, the figures read back).
* the baseline, measured in the same run on the same server (with DATABASE_URL set; the
  embedded servers are gone by then): ``statement_us_sqlalchemy`` is one single-row read of an
  order by client order id through the ledger's engine (`ledger.db.create_engine`, Core, outside
  a transaction), ``statement_us_psycopg`` the same compiled SQL on one bare psycopg connection;
  ``backtest_statement_share`` is statements x the first over the wall time: the part of the
  run that is the ledger's statements at that price. Where this host is faster or slower these
  move together, so the share and the ratio of the two costs compare across hosts where
  ``backtest_minutes_per_s`` does not.
* ``embedded_day_s`` (unless --no-embedded-day): the demo's day on virtual time, from
  bench/embedded_day.py.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loguru import logger

from market.bars import load_bars, write_simulated_parquet
from market.calendar import default_calendar
from market.sim import SimulatedMarket
from worker.backtest import run_backtest
from worker.settings import load_settings

DAY = date(2026, 3, 10)


def emit(name: str, value: object) -> None:
    print(f"{name}={value:.3f}" if isinstance(value, float) else f"{name}={value}", flush=True)


def _drop(server_url: str, database_url: str) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    name = make_url(database_url).database
    libpq = make_url(server_url).set(drivername="postgresql").render_as_string(False)
    with psycopg.connect(libpq, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def count_statements() -> list[int]:
    """A one-element counter of every statement any SQLAlchemy engine sends from now on."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    count = [0]

    def seen(*_: object) -> None:
        count[0] += 1

    event.listen(Engine, "before_cursor_execute", seen)
    return count


async def statement_costs(database_url: str, reads: int = 2_000) -> tuple[float, float]:
    """Microseconds of one single-row read through the ledger's engine, and of the same SQL
    on a bare psycopg connection (a baseline of this host and server)."""
    import psycopg
    from sqlalchemy import select
    from sqlalchemy.dialects.postgresql import psycopg as pg_dialect

    from bench._procs import libpq_url
    from ledger.db import create_engine
    from ledger.models import Order

    table = Order.__table__
    stmt = select(table).where(table.c.client_order_id == "bench-none")
    engine = create_engine(database_url).execution_options(isolation_level="AUTOCOMMIT")
    try:

        async def through_engine() -> None:
            async with engine.connect() as conn:
                (await conn.execute(stmt)).one_or_none()

        sa_us = await _per_call_us(through_engine, reads)
    finally:
        await engine.dispose()
    compiled = stmt.compile(dialect=pg_dialect.dialect())
    async with await psycopg.AsyncConnection.connect(
        libpq_url(database_url), autocommit=True
    ) as conn:

        async def bare() -> None:
            await (await conn.execute(str(compiled), compiled.params)).fetchone()

        raw_us = await _per_call_us(bare, reads)
    return sa_us, raw_us


async def _per_call_us(call: Callable[[], Awaitable[None]], n: int) -> float:
    for _ in range(n // 10):  # warm: pool, prepared statements, caches
        await call()
    started = time.perf_counter()
    for _ in range(n):
        await call()
    return (time.perf_counter() - started) / n * 1e6


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--symbols", type=int, default=2_500)
    p.add_argument("--workers", type=int, default=10)
    p.add_argument("--no-embedded-day", action="store_true")
    args = p.parse_args(argv)
    logger.remove()
    logger.add(sys.stderr, level=os.environ.get("LOG_LEVEL", "ERROR"))
    calendar = default_calendar()
    session = calendar.session(DAY)
    assert session is not None
    settings = load_settings()
    with tempfile.TemporaryDirectory(prefix="tf-bench-bars-") as folder:
        path = Path(folder) / f"{DAY}.parquet"
        write_simulated_parquet(SimulatedMarket(0, session, args.symbols), path)
        statements = count_statements()
        started = time.monotonic()
        days = load_bars(path, calendar)
        load_s = time.monotonic() - started
        result = run_backtest(path, workers=args.workers, settings=settings, days=days)
        wall = time.monotonic() - started
    sent = statements[0]
    costs = None
    if result.database_url is not None and settings.database_url:
        import anyio

        costs = anyio.run(statement_costs, result.database_url)
        _drop(str(settings.database_url), result.database_url)
    emit("backtest_symbols", args.symbols)
    emit("backtest_workers", args.workers)
    emit("backtest_symbol_minutes", result.symbol_minutes)
    emit("backtest_trades", result.total.trades)
    emit("backtest_pnl", result.total.pnl)
    emit("backtest_reconciled", int(result.reconciled))
    emit("backtest_load_s", load_s)
    emit("backtest_wall_s", wall)
    emit("backtest_minutes_per_s", result.symbol_minutes / wall)
    emit("backtest_statements", sent)
    if costs is not None:
        sa_us, raw_us = costs
        emit("statement_us_sqlalchemy", sa_us)
        emit("statement_us_psycopg", raw_us)
        emit("backtest_statement_share", sent * sa_us / 1e6 / wall)
    # where the wall time went: participants' busy time by role (worker, tracker, reconciler)
    roles: dict[str, list[float]] = {}
    for day in result.days:
        for name, (turns, busy) in day.busy.items():
            role = name.rsplit("/", 1)[1] if "/" in name else (
                "worker" if name != "reconciler" else name)  # fmt: skip
            acc = roles.setdefault(role, [0, 0.0])
            acc[0] += turns
            acc[1] += busy
    for role, (turns, busy) in sorted(roles.items()):
        emit(f"backtest_{role}_turns", int(turns))
        emit(f"backtest_{role}_busy_s", busy)
    if not args.no_embedded_day:
        import anyio

        from bench._procs import fresh_database
        from bench.embedded_day import embedded_day_s, servers

        with servers() as (server_url, redis_url):
            day_settings = load_settings(database_url=server_url, redis_url=redis_url)
            with fresh_database(server_url) as url:
                day_s, _ = anyio.run(embedded_day_s, day_settings, url, redis_url)
        emit("embedded_day_s", day_s)


if __name__ == "__main__":
    main()
