"""The gateway's request budget: priority lanes, fairness between workers, arrival accounting.

Every request the gateway sends to KIS for one app key takes a slot from one `LaneScheduler`:

* **Lanes** (`Lane`, by path, `lane_of`): orders and cancels first, then order status and
  reconciliation, then market data. A waiting request of a higher lane is always granted before
  any of a lower one, whenever it arrived.
* **Fairness inside a lane**: round robin over the workers that have requests waiting in it,
  one request each in turn (a worker with 40 queued quotations does not starve one with 2).
* **Budget as KIS counts it** (`ArrivalBudget`): KIS counts a request when it *arrives*, over
  any one-second window, and refuses the one beyond the limit `L` with EGW00201. The gateway
  cannot see arrival times, but it knows for each request an interval that holds its arrival:
  not before the gateway sent it (``s``), not after the gateway read the answer (``r``; still
  open while the request is in flight). A new request is sent at ``s_k`` only if fewer than
  `L` earlier requests have ``r_i > s_k - 1 - margin`` (or are in flight).

  Why this is enough: take any one-second window ``(t - 1, t]`` at the server and the set S
  of requests that arrive in it; let k be the one of S sent last. Every other i in S was sent
  before k and arrived after ``t - 1 >= a_k - 1 >= s_k - 1``, so ``r_i >= a_i > s_k - 1``: all
  of them were counted when k was granted, hence ``|S| - 1 < L``. This is the argument "at most
  `L` sends in any window of ``1 + J`` seconds when every request arrives within J of its send",
  with each request's own J measured (``r_i - s_i``, the round trip) instead of a fixed guess:
  a slow moment (a loaded host, a TLS handshake) widens only the window of the requests it
  delays, and nothing can arrive outside the interval it was counted in. The cost is the round
  trip: a request occupies its slot for one second after its answer, not after its send, so the
  budget used is about ``1 / (1 + rtt)`` of the limit (bench/kis.py measures it). `margin_s`
  covers the clock granularity of both ends.

The scheduler is pure bookkeeping (`LaneQueue`, `ArrivalBudget`, driven with explicit times so
tests can force any interleaving) plus one dispatcher task (`LaneScheduler.run`).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from enum import IntEnum

import anyio

from broker.errors import RateLimited


class Lane(IntEnum):
    """Priority of a request; lower values are granted first."""

    ORDER = 0  # order-cash, order-rvsecncl
    STATUS = 1  # inquire-daily-ccld, inquire-psbl-rvsecncl, inquire-balance, inquire-psbl-order
    MARKET = 2  # quotations/*

    @property
    def label(self) -> str:
        return self.name.lower()


_ORDER_PATHS = ("/trading/order-cash", "/trading/order-rvsecncl")


def lane_of(path: str) -> Lane:
    """The lane of a KIS REST path: orders, other account and trading inquiries, quotations."""
    if path.endswith(_ORDER_PATHS):
        return Lane.ORDER
    if "/quotations/" in path:
        return Lane.MARKET
    return Lane.STATUS  # inquire-daily-ccld, -balance, -psbl-order, -psbl-rvsecncl, ...


class SlotTimeout(RateLimited):
    """No slot was granted before the request's deadline; nothing was sent."""


# ----- pure bookkeeping ----------------------------------------------------------------------


@dataclass(eq=False)
class Ticket:
    """One request waiting for (then holding) a slot."""

    lane: Lane
    worker: str
    enqueued_at: float
    granted: anyio.Event = field(default_factory=anyio.Event)
    granted_at: float | None = None
    record: Sent | None = None

    @property
    def wait_s(self) -> float:
        return (self.granted_at or self.enqueued_at) - self.enqueued_at


class LaneQueue:
    """Waiting tickets: strict priority between lanes, round robin between workers in a lane."""

    def __init__(self) -> None:
        # per lane: worker -> its tickets in arrival order; the dict order is the turn order
        self._lanes: dict[Lane, OrderedDict[str, deque[Ticket]]] = {
            lane: OrderedDict() for lane in Lane
        }

    def __len__(self) -> int:
        return sum(len(q) for lane in self._lanes.values() for q in lane.values())

    def waiting(self, lane: Lane) -> int:
        return sum(len(q) for q in self._lanes[lane].values())

    def push(self, ticket: Ticket) -> None:
        self._lanes[ticket.lane].setdefault(ticket.worker, deque()).append(ticket)

    def pop(self) -> Ticket | None:
        """The next ticket to grant: the highest lane with a waiting ticket, the worker whose
        turn it is there (it then goes to the back of that lane's turn order)."""
        for lane in Lane:
            workers = self._lanes[lane]
            if not workers:
                continue
            worker, queue = next(iter(workers.items()))
            ticket = queue.popleft()
            del workers[worker]
            if queue:
                workers[worker] = queue  # back of the turn order
            return ticket
        return None

    def remove(self, ticket: Ticket) -> bool:
        """Withdraw a waiting ticket (its caller gave up); False if it is not waiting."""
        workers = self._lanes[ticket.lane]
        queue = workers.get(ticket.worker)
        if queue is None or ticket not in queue:
            return False
        queue.remove(ticket)
        if not queue:
            del workers[ticket.worker]
        return True


@dataclass(eq=False)
class Sent:
    """One request sent: when it left, and when its answer came back (None: in flight).
    `hold_s`: set by the sender when the request may still arrive after it gave up on it (a
    read timeout): the slot is kept that much longer."""

    sent_at: float
    answered_at: float | None = None
    hold_s: float = 0.0


class ArrivalBudget:
    """At most `limit` arrivals at KIS in any one-second window (see the module docstring)."""

    def __init__(self, limit: int, *, window_s: float = 1.0, margin_s: float = 0.01) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit!r}")
        self.limit = limit
        self.span_s = window_s + margin_s
        self._log: deque[Sent] = deque()

    def _live(self, now: float) -> Iterator[Sent]:
        horizon = now - self.span_s
        while self._log and self._log[0].answered_at is not None:
            if self._log[0].answered_at > horizon:
                break
            self._log.popleft()  # answered long enough ago: it can no longer share a window
        return (s for s in self._log if s.answered_at is None or s.answered_at > horizon)

    def wait(self, now: float) -> float:
        """0 if a request may be sent at `now`; else seconds until one may (``inf``: not
        before an answer comes back)."""
        live = list(self._live(now))
        if len(live) < self.limit:
            return 0.0
        answered = sorted(s.answered_at for s in live if s.answered_at is not None)
        need = len(live) - self.limit + 1  # slots that must free up
        if len(answered) < need:
            return math.inf
        return max(0.0, answered[need - 1] + self.span_s - now)

    def send(self, now: float) -> Sent:
        record = Sent(now)
        self._log.append(record)
        return record

    @staticmethod
    def answered(record: Sent, now: float) -> None:
        record.answered_at = now + record.hold_s

    def in_flight(self) -> int:
        return sum(1 for s in self._log if s.answered_at is None)


# ----- the dispatcher ------------------------------------------------------------------------


@dataclass
class LaneStats:
    granted: int = 0
    timed_out: int = 0
    waits_s: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))


class LaneScheduler:
    """Grants slots of one app key's budget to waiting requests, lane by lane, fairly.

        async with anyio.create_task_group() as tg:
            tg.start_soon(scheduler.run)
            async with scheduler.slot(Lane.ORDER, "w1", wait_s=10) as sent:
                ...  # send the request now; the slot records its answer on exit

    `monotonic` must be the clock of the machine (seconds), not a simulated one: KIS's window
    is real time.
    """

    def __init__(
        self,
        limit: int,
        *,
        window_s: float = 1.0,
        margin_s: float = 0.01,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.budget = ArrivalBudget(limit, window_s=window_s, margin_s=margin_s)
        self.queue = LaneQueue()
        self.monotonic = monotonic
        self.stats = {lane: LaneStats() for lane in Lane}
        self.sent = 0
        self._changed = anyio.Event()
        self._quiet_until = 0.0
        self._closed = False
        #: the last grants, oldest first (for stats and tests)
        self.granted: deque[Ticket] = deque(maxlen=10_000)

    @property
    def limit(self) -> int:
        return self.budget.limit

    def hold_until(self, at: float) -> None:
        """Grant nothing before `at` (monotonic): a gateway taking over leaves a full window
        for the requests the previous one may still have had on the wire."""
        self._quiet_until = max(self._quiet_until, at)
        self._poke()

    @asynccontextmanager
    async def slot(self, lane: Lane, worker: str, *, wait_s: float) -> AsyncIterator[Sent]:
        """Wait (at most `wait_s`) for a slot in `lane`; `SlotTimeout` if none came, in which
        case nothing may be sent. The body sends the request; leaving the block records the
        moment the answer came back (or the failure), which frees the slot a second later."""
        ticket = Ticket(lane, worker, self.monotonic())
        if self._closed:
            raise SlotTimeout("the KIS request budget is closed (gateway not active)")
        self.queue.push(ticket)
        self._poke()
        try:
            with anyio.move_on_after(wait_s):
                await ticket.granted.wait()
        except BaseException:  # cancelled while waiting: withdraw, or free the unused grant
            if ticket.record is not None:
                self.budget.answered(ticket.record, self.monotonic())
            else:
                self.queue.remove(ticket)
            raise
        if ticket.record is None:
            self.queue.remove(ticket)  # timed out (or the budget closed): never granted
            self.stats[lane].timed_out += 1
            raise SlotTimeout(f"no KIS request slot in the {lane.label} lane within {wait_s:g} s")
        try:
            yield ticket.record
        finally:
            self.budget.answered(ticket.record, self.monotonic())
            self._poke()

    def open(self) -> None:
        """Grant slots again (a gateway becoming active)."""
        self._closed = False

    def close(self) -> None:
        """Grant nothing more; every waiting request gives up at once (a gateway stepping
        down): nothing of theirs was sent."""
        self._closed = True
        while (ticket := self.queue.pop()) is not None:
            ticket.granted.set()  # with no record: SlotTimeout

    def grant_ready(self) -> float:
        """Grant every ticket the budget allows now; the seconds until the next grant could
        happen (``inf``: only an answer or a new request can change that)."""
        while len(self.queue):
            now = self.monotonic()
            pause = max(self.budget.wait(now), self._quiet_until - now)
            if pause > 0:
                return pause
            ticket = self.queue.pop()
            assert ticket is not None
            ticket.record = self.budget.send(now)
            ticket.granted_at = now
            stats = self.stats[ticket.lane]
            stats.granted += 1
            stats.waits_s.append(ticket.wait_s)
            self.sent += 1
            self.granted.append(ticket)
            ticket.granted.set()
        return math.inf

    async def run(self) -> None:
        """The dispatcher: grants slots as the budget frees up, until cancelled."""
        while True:
            changed = self._changed = anyio.Event()
            pause = self.grant_ready()
            with anyio.move_on_after(pause if math.isfinite(pause) else None):
                await changed.wait()

    def _poke(self) -> None:
        self._changed.set()

    def snapshot(self) -> dict[str, object]:
        """Counts for /__gateway/stats."""
        return {
            "limit": self.limit,
            "sent": self.sent,
            "in_flight": self.budget.in_flight(),
            "lanes": {
                lane.label: {
                    "waiting": self.queue.waiting(lane),
                    "granted": s.granted,
                    "timed_out": s.timed_out,
                    "wait_p99_ms": round(percentile(s.waits_s, 0.99) * 1000, 1),
                }
                for lane, s in self.stats.items()
            },
        }


def percentile(values: deque[float] | list[float], q: float) -> float:
    """The `q` quantile (nearest rank) of `values`; 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))
    return ordered[rank]
