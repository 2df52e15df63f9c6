"""Every ledger call has a deadline: a Postgres that stops answering, a connection that cannot
be opened, a lock that is never granted or a statement that runs too long each end the call
with `LedgerUnavailable` within its deadline (never a hang, never a driver error), and the
ledger works again once the fault is gone.

The stall is real: a loopback proxy in front of the test's Postgres that keeps every connection
open but stops forwarding bytes, as a partitioned network or a frozen server does.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from support import ServerProxy, libpq
from test_ledger import SYM, T0

from ledger.db import create_engine
from ledger.errors import LedgerUnavailable
from ledger.repository import Ledger
from market.costs import CostModel

pytestmark = pytest.mark.anyio

MARGIN_S = 1.5  # scheduling slack on a shared, loaded machine


@asynccontextmanager
async def proxied_ledger(
    database_url: str, call_timeout_s: float, **engine_kw: float
) -> AsyncIterator[tuple[ServerProxy, Ledger, AsyncEngine]]:
    proxy = ServerProxy(database_url)
    async with anyio.create_task_group() as tg:
        await tg.start(proxy.serve)
        engine = create_engine(proxy.url_for(database_url), **engine_kw)  # type: ignore[arg-type]
        try:
            yield proxy, Ledger(engine, CostModel(), call_timeout_s=call_timeout_s), engine
        finally:
            proxy.resume()
            with anyio.move_on_after(10, shield=True):
                await engine.dispose()
            tg.cancel_scope.cancel()


async def _fails_unavailable_within(call_s: float, call: object) -> LedgerUnavailable:
    started = time.monotonic()
    with pytest.raises(LedgerUnavailable) as info:
        await call  # type: ignore[misc]
    assert time.monotonic() - started < call_s + MARGIN_S
    return info.value


@pytest.mark.slow
async def test_a_server_that_stops_answering_meets_the_call_deadline(database_url: str) -> None:
    async with proxied_ledger(database_url, call_timeout_s=1.0) as (proxy, ledger, engine):
        assert await ledger.lock_acquired(SYM, "w1", 1, 30_000, T0)  # a pooled connection
        proxy.stall()
        # a write, a read, and the scan's autocommit read: each ends at its deadline
        err = await _fails_unavailable_within(1.0, ledger.lock_heartbeat(SYM, "w1", 1, T0))
        assert "deadline of 1 s" in str(err)
        await _fails_unavailable_within(1.0, ledger.locks())
        await _fails_unavailable_within(1.0, ledger.scan_view(T0.date()))
        # a timed-out connection is not given back to the pool to hang the next call
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        proxy.resume()
        with anyio.fail_after(5):
            assert await ledger.lock_heartbeat(SYM, "w1", 1, T0)
            assert [lk.fence for lk in await ledger.locks()] == [1]
            assert (await ledger.scan_view(T0.date())).realized_pnl == 0


@pytest.mark.slow
async def test_a_connection_that_cannot_be_opened_meets_the_connect_timeout(
    database_url: str,
) -> None:
    # the per-call deadline is far away: what ends the call is the connect timeout (2 s, the
    # least libpq honours)
    async with proxied_ledger(database_url, call_timeout_s=60.0, connect_timeout_s=2) as (
        proxy,
        ledger,
        _engine,
    ):
        proxy.stall()  # no connection is pooled yet: the next call must open one
        err = await _fails_unavailable_within(2.0, ledger.workers())
        assert "deadline" not in str(err)
        proxy.resume()
        with anyio.fail_after(5):
            assert await ledger.workers() == []


async def test_a_lock_that_is_never_granted_meets_the_lock_timeout(database_url: str) -> None:
    engine = create_engine(database_url, lock_timeout_s=0.5)
    ledger = Ledger(engine, CostModel(), call_timeout_s=60.0)
    try:
        assert await ledger.lock_acquired(SYM, "w1", 1, 30_000, T0)
        with psycopg.connect(libpq(database_url)) as other:
            other.execute("SELECT 1 FROM stock_locks WHERE symbol = %s FOR UPDATE", (SYM,))
            err = await _fails_unavailable_within(0.5, ledger.lock_heartbeat(SYM, "w1", 1, T0))
            assert "lock timeout" in str(err)
            assert isinstance(err.__cause__, Exception)
        assert await ledger.lock_heartbeat(SYM, "w1", 1, T0)  # granted once the holder is gone
    finally:
        await engine.dispose()


async def test_a_statement_that_runs_too_long_meets_the_statement_timeout(
    database_url: str,
) -> None:
    engine = create_engine(database_url, statement_timeout_s=0.5, lock_timeout_s=30)
    ledger = Ledger(engine, CostModel(), call_timeout_s=60.0)
    try:
        await ledger.lock_acquired(SYM, "w1", 1, 30_000, T0)
        with psycopg.connect(libpq(database_url)) as other:
            other.execute("SELECT 1 FROM stock_locks WHERE symbol = %s FOR UPDATE", (SYM,))
            err = await _fails_unavailable_within(0.5, ledger.lock_heartbeat(SYM, "w1", 1, T0))
            assert "statement timeout" in str(err)
        async with engine.connect() as conn:  # the setting is the session's, on every connection
            assert (await conn.execute(text("SHOW statement_timeout"))).scalar_one() == "500ms"
            assert (await conn.execute(text("SHOW lock_timeout"))).scalar_one() == "30s"
    finally:
        await engine.dispose()


def test_deadlines_must_be_positive() -> None:
    url = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    for kw in ({"connect_timeout_s": 0}, {"statement_timeout_s": -1}, {"lock_timeout_s": 0}):
        with pytest.raises(ValueError, match=next(iter(kw))):
            create_engine(url, **kw)  # type: ignore[arg-type]
    engine = create_engine(url)
    with pytest.raises(ValueError, match="call_timeout_s"):
        Ledger(engine, CostModel(), call_timeout_s=0)
