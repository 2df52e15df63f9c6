"""Virtual time for an in-process fleet: the clock jumps to the next wake-up once every
participant waits on it, so a simulated day runs as fast as the work allows, and the same
inputs give the same day.

Participants are the loops whose timing decides what is traded: each worker's main loop, its
order tracker, the account reconciler. A task becomes one with `participating(clock, name)`
(tasks it starts inherit the role, as context variables do). A participant is *running* unless
it waits in `VirtualClock.sleep`/`sleep_until` or `VirtualClock.wait`: one blocked on Redis or
Postgres is running, so time waits for its I/O; one in a wall-clock backoff (`anyio.sleep`)
holds time too, which is what a day that must not skip ahead wants while a server is away.

The schedule (one turn token):

* While any participant runs, time stands still and nobody else is released.
* Once none runs, the next participant released is the one, among those ready at the current
  instant (its wake-up is due, or the event it waits on is set), that comes first in name order
  (natural sort: `w2` before `w10`); it runs alone until it waits again. With none ready,
  time jumps to the earliest wake-up and the first participant due then is released.
* A participant registered but not yet waiting counts as running: the clock does not move
  (and releases nobody) until every worker is registered, has loaded its market and waits for
  the open, so the day opens at `start` with the fleet in place.
* Other tasks (a progress display, a recorder) may read `now()` and sleep on the clock: they
  are woken once time reaches their wake-up, never hold time and never take a turn. With no
  participant left, time runs on to their wake-ups.

Waiting on another participant: a participant that waits for another one (a placer for its
order's final state, a tracker for its next order) must wait through `wait_event` (or
`VirtualClock.wait`), never a bare `Event.wait()`, or it would hold time while the other
sleeps. A set event only makes its waiter ready; the waiter runs on its turn.

Not deterministic by construction: anything driven by wall time (lease TTLs and heartbeats,
registry heartbeats, a server outage and its backoff, SIGTERM) and whatever non-participant
tasks write; none of it decides a trade in a healthy day.

`participating` and `wait_event` accept any `Clock`: for a wall-driven one they are a no-op and
a plain wait (with the timeout in clock seconds turned into wall seconds by the speed).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import anyio

from market.clock import KST, Clock

__all__ = ["Participant", "VirtualClock", "participating", "wait_event"]


def _natural(name: str) -> tuple[tuple[int, int | str], ...]:
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", name) if p)


@dataclass(eq=False)
class _Waiter:
    wake_at: datetime | None  # None: no timeout (an event wait)
    event: anyio.Event | None  # what it waits on besides its wake-up
    released: anyio.Event = field(default_factory=anyio.Event)


class Participant:
    """One loop the clock waits for. Made by `VirtualClock.participant`; running from then
    on until it waits on the clock, and until `leave`."""

    def __init__(self, clock: VirtualClock, name: str) -> None:
        self.clock = clock
        self.name = name
        self.key = _natural(name)
        self.waiter: _Waiter | None = None
        self.left = False
        self.turns = 0  # times released
        self.busy_s = 0.0  # wall seconds spent running (from each release to its next wait)
        self._since: float | None = None

    @property
    def running(self) -> bool:
        return self.waiter is None

    def ready(self, now: datetime) -> bool:
        w = self.waiter
        if w is None:
            return False
        if w.event is not None and w.event.is_set():
            return True
        return w.wake_at is not None and w.wake_at <= now

    @contextmanager
    def bound(self) -> Iterator[Participant]:
        """The current task (and the tasks it starts) act as this participant; it leaves the
        clock on exit."""
        token = _current.set(self)
        try:
            yield self
        finally:
            _current.reset(token)
            self.leave()

    def leave(self) -> None:
        """No longer waited for (idempotent)."""
        self.clock._leave(self)

    def __repr__(self) -> str:
        state = "running" if self.running else "waiting"
        return f"Participant({self.name!r}, {state})"


_current: ContextVar[Participant | None] = ContextVar("vclock_participant", default=None)


class VirtualClock:
    """A `Clock` whose time moves only when every participant waits on it (module docstring).

    `speed` is nominal (1.0): clock seconds are not tied to wall seconds, so anything that
    converts one into the other (a stall alarm) sees real time.
    """

    speed = 1.0

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        self._now = start.astimezone(KST)
        self._participants: dict[str, Participant] = {}
        self._observers: list[_Waiter] = []
        self._every: list[Participant] = []
        self._started = False
        self.turns = 0  # participants released so far
        self.jumps = 0  # times the clock moved forward

    # ----- Clock -----------------------------------------------------------------------------

    def now(self) -> datetime:
        return self._now

    async def sleep(self, seconds: float) -> None:
        await self._wait(self._now + timedelta(seconds=max(0.0, seconds)), None)

    async def sleep_until(self, when: datetime) -> None:
        await self._wait(max(when, self._now), None)

    async def wait(self, event: anyio.Event, timeout_s: float | None = None) -> bool:
        """Wait for `event` (True) or `timeout_s` clock seconds (False) without holding time."""
        if event.is_set():
            await anyio.lowlevel.checkpoint()
            return True
        wake = None if timeout_s is None else self._now + timedelta(seconds=max(0.0, timeout_s))
        await self._wait(wake, event)
        return event.is_set()

    # ----- participants ----------------------------------------------------------------------

    def participant(self, name: str) -> Participant:
        """Register participant `name` (running from now on). Names are unique."""
        if name in self._participants:
            raise ValueError(f"participant {name!r} is already registered")
        p = Participant(self, name)
        self._participants[name] = p
        self._every.append(p)
        return p

    @property
    def participants(self) -> list[str]:
        return sorted(self._participants, key=_natural)

    def start(self) -> None:
        """Let time move (idempotent). Before this, nothing is released and `now()` stays at
        the start, so observers and early participants cannot run ahead of the fleet."""
        self._started = True
        self._schedule()

    def busy(self) -> dict[str, tuple[int, float]]:
        """Per participant ever registered: (turns, wall seconds running in its turns)."""
        return {p.name: (p.turns, p.busy_s) for p in self._every}

    @property
    def started(self) -> bool:
        return self._started

    def _leave(self, p: Participant) -> None:
        if p.left:
            return
        p.left = True
        if self._participants.get(p.name) is p:
            del self._participants[p.name]
        self._schedule()

    # ----- the schedule ----------------------------------------------------------------------

    async def _wait(self, wake_at: datetime | None, event: anyio.Event | None) -> None:
        p = _current.get()
        if p is not None and (p.left or p.clock is not self):
            p = None
        w = _Waiter(wake_at, event)
        if p is not None and p._since is not None:
            p.busy_s += time.perf_counter() - p._since
            p._since = None
        if p is None:
            if wake_at is None:  # an observer waiting on an event alone: nothing to schedule
                assert event is not None
                await event.wait()
                return
            self._observers.append(w)
        else:
            if p.waiter is not None:
                raise RuntimeError(f"participant {p.name!r} waits in two tasks at once")
            p.waiter = w
        try:
            self._schedule()
            if event is None or p is None:
                await w.released.wait()
            else:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._watch, event, w)
                    await w.released.wait()
                    tg.cancel_scope.cancel()
        finally:
            if p is None:
                if w in self._observers:
                    self._observers.remove(w)
            elif p.waiter is w:  # cancelled before its release: running again
                p.waiter = None

    async def _watch(self, event: anyio.Event, w: _Waiter) -> None:
        """An event set by anyone makes its waiter ready: a turn may be due now."""
        await event.wait()
        if not w.released.is_set():
            self._schedule()

    def _schedule(self) -> None:
        """Release the next participant if none runs (moving time if none is ready)."""
        if not self._started:
            return
        people = list(self._participants.values())
        if any(p.running for p in people):
            return
        ready = [p for p in people if p.ready(self._now)]
        if not ready:
            wakes = [p.waiter.wake_at for p in people if p.waiter and p.waiter.wake_at]
            if not wakes and not people:
                wakes = [w.wake_at for w in self._observers if w.wake_at is not None]
            if not wakes:
                return  # every participant waits on an event nobody has set yet
            self._now = max(self._now, min(wakes))
            self.jumps += 1
            ready = [p for p in people if p.ready(self._now)]
        for w in list(self._observers):
            if w.wake_at is not None and w.wake_at <= self._now:
                self._observers.remove(w)
                w.released.set()
        if ready:
            nxt = min(ready, key=lambda p: p.key)
            turn = nxt.waiter
            assert turn is not None
            nxt.waiter = None  # running from this instant: nobody else is released meanwhile
            nxt.turns += 1
            nxt._since = time.perf_counter()
            self.turns += 1
            turn.released.set()


@contextmanager
def participating(clock: Clock, name: str) -> Iterator[Participant | None]:
    """The current task is participant `name` of `clock` while inside (a no-op unless `clock`
    is a `VirtualClock`)."""
    if not isinstance(clock, VirtualClock):
        yield None
        return
    with clock.participant(name).bound() as p:
        yield p


async def wait_event(clock: Clock, event: anyio.Event, timeout_s: float | None = None) -> bool:
    """Wait for `event` (True) or `timeout_s` clock seconds (False), without holding a
    `VirtualClock`'s time; on any other clock, a plain wait (timeout in wall seconds at the
    clock's speed)."""
    if isinstance(clock, VirtualClock):
        return await clock.wait(event, timeout_s)
    if timeout_s is None:
        await event.wait()
        return True
    with anyio.move_on_after(max(0.0, timeout_s) / max(clock.speed, 1e-9)):
        await event.wait()
    return event.is_set()
