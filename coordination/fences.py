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

What it does not do: an acquire that reaches the restarted server before anyone seeded it gets a
low fence. The ledger refuses that fence (`Ledger.lock_acquired` keeps the mirror on the higher
one, so `create_order` raises `StaleFence`); its holder simply cannot trade until it reacquires.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from importlib import resources

import redis.asyncio as aioredis
from loguru import logger
from redis.typing import EncodableT

from coordination._wire import DEFAULT_TIMEOUT_S, bounded, now_iso, text
from coordination.keys import Keyspace

MaxFences = Callable[[], Awaitable[Mapping[str, int]]]

DEFAULT_HEADROOM = 1_000


def lua(name: str) -> str:
    """The text of ``coordination/lua/{name}.lua``."""
    return (resources.files("coordination") / "lua" / f"{name}.lua").read_text(encoding="utf-8")


class FenceSeeder:
    """Detects a Redis restart and reseeds the fence counters, for one prefix.

    Safe to run from any number of workers at once: the seeding script reads the server's
    run_id itself and seeds only if ``{prefix}:meta`` does not already name it, and it only ever
    raises a counter.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keyspace,
        *,
        headroom: int = DEFAULT_HEADROOM,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        if headroom < 0:
            raise ValueError(f"headroom must be >= 0, got {headroom!r}")
        self.redis = redis
        self.keys = keys
        self.headroom = headroom
        self.timeout_s = timeout_s
        self._epoch = redis.register_script(lua("fence_epoch"))
        self._seed = redis.register_script(lua("seed_fences"))

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
            raised, run_id = await self._seed(keys=keys, args=args)
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
