"""Live parameters against real Redis and Postgres: validated like the environment, versioned,
recorded in the ledger, published in Redis, announced; money limits only tighten mid-session;
a worker's source follows the published versions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis
from support import sql

from coordination.keys import Keyspace
from coordination.notices import Notices, NoticeType
from coordination.params import RedisParams
from ledger.repository import Ledger
from market.calendar import default_calendar
from worker.app import trading_config
from worker.params import (
    CORE_LIVE,
    FleetParams,
    ParamsRefused,
    change,
    check_name,
    env_with_live,
    live_names,
    plan_change,
    with_live,
)
from worker.settings import ConfigError, Settings, load_settings

SESSION = default_calendar().session(date(2026, 11, 24))


def stop_loss(config: Any) -> Decimal:
    """STOP_LOSS_PCT as a worker's config carries it (the strategy's parameter)."""
    strategy = getattr(config, "strategy", None)
    if strategy is not None:
        return Decimal(strategy.params.stop_loss_pct)
    return Decimal(config.signals.stop_loss_pct)


# --- names and values, exactly as the environment's ------------------------------------------


def test_a_misspelt_name_gets_the_settings_did_you_mean() -> None:
    with pytest.raises(ConfigError, match=r"^STOP_LOS_PCT: unknown setting; did you mean "
                                          r"STOP_LOSS_PCT\?$"):  # fmt: skip
        check_name("stop_los_pct", load_settings())
    with pytest.raises(ConfigError, match=r"^NO_SUCH_THING: unknown setting$"):
        check_name("NO_SUCH_THING", load_settings())


def test_a_setting_that_is_not_live_is_refused_by_name() -> None:
    for name in ("DATABASE_URL", "LOCK_TTL_MS", "N_BARS", "LIQUIDATION_LEAD_MIN"):
        with pytest.raises(ConfigError, match=rf"^{name}: not a live parameter"):
            check_name(name, load_settings())
    assert all(name.lower() in Settings.model_fields for name in CORE_LIVE)
    shipped = live_names(load_settings())
    assert shipped[:2] == ("CAPITAL_LIMIT", "DAILY_LOSS_LIMIT")
    assert {"STOP_LOSS_PCT", "MIN_SCORE", "EXCLUDE_SYMBOLS", "SHORT_MA_BARS"} <= set(shipped)


def test_values_are_checked_by_the_settings_validators() -> None:
    with pytest.raises(ConfigError, match=r"^CAPITAL_LIMIT: .*\(got 'abc'\)$"):
        env_with_live({"CAPITAL_LIMIT": "abc"})
    with pytest.raises(ConfigError, match=r"^STOP_LOSS_PCT: .*less than 50"):
        env_with_live({"STOP_LOSS_PCT": "80"})
    # a cross-field rule of the model holds over the environment and the live set together
    with pytest.raises(ConfigError, match="SHORT_MA_BARS must be smaller than LONG_MA_BARS"):
        env_with_live({"SHORT_MA_BARS": "25"})
    assert env_with_live({"EXCLUDE_SYMBOLS": "005930, 000660"}).value("EXCLUDE_SYMBOLS") == (
        "005930", "000660",
    )  # fmt: skip


# --- one change: ledger, Redis, notice ---------------------------------------------------------


class _Fleet:
    def __init__(self, ledger: Ledger, redis: aioredis.Redis, prefix: str) -> None:
        self.ledger = ledger
        self.keys = Keyspace(prefix)
        self.store = RedisParams(redis, self.keys)
        self.notices = Notices(redis, self.keys)
        self.redis = redis

    async def announce(self, data: Mapping[str, Any]) -> None:
        await self.notices.publish(NoticeType.PARAMS_CHANGED, "", None, data)

    async def set(self, requested: Mapping[str, str | None] | None, *, by: str = "alice@desk",
                  mid_session: bool = False, force: bool = False) -> Any:  # fmt: skip
        plan = plan_change(requested, session=SESSION if mid_session else None, force=force)
        return await change(self.ledger, self.store, self.announce, plan, by=by, forced=force)

    async def redis_state(self) -> tuple[Any, dict[Any, Any]]:
        return (await self.redis.get(self.keys.params_version),
                await self.redis.hgetall(self.keys.params))  # fmt: skip


pytestmark = pytest.mark.anyio


async def test_a_change_is_recorded_published_and_announced(
    ledger: Ledger, redis_client: aioredis.Redis, prefix: str, database_url: str
) -> None:
    fleet = _Fleet(ledger, redis_client, prefix)
    done = await fleet.set({"STOP_LOSS_PCT": "0.8", "MIN_SCORE": "1.5"})
    assert done.state.version == 1
    assert done.published
    rows = sql(database_url, "SELECT version, key, old_value, new_value, live, changed_by, forced"
                             " FROM param_changes ORDER BY key")  # fmt: skip
    assert rows == [(1, "MIN_SCORE", "0.5", "1.5", True, "alice@desk", False),
                    (1, "STOP_LOSS_PCT", "1.5", "0.8", True, "alice@desk", False)]  # fmt: skip
    assert await fleet.redis_state() == (b"1", {b"MIN_SCORE": b"1.5", b"STOP_LOSS_PCT": b"0.8"})
    (notice,) = await fleet.notices.read()
    assert notice.type is NoticeType.PARAMS_CHANGED
    assert notice.data["version"] == 1
    assert notice.data["by"] == "alice@desk"
    assert {c["key"]: (c["old"], c["new"]) for c in notice.data["changes"]} == {
        "MIN_SCORE": ("0.5", "1.5"), "STOP_LOSS_PCT": ("1.5", "0.8"),
    }  # fmt: skip

    # the same value again: no new version, nothing announced
    again = await fleet.set({"STOP_LOSS_PCT": "0.80"})
    assert (again.state.version, again.records) == (1, [])
    assert len(await fleet.notices.read()) == 1


async def test_a_bad_value_changes_nothing(
    ledger: Ledger, redis_client: aioredis.Redis, prefix: str, database_url: str
) -> None:
    fleet = _Fleet(ledger, redis_client, prefix)
    await fleet.set({"STOP_LOSS_PCT": "0.8"})
    before = await fleet.redis_state()
    with pytest.raises(ConfigError, match=r"^CAPITAL_LIMIT: "):
        await fleet.set({"CAPITAL_LIMIT": "abc", "TAKE_PROFIT_PCT": "2"})
    with pytest.raises(ConfigError, match=r"^MIN_PRICE must not exceed MAX_PRICE$"):
        await fleet.set({"MIN_PRICE": "2000000"})
    assert await fleet.redis_state() == before
    assert sql(database_url, "SELECT count(*) FROM param_changes") == [(1,)]
    assert len(await fleet.notices.read()) == 1


async def test_money_limits_only_tighten_during_a_session(
    ledger: Ledger, redis_client: aioredis.Redis, prefix: str, database_url: str
) -> None:
    fleet = _Fleet(ledger, redis_client, prefix)
    env = load_settings()
    tighter = env.capital_limit / 2
    done = await fleet.set({"CAPITAL_LIMIT": str(tighter)}, mid_session=True)
    assert done.state.version == 1
    with pytest.raises(ParamsRefused, match=r"^CAPITAL_LIMIT: .* loosens a money limit during "
                                            r"the session of 2026-11-24"):  # fmt: skip
        await fleet.set({"CAPITAL_LIMIT": str(tighter + 1)}, mid_session=True)
    # a reset that would loosen is a loosening too
    with pytest.raises(ParamsRefused, match=r"^CAPITAL_LIMIT: "):
        await fleet.set(None, mid_session=True)
    assert await fleet.redis_state() == (b"1", {b"CAPITAL_LIMIT": str(tighter).encode()})
    # outside a session, or forced, it may loosen; the row says it was forced
    forced = await fleet.set({"CAPITAL_LIMIT": str(tighter + 1)}, mid_session=True, force=True)
    assert forced.state.version == 2
    assert forced.records[0].forced
    assert (await fleet.set({"DAILY_LOSS_LIMIT": "1"}, mid_session=True)).state.version == 3
    assert (await fleet.set({"DAILY_LOSS_LIMIT": "5"})).state.version == 4
    assert sql(database_url, "SELECT version, forced FROM param_changes ORDER BY version") == [
        (1, False), (2, True), (3, False), (4, False),
    ]  # fmt: skip


async def test_reset_returns_to_the_environment_and_is_recorded(
    ledger: Ledger, redis_client: aioredis.Redis, prefix: str, database_url: str
) -> None:
    fleet = _Fleet(ledger, redis_client, prefix)
    await fleet.set({"STOP_LOSS_PCT": "0.8", "HOLD_INTERVAL_S": "5"})
    one = await fleet.set({"HOLD_INTERVAL_S": None}, by="bob")
    assert one.state.version == 2
    assert one.state.values() == {"STOP_LOSS_PCT": "0.8"}
    done = await fleet.set(None, by="bob")
    assert done.state.version == 3
    assert done.state.values() == {}
    assert await fleet.redis_state() == (b"3", {})
    assert sql(
        database_url,
        "SELECT version, key, old_value, new_value, live FROM param_changes"
        " WHERE version > 1 ORDER BY version",
    ) == [
        (2, "HOLD_INTERVAL_S", "5.0", "10.0", False),
        (3, "STOP_LOSS_PCT", "0.8", "1.5", False),
    ]
    assert (await fleet.set(None)).records == []  # nothing live: nothing to reset


async def test_concurrent_changes_get_distinct_versions_and_lose_none(
    ledger: Ledger, redis_client: aioredis.Redis, prefix: str, database_url: str
) -> None:
    fleet = _Fleet(ledger, redis_client, prefix)
    wanted = {"STOP_LOSS_PCT": "0.9", "TAKE_PROFIT_PCT": "2.5", "MAX_HOLD_MIN": "45",
              "MIN_SCORE": "0.7", "MIN_VOLUME": "30000", "MAX_CANDIDATES": "10",
              "SCAN_INTERVAL_S": "20.0", "TREND_BREAK_PCT": "0.4"}  # fmt: skip
    versions: list[int] = []

    async def one(key: str, value: str) -> None:
        versions.append((await fleet.set({key: value}, by=key)).records[0].version)

    async with anyio.create_task_group() as tg:
        for key, value in wanted.items():
            tg.start_soon(one, key, value)
    assert sorted(versions) == list(range(1, len(wanted) + 1))
    version, values = await fleet.redis_state()
    assert version == str(len(wanted)).encode()
    assert {k.decode(): v.decode() for k, v in values.items()} == wanted
    assert (await ledger.live_params()).values() == wanted


# --- a worker's source -------------------------------------------------------------------------


async def test_a_worker_follows_published_versions_and_refuses_bad_data(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    store = RedisParams(redis_client, Keyspace(prefix))
    base = load_settings(worker_id="w1")
    source = FleetParams(store, base, trading_config)
    default = trading_config(base)
    assert await source.load(default) is default
    assert source.version == 0
    assert await source.poll() is None

    await store.publish(1, {"STOP_LOSS_PCT": "0.8", "CAPITAL_LIMIT": "5000000"})
    config = await source.poll()
    assert config is not None
    assert source.version == 1
    assert stop_loss(config) == Decimal("0.8")
    assert config.capital_limit == Decimal(5_000_000)
    assert config.worker_id == "w1"
    assert await source.poll() is None  # one GET, nothing new
    assert not await store.publish(1, {})  # an older or equal version never replaces it

    # a value written around the validators (redis-cli) is refused once, the worker keeps v1
    await store.publish(2, {"STOP_LOSS_PCT": "lots"})
    assert await source.poll() is None
    assert await source.poll() is None
    assert source.version == 1
    await store.publish(3, {})
    back = await source.poll()
    assert back is not None
    assert source.version == 3
    assert stop_loss(back) == stop_loss(default) == Decimal("1.5")
    assert back.capital_limit == default.capital_limit
    assert with_live(base, {}).settings.worker_id == "w1"


PLUG_IN = "examples.mean_reversion:MeanReversion"


async def test_a_plug_in_strategys_own_parameters_are_live(
    redis_client: aioredis.Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))  # examples/
    monkeypatch.setenv("STRATEGY", PLUG_IN)
    base = load_settings(worker_id="w1")
    names = live_names(base)
    assert names[: len(CORE_LIVE)] == CORE_LIVE
    assert {"STRATEGY_LOOKBACK_BARS", "STRATEGY_STOP_LOSS_PCT"} <= set(names)
    with pytest.raises(ConfigError, match=r"^STOP_LOSS_PCT: not a live parameter"):
        check_name("STOP_LOSS_PCT", base)  # the shipped strategy's, not this one's
    with pytest.raises(ConfigError, match="did you mean STRATEGY_LOOKBACK_BARS"):
        check_name("STRATEGY_LOOKBAK_BARS", base)
    with pytest.raises(ConfigError, match="STRATEGY_LOOKBACK_BARS"):
        env_with_live({"STRATEGY_LOOKBACK_BARS": "1"})  # the strategy's own bounds
    assert env_with_live({"STRATEGY_LOOKBACK_BARS": "30"}).value("STRATEGY_LOOKBACK_BARS") == 30

    store = RedisParams(redis_client, Keyspace(prefix))
    source = FleetParams(store, base, trading_config)
    await store.publish(1, {"STRATEGY_LOOKBACK_BARS": "30", "CAPITAL_LIMIT": "5000000"})
    config = await source.poll()
    assert config is not None
    assert getattr(config.strategy.params, "lookback_bars") == 30  # noqa: B009 (a plug-in's)
    assert config.capital_limit == Decimal(5_000_000)


# --- the command line ------------------------------------------------------------------------


def _cli(*args: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "worker", "params", *args], env={**os.environ,
                          **env}, capture_output=True, text=True, timeout=120)  # fmt: skip


def test_cli_set_show_and_refusals(database_url: str, redis_url: str, prefix: str) -> None:
    env = {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "FLEET_PREFIX": prefix,
           "PAPER_SPEED": "1000", "PAPER_DAY": "2026-11-24"}  # fmt: skip
    bad = _cli("set", "CAPITAL_LIMIT=abc", env=env)
    assert bad.returncode == 2
    assert bad.stderr.splitlines() == [
        "python -m worker: config error: CAPITAL_LIMIT: Input should be a valid decimal (got 'abc')"
    ]
    typo = _cli("set", "STOP_LOS_PCT=1", env=env)
    assert typo.returncode == 2
    assert "did you mean STOP_LOSS_PCT?" in typo.stderr

    done = _cli("set", "STOP_LOSS_PCT=0.8", "--by", "carol", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["params v1 by carol:", "  STOP_LOSS_PCT 1.5 -> 0.8"]
    # PAPER_SPEED > 1 without an epoch: the simulated session counts as open, so no loosening
    loosen = _cli("set", "CAPITAL_LIMIT=20000000", env=env)
    assert loosen.returncode == 2
    assert "loosens a money limit" in loosen.stderr

    shown = json.loads(_cli("show", "--json", env=env).stdout)
    assert (shown["version"], shown["published_version"]) == (1, 1)
    by_key = {p["key"]: p for p in shown["params"]}
    assert by_key["STOP_LOSS_PCT"] | {"changed_at": None} == {
        "key": "STOP_LOSS_PCT", "value": "0.8", "source": "live", "version": 1,
        "changed_at": None, "changed_by": "carol",
    }  # fmt: skip
    assert by_key["CAPITAL_LIMIT"]["source"] == "env"
    assert sql(database_url, "SELECT count(*) FROM param_changes") == [(1,)]
