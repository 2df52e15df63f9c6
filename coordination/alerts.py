"""`RedisAlertGate`: the fleet's deduplication and rate limit of alerts to a person.

Whoever is about to send an alert asks `admit` first, with the alert's digest (what happened,
where, why: never its time or notice id). One script (``alert_admit.lua``) decides:

* **duplicate**: an identical alert was admitted within the dedup window
  (``{prefix}:alert:seen:{digest}``, SET with a PX TTL): drop it;
* **limited**: the fleet already admitted its limit of alerts in the current period
  (``{prefix}:alert:rate``, INCR with a PX TTL): drop it, counted in
  ``{prefix}:alert:suppressed``; it is not marked seen, so reported again later it may go out;
* **send**: marked seen, counted; `Admission.suppressed` says how many alerts the rate limit
  dropped since the last admitted one (the next alert carries that figure to the person).

Any number of senders may race on one alert: it is admitted once. Every call is bounded by
`timeout_s` and raises only `CoordinationError`s.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum

import redis.asyncio as aioredis

from coordination._wire import DEFAULT_TIMEOUT_S, LuaScript, bounded
from coordination.keys import Keyspace

_ADMIT = LuaScript("alert_admit")


class Verdict(StrEnum):
    SEND = "send"
    DUPLICATE = "duplicate"
    LIMITED = "limited"


@dataclass(frozen=True, slots=True)
class Admission:
    verdict: Verdict
    #: alerts the rate limit dropped since the last admitted one (only with SEND)
    suppressed: int = 0


def digest(identity: str) -> str:
    """The key part of an alert's identity: 32 hex digits of its SHA-256."""
    return hashlib.sha256(identity.encode()).hexdigest()[:32]


class RedisAlertGate:
    """Dedup window and per-fleet rate limit of alerts (see the module docstring)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keyspace,
        *,
        dedup_ms: int,
        limit: int,
        period_ms: int = 60_000,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        if dedup_ms <= 0 or limit <= 0 or period_ms <= 0:
            raise ValueError(
                f"dedup_ms, limit and period_ms must be positive, got {dedup_ms}, {limit}, "
                f"{period_ms}"
            )
        self.redis = redis
        self.keys = keys
        self.dedup_ms = dedup_ms
        self.limit = limit
        self.period_ms = period_ms
        self.timeout_s = timeout_s

    async def admit(self, identity: str) -> Admission:
        """May the alert whose identity is `identity` be sent now? (see the module docstring)"""
        k = self.keys
        async with bounded("admit alert", self.timeout_s):
            flag, suppressed = await _ADMIT(
                self.redis, 3, k.alert_seen(digest(identity)), k.alert_rate,
                k.alert_suppressed, self.dedup_ms, self.limit, self.period_ms,
            )  # fmt: skip
        if int(flag) == 1:
            return Admission(Verdict.SEND, int(suppressed))
        return Admission(Verdict.DUPLICATE if int(flag) == 0 else Verdict.LIMITED)
