"""`KisMarketData`: the `MarketData` port over KIS quotations (REST polling).

* `quote` -> ``inquire-price`` (last, day range, volume and value, base price = prior close,
  the day's limits, ``rprs_mrkt_kor_name`` for the board) + ``inquire-asking-price-exp-ccn``
  (best bid/ask and their sizes) + ``inquire-time-itemchartprice`` (minute closes for the short
  moving average): three requests.
* `instruments` -> the universe: the ``volume-rank`` list (at most 30 names, KIS offers no
  next page; risk-flagged, administrative, halted, preferred, ETF/ETN and SPAC names left out by
  `RANK_EXCLUSIONS`) unless a fixed `universe` is given, each described once per day from
  ``inquire-price`` and ``inquire-daily-itemchartprice`` (previous session's high/low, and the
  average traded value of the last sessions, which sets the liquidity tier).
* `snapshot` -> for each instrument: price, orderbook and ``ceil(n_bars / 30) + 1`` minute-bar
  calls (the bar still forming is left out, so 60 bars take 3 calls): 5 requests per name (150
  for 30 names: 7.5 s at 20 req/s, 75 s at the mock domain's 2 req/s). A snapshot is reused for
  `snapshot_ttl_s` clock seconds by every worker of this process.

The requests themselves are module functions over any `Quotations` (`fetch_price`,
`fetch_book`, `fetch_bars`, `describe`, `ranked`), so the gateway's market-data publisher
(`broker.kis.fanout`) asks KIS exactly as this class does, through its own request budget.

Limits: the scan over the whole KRX universe (~2,500 names, one WebSocket session of about 40
subscriptions per app key) needs one gateway process that owns the real-time feed and fans out
to the workers; over REST the universe is capped at the volume-rank list. ``volume-rank`` is not
offered on the mock-trading domain: there a fixed `universe` must be given (`DEFAULT_UNIVERSE`
when built from settings). Minute bars are taken to be labelled with the minute they start
(``stck_cntg_hour`` ``HHMM00``); the bar still forming is left out.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol, TypeVar

import anyio
import numpy as np

from broker.kis import wire
from broker.kis.client import KisClient, KisReply, TrId
from market.clock import KST, Clock
from market.ticks import tick_size
from market.types import Board, Instrument, Quote, Snapshot, Tier, range_ratio

#: Liquid KOSPI names used where volume-rank is unavailable (mock domain) and none are given.
DEFAULT_UNIVERSE = (
    "005930", "000660", "005380", "035420", "051910",
    "006400", "068270", "105560", "055550", "035720",
)  # fmt: skip

#: Average won traded per session at which a name enters a tier (THIN below the first).
#: Chosen to match the simulated market's tiers (market.paths: won per average minute x 390).
TIER_FLOORS = (
    (Tier.HIGH, Decimal("90e9")),
    (Tier.MID, Decimal("17e9")),
    (Tier.LOW, Decimal("3e9")),
)
#: volume-rank's FID_TRGT_EXLS_CLS_CODE: ten 0/1 flags, 1 = leave out, in KIS's order:
#: investment risk/warning/caution, administrative issue, liquidation trading, unfaithful
#: disclosure, preferred share, trading halt, ETF, ETN, no credit orders, SPAC. Everything but
#: "no credit orders" is left out: a cash day-trader wants plain, tradable common stock.
RANK_EXCLUSIONS = "1111111101"
_MINUTE = timedelta(minutes=1)
T = TypeVar("T")
_CONCURRENCY = 8  # requests in flight per process; the fleet-wide limiter paces them anyway


class Quotations(Protocol):
    """What asks KIS a quotation: `KisClient.get`, or the gateway's market-data lane."""

    async def __call__(self, path: str, tr: TrId, params: dict[str, str], /) -> KisReply: ...


def tier_of(avg_traded_value: Decimal) -> Tier:
    for tier, floor in TIER_FLOORS:
        if avg_traded_value >= floor:
            return tier
    return Tier.THIN


def board_of(market_name: str) -> tuple[Board, bool]:
    """(board, in KOSPI 200) from inquire-price's ``rprs_mrkt_kor_name``."""
    name = market_name.upper().replace(" ", "")
    if "KOSDAQ" in name or "KSQ" in name:
        return Board.KOSDAQ, False
    return Board.KOSPI, "KOSPI200" in name


# `Quote.range_ratio` on KIS: the last completed minute's range (high - low) against the mean
# of the RANGE_BARS - 1 minutes before it. The simulated market measures against the whole day
# so far; KIS's bars come 30 to a request, so a quote reads one page (29 completed bars) and
# the window is the last 20 of them: a quote costs one bar request, as it did for the MA alone.
RANGE_BARS = 20


@dataclass(frozen=True, slots=True)
class Bar:
    """One completed minute bar (``inquire-time-itemchartprice``). `high`/`low` are None when
    the source left them out (a gateway of an earlier version published bars without them)."""

    start: datetime
    close: Decimal
    volume: int
    high: Decimal | None = None
    low: Decimal | None = None

    @property
    def range(self) -> float:
        """high - low, NaN when either is unknown (left out of `range_ratio`)."""
        if self.high is None or self.low is None:
            return math.nan
        return float(self.high - self.low)


def _bar_of(today: date, row: Mapping[str, Any]) -> Bar:
    def optional(name: str) -> Decimal | None:
        return wire.num(row, name) if wire.field(row, name) else None

    return Bar(
        wire.at(today, wire.field(row, "stck_cntg_hour")),
        wire.num(row, "stck_prpr"),
        wire.qty(row, "cntg_vol"),
        optional("stck_hgpr"),
        optional("stck_lwpr"),
    )


@dataclass(frozen=True, slots=True)
class Row:
    """What a snapshot needs of one symbol: ``inquire-price`` and ``inquire-asking-price``
    outputs (or the fields of them a snapshot and a quote read) and the completed bars."""

    price: dict[str, Any]
    book: dict[str, Any]
    bars: list[Bar]


class KisMarketData:
    """`MarketData` over KIS REST quotations (see the module docstring for the request cost)."""

    def __init__(
        self,
        client: KisClient,
        clock: Clock,
        *,
        universe: Sequence[str] | None = None,
        snapshot_ttl_s: float = 10.0,
        rank_exclusions: str = RANK_EXCLUSIONS,
    ) -> None:
        if len(rank_exclusions) != 10 or set(rank_exclusions) - {"0", "1"}:
            raise ValueError(f"rank_exclusions must be ten 0/1 flags, got {rank_exclusions!r}")
        self.rank_exclusions = rank_exclusions
        self.client = client
        self.clock = clock
        if client.config.universe:  # KIS_UNIVERSE: the configured names win over a default
            universe = client.config.universe
        self.universe = tuple(universe) if universe is not None else None
        self.snapshot_ttl_s = snapshot_ttl_s
        self._instruments: dict[str, Instrument] | None = None
        self._described: dict[str, Instrument] = {}
        self._snapshot: tuple[int, Snapshot] | None = None
        self._lock = anyio.Lock()
        self._limit = anyio.CapacityLimiter(_CONCURRENCY)

    async def instruments(self) -> Sequence[Instrument]:
        async with self._lock:
            if self._instruments is None:
                names = await self._ranked() if self.universe is None else {}
                symbols = list(names) if self.universe is None else list(self.universe)
                described = await self._each(symbols, lambda s: self._describe(s, names.get(s)))
                self._instruments = {i.symbol: i for i in described}
        return list(self._instruments.values())

    async def quote(self, symbol: str, short_ma_bars: int = 5) -> Quote:
        inst = await self._instrument(symbol)
        price = await self._price(symbol)
        book = await self._book(symbol)
        # one page of bars serves both the short MA and the range ratio (RANGE_BARS)
        bars = await self._bars(symbol, max(short_ma_bars, RANGE_BARS))
        return quote_of(inst, self.clock.now(), price, book, bars, short_ma_bars)

    async def snapshot(self, n_bars: int) -> Snapshot:
        cached = self._snapshot
        now = self.clock.now()
        if (
            cached
            and cached[0] == n_bars
            and (now - cached[1].at).total_seconds() < self.snapshot_ttl_s
        ):
            return cached[1]
        instruments = list(await self.instruments())
        fetched = await self._each(
            [i.symbol for i in instruments],
            lambda s: self._snapshot_row(s, n_bars),
        )
        snap = assemble(self.clock.now(), instruments, fetched, n_bars)
        self._snapshot = (n_bars, snap)
        return snap

    # ----- requests -----------------------------------------------------------------------

    async def _ranked(self) -> dict[str, str]:
        return await ranked(self.client.get, self.rank_exclusions)

    async def _price(self, symbol: str) -> dict[str, Any]:
        return await fetch_price(self.client.get, symbol)

    async def _book(self, symbol: str) -> dict[str, Any]:
        return await fetch_book(self.client.get, symbol)

    async def _bars(self, symbol: str, n: int) -> list[Bar]:
        return await fetch_bars(self.client.get, symbol, n, self.clock.now())

    async def _describe(self, symbol: str, name: str | None) -> Instrument:
        if symbol in self._described:
            return self._described[symbol]
        today = self.clock.now().astimezone(KST).date()
        inst = await describe(self.client.get, symbol, name, today)
        self._described[symbol] = inst
        return inst

    async def _instrument(self, symbol: str) -> Instrument:
        if self._instruments is not None and symbol in self._instruments:
            return self._instruments[symbol]
        return await self._describe(symbol, None)  # e.g. a position adopted from elsewhere

    async def _snapshot_row(self, symbol: str, n_bars: int) -> Row:
        price = await self._price(symbol)
        return Row(price, await self._book(symbol), await self._bars(symbol, n_bars))

    async def _each(self, symbols: Sequence[str], fetch: Callable[[str], Awaitable[T]]) -> list[T]:
        results: dict[int, T] = {}

        async def one(i: int, symbol: str) -> None:
            async with self._limit:
                results[i] = await fetch(symbol)

        async with anyio.create_task_group() as tg:
            for i, symbol in enumerate(symbols):
                tg.start_soon(one, i, symbol)
        return [results[i] for i in range(len(symbols))]


# ----- the requests, over any `Quotations` ----------------------------------------------------


async def ranked(get: Quotations, exclusions: str = RANK_EXCLUSIONS) -> dict[str, str]:
    """symbol -> name of today's volume ranking (one request; real domain only)."""
    params = {
        "FID_COND_MRKT_DIV_CODE": "J",
        "FID_COND_SCR_DIV_CODE": "20171",
        "FID_INPUT_ISCD": "0000",
        "FID_DIV_CLS_CODE": "0",
        "FID_BLNG_CLS_CODE": "0",  # by average volume
        "FID_TRGT_CLS_CODE": "111111111",
        "FID_TRGT_EXLS_CLS_CODE": exclusions,
        "FID_INPUT_PRICE_1": "",
        "FID_INPUT_PRICE_2": "",
        "FID_VOL_CNT": "",
        "FID_INPUT_DATE_1": "",
    }
    reply = await get(wire.VOLUME_RANK, wire.TR_VOLUME_RANK, params)
    found = {
        wire.field(r, "mksc_shrn_iscd"): wire.field(r, "hts_kor_isnm")
        for r in wire.rows(reply.body, "output")
    }
    return {s: n for s, n in found.items() if s}


async def fetch_price(get: Quotations, symbol: str) -> dict[str, Any]:
    """``inquire-price``'s output (one request)."""
    params = {"FID_COND_MRKT_DIV_CODE": "J", "FID_INPUT_ISCD": symbol}
    return wire.output((await get(wire.PRICE, wire.TR_PRICE, params)).body)


async def fetch_book(get: Quotations, symbol: str) -> dict[str, Any]:
    """``inquire-asking-price-exp-ccn``'s output1, the ten levels a side (one request)."""
    params = {"FID_COND_MRKT_DIV_CODE": "J", "FID_INPUT_ISCD": symbol}
    reply = await get(wire.ASKING_PRICE, wire.TR_ASKING_PRICE, params)
    return wire.output(reply.body, "output1")


async def fetch_bars(
    get: Quotations, symbol: str, n: int, now: datetime, known: Sequence[Bar] = ()
) -> list[Bar]:
    """The last `n` completed one-minute bars of today, oldest first (fewer early on).

    Pages of 30 are asked from `now` backwards (``ceil(n / 30) + 1`` requests at most), each
    from the start of the previous page's oldest bar: the bar a page's hour falls in is still
    forming as of that hour and is left out (asking from a minute's first second would give
    that minute a zero-length bar, read as complete). With
    `known`, completed bars read earlier (a completed bar never changes), paging stops as soon
    as a page reaches the newest known bar: a caller that asks every few minutes spends one
    request. Known bars that no page joined up with are dropped, never left beside a gap.
    """
    now = now.astimezone(KST)
    today = now.date()
    earlier = {b.start: b for b in known if b.start.date() == today and b.start + _MINUTE <= now}
    newest_known = max(earlier) if earlier else None
    bars: dict[datetime, Bar] = {}
    joined = False
    cursor = now
    for _ in range(math.ceil(n / wire.BARS_PER_CALL) + 1):
        params = {
            "FID_ETC_CLS_CODE": "",
            "FID_COND_MRKT_DIV_CODE": "J",
            "FID_INPUT_ISCD": symbol,
            "FID_INPUT_HOUR_1": cursor.strftime("%H%M%S"),
            "FID_PW_DATA_INCU_YN": "Y",
        }
        reply = await get(wire.MINUTE_BARS, wire.TR_MINUTE_BARS, params)
        page = [
            _bar_of(today, r)
            for r in wire.rows(reply.body, "output2")
            if wire.field(r, "stck_bsop_date") == wire.ymd(today)
        ]
        if not page:
            break
        # a bar is complete once its minute ended before the cursor: the page's newest bar is
        # the one still forming at the cursor (cut off there), never kept
        bars.update((b.start, b) for b in page if b.start + _MINUTE <= cursor)
        oldest = min(b.start for b in page)
        if newest_known is not None and oldest <= newest_known:
            joined = True
            break
        if len(bars) >= n or oldest >= cursor:
            break
        cursor = oldest  # the next page: up to the start of this page's oldest bar
        if cursor.date() != today:
            break
    if joined:
        bars = {**earlier, **bars}
    return sorted(bars.values(), key=lambda b: b.start)[-n:]


async def describe(get: Quotations, symbol: str, name: str | None, today: date) -> Instrument:
    """One instrument as of `today`: board and prior close from ``inquire-price``, the previous
    session's high/low and the tier (average traded value of the last five sessions) from
    ``inquire-daily-itemchartprice`` (two requests)."""
    price = await fetch_price(get, symbol)
    params = {
        "FID_COND_MRKT_DIV_CODE": "J",
        "FID_INPUT_ISCD": symbol,
        "FID_INPUT_DATE_1": wire.ymd(today - timedelta(days=14)),
        "FID_INPUT_DATE_2": wire.ymd(today),
        "FID_PERIOD_DIV_CODE": "D",
        "FID_ORG_ADJ_PRC": "0",
    }
    reply = await get(wire.DAILY_BARS, wire.TR_DAILY_BARS, params)
    before = [r for r in wire.rows(reply.body, "output2") if wire.field(r, "stck_bsop_date")
              and wire.parse_day(wire.field(r, "stck_bsop_date")) < today]  # fmt: skip
    before.sort(key=lambda r: wire.field(r, "stck_bsop_date"), reverse=True)
    prev_close = wire.num(price, "stck_sdpr")
    prev = before[0] if before else {}
    recent = [wire.num(r, "acml_tr_pbmn") for r in before[:5]]
    avg_value = sum(recent, Decimal(0)) / len(recent) if recent else Decimal(0)
    board, kospi200 = board_of(wire.field(price, "rprs_mrkt_kor_name"))
    return Instrument(
        symbol=symbol,
        name=name or wire.field(wire.output(reply.body, "output1"), "hts_kor_isnm") or symbol,
        board=board,
        tier=tier_of(avg_value),
        prev_close=prev_close,
        prev_high=wire.num(prev, "stck_hgpr") if prev else prev_close,
        prev_low=wire.num(prev, "stck_lwpr") if prev else prev_close,
        kospi200=kospi200,
    )


def quote_of(
    inst: Instrument,
    at: datetime,
    price: Mapping[str, Any],
    book: Mapping[str, Any],
    bars: Sequence[Bar],
    short_ma_bars: int,
) -> Quote:
    """A `Quote` from ``inquire-price`` and ``inquire-asking-price`` fields and completed bars
    (the short moving average over the last `short_ma_bars` of them, None with fewer; the range
    ratio over the last `RANGE_BARS` of them)."""
    last = list(bars)[-short_ma_bars:] if short_ma_bars > 0 else []
    short_ma = (
        sum((b.close for b in last), Decimal(0)) / len(last)
        if len(last) >= short_ma_bars > 0
        else None
    )
    return Quote(
        symbol=inst.symbol,
        at=at,
        price=wire.num(price, "stck_prpr"),
        bid=wire.num(book, "bidp1"),
        ask=wire.num(book, "askp1"),
        bid_qty=wire.qty(book, "bidp_rsqn1"),
        ask_qty=wire.qty(book, "askp_rsqn1"),
        volume=wire.qty(price, "acml_vol"),
        traded_value=wire.num(price, "acml_tr_pbmn"),
        day_high=wire.num(price, "stck_hgpr"),
        day_low=wire.num(price, "stck_lwpr"),
        prev_close=wire.num(price, "stck_sdpr"),
        prev_high=inst.prev_high,
        prev_low=inst.prev_low,
        upper_limit=wire.num(price, "stck_mxpr"),
        lower_limit=wire.num(price, "stck_llam"),
        tier=inst.tier,
        short_ma=short_ma,
        range_ratio=range_ratio([b.range for b in list(bars)[-RANGE_BARS:]]),
    )


def assemble(
    at: datetime, instruments: Sequence[Instrument], rows: Sequence[Row], n: int
) -> Snapshot:
    count = len(instruments)
    closes = np.full((count, n), np.nan)
    volumes = np.zeros((count, n))
    for i, row in enumerate(rows):
        bars = row.bars[-n:]
        if bars:
            closes[i, n - len(bars) :] = [float(b.close) for b in bars]
            volumes[i, n - len(bars) :] = [float(b.volume) for b in bars]

    def col(name: str, source: str = "price") -> Any:
        return np.array([float(wire.num(getattr(r, source), name)) for r in rows], dtype=np.float64)

    price = col("stck_prpr")
    return Snapshot(
        at=at,
        trading_day=at.astimezone(KST).date(),
        symbols=tuple(i.symbol for i in instruments),
        price=price,
        bid=col("bidp1", "book"),
        ask=col("askp1", "book"),
        tick=np.array([float(tick_size(Decimal(str(p)))) if p > 0 else 1.0 for p in price]),
        volume=col("acml_vol"),
        traded_value=col("acml_tr_pbmn"),
        day_high=col("stck_hgpr"),
        day_low=col("stck_lwpr"),
        prev_close=np.array([float(i.prev_close) for i in instruments]),
        prev_high=np.array([float(i.prev_high) for i in instruments]),
        prev_low=np.array([float(i.prev_low) for i in instruments]),
        tier=np.array([int(i.tier) for i in instruments], dtype=np.int64),
        closes=closes,
        volumes=volumes,
    )
