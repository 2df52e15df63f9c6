"""The stream-fed Postgres lock mirror (worker/mirror.py): its writer SIGKILLed mid-stream, with
entries applied but not acknowledged and entries read but not applied; another consumer takes
them over and the mirror converges. Real Redis, real Postgres, a real process killed.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import anyio
import pytest
import redis.asyncio as aioredis
from support import sql

from coordination.keys import Keyspace
from coordination.locks import RedisSymbolLock
from coordination.notices import Notice, Notices
from coordination.reaper import LeaseReaper
from ledger.repository import Ledger
from worker.mirror import GROUP, LockMirror

pytestmark = pytest.mark.anyio

CONSUMER = Path(__file__).parent / "harness" / "mirror_consumer.py"
Key = tuple[str, int, str]


def expected_events(stream: Sequence[Notice]) -> set[Key]:
    """(symbol, fence, event) the ledger must hold for the stream's lock notices."""
    out: set[Key] = set()
    for n in stream:
        symbol = n.symbol or ""
        if n.type == "lock.recovered":
            out.add((symbol, int(n.data["from_fence"]), "recovered"))
        elif n.type in ("lock.acquired", "lock.released", "lock.expired"):
            out.add((symbol, int(n.data["fence"]), str(n.type).removeprefix("lock.")))
    return out


async def cycle(lock: RedisSymbolLock, symbol: str) -> None:
    lease = await lock.acquire(symbol)
    assert lease is not None
    assert await lock.release(lease)


@pytest.mark.slow
async def test_mirror_converges_after_its_writer_is_killed_mid_stream(
    redis_url: str,
    database_url: str,
    prefix: str,
    redis_client: aioredis.Redis,
    ledger: Ledger,
    tmp_path: Path,
) -> None:
    keys = Keyspace(prefix)
    notices = Notices(redis_client, keys)
    reaper = LeaseReaper(redis_client, keys)
    w1 = RedisSymbolLock(redis_client, keys, "w1", ttl_ms=10_000)
    w2 = RedisSymbolLock(redis_client, keys, "w2", ttl_ms=10_000)
    short = RedisSymbolLock(redis_client, keys, "w3", ttl_ms=100)

    # A lease reaped and taken over (the dying consumer applies the takeover, announcing
    # lock.recovered, and dies before acknowledging it: the announcement must stay single).
    assert await short.acquire("X") is not None
    await anyio.sleep(0.15)
    lease_x = (await reaper.expired())[0]
    assert await reaper.reap(lease_x)
    assert await w2.acquire("X") is not None
    for i in range(8):
        await cycle(w1, f"S{i}")
    # A lease found expired by the next acquire itself (recovered_from).
    assert await short.acquire("Y") is not None
    await anyio.sleep(0.15)
    taken_y = await w2.acquire("Y")
    assert taken_y is not None
    assert taken_y.recovered_from == "w3:1"
    for symbol in ("L0", "L1"):
        assert await w2.acquire(symbol) is not None

    log = tmp_path / "consumer.log"
    with log.open("w") as err:
        proc = subprocess.Popen(  # the writer that will die
            [sys.executable, str(CONSUMER), redis_url, database_url, prefix, "dying", "20", "5"],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    try:
        assert proc.stdout is not None
        with anyio.fail_after(20):
            line = await anyio.to_thread.run_sync(proc.stdout.readline, abandon_on_cancel=True)
        assert line.startswith("stalled 5"), log.read_text()[-2000:]
        pending = await redis_client.xpending(keys.events, GROUP)
        assert pending["pending"] == 20
        assert [c["name"] for c in pending["consumers"]] == [b"dying"]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()

    for i in range(3):  # the stream goes on after the writer died
        await cycle(w1, f"T{i}")

    mirror = LockMirror(
        notices, ledger, "m2", reaper=reaper, block_ms=100, claim_idle_ms=1_000,
        claim_every_s=0.2,
    )  # fmt: skip

    async def converged() -> bool:
        stream = await notices.read(count=10_000)
        rows = sql(database_url, "SELECT symbol, fence, event FROM lock_events")
        info = await redis_client.xpending(keys.events, GROUP)
        got = {(str(s), int(str(f)), str(e)) for s, f, e in rows}
        return info["pending"] == 0 and got == expected_events(stream)

    async with anyio.create_task_group() as tg:
        tg.start_soon(mirror.run)
        started = time.monotonic()
        with anyio.fail_after(8):
            while not await converged():
                await anyio.sleep(0.05)
        takeover_s = time.monotonic() - started
        # Live: a new grant and release are mirrored within a second.
        lease = await w1.acquire("Z")
        assert lease is not None
        fence_z = lease.fence
        assert await w1.release(lease)
        written = time.monotonic()
        with anyio.fail_after(1):
            while not await converged():
                await anyio.sleep(0.02)
        live_s = time.monotonic() - written
        tg.cancel_scope.cancel()

    stream = await notices.read(count=10_000)
    rows = sql(database_url, "SELECT symbol, fence, event FROM lock_events")
    assert len(rows) == len(expected_events(stream))  # each (symbol, fence, event) once
    assert ("Z", fence_z, "released") in {(str(s), int(str(f)), str(e)) for s, f, e in rows}
    recovered = [(n.symbol, n.data["from_fence"]) for n in stream if n.type == "lock.recovered"]
    assert sorted(recovered) == [("X", lease_x.fence), ("Y", 1)]
    live = {(i.symbol, i.worker_id, i.fence) for i in await w1.live_locks()}
    mirrored = sql(database_url, "SELECT symbol, worker_id, fence FROM stock_locks")
    assert {(str(s), str(w), int(str(f))) for s, w, f in mirrored} == live
    assert {s for s, _, _ in live} == {"X", "Y", "L0", "L1"}
    assert await reaper.pending_recoveries() == {}
    assert takeover_s < 3.0
    assert live_s < 1.0
