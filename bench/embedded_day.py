"""The demo's day (`python -m worker`) on virtual time, and on the wall-driven clock it used before.

    python bench/embedded_day.py [--no-before]

The embedded default's settings (EMBEDDED_WORKERS workers, PAPER_SYMBOLS symbols, the default
seed; environment overrides apply) over one session, in this process, against the servers of
DATABASE_URL / REDIS_URL (the embedded PostgreSQL and Valkey when unset), each run on a fresh
database and key prefix. Prints, one `name=value` a line:

* ``embedded_day_s``: wall seconds of `run_fleet(virtual=True)` from the call to its return
  (setup and the day's summary included); the goal is <= 10.
* ``embedded_day_turns``, ``embedded_day_jumps``: participants released and clock moves.
* ``embedded_day_trades``, ``embedded_day_pnl``: the day's result (the same every run).
* ``embedded_day_simclock_s`` (unless --no-before): the same day on the `SimClock` at
  EMBEDDED_SPEED, as the demo ran before virtual time; its trades and PnL vary run to run.

`embedded_day_s(settings, database_url, redis_url, virtual=...)` is importable (bench/backtest.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import anyio
import psycopg
from loguru import logger

from bench._procs import fresh_database, libpq_url
from market.vclock import VirtualClock
from worker.app import Plan, epoch_soon, run_fleet
from worker.settings import Settings, load_settings


def emit(name: str, value: object) -> None:
    print(f"{name}={value:.3f}" if isinstance(value, float) else f"{name}={value}", flush=True)


async def embedded_day_s(
    settings: Settings, database_url: str, redis_url: str, *, virtual: bool = True
) -> tuple[float, dict[str, Any]]:
    """Run the demo's day once; (wall seconds, figures) of it."""
    plans: list[Plan] = []
    settings = settings.model_copy(
        update={
            "fleet_prefix": f"bench{uuid.uuid4().hex[:8]}",
            "database_url": database_url,
            "redis_url": redis_url,
        }
    )
    started = time.monotonic()
    plan = await run_fleet(
        settings,
        database_url=database_url,
        redis_url=redis_url,
        workers=settings.embedded_workers,
        virtual=virtual,
        speed=None if virtual else settings.embedded_speed,
        epoch=None if virtual else epoch_soon(0.5),
        handle_signals=False,
        on_started=lambda _f, p, _l: plans.append(p),
    )
    wall = time.monotonic() - started
    figures: dict[str, Any] = {}
    if isinstance(plan.clock, VirtualClock):
        figures.update(turns=plan.clock.turns, jumps=plan.clock.jumps)
        by_role: dict[str, list[float]] = {}
        for name, (turns, busy) in plan.clock.busy().items():
            role = name.rsplit("/", 1)[1] if "/" in name else ("worker" if name != "reconciler"
                                                                 else name)  # fmt: skip
            acc = by_role.setdefault(role, [0, 0.0])
            acc[0] += turns
            acc[1] += busy
        figures["roles"] = by_role
    with psycopg.connect(libpq_url(database_url)) as conn:
        trades, pnl = conn.execute(
            "SELECT count(*), coalesce(sum(pnl), 0) FROM trades WHERE trading_day = %s",
            (plan.session.day,),
        ).fetchone() or (0, 0)
    figures.update(trades=trades, pnl=pnl)
    return wall, figures


@contextmanager
def servers() -> Iterator[tuple[str, str]]:
    db, rd = os.environ.get("DATABASE_URL"), os.environ.get("REDIS_URL")
    from worker.servers import embedded_postgres, embedded_redis

    with (
        nullcontext(db) if db else embedded_postgres("tradefleet-bench") as database_url,
        nullcontext(rd) if rd else embedded_redis() as redis_url,
    ):
        yield database_url, redis_url


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--no-before", action="store_true", help="skip the SimClock run")
    args = p.parse_args(argv)
    logger.remove()
    logger.add(sys.stderr, level=os.environ.get("LOG_LEVEL", "ERROR"))
    with servers() as (server_url, redis_url):
        settings = load_settings(database_url=server_url, redis_url=redis_url)
        with fresh_database(server_url) as url:
            wall, fig = anyio.run(embedded_day_s, settings, url, redis_url)
        emit("embedded_day_workers", settings.embedded_workers)
        emit("embedded_day_symbols", settings.paper_symbols)
        emit("embedded_day_turns", fig["turns"])
        emit("embedded_day_jumps", fig["jumps"])
        emit("embedded_day_trades", fig["trades"])
        emit("embedded_day_pnl", fig["pnl"])
        for role, (turns, busy) in sorted(fig["roles"].items()):
            emit(f"embedded_day_{role}_turns", int(turns))
            emit(f"embedded_day_{role}_busy_s", busy)
        emit("embedded_day_s", wall)
        if not args.no_before:
            with fresh_database(server_url) as url:
                before, fig = anyio.run(
                    lambda: embedded_day_s(settings, url, redis_url, virtual=False)
                )
            emit("embedded_day_simclock_trades", fig["trades"])
            emit("embedded_day_simclock_pnl", fig["pnl"])
            emit("embedded_day_simclock_speed", settings.embedded_speed)
            emit("embedded_day_simclock_s", before)


if __name__ == "__main__":
    main()
