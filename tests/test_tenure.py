"""The interleavings that lost or doubled money before tenures, fenced submits and the in-flight
tracker, each forced deterministically against real Redis and Postgres and a paper broker.

Each test is named after the interleaving it forces."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import timedelta

import anyio
import pytest
import redis.asyncio as aioredis
from support import sql
from trading_rig import Party, Rig, running

from coordination.keys import Keyspace
from coordination.locks import Lease
from ledger.orders import OrderState
from ledger.repository import Ledger
from market.orders import Side
from trading.orders import LeaseInvalid
from trading.tenure import Tenure

pytestmark = pytest.mark.anyio


async def _setup(
    ledger: Ledger, redis_client: aioredis.Redis, prefix: str, **kw: float
) -> tuple[Rig, Party, Party, str, Lease]:
    """A rig, two parties A and B, a liquid symbol, and A's lease on it."""
    rig = Rig(ledger, redis_client, Keyspace(prefix), **kw)
    a, b = rig.party("A"), rig.party("B")
    symbol = rig.liquid_symbol()
    lease = await a.lock.acquire(symbol)
    assert lease is not None
    return rig, a, b, symbol, lease


async def test_stale_holder_resumed_before_the_new_owners_mirror_row_exists(
    ledger: Ledger, redis_client: aioredis.Redis, prefix: str, database_url: str
) -> None:
    rig, a, b, symbol, lease_a = await _setup(ledger, redis_client, prefix)
    async with running(a, b, keepers=False):
        async with Tenure.open(a.ctx, lease_a) as tenure_a:
            # A stalls past its TTL: its local deadline passes and Redis lets the key go ...
            a.keeper.add(replace(lease_a, valid_until=time.monotonic() - 1))
            await redis_client.delete(rig.keys.lock(symbol))
            # ... B is granted the symbol in Redis but has not written its mirror row yet ...
            lease_b = await b.lock.acquire(symbol)
            assert lease_b is not None
            assert lease_b.fence > lease_a.fence
            # ... and A resumes mid-buy: the mirror still shows A's fence, the deadline does not.
            with pytest.raises(LeaseInvalid):
                await tenure_a.place(rig.buy(symbol, lease_a.fence), rig.clock.now())
        async with Tenure.open(b.ctx, lease_b) as tenure_b:
            assert await tenure_b.position() is None
            final = await tenure_b.place(rig.buy(symbol, lease_b.fence), rig.clock.now())
            assert final.status is OrderState.FILLED
    assert [(s.symbol, s.side) for s in rig.broker.submits] == [(symbol, Side.BUY)]
    rows = sql(database_url, "SELECT worker_id, status FROM orders ORDER BY id")
    assert rows == [("A", "WITHDRAWN"), ("B", "FILLED")]


async def test_stale_submit_that_landed_is_reconciled_by_the_new_owner_before_it_buys(
    ledger: Ledger, redis_client: aioredis.Redis, prefix: str, database_url: str
) -> None:
    rig, a, b, symbol, lease_a = await _setup(ledger, redis_client, prefix)
    async with running(a, b, keepers=False):
        async with Tenure.open(a.ctx, lease_a) as tenure_a:
            await redis_client.delete(rig.keys.lock(symbol))  # A's TTL ran out while it stalled
            lease_b = await b.lock.acquire(symbol)
            assert lease_b is not None
            # A's local clock says it is still valid (a skewed deadline): its claim and submit
            # land before B's mirror row exists
            tenure_a.may_submit = lambda: True  # type: ignore[method-assign]
            bought = await tenure_a.place(rig.buy(symbol, lease_a.fence), rig.clock.now())
            assert bought.filled_qty > 0
        async with Tenure.open(b.ctx, lease_b) as tenure_b:
            held = await tenure_b.position()
            assert held is not None  # B holds what A's stale order bought ...
            assert held.qty == bought.filled_qty
            assert held.worker_id == "B"
    # ... and never bought the symbol a second time
    assert [s.side for s in rig.broker.submits] == [Side.BUY]
    assert sql(database_url, "SELECT count(*) FROM orders WHERE side = 'BUY'") == [(1,)]


async def test_adopter_withdraws_a_never_sent_order_so_the_stale_owner_cannot_submit_it(
    ledger: Ledger, redis_client: aioredis.Redis, prefix: str, database_url: str
) -> None:
    rig, a, b, symbol, lease_a = await _setup(ledger, redis_client, prefix)
    async with running(a, b, keepers=False), Tenure.open(a.ctx, lease_a) as tenure_a:
        intent_written = anyio.Event()
        proceed = anyio.Event()
        create = ledger.create_order

        async def create_then_stall(intent):  # type: ignore[no-untyped-def]
            record = await create(intent)
            intent_written.set()
            await proceed.wait()  # A stops right after its intent row (SIGSTOP)
            return record

        a.placer.ledger = replace_attr(ledger, create_order=create_then_stall)
        outcome: list[BaseException] = []

        async def stale_buy() -> None:
            try:
                await tenure_a.place(rig.buy(symbol, lease_a.fence), rig.clock.now())
            except LeaseInvalid as exc:
                outcome.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(stale_buy)
            await intent_written.wait()
            await redis_client.delete(rig.keys.lock(symbol))
            lease_b = await b.lock.acquire(symbol)
            assert lease_b is not None
            async with Tenure.open(b.ctx, lease_b) as tenure_b:  # withdraws A's NEW row
                assert await tenure_b.position() is None
                proceed.set()  # A resumes: its claim must lose
                await anyio.sleep(0)
        assert len(outcome) == 1
    assert rig.broker.submits == []
    assert sql(database_url, "SELECT worker_id, status FROM orders") == [("A", "WITHDRAWN")]


def replace_attr(obj: Ledger, **attrs: object) -> Ledger:
    """A shallow view of `obj` with some methods replaced (the original is untouched)."""

    class View:
        def __getattr__(self, name: str) -> object:
            return attrs.get(name, getattr(obj, name))

    return View()  # type: ignore[return-value]


async def test_sell_whose_follower_is_cancelled_mid_order_is_followed_to_its_end(
    ledger: Ledger, redis_client: aioredis.Redis, prefix: str, database_url: str
) -> None:
    rig, a, _b, symbol, lease = await _setup(ledger, redis_client, prefix)
    async with running(a), Tenure.open(a.ctx, lease) as tenure:
        bought = await tenure.place(rig.buy(symbol, lease.fence), rig.clock.now())
        assert bought.status is OrderState.FILLED
        # a resting SELL whose placing coroutine is cancelled while the order works
        with anyio.CancelScope() as scope:

            async def cancel_once_sent() -> None:
                while not sql(database_url, "SELECT 1 FROM orders WHERE side = 'SELL' AND"
                              " status = 'SENT'"):  # fmt: skip
                    await anyio.sleep(0.01)
                scope.cancel()

            async with anyio.create_task_group() as tg:
                tg.start_soon(cancel_once_sent)
                far = rig.clock.now() + timedelta(hours=1)
                await tenure.place(rig.sell(symbol, lease.fence, bought.filled_qty, resting=True),
                                   far)  # fmt: skip
        assert scope.cancelled_caught
        assert a.tracker.working(symbol)  # still followed, though its placer is gone
        # the next SELL waits for the first to be final (cancelled) and is sized from what the
        # broker says is left
        position = await tenure.position()
        assert position is not None
        final = await tenure.place(rig.sell(symbol, lease.fence, position.qty, resting=False),
                                   rig.clock.now() + timedelta(minutes=5))  # fmt: skip
        assert final.status is OrderState.FILLED
        assert await tenure.position() is None
    assert [s.overlapping for s in rig.broker.submits] == [False, False, False]
    statuses = sql(database_url, "SELECT side, status FROM orders ORDER BY id")
    assert statuses == [("BUY", "FILLED"), ("SELL", "CANCELED"), ("SELL", "FILLED")]
    for boid, filled_qty, filled_amount in sql(
        database_url, "SELECT broker_order_id, filled_qty, filled_amount FROM orders"
    ):
        truth = rig.broker._orders[boid].status()  # type: ignore[index]
        assert (filled_qty, filled_amount) == (truth.filled_qty, truth.filled_amount)


async def test_order_the_broker_lists_late_stays_unknown_until_it_is_found(
    ledger: Ledger, redis_client: aioredis.Redis, prefix: str, database_url: str
) -> None:
    rig, a, _b, symbol, lease = await _setup(ledger, redis_client, prefix, listing_lag_s=60.0)
    rig.broker.listing_lag = timedelta(seconds=20)  # placed, but listed 20 s later
    rig.broker.inject_faults(outcome_unknown=1)  # and the submit's reply is lost
    seen: list[str] = []
    async with running(a), Tenure.open(a.ctx, lease) as tenure:

        async def watch() -> None:
            while True:
                seen.extend(r[0] for r in sql(database_url, "SELECT status FROM orders"))
                await anyio.sleep(0.005)

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            final = await tenure.place(rig.buy(symbol, lease.fence), rig.clock.now())
            tg.cancel_scope.cancel()
    assert final.status is OrderState.FILLED
    assert final.broker_order_id is not None
    assert "UNKNOWN" in seen
    assert "REJECTED" not in seen
    assert rig.broker.lookups >= 2  # looked up again, not judged on one empty answer
    assert len(rig.broker.submits) == 1  # and never resent


async def test_order_never_placed_is_called_not_placed_only_after_the_listing_lag(
    ledger: Ledger, redis_client: aioredis.Redis, prefix: str, database_url: str
) -> None:
    rig, a, _b, symbol, lease = await _setup(ledger, redis_client, prefix, listing_lag_s=30.0)
    from broker.errors import OrderOutcomeUnknown

    async def lost_before_the_broker(request):  # type: ignore[no-untyped-def]
        raise OrderOutcomeUnknown("connection dropped before the request was sent")

    rig.broker.submit_order = lost_before_the_broker  # type: ignore[method-assign]
    started = rig.clock.now()
    async with running(a), Tenure.open(a.ctx, lease) as tenure:
        final = await tenure.place(rig.buy(symbol, lease.fence), rig.clock.now())
    assert final.status is OrderState.REJECTED
    decided = sql(database_url, "SELECT updated_at FROM orders")[0][0]
    assert decided - started >= timedelta(seconds=30)  # type: ignore[operator]
    assert rig.broker.lookups >= 2


async def test_held_position_kept_between_reads_is_read_again_once_a_renewal_finds_it_adopted(
    ledger: Ledger, redis_client: aioredis.Redis, prefix: str
) -> None:
    rig, a, b, symbol, lease_a = await _setup(ledger, redis_client, prefix)
    async with running(a, b, keepers=False), Tenure.open(a.ctx, lease_a) as tenure_a:
        bought = await tenure_a.place(rig.buy(symbol, lease_a.fence), rig.clock.now())
        held = await tenure_a.position()  # read after the fill, kept from here on
        assert held is not None
        assert held.qty == bought.filled_qty
        assert await tenure_a.position() == held
        # A's key lapses; B takes the symbol and adopts the position in the ledger
        await redis_client.delete(rig.keys.lock(symbol))
        lease_b = await b.lock.acquire(symbol)
        assert lease_b is not None
        async with Tenure.open(b.ctx, lease_b) as tenure_b:
            adopted = await tenure_b.position()
            assert adopted is not None
            assert adopted.worker_id == "B"
            # A's next renewal finds the key in B's hands: A reads the ledger again and
            # sees the position is B's now
            await a.keeper.renew_once()
            assert a.keeper.lease(symbol) is None
            with pytest.raises(LeaseInvalid, match="held by B"):
                await tenure_a.position()
