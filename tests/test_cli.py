"""The command line as an operator meets it: real subprocesses, exit codes, one-line errors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from support import free_port

ROOT = Path(__file__).resolve().parent.parent


def _run(args: list[str], env: dict[str, str] | None = None, timeout: float = 60):
    base = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    base.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        capture_output=True,
        text=True,
        env=base,
        timeout=timeout,
        check=False,
    )


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"PAPER_SPEED": "fast"}, "PAPER_SPEED"),
        ({"PAPER_SPEED": "0.5"}, "PAPER_SPEED"),
        ({"BROKER": "ibkr"}, "BROKER"),
        ({"CAPITAL_LIMIT": "-5"}, "CAPITAL_LIMIT"),
        ({"LOCK_TTL_MS": "ten"}, "LOCK_TTL_MS"),
        ({"PAPER_EPOCH": "yesterday-ish"}, "PAPER_EPOCH"),
        ({"SHORT_MA_BARS": "40"}, "SHORT_MA_BARS"),
        ({"BROKER": "kis"}, "KIS_APP_KEY"),
        ({"DATABASE_URL": "nonsense://", "REDIS_URL": "redis://127.0.0.1:1/0"}, "DATABASE_URL"),
        ({"DATABASE_URL": "http://x", "REDIS_URL": "redis://127.0.0.1:1/0"}, "DATABASE_URL"),
        ({"DATABASE_URL": "x", "REDIS_URL": "redis://127.0.0.1:1/0"}, "DATABASE_URL"),
        ({"DATABASE_URL": "postgresql://h/db", "REDIS_URL": "nonsense://"}, "REDIS_URL"),
        ({"PAPER_VENUE": "localhost:9443"}, "PAPER_VENUE"),
    ],
)
def test_bad_configuration_exits_2_with_one_line_naming_the_setting(
    env: dict[str, str], setting: str
) -> None:
    result = _run(["summary"], env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert setting in lines[0]
    assert "Traceback" not in result.stderr


def test_missing_server_for_a_command_exits_2() -> None:
    result = _run(["run"], {"DATABASE_URL": "postgresql+psycopg://x@127.0.0.1:1/x"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "python -m worker: config error: REDIS_URL: required for this command"
    ]


def test_bad_arguments_exit_2_with_one_line() -> None:
    result = _run(["summary", "--date", "25/11/2026"], {"DATABASE_URL": "postgresql://x@h/d"})
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "python -m worker summary: error: argument --date: must be YYYY-MM-DD, got '25/11/2026'"
    ]
    assert result.stderr.count("--date") == 1  # argparse names the flag; the message does not
    watch = _run(["locks", "--watch", "soon"])
    assert watch.returncode == 2
    assert watch.stderr.count("--watch") == 1
    assert len(watch.stderr.strip().splitlines()) == 1
    unknown = _run(["trade-everything"])
    assert unknown.returncode == 2
    assert len(unknown.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("command", [[], ["run"], ["migrate"], ["locks"], ["workers"], ["summary"]])
def test_every_command_has_help(command: list[str]) -> None:
    result = _run([*command, "--help"])
    assert result.returncode == 0
    assert "usage: python -m worker" in result.stdout


def test_version_is_the_package_version() -> None:
    result = _run(["--version"])
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"tradefleet {metadata.version('tradefleet')}\n"
    assert result.stderr == ""


def test_console_script_is_declared_and_installed() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert declared == {"tradefleet": "worker.cli:console"}
    (entry,) = metadata.entry_points(group="console_scripts", name="tradefleet")
    assert entry.value == "worker.cli:console", "reinstall: pip install -e ."
    from worker.cli import console

    assert entry.load() is console


def _script(args: list[str], env: dict[str, str] | None = None):
    script = shutil.which("tradefleet", path=str(Path(sys.executable).parent))
    assert script, "the tradefleet console script is not installed: pip install -e ."
    base = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    base.update(env or {})
    return subprocess.run(
        [script, *args], capture_output=True, text=True, env=base, timeout=60, check=False
    )


def test_console_script_has_the_same_verbs_and_dispatches(database_url: str) -> None:
    script_help = _script(["--help"])
    assert script_help.returncode == 0, script_help.stderr
    module_help = _run(["--help"])
    assert module_help.stdout.replace("python -m worker", "tradefleet") == script_help.stdout
    assert _script(["--version"]).stdout == _run(["--version"]).stdout
    bad = _script(["summary", "--date", "tomorrow"])
    assert bad.returncode == 2
    assert bad.stderr.startswith("tradefleet summary: error: argument --date:")
    summary = _script(["summary", "--date", "2026-01-05"], {"DATABASE_URL": database_url})
    assert summary.returncode == 0, summary.stderr
    assert "no trades recorded for 2026-01-05" in summary.stdout


@pytest.mark.slow
def test_unreachable_postgres_exits_1_naming_the_server() -> None:
    port = free_port()
    result = _run(
        ["run"],
        {
            "DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:{port}/nowhere",
            "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
            "CONNECT_ATTEMPTS": "2",
            "PAPER_SPEED": "100",
        },
    )
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "Postgres" in last
    assert f"127.0.0.1:{port}" in last
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_unreachable_redis_exits_1_naming_the_server(database_url: str) -> None:
    port = free_port()
    result = _run(
        ["run"],
        {
            "DATABASE_URL": database_url,
            "REDIS_URL": f"redis://127.0.0.1:{port}/0",
            "CONNECT_ATTEMPTS": "2",
            "PAPER_SPEED": "100",
        },
    )
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert f"127.0.0.1:{port}" in last
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_migrate_is_idempotent(empty_database_url: str) -> None:
    for _ in range(2):
        result = _run(["migrate"], {"DATABASE_URL": empty_database_url})
        assert result.returncode == 0, result.stderr
    from ledger.migrate import current_revision, head_revision

    assert current_revision(empty_database_url) == head_revision()


def test_summary_of_a_day_without_trades(database_url: str) -> None:
    result = _run(["summary", "--date", "2026-01-05"], {"DATABASE_URL": database_url})
    assert result.returncode == 0, result.stderr
    assert "no trades recorded for 2026-01-05" in result.stdout
