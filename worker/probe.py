"""The server probe: every couple of seconds, for the whole life of a process, is Redis
answering, is Postgres answering, is the schema at the code's head, how much of the day's loss
budget is left. It feeds `/readyz` (`ProcessHealth`) and the process-wide gauges of
`FleetMetrics`, and its passes are the heartbeat `/livez` watches.

Each pass is bounded (`timeout_s` per server) and never raises: a server that does not answer
is reported down with the reason, and the next pass tries again (the clients reconnect). A
change of a server's reachability is logged once (WARNING down, INFO back), not every pass.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal

import anyio
import redis.asyncio as aioredis
from anyio.abc import TaskStatus
from loguru import logger
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.errors import translate_db_errors
from ledger.migrate import SchemaStatus, schema_status_on
from ledger.risk import day_low_pnl, halt_recorded
from worker.health import PROBE_INTERVAL_S, PROBE_TIMEOUT_S, ProcessHealth, ServerCheck
from worker.metrics import FleetMetrics


@dataclass
class ServerProbe:
    """Probes `redis` and `engine` into `health` and `metrics`.

    `trading_day` (settable) is the day whose loss budget is read; `loss_limit` the
    DAILY_LOSS_LIMIT it is measured against.
    """

    health: ProcessHealth
    metrics: FleetMetrics
    redis: aioredis.Redis
    engine: AsyncEngine
    loss_limit: Decimal
    trading_day: date | None = None
    interval_s: float = PROBE_INTERVAL_S
    timeout_s: float = PROBE_TIMEOUT_S
    monotonic: Callable[[], float] = time.monotonic
    _passed: anyio.Event = field(default_factory=anyio.Event)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Probe now, report started, then every `interval_s` until cancelled."""
        await self.probe_once()
        task_status.started()
        while True:
            await anyio.sleep(self.interval_s)
            await self.probe_once()

    async def next_pass(self) -> None:
        """Wait until the next pass has finished."""
        await self._passed.wait()

    async def probe_once(self) -> None:
        await self._probe_redis()
        await self._probe_postgres()
        self.health.last_probe_at = self.monotonic()
        self.metrics.ready.set(1 if self.health.ready()[0] else 0)
        passed, self._passed = self._passed, anyio.Event()
        passed.set()

    async def _probe_redis(self) -> None:
        error: str | None = None
        try:
            with anyio.fail_after(self.timeout_s):
                await self.redis.ping()
        except Exception as exc:  # any failure is "down", with its reason; never raised
            error = _describe(exc)
        _record("Redis", self.health.redis, error)
        self.metrics.redis_up.set(0 if error else 1)

    async def _probe_postgres(self) -> None:
        error: str | None = None
        status: SchemaStatus | None = None
        budget: Decimal | None = None
        day = self.trading_day
        try:
            with anyio.fail_after(self.timeout_s), translate_db_errors():
                async with self.engine.connect() as conn:
                    status = await conn.run_sync(schema_status_on)
                    if status.current and day is not None:
                        query = select(day_low_pnl(day), halt_recorded(day))
                        low, halted = (await conn.execute(query)).one()
                        budget = Decimal(0) if halted else max(Decimal(0), self.loss_limit + low)
        except Exception as exc:  # any failure is "down", with its reason; never raised
            error = _describe(exc)
        _record("Postgres", self.health.postgres, error)
        self.metrics.postgres_up.set(0 if error else 1)
        if status is not None:
            if status != self.health.schema:
                if not status.current:
                    logger.warning("{}", status.problem)
                elif self.health.schema is not None:
                    logger.info("database schema {} is current", status.database)
            self.health.schema = status
            self.metrics.schema_current.set(1 if status.current else 0)
            if budget is not None:
                self.metrics.loss_budget.set(float(budget))
            elif not status.current:
                self.metrics.loss_budget.set(math.nan)


def _record(name: str, check: ServerCheck, error: str | None) -> None:
    if error is not None and check.up is not False:
        logger.warning("{} unreachable: {}", name, error)
    elif error is None and check.up is False:
        logger.info("{} reachable again", name)
    check.up, check.error = error is None, error


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer within the probe's deadline"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


__all__ = ["ServerProbe"]
