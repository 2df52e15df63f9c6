"""Opening the Redis connection: bounded retries, socket deadlines, one-line failures."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import anyio
import redis.asyncio as aioredis
from loguru import logger
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from coordination.errors import BackendRejected, BackendUnavailable, CoordinationError, redis_errors

# Cap on one backoff sleep, so attempts=10 does not turn into minutes of silence.
_MAX_BACKOFF_S = 8.0


def redact(url: str) -> str:
    """`url` with any password replaced by ``***`` (for logs and error messages)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


async def connect(
    url: str, attempts: int = 5, backoff_s: float = 0.5, timeout_s: float = 2.0
) -> aioredis.Redis:
    """A client for `url` that has answered PING.

    Every socket operation of the client is bounded by `timeout_s`. redis-py's own retries are
    turned off: a lock script resent after a lost reply could act twice, so retrying is left to
    callers who know what is safe to repeat. Tries `attempts` times, sleeping `backoff_s`,
    2×, 4×… (capped at 8 s) in between, then raises `BackendUnavailable` naming the URL with its
    password hidden. A malformed URL raises `ValueError`; refused credentials `BackendRejected`.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts!r}")
    shown = redact(url)
    try:
        client = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
    except ValueError as exc:
        raise ValueError(f"REDIS_URL {shown}: {exc}") from None
    last: CoordinationError | None = None
    for attempt in range(1, attempts + 1):
        try:
            with redis_errors("PING"), anyio.fail_after(timeout_s):
                await client.ping()
            return client
        except BackendRejected:
            await client.aclose()
            raise
        except BackendUnavailable as exc:
            last = exc
            if attempt < attempts:
                delay = min(backoff_s * 2 ** (attempt - 1), _MAX_BACKOFF_S)
                logger.warning(
                    "Redis at {} not reachable (attempt {}/{}), retrying in {:.1f} s",
                    shown,
                    attempt,
                    attempts,
                    delay,
                )
                await anyio.sleep(delay)
    await client.aclose()
    raise BackendUnavailable(
        f"Redis at {shown} unreachable after {attempts} attempts: {last}"
    ) from last
