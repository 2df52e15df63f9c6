"""Alembic migrations on a real Postgres: up, idempotent, down, up again, and no drift."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, pool
from sqlalchemy.engine import make_url
from support import libpq

from ledger.db import wait_ready
from ledger.errors import LedgerUnavailable
from ledger.migrate import current_revision, downgrade_base, head_revision, upgrade_head
from ledger.models import Base

LEDGER_TABLES = {
    "workers", "stock_locks", "lock_events", "orders", "fills", "positions", "trades",
    "daily_summaries", "daily_worker_summaries", "risk_halts", "account_drifts", "param_changes",
}  # fmt: skip
HEAD = "0005_params"


def _tables(url: str) -> set[str]:
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    return {r[0] for r in rows}


def test_upgrade_on_empty_database(empty_database_url: str) -> None:
    assert current_revision(empty_database_url) is None
    upgrade_head(empty_database_url)
    assert current_revision(empty_database_url) == head_revision() == HEAD
    assert _tables(empty_database_url) == LEDGER_TABLES | {"alembic_version"}


def test_second_upgrade_is_a_no_op_and_keeps_data(empty_database_url: str) -> None:
    upgrade_head(empty_database_url)
    with psycopg.connect(libpq(empty_database_url)) as conn:
        conn.execute(
            "INSERT INTO workers (worker_id, status, started_at, heartbeat_at) "
            "VALUES ('w1', 'IDLE', now(), now())"
        )
    upgrade_head(empty_database_url)
    assert current_revision(empty_database_url) == HEAD
    with psycopg.connect(libpq(empty_database_url)) as conn:
        assert conn.execute("SELECT count(*) FROM workers").fetchone() == (1,)


def test_downgrade_to_base_then_upgrade_again(empty_database_url: str) -> None:
    upgrade_head(empty_database_url)
    downgrade_base(empty_database_url)
    assert current_revision(empty_database_url) is None
    # Alembic keeps its (now empty) bookkeeping table; no ledger table is left.
    assert _tables(empty_database_url) <= {"alembic_version"}
    with psycopg.connect(libpq(empty_database_url)) as conn:
        views = conn.execute(
            "SELECT count(*) FROM information_schema.views WHERE table_schema = 'public'"
        ).fetchone()
    assert views == (0,)
    upgrade_head(empty_database_url)
    assert current_revision(empty_database_url) == HEAD
    assert _tables(empty_database_url) >= LEDGER_TABLES


def test_concurrent_upgrades_apply_once(empty_database_url: str) -> None:
    with ThreadPoolExecutor(4) as pool_:
        list(pool_.map(upgrade_head, [empty_database_url] * 4))
    assert current_revision(empty_database_url) == HEAD


def test_models_match_the_migration(database_url: str) -> None:
    engine = create_engine(
        make_url(database_url).set(drivername="postgresql+psycopg"), poolclass=pool.NullPool
    )
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(ctx, Base.metadata)
    finally:
        engine.dispose()
    assert diff == []


def test_unix_socket_url(database_url: str) -> None:
    url = make_url(database_url)
    with psycopg.connect(libpq(database_url)) as conn:
        row = conn.execute("SHOW unix_socket_directories").fetchone()
    dirs = [d.strip() for d in (row[0] if row else "").split(",") if d.strip()]
    local = [d for d in dirs if os.path.isdir(d)]
    if not local:
        pytest.skip("the test server has no local unix socket")
    socket_url = url.set(host=None, port=None).update_query_dict({"host": local[0]})
    if url.port:
        socket_url = socket_url.update_query_dict({"port": str(url.port)})
    rendered = socket_url.render_as_string(hide_password=False)
    assert "?host=" in rendered
    upgrade_head(rendered)
    assert current_revision(rendered) == HEAD


def _alembic(url: str, action: str, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    from ledger.migrate import _script_location

    cfg = Config()
    cfg.set_main_option("script_location", _script_location())
    cfg.attributes["url"] = url
    getattr(command, action)(cfg, revision)


def test_0003_canonical_broker_ids_new_states_and_back(empty_database_url: str) -> None:
    url = empty_database_url
    _alembic(url, "upgrade", "0002")
    order = ("INSERT INTO orders (client_order_id, worker_id, symbol, side, order_type, qty, "
             "price, status, broker_order_id, fence, trading_day, created_at, updated_at) "
             "VALUES (%s, 'w1', '005930', 'BUY', 'LIMIT', 1, 1000, %s, %s, 1, '2026-01-05', "
             "now(), now())")  # fmt: skip
    ids = {"a": "117057", "b": "0000117057", "c": " 42 ", "d": "12345678901", "e": "X-9"}
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        for cid, bid in ids.items():
            conn.execute(order, (cid, "SENT", bid))
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(order, ("f", "SUBMITTING", None))
    upgrade_head(url)
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        rows = dict(conn.execute("SELECT client_order_id, broker_order_id FROM orders").fetchall())
        assert rows == {"a": "0000117057", "b": "0000117057", "c": "0000000042",
                        "d": "12345678901", "e": "X-9"}  # fmt: skip
        conn.execute(order, ("s", "SUBMITTING", None))
        conn.execute(order, ("w", "WITHDRAWN", None))
    _alembic(url, "downgrade", "0002")
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        states = dict(conn.execute("SELECT client_order_id, status FROM orders").fetchall())
        assert (states["s"], states["w"]) == ("UNKNOWN", "CANCELED")
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(order, ("f", "SUBMITTING", None))
    assert "risk_halts" not in _tables(url)
    upgrade_head(url)
    assert current_revision(url) == HEAD


@pytest.mark.anyio
async def test_wait_ready(database_url: str) -> None:
    await wait_ready(database_url, attempts=3, backoff_s=0.01)


@pytest.mark.anyio
async def test_wait_ready_gives_up_with_one_line() -> None:
    url = "postgresql+psycopg://postgres@127.0.0.1:1/nowhere"
    with pytest.raises(LedgerUnavailable) as info:
        await wait_ready(url, attempts=2, backoff_s=0.01)
    message = str(info.value)
    assert "127.0.0.1:1/nowhere" in message
    assert "after 2 attempts" in message
    assert "\n" not in message
