"""`RedisRateLimiter`: one request budget for every process that uses the same KIS app key.

KIS counts requests per app key, not per connection: about 20 per second on a real account and
2 on the mock-trading domain, and answers `EGW00201` beyond that. Every worker of the fleet
therefore takes a slot from one sliding-window log in Redis before each request.

Key (prefix ``fleet`` shown):

=====================  ====  ==================  ===========================================
key                    type  TTL                 meaning
=====================  ====  ==================  ===========================================
``fleet:kis:rate``     zset  PX window + 1 s     one member per request granted in the last
                                                 window; score = Redis server time in µs
=====================  ====  ==================  ===========================================

A sliding window (rather than a token bucket) because it bounds what KIS can see in *any*
one-second interval: a bucket that refills continuously lets through its burst plus a second's
refill within one second. The window is one second plus `margin_s`, which absorbs the jitter
between the moment Redis grants a slot and the moment the request reaches KIS. Time is Redis's
own (`TIME` inside the script), so clocks of different hosts never disagree about the window.
"""

from __future__ import annotations

import itertools
import uuid

import anyio
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from broker.errors import BrokerUnavailable, RateLimited
from broker.kis.keys import KisKeys

# Kept inline rather than in a .lua file: the package data of `broker` ships only py.typed.
# KEYS[1]  {prefix}:kis:rate
# ARGV[1]  requests allowed per window (integer >= 1)
# ARGV[2]  window in µs (integer > 0)
# ARGV[3]  caller-unique member suffix (process id + counter), so two grants never collide
# Returns 0 when a slot was granted (and recorded), else the µs until the oldest grant leaves
# the window (>= 1). Nothing is recorded for a refused call.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now, t[1] .. '.' .. t[2] .. ':' .. ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000) + 1000)
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, math.ceil(tonumber(oldest[2]) + window - now))
"""

#: Slack between a grant and the request's arrival at KIS, which counts on arrival. A loaded
#: host (or a TLS handshake) delays a request by tens of milliseconds and more; 50 ms let
#: refusals through on a busy 2-core test host, 250 ms did not. It costs a fifth of the budget
#: (20 per 1.25 s on a real account) until a gateway schedules requests as KIS counts them.
MARGIN_S = 0.25

#: Requests per second by KIS domain when not configured.
DEFAULT_RATE_PER_S = {"real": 20.0, "mock": 2.0}


class RedisRateLimiter:
    """Fleet-wide KIS request budget: `acquire` waits for a slot, up to a deadline.

    `rate_per_s` may be fractional (0.5 = one request per two seconds); it is applied as
    `ceil(rate)` requests per `ceil(rate) / rate` seconds, stretched by `margin_s`.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: KisKeys,
        rate_per_s: float,
        *,
        margin_s: float = MARGIN_S,
        timeout_s: float = 2.0,
    ) -> None:
        if rate_per_s <= 0:
            raise ValueError(f"rate_per_s must be > 0, got {rate_per_s!r}")
        self.redis = redis
        self.key = keys.rate
        self.rate_per_s = rate_per_s
        self.limit = max(1, int(-(-rate_per_s // 1)))
        self.window_us = int((self.limit / rate_per_s + margin_s) * 1_000_000)
        self.timeout_s = timeout_s
        self._script = redis.register_script(_ACQUIRE)
        self._me = uuid.uuid4().hex[:12]
        self._seq = itertools.count()

    async def acquire(self, wait_s: float) -> None:
        """Take one slot, waiting at most `wait_s` seconds; `RateLimited` if none came."""
        deadline = anyio.current_time() + wait_s
        while True:
            member = f"{self._me}:{next(self._seq)}"
            try:
                with anyio.fail_after(self.timeout_s):
                    wait_us = int(
                        await self._script(
                            keys=[self.key], args=[self.limit, self.window_us, member]
                        )
                    )
            except TimeoutError as exc:
                raise BrokerUnavailable("KIS rate limiter: Redis did not answer") from exc
            except RedisError as exc:
                raise BrokerUnavailable(f"KIS rate limiter: {exc}") from exc
            if wait_us == 0:
                return
            pause = wait_us / 1_000_000
            if anyio.current_time() + pause > deadline:
                raise RateLimited(f"no KIS request slot within {wait_s:g} s")
            await anyio.sleep(pause)
