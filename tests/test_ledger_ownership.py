"""Fenced ownership on a real Postgres: the claim for sending (NEW -> SUBMITTING), the
adopter's withdrawal (NEW -> WITHDRAWN), fenced position moves, canonical broker order ids.

The interleaving tests hold a row or key lock in a third session so that one ledger call is
parked inside its transaction while the other one runs; the order of commits is then forced,
not hoped for.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from decimal import Decimal
from typing import Any

import anyio
import psycopg
import pytest
from support import libpq, sql
from test_ledger import SYM, T0, intent, placed, report

from ledger.errors import (
    LedgerInconsistent,
    OrderNotFound,
    OrderNotNew,
    OrderWithdrawn,
    StaleFence,
)
from ledger.orders import OrderState
from ledger.repository import Ledger
from market.orders import BrokerOrderId, ClientOrderId, Side
from market.types import Board

pytestmark = pytest.mark.anyio

D = Decimal


async def _status(ledger: Ledger, cid: str) -> OrderState:
    order = await ledger.order(cid)
    assert order is not None
    return order.status


# -- the claim for sending ----------------------------------------------------------------------


async def test_claim_moves_new_to_submitting_once(ledger: Ledger) -> None:
    await ledger.lock_acquired(SYM, "w1", 1, 30_000, T0)
    order = await ledger.create_order(intent("w1", 1))
    claimed = await ledger.begin_submit(order.client_order_id, "w1", 1, T0)
    assert claimed.status is OrderState.SUBMITTING
    assert await ledger.begin_submit(order.client_order_id, "w1", 1) == claimed  # a retry
    # claimed, not final: still the worker's to follow
    assert [o.status for o in await ledger.unfinished_orders("w1")] == [OrderState.SUBMITTING]


async def test_claim_with_a_fence_that_is_not_current_is_refused(ledger: Ledger) -> None:
    await ledger.lock_acquired(SYM, "w1", 1, 30_000, T0)
    order = await ledger.create_order(intent("w1", 1))
    await ledger.lock_acquired(SYM, "w2", 2, 30_000, T0)  # w1 stalled past its TTL
    with pytest.raises(StaleFence, match="w2 fence 2"):
        await ledger.begin_submit(order.client_order_id, "w1", 1)
    assert await _status(ledger, order.client_order_id) is OrderState.NEW


async def test_claim_of_an_order_from_an_earlier_tenure_is_refused(ledger: Ledger) -> None:
    await ledger.lock_acquired(SYM, "w1", 1, 30_000, T0)
    old = await ledger.create_order(intent("w1", 1))
    await ledger.lock_acquired(SYM, "w1", 2, 30_000, T0)  # lost and re-acquired
    with pytest.raises(StaleFence, match="placed by w1 fence 1"):
        await ledger.begin_submit(old.client_order_id, "w1", 2)
    with pytest.raises(StaleFence, match="mirror: w1 fence 2"):
        await ledger.begin_submit(old.client_order_id, "w1", 1)
    with pytest.raises(OrderNotFound):
        await ledger.begin_submit(ClientOrderId("nope"), "w1", 2)


async def test_claim_after_withdrawal_or_send_is_refused(ledger: Ledger) -> None:
    await ledger.lock_acquired(SYM, "w1", 1, 30_000, T0)
    order = await ledger.create_order(intent("w1", 1))
    [withdrawn] = await ledger.withdraw_orders(SYM, "w1", 1, T0)  # the placer gave up
    assert withdrawn.status is OrderState.WITHDRAWN
    with pytest.raises(OrderWithdrawn):
        await ledger.begin_submit(order.client_order_id, "w1", 1)
    sent = await placed(ledger, intent("w1", 1))
    with pytest.raises(OrderNotNew, match="SENT") as info:
        await ledger.begin_submit(sent.client_order_id, "w1", 1)
    assert not isinstance(info.value, OrderWithdrawn)


async def test_withdrawal_takes_every_new_order_on_the_symbol_and_nothing_else(
    ledger: Ledger,
) -> None:
    await ledger.lock_acquired(SYM, "w1", 1, 30_000, T0)
    new_1 = await ledger.create_order(intent("w1", 1))
    new_2 = await ledger.create_order(intent("w1", 1, Side.SELL))
    claimed = await ledger.create_order(intent("w1", 1))
    await ledger.begin_submit(claimed.client_order_id, "w1", 1)
    await ledger.lock_acquired("000660", "w1", 1, 30_000, T0)
    elsewhere = await ledger.create_order(intent("w1", 1, symbol="000660"))

    await ledger.lock_acquired(SYM, "w2", 2, 30_000, T0)  # the adopter
    with pytest.raises(StaleFence):
        await ledger.withdraw_orders(SYM, "w1", 1, T0)  # the old owner may not
    withdrawn = await ledger.withdraw_orders(SYM, "w2", 2, T0)
    assert [o.client_order_id for o in withdrawn] == [new_1.client_order_id, new_2.client_order_id]
    assert {o.status_reason for o in withdrawn} == {"withdrawn unsent by w2 fence 2"}
    # a claimed order may be at the broker: it is never withdrawn
    assert await _status(ledger, claimed.client_order_id) is OrderState.SUBMITTING
    assert await _status(ledger, elsewhere.client_order_id) is OrderState.NEW
    assert await ledger.withdraw_orders(SYM, "w2", 2, T0) == []


# -- a stale owner and an adopter: exactly one wins ---------------------------------------------


async def _wait_for_lock_waiters(url: str, n: int) -> None:
    """Until `n` backends of this database wait for a lock (parked, not merely slow)."""
    query = ("SELECT count(*) FROM pg_stat_activity "
             "WHERE datname = current_database() AND wait_event_type = 'Lock'")  # fmt: skip
    with anyio.fail_after(10):
        while sql(url, query)[0][0] < n:
            await anyio.sleep(0.02)


async def _outcome(call: Callable[[], Awaitable[Any]], into: list[object]) -> None:
    try:
        into.append(await call())
    except Exception as exc:  # the outcome under test may be an error
        into.append(exc)


async def test_stale_claim_that_commits_first_wins_and_the_adopter_leaves_it(
    ledger: Ledger, database_url: str
) -> None:
    """The stale owner's claim holds the mirror row; the adopter's grant waits for it."""
    await ledger.lock_acquired(SYM, "w1", 1, 30_000, T0)
    order = await ledger.create_order(intent("w1", 1))
    claim: list[object] = []
    grant: list[object] = []
    with psycopg.connect(libpq(database_url)) as third:
        # park the claim after its fence check: the order row is locked here
        third.execute(
            "SELECT 1 FROM orders WHERE client_order_id = %s FOR UPDATE", (order.client_order_id,)
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(_outcome, lambda: ledger.begin_submit(order.client_order_id, "w1", 1),
                          claim)  # fmt: skip
            await _wait_for_lock_waiters(database_url, 1)
            tg.start_soon(_outcome, lambda: ledger.lock_acquired(SYM, "w2", 2, 30_000, T0), grant)
            await _wait_for_lock_waiters(database_url, 2)  # the grant waits for the claim
            assert claim == grant == []
            third.commit()
    [claimed] = claim
    assert getattr(claimed, "status", None) is OrderState.SUBMITTING
    assert grant == [True]
    # the adopter finds a claimed order: possibly at the broker, not withdrawn
    assert await ledger.withdraw_orders(SYM, "w2", 2, T0) == []
    assert await _status(ledger, order.client_order_id) is OrderState.SUBMITTING


async def test_grant_that_commits_first_wins_and_the_stale_claim_is_refused(
    ledger: Ledger, database_url: str
) -> None:
    """The adopter's grant holds the mirror row; the stale owner's claim waits for it."""
    await ledger.lock_acquired(SYM, "w1", 1, 30_000, T0)
    order = await ledger.create_order(intent("w1", 1))
    claim: list[object] = []
    grant: list[object] = []
    with psycopg.connect(libpq(database_url)) as third:
        # park the grant after its mirror write: its audit row's key is taken here
        third.execute(
            "INSERT INTO lock_events (symbol, worker_id, fence, event, at) "
            "VALUES (%s, 'w2', 2, 'acquired', now())",
            (SYM,),
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(_outcome, lambda: ledger.lock_acquired(SYM, "w2", 2, 30_000, T0), grant)
            await _wait_for_lock_waiters(database_url, 1)
            tg.start_soon(_outcome, lambda: ledger.begin_submit(order.client_order_id, "w1", 1),
                          claim)  # fmt: skip
            await _wait_for_lock_waiters(database_url, 2)  # the claim waits for the grant
            assert claim == grant == []
            third.rollback()
    assert grant == [True]
    [refused] = claim
    assert isinstance(refused, StaleFence)
    [withdrawn] = await ledger.withdraw_orders(SYM, "w2", 2, T0)
    assert withdrawn.client_order_id == order.client_order_id
    with pytest.raises(StaleFence):  # and the stale owner can never claim it later
        await ledger.begin_submit(order.client_order_id, "w1", 1)
    assert await _status(ledger, order.client_order_id) is OrderState.WITHDRAWN


# -- position moves -----------------------------------------------------------------------------


async def _holding(ledger: Ledger, worker: str, fence: int) -> None:
    await ledger.lock_acquired(SYM, worker, fence, 30_000, T0)
    buy = await placed(ledger, intent(worker, fence, qty=10))
    await ledger.apply_order_status(buy.client_order_id, report(buy, 10, 500_000), Board.KOSDAQ, T0)


async def test_adoption_needs_the_current_fence(ledger: Ledger) -> None:
    await _holding(ledger, "w1", 1)
    sell = await placed(ledger, intent("w1", 1, Side.SELL, 10, 51_000, reason="take_profit"))
    with pytest.raises(StaleFence, match="mirror: w1 fence 1"):
        await ledger.adopt_position(SYM, "w2", 2)  # w2's grant is not mirrored
    await ledger.lock_acquired(SYM, "w2", 2, 30_000, T0)
    with pytest.raises(StaleFence):
        await ledger.adopt_position(SYM, "w3", 2)  # the right fence, the wrong worker
    assert [p.worker_id for p in await ledger.open_positions()] == ["w1"]
    assert await ledger.adopt_position(SYM, "w2", 2)
    assert [p.worker_id for p in await ledger.open_positions()] == ["w2"]
    assert [o.client_order_id for o in await ledger.unfinished_orders("w2")] == [
        sell.client_order_id
    ]


async def test_an_adopter_takes_an_order_claimed_earlier_as_unknown(ledger: Ledger) -> None:
    await _holding(ledger, "w1", 1)
    sell = await ledger.create_order(intent("w1", 1, Side.SELL, 10, 51_000))
    await ledger.begin_submit(sell.client_order_id, "w1", 1)  # then w1 froze mid-submit
    await ledger.lock_acquired(SYM, "w2", 2, 30_000, T0)
    assert await ledger.adopt_position(SYM, "w2", 2)
    [adopted] = await ledger.unfinished_orders("w2")
    assert adopted.status is OrderState.UNKNOWN
    assert adopted.status_reason == (
        "claimed for sending by w1 fence 1: outcome unknown to its adopter"
    )
    # whatever the broker says next can be recorded: w1's late ack, or the adopter's lookup
    sent = await ledger.mark_order_sent(sell.client_order_id, BrokerOrderId("9"), T0)
    assert (sent.status, sent.worker_id) == (OrderState.SENT, "w2")
    # a claim of the adopter's own tenure stays its own
    await ledger.lock_acquired("000660", "w2", 1, 30_000, T0)
    own = await ledger.create_order(intent("w2", 1, symbol="000660"))
    await ledger.begin_submit(own.client_order_id, "w2", 1)
    assert not await ledger.adopt_position("000660", "w2", 1)
    assert await _status(ledger, own.client_order_id) is OrderState.SUBMITTING


async def test_orphaning_is_refused_once_a_newer_fence_exists(ledger: Ledger) -> None:
    await _holding(ledger, "w1", 1)
    # w1 lost the lock and took it again: a late reaper pass for fence 1 must not orphan it
    await ledger.lock_released(SYM, "w1", 1, T0, event="expired")
    await ledger.lock_acquired(SYM, "w1", 2, 30_000, T0)
    with pytest.raises(StaleFence, match="older than fence 2"):
        await ledger.mark_position_orphaned(SYM, "w1", 1)
    assert [p.status for p in await ledger.open_positions()] == ["OPEN"]
    # the reaper's own case: the lease it reaps is the newest one
    await ledger.lock_released(SYM, "w1", 2, T0, event="expired")
    assert await ledger.mark_position_orphaned(SYM, "w1", 2)
    assert not await ledger.mark_position_orphaned(SYM, "w1", 2)  # already orphaned
    assert [p.status for p in await ledger.open_positions()] == ["ORPHANED"]


# -- canonical broker order ids -----------------------------------------------------------------


async def test_padded_and_unpadded_broker_ids_are_one_order(ledger: Ledger) -> None:
    await ledger.lock_acquired(SYM, "w1", 1, 30_000, T0)
    order = await ledger.create_order(intent("w1", 1, qty=10))
    cid = order.client_order_id
    await ledger.begin_submit(cid, "w1", 1)
    sent = await ledger.mark_order_sent(cid, BrokerOrderId("117057"), T0)
    assert sent.broker_order_id == "0000117057"
    again = await ledger.mark_order_sent(cid, BrokerOrderId("0000117057"), T0)  # no-op
    assert again == sent
    assert await ledger.known_broker_order_ids(SYM, order.trading_day) == {"0000117057"}

    unpadded = report(order, 4, 200_000)
    for spelling in ("117057", " 0000117057"):
        status = replace(unpadded, broker_order_id=BrokerOrderId(spelling))
        await ledger.apply_order_status(cid, status, Board.KOSDAQ, T0)  # matches, no error
    stored = await ledger.order(cid)
    assert stored is not None
    assert (stored.broker_order_id, stored.filled_qty) == ("0000117057", 4)
    with pytest.raises(LedgerInconsistent):
        await ledger.mark_order_sent(cid, BrokerOrderId("117058"), T0)
    other = replace(unpadded, broker_order_id=BrokerOrderId("117058"))
    with pytest.raises(LedgerInconsistent):
        await ledger.apply_order_status(cid, other, Board.KOSDAQ, T0)


async def test_a_report_first_links_the_canonical_id(ledger: Ledger) -> None:
    # the ack was lost (UNKNOWN); the broker's listing, unpadded, links the order
    await ledger.lock_acquired(SYM, "w1", 1, 30_000, T0)
    order = await ledger.create_order(intent("w1", 1, qty=10))
    await ledger.begin_submit(order.client_order_id, "w1", 1)
    await ledger.mark_order(order.client_order_id, OrderState.UNKNOWN, T0, "timeout")
    status = replace(report(order, 0, 0), broker_order_id=BrokerOrderId("42"))
    res = await ledger.apply_order_status(order.client_order_id, status, Board.KOSDAQ, T0)
    assert res.order_status is OrderState.SENT
    assert await ledger.known_broker_order_ids(SYM, order.trading_day) == {"0000000042"}
