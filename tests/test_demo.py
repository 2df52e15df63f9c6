"""The demo's parts that need no servers: the closing table, the plain progress display, the
folder's single owner, the day it trades, and one line for a task group's errors.
(The demo itself, on real embedded servers: tests/test_embedded.py.)"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from ledger.money import DaySummary
from ledger.records import DaySummaryRecord, SummaryFigures
from market.calendar import default_calendar
from market.clock import ManualClock
from trading.state import WorkerState
from worker.cli import _describe
from worker.embedded import choose_day
from worker.metrics import FleetMetrics
from worker.progress import DemoDisplay
from worker.report import summary_table
from worker.servers import FolderInUse, owned_folder
from worker.settings import ConfigError, Settings

REPO = Path(__file__).resolve().parent.parent


def _figures(pnl: int, trades: int, fees: int, taxes: int) -> SummaryFigures:
    summary = DaySummary(
        pnl=Decimal(pnl),
        win_rate=Decimal("0.5"),
        avg_pnl=Decimal(pnl) / trades,
        max_loss=Decimal(-1000),
        trades_count=trades,
        wins=trades // 2,
    )
    return SummaryFigures(summary=summary, fees=Decimal(fees), taxes=Decimal(taxes))


def test_summary_table_has_fees_and_taxes_per_worker_and_in_total() -> None:
    record = DaySummaryRecord(
        trading_day=date(2026, 12, 1),
        total=_figures(-440_637, 48, 97_811, 696_681),
        computed_at=datetime(2026, 12, 1, 7, 0, tzinfo=UTC),
        by_worker={
            "abc-w1": _figures(-400_000, 30, 60_000, 400_000),
            "abc-w2": _figures(-40_637, 18, 37_811, 296_681),
        },
    )
    lines = summary_table(record).splitlines()
    header = lines[0].split()
    assert header[:2] == ["worker", "trades"]
    assert "fees" in header
    assert "taxes" in header
    rows = {line.split()[0]: line.split() for line in lines if line.startswith(("abc", "TOTAL"))}
    fees, taxes = header.index("fees") - 2, header.index("taxes") - 2  # "win rate", "PnL (won)"
    assert (rows["abc-w1"][fees], rows["abc-w1"][taxes]) == ("60,000", "400,000")
    assert (rows["abc-w2"][fees], rows["abc-w2"][taxes]) == ("37,811", "296,681")
    assert (rows["TOTAL"][fees], rows["TOTAL"][taxes]) == ("97,811", "696,681")
    # net PnL + fees + taxes = the PnL before them
    assert lines[-1].startswith("PnL is after fees and taxes: +353,855 won before them")


def _eventually(condition: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_plain_display_writes_a_few_lines_without_control_codes() -> None:
    session = default_calendar().session(date(2026, 12, 1))
    assert session is not None
    clock = ManualClock(session.open)
    metrics = FleetMetrics()
    w1, w2 = metrics.for_worker("w1"), metrics.for_worker("w2")
    out = io.StringIO()
    with DemoDisplay(out, workers=2, live=False) as display:
        display.phase("starting PostgreSQL and Valkey")
        display.attach(session, clock, metrics)
        w1.state_changed(WorkerState.HOLD)
        w1.position_marked(100, Decimal(10_000), Decimal(10_100))
        w2.trade_closed(Decimal(-12_345))
        w2.trade_closed(Decimal(2_000))
        for hour in range(1, 7):  # 10:00 .. 15:00, each seen before the next
            clock.set(session.open + timedelta(hours=hour, minutes=1))
            _eventually(lambda h=hour: f"{9 + h}:01 KST" in out.getvalue())
        clock.set(session.close + timedelta(minutes=5))
        display.finish()
        display.phase("stopping the servers")
    text = out.getvalue()
    assert "\x1b" not in text
    assert "\r" not in text
    lines = text.splitlines()
    assert lines[0] == "starting PostgreSQL and Valkey ..."
    assert lines[1] == "trading 2026-12-01 (09:00-15:30 KST) with 2 workers"
    assert len(lines) == 2 + 6 + 1 + 1
    assert lines[2] == (
        "10:01 KST   16%  trades 2  realized PnL -10,345 won  open positions 1 of 2"
    )
    assert lines[-2].startswith("15:30 KST  100%  trades 2")  # the close, not past it
    assert lines[-1] == "stopping the servers ..."


def test_a_folder_has_one_owner_and_is_free_again_when_it_leaves(tmp_path: Path) -> None:
    with owned_folder(tmp_path), pytest.raises(FolderInUse) as refused, owned_folder(tmp_path):
        pass
    assert refused.value.pid == os.getpid()
    with owned_folder(tmp_path):
        assert (tmp_path / "owner.pid").read_text() == f"{os.getpid()}\n"


def test_second_demo_on_a_folder_in_use_exits_2_with_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    with owned_folder(tmp_path):  # what a running demo holds
        for argv in (["--dir", str(tmp_path)], ["--demo", "--dir", str(tmp_path), "summary"]):
            result = subprocess.run(
                [sys.executable, "-m", "worker", *argv],
                env=env, cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert result.returncode == 2, result.stderr
            assert result.stdout == ""
            assert result.stderr == (
                f"python -m worker: the demo folder {tmp_path} is in use by pid {os.getpid()}; "
                "use --dir DIR for another demo\n"
            )


def test_demo_day_is_paper_day_then_the_next_session_after_the_folders_last(
    tmp_path: Path,
) -> None:
    plain = Settings(database_url=None, redis_url=None)
    assert choose_day(plain, date(2026, 12, 4), tmp_path, taken=False) == date(2026, 12, 7)
    first = choose_day(plain, None, tmp_path, taken=False)
    assert default_calendar().session(first) is not None
    pinned = Settings(database_url=None, redis_url=None, paper_day=date(2026, 12, 2))
    assert choose_day(pinned, date(2026, 12, 4), tmp_path, taken=False) == date(2026, 12, 2)
    with pytest.raises(ConfigError, match=r"^PAPER_DAY: 2026-12-02 is already in the demo folder"):
        choose_day(pinned, date(2026, 12, 4), tmp_path, taken=True)


def test_task_group_errors_are_one_line() -> None:
    group = ExceptionGroup(
        "unhandled errors in a TaskGroup",
        [ConnectionRefusedError("Redis at 127.0.0.1:6379 refused"), OSError("b"), OSError("c")],
    )
    nested = ExceptionGroup("outer", [group, ValueError("d")])
    assert _describe(nested) == (
        "ConnectionRefusedError: Redis at 127.0.0.1:6379 refused (and 3 more errors)"
    )
    assert _describe(ExceptionGroup("one", [OSError("only")])) == "OSError: only"


def test_only_throwaway_folders_of_dead_processes_are_cleared(tmp_path: Path) -> None:
    from worker.servers import _clear_dead_throwaways

    dead_pid = subprocess.Popen([sys.executable, "-c", ""])
    dead_pid.wait()
    dead, alive, foreign = (tmp_path / f"t-pg-{n}" for n in ("dead", "alive", "foreign"))
    for folder in (dead, alive, foreign):
        (folder / "data").mkdir(parents=True)
    (dead / "owner.pid").write_text(f"{dead_pid.pid}\n")
    (alive / "owner.pid").write_text(f"{os.getpid()}\n")
    _clear_dead_throwaways(tmp_path, "t-pg-")
    assert not dead.exists()
    assert (alive / "data").is_dir()
    assert (foreign / "data").is_dir()
