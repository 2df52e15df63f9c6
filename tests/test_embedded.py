"""`python -m worker` with no servers configured: the demo, as a new user runs it, on real
embedded servers. Two demos at once on their own folders; the data kept and read back with
`--demo summary`; the next run trades the next session; `--fresh` starts over."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import psutil  # type: ignore[import-untyped]
import pytest

pytestmark = pytest.mark.slow  # processes and whole simulated days

REPO = Path(__file__).resolve().parent.parent
ENV = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
ENV.update({"EMBEDDED_SPEED": "5000", "EMBEDDED_WORKERS": "2", "LOG_LEVEL": "INFO"})
DAY = re.compile(r"^tradefleet simulated day (\d{4}-\d{2}-\d{2}) \((09|10):00-(15|16):30 KST\)",
                 re.MULTILINE)  # fmt: skip


def _servers_on(*folders: Path) -> list[str]:
    """Running servers whose data directory (postgres -D, valkey's cwd) is in `folders`."""
    found = []
    roots = [str(f) for f in folders]
    for proc in psutil.process_iter(["name", "cmdline"]):
        try:
            where = " ".join(proc.info["cmdline"] or [])
            if (proc.info["name"] or "").startswith("valkey-server"):
                where = proc.cwd()
        except psutil.Error:
            continue
        if any(root in where for root in roots):
            found.append(where)
    return found


def _demo(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "worker", *args],
        env=ENV, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


@dataclass
class Run:
    code: int
    out: str
    err: str

    @property
    def day(self) -> date:
        found = DAY.search(self.out)
        assert found, self.out
        return date.fromisoformat(found.group(1))

    def total(self) -> str:
        return next(line for line in self.out.splitlines() if line.startswith("TOTAL"))


def _finish(proc: subprocess.Popen[str]) -> Run:
    # the demo writes a few KB in all (its logs go to a file): no pipe fills while it runs
    code = proc.wait(timeout=180)
    assert proc.stdout is not None
    assert proc.stderr is not None
    with proc.stdout, proc.stderr:
        return Run(code, proc.stdout.read(), proc.stderr.read())


def _run(*args: str) -> Run:
    return _finish(_demo(*args))


def _check_demo(run: Run, folder: Path) -> None:
    assert run.code == 0, run.err[-3000:]
    for column in ("trades", "win rate", "PnL (won)", "fees", "taxes", "avg PnL", "max loss"):
        assert column in run.out
    assert len([line for line in run.out.splitlines() if re.match(r"^\S+-w\d+\s", line)]) == 2
    assert "PnL is after fees and taxes" in run.out
    # not a terminal: plain lines, no control codes, a few progress lines
    assert "\x1b" not in run.out + run.err
    assert "\r" not in run.out + run.err
    assert len(run.err.splitlines()) < 15, run.err
    assert not re.search(r"^\d\d:\d\d:\d\d\.\d{3} ", run.err, re.MULTILINE), "a log line on stderr"
    assert "KST  100%" in run.err
    log = Path(re.search(r"^  log   (\S+)$", run.out, re.MULTILINE).group(1))  # type: ignore[union-attr]
    assert log.parent.parent == folder
    assert "session " in log.read_text()  # the fleet's log lines went there
    assert f"--demo --dir {folder} summary --date {run.day}" in run.out


@pytest.fixture(scope="module")
def two_folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Run]:
    """Demo A and, started while A trades, demo B, each on its own folder; yields A's run."""
    base = tmp_path_factory.mktemp("demo")
    a, b = base / "a", base / "b"
    first = _demo("--dir", str(a))
    assert first.stdout is not None
    # the overlap, forced: B starts once A's fleet is trading (A's plain display says so)
    for line in first.stderr:  # type: ignore[union-attr]
        if line.startswith("trading "):
            break
    else:
        pytest.fail(f"demo A never started trading: {_finish(first)}")
    assert (a / "owner.pid").read_text().strip() == str(first.pid)
    second = _demo("--dir", str(b))
    run_a, run_b = _finish(first), _finish(second)
    _check_demo(run_a, a)
    _check_demo(run_b, b)
    assert _servers_on(a, b) == [], "a demo left a server running"
    return a, b, run_a


def test_two_demos_at_once_on_their_own_folders_both_trade(
    two_folders: tuple[Path, Path, Run],
) -> None:
    a, b, _ = two_folders
    assert (a / "postgres" / "PG_VERSION").is_file()
    assert (b / "postgres" / "PG_VERSION").is_file()


def test_the_data_stays_and_summary_reads_it_afterwards(
    two_folders: tuple[Path, Path, Run],
) -> None:
    a, _, run_a = two_folders
    summary = _run("--demo", "--dir", str(a), "summary", "--date", str(run_a.day))
    assert summary.code == 0, summary.err
    assert run_a.total() in summary.out  # the same figures, read back from the kept ledger
    assert "(matches the summary)" in summary.out
    assert _servers_on(a) == []


def test_the_next_run_trades_the_next_session_and_fresh_starts_over(
    two_folders: tuple[Path, Path, Run],
) -> None:
    _, b, _ = two_folders
    again = _run("--dir", str(b))
    _check_demo(again, b)
    assert len(list((b / "logs").iterdir())) == 2  # one log file a run
    fresh = _run("--dir", str(b), "--fresh")
    _check_demo(fresh, b)
    assert fresh.day < again.day  # back to the first day
    gone = _run("--demo", "--dir", str(b), "summary", "--date", str(again.day))
    assert gone.code == 0, gone.err
    assert gone.out.strip() == f"no trades recorded for {again.day}"
    assert len(list((b / "logs").iterdir())) == 1
    assert _servers_on(b) == []
