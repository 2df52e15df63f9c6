"""The gateway's fan-out: KIS market data published once for the whole fleet, and each fill
notice routed to the worker that owns the order.

Two gateway services (`broker.kis.gateway.Service`), run only while the gateway is active:

* `publish_market_data`: REST quotations of the universe (and of every symbol the fleet holds)
  into Redis, in cycles (`MarketDataPublisher`);
* `realtime`: the app key's one WebSocket session (`broker.kis.notices.KisNoticeFeed`): fill
  notices routed to their owner's stream (`NoticeRouter`), and real-time trades (``H0STCNT0``)
  of the symbols the fleet holds written beside the quotations (`TradeWriter`).

Workers read all of it through `broker.kis.feed`: a ``BROKER=kis`` worker sends no quotation
request and opens no WebSocket. The key names are `broker.kis.keys.KisKeys` ``md_*`` and
``fills``.

What a cycle costs (KIS requests, all in the market-data lane, the lowest):

=====================================  =========================================================
per symbol and cycle                   inquire-price 1 + asking price 1 + minute bars: the first
                                       cycle of the day ``ceil(n_bars / 30) + 1`` pages (3 for
                                       60 bars: the bar still forming is left out), then 1 page
                                       (completed bars never change; the page joins the ones read
                                       before). So 5, then 3.
per symbol and day                     +2 to describe it (inquire-price, daily bars), once; a
                                       gateway taking over reuses the day's universe from Redis
the universe on the real domain        +1 volume-rank, once a day
30 names, real domain (20 req/s)       150 requests for the first cycle (7.5 s of the whole
                                       budget), 90 after (4.5 s); with orders and status polls
                                       ahead of it in their lanes a cycle takes longer, never
                                       less than `interval_s` (5 s) from start to start
10 names, mock domain (2 req/s)        50 requests, then 30 (15 s of the whole budget)
=====================================  =========================================================

Held symbols get their trades in real time over the WebSocket (one subscription each, at most
39 beside the fill notices; ``H0STCNT0`` carries the best bid and ask too, so no separate
``H0STASP0`` subscription is spent), so their quotes stay fresh between cycles.

Fill notices: a notice names the order (``ODER_NO``) and the symbol, not the worker. It is
routed to the worker holding the symbol's lock (`Holders`, injected: `broker` never reads the
coordination keys itself). A tenure owns every unfinished order on its symbol (the adopter takes
over the previous holder's orders before it acts), so the lock holder is the worker whose
tracker follows the order; unlike an index written when the order is acknowledged, this needs
no write per order and no race with the acknowledgement (a market order's notices can arrive
before its submit returns). A notice for a symbol nobody holds (an order placed outside the
fleet, a lease that expired) is counted and logged: polling and the account reconciliation
catch it. A notice is only a hint: the worker asks the broker (`trading.tracker`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import anyio
import orjson
import redis.asyncio as aioredis
from anyio.streams.memory import MemoryObjectReceiveStream
from loguru import logger

from broker.errors import BrokerError, BrokerUnavailable
from broker.kis import wire
from broker.kis.client import KisReply, TrId
from broker.kis.keys import KisKeys
from broker.kis.market import (
    DEFAULT_UNIVERSE,
    RANK_EXCLUSIONS,
    Bar,
    Quotations,
    describe,
    fetch_bars,
    fetch_book,
    fetch_price,
    ranked,
)
from broker.kis.notices import FillNotice, KisNoticeFeed, Trade
from broker.kis.wire import BARS_PER_CALL
from market.clock import KST, Clock
from market.types import Board, Instrument, Tier

if TYPE_CHECKING:
    from broker.kis.gateway import GatewayContext

T = TypeVar("T")

#: symbol -> worker id of every live symbol lock (injected by the wiring in `worker`).
Holders = Callable[[], Awaitable[Mapping[str, str]]]

#: What a row keeps of inquire-price and of the asking price (all a snapshot and a quote read).
PRICE_FIELDS = ("stck_prpr", "acml_vol", "acml_tr_pbmn", "stck_hgpr", "stck_lwpr", "stck_sdpr",
                "stck_mxpr", "stck_llam")  # fmt: skip
BOOK_FIELDS = ("askp1", "bidp1", "askp_rsqn1", "bidp_rsqn1")
#: Time to live of the published keys (renewed on every write): a dead fleet's data goes.
DAY_MS = 24 * 3_600_000
TICKS_MAXLEN = 100  # a held symbol's trades kept for its holder's price watch
#: Notices kept per worker stream (approximate trim).
FILLS_MAXLEN = 1_000
#: Requests in flight per cycle (the gateway's lanes pace them anyway).
CONCURRENCY = 8
#: Default shortest time from the start of one cycle to the start of the next.
INTERVAL_S = 5.0


def requests_per_symbol(n_bars: int, first: bool) -> int:
    """KIS requests one symbol costs in a cycle: price, asking price and the bar pages."""
    pages = math.ceil(n_bars / BARS_PER_CALL) + 1 if first else 1
    return 2 + pages


# ----- the published format (read back by broker.kis.feed) ---------------------------------


def encode_instrument(inst: Instrument) -> dict[str, Any]:
    return {
        "symbol": inst.symbol,
        "name": inst.name,
        "board": inst.board.value,
        "tier": int(inst.tier),
        "prev_close": str(inst.prev_close),
        "prev_high": str(inst.prev_high),
        "prev_low": str(inst.prev_low),
        "kospi200": inst.kospi200,
    }


def decode_instrument(data: Mapping[str, Any]) -> Instrument:
    return Instrument(
        symbol=str(data["symbol"]),
        name=str(data["name"]),
        board=Board(data["board"]),
        tier=Tier(int(data["tier"])),
        prev_close=Decimal(data["prev_close"]),
        prev_high=Decimal(data["prev_high"]),
        prev_low=Decimal(data["prev_low"]),
        kospi200=bool(data["kospi200"]),
    )


@dataclass(frozen=True, slots=True)
class PublishedRow:
    """One symbol's latest REST quotation as the gateway published it."""

    at: datetime  # when the gateway read it (its clock)
    instrument: Instrument
    price: dict[str, str]  # PRICE_FIELDS of inquire-price
    book: dict[str, str]  # BOOK_FIELDS of the asking price
    bars: list[Bar]  # completed minute bars, oldest first


def encode_row(row: PublishedRow) -> bytes:
    return orjson.dumps(
        {
            "at": row.at.isoformat(),
            "instrument": encode_instrument(row.instrument),
            "price": row.price,
            "book": row.book,
            "bars": [_encode_bar(b) for b in row.bars],
        }
    )


def decode_row(raw: bytes | str) -> PublishedRow:
    data = orjson.loads(raw)
    return PublishedRow(
        at=datetime.fromisoformat(data["at"]),
        instrument=decode_instrument(data["instrument"]),
        price={str(k): str(v) for k, v in data["price"].items()},
        book={str(k): str(v) for k, v in data["book"].items()},
        bars=[_decode_bar(b) for b in data["bars"]],
    )


def _encode_bar(bar: Bar) -> list[object]:
    out: list[object] = [bar.start.isoformat(), str(bar.close), bar.volume]
    if bar.high is not None and bar.low is not None:
        out += [str(bar.high), str(bar.low)]
    return out


def _decode_bar(item: list[Any]) -> Bar:
    """[start, close, volume] or, since bars carry their range, [..., high, low]."""
    start, close, volume = item[:3]
    high, low = (Decimal(item[3]), Decimal(item[4])) if len(item) >= 5 else (None, None)
    return Bar(datetime.fromisoformat(start), Decimal(close), int(volume), high, low)


@dataclass(frozen=True, slots=True)
class PublishedTrade:
    """A held symbol's latest real-time trade as the gateway published it."""

    at: datetime  # when the gateway received it (its clock)
    trade: Trade


def encode_trade(at: datetime, trade: Trade) -> bytes:
    return orjson.dumps(
        {
            "at": at.isoformat(),
            "symbol": trade.symbol,
            "day": trade.day,
            "hhmmss": trade.at,
            "price": str(trade.price),
            "volume": trade.volume,
            "traded_value": str(trade.traded_value),
            "day_high": str(trade.day_high),
            "day_low": str(trade.day_low),
            "ask": str(trade.ask),
            "bid": str(trade.bid),
            "ask_qty": trade.ask_qty,
            "bid_qty": trade.bid_qty,
        }
    )


def decode_trade(raw: bytes | str) -> PublishedTrade:
    d = orjson.loads(raw)
    trade = Trade(
        symbol=str(d["symbol"]),
        day=str(d["day"]),
        at=str(d["hhmmss"]),
        price=Decimal(d["price"]),
        volume=int(d["volume"]),
        traded_value=Decimal(d["traded_value"]),
        day_high=Decimal(d["day_high"]),
        day_low=Decimal(d["day_low"]),
        ask=Decimal(d["ask"]),
        bid=Decimal(d["bid"]),
        ask_qty=int(d["ask_qty"]),
        bid_qty=int(d["bid_qty"]),
    )
    return PublishedTrade(datetime.fromisoformat(d["at"]), trade)


# ----- REST quotations ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cycle:
    """One publishing pass."""

    symbols: int  # symbols asked
    published: int  # rows written
    requests: int  # KIS requests sent
    seconds: float  # wall time


class MarketDataPublisher:
    """Publishes the universe, then a row per symbol each cycle (see the module docstring).

    `universe`: fixed symbols (the mock domain has no volume ranking), else today's volume
    ranking. `holders` adds the symbols the fleet holds (a position adopted outside the
    universe still gets quotes). `n_bars`: the minute bars kept per symbol, the most any worker
    asks for (`N_BARS`).
    """

    def __init__(
        self,
        get: Quotations,
        redis: aioredis.Redis,
        keys: KisKeys,
        clock: Clock,
        *,
        universe: Sequence[str] | None = None,
        n_bars: int = 60,
        interval_s: float = INTERVAL_S,
        holders: Holders | None = None,
        rank_exclusions: str = RANK_EXCLUSIONS,
        concurrency: int = CONCURRENCY,
        gateway_id: str = "",
    ) -> None:
        if n_bars < 1:
            raise ValueError(f"n_bars must be >= 1, got {n_bars}")
        self.redis = redis
        self.keys = keys
        self.clock = clock
        self.universe = tuple(universe) if universe is not None else None
        self.n_bars = n_bars
        self.interval_s = interval_s
        self.holders = holders
        self.rank_exclusions = rank_exclusions
        self.gateway_id = gateway_id
        self.requests = 0  # KIS requests sent since start
        self.cycles = 0
        self._get = get
        self._limit = anyio.CapacityLimiter(concurrency)
        self._day: date | None = None
        self._instruments: dict[str, Instrument] = {}  # today's universe, in order
        self._described: dict[str, Instrument] = {}  # everything described today
        self._bars: dict[str, list[Bar]] = {}  # completed bars read so far today

    async def _ask(self, path: str, tr: TrId, params: dict[str, str]) -> KisReply:
        self.requests += 1
        return await self._get(path, tr, params)

    # -- the day's universe ------------------------------------------------------------------

    async def load_universe(self) -> list[Instrument]:
        """Today's universe: the one published today (a gateway taking over reuses it), else
        ranked and described now and published."""
        today = self.clock.now().astimezone(KST).date()
        if self._day == today and self._instruments:
            return list(self._instruments.values())
        self._day, self._instruments, self._described, self._bars = today, {}, {}, {}
        raw = await self.redis.get(self.keys.md_universe)
        if raw is not None:
            data = orjson.loads(raw)
            if data.get("day") == today.isoformat() and data.get("n_bars") == self.n_bars:
                found = [decode_instrument(i) for i in data["instruments"]]
                fixed = self.universe is None or [i.symbol for i in found] == list(self.universe)
                if found and fixed:
                    self._instruments = {i.symbol: i for i in found}
                    self._described.update(self._instruments)
                    logger.info("market data: today's universe of {} reused", len(found))
                    return found
        names = await ranked(self._ask, self.rank_exclusions) if self.universe is None else {}
        symbols = list(names) if self.universe is None else list(self.universe)
        described = await self._each(symbols, lambda s: self._describe(s, names.get(s)))
        self._instruments = {i.symbol: i for i in described if i is not None}
        if not self._instruments:  # never a day with an empty universe: the service retries
            raise BrokerUnavailable(f"none of {len(symbols)} symbols of the universe described")
        doc = {
            "day": today.isoformat(),
            "at": self.clock.now().isoformat(),
            "n_bars": self.n_bars,
            "instruments": [encode_instrument(i) for i in self._instruments.values()],
        }
        await self.redis.set(self.keys.md_universe, orjson.dumps(doc), px=DAY_MS)
        logger.info("market data: universe of {} published", len(self._instruments))
        return list(self._instruments.values())

    async def _describe(self, symbol: str, name: str | None) -> Instrument | None:
        if symbol in self._described:
            return self._described[symbol]
        try:
            inst = await describe(self._ask, symbol, name, self.clock.now().astimezone(KST).date())
        except BrokerError as exc:
            logger.warning("market data: {} not described: {!r}", symbol, exc)
            return None
        self._described[symbol] = inst
        return inst

    # -- cycles --------------------------------------------------------------------------------

    async def cycle(self) -> Cycle:
        """Read and publish one row per symbol (the universe, then held symbols outside it)."""
        started, asked_before = time.monotonic(), self.requests
        await self.load_universe()
        symbols = list(self._instruments)
        if self.holders is not None:
            held = await self.holders()
            symbols += sorted(s for s in held if s not in self._instruments)
        published = await self._each(symbols, self.publish_symbol)
        result = Cycle(len(symbols), sum(1 for p in published if p),
                       self.requests - asked_before, time.monotonic() - started)  # fmt: skip
        self.cycles += 1
        await self.redis.hset(
            self.keys.md_state,
            mapping={
                "at": self.clock.now().isoformat(),
                "cycle_s": f"{result.seconds:.3f}",
                "requests": result.requests,
                "symbols": result.symbols,
                "published": result.published,
                "gateway": self.gateway_id,
            },
        )
        await self.redis.pexpire(self.keys.md_state, DAY_MS)
        return result

    async def publish_symbol(self, symbol: str) -> bool:
        """Read and publish one symbol's row; False when it could not be read now."""
        inst = self._instruments.get(symbol) or await self._describe(symbol, None)
        if inst is None:
            return False
        try:
            price = await fetch_price(self._ask, symbol)
            book = await fetch_book(self._ask, symbol)
            now = self.clock.now()
            bars = await fetch_bars(self._ask, symbol, self.n_bars, now,
                                    self._bars.get(symbol, ()))  # fmt: skip
        except BrokerError as exc:
            logger.warning("market data: {} not refreshed: {!r}", symbol, exc)
            return False
        self._bars[symbol] = bars
        row = PublishedRow(
            at=now,
            instrument=inst,
            price={f: wire.field(price, f) for f in PRICE_FIELDS},
            book={f: wire.field(book, f) for f in BOOK_FIELDS},
            bars=bars,
        )
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(self.keys.md_rows, symbol, encode_row(row))
            pipe.pexpire(self.keys.md_rows, DAY_MS)
            await pipe.execute()
        return True

    async def run(self) -> NoReturn:
        """Cycle forever, a cycle starting at most every `interval_s` (wall seconds)."""
        while True:
            report = await self.cycle()
            logger.debug("market data: {} of {} symbols in {:.2f} s, {} requests",
                         report.published, report.symbols, report.seconds,
                         report.requests)  # fmt: skip
            await anyio.sleep(max(0.0, self.interval_s - report.seconds))

    async def _each(self, symbols: Sequence[str], fetch: Callable[[str], Awaitable[T]]) -> list[T]:
        results: dict[int, T] = {}

        async def one(i: int, symbol: str) -> None:
            async with self._limit:
                results[i] = await fetch(symbol)

        async with anyio.create_task_group() as tg:
            for i, symbol in enumerate(symbols):
                tg.start_soon(one, i, symbol)
        return [results[i] for i in range(len(symbols))]


class TradeWriter:
    """Writes each real-time trade to ``md_trades`` (the latest per symbol) and appends it to
    the symbol's ``md_ticks`` stream (every trade, for the holder's price watch)."""

    def __init__(self, redis: aioredis.Redis, keys: KisKeys, clock: Clock) -> None:
        self.redis = redis
        self.keys = keys
        self.clock = clock
        self.written = 0

    async def __call__(self, trade: Trade) -> None:
        raw = encode_trade(self.clock.now(), trade)
        ticks = self.keys.md_ticks(trade.symbol)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(self.keys.md_trades, trade.symbol, raw)
            pipe.pexpire(self.keys.md_trades, DAY_MS)
            pipe.xadd(ticks, {"trade": raw}, maxlen=TICKS_MAXLEN, approximate=True)
            pipe.pexpire(ticks, DAY_MS)
            await pipe.execute()
        self.written += 1


# ----- fill notices -----------------------------------------------------------------------------


class NoticeRouter:
    """Routes each fill notice to the stream of the worker holding its symbol (see the module
    docstring). Holders are read afresh for each batch of notices that arrived together."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: KisKeys,
        holders: Holders,
        clock: Clock,
        *,
        maxlen: int = FILLS_MAXLEN,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.holders = holders
        self.clock = clock
        self.maxlen = maxlen
        self.routed = 0
        self.unrouted = 0

    async def route(self, notices: Sequence[FillNotice]) -> list[str | None]:
        """Send `notices` to their owners' streams; the owner of each (None: nobody holds it)."""
        holders = await self.holders()
        owners: list[str | None] = []
        async with self.redis.pipeline(transaction=False) as pipe:
            for notice in notices:
                owner = holders.get(notice.symbol)
                if owner is None or owner == "quarantine":
                    self.unrouted += 1
                    logger.warning("fill notice for order {} on {}: no worker holds the symbol; "
                                   "left to polling and reconciliation", notice.broker_order_id,
                                   notice.symbol)  # fmt: skip
                    owners.append(None)
                    continue
                stream = self.keys.fills(owner)
                pipe.xadd(stream, _hint_fields(notice, self.clock.now()), maxlen=self.maxlen,
                          approximate=True)  # fmt: skip
                pipe.pexpire(stream, DAY_MS)
                owners.append(owner)
                self.routed += 1
            await pipe.execute()
        return owners

    async def run(self, receive: MemoryObjectReceiveStream[FillNotice]) -> NoReturn:
        """Route every notice `receive` yields; notices that queued up go together."""
        async with receive:
            async for first in receive:
                batch = [first]
                while True:
                    try:
                        batch.append(receive.receive_nowait())
                    except anyio.WouldBlock:
                        break
                try:
                    await self.route(batch)
                except Exception as exc:  # Redis or the holders' store away (their own errors)
                    self.unrouted += len(batch)
                    logger.warning("{} fill notice(s) not routed, left to polling: {!r}",
                                   len(batch), exc)  # fmt: skip
        raise AssertionError("the notice feed never ends")  # pragma: no cover


def _hint_fields(notice: FillNotice, now: datetime) -> dict[Any, Any]:
    return {
        "odno": notice.broker_order_id,
        "symbol": notice.symbol,
        "side": notice.side.value,
        "executed": "1" if notice.executed else "0",
        "qty": str(notice.qty),
        "price": str(notice.price),
        "at": notice.at,
        "routed_at": now.isoformat(),
    }


# ----- the services -----------------------------------------------------------------------------

#: Builds the lock-holder reader from the gateway's context (the wiring in `worker` passes it).
HoldersOf = Callable[["GatewayContext"], Holders]


async def publish_market_data(
    ctx: GatewayContext,
    *,
    holders_of: HoldersOf | None = None,
    universe: Sequence[str] | None = None,
    n_bars: int = 60,
    interval_s: float = INTERVAL_S,
) -> None:
    """Gateway service: `MarketDataPublisher` through the gateway's market-data lane. The mock
    domain has no volume ranking: without `universe` (or ``KIS_UNIVERSE``, the config's) it
    publishes `DEFAULT_UNIVERSE`."""
    if universe is None:
        universe = ctx.config.universe
    if universe is None and ctx.config.domain == "mock":
        universe = DEFAULT_UNIVERSE
    client = ctx.client("market-data")
    try:
        publisher = MarketDataPublisher(
            client.get,
            ctx.redis,
            ctx.keys,
            ctx.clock,
            universe=universe,
            n_bars=n_bars,
            interval_s=interval_s,
            holders=holders_of(ctx) if holders_of is not None else None,
            gateway_id=ctx.gateway_id,
        )
        await publisher.run()
    finally:
        with anyio.CancelScope(shield=True):
            await client.aclose()


async def realtime(ctx: GatewayContext, *, holders_of: HoldersOf, held_poll_s: float = 1.0) -> None:
    """Gateway service: the app key's WebSocket session. Fill notices (when ``KIS_HTS_ID`` is
    set) go to their owners' streams; the trades of the symbols the fleet holds, re-read every
    `held_poll_s`, go to ``md_trades``."""
    holders = holders_of(ctx)
    notices = bool(ctx.config.hts_id)
    if not notices:
        logger.warning("KIS_HTS_ID is not set: no fill notices; orders are followed by polling")
    writer = TradeWriter(ctx.redis, ctx.keys, ctx.clock)
    feed = KisNoticeFeed(ctx, notices=notices, on_trade=writer)
    router = NoticeRouter(ctx.redis, ctx.keys, holders, ctx.clock)
    send, receive = anyio.create_memory_object_stream[FillNotice](1_000)
    async with anyio.create_task_group() as tg:
        tg.start_soon(feed.run, send)
        tg.start_soon(router.run, receive)
        while True:
            try:
                feed.watch_trades(list(await holders()))
            except Exception as exc:  # the holders' store away: keep watching what we watch
                logger.warning("held symbols unreadable, trades watched as before: {!r}", exc)
            await anyio.sleep(held_poll_s)
