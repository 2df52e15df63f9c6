"""`python -m worker` with no servers configured: the embedded default, as a new user runs it."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import psutil
import pytest

pytestmark = pytest.mark.slow  # processes or a whole simulated day


def _embedded_servers() -> list[str]:
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if "tradefleet-pg" in cmd or "valkey-server" in (proc.info["name"] or ""):
            found.append(cmd)
    return found


def test_embedded_default_trades_a_day_and_leaves_nothing_running() -> None:
    before = _embedded_servers()
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env.update({"EMBEDDED_SPEED": "3000", "EMBEDDED_WORKERS": "2", "LOG_LEVEL": "WARNING"})
    result = subprocess.run(
        [sys.executable, "-m", "worker"],
        env=env, capture_output=True, text=True, timeout=100, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "tradefleet simulated day" in out
    assert "(09:00-15:30 KST)" in out or "(10:00-16:30 KST)" in out
    for column in ("trades", "win rate", "PnL (won)", "avg PnL", "max loss"):
        assert column in out
    assert "TOTAL" in out
    worker_rows = [line for line in out.splitlines() if re.match(r"^\S+-w\d+\s", line)]
    assert len(worker_rows) == 2
    assert _embedded_servers() == before, "an embedded server was left running"
