"""`Venue`: the exchange's state: accounts, orders, matching, fill notices, faults and counts.

Matching is `broker.paper.PaperBroker` over `market.sim.SimulatedMarket` (continuous trading,
VI auctions, the closing auction; one PaperBroker for every account, so orders of all accounts
share the simulated book's depth). The venue adds what a brokerage adds around it: order
numbers (ODNO, ten digits, one sequence for every row including cancel rows), accounts with cash
and holdings checked at order time, KIS refusal codes, and the fill notices of every execution
(one notice per execution at one price, as KRX reports it).

`sync()` advances matching to the clock and applies new executions; the server calls it every
~100 ms of wall time and before every trading request, so fills arrive without anyone polling.
Every mutation runs under one lock (PaperBroker awaits a checkpoint before acting).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

import anyio

from broker.errors import OrderRejected
from broker.paper import PaperBroker
from exchange import errors
from exchange.accounts import AccountState, Holding
from exchange.config import ORGNO, ExchangeConfig
from exchange.traits import Traits, symbol_traits
from market.calendar import Session, default_calendar
from market.clock import Clock
from market.costs import CostModel
from market.orders import BrokerOrderId, OrderRequest, OrderType, Side
from market.sim import Phase, SimulatedMarket
from market.ticks import is_on_grid

LIMIT, MARKET = "00", "01"


@dataclass
class VenueOrder:
    """One row of inquire-daily-ccld: an order, or the cancel row pointing at one."""

    odno: str
    account: AccountState
    symbol: str
    side: Side
    dvsn: str  # ORD_DVSN: "00" limit, "01" market
    qty: int
    price: Decimal  # 0 for a market order
    ordered_at: datetime
    broker_id: BrokerOrderId | None  # None for a cancel row
    orgn_odno: str = ""  # cancel rows: the order they cancel
    excg: str = "KRX"
    remaining: int = 0
    filled_qty: int = 0
    filled_amount: Decimal = Decimal(0)
    canceled_qty: int = 0  # on an order: the quantity a cancel took away
    expired: bool = False  # the close ended it with quantity left
    informed_at: datetime | None = None  # time of the last notice (infm_tmd)
    applied: int = 0  # executions already applied to the account

    @property
    def is_cancel(self) -> bool:
        return bool(self.orgn_odno)

    @property
    def working(self) -> bool:
        return not self.is_cancel and self.remaining > 0


@dataclass(frozen=True)
class Notice:
    """What a fill-notice frame (H0STCNI0 / H0STCNI9) carries: an acceptance (order or cancel)
    or one execution."""

    hts_id: str
    account: str  # ten digits
    odno: str
    orgn_odno: str
    side: Side
    kind: str  # "accept" | "cancel" | "fill"
    dvsn: str
    symbol: str
    name: str
    qty: int  # the execution's quantity (fill) or the order's (accept / cancel)
    price: Decimal  # the execution's price (fill) or the order's
    at: datetime
    ord_qty: int
    ord_price: Decimal


@dataclass
class Stats:
    requests: dict[str, dict[str, int]] = field(default_factory=dict)
    rate_limited: dict[str, dict[str, int]] = field(default_factory=dict)
    ambiguous: int = 0
    dropped_notices: int = 0
    transfers: int = 0

    @staticmethod
    def bump(table: dict[str, dict[str, int]], app_key: str, tr_id: str) -> None:
        row = table.setdefault(app_key, {})
        row[tr_id] = row.get(tr_id, 0) + 1


class Faults:
    """Ambiguous order-cash replies: drawn from a seeded generator at `rate`, or forced."""

    def __init__(self, rate: float, seed: int) -> None:
        self.rate = rate
        self._rng = random.Random(seed)
        self._forced = 0

    def force_ambiguous(self, n: int = 1) -> None:
        """Make the next `n` order-cash replies ambiguous (the orders are still placed)."""
        if n < 0:
            raise ValueError("n must be >= 0")
        self._forced += n

    def draw(self) -> errors.ExchangeError | None:
        """The error to send instead of the reply to a placed order, if any."""
        if self._forced:
            self._forced -= 1
        elif not (self.rate and self._rng.random() < self.rate):
            return None
        return errors.routing_error() if self._rng.random() < 0.5 else errors.processing_timeout()


class Venue:
    """Accounts, orders and matching of one exchange (see the module docstring)."""

    def __init__(
        self, config: ExchangeConfig, clock: Clock, market: SimulatedMarket | None = None
    ) -> None:
        self.config = config
        self.clock = clock
        session = config.session or _session_of(clock.now())
        self.market = market or SimulatedMarket(config.seed, session, config.n_symbols)
        self.session: Session = self.market.session
        self.broker = PaperBroker(self.market, clock)
        self.costs = CostModel(commission_rate=config.commission_rate)
        self.accounts = {a.app_key: AccountState.open(a, self.costs) for a in config.accounts}
        self.traits: dict[str, Traits] = symbol_traits(self.market, config.seed)
        self.orders: list[VenueOrder] = []
        self._by_no: dict[str, VenueOrder] = {}
        self._next_no = config.first_order_no
        self._lock = anyio.Lock()
        self._listeners: list[Callable[[Notice], None]] = []
        self.faults = Faults(config.ambiguous_rate, config.fault_seed or config.seed)
        self.stats = Stats()
        self.listing_lag = timedelta(seconds=config.listing_lag_s)
        #: the next this many fill notices are not sent (`exchange.admin`: a lost notice)
        self.drop_fill_notices = 0

    # ----- notices --------------------------------------------------------------------------

    def listen(self, listener: Callable[[Notice], None]) -> Callable[[], None]:
        """Call `listener` with every notice from now on; returns the function that stops it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _notify(self, order: VenueOrder, kind: str, qty: int, price: Decimal, at: datetime) -> None:
        spec = order.account.spec
        notice = Notice(
            hts_id=spec.hts_id,
            account=spec.number,
            odno=order.odno,
            orgn_odno=order.orgn_odno,
            side=order.side,
            kind=kind,
            dvsn=order.dvsn,
            symbol=order.symbol,
            name=self.market.instrument(order.symbol).name,
            qty=qty,
            price=price,
            at=at,
            ord_qty=order.qty,
            ord_price=order.price,
        )
        order.informed_at = at
        if kind == "fill" and self.drop_fill_notices > 0:
            self.drop_fill_notices -= 1  # lost on the way: the execution still happened
            self.stats.dropped_notices += 1
            return
        for listener in list(self._listeners):
            listener(notice)

    # ----- queries ----------------------------------------------------------------------------

    def get(self, odno: str) -> VenueOrder | None:
        return self._by_no.get(odno.strip().lstrip("0"))

    def listed(self, account: AccountState) -> list[VenueOrder]:
        """The account's rows that inquire-daily-ccld shows now (the listing lag applies)."""
        horizon = self.clock.now() - self.listing_lag
        return [o for o in self.orders if o.account is account and o.ordered_at <= horizon]

    def reserved_cash(self, account: AccountState) -> Decimal:
        """Cash working BUYs hold back: remaining x price (market: the upper limit) + fee."""
        total = Decimal(0)
        for o in self.orders:
            if o.account is account and o.working and o.side is Side.BUY:
                total += account.buy_cost(o.remaining * self._reserve_price(o.symbol, o.price))
        return total

    def available_cash(self, account: AccountState) -> Decimal:
        return account.cash - self.reserved_cash(account)

    def sellable(self, account: AccountState, symbol: str) -> int:
        working = sum(
            o.remaining
            for o in self.orders
            if o.account is account and o.working and o.side is Side.SELL and o.symbol == symbol
        )
        return account.held(symbol) - working

    def _reserve_price(self, symbol: str, price: Decimal) -> Decimal:
        return price if price > 0 else self.market.limits(symbol)[1]

    # ----- orders -----------------------------------------------------------------------------

    async def place(
        self, app_key: str, symbol: str, side: Side, dvsn: str, qty: int, price: Decimal
    ) -> VenueOrder:
        """Validate and place one cash order; ExchangeError with KIS's code on refusal."""
        account = self.accounts[app_key]
        async with self._lock:
            await self._sync()
            now = self.clock.now()
            self._validate(account, symbol, side, dvsn, qty, price, now)
            request = OrderRequest(
                symbol=symbol,
                side=side,
                qty=qty,
                order_type=OrderType.LIMIT if dvsn == LIMIT else OrderType.MARKET,
                price=price if dvsn == LIMIT else None,
            )
            try:
                ack = await self.broker.submit_order(request)
            except OrderRejected as exc:  # the checks above should have caught it
                raise errors.ExchangeError(200, "APBK0999", exc.reason) from exc
            order = VenueOrder(
                odno=self._number(),
                account=account,
                symbol=symbol,
                side=side,
                dvsn=dvsn,
                qty=qty,
                price=price if dvsn == LIMIT else Decimal(0),
                ordered_at=ack.accepted_at,
                broker_id=ack.broker_order_id,
                remaining=qty,
            )
            self._add(order)
            self._notify(order, "accept", qty, order.price, order.ordered_at)
            await self._apply(order)  # a marketable order may have filled at once
            return order

    def _validate(
        self,
        account: AccountState,
        symbol: str,
        side: Side,
        dvsn: str,
        qty: int,
        price: Decimal,
        now: datetime,
    ) -> None:
        mock = self.config.mock
        phase = self.market.phase(now)
        if phase is Phase.PRE_OPEN:
            raise errors.before_open(mock)
        if phase is Phase.CLOSED:
            raise errors.market_closed(mock)
        try:
            lower, upper = self.market.limits(symbol)
        except KeyError:
            raise errors.not_tradable(mock) from None
        if qty <= 0:
            raise errors.bad_quantity(mock)
        if dvsn == LIMIT:
            if not is_on_grid(price):
                raise errors.off_grid(mock)
            if not lower <= price <= upper:
                raise errors.outside_limits(mock)
        elif dvsn != MARKET:
            raise errors.bad_order_division(mock)
        if side is Side.BUY:
            need = account.buy_cost(qty * self._reserve_price(symbol, price))
            if need > self.available_cash(account):
                raise errors.not_enough_cash(mock)
        elif qty > self.sellable(account, symbol):
            raise errors.not_enough_shares(mock)

    async def cancel(self, app_key: str, orgn_odno: str) -> VenueOrder:
        """Cancel everything still working of an order; returns the cancel row."""
        account = self.accounts[app_key]
        mock = self.config.mock
        async with self._lock:
            await self._sync()
            original = self.get(orgn_odno)
            if original is None or original.account is not account or original.is_cancel:
                raise errors.unknown_original(mock)
            if self.market.phase(self.clock.now()) is Phase.CLOSED:
                raise errors.market_closed(mock)
            if not original.working or original.broker_id is None:
                raise errors.nothing_to_cancel(mock)
            status = await self.broker.cancel_order(original.broker_id)
            # Matching ran up to the cancel inside the broker: what was left is what it took.
            canceled = status.qty - status.filled_qty
            original.canceled_qty = canceled
            await self._apply(original)
            original.remaining = 0
            row = VenueOrder(
                odno=self._number(),
                account=account,
                symbol=original.symbol,
                side=original.side,
                dvsn=original.dvsn,
                qty=canceled,
                price=original.price,
                ordered_at=self.clock.now(),
                broker_id=None,
                orgn_odno=original.odno,
                canceled_qty=canceled,
            )
            self._add(row)
            self._notify(row, "cancel", canceled, original.price, row.ordered_at)
            original.informed_at = row.ordered_at
            return row

    async def transfer(self, app_key: str, symbol: str, qty: int) -> int:
        """Move `qty` shares of `symbol` into (qty > 0) or out of (qty < 0) the account
        without an order and without cash (a transfer between accounts), behind the back of
        whoever trades it. Out: at most what working SELLs do not cover. Returns the holding
        after. ExchangeError for an unknown symbol or more shares than can go."""
        account = self.accounts[app_key]
        async with self._lock:
            await self._sync()
            if symbol not in self.market.symbols:
                raise errors.not_tradable(self.config.mock)
            if qty < 0 and -qty > self.sellable(account, symbol):
                raise errors.not_enough_shares(self.config.mock)
            h = account.holdings.setdefault(symbol, Holding(symbol))
            if qty > 0:
                h.cost += qty * self.market.quote(symbol, self.clock.now(), 0).price
            elif h.qty:
                h.cost -= h.cost * -qty / h.qty
            h.qty += qty
            self.stats.transfers += 1
            return h.qty

    # ----- matching ---------------------------------------------------------------------------

    async def sync(self) -> None:
        """Advance matching to the clock; apply and announce every new execution."""
        async with self._lock:
            await self._sync()

    async def _sync(self) -> None:
        for order in [o for o in self.orders if o.working]:
            await self._apply(order)

    async def _apply(self, order: VenueOrder) -> None:
        assert order.broker_id is not None
        status = await self.broker.order_status(order.broker_id)
        executions = self.broker.executions(order.broker_id)
        board = self.market.instrument(order.symbol).board
        for e in executions[order.applied :]:
            order.account.execute(order.side, order.symbol, e.qty, e.price, board, self.session.day)
            order.filled_qty += e.qty
            order.filled_amount += e.qty * e.price
            self._notify(order, "fill", e.qty, e.price, e.at)
        order.applied = len(executions)
        if order.canceled_qty == 0:
            order.remaining = status.remaining_qty
            order.expired = status.remaining_qty == 0 and status.filled_qty < order.qty
            if order.expired:
                order.informed_at = status.updated_at

    # ----- internals --------------------------------------------------------------------------

    def _number(self) -> str:
        n, self._next_no = self._next_no, self._next_no + 1
        return f"{n:010d}"

    def _add(self, order: VenueOrder) -> None:
        self.orders.append(order)
        self._by_no[order.odno.lstrip("0")] = order

    @property
    def orgno(self) -> str:
        return ORGNO


def _session_of(now: datetime) -> Session:
    calendar = default_calendar()
    found = calendar.session(now)
    return found if found is not None else calendar.next_session(now)
