"""`RedisTokenCache`: one KIS access token for every process that uses the same app key.

KIS issues a token at most once a minute per app key (HTTP 403 `EGW00133` otherwise), for about a
day, and says until when in ``access_token_token_expired`` ("YYYY-MM-DD HH:MM:SS", Korea time);
asked again within six hours it hands back the same token with the same expiry. So the fleet
keeps one token per domain and app key in Redis, lets exactly one process ask for a new one, at
most once per `issue_interval_s`, and stops using a token `refresh_margin_s` before the expiry
KIS stated (read on the injected `Clock`, so a paper exchange's day is honoured too):

================================  ======  ==================  ==================================
key (prefix ``fleet``)            type    TTL                 meaning
================================  ======  ==================  ==================================
``fleet:kis:token:{d}:{h}``       string  PX until the        JSON ``{"token", "expires_at",
                                          expiry less the     "use_until"}`` (ISO 8601) of
                                          margin              domain ``d``, app key hash ``h``
``fleet:kis:token:issue:{d}:{h}`` string  PX issue interval   held by the process whose turn it
                                                              is to ask KIS (SET NX); its value
                                                              becomes ``wait`` when KIS answered
                                                              EGW00133 or the ask failed
================================  ======  ==================  ==================================

A process that finds no usable token and cannot take the issue turn waits: for the token to
appear while another process asks (polling Redis, not KIS), or, when the turn is marked
``wait``, until the turn expires; never past the caller's deadline. `invalidate(token)` removes
the token only if it is still the one KIS refused (compare and delete), so a fresh token is
never thrown away because of a stale reply. Each process keeps the token in memory as well.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypeVar

import anyio
import orjson
import redis.asyncio as aioredis
from loguru import logger
from redis.exceptions import RedisError

from broker.errors import BrokerError
from broker.kis.errors import TokenTooSoon, TokenUnavailable
from broker.kis.keys import KisKeys
from market.clock import Clock

T = TypeVar("T")

# KEYS[1] the token key; ARGV[1] the token KIS refused. Deletes the key only if it still holds
# that token (a fresh one written meanwhile stays).
_DELETE_IF = """
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local ok, doc = pcall(cjson.decode, v)
if ok and type(doc) == 'table' and doc['token'] == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
#: Value of the issue key while nobody should ask KIS (it refused, or the ask failed).
_WAIT = b"wait"


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A token as KIS issued it; `expires_at` is ``access_token_token_expired`` (aware)."""

    access_token: str = field(repr=False)
    expires_at: datetime


Issuer = Callable[[], Awaitable[IssuedToken]]


@dataclass(frozen=True, slots=True)
class _Held:
    token: str = field(repr=False)
    use_until: datetime  # clock time after which this process stops using it


class RedisTokenCache:
    """The fleet's KIS access token: `get` returns a usable one, issuing it if it is this
    process's turn; `invalidate` drops one KIS refused (EGW00121 / EGW00123)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: KisKeys,
        issuer: Issuer,
        clock: Clock,
        *,
        issue_interval_s: float = 61.0,
        refresh_margin_s: float = 600.0,
        poll_s: float = 0.05,
        timeout_s: float = 2.0,
    ) -> None:
        self.redis = redis
        self.key = keys.token
        self.issue_key = keys.token_issue
        self.issuer = issuer
        self.clock = clock
        self.issue_interval_ms = max(1, int(issue_interval_s * 1000))
        self.refresh_margin = timedelta(seconds=refresh_margin_s)
        self.poll_s = poll_s
        self.timeout_s = timeout_s
        self._me = uuid.uuid4().hex
        self._local: _Held | None = None
        self._delete_if = redis.register_script(_DELETE_IF)
        self._lock = anyio.Lock()  # one Redis lookup / issue per process at a time

    def __repr__(self) -> str:
        return f"RedisTokenCache({self.key!r})"

    async def get(self, wait_s: float) -> str:
        """A usable access token; `TokenUnavailable` if none could be had within `wait_s`."""
        held = self._usable(self._local)
        if held is not None:
            return held
        deadline = anyio.current_time() + wait_s
        async with self._lock:
            poll = self.poll_s
            while True:
                held = self._usable(self._local) or await self._lookup()
                if held is not None:
                    return held
                if await self._take_turn():
                    try:
                        return await self._issue()
                    except BrokerError as exc:
                        # KIS may have counted the attempt: nobody asks again this interval
                        await self._mark_wait()
                        if not isinstance(exc, TokenTooSoon):
                            raise
                        logger.warning("KIS refused a token for now ({}); waiting", exc)
                pause, marked = await self._pause(poll)
                left = deadline - anyio.current_time()
                if left <= 0 or (marked and pause > left):
                    # marked: nobody asks KIS before the turn frees, so waiting is pointless
                    raise TokenUnavailable(f"no KIS access token within {wait_s:g} s")
                await anyio.sleep(min(pause, left))
                poll = min(poll * 2, 0.5)

    async def invalidate(self, token: str) -> None:
        """Forget `token` (KIS refused it) here and in Redis, unless already replaced."""
        if self._local is not None and self._local.token == token:
            self._local = None
        await self._redis("drop the refused token", self._delete_if(keys=[self.key], args=[token]))

    # ----- internals ----------------------------------------------------------------------

    def _usable(self, held: _Held | None) -> str | None:
        if held is None or self.clock.now() >= held.use_until:
            return None
        return held.token

    def _use_until(self, expires_at: datetime) -> datetime:
        now = self.clock.now()
        if expires_at - self.refresh_margin > now:
            return expires_at - self.refresh_margin
        return expires_at  # the margin is longer than what is left: use it to the end

    async def _lookup(self) -> str | None:
        raw = await self._redis("read the token", self.redis.get(self.key))
        if raw is None:
            return None
        try:
            doc = orjson.loads(raw)
            held = _Held(str(doc["token"]), datetime.fromisoformat(doc["use_until"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            logger.error("KIS token cache: unreadable value at {}; issuing a new token", self.key)
            return None
        self._local = held
        return self._usable(held)

    async def _take_turn(self) -> bool:
        taken = await self._redis(
            "take the issue turn",
            self.redis.set(self.issue_key, self._me, nx=True, px=self.issue_interval_ms),
        )
        return bool(taken)

    async def _mark_wait(self) -> None:
        await self._redis(
            "mark the issue turn", self.redis.set(self.issue_key, _WAIT, xx=True, keepttl=True)
        )

    async def _pause(self, poll: float) -> tuple[float, bool]:
        """How long to wait before looking again, and whether the turn is marked ``wait``."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(self.issue_key)
            pipe.pttl(self.issue_key)
            value, pttl = await self._redis("read the issue turn", pipe.execute())
        if value == _WAIT and pttl is not None and int(pttl) > 0:
            return int(pttl) / 1000, True  # nobody will ask KIS before the turn frees
        return poll, False  # someone is asking right now: the token shows up any moment

    async def _issue(self) -> str:
        issued = await self.issuer()
        use_until = self._use_until(issued.expires_at)
        doc = {
            "token": issued.access_token,
            "expires_at": issued.expires_at.isoformat(),
            "use_until": use_until.isoformat(),
        }
        wall_s = (use_until - self.clock.now()).total_seconds() / max(self.clock.speed, 1e-9)
        await self._redis(
            "store the token",
            self.redis.set(self.key, orjson.dumps(doc), px=max(1, int(wall_s * 1000))),
        )
        self._local = _Held(issued.access_token, use_until)
        logger.info("KIS access token issued, used until {}", use_until.isoformat())
        return issued.access_token

    async def _redis(self, what: str, call: Awaitable[T]) -> T:
        try:
            with anyio.fail_after(self.timeout_s):
                return await call
        except TimeoutError as exc:
            raise TokenUnavailable(f"KIS token cache: Redis did not {what} in time") from exc
        except RedisError as exc:
            raise TokenUnavailable(f"KIS token cache: cannot {what}: {exc}") from exc
