"""The inspection commands: `locks`, `workers` and `summary`. Each returns the process exit code.

`locks` and `workers` only read. They print a table, or with `--json` one JSON document; with
`--watch SECONDS` they refresh every SECONDS on one set of connections until SIGINT or SIGTERM,
then exit 0 (with `--json`, one compact document per line: JSON Lines). A server that stops
answering during a watch is reported in the frame and asked again at the next refresh.

`summary` recomputes the day's summary from `trades`, stores it in `daily_summaries` and prints
it; the day defaults to the latest KRX session on or before today (Asia/Seoul).

Servers are reached like `run` reaches them: `CONNECT_ATTEMPTS` tries with backoff, then exit 1
naming the server. Postgres is read only after the schema gate (`_check_schema`).
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import anyio
import orjson
import redis.asyncio as aioredis
from anyio.abc import TaskStatus
from loguru import logger
from sqlalchemy.ext.asyncio import AsyncEngine

from coordination.connection import connect, redact
from coordination.errors import CoordinationError
from coordination.keys import Keyspace
from coordination.lease import LockInfo
from coordination.locks import RedisSymbolLock
from coordination.registry import WorkerInfo, WorkerRegistry
from ledger.db import create_engine, wait_ready
from ledger.errors import LedgerError
from ledger.records import DaySummaryRecord
from ledger.repository import Ledger
from market.calendar import KrxCalendar, default_calendar
from market.clock import KST, Clock, RealClock
from market.costs import CostModel
from worker.report import summary_dict, summary_table
from worker.schema import check_schema
from worker.settings import Settings

# --- connections -----------------------------------------------------------------------------


async def _check_schema(engine: AsyncEngine) -> None:
    """The schema gate for the commands that read Postgres, before the first query: a database
    behind or ahead of the code's head raises `SchemaNotCurrent` (exit 1 naming both revisions).
    The inspection commands never wait for it (WAIT_FOR_SCHEMA is for `run`)."""
    await check_schema(engine)


@asynccontextmanager
async def _servers(
    settings: Settings, *, redis: bool, postgres: bool
) -> AsyncIterator[tuple[aioredis.Redis | None, AsyncEngine | None]]:
    """The Redis client and Postgres engine a command asked for, reached as `run` reaches them
    (`CONNECT_ATTEMPTS` tries, then one error naming the server), closed on the way out."""
    async with AsyncExitStack() as stack:
        client: aioredis.Redis | None = None
        engine: AsyncEngine | None = None
        if postgres and settings.database_url:
            await wait_ready(settings.database_url, attempts=settings.connect_attempts)
            engine = create_engine(settings.database_url)
            stack.push_async_callback(engine.dispose)
            await _check_schema(engine)
        if redis and settings.redis_url:
            client = await connect(settings.redis_url, attempts=settings.connect_attempts)
            stack.push_async_callback(client.aclose)
        yield client, engine


# --- locks -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LockRow:
    """One line of `locks`: a Redis lock and what the Postgres mirror (`stock_locks`) says.

    `mirror` is "ok", "missing" (no row), "drift" (another owner or fence), "stale" (a row with
    no Redis lock; then `pttl_ms` is None and owner and fence are the row's) or None (no
    DATABASE_URL, not checked).
    """

    symbol: str
    worker_id: str
    fence: int
    pttl_ms: int | None
    mirror: str | None
    mirror_worker_id: str | None = None
    mirror_fence: int | None = None

    def mirror_text(self) -> str:
        if self.mirror is None:
            return "(no DATABASE_URL)"
        if self.mirror == "missing":
            return "MISSING in stock_locks"
        if self.mirror == "drift":
            return f"DRIFT: mirror has {self.mirror_worker_id}:{self.mirror_fence}"
        if self.mirror == "stale":
            return "STALE in stock_locks (no Redis lock)"
        return self.mirror


def lock_rows(
    live: Sequence[LockInfo], mirror: Mapping[str, tuple[str, int]] | None
) -> list[LockRow]:
    """Compare Redis's live locks with the mirror's rows (None: no mirror to compare with)."""
    left = dict(mirror or {})
    rows: list[LockRow] = []
    for info in sorted(live, key=lambda i: i.symbol):
        seen = left.pop(info.symbol, None)
        if mirror is None:
            state = None
        elif seen is None:
            state = "missing"
        elif seen != (info.worker_id, info.fence):
            state = "drift"
        else:
            state = "ok"
        owner, fence = seen if seen is not None else (None, None)
        rows.append(LockRow(info.symbol, info.worker_id, info.fence, info.pttl_ms, state, owner,
                            fence))  # fmt: skip
    for symbol, (worker_id, fence) in sorted(left.items()):
        rows.append(LockRow(symbol, worker_id, fence, None, "stale", worker_id, fence))
    return rows


async def _read_locks(
    settings: Settings, redis: aioredis.Redis | None, engine: AsyncEngine | None
) -> list[LockRow]:
    assert redis is not None
    live = await RedisSymbolLock(redis, Keyspace(settings.fleet_prefix), "cli").live_locks()
    mirror: dict[str, tuple[str, int]] | None = None
    if engine is not None:
        ledger = Ledger(engine, CostModel())
        mirror = {m.symbol: (m.worker_id, m.fence) for m in await ledger.locks()}
    return lock_rows(live, mirror)


def _locks_text(rows: Sequence[LockRow]) -> str:
    if not rows:
        return "no live locks"
    lines = [f"{'symbol':<8} {'worker_id':<38} {'fence':>7} {'ttl_ms':>7}  mirror"]
    for r in rows:
        ttl = "-" if r.pttl_ms is None else str(r.pttl_ms)
        lines.append(f"{r.symbol:<8} {r.worker_id:<38} {r.fence:>7} {ttl:>7}  {r.mirror_text()}")
    return "\n".join(lines)


def _lock_json(row: LockRow) -> dict[str, Any]:
    return {
        "symbol": row.symbol,
        "worker_id": row.worker_id,
        "fence": row.fence,
        "pttl_ms": row.pttl_ms,
        "mirror": row.mirror,
        "mirror_worker_id": row.mirror_worker_id,
        "mirror_fence": row.mirror_fence,
    }


def locks(
    settings: Settings,
    *,
    as_json: bool = False,
    watch_s: float | None = None,
    clock: Clock | None = None,
) -> int:
    """`locks`: live locks from Redis and any drift against `stock_locks` (when
    DATABASE_URL is set)."""
    clock = clock or RealClock()

    async def frame(redis: aioredis.Redis | None, engine: AsyncEngine | None) -> _Frame:
        rows = await _read_locks(settings, redis, engine)
        return _Frame(_locks_text(rows), {"locks": [_lock_json(r) for r in rows]})

    return _show(settings, "locks", frame, as_json=as_json, watch_s=watch_s, clock=clock,
                 postgres=True)  # fmt: skip


# --- workers ---------------------------------------------------------------------------------


def _age_s(info: WorkerInfo, now: datetime) -> float:
    return (now - info.heartbeat_at).total_seconds()


def _workers_text(infos: Sequence[WorkerInfo], now: datetime, stale_s: float) -> str:
    if not infos:
        return "no registered workers"
    lines = [f"{'worker_id':<38} {'state':<5} {'symbol':<8} {'heartbeat':>10} {'params':>6}  "
             "pid@host"]  # fmt: skip
    for w in infos:
        age = _age_s(w, now)
        flag = "  STALE" if age > stale_s else ""
        params = "-" if w.params_version is None else f"v{w.params_version}"
        lines.append(
            f"{w.worker_id:<38} {w.state:<5} {w.symbol or '-':<8} {f'{age:.1f}s':>10} "
            f"{params:>6}  {w.pid}@{w.host}{flag}"
        )
    return "\n".join(lines)


def _worker_json(info: WorkerInfo, now: datetime, stale_s: float) -> dict[str, Any]:
    age = _age_s(info, now)
    return {
        "worker_id": info.worker_id,
        "state": info.state,
        "symbol": info.symbol,
        "pid": info.pid,
        "host": info.host,
        "heartbeat_at": info.heartbeat_at.isoformat(),
        "heartbeat_age_s": round(age, 3),
        "stale": age > stale_s,
        "pttl_ms": info.pttl_ms,
        "params_version": info.params_version,
    }


def workers(
    settings: Settings,
    *,
    as_json: bool = False,
    watch_s: float | None = None,
    clock: Clock | None = None,
) -> int:
    """`workers`: registered workers, their state, symbol, heartbeat age (STALE past half
    WORKER_TTL_MS) and the version of the live parameters each runs (v0: the environment's)."""
    clock = clock or RealClock()
    stale_s = settings.worker_ttl_ms / 2000

    async def frame(redis: aioredis.Redis | None, engine: AsyncEngine | None) -> _Frame:
        assert redis is not None
        registry = WorkerRegistry(redis, Keyspace(settings.fleet_prefix), settings.worker_ttl_ms)
        infos = sorted(await registry.list_workers(), key=lambda w: w.worker_id)
        now = clock.now()
        return _Frame(
            _workers_text(infos, now, stale_s),
            {"workers": [_worker_json(w, now, stale_s) for w in infos]},
        )

    return _show(settings, "workers", frame, as_json=as_json, watch_s=watch_s, clock=clock,
                 postgres=False)  # fmt: skip


# --- one shot or watch -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Frame:
    text: str
    data: dict[str, Any]


@dataclass(frozen=True)
class _Servers:
    settings: Settings
    redis: aioredis.Redis | None
    engine: AsyncEngine | None

    def describe(self, exc: CoordinationError | LedgerError) -> str:
        """`exc` in one line naming the server (URL with any password hidden)."""
        if isinstance(exc, CoordinationError):
            where = f"Redis at {redact(self.settings.redis_url or '')}"
        else:
            where = f"Postgres at {redact(self.settings.database_url or '')}"
        return f"{where}: {exc}"


_Read = Callable[[aioredis.Redis | None, AsyncEngine | None], Awaitable[_Frame]]
_CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear screen


def _show(
    settings: Settings,
    what: str,
    read: _Read,
    *,
    as_json: bool,
    watch_s: float | None,
    clock: Clock,
    postgres: bool,
) -> int:
    async def main() -> None:
        async with _servers(settings, redis=True, postgres=postgres) as (redis, engine):
            if watch_s is None:
                frame = await read(redis, engine)
                data = {"at": clock.now().isoformat(), **frame.data}
                print(_dumps(data, indent=True) if as_json else frame.text)
                return
            servers = _Servers(settings, redis, engine)
            await _watch(lambda: _watch_frame(what, read, servers, as_json, watch_s, clock),
                         watch_s)  # fmt: skip

    anyio.run(main)
    return 0


async def _watch_frame(
    what: str,
    read: _Read,
    servers: _Servers,
    as_json: bool,
    every_s: float,
    clock: Clock,
) -> str:
    at = clock.now()
    try:
        frame = await read(servers.redis, servers.engine)
    except (CoordinationError, LedgerError) as exc:  # keep watching: it may come back
        error = servers.describe(exc)
        logger.warning("{}: {}", what, error)
        if as_json:
            return _dumps({"at": at.isoformat(), "error": error})
        return f"{what} at {at:%Y-%m-%d %H:%M:%S %Z}: {error}"
    if as_json:
        return _dumps({"at": at.isoformat(), **frame.data})
    header = f"{what} at {at:%Y-%m-%d %H:%M:%S %Z}, every {every_s:g} s (Ctrl-C to stop)"
    clear = _CLEAR if sys.stdout.isatty() else ""
    return f"{clear}{header}\n{frame.text}\n"


async def _watch(render: Callable[[], Awaitable[str]], every_s: float) -> None:
    """Print `render()` every `every_s` seconds (the time a frame took is subtracted from the
    wait) until SIGINT or SIGTERM."""
    async with anyio.create_task_group() as tg:
        await tg.start(_cancel_on_signal, tg.cancel_scope)
        while True:
            started = time.monotonic()
            print(await render(), flush=True)
            await anyio.sleep(max(0.0, every_s - (time.monotonic() - started)))


async def _cancel_on_signal(
    scope: anyio.CancelScope, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for signum in signals:
            logger.debug("{}: stopping the watch", signal.Signals(signum).name)
            scope.cancel()
            return


def _dumps(data: Mapping[str, Any], *, indent: bool = False) -> str:
    return orjson.dumps(data, option=orjson.OPT_INDENT_2 if indent else 0).decode()


# --- summary ---------------------------------------------------------------------------------


def latest_session_day(now: datetime, calendar: KrxCalendar) -> date:
    """The latest KRX session on or before `now`'s Asia/Seoul date (the date itself when it
    lies outside the calendar's range)."""
    today = now.astimezone(KST).date()
    try:
        session = calendar.session(today) or calendar.previous_session(today)
    except ValueError as exc:
        logger.warning("summary: {}; using {}", exc, today)
        return today
    return session.day


def summary(
    settings: Settings, day: date | None, *, as_json: bool, clock: Clock | None = None
) -> int:
    """`summary`: the day's summary (default: the latest session on or before today)."""
    if day is None:
        day = latest_session_day((clock or RealClock()).now(), default_calendar())
    record, from_fills = anyio.run(_summary, settings, day)
    traded = record.total.summary.trades_count > 0
    if as_json:
        data = summary_dict(record, from_fills)
        if not traded:
            data["note"] = f"no trades recorded for {day}"
        print(_dumps(data, indent=True))
        return 0
    if not traded:
        print(f"no trades recorded for {day}")
        return 0
    check = "matches" if from_fills == record.total.summary.pnl else "DOES NOT MATCH"
    print(
        f"daily summary {day}\n\n{summary_table(record)}\n\n"
        f"PnL recomputed from fills: {from_fills:+,.0f} won ({check} the summary)"
    )
    return 0


async def _summary(settings: Settings, day: date) -> tuple[DaySummaryRecord, Decimal]:
    async with _servers(settings, redis=False, postgres=True) as (_, engine):
        assert engine is not None
        ledger = Ledger(engine, CostModel(commission_rate=settings.commission_rate))
        record = await ledger.summarize_day(day)
        return record, await ledger.recompute_from_fills(day)
