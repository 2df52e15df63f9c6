"""LOG_JSON=1: one flat JSON object per line, every line of a worker carrying its id, and the
context (symbol, fence, state, client_order_id) where it applies."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import anyio
import orjson
import pytest
import redis.asyncio as aioredis
from loguru import logger
from trading_rig import Rig, running

from coordination.keys import Keyspace
from ledger.repository import Ledger
from trading.orders import LeaseInvalid
from trading.tenure import Tenure
from worker.logs import setup_logging

REQUIRED = ("ts", "level", "msg", "logger", "worker")


def _parse(text: str) -> list[dict[str, Any]]:
    lines = [orjson.loads(line) for line in text.splitlines()]
    for line in lines:
        assert isinstance(line, dict)
        for key in REQUIRED:
            assert key in line, line
        assert datetime.fromisoformat(line["ts"]).utcoffset() is not None, line
        assert all(not isinstance(v, dict | list) for v in line.values()), line  # flat
    return lines


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """Logging as `python -m worker` sets it up with LOG_JSON=1 and WORKER_ID=proc-1, into a
    buffer; the default (human, stderr) afterwards."""
    stream = io.StringIO()
    setup_logging("DEBUG", json=True, worker="proc-1", stream=stream)
    try:
        yield stream
    finally:
        logging.captureWarnings(False)
        setup_logging("INFO")


def test_lines_are_flat_json_with_the_context_that_applies(json_log: io.StringIO) -> None:
    logger.info("plain {}", 1)
    logger.bind(worker="w1", symbol="005930", fence=7, state="HOLD").warning("held")
    with logger.contextualize(client_order_id="c-1"):
        logger.info("ordered")
    try:
        raise ZeroDivisionError("boom")
    except ZeroDivisionError:
        logger.exception("failed")
    logging.getLogger("alembic.runtime.migration").warning("from %s", "stdlib")
    plain, held, ordered, failed, stdlib = _parse(json_log.getvalue())
    assert plain["msg"] == "plain 1"
    assert plain["level"] == "INFO"
    assert plain["logger"] == __name__
    assert plain["worker"] == "proc-1"  # the process's WORKER_ID, never "-"
    assert not {"symbol", "fence", "state", "client_order_id", "exc"} & plain.keys()
    assert held == {**held, "worker": "w1", "symbol": "005930", "fence": 7, "state": "HOLD"}
    assert ordered["client_order_id"] == "c-1"
    assert "ZeroDivisionError: boom" in failed["exc"]
    assert failed["level"] == "ERROR"
    assert stdlib["logger"] == "alembic.runtime.migration"
    assert stdlib["msg"] == "from stdlib"


def test_a_line_is_about_a_hundred_and_fifty_bytes_not_seven_hundred(
    json_log: io.StringIO,
) -> None:
    logger.bind(worker="0f9e3b2c-5d1a-4c2e-9c1e-6a7b8c9d0e1f", symbol="005930", fence=12,
                state="HOLD").info("state SCAN -> HOLD on bought")  # fmt: skip
    [line] = json_log.getvalue().splitlines()
    assert len(line) < 250, line


async def _withdrawn_and_adopted(ledger: Ledger, redis_client: aioredis.Redis, prefix: str) -> None:
    """A writes a BUY intent and stalls (SIGSTOP); B takes the symbol over and withdraws it."""
    rig = Rig(ledger, redis_client, Keyspace(prefix))
    a, b = rig.party("A"), rig.party("B")
    symbol = rig.liquid_symbol()
    lease_a = await a.lock.acquire(symbol)
    assert lease_a is not None
    async with running(a, b, keepers=False), Tenure.open(a.ctx, lease_a) as tenure_a:
        intent_written, proceed = anyio.Event(), anyio.Event()
        create = ledger.create_order

        class Stalling:
            def __getattr__(self, name: str) -> object:
                return getattr(ledger, name)

            async def create_order(self, intent: Any) -> Any:
                record = await create(intent)
                intent_written.set()
                await proceed.wait()
                return record

        a.placer.ledger = Stalling()  # type: ignore[assignment]

        async def stale_buy() -> None:
            with contextlib.suppress(LeaseInvalid):  # its claim loses to B's withdrawal
                await tenure_a.place(rig.buy(symbol, lease_a.fence), rig.clock.now())

        async with anyio.create_task_group() as tg:
            tg.start_soon(stale_buy)
            await intent_written.wait()
            await redis_client.delete(rig.keys.lock(symbol))
            lease_b = await b.lock.acquire(symbol)
            assert lease_b is not None
            async with Tenure.open(b.ctx, lease_b):
                proceed.set()
                await anyio.sleep(0)


@pytest.mark.anyio
async def test_tenure_lines_carry_symbol_fence_and_the_withdrawn_order(
    json_log: io.StringIO, ledger: Ledger, redis_client: aioredis.Redis, prefix: str
) -> None:
    await _withdrawn_and_adopted(ledger, redis_client, prefix)
    lines = _parse(json_log.getvalue())
    assert {line["worker"] for line in lines if line["logger"].startswith("trading.")} <= {"A", "B"}
    [withdrew] = [line for line in lines if line["msg"].startswith("withdrew never-sent order")]
    assert withdrew["worker"] == "B"
    assert withdrew["client_order_id"] in withdrew["msg"]
    assert withdrew["symbol"] in withdrew["msg"]
    assert isinstance(withdrew["fence"], int)


@pytest.mark.slow
def test_a_run_worker_logs_only_json_lines_with_its_id(
    database_url: str, redis_url: str, prefix: str
) -> None:
    """`python -m worker run` with LOG_JSON=1 through the last minutes of a simulated session:
    every stderr line is a flat JSON object carrying WORKER_ID, the start-up line included."""
    speed = 600
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "FLEET_PREFIX": prefix,
        "WORKER_ID": "json-1",
        "LOG_JSON": "1",
        "PAPER_SPEED": str(speed),
        "PAPER_DAY": "2026-11-24",
        # the session opened 6 h 5 min of clock time ago: 15:05 KST, ten minutes of buying
        "PAPER_EPOCH": str(time.time() - (6 * 3600 + 5 * 60) / speed),
        "PAPER_SEED": "3",
        "MAX_HOLD_MIN": "2",
    }
    result = subprocess.run(
        [sys.executable, "-m", "worker", "run"],
        env=env, capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    lines = _parse(result.stderr)
    # the worker's own lines say its id; a helper task of it may prefix its role
    assert all("json-1" in line["worker"] for line in lines), {line["worker"] for line in lines}
    assert sum(line["worker"] == "json-1" for line in lines) >= len(lines) // 2
    assert any(line["msg"] == "BROKER=paper in-process" for line in lines)
    transitions = [line for line in lines if line["msg"].startswith("state ")]
    assert transitions
    assert all("state" in line for line in transitions)
