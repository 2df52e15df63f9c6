"""Coordination errors, grouped by what the caller must do.

    CoordinationError
    ├── BackendUnavailable      transient: Redis unreachable, refused the connection or did not
    │                           answer before the deadline; retry with backoff. Whether a write
    │                           sent just before the failure took effect is unknown.
    ├── BackendRejected         fatal: Redis answered with an error (script error, wrong key type,
    │                           bad credentials, out of memory): a bug or a misconfigured server;
    │                           stop and page someone rather than retry.
    ├── LockLost                the lease on a symbol is gone (expired, stolen, or could not be
    │                           renewed before its local deadline): stop acting on the symbol now.
    └── LockNotAcquired         the symbol is owned by another worker.

Every public method of the package raises only these (plus `ValueError` for bad arguments):
`redis.exceptions` are translated at the boundary by `redis_errors` and re-raised `from exc`, so
they never reach the worker loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis.exceptions as rexc


class CoordinationError(Exception):
    """Root of every error the coordination package raises."""


class BackendUnavailable(CoordinationError):
    """Transient: Redis could not be reached in time. Retry with backoff."""


class BackendRejected(CoordinationError):
    """Fatal: Redis refused the command. Retrying will not help."""


class LockLost(CoordinationError):
    """The lease on `symbol` is no longer ours; `reason` says how it was lost."""

    def __init__(self, symbol: str, reason: str) -> None:
        super().__init__(f"lock on {symbol} lost: {reason}")
        self.symbol = symbol
        self.reason = reason


class LockNotAcquired(CoordinationError):
    """Another worker owns `symbol`."""

    def __init__(self, symbol: str) -> None:
        super().__init__(f"lock on {symbol} is held by another worker")
        self.symbol = symbol


# Errors that say "could not talk to Redis" rather than "Redis said no". Authentication and
# authorization failures subclass ConnectionError in redis-py but retrying them is pointless.
_FATAL_CONNECTION = (rexc.AuthenticationError, rexc.AuthorizationError)
# ReadOnlyError / TryAgain / BusyLoading happen during a failover or a restart: they clear up.
_TRANSIENT = (
    rexc.ConnectionError,
    rexc.TimeoutError,
    rexc.ReadOnlyError,
    rexc.TryAgainError,
    TimeoutError,  # anyio.fail_after and asyncio.timeout raise the builtin
    OSError,
)


def translate(what: str, exc: BaseException) -> CoordinationError | None:
    """Our error for a redis-py (or socket/timeout) exception, or None if it is not one."""
    if isinstance(exc, _FATAL_CONNECTION):
        return BackendRejected(f"{what}: {exc}")
    if isinstance(exc, _TRANSIENT):
        return BackendUnavailable(f"{what}: {str(exc) or type(exc).__name__}")
    if isinstance(exc, rexc.RedisError):
        return BackendRejected(f"{what}: {exc}")
    return None


@contextmanager
def redis_errors(what: str) -> Iterator[None]:
    """Translate redis-py exceptions raised inside the block into the tree above.

    `what` names the operation (and symbol) for the message, e.g. ``"acquire 005930"``.
    """
    try:
        yield
    except Exception as exc:
        ours = translate(what, exc)
        if ours is None:
            raise
        raise ours from exc
