"""Small helpers shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.engine import make_url

T = TypeVar("T")


def libpq(url: str) -> str:
    """A SQLAlchemy URL as a plain libpq URL for psycopg.connect()."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def eventually(probe: Callable[[], T], timeout: float = 20.0, every: float = 0.1) -> T:
    """Poll `probe` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"condition not met within {timeout}s")
