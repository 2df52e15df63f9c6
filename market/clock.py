"""Injected time. Everything that depends on time takes a `Clock`.

`RealClock` is Asia/Seoul wall time. `SimClock` maps wall time linearly onto one simulated
session: `now = session_open + (wall - epoch) * speed`, so processes given the same epoch and
speed share one simulated clock, and one started late joins the session in progress.
`ManualClock` moves only when told (tests drive time one step at a time; `sleep` advances it
instantly). `sleep(seconds)` is always in clock seconds (simulated seconds for a `SimClock`).
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

import anyio

KST = ZoneInfo("Asia/Seoul")


class Clock(Protocol):
    def now(self) -> datetime:
        """The current instant, timezone-aware (Asia/Seoul)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Sleep `seconds` of this clock's time."""
        ...

    @property
    def speed(self) -> float:
        """Clock seconds per wall second (1 for real time)."""
        ...


class RealClock:
    speed = 1.0

    def now(self) -> datetime:
        return datetime.now(KST)

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(0.0, seconds))


class SimClock:
    def __init__(self, session_open: datetime, speed: float, epoch: float | None = None) -> None:
        if session_open.tzinfo is None:
            raise ValueError("session_open must be timezone-aware")
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self.session_open = session_open.astimezone(KST)
        self.speed = float(speed)
        self.epoch = time.time() if epoch is None else float(epoch)

    def now(self) -> datetime:
        elapsed = (time.time() - self.epoch) * self.speed
        return self.session_open + timedelta(seconds=elapsed)

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(0.0, seconds) / self.speed)

    async def sleep_until(self, when: datetime) -> None:
        await self.sleep((when - self.now()).total_seconds())


class ManualClock:
    """A clock that moves only when told: `sleep` advances it at once, `set` jumps."""

    speed = 1.0

    def __init__(self, now: datetime) -> None:
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        self.t = now

    def now(self) -> datetime:
        return self.t

    async def sleep(self, seconds: float) -> None:
        await anyio.lowlevel.checkpoint()
        self.t += timedelta(seconds=max(0.0, seconds))

    def set(self, at: datetime) -> None:
        self.t = at
