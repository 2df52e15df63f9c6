"""Engines for the ledger: the async one the worker uses, and URL handling shared with
`ledger.migrate`.

URLs may be written `postgresql://`, `postgres://` or `postgresql+psycopg://`; all are run on
psycopg 3. A unix socket is given as a query parameter: `postgresql+psycopg://user@/db?host=/run/x`.
"""

from __future__ import annotations

import anyio
from sqlalchemy import URL, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from ledger.errors import LedgerError, LedgerUnavailable, translate_db_errors

DRIVER = "postgresql+psycopg"


def normalize_url(url: str | URL) -> URL:
    """The URL with the psycopg 3 driver; ValueError for a non-Postgres URL."""
    parsed = make_url(url)
    if parsed.get_backend_name() not in ("postgresql", "postgres"):
        raise ValueError(f"not a PostgreSQL URL: {parsed.render_as_string(hide_password=True)}")
    return parsed.set(drivername=DRIVER)


def describe(url: str | URL) -> str:
    """`host:port/db` (or `socket-dir/db`) for one-line messages; never the password."""
    parsed = make_url(url)
    host = parsed.host or parsed.query.get("host") or "localhost"
    if isinstance(host, tuple):
        host = ",".join(host)
    port = f":{parsed.port}" if parsed.port else ""
    return f"{host}{port}/{parsed.database or ''}"


#: Defaults of the engine's deadlines (seconds); `Ledger` adds a per-call deadline on top.
DEFAULT_CONNECT_TIMEOUT_S = 5
DEFAULT_STATEMENT_TIMEOUT_S = 10.0
DEFAULT_LOCK_TIMEOUT_S = 5.0


def create_engine(
    url: str | URL,
    *,
    connect_timeout_s: int = DEFAULT_CONNECT_TIMEOUT_S,
    statement_timeout_s: float = DEFAULT_STATEMENT_TIMEOUT_S,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
) -> AsyncEngine:
    """An async engine on psycopg 3, with deadlines on every connection.

    * `connect_timeout_s`: libpq's connect_timeout (whole seconds; libpq waits at least 2);
    * `statement_timeout_s`, `lock_timeout_s`: set server-side for the session (`options`), so
      a slow statement or a wait for a row or advisory lock is aborted by Postgres; both
      surface as `LedgerUnavailable`, nothing committed.

    They bound what the server can bound; a network that stops answering is bounded by
    `Ledger`'s per-call deadline. No pre-ping on checkout (a round trip per ledger call on the
    hot path): a connection that died is reported as `LedgerUnavailable` by the call that meets
    it, SQLAlchemy then invalidates the pool, and the caller's retry gets a fresh connection.
    """
    for name, value in (("connect_timeout_s", connect_timeout_s),
                        ("statement_timeout_s", statement_timeout_s),
                        ("lock_timeout_s", lock_timeout_s)):  # fmt: skip
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value}")
    parsed = normalize_url(url)
    statement_ms, lock_ms = _ms(statement_timeout_s), _ms(lock_timeout_s)
    options = f"-c statement_timeout={statement_ms} -c lock_timeout={lock_ms}"
    given = parsed.query.get("options")
    if given:  # the URL's own options come first; ours win where both set one
        options = f"{given if isinstance(given, str) else ' '.join(given)} {options}"
    connect_args = {"connect_timeout": max(1, int(connect_timeout_s)), "options": options}
    return create_async_engine(parsed, pool_pre_ping=False, connect_args=connect_args)


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


async def wait_ready(url: str | URL, attempts: int = 30, backoff_s: float = 0.5) -> None:
    """Return once the database answers `SELECT 1`; retry with a doubling, capped backoff.

    Raises `LedgerUnavailable` (one line naming host and database) after `attempts` tries.
    """
    if attempts < 1:
        raise ValueError("attempts must be >= 1")
    engine = create_engine(url)
    last: LedgerError | None = None
    delay = backoff_s
    try:
        for attempt in range(attempts):
            try:
                with translate_db_errors():
                    async with engine.connect() as conn:
                        await conn.execute(text("SELECT 1"))
                return
            except LedgerUnavailable as exc:
                last = exc
            if attempt + 1 < attempts:
                await anyio.sleep(delay)
                delay = min(delay * 2, 5.0)
    finally:
        await engine.dispose()
    raise LedgerUnavailable(
        f"Postgres at {describe(url)} not reachable after {attempts} attempts: {last}"
    )
