"""Small helpers shared by the Redis adapters: reply decoding, timestamps, per-call deadlines."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import anyio

from coordination.errors import redis_errors

# Deadline for one Redis round trip when the caller does not choose one. Generous next to a
# sub-millisecond LAN round trip, short next to the default 10 s lock TTL.
DEFAULT_TIMEOUT_S = 2.0


def text(value: bytes | str | int) -> str:
    """A reply element as str, whether or not the client was built with decode_responses."""
    if isinstance(value, bytes):
        return value.decode()
    return str(value)


def utc_iso(moment: datetime) -> str:
    """The one timestamp format on the wire: ISO 8601, UTC, milliseconds, `+00:00` offset."""
    if moment.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


def now_iso() -> str:
    return utc_iso(datetime.now(UTC))


def parse_iso(value: str) -> datetime:
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:  # written by someone else without an offset: the format says UTC
        moment = moment.replace(tzinfo=UTC)
    return moment


@contextmanager
def bounded(what: str, timeout_s: float) -> Iterator[None]:
    """Run the block under a deadline and translate Redis errors (see `coordination.errors`).

    Cancelling a redis-py command mid-reply is safe: the client drops that connection.
    """
    with redis_errors(what), anyio.fail_after(timeout_s):
        yield
