"""`PaperBroker`: the `Broker` and `MarketData` ports over a `SimulatedMarket`.

Matching (all of it lazy: every call first advances the book to `clock.now()`, so the result
does not depend on how often anyone polls):

* Continuous trading. A MARKET order walks the opposite side of the simulated book at
  submission (up to ten levels), so a larger order fills deeper and pays more slippage; what is
  left keeps working and walks the fresh book of each later minute. A LIMIT order takes what
  is marketable up to its limit at submission and rests; in later minutes it takes marketable
  depth again, or, if the market printed at or through the limit, fills at the limit against
  that minute's top-of-book size. Depth taken by our orders is remembered per symbol, side and
  minute, so several orders (and several workers sharing this broker) cannot take the same
  shares twice; depth replenishes each simulated minute, deeper for more liquid tiers.
* Volatility interruption (`SimulatedMarket.interruptions`: two minutes from the instant a
  symbol's price breaches the static or dynamic VI band). No continuous matching for that
  symbol: orders submitted meanwhile and the remaining quantity of working ones collect; at the
  VI's end they execute in full at its single price (the simulated price at that instant,
  on the grid, inside the limits) if they cross (MARKET, BUY limit >= price, SELL limit <=
  price); the rest keeps working in continuous trading again. A VI that runs into the closing
  auction merges into it.
* Closing auction (continuous_close .. close). New orders and every remaining quantity are
  collected; once the clock reaches the close they execute in full at the auction price
  (MARKET orders and crossing LIMIT orders); everything else expires.
* After the close, remaining quantity has expired: remaining_qty 0, not canceled, not filled.

Fees and taxes are not the broker's business: the ledger derives them from the fills with
`market.costs`. The account (`account`) is derived from the executions: holdings per symbol on
an average-cost basis and, when a `costs` model is given, cash = the starting `cash` − bought −
sold amounts with commission and taxes per execution (as an exchange account moves); without
one the account's cash is None (not modelled). The order bookkeeping, the account and the
closing auction are shared with `BarBroker` (`broker.simbook.SimBook`). Not modelled: checks
of orders against cash and holdings (a SELL is not checked against a position), order
amendment, IOC/FOK, our own market impact on the printed prices, depth at the VI auction (like
the closing auction, it fills crossing orders in full).

Concurrency: one instance may be shared by many tasks of one event loop; each method mutates
state without awaiting in between, so calls are atomic with respect to each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING

import anyio.lowlevel

from broker.errors import BrokerUnavailable, OrderOutcomeUnknown
from broker.port import Broker, MarketData, OrderAck, OrderRequest, Side
from broker.simbook import SimBook, SimOrder, crosses
from market.clock import Clock
from market.costs import CostModel
from market.sim import Phase, SimulatedMarket
from market.types import Board, Instrument, Quote, Snapshot

#: Book levels a MARKET order may walk in one minute.
WALK_LEVELS = 10
_MINUTE = timedelta(minutes=1)
_EPSILON = timedelta(microseconds=1)


@dataclass(kw_only=True)
class _Order(SimOrder):
    evaluated_until: datetime  # continuous matching has run up to this instant


class PaperBroker(SimBook[_Order]):
    """Simulated KRX brokerage account (orders and market data) over a `SimulatedMarket`.

    Fault injection for reconciliation tests: the next `outcome_unknown` submits place the
    order and then raise `OrderOutcomeUnknown`; the next `unavailable` submits raise
    `BrokerUnavailable` without placing anything (constructor arguments or `inject_faults`).
    """

    def __init__(
        self,
        market: SimulatedMarket,
        clock: Clock,
        *,
        first_order_no: int = 1,
        outcome_unknown: int = 0,
        unavailable: int = 0,
        cash: Decimal = Decimal(0),
        costs: CostModel | None = None,
    ) -> None:
        super().__init__(
            clock, market.session, cash=cash, costs=costs, first_order_no=first_order_no
        )
        self.market = market
        # Shares our orders took from the opposite book: (symbol, side, minute, passive) -> qty.
        self._taken: dict[tuple[str, Side, int, bool], int] = {}
        self._faults_unknown = 0
        self._faults_unavailable = 0
        self.inject_faults(outcome_unknown=outcome_unknown, unavailable=unavailable)

    def inject_faults(self, *, outcome_unknown: int = 0, unavailable: int = 0) -> None:
        """Make the next submits fail (unavailable ones are consumed first)."""
        if outcome_unknown < 0 or unavailable < 0:
            raise ValueError("fault counts must be >= 0")
        self._faults_unknown += outcome_unknown
        self._faults_unavailable += unavailable

    # ----- Broker -------------------------------------------------------------------------

    async def submit_order(self, request: OrderRequest) -> OrderAck:
        await anyio.lowlevel.checkpoint()
        now = self.clock.now()
        self._advance(now)
        if self._faults_unavailable:
            self._faults_unavailable -= 1
            raise BrokerUnavailable("injected fault: broker unavailable, nothing placed")
        self._validate(request, now)
        order = _Order(
            broker_order_id=self._next_id(),
            request=request,
            ordered_at=now,
            remaining=request.qty,
            evaluated_until=now,
            updated_at=now,
        )
        self._place(order)
        halted = self.market.interruption_at(request.symbol, now) is not None
        if self.market.phase(now) is Phase.CONTINUOUS and not halted:
            self._take(order, now, self.market.minute_of(now)[0])
            self._prune()
        if self._faults_unknown:
            self._faults_unknown -= 1
            raise OrderOutcomeUnknown("injected fault: order placed, reply lost")
        return OrderAck(order.broker_order_id, now)

    # ----- MarketData ---------------------------------------------------------------------

    async def instruments(self) -> Sequence[Instrument]:
        await anyio.lowlevel.checkpoint()
        return self.market.instruments

    async def snapshot(self, n_bars: int) -> Snapshot:
        await anyio.lowlevel.checkpoint()
        return self.market.snapshot(self.clock.now(), n_bars)

    async def quote(self, symbol: str, short_ma_bars: int = 5) -> Quote:
        await anyio.lowlevel.checkpoint()
        return self.market.quote(symbol, self.clock.now(), short_ma_bars)

    async def wait_price(
        self,
        symbol: str,
        below: Decimal | None,
        above: Decimal | None,
        timeout_s: float,
    ) -> bool:
        """`PriceWatch`: sleeps (on the clock) to the first print through a level, exactly."""
        now = self.clock.now()
        deadline = now + timedelta(seconds=max(0.0, timeout_s))
        hit = self.market.first_touch(symbol, below, above, now, deadline)
        await self.clock.sleep(((hit or deadline) - now).total_seconds())
        return hit is not None

    # ----- internals ----------------------------------------------------------------------

    def _limits(self, symbol: str) -> tuple[Decimal, Decimal] | None:
        try:
            return self.market.limits(symbol)
        except KeyError:
            return None

    def _board(self, symbol: str) -> Board:
        return self.market.instrument(symbol).board

    def _closing_price(self, symbol: str) -> Decimal | None:
        return self.market.auction_price(symbol)

    def _advance(self, now: datetime) -> None:
        """Run matching for every working order up to `now` (idempotent)."""
        session = self.market.session
        horizon = min(now, session.continuous_close)
        for order in self._working:
            self._run_continuous(order, horizon)
        if now >= session.close and not self._auction_done:
            self._auction_done = True
            self._run_auction()
        self._prune()

    def _run_continuous(self, order: _Order, horizon: datetime) -> None:
        """Match `order` minute by minute from where it stopped up to `horizon`."""
        session = self.market.session
        symbol = order.request.symbol
        t = max(order.evaluated_until, session.open)
        while t < horizon and order.remaining > 0:
            vi = self.market.interruption_at(symbol, t)
            if vi is not None:
                if vi.end > horizon or vi.end >= session.continuous_close or vi.price is None:
                    break  # still collecting (or handed over to the closing auction)
                if crosses(order.request, vi.price):
                    order.fill(order.remaining, vi.price, vi.end)
                t = vi.end
                continue
            m, _ = self.market.minute_of(t)
            minute_end = session.open + (m + 1) * _MINUTE
            upcoming = self.market.next_interruption(symbol, t)
            stop = minute_end if upcoming is None else min(minute_end, upcoming.start)
            end = min(horizon, stop)
            # The breaching print starts the VI instead of trading: match only up to before it.
            last = end - _EPSILON if upcoming is not None and end == upcoming.start else end
            if last > t:
                # The book at `last` would already be the next minute's on a boundary.
                probe = last if last < minute_end else minute_end - _EPSILON
                if not self._take(order, probe, m):
                    self._rest(order, t, last, m)
            t = end
        order.evaluated_until = max(order.evaluated_until, horizon)

    def _take(self, order: _Order, at: datetime, minute: int) -> bool:
        """Walk the opposite book at `at` up to the limit; True if anything was marketable."""
        r = order.request
        bids, asks = self.market.book(r.symbol, at, WALK_LEVELS)
        levels = asks if r.side is Side.BUY else bids
        key = (r.symbol, r.side, minute, False)
        skip = self._taken.get(key, 0)  # our earlier takes this minute ate the top levels
        marketable = False
        for price, size in levels:
            if r.price is not None and (price > r.price if r.side is Side.BUY else price < r.price):
                break
            marketable = True
            left = size - skip
            skip = max(0, -left)
            if left <= 0:
                continue
            qty = min(order.remaining, left)
            order.fill(qty, price, at)
            self._taken[key] = self._taken.get(key, 0) + qty
            if order.remaining == 0:
                break
        return marketable

    def _rest(self, order: _Order, start: datetime, end: datetime, minute: int) -> None:
        """A resting LIMIT fills at its limit if the market printed at or through it."""
        r = order.request
        if r.price is None or start >= end:
            return
        low, high = self.market.traded_range(r.symbol, start, end)
        if not (low <= r.price if r.side is Side.BUY else high >= r.price):
            return
        probe = end - _EPSILON
        bids, asks = self.market.book(r.symbol, probe, 1)
        top = (bids if r.side is Side.BUY else asks)[:1]
        if not top:
            return
        key = (r.symbol, r.side, minute, True)
        left = top[0][1] - self._taken.get(key, 0)
        if left <= 0:
            return
        qty = min(order.remaining, left)
        order.fill(qty, r.price, probe)
        self._taken[key] = self._taken.get(key, 0) + qty


if TYPE_CHECKING:  # mypy proves PaperBroker satisfies both ports

    def _ports(broker: PaperBroker) -> tuple[Broker, MarketData]:
        return broker, broker
