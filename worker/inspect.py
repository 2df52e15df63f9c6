"""The read-only inspection commands: `locks`, `workers` and `summary`. Each returns the
process exit code."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import anyio
import orjson

from coordination.connection import connect
from coordination.keys import Keyspace
from coordination.locks import RedisSymbolLock
from coordination.registry import WorkerRegistry
from ledger.db import create_engine
from ledger.records import DaySummaryRecord
from ledger.repository import Ledger
from market.costs import CostModel
from worker.report import summary_dict, summary_table
from worker.settings import Settings


def _check_schema(settings: Settings) -> None:
    """The schema gate for the commands that read Postgres: call it before the first query.

    Placeholder until the gate lands (behind or ahead of the code's head: exit 1 naming both).
    """


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
        _check_schema(settings)
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
    _check_schema(settings)
    engine = create_engine(settings.database_url)
    try:
        ledger = Ledger(engine, CostModel(commission_rate=settings.commission_rate))
        record = await ledger.summarize_day(day)
        if record.total.summary.trades_count == 0:
            return None
        return record, await ledger.recompute_from_fills(day)
    finally:
        await engine.dispose()
