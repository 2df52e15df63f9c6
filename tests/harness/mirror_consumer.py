"""A lock-mirror consumer that dies mid-stream, for tests/test_mirror.py.

    python tests/harness/mirror_consumer.py REDIS_URL DATABASE_URL PREFIX CONSUMER BATCH APPLY_N

Runs `worker.mirror.LockMirror` as consumer CONSUMER of the ``mirror`` group with batches of
BATCH entries, but never acknowledges: after applying APPLY_N entries to the ledger it prints
``stalled {n}`` and hangs, holding the rest of its batch read but not applied, until killed.
"""

from __future__ import annotations

import sys

import anyio

from coordination.connection import connect
from coordination.keys import Keyspace
from coordination.notices import Notice, Notices
from coordination.reaper import LeaseReaper
from ledger.db import create_engine
from ledger.repository import Ledger
from market.costs import CostModel
from worker.mirror import LockMirror


class StallingMirror(LockMirror):
    apply_n = 0
    unacked = 0

    async def _ack(self, notice: Notice) -> None:
        self.unacked += 1
        if self.unacked >= self.apply_n:
            sys.stdout.write(f"stalled {self.unacked}\n")
            sys.stdout.flush()
            await anyio.sleep_forever()


async def main(argv: list[str]) -> None:
    redis_url, database_url, prefix, consumer, batch, apply_n = argv[:6]
    redis = await connect(redis_url)
    keys = Keyspace(prefix)
    ledger = Ledger(create_engine(database_url), CostModel())
    mirror = StallingMirror(
        Notices(redis, keys),
        ledger,
        consumer,
        reaper=LeaseReaper(redis, keys),
        batch=int(batch),
        block_ms=100,
    )
    mirror.apply_n = int(apply_n)
    await mirror.setup()
    while True:
        await mirror.step()


if __name__ == "__main__":
    anyio.run(main, sys.argv[1:])
