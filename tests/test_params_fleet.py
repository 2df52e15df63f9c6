"""Live parameters during a fleet day: three workers in one process on the paper broker, real
Redis and Postgres, changed by `python -m worker params` processes while they trade."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import date
from decimal import Decimal
from functools import partial
from typing import Any

import anyio
import pytest
from support import sql

from trading.config import TradingConfig
from trading.live import ParamSource, WatchedSource
from trading.loop import Worker
from worker.app import epoch_soon, run_fleet
from worker.settings import load_settings

pytestmark = [pytest.mark.slow, pytest.mark.anyio]  # a fleet and several CLI processes

SPEED = 300.0  # a scan every 0.1 s of wall time; the CLI calls take a few s of the session
DAY = date(2026, 11, 24)


class Recorded:
    """A worker's source, recording each poll: (when it began, the version after it)."""

    def __init__(self, inner: ParamSource) -> None:
        self.inner = inner
        self.polls: list[tuple[float, int]] = []

    @property
    def version(self) -> int:
        return self.inner.version

    async def watch(self) -> None:  # the fleet's own watch of the notice stream
        assert isinstance(self.inner, WatchedSource)
        await self.inner.watch()

    async def poll(self) -> TradingConfig | None:
        began = time.monotonic()
        config = await self.inner.poll()
        self.polls.append((began, self.inner.version))
        return config


def stop_loss(config: Any) -> Decimal:
    strategy = getattr(config, "strategy", None)
    if strategy is not None:
        return Decimal(strategy.params.stop_loss_pct)
    return Decimal(config.signals.stop_loss_pct)


async def until(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.02)


async def test_a_fleet_day_follows_live_parameters(
    database_url: str, redis_url: str, prefix: str
) -> None:
    epoch = epoch_soon(0.3)
    settings = load_settings(database_url=database_url, redis_url=redis_url, fleet_prefix=prefix,
                             worker_id="live", paper_seed=7, paper_symbols=100, paper_day=DAY,
                             lock_ttl_ms=3_000)  # fmt: skip
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url,
           "FLEET_PREFIX": prefix, "PAPER_SPEED": str(SPEED), "PAPER_EPOCH": str(epoch),
           "PAPER_DAY": DAY.isoformat()}  # fmt: skip

    async def cli(*args: str) -> tuple[int, str, str]:
        done = await anyio.run_process([sys.executable, "-m", "worker", *args], env=env,
                                       check=False)  # fmt: skip
        return done.returncode, done.stdout.decode(), done.stderr.decode()

    fleet: list[Worker] = []
    recorded: dict[str, Recorded] = {}

    def started(workers: Sequence[Worker], *_: Any) -> None:
        for w in workers:
            recorded[w.id] = Recorded(w.d.params)
            w.d = replace(w.d, params=recorded[w.id])
            w.entries.d = w.d
        fleet.extend(workers)

    def versions() -> set[int]:
        return {w.d.params.version for w in fleet}

    async def within_one_step(version: int, returned_at: float) -> None:
        """Every worker applied `version` no later than the first step it began after the
        command that published it returned."""
        await until(lambda: versions() == {version})
        await until(lambda: all(any(t > returned_at for t, _ in r.polls)
                                for r in recorded.values()))  # fmt: skip
        for worker_id, r in recorded.items():
            applied = next(i for i, (_, v) in enumerate(r.polls) if v == version)
            first_after = next(i for i, (t, _) in enumerate(r.polls) if t > returned_at)
            assert applied <= first_after, worker_id

    def redis_and_ledger() -> tuple[Any, ...]:
        import redis as syncredis

        client = syncredis.Redis.from_url(redis_url)
        try:
            published = (client.get(f"{prefix}:params:version"),
                         client.hgetall(f"{prefix}:params"))  # fmt: skip
        finally:
            client.close()
        return published, sql(database_url, "SELECT count(*) FROM param_changes")

    async with anyio.create_task_group() as tg:
        tg.start_soon(partial(run_fleet, settings, database_url=database_url,
                              redis_url=redis_url, workers=3, speed=SPEED, epoch=epoch,
                              on_started=started, handle_signals=False))  # fmt: skip
        await until(lambda: len(fleet) == 3 and all(len(r.polls) >= 2 for r in recorded.values()))
        assert versions() == {0}
        assert {stop_loss(w.d.config) for w in fleet} == {Decimal("1.5")}

        code, out, err = await cli("params", "set", "STOP_LOSS_PCT=0.8", "--by", "ops@desk")
        returned_at = time.monotonic()
        assert code == 0, err
        assert out.splitlines() == ["params v1 by ops@desk:", "  STOP_LOSS_PCT 1.5 -> 0.8"]
        await within_one_step(1, returned_at)
        assert {stop_loss(w.d.config) for w in fleet} == {Decimal("0.8")}
        code, out, err = await cli("workers", "--json")
        assert code == 0, err
        shown = {w["worker_id"]: w["params_version"] for w in json.loads(out)["workers"]}
        assert shown == {w.id: 1 for w in fleet}
        assert sql(
            database_url, "SELECT version, key, old_value, new_value, changed_by FROM param_changes"
        ) == [(1, "STOP_LOSS_PCT", "1.5", "0.8", "ops@desk")]

        # a bad value and a loosened money limit mid-session: exit 2, nothing changes
        before = redis_and_ledger()
        code, _, err = await cli("params", "set", "CAPITAL_LIMIT=abc")
        assert (code, err.count("\n")) == (2, 1)
        assert "CAPITAL_LIMIT: Input should be a valid decimal (got 'abc')" in err
        looser = settings.capital_limit * 2
        code, _, err = await cli("params", "set", f"CAPITAL_LIMIT={looser}")
        assert (code, err.count("\n")) == (2, 1)
        assert f"loosens a money limit during the session of {DAY}" in err
        assert redis_and_ledger() == before
        assert versions() == {1}

        code, out, err = await cli("params", "reset", "--by", "ops@desk")
        returned_at = time.monotonic()
        assert code == 0, err
        await within_one_step(2, returned_at)
        assert {stop_loss(w.d.config) for w in fleet} == {Decimal("1.5")}

        # two processes at once: distinct versions, both changes kept
        results: list[tuple[int, str, str]] = []

        async def one(*args: str) -> None:
            results.append(await cli("params", "set", *args))

        async with anyio.create_task_group() as both:
            both.start_soon(one, "STOP_LOSS_PCT=0.9")
            both.start_soon(one, "TAKE_PROFIT_PCT=2.5")
        assert [code for code, _, _ in results] == [0, 0], results
        assert sorted(out.splitlines()[0].split()[1] for _, out, _ in results) == ["v3", "v4"]
        returned_at = time.monotonic()
        await within_one_step(4, returned_at)
        (published, _) = redis_and_ledger()
        assert published == (b"4", {b"STOP_LOSS_PCT": b"0.9", b"TAKE_PROFIT_PCT": b"2.5"})
        assert {stop_loss(w.d.config) for w in fleet} == {Decimal("0.9")}
        for w in fleet:
            w.request_stop()
