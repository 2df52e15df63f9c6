"""`BarBroker`: the `Broker` and `MarketData` ports over one session of one-minute bars.

A backtest runs the trading code unchanged against this adapter: market data is the day's
`ReplayMarket` (`market.bars.DayBars.market`), orders are matched against the bars by the fill
model below. Matching is lazy (every call first advances the book to `clock.now()`), so the
result does not depend on how often anyone polls.

Fill model (`FillModel`), bar by bar, starting with the first bar that opens at or after the
order's submission (bar j covers [open + j min, open + (j+1) min)):

* MARKET: fills at the bar's open plus slippage (BUY up, SELL down) of `slippage_ticks[tier]`
  ticks, never outside the bar's low..high; executed at the bar's start.
* LIMIT, marketable at the open (BUY limit >= open, SELL limit <= open): fills at the open plus
  slippage, capped at the limit (and the bar's range); executed at the bar's start.
* LIMIT, traded through (BUY: the bar's low < limit; SELL: the bar's high > limit): fills at
  the limit; executed at the bar's end (only then is it known). A bar that only touches the
  limit does not fill it: our place in the queue at that price is unknown.
* Volume cap: in one bar, orders of one symbol and side together take at most
  `participation` x the bar's volume (rounded down); what is left keeps working on later bars
  (partial fills). A bar with no row or no volume fills nothing.
* Closing auction (continuous_close .. close): orders submitted then, and whatever is left
  working at continuous_close, execute at the close at the auction price (the file's auction
  row, else the last bar's close) if they cross (MARKET, BUY limit >= price, SELL limit <=
  price), in full; the rest expires. Orders submitted after the close are rejected.

Fees and taxes are the ledger's business (`market.costs`, by settlement date); `account` uses
the same `CostModel` so reconciliation sees the same cash. The order bookkeeping, the account
and the closing auction are shared with `PaperBroker` (`broker.simbook.SimBook`).

Limits, stated plainly: no order book (the bar is the only liquidity; spread and depth are
not known, so slippage is a per-tier constant); the volume cap uses the bar's whole volume,
also for a fill at its open (a mild look-ahead); our orders do not move the printed prices;
the closing auction fills crossing orders in full whatever their size; no volatility
interruptions (bar files carry none); a limit order's queue position is not modelled (touching
never fills, trading through always fills up to the cap).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING

import anyio.lowlevel
import numpy as np

from broker.port import Broker, MarketData, OrderAck, OrderRequest, Side
from broker.simbook import SimBook, SimOrder
from market.bars import DayBars
from market.clock import Clock
from market.costs import CostModel
from market.ticks import step
from market.types import Board, Instrument, Quote, Snapshot, Tier

_MINUTE = timedelta(minutes=1)

#: Ticks of slippage on a fill at a bar's open, by liquidity tier.
DEFAULT_SLIPPAGE_TICKS: Mapping[Tier, int] = {Tier.THIN: 3, Tier.LOW: 2, Tier.MID: 1, Tier.HIGH: 1}


@dataclass(frozen=True)
class FillModel:
    """The fill model's parameters (module docstring)."""

    participation: float = 0.10  # share of a bar's volume our orders may take, per side
    slippage_ticks: Mapping[Tier, int] = field(default_factory=lambda: dict(DEFAULT_SLIPPAGE_TICKS))

    def __post_init__(self) -> None:
        if not 0 < self.participation <= 1:
            raise ValueError("participation must be in (0, 1]")
        if any(v < 0 for v in self.slippage_ticks.values()):
            raise ValueError("slippage ticks must be >= 0")


@dataclass(kw_only=True)
class _Order(SimOrder):
    next_bar: int  # the first bar not matched yet
    open_done: int = -1  # the bar whose open has been matched


class BarBroker(SimBook[_Order]):
    """A brokerage account over one session of bars (orders and market data)."""

    def __init__(
        self,
        day: DayBars,
        clock: Clock,
        *,
        model: FillModel | None = None,
        costs: CostModel | None = None,
        cash: Decimal = Decimal(0),
        first_order_no: int = 1,
    ) -> None:
        super().__init__(clock, day.session, cash=cash, costs=costs, first_order_no=first_order_no)
        self.day = day
        self.model = model or FillModel()
        self.market = day.market(clock)
        self._index = {s: i for i, s in enumerate(day.symbols)}
        self._taken: dict[tuple[str, Side, int], int] = {}  # our shares per symbol/side/bar
        self._snapshot: tuple[tuple[datetime, int], Snapshot] | None = None  # the last one

    # ----- Broker -------------------------------------------------------------------------

    async def submit_order(self, request: OrderRequest) -> OrderAck:
        await anyio.lowlevel.checkpoint()
        now = self.clock.now()
        self._advance(now)
        self._validate(request, now)
        order = _Order(
            broker_order_id=self._next_id(),
            request=request,
            ordered_at=now,
            remaining=request.qty,
            next_bar=self._first_bar(now),
            updated_at=now,
        )
        self._place(order)
        self._advance(now)  # a bar opening right now fills at once
        return OrderAck(order.broker_order_id, now)

    # ----- MarketData ---------------------------------------------------------------------

    async def instruments(self) -> Sequence[Instrument]:
        return await self.market.instruments()

    async def snapshot(self, n_bars: int) -> Snapshot:
        """The universe now; read-only, and the same object for every caller at one instant
        (the fleet's workers scan together: a strategy may rank it once)."""
        await anyio.lowlevel.checkpoint()
        key = (self.clock.now(), n_bars)
        if self._snapshot is None or self._snapshot[0] != key:
            snap = self.market.snapshot_at(key[0], n_bars)
            for f in fields(snap):
                value = getattr(snap, f.name)
                if isinstance(value, np.ndarray):
                    value.setflags(write=False)
            self._snapshot = (key, snap)
        return self._snapshot[1]

    async def quote(self, symbol: str, short_ma_bars: int = 5) -> Quote:
        await anyio.lowlevel.checkpoint()
        return self.market.quote_at(symbol, self.clock.now(), short_ma_bars)

    # ----- matching -----------------------------------------------------------------------

    def _first_bar(self, at: datetime) -> int:
        """The first bar opening at or after `at` (n_minutes: none left, the auction's)."""
        elapsed = (at - self.session.open) / _MINUTE
        return min(max(math.ceil(elapsed), 0), self.day.n_minutes)

    def _limits(self, symbol: str) -> tuple[Decimal, Decimal] | None:
        return self.day.limits(symbol) if symbol in self._index else None

    def _board(self, symbol: str) -> Board:
        return self.day.board(symbol)

    def _closing_price(self, symbol: str) -> Decimal | None:
        return self.auction_price(symbol)

    def _advance(self, now: datetime) -> None:
        """Match every working order against the bars up to `now` (idempotent)."""
        for order in self._working:
            self._run_bars(order, now)
        if now >= self.session.close and not self._auction_done:
            self._auction_done = True
            self._run_auction()
        self._prune()

    def _run_bars(self, order: _Order, now: datetime) -> None:
        d, open_ = self.day, self.session.open
        i = self._index[order.request.symbol]
        while order.remaining > 0 and order.next_bar < d.n_minutes:
            j = order.next_bar
            start = open_ + j * _MINUTE
            if now < start:
                return
            if order.open_done < j:
                order.open_done = j
                self._at_open(order, i, j, start)
            end = start + _MINUTE
            if now < end or order.remaining == 0:
                return
            self._through(order, i, j, end)
            order.next_bar = j + 1

    def _cap(self, order: _Order, i: int, j: int) -> int:
        volume = self.day.volume[i, j]
        key = (order.request.symbol, order.request.side, j)
        return max(0, int(volume * self.model.participation) - self._taken.get(key, 0))

    def _take(self, order: _Order, j: int, qty: int, price: Decimal, at: datetime) -> None:
        order.fill(qty, price, at)
        key = (order.request.symbol, order.request.side, j)
        self._taken[key] = self._taken.get(key, 0) + qty

    def _at_open(self, order: _Order, i: int, j: int, at: datetime) -> None:
        d, r = self.day, order.request
        bar_open = d.open[i, j]
        if math.isnan(bar_open):
            return
        cap = self._cap(order, i, j)
        if cap <= 0:
            return
        first = Decimal(int(bar_open))
        slip = self.model.slippage_ticks.get(d.tier(r.symbol), 0)
        low, high = Decimal(int(d.low[i, j])), Decimal(int(d.high[i, j]))
        if r.side is Side.BUY:
            if r.price is not None and r.price < first:
                return
            price = min(step(first, slip), high)
            if r.price is not None:
                price = min(price, r.price)
        else:
            if r.price is not None and r.price > first:
                return
            price = max(step(first, -slip), low)
            if r.price is not None:
                price = max(price, r.price)
        self._take(order, j, min(order.remaining, cap), price, at)

    def _through(self, order: _Order, i: int, j: int, at: datetime) -> None:
        d, r = self.day, order.request
        if r.price is None or math.isnan(d.open[i, j]):
            return
        crossed = (
            d.low[i, j] < float(r.price) if r.side is Side.BUY else d.high[i, j] > float(r.price)
        )
        if not crossed:
            return
        cap = self._cap(order, i, j)
        if cap > 0:
            self._take(order, j, min(order.remaining, cap), r.price, at)

    def auction_price(self, symbol: str) -> Decimal | None:
        """The closing price: the auction row's, else the last bar's close (None: no bars)."""
        i = self._index[symbol]
        price = self.day.auction_price[i]
        if math.isnan(price):
            closes = self.day.close[i]
            seen = closes[~(closes != closes)]
            if not seen.size:
                return None
            price = seen[-1]
        return Decimal(int(price))


if TYPE_CHECKING:  # mypy proves BarBroker satisfies both ports

    def _ports(broker: BarBroker) -> tuple[Broker, MarketData]:
        return broker, broker
