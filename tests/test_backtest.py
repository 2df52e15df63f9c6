"""`python -m worker backtest` end to end: the fleet over a bar file on virtual time, against real
Postgres and Redis. The same data twice gives byte-identical figures; the ledger it writes
reconciles (summary = trades = fills) to the won; bad data exits 2 with one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
from support import sql

from market.calendar import default_calendar
from market.replay_file import write_replay_csv
from market.sim import SimulatedMarket
from worker.backtest import BacktestResult, run_backtest
from worker.settings import load_settings

DAY = date(2026, 3, 10)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bar_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    session = default_calendar().session(DAY)
    assert session is not None
    path = tmp_path_factory.mktemp("bars") / "day.csv"
    write_replay_csv(SimulatedMarket(3, session, 12), path)
    return path


@pytest.fixture
def dropped(pg_server_url: str) -> Iterator[list[str]]:
    """Databases a backtest created on the test server, dropped afterwards."""
    urls: list[str] = []
    yield urls
    for url in urls:
        name = url.rsplit("/", 1)[1].split("?")[0]
        sql(pg_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _env(pg_server_url: str, redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PAPER_", "FLEET_"))}
    return {**env, "DATABASE_URL": pg_server_url, "REDIS_URL": redis_url, "LOG_LEVEL": "WARNING"}


@pytest.mark.slow
def test_backtest_is_deterministic_and_its_ledger_reconciles(
    bar_file: Path, pg_server_url: str, redis_url: str, dropped: list[str]
) -> None:
    settings = load_settings(database_url=pg_server_url, redis_url=redis_url)
    first = run_backtest(bar_file, workers=2, settings=settings)
    assert isinstance(first, BacktestResult)
    assert first.database_url is not None
    dropped.append(first.database_url)
    (day,) = first.days
    assert day.day == DAY
    assert first.total.trades > 0, "the sample day should trade"
    # reconciled from the ledger itself: summary = trades = fills, to the won
    url = first.database_url
    ((summary,),) = sql(url, "SELECT pnl FROM daily_summaries WHERE date = %s", DAY)
    ((trades,),) = sql(url, "SELECT sum(pnl) FROM trades WHERE trading_day = %s", DAY)
    ((fills,),) = sql(
        url,
        "SELECT sum(CASE WHEN side = 'SELL' THEN amount ELSE -amount END - fee - tax)"
        " FROM fills WHERE trading_day = %s",
        DAY,
    )
    assert summary == trades == fills == day.figures.pnl
    assert first.reconciled
    ((open_positions,),) = sql(url, "SELECT count(*) FROM positions WHERE qty <> 0")
    assert open_positions == 0

    # the same data again, through the command line: the same JSON, and nothing else on stdout
    done = subprocess.run(
        [sys.executable, "-m", "worker", "backtest", "--data", str(bar_file), "--workers", "2",
         "--json"],
        cwd=ROOT, env=_env(pg_server_url, redis_url), capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip
    name = next(line.split()[-1] for line in done.stderr.splitlines() if "backtest ledger" in line)
    dropped.append(f"{pg_server_url.rsplit('/', 1)[0]}/{name}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == json.dumps(first.as_dict()) + "\n"


def test_bad_data_exits_2_with_one_line(tmp_path: Path, bar_file: Path) -> None:
    lines = bar_file.read_text(encoding="utf-8").splitlines()
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join([lines[0], lines[2], lines[1], *lines[3:10]]) + "\n", "utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "worker", "backtest", "--data", str(bad)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        env={k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")},
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith(f"python -m worker backtest: bad data: {bad}:3: unsorted minutes")
    assert done.stderr.count("\n") == 1


def test_bad_arguments_and_parameters_are_refused_before_anything_runs(bar_file: Path) -> None:
    from worker.settings import ConfigError

    settings = load_settings()
    with pytest.raises(ConfigError, match="--workers"):
        run_backtest(bar_file, workers=0, settings=settings)
    with pytest.raises(ConfigError, match="--from"):
        run_backtest(bar_file, date(2026, 3, 11), date(2026, 3, 10), settings=settings)
    with pytest.raises(ConfigError, match="STOP_LOSS_PCT"):
        run_backtest(bar_file, settings=settings, params={"stop_loss_pct": "-3"})
    with pytest.raises(ConfigError, match="--strategy"):
        run_backtest(bar_file, settings=settings, strategy_spec="no.such.module:Nothing")


def test_a_backtest_day_holds_on_whole_bars_and_reconciles_the_account_less_often(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from worker.backtest import BAR_S, RECONCILE_S, backtest_settings

    for name in ("HOLD_INTERVAL_S", "VOL_SURGE_HOLD_S", "RECONCILE_INTERVAL_S"):
        monkeypatch.delenv(name, raising=False)
    day = backtest_settings(load_settings(), DAY, "bt-x")
    # between two bars a HOLD step would see the last quote again
    assert (day.hold_interval_s, day.vol_surge_hold_s) == (BAR_S, BAR_S)
    assert day.reconcile_interval_s == RECONCILE_S
    assert (day.paper_day, day.fleet_prefix, day.broker) == (DAY, "bt-x", "paper")

    monkeypatch.setenv("HOLD_INTERVAL_S", "90")  # longer than a bar: kept
    monkeypatch.setenv("RECONCILE_INTERVAL_S", "120")  # given: kept
    day = backtest_settings(load_settings(), DAY, "bt-x")
    assert (day.hold_interval_s, day.vol_surge_hold_s) == (90.0, BAR_S)
    assert day.reconcile_interval_s == 120.0
