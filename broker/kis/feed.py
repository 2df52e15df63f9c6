"""The worker's side of the gateway's fan-out (`broker.kis.fanout`): market data and fill
notices read from Redis, never from KIS.

* `GatewayMarketData` is the `MarketData` port of a ``BROKER=kis`` worker: `instruments` reads
  the day's universe, `snapshot` the latest row of every symbol of it (one HMGET), `quote` one
  symbol's row with its latest real-time trade laid over it when that is newer (the symbols the
  fleet holds). No market simulator, no snapshot cache, no quotation request, no WebSocket.
* Age: a row is used only while it is at most `max_age_s` old (gateway clock at the read vs
  this worker's clock; default `DEFAULT_MAX_AGE_S`: 30 s on the real domain, where a cycle of
  30 names takes 5-10 s, 90 s on the mock domain, where 10 names take 15-30 s; wall seconds,
  so times the clock's speed on a simulated clock, whose rehearsal day the gateway still reads
  within KIS's real-time budget). A quote of a
  row older than that, or a snapshot whose every row is, raises `MarketDataStale` (a
  `BrokerUnavailable`: the worker logs it and retries, as for KIS itself being away). A
  snapshot leaves out the symbols whose rows are stale or missing (WARNING) and uses the rest.
* `GatewayFills` reads this worker's fill-notice stream; `HintedBroker` puts it beside any
  `Broker` as ``fill_hints(worker_id)``, which the order tracker (`trading.tracker`) follows to
  ask the broker about an order at once instead of at its next poll.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import anyio
import orjson
import redis.asyncio as aioredis
from loguru import logger
from redis.exceptions import RedisError

from broker.errors import BrokerUnavailable
from broker.kis import wire
from broker.kis.fanout import decode_instrument, decode_row, decode_trade
from broker.kis.keys import KisKeys
from broker.kis.market import Row, assemble, quote_of
from broker.port import Broker, BrokerOrderId, OrderAck, OrderRequest, OrderStatus, Side
from market.clock import KST, Clock
from market.types import Instrument, Quote, Snapshot

#: Oldest data used, in seconds, per KIS domain (see the module docstring).
DEFAULT_MAX_AGE_S = {"real": 30.0, "mock": 90.0}
#: How long `instruments` waits for the gateway to publish the day's universe.
UNIVERSE_WAIT_S = 120.0
WATCH_BLOCK_S = 5.0  # a price watch blocks on the tick stream at most this long per read


class MarketDataStale(BrokerUnavailable):
    """The gateway's market data is missing or older than the age allowed: the gateway is down,
    on standby with nobody active, or behind. Transient: retried."""


class GatewayMarketData:
    """`MarketData` read from the gateway's publications in Redis (see the module docstring)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: KisKeys,
        clock: Clock,
        *,
        max_age_s: float | None = None,
        universe_wait_s: float = UNIVERSE_WAIT_S,
        poll_s: float = 0.5,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.clock = clock
        if max_age_s is None:  # the gateway publishes in wall time: its age bound is wall time
            max_age_s = DEFAULT_MAX_AGE_S[keys.domain] * clock.speed
        self.max_age_s = max_age_s
        if self.max_age_s <= 0:
            raise ValueError(f"max_age_s must be positive, got {max_age_s}")
        self.universe_wait_s = universe_wait_s
        self.poll_s = poll_s
        self._day: date | None = None
        self._universe: list[Instrument] = []
        self._n_bars = 0

    @property
    def n_bars(self) -> int:
        """Minute bars the gateway publishes a symbol (known once `instruments` returned)."""
        return self._n_bars

    def __repr__(self) -> str:
        return f"GatewayMarketData({self.keys!r}, max_age_s={self.max_age_s:g})"

    async def instruments(self) -> Sequence[Instrument]:
        """Today's universe as the gateway published it; waits up to `universe_wait_s` for it
        (a fleet starting with its gateway), then `MarketDataStale`."""
        today = self.clock.now().astimezone(KST).date()
        if self._day == today:
            return list(self._universe)
        deadline = time.monotonic() + self.universe_wait_s
        while True:
            raw = await self._read("universe", self.redis.get(self.keys.md_universe))
            data = orjson.loads(raw) if raw is not None else None
            if data is not None and data.get("day") == today.isoformat():
                self._universe = [decode_instrument(i) for i in data["instruments"]]
                self._n_bars = int(data["n_bars"])
                self._day = today
                return list(self._universe)
            if time.monotonic() >= deadline:
                raise MarketDataStale(
                    f"no universe for {today} from the KIS gateway after "
                    f"{self.universe_wait_s:g} s: is `python -m worker gateway` running?"
                )
            await anyio.sleep(self.poll_s)

    async def snapshot(self, n_bars: int) -> Snapshot:
        universe = list(await self.instruments())
        if n_bars > self._n_bars:
            raise ValueError(
                f"the KIS gateway publishes {self._n_bars} minute bars a symbol and {n_bars} "
                f"were asked: give the gateway N_BARS >= {n_bars}"
            )
        symbols = [i.symbol for i in universe]
        raws = await self._read("rows", self.redis.hmget(self.keys.md_rows, symbols))
        now = self.clock.now()
        kept: list[Instrument] = []
        rows: list[Row] = []
        oldest: datetime | None = None
        missing: list[str] = []
        stale: list[str] = []
        for inst, raw in zip(universe, raws, strict=True):
            if raw is None:
                missing.append(inst.symbol)
                continue
            row = decode_row(raw)
            if (now - row.at).total_seconds() > self.max_age_s:
                stale.append(inst.symbol)
                continue
            kept.append(inst)
            rows.append(Row(dict(row.price), dict(row.book), row.bars))
            oldest = row.at if oldest is None else min(oldest, row.at)
        if oldest is None:
            raise MarketDataStale(
                f"no market data younger than {self.max_age_s:g} s from the KIS gateway for any "
                f"of {len(universe)} symbols ({len(stale)} stale, {len(missing)} missing)"
            )
        if missing or stale:
            logger.warning("snapshot: {} symbol(s) left out, stale {} missing {}",
                           len(missing) + len(stale), stale[:5], missing[:5])  # fmt: skip
        return assemble(oldest, kept, rows, n_bars)

    async def quote(self, symbol: str, short_ma_bars: int = 5) -> Quote:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hget(self.keys.md_rows, symbol)
            pipe.hget(self.keys.md_trades, symbol)
            raw_row, raw_trade = await self._read(f"quote of {symbol}", pipe.execute())
        if raw_row is None:
            raise MarketDataStale(f"{symbol}: no market data from the KIS gateway (yet)")
        row = decode_row(raw_row)
        now = self.clock.now()
        age = (now - row.at).total_seconds()
        if age > self.max_age_s:
            raise MarketDataStale(f"{symbol}: the KIS gateway's market data is {age:.0f} s old "
                                  f"(more than {self.max_age_s:g} s)")  # fmt: skip
        price, book, at = dict(row.price), dict(row.book), row.at
        if raw_trade is not None:
            published = decode_trade(raw_trade)
            t = published.trade
            today = wire.ymd(now.astimezone(KST).date())
            if published.at > row.at and t.day == today:
                price.update(stck_prpr=str(t.price), acml_vol=str(t.volume),
                             acml_tr_pbmn=str(t.traded_value), stck_hgpr=str(t.day_high),
                             stck_lwpr=str(t.day_low))  # fmt: skip
                book.update(askp1=str(t.ask), bidp1=str(t.bid), askp_rsqn1=str(t.ask_qty),
                            bidp_rsqn1=str(t.bid_qty))  # fmt: skip
                at = published.at
        return quote_of(row.instrument, at, price, book, row.bars, short_ma_bars)

    async def wait_price(
        self,
        symbol: str,
        below: Decimal | None,
        above: Decimal | None,
        timeout_s: float,
    ) -> bool:
        """`PriceWatch` over the gateway's stream of `symbol`'s real-time trades (``md_ticks``,
        written for the symbols the fleet holds): each trade is checked against the levels as
        it arrives; the latest one already through a level counts at once. A symbol the
        gateway does not stream (yet) just times out, and HOLD checks its rules as usual."""

        def through(raw: Any) -> bool:
            price = decode_trade(raw).trade.price
            return (below is not None and price <= below) or (above is not None and price >= above)

        stream = self.keys.md_ticks(symbol)
        deadline = time.monotonic() + max(0.0, timeout_s) / self.clock.speed
        latest = await self._read(f"trades of {symbol}", self.redis.xrevrange(stream, count=1))
        if latest:
            last_id, fields = latest[0]
            if through(_field(fields, "trade")):
                return True
        else:
            last_id = "0-0"
        while (remaining := deadline - time.monotonic()) > 0:
            block_ms = max(1, int(min(remaining, WATCH_BLOCK_S) * 1000))
            reply: Any = await self._read(
                f"trades of {symbol}",
                self.redis.xread({stream: last_id}, count=100, block=block_ms),
            )
            for _stream, entries in reply or ():
                for entry_id, fields in entries:
                    last_id = entry_id
                    if through(_field(fields, "trade")):
                        return True
        return False

    async def _read(self, what: str, call: Any) -> Any:
        try:
            return await call
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(f"market data ({what}) unreadable in Redis: {exc!r}") from exc


# ----- fill notices -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FillHint:
    """A fill notice the gateway routed to this worker: ask the broker about the order."""

    broker_order_id: BrokerOrderId
    symbol: str
    executed: bool
    routed_at: datetime  # the gateway's clock when it routed the notice


class GatewayFills:
    """Reads a worker's fill-notice stream (``KisKeys.fills``), from the moment it starts."""

    def __init__(
        self, redis: aioredis.Redis, keys: KisKeys, *, block_ms: int = 1_000, retry_s: float = 1.0
    ) -> None:
        timeout = redis.connection_pool.connection_kwargs.get("socket_timeout")
        if timeout:  # a blocking read must end well inside the client's socket timeout
            block_ms = max(1, min(block_ms, int(float(timeout) * 1000 / 2)))
        self.redis = redis
        self.keys = keys
        self.block_ms = block_ms
        self.retry_s = retry_s
        self.read = 0

    async def hints(self, worker_id: str) -> AsyncIterator[FillHint]:
        """Every notice routed to `worker_id` from now on, forever. Redis errors are logged
        and retried (the tracker's polling covers the gap)."""
        stream = self.keys.fills(worker_id)
        last: str | None = None
        failing = False
        while True:
            try:
                if last is None:
                    newest: Any = await self.redis.xrevrange(stream, count=1)
                    last = _text(newest[0][0]) if newest else "0-0"
                reply: Any = await self.redis.xread({stream: last}, count=100, block=self.block_ms)
            except (RedisError, OSError) as exc:
                if not failing:
                    logger.warning("fill notices of {} unreadable, retrying: {!r}", worker_id, exc)
                failing = True
                await anyio.sleep(self.retry_s)
                continue
            failing = False
            for _, entries in reply or ():
                for entry_id, fields in entries:
                    last = _text(entry_id)
                    hint = _hint(fields)
                    if hint is not None:
                        self.read += 1
                        yield hint


def _field(fields: dict[Any, Any], name: str) -> Any:
    return fields.get(name.encode(), fields.get(name))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _hint(fields: dict[Any, Any]) -> FillHint | None:
    f = {_text(k): _text(v) for k, v in fields.items()}
    try:
        return FillHint(BrokerOrderId(f["odno"]), f["symbol"], f["executed"] == "1",
                        datetime.fromisoformat(f["routed_at"]))  # fmt: skip
    except (KeyError, ValueError) as exc:
        logger.error("fill notice entry unreadable, skipped: {!r} ({})", f, exc)
        return None


class HintedBroker:
    """`inner` (the orders) with the gateway's fill notices beside it (`fill_hints`)."""

    def __init__(self, inner: Broker, fills: GatewayFills) -> None:
        self.inner = inner
        self.fills = fills

    def __repr__(self) -> str:
        return f"HintedBroker({self.inner!r})"

    def __getattr__(self, name: str) -> Any:
        # everything else of the inner broker (the account, its client) as it is
        return getattr(self.inner, name)

    async def submit_order(self, request: OrderRequest) -> OrderAck:
        return await self.inner.submit_order(request)

    async def cancel_order(self, broker_order_id: BrokerOrderId) -> OrderStatus:
        return await self.inner.cancel_order(broker_order_id)

    async def order_status(self, broker_order_id: BrokerOrderId) -> OrderStatus:
        return await self.inner.order_status(broker_order_id)

    async def find_orders(
        self, symbol: str, side: Side, qty: int, since: datetime
    ) -> Sequence[OrderStatus]:
        return await self.inner.find_orders(symbol, side, qty, since)

    async def fill_hints(self, worker_id: str) -> AsyncIterator[BrokerOrderId]:
        """The broker order ids the gateway's notices name for `worker_id`, as they come."""
        async for hint in self.fills.hints(worker_id):
            yield hint.broker_order_id
