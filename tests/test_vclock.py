"""`VirtualClock`: time moves only when every participant waits on it, same-instant wake-ups
take turns in name order, a participant in I/O (or anything else) holds time."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from functools import partial

import anyio
import pytest
from anyio.abc import TaskGroup

from market.clock import KST, ManualClock
from market.vclock import VirtualClock, participating, wait_event

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 3, 3, 9, 0, tzinfo=KST)


def _at(clock: VirtualClock) -> float:
    return (clock.now() - T0).total_seconds()


def _start(
    tg: TaskGroup, clock: VirtualClock, name: str, fn: Callable[[], Awaitable[None]]
) -> None:
    """Run `fn` as participant `name`, registered now (as `run_fleet` registers its fleet
    before any of it runs)."""
    p = clock.participant(name)

    async def body() -> None:
        with p.bound():
            await fn()

    tg.start_soon(body)


async def test_time_jumps_to_the_earliest_wake_up_once_all_sleep() -> None:
    clock = VirtualClock(T0)
    seen: list[tuple[str, float]] = []

    async def sleeper(name: str, period: float, n: int) -> None:
        for _ in range(n):
            await clock.sleep(period)
            seen.append((name, _at(clock)))

    clock.start()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            _start(tg, clock, "a", partial(sleeper, "a", 3.0, 3))
            _start(tg, clock, "b", partial(sleeper, "b", 5.0, 2))
    assert seen == [("a", 3.0), ("b", 5.0), ("a", 6.0), ("a", 9.0), ("b", 10.0)]
    assert clock.jumps == 5


async def test_a_participant_busy_in_io_holds_time() -> None:
    clock = VirtualClock(T0)
    io_done = anyio.Event()
    woke_at: list[float] = []

    async def fast() -> None:
        await clock.sleep(1.0)
        woke_at.append(_at(clock))

    async def busy() -> None:
        await io_done.wait()  # stands for a Redis or Postgres round trip
        await clock.sleep(10.0)

    clock.start()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            _start(tg, clock, "busy", busy)
            _start(tg, clock, "fast", fast)
            for _ in range(50):  # plenty of chances to move, were it allowed to
                await anyio.lowlevel.checkpoint()
            assert clock.now() == T0
            assert woke_at == []
            io_done.set()
    assert woke_at == [1.0]
    assert _at(clock) == 10.0


async def test_same_instant_wake_ups_run_alone_in_name_order() -> None:
    clock = VirtualClock(T0)
    log: list[str] = []

    async def worker(name: str) -> None:
        for _ in range(2):
            await clock.sleep(5.0)
            log.append(f"{name} in")
            # a turn is exclusive even across awaits (I/O) that let other tasks run
            for _ in range(3):
                await anyio.lowlevel.checkpoint()
            log.append(f"{name} out")

    clock.start()
    names = ["w10", "w2", "w1", "reconciler"]
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for name in names:
                _start(tg, clock, name, partial(worker, name))
    order = ["reconciler", "w1", "w2", "w10"]
    expected = [f"{n} {x}" for n in order for x in ("in", "out")]
    assert log == expected + expected


async def test_time_waits_for_every_registered_participant_before_it_starts() -> None:
    clock = VirtualClock(T0)
    late = clock.participant("late")  # registered, its task not started yet
    early_woke: list[float] = []

    async def early() -> None:
        with participating(clock, "early"):
            await clock.sleep(60.0)
            early_woke.append(_at(clock))

    clock.start()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(early)
            for _ in range(20):
                await anyio.lowlevel.checkpoint()
            assert early_woke == []
            assert clock.now() == T0
            with late.bound():
                await clock.sleep(0)  # ready: now the clock may move
                assert _at(clock) == 0.0
    assert early_woke == [60.0]


async def test_nothing_moves_before_start() -> None:
    clock = VirtualClock(T0)

    async def p() -> None:
        with participating(clock, "p"):
            await clock.sleep(1.0)

    async with anyio.create_task_group() as tg:
        tg.start_soon(p)
        for _ in range(20):
            await anyio.lowlevel.checkpoint()
        assert clock.now() == T0
        clock.start()
    assert _at(clock) == 1.0


async def test_a_cancelled_sleeper_leaves_and_no_longer_holds_time() -> None:
    clock = VirtualClock(T0)
    other_woke: list[float] = []

    ready, holder = anyio.Event(), []

    async def stuck() -> None:
        with anyio.CancelScope() as scope:
            holder.append(scope)
            ready.set()
            await clock.sleep(3600.0)
        # cancelled: running again; leaves on exit

    gate = anyio.Event()

    async def other() -> None:
        await gate.wait()  # running (as in I/O) until the stuck one is cancelled
        await clock.sleep(5.0)
        other_woke.append(_at(clock))

    clock.start()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            _start(tg, clock, "a-stuck", stuck)
            _start(tg, clock, "b-other", other)
            await ready.wait()
            holder[0].cancel()
            gate.set()
    assert other_woke == [5.0]
    assert clock.participants == []


async def test_a_participant_that_leaves_while_running_lets_time_move() -> None:
    clock = VirtualClock(T0)
    woke: list[float] = []
    gone = clock.participant("gone")

    async def sleeper() -> None:
        with participating(clock, "sleeper"):
            await clock.sleep(2.0)
            woke.append(_at(clock))

    clock.start()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(sleeper)
            for _ in range(10):
                await anyio.lowlevel.checkpoint()
            assert woke == []
            gone.leave()
    assert woke == [2.0]


async def test_waiting_on_another_participant_does_not_hold_time() -> None:
    """A placer waits for its tracker's verdict, which comes after the tracker's next poll."""
    clock = VirtualClock(T0)
    final = anyio.Event()
    handed = anyio.Event()
    got: list[tuple[str, float]] = []

    async def placer() -> None:
        handed.set()
        assert await wait_event(clock, final) is True
        got.append(("final", _at(clock)))

    async def tracker() -> None:
        assert await wait_event(clock, handed, 300.0) is True
        await clock.sleep(2.0)  # the poll interval
        final.set()
        for _ in range(3):  # the rest of its pass: the placer waits for its turn
            await anyio.lowlevel.checkpoint()
        got.append(("set", _at(clock)))

    clock.start()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            _start(tg, clock, "w1/tracker", tracker)
            _start(tg, clock, "w1", placer)
    # the placer resumes on its turn, after the tracker's turn ended
    assert got == [("set", 2.0), ("final", 2.0)]


async def test_an_event_wait_times_out_in_clock_seconds() -> None:
    clock = VirtualClock(T0)
    never = anyio.Event()
    clock.start()
    with participating(clock, "p"), anyio.fail_after(5):
        assert await clock.wait(never, 300.0) is False
    assert _at(clock) == 300.0


async def test_observers_are_woken_as_time_passes_and_never_hold_it() -> None:
    clock = VirtualClock(T0)
    seen: list[float] = []

    async def display() -> None:  # not a participant
        for _ in range(3):
            await clock.sleep(60.0)
            seen.append(_at(clock))

    async def worker() -> None:
        for _ in range(10):
            await clock.sleep(30.0)

    clock.start()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(display)
            _start(tg, clock, "w1", worker)
    assert seen == [60.0, 120.0, 180.0]
    assert _at(clock) >= 300.0


async def test_one_participant_cannot_wait_in_two_tasks() -> None:
    clock = VirtualClock(T0)
    clock.start()
    with pytest.raises(ExceptionGroup) as caught, participating(clock, "p"):  # noqa: PT012
        async with anyio.create_task_group() as tg:
            never = anyio.Event()
            tg.start_soon(clock.wait, never)
            tg.start_soon(clock.wait, never)
    assert caught.group_contains(RuntimeError, match="two tasks")


async def test_helpers_fall_back_to_plain_waits_on_other_clocks() -> None:
    clock = ManualClock(T0)
    ev = anyio.Event()
    with participating(clock, "p") as p:
        assert p is None
        assert await wait_event(clock, ev, 0.01) is False
        ev.set()
        assert await wait_event(clock, ev) is True


def test_start_must_be_timezone_aware() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        VirtualClock(datetime(2026, 3, 3, 9, 0))
    clock = VirtualClock(T0)
    clock.participant("x")
    with pytest.raises(ValueError, match="already registered"):
        clock.participant("x")
    assert clock.now() + timedelta(0) == T0
