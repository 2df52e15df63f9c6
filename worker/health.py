"""Health and metrics over HTTP for operators: `GET /healthz` and `GET /metrics`.

A deliberately tiny server (anyio TCP listener, one request per connection, only the request
line is parsed, every answer carries Content-Length and `Connection: close`): probes and
Prometheus need nothing more, and the worker gains no web framework.

`/healthz` is 200 while every worker of the process is running and its main loop made progress
recently, 503 otherwise (with the reason). "Recently" is `stall_after_s`: three times the
longest pause or order wait of one loop step, in wall seconds, and at least 5 s. A worker
still waiting for the open has not ticked yet and counts as healthy; one in EXIT does not.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import orjson
from anyio.abc import SocketAttribute, SocketStream, TaskStatus
from loguru import logger
from prometheus_client import CONTENT_TYPE_LATEST

from trading.state import WorkerState
from worker.metrics import FleetMetrics
from worker.settings import Settings

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


def stall_after_s(settings: Settings, speed: float) -> float:
    """Wall seconds without a loop step after which a worker is reported stalled.

    One step pauses up to SCAN_INTERVAL_S or HOLD_INTERVAL_S, and a HOLD step that sells may
    wait up to ORDER_TIMEOUT_S for its order (all clock seconds, so divided by the speed).
    """
    longest = max(settings.scan_interval_s, settings.hold_interval_s, settings.order_timeout_s)
    return max(3 * longest / max(speed, 1.0), _MIN_STALL_S)


@dataclass
class FleetHealth:
    """The health verdict over the workers of one process."""

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


@dataclass
class HealthServer:
    """Answers `/healthz` from a `FleetHealth` and `/metrics` from a `FleetMetrics`."""

    health: FleetHealth
    metrics: FleetMetrics

    async def serve(
        self, host: str, port: int, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen on host:port until cancelled; `task_status.started(bound port)` once bound.

        Cancelling the task closes the listening socket (later connects are refused).
        """
        listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
        async with listener:
            bound = int(listener.extra(SocketAttribute.local_port))  # noqa: S610 (anyio, not Django)
            logger.info("health and metrics on http://{}:{}/ (/healthz, /metrics)", host, bound)
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
                # A probe must never take the fleet down with it.
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
        if path == "/healthz":
            ok, body = self.health.check()
            code, ctype, payload = (200 if ok else 503), _JSON, orjson.dumps(body)
        elif path == "/metrics":
            code, ctype, payload = 200, CONTENT_TYPE_LATEST, self.metrics.exposition()
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


__all__ = ["FleetHealth", "HealthServer", "Watched", "stall_after_s"]
