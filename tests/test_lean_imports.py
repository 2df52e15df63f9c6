"""A `run` worker loads only what it uses: no pandas or exchange-calendars (the calendar is a
compiled table), no alembic (the schema gate parses the migrations' revisions), no HTTP client
or server, KIS adapter, exchange or test library on the paper broker. Each is megabytes of
resident memory per worker (bench/footprint.py measures it)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from sqlalchemy import create_engine, pool
from support import eventually, free_port

from ledger.db import normalize_url
from ledger.migrate import _known_revisions, head_revision, schema_status_on

#: Packages a paper `run` worker never needs.
HEAVY = (
    "pandas",
    "exchange_calendars",
    "aiohttp",
    "httpx",
    "hypothesis",
    "fakeredis",
    "pytest",
    "broker.kis",
    "exchange",
    "alembic",  # the schema gate reads the revisions without it (ledger.migrate)
    "plotly",  # the workbench (report, tune, backtest): its commands import it
    "optuna",
    "pyarrow",
    "market.bars",  # a backtest's bar files and their broker
    "broker.backtest",
)

#: The simulated market, only on the in-process paper venue (worker.app imports it there).
SIMULATOR = ("market.sim", "market.paths", "broker.paper", "numpy.random")


def _heavy(modules: list[str]) -> list[str]:
    return sorted(m for m in modules if m in HEAVY)


def test_the_command_line_imports_nothing_heavy() -> None:
    code = "import sys, worker.cli, worker.commands, worker.app; print(*sorted(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)  # fmt: skip
    assert _heavy(out.stdout.split()) == []


def test_the_kis_worker_side_holds_no_websocket_client() -> None:
    """A BROKER=kis worker talks HTTP to the gateway and reads what it publishes; the WebSocket
    client and the notice decryption (aiohttp, cryptography) are the gateway's."""
    code = (
        "import sys, worker.app\n"
        "from broker.kis import KisBroker, KisClient, KisConfig\n"
        "import broker.kis.client, broker.kis.feed, broker.kis.market\n"
        "print(*sorted(sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)  # fmt: skip
    loaded = out.stdout.split()
    assert "broker.kis.feed" in loaded
    assert [m for m in ("aiohttp", "cryptography.hazmat.primitives.ciphers") if m in loaded] == []
    assert _heavy(loaded) == ["broker.kis", "httpx"]  # HTTP to the gateway
    # nor the simulated market: its day's arrays and numpy.random are the paper venue's
    assert [m for m in SIMULATOR if m in loaded] == []


# Runs `python -m worker run` and writes every module it loaded, at its exit, to argv[1].
_DRIVER = """
import atexit, runpy, sys
out = sys.argv[1]
atexit.register(lambda: open(out, "w").write("\\n".join(sorted(sys.modules))))
sys.argv = ["worker", "run"]
runpy.run_module("worker", run_name="__main__")
"""


def _scans(port: int) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
            text = reply.read().decode()
    except (urllib.error.URLError, OSError):
        return 0.0
    found = re.findall(r"^\w*scan_duration_seconds_count(?:\{[^}]*\})?\s+(\S+)", text, re.M)
    return sum(float(n) for n in found)


@pytest.mark.slow
def test_a_paper_worker_loads_nothing_heavy(
    database_url: str, redis_url: str, prefix: str, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "FLEET_PREFIX": prefix,
        "HEALTH_PORT": str(port),
        "PAPER_DAY": "2026-03-10",
        "PAPER_SPEED": "10",
        "PAPER_EPOCH": str(time.time()),  # the session opens now: it scans at once
    }
    out = tmp_path / "modules.txt"
    proc = subprocess.Popen([sys.executable, "-c", _DRIVER, str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:

        def scanned() -> bool:
            assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
            return _scans(port) >= 1

        eventually(scanned, timeout=60)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    loaded = out.read_text().split()
    assert "numpy" in loaded  # the scan ran
    assert _heavy(loaded) == []


def test_the_schema_gate_reads_the_revisions_alembic_reads(
    database_url: str, empty_database_url: str
) -> None:
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from ledger.migrate import _script_location

    cfg = Config()
    cfg.set_main_option("script_location", _script_location())
    scripts = ScriptDirectory.from_config(cfg)
    assert head_revision() == scripts.get_current_head()
    assert _known_revisions() == {s.revision for s in scripts.walk_revisions()}
    for url, expected in ((database_url, "current"), (empty_database_url, "behind")):
        engine = create_engine(normalize_url(url), poolclass=pool.NullPool)
        try:
            with engine.connect() as conn:
                status = schema_status_on(conn)
                assert status.database == MigrationContext.configure(conn).get_current_revision()
                assert status.state == expected
        finally:
            engine.dispose()
