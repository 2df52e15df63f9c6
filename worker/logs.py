"""Logging: loguru, human-readable by default, one flat JSON object per line with LOG_JSON=1.

Levels: state transitions at INFO, lock contention and risk refusals at WARNING, failures at
ERROR with context. Context is loguru's `extra`: `worker` on every line (a worker binds its own
id, see `trading.loop`; every other line carries the process's WORKER_ID), and `symbol`,
`fence`, `state`, `client_order_id` where they apply (bound by the worker and its tenure).

A JSON line, keys in this order, absent context keys left out:

    {"ts": "2026-11-24T00:31:02.114+00:00", "level": "INFO", "msg": "state SCAN -> HOLD on bought",
     "logger": "trading.loop", "worker": "w1", "symbol": "005930", "fence": 12, "state": "HOLD"}

`ts` is ISO 8601 in UTC with its offset; `logger` the module that logged; `exc`, when an
exception is attached, its traceback as text. Any other bound extra follows as its own key.
Standard-library logging (alembic, httpx, asyncio, warnings) is routed through loguru at WARNING
and above, so in JSON mode every line on stderr is JSON.
"""

from __future__ import annotations

import logging
import sys
import traceback
from datetime import UTC
from typing import Any, TextIO

import orjson
from loguru import logger

#: context keys a line carries where they apply, after the fixed ones
CONTEXT_KEYS = ("symbol", "fence", "state", "client_order_id")
_FIXED = frozenset({"ts", "level", "msg", "logger", "worker", "exc", *CONTEXT_KEYS})

_HUMAN = (
    "<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
    "<cyan>{extra[_short]}</cyan> {message}\n{exception}"
)


def _human(record: Any) -> str:
    """The human format; worker ids longer than 16 characters (UUIDs) shortened to 8."""
    worker = str(record["extra"].get("worker", "-"))
    record["extra"]["_short"] = worker if len(worker) <= 16 else worker[:8]
    return _HUMAN


def json_line(record: Any) -> bytes:
    """One loguru record as one flat JSON object and a newline."""
    extra = record["extra"]
    line: dict[str, Any] = {
        "ts": record["time"].astimezone(UTC).isoformat(timespec="milliseconds"),
        "level": record["level"].name,
        "msg": record["message"],
        "logger": record["name"],
        "worker": extra.get("worker", "-"),
    }
    for key in CONTEXT_KEYS:
        if extra.get(key) is not None:
            line[key] = extra[key]
    for key, value in extra.items():
        if key not in _FIXED and not key.startswith("_"):
            line[key] = value
    exception = record["exception"]
    if exception is not None and exception.type is not None:
        line["exc"] = "".join(
            traceback.format_exception(exception.type, exception.value, exception.traceback)
        ).rstrip()
    return orjson.dumps(line, default=str, option=orjson.OPT_APPEND_NEWLINE)


def _json_sink(stream: TextIO) -> Any:
    def write(message: Any) -> None:
        stream.write(json_line(message.record).decode())
        stream.flush()

    return write


class _ToLoguru(logging.Handler):
    """Standard-library records into loguru, under their own logger name."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        exc = record.exc_info if record.exc_info and record.exc_info[0] else None

        def named(r: Any) -> None:
            r["name"] = record.name

        logger.patch(named).opt(exception=exc).log(level, record.getMessage())


def setup_logging(
    level: str = "INFO", json: bool = False, *, worker: str = "-", stream: TextIO | None = None
) -> None:
    """Log to `stream` (stderr) at `level`; `worker` is what lines not bound to a worker say
    (the process's WORKER_ID)."""
    out = stream if stream is not None else sys.stderr
    logger.remove()
    logger.configure(extra={"worker": worker})
    if json:
        logger.add(_json_sink(out), level=level, format="{message}", backtrace=False,
                   diagnose=False)  # fmt: skip
    else:
        logger.add(out, level=level, format=_human, backtrace=False, diagnose=False)
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _ToLoguru)]:
        root.removeHandler(handler)
    root.addHandler(_ToLoguru())
    root.setLevel(logging.WARNING)
    logging.captureWarnings(json)
