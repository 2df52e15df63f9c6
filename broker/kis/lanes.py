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
  `L` sends in any window of ``1 + J`` seconds when every request arrives within J of its send"
  with each request's own J measured (``r_i - s_i``), so it holds whatever the network does.
  Its cost is the round trip including KIS's processing: a slot is held one second after the
  answer, so the budget used is about ``1 / (1 + rtt)`` of the limit (0.89 measured against
  the exchange on a loaded two-core host, rtt p50 40 ms, p99 500 ms).

  A jitter bound J (`DEFAULT_JITTER_S`, 30 ms) takes the arrival bound as ``min(r_i, s_i +
  J)``: a slow *answer* then holds its slot only J past the send (KIS may be slow to answer; the
  wire is not slow to deliver), for about ``1 / (1 + J)`` of the limit. It rests on the
  assumption; a request that took longer than J to arrive can make an EGW00201, which the
  relay retries and answers by doubling J (`ArrivalBudget.widen`), so a slower path costs a few
  refusals, then budget. `margin_s` covers the clock granularity of both ends.
* **Paced grants**: besides the window, grants follow a schedule ``(window + margin + hold) /
  limit`` apart, ``hold`` a moving average of how long a slot is held past its send (about
  51 ms at 20/s; a wake-up late by under half a spacing keeps the schedule). Without it a burst
  of `limit` requests frees its slots all together a second later, and an order arriving just
  after such a batch waits for the next one, up to a second; paced, slots free one at a time,
  so an order waits about one spacing. It costs nothing in budget: the window allows no more
  than `limit` per ``window + margin + hold`` anyway.

The scheduler is pure bookkeeping (`LaneQueue`, `ArrivalBudget`, driven with explicit times so
tests can force any interleaving) plus one dispatcher task (`LaneScheduler.run`).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
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
    """One request: when its slot was granted, when it actually left (`mark_sent`: the relay
    marks it when its last byte was written), and when its answer came back (None: in
    flight). `hold_s`: set by the sender when the request may still arrive after it gave up on
    it (a read timeout): the slot is kept that much longer and the jitter bound is not trusted
    for it."""

    sent_at: float
    answered_at: float | None = None
    hold_s: float = 0.0

    def mark_sent(self, now: float) -> None:
        self.sent_at = max(self.sent_at, now)

    def arrived_by(self, jitter_s: float | None) -> float:
        """The latest moment KIS can have counted it: its answer, or with a jitter bound J
        (every request arrives within J of leaving) ``sent_at + J`` if that is sooner."""
        answered = math.inf if self.answered_at is None else self.answered_at
        if jitter_s is None or self.hold_s:
            return answered
        return min(answered, self.sent_at + jitter_s)


#: J, the assumed bound on the time from a request leaving the gateway to KIS counting it. A
#: request answered sooner is bounded by its answer; one that takes longer holds its slot only
#: for J (the server may be slow to answer, the wire is not slow to deliver). A request that
#: took longer than J to arrive could make an EGW00201: the relay retries it and doubles J
#: (`ArrivalBudget.widen`), so a host or network slower than assumed costs a few refusals, then
#: budget instead. bench/kis.py counts both.
DEFAULT_JITTER_S = 0.03


class ArrivalBudget:
    """At most `limit` arrivals at KIS in any one-second window (see the module docstring).

    `jitter_s` None: each request's slot is held until its answer plus the window (no
    assumption at all); a number J: until ``min(answer, sent + J)`` plus the window."""

    def __init__(
        self,
        limit: int,
        *,
        window_s: float = 1.0,
        margin_s: float = 0.01,
        pace: bool = True,
        jitter_s: float | None = None,
    ) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit!r}")
        self.limit = limit
        self.span_s = window_s + margin_s
        self.jitter_s = jitter_s
        self.pace = pace
        self._hold_s = 0.0  # moving average of arrived_by - sent_at
        self._log: deque[Sent] = deque()
        self._tat = -math.inf  # paced: the theoretical time of the next grant (GCRA)

    @property
    def spacing_s(self) -> float:
        return (self.span_s + self._hold_s) / self.limit if self.pace else 0.0

    def _live(self, now: float) -> list[float]:
        """When each request that may still share a window with one sent now arrived at the
        latest."""
        horizon = now - self.span_s
        while self._log and self._log[0].arrived_by(self.jitter_s) <= horizon:
            self._log.popleft()  # arrived long enough ago: it can no longer share a window
        bounds = (s.arrived_by(self.jitter_s) for s in self._log)
        return sorted(b for b in bounds if b > horizon)

    def wait(self, now: float) -> float:
        """0 if a request may be sent at `now`; else seconds until one may (``inf``: not
        before an answer comes back)."""
        paced = max(0.0, self._tat - now)
        live = self._live(now)
        if len(live) < self.limit:
            return paced
        need = len(live) - self.limit + 1  # slots that must free up
        return max(paced, live[need - 1] + self.span_s - now)

    def send(self, now: float) -> Sent:
        record = Sent(now)
        self._log.append(record)
        # on schedule, or late by under half a spacing (a dispatcher that woke a little late):
        # the schedule stands, so lateness does not push every later grant back; later than
        # that (idle, or held by the window): the schedule starts again from now
        spacing = self.spacing_s
        late = now - self._tat
        self._tat = (self._tat if late <= spacing / 2 else now) + spacing
        return record

    def answered(self, record: Sent, now: float) -> None:
        record.answered_at = now + record.hold_s
        held = max(0.0, record.arrived_by(self.jitter_s) - record.sent_at)
        self._hold_s += 0.2 * (min(held, 1.0) - self._hold_s)

    def in_flight(self) -> int:
        return sum(1 for s in self._log if s.answered_at is None)

    def widen(self) -> float | None:
        """KIS refused a request for rate: some request took longer than J to arrive. J
        doubles (at most a second, past which every slot is held until its answer anyway)."""
        if self.jitter_s is not None:
            self.jitter_s = min(1.0, self.jitter_s * 2)
        return self.jitter_s


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
        pace: bool = True,
        jitter_s: float | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.budget = ArrivalBudget(
            limit, window_s=window_s, margin_s=margin_s, pace=pace, jitter_s=jitter_s
        )
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
            "jitter_ms": None if self.budget.jitter_s is None else self.budget.jitter_s * 1000,
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
