"""`python -m worker tune`: the search space comes from the parameter model's bounds, the
walk-forward split keeps in-sample days before out-of-sample ones, a seeded tune is
reproducible and its environment lines load back through the strategy loader, bad arguments
exit 2 with one line before anything runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

from market.calendar import default_calendar
from market.replay_file import write_replay_csv
from market.sim import SimulatedMarket
from strategy.loading import describe, load, strategy_class
from strategy.momentum import MomentumParams
from worker.settings import ConfigError, load_settings
from worker.tune import SPREAD, parse_params, search_space, split_days, tune

ROOT = Path(__file__).resolve().parents[1]
DAYS = (date(2026, 3, 9), date(2026, 3, 10))


@pytest.fixture(scope="module")
def bar_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two session days of 8 simulated symbols, one CSV each."""
    folder = tmp_path_factory.mktemp("tune-bars")
    for day in DAYS:
        session = default_calendar().session(day)
        assert session is not None
        market = SimulatedMarket(7, session, 40)
        write_replay_csv(market, folder / f"{day}.csv", market.symbols[:8])
    return folder


def test_the_search_space_comes_from_the_models_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT))  # the example strategy, as `python -m worker` finds it
    example = strategy_class("examples.mean_reversion:MeanReversion").Params
    for params_cls in (MomentumParams, example):
        rows = {r["name"]: r for r in describe(params_cls)}
        space = search_space(params_cls)
        numeric = {n for n, r in rows.items() if r["type"] in ("int", "float", "Decimal")}
        assert {d.name for d in space} == numeric
        for d in space:
            row = rows[d.name]
            assert d.env == row["env"]
            assert d.kind == row["type"]
            bounds, default = row["bounds"], float(row["default"])
            assert d.low >= float(bounds.get("ge", bounds.get("gt", -1e30)))
            assert d.high <= float(bounds.get("le", bounds.get("lt", 1e30)))
            assert "gt" not in bounds or d.low > float(bounds["gt"])
            assert "lt" not in bounds or d.high < float(bounds["lt"])
            assert d.low <= default <= d.high
            assert d.high <= default * SPREAD
    # restricted by name (field or environment name, any case), with a range of the user's
    space = search_space(MomentumParams, parse_params("stop_loss_pct=0.5:4,TAKE_PROFIT_PCT"))
    assert [(d.env, d.low, d.high) for d in space] == [
        ("STOP_LOSS_PCT", 0.5, 4.0),
        ("TAKE_PROFIT_PCT", 0.75, 12.0),
    ]
    # a range outside the model's bounds, an unknown or a non-numeric name: refused
    for text, match in (
        ("STOP_LOSS_PCT=0:80", "STOP_LOSS_PCT: 0:80 is outside its bounds"),
        ("NO_SUCH", "NO_SUCH is not a parameter"),
        ("EXCLUDE_SYMBOLS", "not a numeric parameter"),
    ):
        with pytest.raises(ConfigError, match=match):
            search_space(MomentumParams, parse_params(text))


def test_in_sample_days_precede_out_of_sample_days_without_overlap() -> None:
    days = [date(2026, 3, d) for d in (13, 9, 11, 10, 12, 16)]  # any order in
    for split in (None, "0.5", "0.2", "0.9", "2026-03-12"):
        s = split_days(days, split)
        assert s.in_sample
        assert s.out_of_sample
        assert not set(s.in_sample) & set(s.out_of_sample)
        assert sorted([*s.in_sample, *s.out_of_sample]) == sorted(days)
        assert list(s.in_sample) == sorted(s.in_sample)
        assert list(s.out_of_sample) == sorted(s.out_of_sample)
        assert max(s.in_sample) < min(s.out_of_sample)
    assert len(split_days(days, None).in_sample) == 4  # the first ~2/3
    assert split_days(days, "2026-03-12").out_of_sample[0] == date(2026, 3, 12)
    with pytest.raises(ConfigError, match="at least 2"):
        split_days(days[:1], None)
    with pytest.raises(ConfigError, match="--split"):
        split_days(days, "2026-03-09")  # nothing before it: no in-sample day
    with pytest.raises(ConfigError, match="--split"):
        split_days(days, "1.5")


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", "tune", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
        env=env or {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")},
    )  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--trials", "0"), "--trials: must be >= 1"),
        (("--trials", "2", "--from", "2026-03-10", "--to", "2026-03-09"), "--from: 2026-03-10"),
        (("--trials", "2", "--from", "2026-03-10", "--to", "2026-03-10"), "at least 2"),
        (("--trials", "2", "--params", "STOP_LOSS_PCT,NOPE"), "--params: NOPE is not"),
        (("--trials", "2", "--split", "2026-03-09"), "--split"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    bar_folder: Path,
    extra: tuple[str, ...],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from worker.cli import main

    for name in ("DATABASE_URL", "REDIS_URL"):  # refused before any server is needed
        monkeypatch.delenv(name, raising=False)
    assert main(["tune", "--data", str(bar_folder), *extra]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert message in err


@pytest.mark.slow
def test_a_seeded_tune_is_reproducible_and_its_env_lines_load(
    bar_folder: Path, pg_server_url: str, redis_url: str
) -> None:
    settings = load_settings(database_url=pg_server_url, redis_url=redis_url)
    space = {"STOP_LOSS_PCT": None, "TAKE_PROFIT_PCT": None, "MAX_HOLD_MIN": None}
    first = tune(bar_folder, None, None, 2, settings=settings, workers=1, params=space, seed=3,
                 min_trades=0, progress=lambda _line: None)  # fmt: skip
    assert first.split.in_sample == DAYS[:1]
    assert first.split.out_of_sample == DAYS[1:]
    assert len(first.trials) == 2
    assert first.best is not None
    assert first.in_sample is not None
    assert first.out_of_sample is not None

    # the same data, seed and space through the command line: the same trials, the same best
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PAPER_", "FLEET_"))},
        "DATABASE_URL": pg_server_url, "REDIS_URL": redis_url, "LOG_LEVEL": "WARNING",
    }  # fmt: skip
    done = _cli("--data", str(bar_folder), "--trials", "2", "--workers", "1", "--seed", "3",
                "--min-trades", "0", "--params", ",".join(space), "--json", env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    again = json.loads(done.stdout)
    assert again == json.loads(json.dumps(first.as_dict()))
    assert sum(line.startswith("trial ") for line in done.stderr.splitlines()) == 2

    # the best parameters as environment lines: the strategy loader takes them as they are
    lines = first.env_lines()
    assert [line.split("=")[0] for line in lines] == list(space)
    environ = dict(line.split("=", 1) for line in lines)
    strategy = load(None, environ=environ)
    for name, value in first.best.params.items():
        assert getattr(strategy.params, name) == value
        assert isinstance(value, int | Decimal)
    ok = subprocess.run(
        [sys.executable, "-c", "from worker.settings import load_settings; load_settings()"],
        cwd=ROOT, env={**env, **environ}, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
