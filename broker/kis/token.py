"""`RedisTokenCache`: one KIS access token for every process that uses the same app key.

KIS issues a token at most once a minute per app key (`EGW00133` otherwise) and it lasts about a
day; `EGW00123` means it has expired. So the fleet keeps one token in Redis and lets exactly one
process issue a new one, at most once per `issue_interval_s`:

==========================  ======  ====================  ======================================
key (prefix ``fleet``)      type    TTL                   meaning
==========================  ======  ====================  ======================================
``fleet:kis:token``         string  PX until expiry       the access token; Redis drops it
                                    minus a margin        `refresh_margin_s` before KIS would
``fleet:kis:token:issue``   string  PX issue interval     exists for `issue_interval_s` after a
                                                          process started issuing; whoever sets
                                                          it (SET NX) is the only one to call
                                                          the token endpoint in that interval
==========================  ======  ====================  ======================================

A process that finds no token and cannot take the issue key waits for the token to appear
(polling), up to the caller's deadline. `invalidate(token)` removes the token only if it is
still the one that failed (compare and delete), so a fresh token is never thrown away because
of a stale reply. Each process also keeps the token in memory until its Redis TTL runs out, so
the common path costs no Redis round trip.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import anyio
import redis.asyncio as aioredis
from loguru import logger
from redis.exceptions import RedisError

from broker.kis.errors import TokenUnavailable
from coordination.keys import Keyspace

T = TypeVar("T")

# KEYS[1] the token key; ARGV[1] the token that failed. Deletes it only if unchanged.
_DELETE_IF = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


@dataclass(frozen=True, slots=True)
class IssuedToken:
    access_token: str
    expires_in_s: float


Issuer = Callable[[], Awaitable[IssuedToken]]


def token_key(prefix: str) -> str:
    return Keyspace(prefix).kis_token


def issue_key(prefix: str) -> str:
    return Keyspace(prefix).kis_token_issue


class RedisTokenCache:
    """The fleet's KIS access token: `get` returns a valid one, issuing it if it is this
    process's turn; `invalidate` drops one KIS called expired."""

    def __init__(
        self,
        redis: aioredis.Redis,
        prefix: str,
        issuer: Issuer,
        *,
        issue_interval_s: float = 61.0,
        refresh_margin_s: float = 600.0,
        poll_s: float = 0.05,
        timeout_s: float = 2.0,
    ) -> None:
        self.redis = redis
        self.key = token_key(prefix)
        self.issue_key = issue_key(prefix)
        self.issuer = issuer
        self.issue_interval_ms = int(issue_interval_s * 1000)
        self.refresh_margin_s = refresh_margin_s
        self.poll_s = poll_s
        self.timeout_s = timeout_s
        self._me = uuid.uuid4().hex
        self._local: tuple[str, float] | None = None  # (token, anyio time it stops being used)
        self._delete_if = redis.register_script(_DELETE_IF)
        self._lock = anyio.Lock()  # one Redis lookup / issue per process at a time

    async def get(self, wait_s: float) -> str:
        """A valid access token; `TokenUnavailable` if none could be had within `wait_s`."""
        local = self._local
        if local is not None and anyio.current_time() < local[1]:
            return local[0]
        deadline = anyio.current_time() + wait_s
        async with self._lock:
            while True:
                local = self._local
                if local is not None and anyio.current_time() < local[1]:
                    return local[0]
                token = await self._lookup()
                if token is not None:
                    return token
                if await self._take_turn():
                    return await self._issue()
                if anyio.current_time() + self.poll_s > deadline:
                    raise TokenUnavailable(f"no KIS access token within {wait_s:g} s")
                await anyio.sleep(self.poll_s)

    async def invalidate(self, token: str) -> None:
        """Forget `token` (KIS called it expired) here and in Redis, unless already replaced."""
        if self._local is not None and self._local[0] == token:
            self._local = None
        await self._redis("drop the expired token", self._delete_if(keys=[self.key], args=[token]))

    async def _lookup(self) -> str | None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(self.key)
            pipe.pttl(self.key)
            raw, pttl = await self._redis("read the token", pipe.execute())
        if raw is None or pttl is None or int(pttl) <= 0:
            return None
        token = raw.decode() if isinstance(raw, bytes) else str(raw)
        self._local = (token, anyio.current_time() + int(pttl) / 1000)
        return token

    async def _take_turn(self) -> bool:
        taken = await self._redis(
            "take the issue turn",
            self.redis.set(self.issue_key, self._me, nx=True, px=self.issue_interval_ms),
        )
        return bool(taken)

    async def _issue(self) -> str:
        # The issue key stays set even if this fails: KIS may have counted the attempt, and a
        # second one inside the minute would only earn EGW00133.
        issued = await self.issuer()
        ttl_s = issued.expires_in_s - self.refresh_margin_s
        if ttl_s <= 0:
            ttl_s = issued.expires_in_s / 2
        await self._redis(
            "store the token",
            self.redis.set(self.key, issued.access_token, px=max(1, int(ttl_s * 1000))),
        )
        self._local = (issued.access_token, anyio.current_time() + ttl_s)
        logger.info("KIS access token issued, valid {:.0f} s here", ttl_s)
        return issued.access_token

    async def _redis(self, what: str, call: Awaitable[T]) -> T:
        try:
            with anyio.fail_after(self.timeout_s):
                return await call
        except TimeoutError as exc:
            raise TokenUnavailable(f"KIS token cache: Redis did not {what} in time") from exc
        except RedisError as exc:
            raise TokenUnavailable(f"KIS token cache: cannot {what}: {exc}") from exc
