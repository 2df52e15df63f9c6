"""The KIS adapter's test venue: the project's exchange (`exchange.serve_exchange`) on loopback,
on a `ManualClock`, with `KisBroker` instances that behave like separate processes (own HTTP
pool, own in-memory token and order-number memory) sharing one Redis prefix.

`Recorder` is an httpx transport that passes every request to the exchange and remembers it, so
a test can see what the adapter sent (headers, paging keys, how many order posts); it can also
lose the reply to the next order post after the exchange has handled it (a timeout after
sending).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

import httpx
import orjson
import redis.asyncio as aioredis

from broker.kis import KisBroker, KisClient, KisConfig
from exchange import ExchangeAccount, ExchangeConfig, RunningExchange, serve_exchange
from market.calendar import Session
from market.clock import KST, ManualClock

APP_KEY = "PSTESTAPPKEY0123456789"
APP_SECRET = "test-app-secret-" + "s" * 164  # KIS secrets are 180 characters
ACCOUNT = "50012345-01"
HTS_ID = "tester01"
CASH = Decimal(2_000_000_000)

DAY = date(2026, 3, 10)
SESSION = Session(
    DAY,
    datetime(2026, 3, 10, 9, 0, tzinfo=KST),
    datetime(2026, 3, 10, 15, 20, tzinfo=KST),
    datetime(2026, 3, 10, 15, 30, tzinfo=KST),
)
START = datetime(2026, 3, 10, 10, 0, 15, tzinfo=KST)
ORDER_CASH = "/uapi/domestic-stock/v1/trading/order-cash"
DAILY_CCLD = "/uapi/domestic-stock/v1/trading/inquire-daily-ccld"


@dataclass
class Sent:
    method: str
    path: str
    headers: dict[str, str]
    params: dict[str, str]  # query (GET) or JSON body (POST)
    status: int = 0  # the reply's HTTP status (0: no reply reached the adapter)
    reply: dict[str, Any] = field(default_factory=dict)  # the reply's JSON body
    reply_headers: dict[str, str] = field(default_factory=dict)

    @property
    def msg_cd(self) -> str:
        return str(self.reply.get("msg_cd") or self.reply.get("error_code") or "")


@dataclass
class Recorder(httpx.AsyncBaseTransport):
    """Passes requests through to the exchange and records them (see the module docstring)."""

    inner: httpx.AsyncBaseTransport = field(default_factory=httpx.AsyncHTTPTransport)
    sent: list[Sent] = field(default_factory=list)
    lose_next_order_reply: bool = False
    fail_next_reads: int = 0  # answer this many GETs with HTTP 503 and no KIS body

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            params = dict(parse_qsl(request.url.query.decode(), keep_blank_values=True))
        else:
            body = await request.aread()
            params = orjson.loads(body) if body else {}
        sent = Sent(request.method, request.url.path, dict(request.headers), params)
        self.sent.append(sent)
        if request.method == "GET" and self.fail_next_reads:
            self.fail_next_reads -= 1
            return httpx.Response(503, content=b"<html>Service Unavailable</html>")
        response = await self.inner.handle_async_request(request)
        content = await response.aread()
        if request.url.path == ORDER_CASH and self.lose_next_order_reply:
            self.lose_next_order_reply = False
            raise httpx.ReadTimeout("reply lost after the exchange took the order", request=request)
        sent.status = response.status_code
        sent.reply_headers = dict(response.headers)
        try:
            reply = orjson.loads(content)
            sent.reply = reply if isinstance(reply, dict) else {}
        except orjson.JSONDecodeError:
            pass
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()

    def to(self, path: str) -> list[Sent]:
        return [s for s in self.sent if s.path == path]

    def answered(self, msg_cd: str) -> list[Sent]:
        return [s for s in self.sent if s.msg_cd == msg_cd]


@dataclass
class KisVenue:
    """One running exchange, its clock, and a factory of adapter 'processes'."""

    running: RunningExchange
    clock: ManualClock
    redis: aioredis.Redis
    prefix: str
    domain: str
    stack: AsyncExitStack
    recorders: list[Recorder] = field(default_factory=list)

    def config(self, **options: Any) -> KisConfig:
        base: dict[str, Any] = {
            "domain": self.domain,
            "base_url": self.running.rest_url,
            "ws_url": self.running.ws_url,
            "hts_id": HTS_ID,
            "rate_per_s": 1000.0,
            "timeout_s": 5.0,
        }
        base.update(options)
        return KisConfig(APP_KEY, APP_SECRET, ACCOUNT, **base)

    async def broker(self, universe: list[str] | None = None, **options: Any) -> KisBroker:
        """A new adapter 'process' (its own client, pool and memory) on the shared prefix."""
        recorder = Recorder()
        self.recorders.append(recorder)
        client = KisClient(
            self.config(**options), self.redis, self.prefix, clock=self.clock, transport=recorder
        )
        self.stack.push_async_callback(client.aclose)
        if universe is None and self.domain == "mock":
            universe = [self.symbols[0]]
        return KisBroker(client, self.clock, universe=universe, cancel_poll_s=1.0)

    @property
    def symbols(self) -> list[str]:
        return [i.symbol for i in self.running.venue.market.instruments]

    async def advance(self, seconds: float) -> None:
        """Move the clock on and let the exchange match up to it."""
        self.clock.set(self.clock.now() + timedelta(seconds=seconds))
        await self.running.venue.sync()

    def requests(self, tr_id: str) -> int:
        """Requests of `tr_id` the exchange received from our app key (refused ones included)."""
        return self.running.venue.stats.requests.get(APP_KEY, {}).get(tr_id, 0)

    def all_sent(self) -> list[Sent]:
        return [s for r in self.recorders for s in r.sent]

    def rate_limited(self) -> int:
        return sum(self.running.venue.stats.rate_limited.get(APP_KEY, {}).values())

    @property
    def token_issues(self) -> int:
        return self.running.tokens.issues.get(APP_KEY, 0)

    def tr(self, real: str) -> str:
        return self.running.venue.config.tr(real)

    def placed(self) -> list[Any]:
        """The exchange's order rows of our account (cancel rows left out)."""
        return [o for o in self.running.venue.orders if not o.is_cancel]


@asynccontextmanager
async def kis_venue(
    redis: aioredis.Redis,
    prefix: str,
    domain: str,
    *,
    clock: ManualClock | None = None,
    seed: int = 21,
    n_symbols: int = 60,
    cash: Decimal = CASH,
    **exchange: Any,
) -> AsyncIterator[KisVenue]:
    """An exchange of `domain` on loopback (rate limit off unless `rate_limit=True` is given)."""
    clock = clock or ManualClock(START)
    options: dict[str, Any] = {"rate_limit": False, "pump_interval_s": 0.05}
    options.update(exchange)
    account = ExchangeAccount(APP_KEY, APP_SECRET, account=ACCOUNT, hts_id=HTS_ID, cash=cash)
    config = ExchangeConfig(
        accounts=(account,),
        domain=domain,  # type: ignore[arg-type]
        seed=seed,
        n_symbols=n_symbols,
        session=SESSION,
        **options,
    )
    async with AsyncExitStack() as stack:
        running = await stack.enter_async_context(serve_exchange(config, clock))
        yield KisVenue(running, clock, redis, prefix, domain, stack)
