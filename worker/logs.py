"""Logging: loguru, human-readable by default, one JSON object per line with LOG_JSON=1.

Levels: state transitions at INFO, lock contention and risk refusals at WARNING, failures at
ERROR with context (worker, symbol, order ids bound with `logger.bind`).
"""

from __future__ import annotations

import sys

from loguru import logger

_HUMAN = (
    "<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
    "<cyan>{extra[worker]}</cyan> {message}"
)


def setup_logging(level: str = "INFO", json: bool = False) -> None:
    logger.remove()
    logger.configure(extra={"worker": "-"})
    if json:
        logger.add(sys.stderr, level=level, serialize=True, backtrace=False, diagnose=False)
    else:
        logger.add(sys.stderr, level=level, format=_HUMAN, backtrace=False, diagnose=False)
