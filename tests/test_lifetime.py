"""`python -m worker run` as Kubernetes meets it: /livez from its first seconds while it waits for
a session, /readyz not ready with the reason, and the schema gate (behind, ahead, waiting).

Outside a session, deterministically: a simulated session (PAPER_SPEED=60, PAPER_DAY) whose
open is an hour of wall time away (PAPER_EPOCH in the future), with WAIT_FOR_SESSION=1.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from support import eventually, free_port, sql

from ledger.migrate import head_revision, upgrade_head

DAY = "2026-11-24"


def _env(database_url: str, redis_url: str, prefix: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "FLEET_PREFIX": prefix,
        "WORKER_ID": "life-1",
        "PAPER_SPEED": "60",
        "PAPER_DAY": DAY,
        "PAPER_EPOCH": str(time.time() + 3600),  # the open is an hour of wall time away
        "WAIT_FOR_SESSION": "1",
        "CONNECT_ATTEMPTS": "2",
        "LOG_LEVEL": "INFO",
        **extra,
    }


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def _start(processes: list[subprocess.Popen[str]], env: dict[str, str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", "run"], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    processes.append(proc)
    return proc


def _get(port: int, path: str) -> httpx.Response | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=1.0)
    except httpx.TransportError:
        return None


def _stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=20)
    return proc.returncode, err


def _readyz_in_phase(port: int, phase: str) -> dict[str, Any] | None:
    response = _get(port, "/readyz")
    if response is None:
        return None
    body: dict[str, Any] = response.json()
    if body["phase"] != phase or body["redis"]["up"] is None:
        return None
    assert response.status_code == 503, body
    return body


def test_waiting_for_a_session_is_alive_and_not_ready(
    database_url: str, redis_url: str, prefix: str, processes: list[subprocess.Popen[str]]
) -> None:
    port = free_port()
    started = time.monotonic()
    proc = _start(processes, _env(database_url, redis_url, prefix, HEALTH_PORT=str(port)))

    def live() -> httpx.Response | None:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        response = _get(port, "/livez")
        return response if response is not None and response.status_code == 200 else None

    response = eventually(live, timeout=10, every=0.02)
    assert time.monotonic() - started < 2.0, "/livez did not answer 200 within 2 s of the start"
    assert response.json()["status"] == "ok"

    body = eventually(lambda: _readyz_in_phase(port, "waiting_for_session"), timeout=15)
    assert body["status"] == "not_ready"
    assert body["reason"].startswith(f"waiting for the session of {DAY} (opens {DAY} 09:00 KST")
    assert body["redis"] == {"up": True, "error": None}
    assert body["postgres"] == {"up": True, "error": None}
    assert body["schema"] == {"database": head_revision(), "head": head_revision(),
                              "state": "current"}  # fmt: skip
    assert body["session"]["day"] == DAY
    assert body["session"]["clock_speed"] == 60

    healthz = _get(port, "/healthz")
    assert healthz is not None
    assert healthz.status_code == 200
    assert healthz.json()["phase"] == "waiting_for_session"
    metrics = _get(port, "/metrics")
    assert metrics is not None
    assert "tradefleet_redis_up 1.0" in metrics.text
    assert "tradefleet_ready 0.0" in metrics.text
    assert "_created" not in metrics.text

    code, err = _stop(proc)
    assert code == 0, err[-2000:]
    assert "Traceback" not in err


def test_schema_behind_refuses_to_run(
    empty_database_url: str, redis_url: str, prefix: str, processes: list[subprocess.Popen[str]]
) -> None:
    proc = _start(processes, _env(empty_database_url, redis_url, prefix))
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1, err[-2000:]
    line = f"database schema base is behind {head_revision()}: run 'python -m worker migrate'"
    assert [e for e in err.splitlines() if "error:" in e] == [f"python -m worker: error: {line}"]
    assert "Traceback" not in err


def test_schema_at_an_older_revision_is_behind(
    empty_database_url: str, redis_url: str, prefix: str, processes: list[subprocess.Popen[str]]
) -> None:
    upgrade_head(empty_database_url)
    sql(empty_database_url, "UPDATE alembic_version SET version_num = '0001'")
    proc = _start(processes, _env(empty_database_url, redis_url, prefix))
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1, err[-2000:]
    assert f"database schema 0001 is behind {head_revision()}" in err


@pytest.mark.parametrize("wait", ["0", "1"])
def test_schema_ahead_is_refused_even_when_waiting(
    empty_database_url: str,
    redis_url: str,
    prefix: str,
    processes: list[subprocess.Popen[str]],
    wait: str,
) -> None:
    upgrade_head(empty_database_url)
    sql(empty_database_url, "UPDATE alembic_version SET version_num = '9999_from_the_future'")
    env = _env(empty_database_url, redis_url, prefix, WAIT_FOR_SCHEMA=wait)
    proc = _start(processes, env)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1, err[-2000:]
    assert f"database schema 9999_from_the_future is ahead of {head_revision()}" in err


def test_wait_for_schema_is_not_ready_until_migrated(
    empty_database_url: str, redis_url: str, prefix: str, processes: list[subprocess.Popen[str]]
) -> None:
    port = free_port()
    env = _env(empty_database_url, redis_url, prefix, WAIT_FOR_SCHEMA="1", HEALTH_PORT=str(port))
    proc = _start(processes, env)
    body = eventually(lambda: _readyz_in_phase(port, "waiting_for_schema"), timeout=15)
    head = head_revision()
    assert body["reason"] == (
        f"database schema base is behind {head}: run 'python -m worker migrate'; "
        "waiting for a current schema (WAIT_FOR_SCHEMA=1)"
    )
    assert body["schema"] == {"database": None, "head": head, "state": "behind"}
    live = _get(port, "/livez")
    assert live is not None
    assert live.status_code == 200

    upgrade_head(empty_database_url)  # what the migrate Job does
    body = eventually(lambda: _readyz_in_phase(port, "waiting_for_session"), timeout=15)
    assert body["schema"]["state"] == "current"
    code, err = _stop(proc)
    assert code == 0, err[-2000:]


def test_schema_status_classifies_the_database(empty_database_url: str) -> None:
    from ledger.migrate import schema_status

    head = head_revision()
    assert schema_status(empty_database_url).state == "behind"
    upgrade_head(empty_database_url)
    assert schema_status(empty_database_url).current
    sql(empty_database_url, "UPDATE alembic_version SET version_num = '0001'")
    assert schema_status(empty_database_url).problem == (
        f"database schema 0001 is behind {head}: run 'python -m worker migrate'"
    )
    sql(empty_database_url, "UPDATE alembic_version SET version_num = 'f00d'")
    assert schema_status(empty_database_url).state == "ahead"


@pytest.mark.anyio
async def test_check_schema_for_the_inspection_commands(
    database_url: str, empty_database_url: str
) -> None:
    from ledger.db import create_engine
    from worker.schema import SchemaNotCurrent, check_schema

    current = create_engine(database_url)
    unmigrated = create_engine(empty_database_url)
    try:
        assert (await check_schema(current)).current
        with pytest.raises(SchemaNotCurrent, match="database schema base is behind"):
            await check_schema(unmigrated)
    finally:
        await current.dispose()
        await unmigrated.dispose()
