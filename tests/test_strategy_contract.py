"""The strategy contract (`strategy.base.Strategy`), one suite over every strategy we ship: the
default (`strategy.momentum`) and the example users copy (`examples/mean_reversion.py`).

Pure: simulated snapshots and quotes, no servers. Loading by spec string and the exit-2 path
of a bad `STRATEGY` are checked through the real command line.
"""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from market.calendar import Session
from market.clock import KST
from market.sim import SimulatedMarket
from market.ticks import price_limits
from market.types import Quote, Snapshot, Tier
from strategy import DEFAULT_SPEC, ParamError, Strategy, StrategyParams, describe, load
from strategy.base import Candidate, HeldPosition, sell_signal_at
from strategy.signals import ExitReason, SellSignal, Urgency
from strategy.triggers import HasSellLevels

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_SPEC = "examples.mean_reversion:MeanReversion"
SPECS = [DEFAULT_SPEC, EXAMPLE_SPEC]
DAY = date(2026, 3, 10)
SESSION = Session(
    DAY,
    datetime(2026, 3, 10, 9, 0, tzinfo=KST),
    datetime(2026, 3, 10, 15, 20, tzinfo=KST),
    datetime(2026, 3, 10, 15, 30, tzinfo=KST),
)
N_BARS = 60
MINUTES = (5, 30, 61, 90, 120, 180, 240, 300)


@pytest.fixture(autouse=True)
def _examples_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    # `python -m worker` run from a project folder imports its strategies from there
    monkeypatch.syspath_prepend(str(ROOT))


@pytest.fixture(params=SPECS)
def spec(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def market() -> SimulatedMarket:
    return SimulatedMarket(0, SESSION, 300)


def snapshots(market: SimulatedMarket) -> list[Snapshot]:
    return [market.snapshot(SESSION.open + timedelta(minutes=m), N_BARS) for m in MINUTES]


def empty_snapshot(n_bars: int = N_BARS) -> Snapshot:
    none = np.zeros(0)
    return Snapshot(
        at=SESSION.open, trading_day=DAY, symbols=(), price=none, bid=none, ask=none,
        tick=none, volume=none, traded_value=none, day_high=none, day_low=none,
        prev_close=none, prev_high=none, prev_low=none, tier=np.zeros(0, dtype=np.int64),
        closes=np.zeros((0, n_bars)), volumes=np.zeros((0, n_bars)),
    )  # fmt: skip


def quote(price: int, short_ma: Decimal | None = None, prev_close: int = 10_000) -> Quote:
    lower, upper = price_limits(Decimal(prev_close))
    p = Decimal(price)
    return Quote(symbol="005930", at=SESSION.open, price=p, bid=p - 10, ask=p + 10,
                 bid_qty=100, ask_qty=100, volume=1_000_000, traded_value=Decimal(10**10),
                 day_high=p, day_low=p, prev_close=Decimal(prev_close),
                 prev_high=Decimal(prev_close), prev_low=Decimal(prev_close),
                 upper_limit=upper, lower_limit=lower, tier=Tier.HIGH,
                 short_ma=short_ma)  # fmt: skip


POSITION = HeldPosition("005930", 10, Decimal(10_000), SESSION.open + timedelta(minutes=60))


# ----- loading and shape ---------------------------------------------------------------------


def test_loads_by_spec_as_a_strategy(spec: str) -> None:
    strategy = load(spec)
    assert isinstance(strategy, Strategy)
    assert issubclass(strategy.Params, StrategyParams)
    assert isinstance(strategy.params, strategy.Params)
    assert strategy.params == strategy.Params()  # nothing given: the declared defaults
    assert 1 <= strategy.bars_needed <= N_BARS
    assert strategy.quote_ma_bars >= 0


def test_every_parameter_is_typed_bounded_and_described(spec: str) -> None:
    for row in describe(load(spec).Params):
        assert row["description"], row["name"]
        assert row["env"] == load(spec).Params.env_name(row["name"])
        if row["type"] in ("int", "float", "Decimal"):
            assert row["bounds"], f"{row['name']} has no range"


# ----- SCAN: candidates ----------------------------------------------------------------------


def test_candidates_are_well_formed_on_a_simulated_day(spec: str, market: SimulatedMarket) -> None:
    strategy = load(spec)
    ranked = bought = 0
    for snap in snapshots(market):
        found = list(strategy.candidates(snap))
        row = {s: i for i, s in enumerate(snap.symbols)}
        assert len({c.symbol for c in found}) == len(found)
        scores = [c.score for c in found]
        assert scores == sorted(scores, reverse=True)
        for c in found:
            assert isinstance(c, Candidate)
            i = row[c.symbol]
            assert isinstance(c.price, Decimal)
            assert c.price == Decimal(round(float(snap.price[i]))) > 0
            assert math.isfinite(c.score)
            assert c.tier is Tier(int(snap.tier[i]))
            assert all(isinstance(r, str) for r in c.reasons)
            # NaN padding never reaches a candidate: its window is complete
            assert not np.isnan(snap.closes[i, -strategy.bars_needed :]).any()
            label = strategy.buy_signal(c)
            assert label is None or (isinstance(label, str) and label)
            bought += label is not None
        ranked += len(found)
    assert ranked > 0  # the checks above ran on real candidates
    assert bought > 0


def test_candidates_are_deterministic_and_independent_of_row_order(
    spec: str, market: SimulatedMarket
) -> None:
    strategy = load(spec)
    rng = np.random.default_rng(7)
    for snap in snapshots(market):
        first = list(strategy.candidates(snap))
        assert list(load(spec).candidates(snap)) == first  # a fresh instance agrees
        perm = rng.permutation(len(snap.symbols))
        shuffled = dataclasses.replace(
            snap,
            symbols=tuple(snap.symbols[i] for i in perm),
            **{
                f.name: getattr(snap, f.name)[perm]
                for f in dataclasses.fields(snap)
                if isinstance(getattr(snap, f.name), np.ndarray)
            },
        )
        again = list(strategy.candidates(shuffled))
        assert [(c.symbol, c.score) for c in again] == [(c.symbol, c.score) for c in first]


def test_an_empty_universe_has_no_candidates(spec: str) -> None:
    assert list(load(spec).candidates(empty_snapshot())) == []


def test_the_opening_minutes_of_nan_padding_give_no_candidate(
    spec: str, market: SimulatedMarket
) -> None:
    strategy = load(spec)
    for minute in (0, 1, 2):  # fewer completed bars than any window
        snap = market.snapshot(SESSION.open + timedelta(minutes=minute), N_BARS)
        assert list(strategy.candidates(snap)) == []


def test_halted_symbols_are_never_candidates(spec: str, market: SimulatedMarket) -> None:
    strategy = load(spec)
    snap = market.snapshot(SESSION.open + timedelta(minutes=120), N_BARS)
    found = {c.symbol for c in strategy.candidates(snap)}
    assert found
    halted = np.array([s in found for s in snap.symbols])
    snap = dataclasses.replace(snap, halted=halted)
    assert found.isdisjoint(c.symbol for c in strategy.candidates(snap))


# ----- HOLD: sell signals --------------------------------------------------------------------


def test_the_stop_loss_fires_at_the_lower_limit(spec: str) -> None:
    strategy = load(spec)
    limit_down = quote(7_000, short_ma=Decimal(9_000))
    for held_min in (1, 30):
        now = POSITION.opened_at + timedelta(minutes=held_min)
        signal = strategy.sell_signal(POSITION, limit_down, now)
        assert signal == SellSignal(ExitReason.STOP_LOSS, signal.urgency, Decimal(7_000))
        assert signal.urgency >= Urgency.MARKETABLE


def test_sell_signals_have_valid_reasons_and_urgency(spec: str) -> None:
    strategy = load(spec)
    seen: set[ExitReason] = set()
    for price in range(7_000, 13_001, 250):
        for ma in (None, Decimal(9_500), Decimal(10_000), Decimal(10_500)):
            for held_min in (0, 1, 10, 60, 200):
                now = POSITION.opened_at + timedelta(minutes=held_min)
                signal = strategy.sell_signal(POSITION, quote(price, ma), now)
                if signal is None:
                    continue
                assert isinstance(signal.reason, ExitReason)
                assert signal.reason is not ExitReason.FORCED_LIQUIDATION  # the core's rule
                assert isinstance(signal.urgency, Urgency)
                assert signal.trigger_price == Decimal(price)
                seen.add(signal.reason)
    # with a price at the entry and no moving average, holding still is possible
    assert strategy.sell_signal(POSITION, quote(10_000), POSITION.opened_at) is None
    assert {ExitReason.STOP_LOSS, ExitReason.TIME_EXIT} <= seen


def test_forced_liquidation_comes_first_whatever_the_strategy(spec: str) -> None:
    strategy = load(spec)
    liq = SESSION.continuous_close - timedelta(minutes=15)
    signal = sell_signal_at(strategy, POSITION, quote(10_000), liq, liq)
    assert signal == SellSignal(ExitReason.FORCED_LIQUIDATION, Urgency.MARKETABLE, Decimal(10_000))
    before = sell_signal_at(strategy, POSITION, quote(10_000), POSITION.opened_at, liq)
    assert before is None


def test_sell_levels_where_offered_are_prices_that_fire(spec: str) -> None:
    strategy = load(spec)
    if not isinstance(strategy, HasSellLevels):
        pytest.skip("no sell levels: the holder polls")
    now = POSITION.opened_at + timedelta(minutes=10)
    for ma in (None, Decimal(9_800), Decimal(10_000)):
        levels = strategy.sell_levels(POSITION, quote(10_000, ma), now)
        assert levels.below is not None
        assert levels.above is not None
        assert levels.below < POSITION.avg_price < levels.above
        for price in (int(levels.below), math.ceil(levels.above)):
            assert strategy.sell_signal(POSITION, quote(price, ma), now) is not None, price
        quiet = range(math.floor(levels.below) + 1, math.ceil(levels.above), 25)
        assert all(strategy.sell_signal(POSITION, quote(p, ma), now) is None for p in quiet)


# ----- parameters ----------------------------------------------------------------------------


def _outside(row: dict[str, Any]) -> list[str]:
    """A value just past each bound of `row` (as the environment would give it)."""
    step = Decimal(1) if row["type"] == "int" else Decimal("0.001")
    out = []
    for key, bound in row["bounds"].items():
        value = Decimal(str(bound))
        out.append(str({"ge": value - step, "le": value + step}.get(key, value)))  # gt, lt
    return out


def test_each_parameter_outside_its_range_is_refused_naming_it(spec: str) -> None:
    params_cls = load(spec).Params
    checked = 0
    for row in describe(params_cls):
        for bad in [*_outside(row), "not-a-number"] if row["bounds"] else []:
            with pytest.raises(ParamError) as err:
                load(spec, environ={row["env"]: bad})
            message = str(err.value)
            assert message.startswith(f"{row['env']}: "), message
            assert "\n" not in message
            checked += 1
    assert checked >= 6


def test_parameters_from_toml_then_the_environment(spec: str, tmp_path: Path) -> None:
    strategy = load(spec)
    row = next(r for r in describe(strategy.Params) if r["type"] == "int" and r["bounds"])
    lo = row["bounds"].get("ge", 1)
    file = tmp_path / "params.toml"
    file.write_text(f"{row['name']} = {lo + 1}\n")
    assert getattr(load(spec, toml=file).params, row["name"]) == lo + 1
    both = load(spec, toml=file, environ={row["env"]: str(lo + 2)})
    assert getattr(both.params, row["name"]) == lo + 2  # the environment wins
    file.write_text("no_such_parameter = 1\n")
    with pytest.raises(ParamError, match=r"^STRATEGY_PARAMS .*params.toml: no_such_parameter: "):
        load(spec, toml=file)
    file.write_text(f"{row['name']} = {lo - 1}\n")
    with pytest.raises(ParamError, match=rf"^STRATEGY_PARAMS .*: {row['name']}: "):
        load(spec, toml=file)
    with pytest.raises(ParamError, match=r"^STRATEGY_PARAMS: cannot read "):
        load(spec, toml=tmp_path / "missing.toml")


def test_a_misspelt_strategy_variable_is_refused(spec: str) -> None:
    with pytest.raises(ParamError, match=r"^STRATEGY_NO_SUCH_THING: not a parameter of "):
        load(spec, environ={"STRATEGY_NO_SUCH_THING": "1"})


def test_with_params_is_a_validated_copy(spec: str) -> None:
    strategy = load(spec)
    row = next(r for r in describe(strategy.Params) if r["type"] == "int" and r["bounds"])
    lo = row["bounds"].get("ge", 1)
    changed = strategy.with_params(**{row["name"]: str(lo + 1)})  # strings parse as from env
    assert type(changed) is type(strategy)
    assert getattr(changed.params, row["name"]) == lo + 1
    assert strategy.params == strategy.Params()  # the original is a value: unchanged
    with pytest.raises(ParamError, match=rf"^{row['env']}: "):
        strategy.with_params(**{row["name"]: lo - 1})


# ----- bad specs: exit 2, one line -----------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ("no_such_package.module:Thing", "cannot import 'no_such_package.module'"),
        ("examples.mean_reversion:NoSuchClass", "has no 'NoSuchClass'"),
        ("strategy.scan:ScanParams", "is not a strategy"),
        ("not a spec", "must be package.module:Class"),
    ],
)
def test_a_bad_spec_is_refused_naming_the_setting(bad: str, says: str) -> None:
    with pytest.raises(ParamError) as err:
        load(bad)
    assert str(err.value).startswith("STRATEGY: ")
    assert says in str(err.value)
    with pytest.raises(ParamError, match=r"^--strategy: "):
        load(bad, setting="--strategy")


def test_the_command_line_exits_2_on_a_bad_strategy() -> None:
    env = {"PATH": "/usr/bin:/bin", "STRATEGY": "no_such_package.module:Thing"}
    out = subprocess.run([sys.executable, "-m", "worker", "locks"], capture_output=True,
                         text=True, env=env, cwd=ROOT, timeout=60, check=False)  # fmt: skip
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "STRATEGY: cannot import 'no_such_package.module'" in lines[0]


# ----- through the settings: STRATEGY, STRATEGY_PARAMS and the historical names -----------------


def test_the_shipped_parameters_are_the_settings_of_the_same_names() -> None:
    from worker.settings import Settings

    params = load().Params
    for name, info in params.model_fields.items():
        setting = Settings.model_fields[name]
        assert setting.default == info.default, name
        assert describe_bounds(setting.metadata) == describe_bounds(info.metadata), name


def describe_bounds(metadata: list[Any]) -> dict[str, Any]:
    return {k: getattr(m, k) for m in metadata for k in ("gt", "ge", "lt", "le") if hasattr(m, k)}


def test_settings_build_the_strategy_they_name(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from worker.app import replace_id, trading_config
    from worker.settings import ConfigError, load_settings, strategy_of

    for name in ("STRATEGY", "STRATEGY_PARAMS", "STOP_LOSS_PCT", "TAKE_PROFIT_PCT"):
        monkeypatch.delenv(name, raising=False)
    file = tmp_path / "p.toml"
    file.write_text("stop_loss_pct = 2.5\ntake_profit_pct = 4\n")
    monkeypatch.setenv("STRATEGY_PARAMS", str(file))
    monkeypatch.setenv("TAKE_PROFIT_PCT", "5")
    s = load_settings()
    got = strategy_of(s).params
    assert (got.stop_loss_pct, got.take_profit_pct) == (Decimal("2.5"), Decimal(5))
    # a copy per worker keeps what was given explicitly, so the file still applies
    assert strategy_of(replace_id(s, 1)).params == strategy_of(s).params
    # an override (tests, tools) is an explicit setting too
    assert strategy_of(load_settings(stop_loss_pct=40)).params.stop_loss_pct == 40
    assert trading_config(s).strategy.params == strategy_of(s).params

    monkeypatch.setenv("STRATEGY", EXAMPLE_SPEC)
    with pytest.raises(ConfigError, match=r"^STRATEGY_PARAMS .*p.toml: take_profit_pct: not a "):
        load_settings()  # the file is the shipped strategy's, not the example's
    file.write_text("entry_z = 3\n")
    monkeypatch.setenv("STRATEGY_LOOKBACK_BARS", "30")
    example = strategy_of(load_settings())
    assert type(example).__name__ == "MeanReversion"
    assert (example.params.entry_z, example.params.lookback_bars) == (3, 30)
    monkeypatch.setenv("STRATEGY_LOOKBACK_BARS", "100")
    monkeypatch.setenv("N_BARS", "60")
    with pytest.raises(ConfigError, match=r"^N_BARS: the strategy reads 100 bars"):
        load_settings()
    with pytest.raises(ConfigError, match=r"^--strategy: cannot import"):
        strategy_of(s, "nowhere.to_be:Found", setting="--strategy")
