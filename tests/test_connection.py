"""connect(): a ready client with socket deadlines, or one line naming the (redacted) URL."""

from __future__ import annotations

import socket
import time

import pytest

from coordination.connection import connect, redact
from coordination.errors import BackendUnavailable

pytestmark = pytest.mark.anyio


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_connect_returns_a_client_with_socket_timeouts(redis_url: str) -> None:
    client = await connect(redis_url, timeout_s=1.5)
    try:
        assert await client.ping()
        kwargs = client.connection_pool.connection_kwargs
        assert kwargs["socket_timeout"] == 1.5
        assert kwargs["socket_connect_timeout"] == 1.5
    finally:
        await client.aclose()


async def test_unreachable_url_fails_after_bounded_backoff_without_the_password() -> None:
    url = f"redis://trader:s3cret@127.0.0.1:{closed_port()}/0"
    started = time.monotonic()
    with pytest.raises(BackendUnavailable) as caught:
        await connect(url, attempts=3, backoff_s=0.05, timeout_s=0.5)
    elapsed = time.monotonic() - started
    message = str(caught.value)
    assert "\n" not in message
    assert "s3cret" not in message
    assert "redis://trader:***@127.0.0.1:" in message
    assert "after 3 attempts" in message
    assert 0.15 <= elapsed < 2.0  # slept 0.05 + 0.1 between the three attempts


def test_redact_hides_only_the_password() -> None:
    assert redact("redis://u:pw@h:6380/1") == "redis://u:***@h:6380/1"
    assert redact("redis://:pw@h/0") == "redis://:***@h/0"
    assert redact("redis://h:6379/0") == "redis://h:6379/0"


async def test_malformed_url_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="REDIS_URL"):
        await connect("http://127.0.0.1:6379/0", attempts=1)
