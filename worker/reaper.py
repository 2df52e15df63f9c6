"""Recovery after a worker dies: the reaper loop, wiring `coordination.reaper` to the ledger.

Each pass (`reap_once`):

1. every lease whose lock key expired is reaped in Redis (``lock.expired`` on the stream, once
   however many reapers run), then in the ledger: ``expired`` in `lock_events`, the mirror row
   of that fence deleted (`Ledger.lock_released`, which touches only that fence), and the dead
   worker's open position on the symbol marked ORPHANED, so a live worker's `_adopt_orphan`
   takes it over, reconciles its unfinished orders with the broker and manages it;
2. every reaped symbol a live worker holds again gets ``lock.recovered`` (once), which the
   mirror (`worker.mirror`) records as ``recovered`` against the old fence.

`run_reaper` repeats that every `interval_s` and, first, checks that the fence counters were
seeded on the Redis server answering now (`coordination.fences`): a Redis restart is noticed
within one interval even by a process whose own calls never failed.

What it does not do: it does not take the symbol or the position itself (the worker loop does,
under a fresh lease), it does not deregister the dead worker (its registry entry expires on its
own), and a lease Redis forgot in a restart is never reaped (its meta key is gone too); the
holder's `LeaseKeeper` reports it lost, or the next acquirer simply overwrites its mirror row.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime

import anyio
from loguru import logger

from coordination.errors import CoordinationError
from coordination.fences import FenceSeeder
from coordination.reaper import ExpiredLease, LeaseReaper
from ledger.errors import LedgerError
from ledger.repository import Ledger


async def settle_in_ledger(ledger: Ledger, lease: ExpiredLease) -> bool:
    """The ledger side of a reaped lease; idempotent. True if a position was orphaned."""
    at = datetime.now(UTC)
    await ledger.lock_released(lease.symbol, lease.worker_id, lease.fence, at, event="expired")
    return await ledger.mark_position_orphaned(lease.symbol, lease.worker_id, lease.fence)


async def reap_once(
    reaper: LeaseReaper, ledger: Ledger, backlog: list[ExpiredLease] | None = None
) -> int:
    """One reaper pass (see the module docstring); returns how many leases it reaped.

    `backlog` carries reaped leases whose ledger step failed (Postgres away) from one pass to
    the next; without it such a lease is still recorded by the mirror from ``lock.expired``,
    but its position is not marked ORPHANED (the loop's `_adopt_orphan` adopts open positions
    whose symbol it can lock anyway).
    """
    todo = list(backlog or ())
    if backlog is not None:
        backlog.clear()
    reaped = 0
    for lease in await reaper.expired():
        if await reaper.reap(lease):
            reaped += 1
            logger.warning(
                "lease on {} expired (worker {}, fence {}): reaped",
                lease.symbol,
                lease.worker_id,
                lease.fence,
            )
            todo.append(lease)
    for i, lease in enumerate(todo):
        try:
            # Shielded: reaped in Redis but cancelled before the ledger heard of it would lose
            # the orphan marking.
            with anyio.CancelScope(shield=True):
                if await settle_in_ledger(ledger, lease):
                    logger.warning(
                        "position {} of {} marked ORPHANED for adoption",
                        lease.symbol,
                        lease.worker_id,
                    )
        except LedgerError as exc:
            logger.error("ledger step of reaped lease {} failed: {}", lease.symbol, exc)
            if backlog is not None:
                backlog.extend(todo[i:])
            break
    await announce_recoveries(reaper)
    return reaped


async def cleanup_expired_locks(
    reaper: LeaseReaper, ledger: Ledger, stale_after_s: float, now: datetime | None = None
) -> int:
    """Remove mirror rows whose lease is over without a trace in Redis.

    A `stock_locks` row not heartbeaten for `stale_after_s` whose (worker, fence) is not the
    symbol's live lock in Redis is a lease nobody can reap any more (Redis restarted and forgot
    it, or its reaping was lost): record it `expired`, delete the row, orphan the position.
    """
    now = now or datetime.now(UTC)
    stale = [
        lk for lk in await ledger.locks() if (now - lk.heartbeat_at).total_seconds() > stale_after_s
    ]
    if not stale:
        return 0
    live = await reaper.holders(sorted({lk.symbol for lk in stale}))
    cleaned = 0
    for lk in stale:
        if live.get(lk.symbol) == (lk.worker_id, lk.fence):
            continue  # the holder is alive in Redis; its ledger heartbeat is just late
        await ledger.lock_released(lk.symbol, lk.worker_id, lk.fence, now, event="expired")
        orphaned = await ledger.mark_position_orphaned(lk.symbol, lk.worker_id, lk.fence)
        logger.warning(
            "stale mirror row {} ({} fence {}) cleaned{}",
            lk.symbol, lk.worker_id, lk.fence, "; position orphaned" if orphaned else "",
        )  # fmt: skip
        cleaned += 1
    return cleaned


async def announce_recoveries(reaper: LeaseReaper) -> int:
    """``lock.recovered`` for each reaped symbol a live worker now holds with a newer fence."""
    pending = await reaper.pending_recoveries()
    if not pending:
        return 0
    announced = 0
    for symbol, (worker_id, fence) in (await reaper.holders(sorted(pending))).items():
        if fence > pending[symbol].fence and await reaper.recovered(symbol, worker_id, fence):
            announced += 1
    return announced


async def run_reaper(
    reaper: LeaseReaper,
    ledger: Ledger,
    interval_s: float,
    *,
    seeder: FenceSeeder | None = None,
    max_fences: Callable[[], Awaitable[Mapping[str, int]]] | None = None,
    stale_after_s: float | None = None,
) -> None:
    """Reap every `interval_s` (after checking the fence seeding, when given), until cancelled.

    Failures are logged and retried next interval; they never stop the loop.
    """
    if interval_s <= 0:
        raise ValueError(f"interval_s must be positive, got {interval_s!r}")
    backlog: list[ExpiredLease] = []
    while True:
        started = anyio.current_time()
        try:
            if seeder is not None and max_fences is not None:
                await seeder.ensure(max_fences)
            await reap_once(reaper, ledger, backlog)
            if stale_after_s is not None:
                await cleanup_expired_locks(reaper, ledger, stale_after_s)
        except (CoordinationError, LedgerError) as exc:
            logger.warning("reaper pass failed, retrying in {:.1f} s: {}", interval_s, exc)
        await anyio.sleep(max(0.0, interval_s - (anyio.current_time() - started)))
