"""Health and metrics over HTTP for operators and Kubernetes, for the whole life of a process.

    GET /livez    200 while the process is alive and its loops turn, 503 otherwise (reason)
    GET /healthz  the same as /livez (kept for existing probes)
    GET /readyz   200 when it can trade now: Redis and Postgres reachable, the schema at the
                  code's head and a session running with healthy workers; 503 otherwise, with
                  the reason (waiting for a session or for the schema, a server down, ...)
    GET /metrics  the Prometheus text exposition of the process's registry

The answers are JSON (`ProcessHealth.live` / `ProcessHealth.ready` document the bodies).

A deliberately tiny server (anyio TCP listener, one request per connection, only the request
line is parsed, every answer carries Content-Length and `Connection: close`) that runs on the
process's own event loop: a probe that gets an answer knows the loop is turning, which a
server in a thread of its own (prometheus_client's `start_http_server`) could not tell. The
exposition itself is prometheus_client's (`generate_latest`).

Liveness is two facts: the server probe (`worker.probe`), which runs every couple of seconds
for the whole life of the process, made progress recently; and, during a session, every
worker's main loop made progress recently. "Recently" for a worker is `stall_after_s`: three
times the longest pause or order wait of one loop step, in wall seconds, and at least 5 s. A
worker still waiting for the open has not ticked yet and counts as alive; one in EXIT does not.

This module stays light (no SQLAlchemy, no Redis client), so `run` answers /livez within its
first second, before the heavy imports of the trading code.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import orjson
from anyio.abc import SocketAttribute, SocketStream, TaskStatus
from loguru import logger
from prometheus_client import CONTENT_TYPE_LATEST

from trading.state import WorkerState

if TYPE_CHECKING:
    from ledger.migrate import SchemaStatus
    from market.calendar import Session
    from worker.settings import Settings

#: wall seconds between two passes of the server probe (`worker.probe`)
PROBE_INTERVAL_S = 2.0
#: wall seconds one server may take to answer one probe
PROBE_TIMEOUT_S = 2.0

_MIN_STALL_S = 5.0
_READ_TIMEOUT_S = 5.0
_MAX_HEAD = 8_192
_JSON = "application/json"
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}


class Watched(Protocol):
    """What the health check reads of a worker (`trading.loop.Worker` has these)."""

    @property
    def id(self) -> str: ...

    @property
    def state(self) -> WorkerState: ...

    @property
    def last_tick_at(self) -> float | None:
        """`time.monotonic()` when the main loop last began a step; None before the first."""


class Verdicts(Protocol):
    """What `HealthServer` asks: (ok, JSON-ready body) for /livez and for /readyz."""

    def live(self) -> tuple[bool, dict[str, Any]]: ...

    def ready(self) -> tuple[bool, dict[str, Any]]: ...


class Exposition(Protocol):
    def exposition(self) -> bytes: ...


def probe_stall_s(
    interval_s: float = PROBE_INTERVAL_S, timeout_s: float = PROBE_TIMEOUT_S
) -> float:
    """Wall seconds without a finished probe pass after which /livez reports the process
    stalled: three passes that each waited out both servers' timeouts."""
    return 3 * (interval_s + 2 * timeout_s)


def stall_after_s(settings: Settings, speed: float) -> float:
    """Wall seconds without a loop step after which a worker is reported stalled.

    One step pauses up to SCAN_INTERVAL_S or HOLD_INTERVAL_S, and a HOLD step that sells may
    wait up to ORDER_TIMEOUT_S for its order (all clock seconds, so divided by the speed).
    """
    longest = max(settings.scan_interval_s, settings.hold_interval_s, settings.order_timeout_s)
    return max(3 * longest / max(speed, 1.0), _MIN_STALL_S)


@dataclass
class FleetHealth:
    """The health verdict over the workers of one process during a session."""

    workers: Sequence[Watched]
    stall_after_s: float
    monotonic: Callable[[], float] = time.monotonic

    def check(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, JSON-ready body). The body names each worker's state and tick age."""
        now = self.monotonic()
        problems: list[str] = []
        report: dict[str, Any] = {}
        for w in self.workers:
            age = None if w.last_tick_at is None else now - w.last_tick_at
            report[w.id] = {
                "state": w.state.value,
                "last_tick_age_s": None if age is None else round(age, 3),
            }
            if w.state is WorkerState.EXIT:
                problems.append(f"worker {w.id} has exited")
            elif age is None and w.state is not WorkerState.IDLE:
                problems.append(f"worker {w.id} is {w.state.value} but has not ticked")
            elif age is not None and age > self.stall_after_s:
                problems.append(
                    f"worker {w.id} made no progress for {age:.1f}s "
                    f"(limit {self.stall_after_s:.1f}s)"
                )
        if not self.workers:
            problems.append("no workers")
        body: dict[str, Any] = {"status": "ok" if not problems else "unhealthy"}
        if problems:
            body["reason"] = "; ".join(problems)
        body["stall_after_s"] = round(self.stall_after_s, 3)
        body["workers"] = report
        return not problems, body

    # A bare fleet (tests, tools) is alive and ready while its workers are healthy.
    def live(self) -> tuple[bool, dict[str, Any]]:
        return self.check()

    def ready(self) -> tuple[bool, dict[str, Any]]:
        return self.check()


class Phase(StrEnum):
    """What the process is doing."""

    STARTING = "starting"  # connecting, checking the schema, planning or opening a session
    WAITING_FOR_SCHEMA = "waiting_for_schema"  # WAIT_FOR_SCHEMA=1 and the schema is behind
    WAITING_FOR_SESSION = "waiting_for_session"  # WAIT_FOR_SESSION=1 and no session now
    TRADING = "trading"  # a session's workers run (also the minutes before its open)
    STOPPING = "stopping"  # a signal came, or the session ended: the process is on its way out


@dataclass
class ServerCheck:
    """The last probe of one server."""

    up: bool | None = None  # None: not probed yet
    error: str | None = None

    def body(self) -> dict[str, Any]:
        return {"up": self.up, "error": self.error}


@dataclass
class ProcessHealth:
    """The health of a `run` process from its first second to its last.

    `worker.commands` moves `phase` (with a `reason` while not trading) and sets `fleet` for
    the duration of a session; the server probe (`worker.probe.ServerProbe`) fills `redis`,
    `postgres` and `schema` and stamps `last_probe_at` after each pass.
    """

    #: wall seconds without a probe pass after which the process is reported stalled
    probe_stall_s: float
    monotonic: Callable[[], float] = time.monotonic
    phase: Phase = Phase.STARTING
    reason: str = "starting"
    fleet: FleetHealth | None = None
    session: dict[str, Any] | None = None
    redis: ServerCheck = field(default_factory=ServerCheck)
    postgres: ServerCheck = field(default_factory=ServerCheck)
    schema: SchemaStatus | None = None
    last_probe_at: float | None = None
    started_at: float = field(default=0.0)

    def __post_init__(self) -> None:
        self.started_at = self.monotonic()

    def enter(self, phase: Phase, reason: str) -> None:
        if (phase, reason) != (self.phase, self.reason):
            logger.info("{}: {}", phase.value, reason)
        self.phase, self.reason = phase, reason

    def show_session(self, session: Session, **extra: Any) -> None:
        """The session traded or waited for, as /readyz shows it."""
        self.session = {
            "day": session.day.isoformat(),
            "open": session.open.isoformat(),
            "close": session.close.isoformat(),
            **{
                k: v.isoformat(timespec="seconds") if isinstance(v, datetime) else v
                for k, v in extra.items()
            },
        }

    def live(self) -> tuple[bool, dict[str, Any]]:
        """(alive, body). Body: `status` ("ok" | "unhealthy"), `reason` (only when unhealthy),
        `phase`, `uptime_s`, `probe_age_s` (null before the first pass) and, during a
        session, `stall_after_s` and `workers` ({id: {state, last_tick_age_s}})."""
        now = self.monotonic()
        problems: list[str] = []
        age = None if self.last_probe_at is None else now - self.last_probe_at
        if age is None and now - self.started_at > self.probe_stall_s:
            problems.append(f"the server probe has not run in {now - self.started_at:.1f}s")
        elif age is not None and age > self.probe_stall_s:
            problems.append(
                f"the server probe made no progress for {age:.1f}s "
                f"(limit {self.probe_stall_s:.1f}s)"
            )
        body: dict[str, Any] = {
            "phase": self.phase.value,
            "uptime_s": round(now - self.started_at, 3),
            "probe_age_s": None if age is None else round(age, 3),
        }
        if self.fleet is not None:
            ok, fleet = self.fleet.check()
            if not ok:
                problems.append(fleet["reason"])
            body["stall_after_s"] = fleet["stall_after_s"]
            body["workers"] = fleet["workers"]
        return not problems, _verdict(problems, "ok", "unhealthy", body)

    def ready(self) -> tuple[bool, dict[str, Any]]:
        """(ready, body). Body: `status` ("ready" | "not_ready"), `reason` (only when not
        ready: every cause, "; "-joined), `phase`, `redis` and `postgres` ({up, error}),
        `schema` ({database, head, state} or null before the first check), `session` (the
        session traded or waited for: {day, open, close, ...} or null) and, during a session,
        `workers`."""
        problems: list[str] = []
        for name, check in (("Redis", self.redis), ("Postgres", self.postgres)):
            if check.up is None:
                problems.append(f"{name} not checked yet")
            elif not check.up:
                problems.append(f"{name} unreachable: {check.error}")
        if self.schema is not None and not self.schema.current:
            problems.append(self.schema.problem or "database schema not current")
        elif self.schema is None and self.postgres.up:
            problems.append("database schema not checked yet")
        fleet_body: dict[str, Any] | None = None
        if self.phase is not Phase.TRADING or self.fleet is None:
            problems.append(self.reason)
        else:
            ok, fleet_body = self.fleet.check()
            if not ok:
                problems.append(fleet_body["reason"])
        schema = self.schema
        body: dict[str, Any] = {
            "phase": self.phase.value,
            "redis": self.redis.body(),
            "postgres": self.postgres.body(),
            "schema": None
            if schema is None
            else {"database": schema.database, "head": schema.head, "state": schema.state},
            "session": self.session,
        }
        if fleet_body is not None:
            body["workers"] = fleet_body["workers"]
        return not problems, _verdict(problems, "ready", "not_ready", body)


def _verdict(problems: list[str], good: str, bad: str, rest: dict[str, Any]) -> dict[str, Any]:
    head: dict[str, Any] = {"status": bad if problems else good}
    if problems:
        head["reason"] = "; ".join(problems)
    return {**head, **rest}


@dataclass
class HealthServer:
    """Answers /livez, /healthz and /readyz from `health` and /metrics from `metrics`.

    `metrics` may be set after the server is listening (`run` binds the port before it
    imports the trading code); until then /metrics answers 503.
    """

    health: Verdicts
    metrics: Exposition | None = None

    async def serve(
        self, host: str, port: int, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen on host:port until cancelled; `task_status.started(bound port)` once bound.

        Cancelling the task closes the listening socket (later connects are refused).
        """
        listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
        async with listener:
            bound = int(listener.extra(SocketAttribute.local_port))  # noqa: S610 (anyio, not Django)
            logger.info(
                "health and metrics on http://{}:{}/ (/livez, /readyz, /healthz, /metrics)",
                host,
                bound,
            )
            task_status.started(bound)
            await listener.serve(self._handle)

    async def _handle(self, stream: SocketStream) -> None:
        async with stream:
            try:
                with anyio.fail_after(_READ_TIMEOUT_S):
                    head = await _read_head(stream)
                await stream.send(self.respond(head))
            except (TimeoutError, anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                pass  # the client went away or never finished its request
            except Exception:
                # A probe must never take the process down with it.
                logger.exception("health endpoint failed")

    def respond(self, head: bytes) -> bytes:
        """The whole HTTP response to a request whose head (up to the blank line) is `head`."""
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return _response(400, _JSON, b'{"error":"bad request line"}')
        method, target, _version = parts
        if method not in ("GET", "HEAD"):
            return _response(405, _JSON, b'{"error":"only GET"}', extra="Allow: GET, HEAD\r\n")
        path = target.split("?", 1)[0]
        if path in ("/livez", "/healthz", "/readyz"):
            ok, body = self.health.ready() if path == "/readyz" else self.health.live()
            code, ctype, payload = (200 if ok else 503), _JSON, orjson.dumps(body)
        elif path == "/metrics" and self.metrics is not None:
            code, ctype, payload = 200, CONTENT_TYPE_LATEST, self.metrics.exposition()
        elif path == "/metrics":
            code, ctype, payload = 503, _JSON, b'{"error":"starting"}'
        else:
            code, ctype, payload = 404, _JSON, b'{"error":"not found"}'
        return _response(code, ctype, payload, head_only=method == "HEAD")


async def _read_head(stream: SocketStream) -> bytes:
    """Read up to the blank line ending the request head (bounded), so that closing the
    connection does not reset it while the client still waits for the answer."""
    buf = b""
    while b"\r\n\r\n" not in buf and len(buf) < _MAX_HEAD:
        buf += await stream.receive(_MAX_HEAD)
    return buf


def _response(
    code: int, ctype: str, body: bytes, *, extra: str = "", head_only: bool = False
) -> bytes:
    head = (
        f"HTTP/1.1 {code} {_REASONS[code]}\r\n"
        f"Content-Type: {ctype}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\n"
        f"{extra}"
        "Connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + (b"" if head_only else body)


__all__ = [
    "FleetHealth",
    "HealthServer",
    "Phase",
    "ProcessHealth",
    "ServerCheck",
    "Verdicts",
    "Watched",
    "probe_stall_s",
    "stall_after_s",
]
