"""`serve_exchange`: the REST and WebSocket servers of one exchange, with its matching pump.

    async with serve_exchange(config, clock, host="127.0.0.1", port=0, ws_port=0) as running:
        running.rest_url, running.ws_url, running.venue

The pump advances matching every `config.pump_interval_s` wall seconds, so fills (and their
notices) happen without anyone polling; the WebSocket feed pushes trades and asking prices of
subscribed symbols on the same beat.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import anyio
from aiohttp import web
from loguru import logger

from exchange.arrival import ArrivalSocket
from exchange.auth import RateLimiter, TokenBook
from exchange.config import ExchangeConfig
from exchange.rest import RestApi
from exchange.venue import Venue
from exchange.ws import WsServer
from market.clock import Clock


@dataclass
class RunningExchange:
    """A running exchange: where it listens and its state (for tests and the CLI)."""

    host: str
    port: int
    ws_port: int
    venue: Venue
    tokens: TokenBook
    limiter: RateLimiter
    ws: WsServer

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.ws_port}"


async def _start(
    app: web.Application, host: str, port: int, sock: ArrivalSocket | None = None
) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site: web.BaseSite = (
        web.SockSite(runner, sock) if sock is not None else web.TCPSite(runner, host, port)
    )
    await site.start()
    server = site._server  # the bound port when 0 was asked
    assert isinstance(server, asyncio.base_events.Server)
    return runner, int(server.sockets[0].getsockname()[1])


async def _pump(venue: Venue, ws: WsServer) -> None:
    interval = venue.config.pump_interval_s
    while True:
        try:
            await venue.sync()
            await ws.feed()
        except Exception:  # one bad pass must not stop matching for the day
            logger.exception("exchange pump pass failed")
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def serve_exchange(
    config: ExchangeConfig,
    clock: Clock,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    ws_port: int = 0,
    venue: Venue | None = None,
) -> AsyncIterator[RunningExchange]:
    """Run the exchange until the block exits (port 0: any free port)."""
    venue = venue or Venue(config, clock)
    tokens = TokenBook(config, clock)
    limiter = RateLimiter(config.rate, enabled=config.rate_limit)
    ws = WsServer(venue, tokens)
    # the REST side counts each request when it arrived, not when the loop got to it
    listener = ArrivalSocket.listen_on(host, port)
    rest_app = RestApi(venue, tokens, limiter).app(listener)
    rest_runner, rest_port = await _start(rest_app, host, port, listener)
    try:
        ws_runner, bound_ws = await _start(ws.app(), host, ws_port)
        try:
            pump = asyncio.create_task(_pump(venue, ws), name="exchange-pump")
            pinger = asyncio.create_task(ws.ping_forever(), name="exchange-ping")
            try:
                yield RunningExchange(host, rest_port, bound_ws, venue, tokens, limiter, ws)
            finally:
                for task in (pump, pinger):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                await ws.close_all()
        finally:
            await ws_runner.cleanup()
    finally:
        await rest_runner.cleanup()


async def run_until_signalled(
    config: ExchangeConfig,
    clock: Clock,
    *,
    host: str,
    port: int,
    ws_port: int,
    on_ready: Callable[[RunningExchange], None],
) -> None:
    """Serve until SIGTERM or SIGINT (`python -m worker exchange`)."""
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with serve_exchange(config, clock, host=host, port=port, ws_port=ws_port) as running:
            on_ready(running)
            async for signum in signals:
                logger.info("exchange: {} received, stopping", signal.Signals(signum).name)
                return
