"""The gateway's scheduler: lanes, fairness inside a lane, and the budget counted on arrival.

The bookkeeping (`LaneQueue`, `ArrivalBudget`) is driven with explicit times; the dispatcher
(`LaneScheduler`) with a budget held by requests the test keeps in flight, so every grant order
is forced rather than raced.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import AsyncIterator, Callable

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.kis import wire
from broker.kis.lanes import (
    ArrivalBudget,
    Lane,
    LaneQueue,
    LaneScheduler,
    SlotTimeout,
    Ticket,
    lane_of,
)

pytestmark = pytest.mark.anyio


def test_lanes_by_path() -> None:
    assert lane_of(wire.ORDER_CASH) is Lane.ORDER
    assert lane_of(wire.ORDER_RVSECNCL) is Lane.ORDER
    assert lane_of(wire.DAILY_CCLD) is Lane.STATUS
    assert lane_of("/uapi/domestic-stock/v1/trading/inquire-balance") is Lane.STATUS
    assert lane_of("/uapi/domestic-stock/v1/trading/inquire-psbl-order") is Lane.STATUS
    assert lane_of("/uapi/domestic-stock/v1/trading/inquire-psbl-rvsecncl") is Lane.STATUS
    for path in (wire.PRICE, wire.ASKING_PRICE, wire.MINUTE_BARS, wire.DAILY_BARS):
        assert lane_of(path) is Lane.MARKET


def _names(queue: LaneQueue) -> list[str]:
    out = []
    while (t := queue.pop()) is not None:
        out.append(f"{t.lane.label}:{t.worker}")
    return out


def test_higher_lane_first_whenever_it_arrived() -> None:
    q = LaneQueue()
    for w in ("a", "b", "a"):
        q.push(Ticket(Lane.MARKET, w, 0.0))
    q.push(Ticket(Lane.STATUS, "c", 1.0))
    q.push(Ticket(Lane.ORDER, "d", 2.0))
    assert _names(q) == ["order:d", "status:c", "market:a", "market:b", "market:a"]


def test_round_robin_between_workers_in_a_lane() -> None:
    q = LaneQueue()
    for _ in range(5):
        q.push(Ticket(Lane.MARKET, "busy", 0.0))
    q.push(Ticket(Lane.MARKET, "quiet", 0.1))
    q.push(Ticket(Lane.MARKET, "quiet", 0.2))
    assert [n.split(":")[1] for n in _names(q)] == [
        "busy", "quiet", "busy", "quiet", "busy", "busy", "busy",
    ]  # fmt: skip


def test_a_withdrawn_ticket_is_never_granted() -> None:
    q = LaneQueue()
    keep, drop = Ticket(Lane.MARKET, "a", 0.0), Ticket(Lane.MARKET, "b", 0.0)
    q.push(keep)
    q.push(drop)
    assert q.remove(drop)
    assert not q.remove(drop)
    assert q.pop() is keep
    assert q.pop() is None


def test_budget_frees_a_slot_one_window_after_the_answer() -> None:
    b = ArrivalBudget(2, margin_s=0.01, pace=False)
    first, second = b.send(0.0), b.send(0.0)
    assert b.wait(0.0) == math.inf  # both in flight: only an answer can free a slot
    b.answered(first, 0.2)
    assert b.wait(0.3) == pytest.approx(0.2 + 1.01 - 0.3)
    assert b.wait(1.21) == 0.0
    b.send(1.21)
    b.answered(second, 0.5)
    assert b.wait(1.3) == pytest.approx(0.5 + 1.01 - 1.3)


def _simulate(
    limit: int,
    latencies: list[tuple[float, float]],
    *,
    pace: bool = True,
    jitter_s: float | None = None,
) -> tuple[list[float], float]:
    """Every request queued at 0 and sent as soon as the budget allows; request i reaches the
    server `up` seconds after its send and its answer comes back `down` seconds later. The
    arrival times, and the span from the first send to the last answer."""
    budget = ArrivalBudget(limit, margin_s=0.0, pace=pace, jitter_s=jitter_s)
    now = 0.0
    pending: list[tuple[float, object]] = []  # (answer time, record)
    arrivals: list[float] = []
    end = 0.0
    for up, down in latencies:
        while True:
            for at, record in [p for p in pending if p[0] <= now]:
                budget.answered(record, at)  # type: ignore[arg-type]
                pending.remove((at, record))
            wait = budget.wait(now)
            if wait == 0:
                break
            nxt = min([at for at, _ in pending], default=math.inf)
            now = min(now + wait, nxt) if math.isfinite(wait) else nxt
        record = budget.send(now)
        arrivals.append(now + up)
        pending.append((now + up + down, record))
        end = max(end, now + up + down)
    return arrivals, end


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(1, 20),
    latencies=st.lists(
        st.tuples(st.floats(0.0, 0.8), st.floats(0.0, 0.8)), min_size=1, max_size=120
    ),
    pace=st.booleans(),
    jitter=st.sampled_from([None, 0.03, 0.2]),
)
def test_no_one_second_window_at_the_server_exceeds_the_limit(
    limit: int, latencies: list[tuple[float, float]], pace: bool, jitter: float | None
) -> None:
    """Whatever the network does to each request (any delay out, any delay back; with a
    jitter bound J, any delay out up to J), the server never sees more than `limit` arrivals in
    a one-second window (KIS's EGW00201 rule)."""
    if jitter is not None:
        latencies = [(min(up, jitter), down) for up, down in latencies]
    arrivals, _ = _simulate(limit, latencies, pace=pace, jitter_s=jitter)
    arrivals.sort()
    for i, start in enumerate(arrivals):
        inside = sum(1 for a in arrivals[i:] if a < start + 1.0)
        assert inside <= limit, (start, arrivals)


def test_budget_use_is_about_one_over_one_plus_the_round_trip() -> None:
    """The price of counting on arrival without knowing it: a slot is held a round trip
    longer than a second. At 20/s and a 20 ms round trip, ~98% of the limit is used."""
    arrivals, _ = _simulate(20, [(0.01, 0.01)] * 400)
    rate = (len(arrivals) - 1) / (max(arrivals) - min(arrivals))
    assert rate / 20 > 0.95


def test_with_a_jitter_bound_a_slow_answer_holds_its_slot_only_for_the_bound() -> None:
    """A server that takes 200 ms to answer: without a bound the slot is held 1.2 s (83% of
    the budget), with J = 30 ms 1.03 s (97%)."""
    slow = [(0.002, 0.2)] * 300
    for jitter, floor, ceiling in ((None, 0.80, 0.85), (0.03, 0.95, 1.0)):
        arrivals, _ = _simulate(20, slow, jitter_s=jitter)
        use = (len(arrivals) - 1) / (max(arrivals) - min(arrivals)) / 20
        assert floor < use <= ceiling, (jitter, use)


def test_paced_grants_free_their_slots_one_at_a_time() -> None:
    """Saturated, the grants stay about window / limit apart: a request arriving at any moment
    waits about one spacing for a slot, not for the next batch a second later."""
    arrivals, _ = _simulate(20, [(0.01, 0.01)] * 200)
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert max(gaps) < 0.05 + 0.03  # the round trip and margin, once a window
    assert min(gaps) >= 0.05 - 1e-9


@pytest.fixture
async def scheduler() -> AsyncIterator[Callable[[int], LaneScheduler]]:
    async with anyio.create_task_group() as tg:

        def make(limit: int) -> LaneScheduler:
            s = LaneScheduler(limit, margin_s=0.0, pace=False)
            tg.start_soon(s.run)
            return s

        yield make
        tg.cancel_scope.cancel()


async def test_a_queued_order_overtakes_queued_market_data(
    scheduler: Callable[[int], LaneScheduler],
) -> None:
    s = scheduler(1)
    granted: list[str] = []
    release = anyio.Event()

    async def request(lane: Lane, worker: str, hold: anyio.Event | None = None) -> None:
        async with s.slot(lane, worker, wait_s=10):
            granted.append(f"{lane.label}:{worker}")
            if hold is not None:
                await hold.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(request, Lane.MARKET, "a", release)  # holds the only slot
        while not granted:
            await anyio.sleep(0.001)
        for w in ("b", "c", "b"):
            tg.start_soon(request, Lane.MARKET, w)
        while s.queue.waiting(Lane.MARKET) < 3:
            await anyio.sleep(0.001)
        tg.start_soon(request, Lane.ORDER, "d")
        tg.start_soon(request, Lane.STATUS, "e")
        while len(s.queue) < 5:
            await anyio.sleep(0.001)
        s.budget.span_s = 0.0  # from here on a slot frees as soon as its answer is in
        release.set()
    assert granted == ["market:a", "order:d", "status:e", "market:b", "market:c", "market:b"]
    assert s.stats[Lane.ORDER].granted == 1


async def test_no_slot_in_time_is_a_timeout_and_leaves_no_trace(
    scheduler: Callable[[int], LaneScheduler],
) -> None:
    s = scheduler(1)
    release = anyio.Event()

    async def hold() -> None:
        async with s.slot(Lane.MARKET, "a", wait_s=5):
            await release.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(hold)
        while s.budget.in_flight() == 0:
            await anyio.sleep(0.001)
        with pytest.raises(SlotTimeout):
            async with s.slot(Lane.ORDER, "b", wait_s=0.05):
                pytest.fail("granted past the budget")
        assert len(s.queue) == 0
        assert s.stats[Lane.ORDER].timed_out == 1
        release.set()


async def test_closing_the_budget_turns_every_waiting_request_away_at_once(
    scheduler: Callable[[int], LaneScheduler],
) -> None:
    s = scheduler(1)
    release = anyio.Event()
    refused: list[str] = []

    async def hold() -> None:
        async with s.slot(Lane.MARKET, "a", wait_s=5):
            await release.wait()

    async def waiter(worker: str) -> None:
        try:
            async with s.slot(Lane.MARKET, worker, wait_s=30):
                pytest.fail("granted after close")
        except SlotTimeout:
            refused.append(worker)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hold)
            while s.budget.in_flight() == 0:
                await anyio.sleep(0.001)
            tg.start_soon(waiter, "b")
            tg.start_soon(waiter, "c")
            while len(s.queue) < 2:
                await anyio.sleep(0.001)
            s.close()
            while len(refused) < 2:
                await anyio.sleep(0.001)
            release.set()
    assert sorted(refused) == ["b", "c"]
    with pytest.raises(SlotTimeout):
        async with s.slot(Lane.ORDER, "d", wait_s=1):
            pass


async def test_a_caller_cancelled_while_waiting_gives_its_place_up(
    scheduler: Callable[[int], LaneScheduler],
) -> None:
    s = scheduler(1)
    release = anyio.Event()

    async def hold() -> None:
        async with s.slot(Lane.MARKET, "a", wait_s=5):
            await release.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(hold)
        while s.budget.in_flight() == 0:
            await anyio.sleep(0.001)
        with anyio.move_on_after(0.05):
            async with s.slot(Lane.ORDER, "b", wait_s=10):
                pytest.fail("granted past the budget")
        assert len(s.queue) == 0
        release.set()
    s.budget.span_s = 0.0
    with anyio.fail_after(2):
        async with s.slot(Lane.ORDER, "c", wait_s=1):
            pass
