"""A full simulated day: 2,500 symbols, 10 workers in one process, on the embedded servers.

    python bench/day.py

Starts the embedded PostgreSQL and Valkey (worker/servers.py), migrates a template database,
then runs the same session (seed 0, 2026-11-24, PAPER_SYMBOLS=2500) once per clock speed in
SPEEDS, each on a fresh database cloned from the template and a fresh Redis key prefix.

The simulated clock is wall-driven (`now = open + (wall - epoch) * speed`), so simulated seconds
per wall second equal the speed by construction; what a speed is worth depends on whether the
fleet keeps up. Two hooks measure that, in simulated seconds, without touching the worker loop:

* tick lag (the criterion): each worker's `_tick` is wrapped on the instance (`on_started`).
  A tick that starts at S and returns interval I, having slept I_in inside it (order polls),
  makes the next tick due at S + max(I, I_in); the lag is how much later it actually started
  (0 if a notice woke the worker early). It counts ticks that outran their interval (the loop
  then skips the pause) as well as late wake-ups.
* wake lag: the planned clock is wrapped (`run_fleet(clock_factory=...)`); every pause records
  actual minus intended wake-up: the one-thread event loop's own delay.

A run kept up when the tick lag p99 is under one scan interval (SCAN_INTERVAL_S, 30 simulated
s) and it ended flat (no position left open). Per speed it prints wall time, setup time
(run_fleet call to workers built), trades, positions open at the end, summary_matches_fills,
the lag percentiles, the Python process's CPU share and error-level log records (the commonest
go to stderr). Then, for the fastest speed that kept up (the slowest one tried if none did,
with day_kept_up=0): ``day_wall_s`` (run_fleet call to return, setup and the final summary
included), ``trades``, ``summary_matches_fills`` (daily_summaries.pnl == sells - buys - fees -
taxes from fills, and trades_count == trades) and, last, ``day_speedup``: the simulated seconds
the fleet covered (open to the end of its day, capped at the close) over ``day_wall_s``. The
goal is >= 1,000.
"""

from __future__ import annotations

import statistics
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import anyio
import psycopg
from loguru import logger
from sqlalchemy.engine import make_url

from ledger.migrate import upgrade_head
from market.calendar import default_calendar
from market.clock import Clock
from trading.loop import Worker
from worker.app import Plan, epoch_soon, run_fleet
from worker.servers import embedded_postgres, embedded_redis
from worker.settings import load_settings

SPEEDS = (750.0, 1_000.0, 1_250.0, 1_500.0, 2_000.0)
N_SYMBOLS = 2_500
WORKERS = 10
SEED = 0
DAY = date(2026, 11, 24)
SCAN_INTERVAL_S = 30.0
NAN = float("nan")
LEAD_S = 1.0  # wall seconds from the run_fleet call to the simulated open (setup fits in it)


class LagClock:
    """Wraps the planned clock: records wake-up lag, and the sleep each task asked for."""

    def __init__(self, inner: Clock, open_: datetime, close: datetime) -> None:
        self.inner = inner
        self.open = open_
        self.close = close
        self.lag: list[float] = []
        self.slept: dict[int, float] = {}  # per task: clock seconds of sleep asked for

    @property
    def speed(self) -> float:
        return self.inner.speed

    def now(self) -> datetime:
        return self.inner.now()

    async def sleep(self, seconds: float) -> None:
        task = anyio.get_current_task().id
        self.slept[task] = self.slept.get(task, 0.0) + max(0.0, seconds)
        intended = self.inner.now() + timedelta(seconds=max(0.0, seconds))
        await self.inner.sleep(seconds)  # cut short on purpose (cancelled): no sample
        if self.open <= intended <= self.close:
            self.lag.append((self.inner.now() - intended).total_seconds())


def measure_ticks(worker: Worker, clock: LagClock, out: list[float]) -> None:
    """Wrap one worker's tick (on the instance; the loop is untouched) to record tick lag."""
    tick = worker._scan_tick
    interval = worker.d.config.scan_interval_s
    due: list[tuple[datetime, float]] = []  # the previous tick's (start, seconds to the next)

    async def timed(started: datetime) -> None:
        task = anyio.get_current_task().id
        if due and clock.open <= started <= clock.close:
            previous, gap = due[0]
            out.append(max(0.0, (started - previous).total_seconds() - gap))
        due.clear()
        before = clock.slept.get(task, 0.0)
        await tick(started)  # a failed tick raises: no sample for the next one
        due.append((started, max(interval, clock.slept.get(task, 0.0) - before)))

    worker._scan_tick = timed  # type: ignore[method-assign]


@dataclass
class Run:
    speed: float
    wall_s: float = 0.0
    setup_s: float = 0.0
    simulated_s: float = 0.0
    cpu: float = 0.0
    errors: int = 0
    trades: int = 0
    open_positions: int = 0
    summary_matches_fills: bool = False
    tick_lag: list[float] = field(default_factory=list)
    wake_lag: list[float] = field(default_factory=list)

    @property
    def kept_up(self) -> bool:
        on_time = bool(self.tick_lag) and p99(self.tick_lag) < SCAN_INTERVAL_S
        return on_time and self.open_positions == 0


def p(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(len(s) * q))] if s else NAN


def p99(xs: list[float]) -> float:
    return p(xs, 0.99)


def emit(name: str, value: object) -> None:
    print(f"{name}={value:.3f}" if isinstance(value, float) else f"{name}={value}", flush=True)


def _with_db(url: str, db: str) -> str:
    return make_url(url).set(database=db).render_as_string(hide_password=False)


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _create_db(server_url: str, template: str | None) -> str:
    name = f"tf_bench_{uuid.uuid4().hex[:10]}"
    tpl = f' TEMPLATE "{template}"' if template else ""
    with psycopg.connect(_libpq(server_url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"{tpl}')
    return name


def check_ledger(database_url: str, day: date) -> tuple[int, int, bool]:
    """(trades, positions still open, daily_summaries.pnl == pnl recomputed from fills)."""
    with psycopg.connect(_libpq(database_url)) as conn:
        still_open = conn.execute("SELECT count(*) FROM positions WHERE qty <> 0").fetchone()
        trades = conn.execute("SELECT count(*) FROM trades WHERE trading_day=%s", (day,))
        (n,) = trades.fetchone() or (0,)
        row = conn.execute(
            """SELECT coalesce(sum(amount) FILTER (WHERE side='SELL'), 0)
                    - coalesce(sum(amount) FILTER (WHERE side='BUY'), 0)
                    - coalesce(sum(fee), 0) - coalesce(sum(tax), 0)
               FROM fills WHERE trading_day=%s""",
            (day,),
        ).fetchone()
        from_fills = row[0] if row else None
        summary = conn.execute(
            "SELECT pnl, trades_count FROM daily_summaries WHERE date=%s", (day,)
        ).fetchone()
    matches = (
        summary is not None
        and isinstance(from_fills, Decimal)
        and summary[0] == from_fills
        and summary[1] == n
    )
    return int(n), int(still_open[0]) if still_open else -1, matches


async def run_day(run: Run, database_url: str, redis_url: str) -> None:
    settings = load_settings(
        database_url=database_url,
        redis_url=redis_url,
        fleet_prefix=f"benchday{uuid.uuid4().hex[:8]}",
        worker_id="bench",
        paper_seed=SEED,
        paper_symbols=N_SYMBOLS,
        paper_day=DAY,
        scan_interval_s=SCAN_INTERVAL_S,
    )
    clocks: list[LagClock] = []

    def instrument(plan: Plan) -> Clock:
        clocks.append(LagClock(plan.clock, plan.session.open, plan.session.close))
        return clocks[-1]

    built: list[float] = []

    def started(workers: Sequence[Worker], _plan: Plan, _ledger: Any) -> None:
        built.append(time.perf_counter())
        for w in workers:
            measure_ticks(w, clocks[0], run.tick_lag)

    start, cpu0 = time.perf_counter(), time.process_time()
    plan = await run_fleet(
        settings,
        database_url=database_url,
        redis_url=redis_url,
        workers=WORKERS,
        speed=run.speed,
        epoch=epoch_soon(LEAD_S),
        on_started=started,
        handle_signals=False,
        clock_factory=instrument,
    )
    run.wall_s = time.perf_counter() - start
    run.cpu = (time.process_time() - cpu0) / run.wall_s
    run.setup_s = built[0] - start
    if run.setup_s > LEAD_S:
        late = f"warning: setup took {run.setup_s:.2f}s > LEAD_S: the fleet joined late"
        print(late, file=sys.stderr)
    session = plan.session
    end = min(plan.clock.now(), session.close)
    run.simulated_s = (end - session.open).total_seconds()
    run.wake_lag = clocks[0].lag
    run.trades, run.open_positions, run.summary_matches_fills = check_ledger(
        database_url, session.day
    )


def report(run: Run) -> None:
    k = f"speed_{run.speed:.0f}"
    emit(f"{k}_wall_s", run.wall_s)
    emit(f"{k}_setup_s", run.setup_s)
    emit(f"{k}_simulated_s", run.simulated_s)
    emit(f"{k}_trades", run.trades)
    emit(f"{k}_open_positions_at_end", run.open_positions)
    emit(f"{k}_summary_matches_fills", int(run.summary_matches_fills))
    emit(f"{k}_ticks", len(run.tick_lag))
    emit(f"{k}_lag_p50_s", statistics.median(run.tick_lag) if run.tick_lag else NAN)
    emit(f"{k}_lag_p90_s", p(run.tick_lag, 0.90))
    emit(f"{k}_lag_p99_s", p99(run.tick_lag))
    emit(f"{k}_lag_max_s", max(run.tick_lag, default=NAN))
    emit(f"{k}_wake_lag_p99_s", p99(run.wake_lag))
    emit(f"{k}_cpu", run.cpu)
    emit(f"{k}_errors", run.errors)
    emit(f"{k}_kept_up", int(run.kept_up))


def main() -> int:
    errors: Counter[str] = Counter()
    logger.remove()  # the workers' INFO lines would drown the figures; count the errors instead
    logger.add(lambda m: errors.update([m.record["message"][:100]]), level="ERROR")
    started = time.perf_counter()
    default_calendar()  # loaded once per process (~2 s cold), as the embedded default does
    emit("calendar_load_s", time.perf_counter() - started)
    runs: list[Run] = []
    with embedded_postgres("tradefleet-bench") as server_url, embedded_redis() as redis_url:
        template = _create_db(server_url, None)
        upgrade_head(_with_db(server_url, template))
        emit("symbols", N_SYMBOLS)
        emit("workers", WORKERS)
        emit("scan_interval_s", SCAN_INTERVAL_S)
        for speed in SPEEDS:
            run = Run(speed)
            errors.clear()
            database_url = _with_db(server_url, _create_db(server_url, template))
            anyio.run(run_day, run, database_url, redis_url)
            run.errors = errors.total()
            report(run)
            for message, n in errors.most_common(3):
                print(f"  {n} x error: {message}", file=sys.stderr)
            runs.append(run)
    kept = [r for r in runs if r.kept_up]
    best = max(kept, key=lambda r: r.speed) if kept else min(runs, key=lambda r: r.speed)
    emit("day_speed", best.speed)
    emit("day_kept_up", int(best.kept_up))
    emit("day_wall_s", best.wall_s)
    emit("trades", best.trades)
    emit("summary_matches_fills", int(best.summary_matches_fills))
    emit("day_speedup", best.simulated_s / best.wall_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
