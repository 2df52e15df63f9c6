"""The Postgres mirror of the Redis locks (`stock_locks`) and its audit (`lock_events`), as
statements on an open session; `Ledger` runs each in its own transaction.

The mirror row is what every fenced write checks: the order insert, the claim for sending, the
withdrawal and the ownership moves (`ledger.ownership`). It moves only forward: a grant whose
fence is not above every fence recorded for the symbol leaves it untouched.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Delete,
    Insert,
    Integer,
    Text,
    Update,
    and_,
    delete,
    func,
    literal_column,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.types import DateTime

from ledger.convert import lock_record
from ledger.fencing import stale_fence, typed_literal
from ledger.models import LockEvent, Order, StockLock
from ledger.records import LockRecord

LOCK_END_EVENTS = frozenset({"released", "expired", "recovered", "lost"})

#: pg_advisory_xact_lock(class, hashtext(symbol)): serializes the writes that change who owns a
#: symbol (a grant, orphaning) where no mirror row may exist to lock. The two-int key space
#: never meets the single-bigint keys used elsewhere.
_OWNER_GUARD_CLASS = 0x5446_4F57  # "TFOW"


async def changed(s: AsyncSession, stmt: Insert | Update | Delete) -> int:
    """Rows a DML statement touched, counted from RETURNING (the async psycopg cursor reports
    rowcount -1 for some statements, e.g. INSERT ... SELECT ... ON CONFLICT)."""
    conn = await s.connection()
    return len((await conn.execute(stmt.returning(literal_column("1")))).all())


async def hold_owner_guard(s: AsyncSession, symbol: str) -> None:
    """Take the symbol's ownership guard (exclusive, until the transaction ends)."""
    await s.execute(select(func.pg_advisory_xact_lock(_OWNER_GUARD_CLASS, func.hashtext(symbol))))


async def hold_fence(s: AsyncSession, symbol: str, worker_id: str, fence: int) -> None:
    """Read the symbol's mirror row FOR SHARE and raise `StaleFence` unless it holds
    (worker_id, fence). Until the transaction ends, no takeover or release can change the row:
    a grant's UPDATE waits for this transaction, or this read waits for the grant and then sees
    the new fence.
    """
    stmt = select(StockLock).where(StockLock.symbol == symbol).with_for_update(read=True)
    lock = (await s.execute(stmt)).scalar_one_or_none()
    if lock is None or (lock.worker_id, lock.fence) != (worker_id, fence):
        raise stale_fence(symbol, worker_id, fence, lock)


async def newest_fence(s: AsyncSession, symbol: str) -> int | None:
    """The highest fence the mirror or its audit has seen for the symbol."""
    every = union_all(
        select(LockEvent.fence).where(LockEvent.symbol == symbol),
        select(StockLock.fence).where(StockLock.symbol == symbol),
    ).subquery()
    found = (await s.execute(select(func.max(every.c.fence)))).scalar_one()
    return int(found) if found is not None else None


async def lock_acquired(
    s: AsyncSession, symbol: str, worker_id: str, fence: int, ttl_ms: int, at: datetime
) -> bool:
    """See `Ledger.lock_acquired`."""
    # Refused when a newer fence was seen, or when this very lease already ended (a late
    # `lock.acquired` replayed by the mirror must not resurrect a dead lease's row).
    newer_seen = select(LockEvent.id).where(
        LockEvent.symbol == symbol,
        or_(
            LockEvent.fence > fence,
            and_(LockEvent.fence == fence, LockEvent.event != "acquired"),
        ),
    )
    tstz = DateTime(timezone=True)
    src = select(
        typed_literal(symbol, Text()),
        typed_literal(worker_id, Text()),
        typed_literal(fence, BigInteger()),
        typed_literal(at, tstz),
        typed_literal(ttl_ms, Integer()),
        typed_literal(at, tstz),
    ).where(~newer_seen.exists())
    cols = ["symbol", "worker_id", "fence", "locked_at", "ttl", "heartbeat_at"]
    ins = pg_insert(StockLock).from_select(cols, src)
    upsert = ins.on_conflict_do_update(
        index_elements=["symbol"],
        set_={c: ins.excluded[c] for c in cols[1:]},
        where=StockLock.fence < ins.excluded.fence,
    )
    current = select(StockLock.symbol).where(
        StockLock.symbol == symbol, StockLock.worker_id == worker_id, StockLock.fence == fence
    )
    await hold_owner_guard(s, symbol)
    await changed(s, upsert)
    await lock_event(s, symbol, worker_id, fence, "acquired", at)
    # True when the mirror now shows this grant, whoever wrote it first (the worker or the
    # stream mirror applying the same lock.acquired notice)
    return (await s.execute(current)).first() is not None


async def lock_heartbeat(
    s: AsyncSession, symbol: str, worker_id: str, fence: int, at: datetime
) -> bool:
    stmt = (
        update(StockLock)
        .where(
            StockLock.symbol == symbol,
            StockLock.worker_id == worker_id,
            StockLock.fence == fence,
        )
        .values(heartbeat_at=at)
    )
    return await changed(s, stmt) == 1


async def lock_released(
    s: AsyncSession, symbol: str, worker_id: str, fence: int, at: datetime, event: str
) -> bool:
    if event not in LOCK_END_EVENTS:
        raise ValueError(f"unknown lock end event {event!r}")
    stmt = delete(StockLock).where(StockLock.symbol == symbol, StockLock.fence == fence)
    deleted = await changed(s, stmt) == 1
    await lock_event(s, symbol, worker_id, fence, event, at)
    return deleted


async def lock_event(
    s: AsyncSession, symbol: str, worker_id: str, fence: int, event: str, at: datetime
) -> None:
    """Audit one lock event, once per (symbol, fence, event)."""
    stmt = pg_insert(LockEvent).values(
        symbol=symbol, worker_id=worker_id, fence=fence, event=event, at=at
    )
    await s.execute(stmt.on_conflict_do_nothing(index_elements=["symbol", "fence", "event"]))


async def max_fences(s: AsyncSession) -> dict[str, int]:
    every = union_all(
        select(LockEvent.symbol, LockEvent.fence),
        select(StockLock.symbol, StockLock.fence),
        select(Order.symbol, Order.fence),
    ).subquery()
    stmt = select(every.c.symbol, func.max(every.c.fence)).group_by(every.c.symbol)
    return {sym: int(f) for sym, f in (await s.execute(stmt)).all()}


async def locks(s: AsyncSession) -> list[LockRecord]:
    rows = (await s.execute(select(StockLock).order_by(StockLock.symbol))).scalars()
    return [lock_record(r) for r in rows]
