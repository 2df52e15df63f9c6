"""What a lock hands out: `Lease` (ownership of one symbol) and `LockInfo` (a lock as Redis
sees it), and the lock value format ``{worker_id}:{fence}``. Re-exported by `coordination.locks`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


def parse_value(value: str) -> tuple[str, int]:
    """Split a lock value ``{worker_id}:{fence}``; worker ids may themselves contain ``:``."""
    worker_id, sep, fence = value.rpartition(":")
    if not sep or not fence.isdigit():
        raise ValueError(f"not a lock value: {value!r}")
    return worker_id, int(fence)


@dataclass(frozen=True)
class Lease:
    """Ownership of one symbol, as last confirmed by Redis.

    `acquired_at` and `valid_until` are `time.monotonic()` seconds. `recovered_from` is the value
    of the previous lease when it had expired without being released (its owner died or
    stalled): the new owner should adopt what that worker left behind.
    """

    symbol: str
    worker_id: str
    fence: int
    ttl_ms: int
    acquired_at: float
    valid_until: float
    recovered_from: str | None = None

    @property
    def value(self) -> str:
        """The lock key's value while this lease holds it."""
        return f"{self.worker_id}:{self.fence}"

    def remaining_s(self, now: float | None = None) -> float:
        """Seconds of local validity left (negative once past `valid_until`)."""
        return self.valid_until - (time.monotonic() if now is None else now)


@dataclass(frozen=True)
class LockInfo:
    """A live lock as Redis sees it now."""

    symbol: str
    worker_id: str
    fence: int
    pttl_ms: int


def check_ttl(ttl_ms: int) -> int:
    if isinstance(ttl_ms, bool) or not isinstance(ttl_ms, int) or ttl_ms <= 0:
        raise ValueError(f"ttl_ms must be a positive integer, got {ttl_ms!r}")
    return ttl_ms


def renewed(lease: Lease, valid_until: float) -> Lease:
    """`lease` with a new `valid_until`: `dataclasses.replace` without its cost.

    Copying the instance dict is ~0.3 µs against ~1.3 µs for the frozen dataclass __init__ and
    ~1.9 µs for `replace`; a batch renew makes one per held lease. Lease must keep its __dict__
    (no slots) for this.
    """
    clone = object.__new__(type(lease))
    fields = clone.__dict__
    fields.update(lease.__dict__)
    fields["valid_until"] = valid_until
    return clone
