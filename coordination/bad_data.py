"""Bad data in Redis is an alarm, not a stall.

A key of the wrong type, or a value that is not what `coordination.keys` says (garbage at a lock
key, a non-number where a fence belongs, an unreadable stream entry), was written by something
other than this package: a human with redis-cli, a buggy tool, a chaos test. It must not stop
the fleet, so each adapter checks the keys it touches and, per key:

- logs at ERROR, naming the key and what was wrong;
- calls the `OnBadData` hook its caller gave (``on_bad_data(kind, key)``), for a metric;
- repairs or skips that key alone, and goes on with the others (what each does is in its
  docstring and in the scripts' headers, ``coordination/lua/checks.lua``).

The Lua scripts report bad data in their reply as ``kind, key, problem`` triples instead of
raising an error, which would fail the whole call, i.e. every symbol of a batch, on every retry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Any

from loguru import logger

from coordination._wire import text

OnBadData = Callable[[str, str], None]
"""``on_bad_data(kind, key)``: called once per piece of bad data met, after it is logged.

`kind` is a `BadData` value; `key` names the Redis key (for a stream entry, the stream and the
entry id). Keys are many: count by `kind`, log by `key`. Must not block; its exceptions are
logged and swallowed."""


class BadData(StrEnum):
    """What held the bad data."""

    LOCK = "lock"  # {prefix}:lock:{symbol}: not a lease value, or a lease without a TTL
    LEASE = "lease"  # {prefix}:lease:{symbol}: not a lease value
    FENCE = "fence"  # {prefix}:fence:{symbol}: not an integer >= 0
    EVENT = "event"  # an entry of {prefix}:events that cannot be read as a notice
    PARAMS = "params"  # {prefix}:params:version: not an integer >= 0


Report = tuple[str, str, str]
"""(kind, key, what was wrong)."""


def report(hook: OnBadData | None, kind: str, key: str, problem: str) -> None:
    """Log one piece of bad data at ERROR and count it through `hook`."""
    logger.error("bad data in Redis: {} key {}: {}", kind, key, problem)
    if hook is None:
        return
    try:
        hook(kind, key)
    except Exception:
        logger.exception("on_bad_data hook failed for {} {}", kind, key)


def script_reports(hook: OnBadData | None, flat: Sequence[Any]) -> list[Report]:
    """Report each ``kind, key, problem`` triple of a script's reply; returns them."""
    found = []
    for i in range(0, len(flat) - 2, 3):
        kind, key, problem = text(flat[i]), text(flat[i + 1]), text(flat[i + 2])
        report(hook, kind, key, problem)
        found.append((kind, key, problem))
    return found
