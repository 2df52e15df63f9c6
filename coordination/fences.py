"""Fence counters that survive a Redis restart: `ensure_fences`.

Redis without persistence forgets ``{prefix}:fence:*`` when it restarts, and a replica promoted
by a failover may be behind; the next INCR would then hand out a fence that was already used,
and Invariant 1 (a newer owner always has a higher fence) would break. Postgres remembers every
fence that reached the ledger (`Ledger.max_fences`), so after a restart each counter is raised
to that floor plus `headroom` before anyone acquires.

A restart is detected by the server's ``run_id`` (``INFO server``), which changes on every
start and differs between a master and its replica: ``{prefix}:meta`` records the run_id the
counters were seeded on. Checking costs one round trip; call `ensure_fences` when the worker
starts, after a reconnect, and before acquiring (the `FenceSeeder.check` fast path).

`headroom` covers fences Redis issued in the instants before it died that never reached the
ledger (an acquire whose mirror write was in flight): skipping past them keeps "strictly
increasing" true without knowing them. Fences are BIGINT, so a jump of 1000 per restart costs
nothing. A symbol the ledger never saw starts again from 1; no order can have been written
under its old fences, because the fenced insert needs a mirror row.

A single counter holding bad data (not an integer: a wrong type, garbage) is repaired the same
way, from the same floor: `FenceSeeder.reseed_symbol`, which `RedisSymbolLock` calls through its
``reseed_fence`` hook (`FenceSeeder.reseeder`) when an acquire finds such a counter, and
`seed` replaces any it meets.

What it does not do: an acquire that reaches the restarted server before anyone seeded it gets a
low fence. The ledger refuses that fence (`Ledger.lock_acquired` keeps the mirror on the higher
one, so `create_order` raises `StaleFence`); its holder simply cannot trade until it reacquires.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

import redis.asyncio as aioredis
from loguru import logger
from redis.typing import EncodableT

from coordination._wire import DEFAULT_TIMEOUT_S, bounded, lua_source, now_iso, text
from coordination.bad_data import OnBadData, script_reports
from coordination.keys import Keyspace

MaxFences = Callable[[], Awaitable[Mapping[str, int]]]

DEFAULT_HEADROOM = 1_000


def lua(name: str) -> str:
    """The text of ``coordination/lua/{name}.lua``, its includes expanded."""
    return lua_source(name)


class FenceSeeder:
    """Detects a Redis restart and reseeds the fence counters, for one prefix.

    Safe to run from any number of workers at once: the seeding script reads the server's
    run_id itself and seeds only if ``{prefix}:meta`` does not already name it, and it only ever
    raises a counter (or replaces one holding bad data, reported through `on_bad_data`).
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keyspace,
        *,
        headroom: int = DEFAULT_HEADROOM,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        on_bad_data: OnBadData | None = None,
    ) -> None:
        if headroom < 0:
            raise ValueError(f"headroom must be >= 0, got {headroom!r}")
        self.redis = redis
        self.keys = keys
        self.headroom = headroom
        self.timeout_s = timeout_s
        self._on_bad_data = on_bad_data
        self._epoch = redis.register_script(lua("fence_epoch"))
        self._seed = redis.register_script(lua("seed_fences"))
        self._reseed_one = redis.register_script(lua("reseed_fence"))

    async def check(self) -> bool:
        """True if the counters were seeded on the server answering now (one round trip)."""
        async with bounded("fence epoch", self.timeout_s):
            seeded, current = await self._epoch(keys=[self.keys.meta])
        return bool(text(current)) and text(seeded) == text(current)

    async def seed(self, floors: Mapping[str, int]) -> int:
        """Raise each symbol's counter to its floor + headroom, once per Redis server.

        Returns how many counters were raised, or -1 if this server was already seeded.
        """
        keys: list[str] = [self.keys.meta]
        args: list[EncodableT] = [now_iso()]
        for symbol, fence in sorted(floors.items()):
            keys.append(self.keys.fence(symbol))
            args.append(int(fence) + self.headroom)
        # One script for every symbol (KRX lists ~2,700): splitting it would let a second
        # seeder see a half-seeded server as not seeded yet.
        async with bounded(f"seed {len(floors)} fences", max(self.timeout_s, 5.0)):
            raised, run_id, *bad = await self._seed(keys=keys, args=args)
        script_reports(self._on_bad_data, bad)
        if int(raised) >= 0:
            log = logger.warning if int(raised) else logger.info
            log(
                "Redis run {} had no seeded fences: raised {} of {} counters to the ledger's "
                "floor + {}",
                text(run_id)[:12],
                int(raised),
                len(floors),
                self.headroom,
            )
        return int(raised)

    async def ensure(self, max_fences: MaxFences) -> bool:
        """Seed the counters if this Redis server has not been seeded yet.

        Returns True if this call seeded them, False if they were already seeded (by this
        process or another). Raises `coordination.errors` exceptions for Redis and whatever
        `max_fences` raises (the ledger's errors) for Postgres; nothing is half-done then.
        """
        if await self.check():
            return False
        floors = await max_fences()
        return await self.seed(floors) >= 0

    async def reseed_symbol(self, symbol: str, max_fences: MaxFences) -> int:
        """Repair one symbol's counter: set it to the ledger's floor + headroom if it holds bad
        data (not an integer), raise it to that if lower, never lower it. Returns the counter.

        For a counter an acquire found bad (`RedisSymbolLock`'s ``reseed_fence``); the bad data
        itself was reported by whoever found it. Raises like `ensure`.
        """
        floor = int((await max_fences()).get(symbol, 0)) + self.headroom
        key = self.keys.fence(symbol)
        async with bounded(f"reseed fence {symbol}", self.timeout_s):
            count, problem = await self._reseed_one(keys=[key], args=[floor])
        if text(problem):
            logger.warning(
                "fence of {} reseeded to {} (ledger floor + {}): it was {}",
                symbol,
                int(count),
                self.headroom,
                text(problem),
            )
        return int(count)

    def reseeder(self, max_fences: MaxFences) -> Callable[[str], Awaitable[int]]:
        """`reseed_symbol` bound to `max_fences`: the ``reseed_fence`` of a `RedisSymbolLock`."""

        async def reseed_fence(symbol: str) -> int:
            return await self.reseed_symbol(symbol, max_fences)

        return reseed_fence


async def ensure_fences(
    redis: aioredis.Redis,
    keys: Keyspace,
    max_fences: MaxFences,
    *,
    headroom: int = DEFAULT_HEADROOM,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> bool:
    """One-shot `FenceSeeder.ensure`: True if this call seeded the fence counters."""
    seeder = FenceSeeder(redis, keys, headroom=headroom, timeout_s=timeout_s)
    return await seeder.ensure(max_fences)
