"""Shared fixtures: real Postgres and real Redis, never mocks of the ledger or the locks.

With `DATABASE_URL` / `REDIS_URL` set (CI, a developer with local servers) the tests use those
servers; without them they start the same embedded servers as `python -m worker`.
Each test gets its own database (cloned from a migrated template) and its own key prefix, and
both are removed afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import psycopg
import pytest
import redis.asyncio as aioredis
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

if TYPE_CHECKING:
    from ledger.repository import Ledger
from support import libpq


def _with_db(url: str, db: str) -> str:
    return make_url(url).set(database=db).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """SQLAlchemy URL of a Postgres server (any database on it) the tests may create DBs on."""
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    from worker.servers import embedded_postgres

    with embedded_postgres("tradefleet-test") as embedded_url:
        yield embedded_url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    from worker.servers import embedded_redis

    with embedded_redis() as embedded_url:
        yield embedded_url


@pytest.fixture(scope="session")
def template_db(pg_server_url: str) -> Iterator[str]:
    """A database migrated to head once per session; tests clone it."""
    from ledger.migrate import upgrade_head

    name = f"tf_tpl_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(libpq(pg_server_url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        upgrade_head(_with_db(pg_server_url, name))
        yield name
    finally:
        with psycopg.connect(libpq(pg_server_url), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _create_db(server_url: str, template: str | None) -> str:
    name = f"tf_test_{uuid.uuid4().hex[:12]}"
    tpl = f' TEMPLATE "{template}"' if template else ""
    with psycopg.connect(libpq(server_url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"{tpl}')
    return name


def _drop_db(server_url: str, name: str) -> None:
    with psycopg.connect(libpq(server_url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def empty_database_url(pg_server_url: str) -> Iterator[str]:
    """URL of a fresh, empty database (no migrations applied)."""
    name = _create_db(pg_server_url, None)
    try:
        yield _with_db(pg_server_url, name)
    finally:
        _drop_db(pg_server_url, name)


class _DatabasePool:
    """Databases at migration head, handed to one test at a time and emptied in between.

    Creating a database from the template costs ~0.3 s and dropping it as much; emptying one
    (its sessions ended, every table truncated, identities restarted) costs a few ms, and the
    next test sees exactly what a fresh clone would hold: the schema and no rows.
    """

    def __init__(self, server_url: str, template: str) -> None:
        self.server_url = server_url
        self.template = template
        self.free: list[str] = []
        self.every: list[str] = []

    def take(self) -> str:
        if self.free:
            return self.free.pop()
        name = _create_db(self.server_url, self.template)
        self.every.append(name)
        return name

    def give_back(self, name: str) -> None:
        url = _with_db(self.server_url, name)
        try:
            with psycopg.connect(libpq(self.server_url), autocommit=True) as conn:
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = %s AND pid <> pg_backend_pid()",
                    (name,),
                )
            with psycopg.connect(libpq(url), autocommit=True) as conn:
                tables = [
                    r[0]
                    for r in conn.execute(
                        "SELECT quote_ident(tablename) FROM pg_tables WHERE schemaname = 'public'"
                        " AND tablename <> 'alembic_version'"
                    ).fetchall()
                ]
                if tables:
                    conn.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")
        except psycopg.Error:
            _drop_db(self.server_url, name)  # could not be emptied: never handed out again
            self.every.remove(name)
            return
        self.free.append(name)

    def close(self) -> None:
        for name in self.every:
            _drop_db(self.server_url, name)


@pytest.fixture(scope="session")
def database_pool(pg_server_url: str, template_db: str) -> Iterator[_DatabasePool]:
    pool = _DatabasePool(pg_server_url, template_db)
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture
def database_url(pg_server_url: str, database_pool: _DatabasePool) -> Iterator[str]:
    """URL of a database at migration head with no rows, this test's alone."""
    name = database_pool.take()
    try:
        yield _with_db(pg_server_url, name)
    finally:
        database_pool.give_back(name)


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A Redis key prefix of this test's own; every key under it is deleted afterwards."""
    import redis as syncredis

    value = f"t{uuid.uuid4().hex[:10]}"
    yield value
    client = syncredis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{value}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An async engine on this test's database."""
    from ledger.db import create_engine

    eng = create_engine(database_url)
    try:
        yield eng
    finally:
        await eng.dispose()


@pytest.fixture
def ledger(engine: AsyncEngine) -> Ledger:
    """The ledger on this test's database, with today's default costs."""
    from ledger.repository import Ledger
    from market.costs import CostModel

    return Ledger(engine, CostModel())


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()
