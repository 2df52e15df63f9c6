"""The Postgres lock mirror fed from the notice stream: `LockMirror`.

Workers write `stock_locks` / `lock_events` themselves when they acquire and release, but a
worker can die between its Redis step and its ledger step, and expiries and recoveries are
written to the stream by someone else (the lock scripts, the reaper). The mirror reads
``{prefix}:events`` through the consumer group ``mirror`` (consumer = the worker id) and applies
the lock notices to the ledger:

    lock.acquired   Ledger.lock_acquired (refuses a fence older than one already recorded)
    lock.released   Ledger.lock_released(event="released")
    lock.expired    Ledger.lock_released(event="expired")
    lock.lost       Ledger.lock_released(event="lost")
    lock.recovered  Ledger.lock_released(old worker, old fence, event="recovered")

Every one of them is idempotent (``lock_events`` is unique on (symbol, fence, event) and a
release deletes only the row carrying its fence), so the worker's own writes and the mirror's
may land in either order and an entry may be applied twice. An entry is acknowledged only after
its transaction committed; entries pending on a consumer that died are taken over with
XAUTOCLAIM once idle for `claim_idle_ms`. Entries are applied in stream order: after a
transient ledger failure the rest of the batch is retried before anything newer is read.

With a `LeaseReaper`, applying ``lock.acquired`` also announces ``lock.recovered`` when the new
lease takes over an expired one (`LeaseReaper.recovered`); the mirror records that notice when
it reads it back.

Bad data never stalls the mirror: an entry that is no notice at all is dead-lettered by
`Notices` before the mirror sees it, and a lock notice the mirror cannot apply (`BadNotice`: no
symbol, no worker, no positive fence) is dead-lettered here (`Notices.dead_letter`: logged at
ERROR once, acknowledged, counted). The entries around it are applied as usual.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio
from loguru import logger

from coordination.errors import BackendRejected, CoordinationError
from coordination.notices import Notice, Notices, NoticeType
from coordination.reaper import LeaseReaper
from ledger.errors import LedgerError, LedgerUnavailable
from ledger.repository import Ledger

GROUP = "mirror"

_END_EVENTS = {
    NoticeType.LOCK_RELEASED: "released",
    NoticeType.LOCK_EXPIRED: "expired",
    NoticeType.LOCK_LOST: "lost",
}


class BadNotice(ValueError):
    """A lock notice without the fields the mirror needs: dead-lettered."""


def _fence(data: Any, field: str = "fence") -> int:
    value = data.get(field) if hasattr(data, "get") else None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise BadNotice(f"{field} {value!r} is not a positive integer")
    return value


class LockMirror:
    """Applies lock notices from the stream to the ledger, as one consumer of `group`."""

    def __init__(
        self,
        notices: Notices,
        ledger: Ledger,
        consumer: str,
        *,
        reaper: LeaseReaper | None = None,
        group: str = GROUP,
        batch: int = 100,
        block_ms: int = 250,
        claim_idle_ms: int = 2_000,
        claim_every_s: float = 0.5,
    ) -> None:
        if batch <= 0 or block_ms < 0 or claim_idle_ms <= 0 or claim_every_s <= 0:
            raise ValueError("batch, claim_idle_ms and claim_every_s must be positive")
        self.notices = notices
        self.ledger = ledger
        self.consumer = consumer
        self.reaper = reaper
        self.group = group
        self.batch = batch
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.claim_every_s = claim_every_s
        self._retry: list[Notice] = []
        self._next_claim = 0.0
        self.applied = 0

    async def setup(self) -> None:
        """Create the group if absent; a new group starts at the beginning of the stream, so
        nothing written before the first mirror started is skipped (re-applying is harmless)."""
        await self.notices.ensure_group(self.group, start_id="0")

    # -- applying ------------------------------------------------------------------------------

    async def apply(self, notice: Notice) -> None:
        """Apply one notice to the ledger (no-op for types the mirror does not handle).

        Raises `BadNotice` for a malformed lock notice and the ledger's errors as they come.
        """
        kind, symbol, data = notice.type, notice.symbol, notice.data
        if kind not in _END_EVENTS and kind not in (
            NoticeType.LOCK_ACQUIRED,
            NoticeType.LOCK_RECOVERED,
        ):
            return
        if not symbol or not notice.worker_id:
            raise BadNotice(f"{kind} {notice.id} has no symbol or worker_id")
        if kind == NoticeType.LOCK_ACQUIRED:
            fence = _fence(data)
            ttl_ms = _fence(data, "ttl_ms")
            await self.ledger.lock_acquired(symbol, notice.worker_id, fence, ttl_ms, notice.ts)
            if self.reaper is not None:
                recovered_from = data.get("recovered_from")
                await self.reaper.recovered(
                    symbol,
                    notice.worker_id,
                    fence,
                    recovered_from if isinstance(recovered_from, str) else None,
                )
        elif kind == NoticeType.LOCK_RECOVERED:
            old_worker = data.get("from_worker")
            if not isinstance(old_worker, str) or not old_worker:
                raise BadNotice(f"lock.recovered {notice.id} has no from_worker")
            old_fence = _fence(data, "from_fence")
            await self.ledger.lock_released(
                symbol, old_worker, old_fence, notice.ts, event="recovered"
            )
        else:
            event = _END_EVENTS[NoticeType(kind)]
            await self.ledger.lock_released(
                symbol, notice.worker_id, _fence(data), notice.ts, event=event
            )

    async def _apply_all(self, batch: Sequence[Notice]) -> None:
        """Apply and acknowledge in order; on a transient failure keep the rest for a retry."""
        for i, notice in enumerate(batch):
            bad: BadNotice | None = None
            try:
                await self.apply(notice)
            except (LedgerUnavailable, CoordinationError) as exc:
                if isinstance(exc, BackendRejected):
                    raise
                self._retry = list(batch[i:])
                logger.warning("mirror: {} not applied yet, will retry: {}", notice.id, exc)
                return
            except BadNotice as exc:
                bad = exc  # bad data: nothing will ever apply it
            except LedgerError as exc:
                # Retrying cannot fix it; acknowledging keeps it from blocking the stream.
                logger.error("mirror: skipping {} ({} {}): {}", notice.id, notice.type,
                             notice.symbol, exc)  # fmt: skip
            try:
                if bad is None:
                    await self._ack(notice)
                else:
                    await self.notices.dead_letter(
                        self.group, [(notice.id, f"{notice.type} {notice.symbol}: {bad}")]
                    )
            except CoordinationError:
                self._retry = list(batch[i:])  # applied but not acked: applying again is harmless
                raise
            self.applied += 1

    async def _ack(self, notice: Notice) -> None:
        await self.notices.ack(self.group, [notice.id])

    # -- reading -------------------------------------------------------------------------------

    async def step(self) -> int:
        """One round: retry held-back entries, take over idle ones, read new ones.

        Returns how many entries were handled (applied or skipped) in this round.
        """
        before = self.applied
        if self._retry:
            retry, self._retry = self._retry, []
            await self._apply_all(retry)
            if self._retry:
                return self.applied - before
        now = anyio.current_time()
        if now >= self._next_claim:
            self._next_claim = now + self.claim_every_s
            claimed = await self.notices.autoclaim(
                self.group, self.consumer, self.claim_idle_ms, count=self.batch
            )
            if claimed:
                logger.info("mirror: took over {} idle entries", len(claimed))
                await self._apply_all(claimed)
                if self._retry:
                    return self.applied - before
        fresh = await self.notices.consume(
            self.group, self.consumer, count=self.batch, block_ms=self.block_ms
        )
        await self._apply_all(fresh)
        return self.applied - before

    async def run(self) -> None:
        """Mirror until cancelled; Redis or Postgres being away only pauses it."""
        delay = 0.1
        ready = False
        while True:
            try:
                if not ready:
                    await self.setup()
                    ready = True
                await self.step()
                delay = 0.1
                if self._retry:  # the ledger is away: do not spin on it
                    await anyio.sleep(0.2)
                continue
            except CoordinationError as exc:
                if "NOGROUP" in str(exc):  # Redis restarted empty: the group went with it
                    logger.warning("mirror: consumer group gone, recreating it")
                    ready = False
                    continue
                logger.warning("mirror: Redis unavailable, retrying in {:.1f} s: {}", delay, exc)
            except Exception:
                # A bug here must not take the traders down with it: the workers write the
                # mirror themselves, so log loudly and keep going.
                logger.exception("mirror: unexpected failure")
            ready = False
            await anyio.sleep(delay)
            delay = min(delay * 2, 2.0)


__all__ = ["GROUP", "BadNotice", "LockMirror"]
