"""Account reconciliation (`trading.reconcile`) through the real KIS adapter against the project's
exchange on loopback (tests/kis_rig.py), with the real ledger and Redis: a consistent account
raises nothing; shares sold or transferred behind the fleet's back raise the alarm (ERROR log,
``account.drift`` notice, metric, ledger row) and stop every BUY on the symbol until a later
pass finds it consistent again; a fill the ledger lacks (its notice dropped) is applied exactly
once; orders in flight raise no false drift. Also the account read itself (paging, exact
Decimals) and the fleet-wide lease the reconciler runs under.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import anyio
import httpx
import pytest
import redis.asyncio as aioredis
from kis_rig import ACCOUNT, DAY, SESSION, KisVenue, kis_venue
from loguru import logger
from support import sql

from broker.kis import KisBroker
from broker.port import OrderRequest, OrderType, Side
from coordination.keys import Keyspace
from coordination.notices import Notices, NoticeType
from coordination.singleton import RedisSingleton
from ledger.errors import SymbolDrifted
from ledger.records import OrderIntent, OrderRecord
from ledger.repository import Ledger
from market.orders import ClientOrderId
from trading.metrics import NULL_METRICS
from trading.orders import DriftRefused, Limits, OrderPlacer, Placement
from trading.reconcile import AccountReconciler, ReconcileConfig, ReconcileReport
from trading.tracker import OrderTracker
from worker.metrics import FleetMetrics, PrometheusAccountMetrics

pytestmark = pytest.mark.anyio

WORKER = "w-recon"
FENCE = 7


class Fleet:
    """The exchange, one adapter 'process', the ledger and a reconciler over them."""

    def __init__(self, venue: KisVenue, broker: KisBroker, ledger: Ledger,
                 redis: aioredis.Redis, prefix: str) -> None:  # fmt: skip
        self.venue, self.broker, self.ledger = venue, broker, ledger
        self.keys = Keyspace(prefix)
        self.notices = Notices(redis, self.keys, clock=venue.clock)
        self.metrics = PrometheusAccountMetrics.for_fleet(FleetMetrics())
        market = venue.running.venue.market
        self.boards = {i.symbol: i.board for i in market.instruments}
        self.reconciler = AccountReconciler(
            reconciler_id="reconciler-1", broker=broker, ledger=ledger, notices=self.notices,
            clock=venue.clock, session=SESSION, boards=self.boards,
            config=ReconcileConfig(interval_s=60.0), metrics=self.metrics,
        )  # fmt: skip
        self.tracker = OrderTracker(
            worker_id=WORKER, broker=broker, ledger=ledger, notices=self.notices,
            clock=venue.clock, boards=self.boards, trading_day=DAY, poll_s=1.0,
            listing_lag_s=30.0, log=logger.bind(worker=WORKER), metrics=NULL_METRICS,
        )  # fmt: skip
        self.locked: set[str] = set()

    @property
    def symbols(self) -> list[str]:
        return self.venue.symbols

    def deep(self, n: int = 0) -> str:
        """The n-th symbol by shares offered at the best ask: a small market BUY fills."""
        m, now = self.venue.running.venue.market, self.venue.clock.now()
        ranked = sorted(self.symbols, key=lambda s: -m.quote(s, now, 0).ask_qty)
        return ranked[n]

    async def lock(self, symbol: str) -> None:
        if symbol not in self.locked:
            await self.ledger.lock_acquired(symbol, WORKER, FENCE, 10_000, self.venue.clock.now())
            self.locked.add(symbol)

    def intent(self, symbol: str, side: Side, qty: int) -> OrderIntent:
        price = self.venue.running.venue.market.quote(symbol, self.venue.clock.now(), 0).price
        return OrderIntent(
            client_order_id=ClientOrderId(str(uuid.uuid4())), worker_id=WORKER, symbol=symbol,
            side=side, order_type=OrderType.MARKET, qty=qty, price=None, fence=FENCE,
            reason="test", signal_price=price, trading_day=DAY, created_at=self.venue.clock.now(),
        )  # fmt: skip

    async def claim(self, symbol: str, side: Side, qty: int) -> OrderRecord:
        """An order in the ledger claimed for sending (SUBMITTING), not sent yet."""
        await self.lock(symbol)
        order = await self.ledger.create_order(self.intent(symbol, side, qty))
        return await self.ledger.begin_submit(order.client_order_id, WORKER, FENCE)

    async def send(self, symbol: str, side: Side, qty: int, *, record_ack: bool = True,
                   order_type: OrderType = OrderType.MARKET,
                   price: Decimal | None = None) -> OrderRecord:  # fmt: skip
        """Place an order through the adapter with its intent row first; the ledger learns the
        ack (SENT) unless `record_ack` is False (the reply lost on the way: SUBMITTING)."""
        order = await self.claim(symbol, side, qty)
        ack = await self.broker.submit_order(OrderRequest(symbol, side, qty, order_type, price))
        if not record_ack:
            return order
        return await self.ledger.mark_order_sent(
            order.client_order_id, ack.broker_order_id, self.venue.clock.now()
        )

    async def settle(self, order: OrderRecord) -> OrderRecord:
        """What the owner's tracker does: apply the broker's report until the order is final."""
        assert order.broker_order_id is not None
        for _ in range(30):
            status = await self.broker.order_status(order.broker_order_id)
            order = await self.tracker.apply(order.client_order_id, status)
            if status.done:
                return order
            await self.venue.advance(60)
        raise AssertionError(f"order {order.client_order_id} never final")

    async def buy(self, symbol: str, qty: int) -> OrderRecord:
        return await self.settle(await self.send(symbol, Side.BUY, qty))

    async def admin(self, action: str, **body: Any) -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=self.venue.running.rest_url) as http:
            reply = await http.post(f"/__exchange/admin/{action}", json=body)
        assert reply.status_code == 200, reply.text
        data: dict[str, Any] = reply.json()
        return data

    async def reconcile(self) -> ReconcileReport:
        return await self.reconciler.reconcile_once()

    async def notices_of(self, *types: NoticeType) -> list[Any]:
        return [n for n in await self.notices.read("0-0", 1_000) if n.type in types]

    def drift_count(self, symbol: str, kind: str = "holding") -> float:
        value = self.metrics.drifts.labels(kind, symbol)._value.get()
        return float(value)


@pytest.fixture(params=["mock", "real"])
async def fleet(
    request: pytest.FixtureRequest, redis_client: aioredis.Redis, prefix: str, ledger: Ledger
) -> AsyncIterator[Fleet]:
    async with kis_venue(redis_client, prefix, request.param) as venue:
        broker = await venue.broker(universe=venue.symbols[:5])
        yield Fleet(venue, broker, ledger, redis_client, prefix)


@pytest.fixture
def errors() -> Any:
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="ERROR")
    yield lines
    logger.remove(sink)


async def test_account_read_pages_and_keeps_exact_decimals(fleet: Fleet) -> None:
    """Every holding across balance pages (20 a page on mock, 50 on real), with the deposit and
    buying power as exact Decimals equal to the exchange's own figures."""
    venue = fleet.venue.running.venue
    acct = next(iter(venue.accounts.values()))
    symbols = fleet.symbols[:55]
    for n, symbol in enumerate(symbols):  # transfers: no order, no cash, any number of names
        await fleet.admin("transfer", account=ACCOUNT, symbol=symbol, qty=n + 1)
    read = await fleet.broker.account()
    assert {s: h.qty for s, h in read.holdings.items()} == {s: n + 1 for n, s in enumerate(symbols)}
    assert read.cash == acct.cash
    assert read.orderable_cash == venue.available_cash(acct)
    holding = read.holdings[symbols[3]]
    assert holding.avg_price == acct.holdings[symbols[3]].avg_price.quantize(Decimal("0.0001"))
    balance_calls = [s for s in fleet.venue.recorders[0].sent if s.path.endswith("inquire-balance")]
    assert len(balance_calls) == (3 if fleet.venue.domain == "mock" else 2)


async def test_a_consistent_account_raises_nothing(fleet: Fleet, errors: list[str]) -> None:
    first, second = fleet.deep(0), fleet.deep(1)
    await fleet.reconcile()  # the start of the day: the cash baseline
    await fleet.buy(first, 10)
    bought = await fleet.buy(second, 7)
    sold = await fleet.settle(await fleet.send(second, Side.SELL, bought.filled_qty))
    assert sold.filled_qty == 7  # a closed round trip: fees and taxes in the cash
    report = await fleet.reconcile()
    assert report.checked == (first,)
    assert report.busy == ()
    assert report.cash_checked
    assert report.cash_difference is not None
    assert abs(report.cash_difference) <= Decimal(10)  # per-execution vs per-fill rounding
    assert (report.alarms, report.drifted, report.applied_fills) == (0, (), 0)
    assert await fleet.ledger.open_drifts() == []
    assert await fleet.notices_of(NoticeType.ACCOUNT_DRIFT) == []
    assert errors == []


async def test_holdings_sold_behind_the_fleets_back_raise_the_alarm_and_stop_buys(
    fleet: Fleet, errors: list[str], database_url: str
) -> None:
    symbol = fleet.deep(0)
    await fleet.reconcile()
    bought = await fleet.buy(symbol, 10)
    assert (await fleet.reconcile()).alarms == 0
    # a manual sell in the HTS app: an order of the account nobody in the fleet knows
    sale = await fleet.admin("sell", account=ACCOUNT, symbol=symbol)
    assert (sale["qty"], sale["held"]) == (bought.filled_qty, 0)

    report = await fleet.reconcile()
    assert report.drifted == (symbol,)
    assert report.alarms == 2  # the holding, and the cash the sale brought in
    # the ledger row
    rows = sql(database_url, "SELECT kind, symbol, broker_qty, ledger_qty, cleared_at "
                             "FROM account_drifts ORDER BY kind")  # fmt: skip
    assert rows == [("cash", "", None, None, None), ("holding", symbol, 0, 10, None)]
    # the ERROR log with the figures
    assert any(symbol in line and "broker qty 0, ledger qty 10" in line for line in errors)
    # the notice, shaped like risk.halt
    drifts = await fleet.notices_of(NoticeType.ACCOUNT_DRIFT)
    holding = [n for n in drifts if n.symbol == symbol]
    assert len(holding) == 1
    assert holding[0].worker_id == "reconciler-1"
    assert "the broker holds 0, the ledger 10" in holding[0].data["why"]
    assert (holding[0].data["broker_qty"], holding[0].data["ledger_qty"]) == (0, 10)
    # the metric
    assert fleet.drift_count(symbol) == 1
    assert fleet.drift_count("", "cash") == 1
    assert fleet.metrics.open._value.get() == 2

    # no BUY lands on the symbol: the scan skips it and the ledger refuses the intent
    assert symbol in (await fleet.ledger.scan_view(DAY)).drifted
    with pytest.raises(SymbolDrifted):
        await fleet.ledger.create_order(fleet.intent(symbol, Side.BUY, 1))
    placer = OrderPlacer(
        worker_id=WORKER, broker=fleet.broker, ledger=fleet.ledger, tracker=fleet.tracker,
        clock=fleet.venue.clock, trading_day=SESSION.open,
        limits=Limits(Decimal(10**9), Decimal(10**8)), log=logger,
    )  # fmt: skip
    price = fleet.intent(symbol, Side.BUY, 1).signal_price
    with pytest.raises(DriftRefused):
        await placer.place(
            Placement(symbol, Side.BUY, 1, OrderType.MARKET, None, FENCE, "test", price),
            fleet.venue.clock.now() + timedelta(minutes=1), lambda: True,
        )  # fmt: skip
    other = fleet.deep(1)  # other symbols still trade
    assert (await fleet.buy(other, 1)).filled_qty == 1
    # selling is never blocked by a drift
    await fleet.ledger.create_order(fleet.intent(symbol, Side.SELL, 1))
    buys = sql(database_url, "SELECT count(*) FROM orders WHERE symbol = %s AND side = 'BUY'",
               symbol)  # fmt: skip
    assert buys == [(1,)]

    # the same drift again: no second alarm
    errors.clear()
    assert (await fleet.reconcile()).alarms == 0
    assert len(await fleet.notices_of(NoticeType.ACCOUNT_DRIFT)) == 2
    assert errors == []
    assert fleet.drift_count(symbol) == 1


async def test_a_transfer_back_clears_the_drift(fleet: Fleet, database_url: str) -> None:
    symbol = fleet.deep(0)
    await fleet.reconcile()
    await fleet.buy(symbol, 10)
    await fleet.admin("transfer", account=ACCOUNT, symbol=symbol, qty=-4)
    report = await fleet.reconcile()
    assert report.drifted == (symbol,)
    assert report.cash_difference is not None
    assert abs(report.cash_difference) <= Decimal(10)  # a transfer moves no cash
    with pytest.raises(SymbolDrifted):
        await fleet.ledger.create_order(fleet.intent(symbol, Side.BUY, 1))

    await fleet.admin("transfer", account=ACCOUNT, symbol=symbol, qty=4)
    report = await fleet.reconcile()
    assert (report.drifted, report.cleared) == ((), (symbol,))
    rows = sql(database_url, "SELECT cleared_by, clear_reason FROM account_drifts "
                             "WHERE symbol = %s AND cleared_at IS NOT NULL", symbol)  # fmt: skip
    assert rows == [("reconciler-1", "the broker and the ledger both hold 10 again")]
    cleared = await fleet.notices_of(NoticeType.ACCOUNT_DRIFT_CLEARED)
    assert [n.symbol for n in cleared] == [symbol]
    assert (await fleet.buy(symbol, 1)).filled_qty == 1  # buying again
    assert fleet.metrics.open._value.get() == 0


async def test_a_missing_fill_is_applied_exactly_once(
    fleet: Fleet, errors: list[str], database_url: str
) -> None:
    symbol = fleet.deep(0)
    seen: list[Any] = []
    fleet.venue.running.venue.listen(lambda n: seen.append(n) if n.kind == "fill" else None)
    await fleet.admin("drop-notices", n=100)
    await fleet.reconcile()
    order = await fleet.send(symbol, Side.BUY, 10)  # filled at once; nobody applies it
    await fleet.venue.advance(5)
    # while its owner's tracker would still be polling it, the order is left alone
    assert (await fleet.reconcile()).applied_fills == 0
    await fleet.venue.advance(600)  # ... but not once the ledger has fallen behind
    assert seen == []  # the fill notices were lost
    assert fleet.venue.running.venue.stats.dropped_notices >= 1
    assert (await fleet.ledger.order(order.client_order_id)).filled_qty == 0  # type: ignore[union-attr]

    first = await fleet.reconcile()
    second = await fleet.reconcile()
    assert (first.applied_fills, second.applied_fills) == (1, 0)
    assert (first.alarms, second.alarms) == (0, 0)
    assert second.checked == (symbol,)
    fills = sql(database_url, "SELECT qty, cum_qty FROM fills WHERE order_id = %s", order.id)
    assert fills == [(10, 10)]
    record = await fleet.ledger.order(order.client_order_id)
    assert record is not None
    assert (record.status.value, record.filled_qty) == ("FILLED", 10)
    position = await fleet.ledger.open_position(symbol)
    assert position is not None
    assert position.qty == 10
    # announced like the tracker's own fills
    filled = await fleet.notices_of(NoticeType.ORDER_FILLED)
    assert [(n.symbol, n.data["cum_qty"]) for n in filled] == [(symbol, 10)]
    assert errors == []


async def test_orders_in_flight_raise_no_false_drift(fleet: Fleet, errors: list[str]) -> None:
    filled_unacked, resting = fleet.deep(0), fleet.deep(1)
    await fleet.reconcile()
    # the broker filled an order whose ack the ledger has not recorded yet (SUBMITTING)
    claimed = await fleet.send(filled_unacked, Side.BUY, 5, record_ack=False)
    # a resting BUY, SENT, not filled
    lower = fleet.venue.running.venue.market.limits(resting)[0]
    await fleet.send(resting, Side.BUY, 3, order_type=OrderType.LIMIT, price=lower)
    await fleet.venue.advance(5)
    assert (await fleet.broker.account()).qty(filled_unacked) == 5

    report = await fleet.reconcile()
    assert set(report.busy) == {filled_unacked, resting}
    assert (report.alarms, report.drifted, report.cash_checked) == (0, (), False)

    # the owner's tracker finds the order and applies it: consistent, nothing was raised
    found = await fleet.broker.find_orders(filled_unacked, Side.BUY, 5, claimed.created_at)
    sent = await fleet.ledger.mark_order_sent(
        claimed.client_order_id, found[0].broker_order_id, fleet.venue.clock.now()
    )
    await fleet.settle(sent)
    report = await fleet.reconcile()
    assert report.checked == (filled_unacked,)
    assert (report.alarms, report.drifted) == (0, ())
    assert await fleet.notices_of(NoticeType.ACCOUNT_DRIFT) == []
    assert errors == []


async def test_one_reconciler_per_fleet(redis_client: aioredis.Redis, prefix: str) -> None:
    """Two processes stand by for the lease: a lease left by a dead holder expires and one of
    them takes it, the other never runs the job meanwhile, and it takes over once the holder
    stops."""
    keys = Keyspace(prefix)
    await redis_client.set(keys.singleton("reconciler"), "dead", px=400)
    running: list[str] = []
    started = {name: anyio.Event() for name in "ab"}
    scopes = {name: anyio.CancelScope() for name in "ab"}

    async def process(name: str) -> None:
        async def job() -> None:
            running.append(name)
            started[name].set()
            try:
                await anyio.sleep_forever()
            finally:
                running.remove(name)

        lease = RedisSingleton(redis_client, keys, "reconciler", name, ttl_ms=600)
        with scopes[name]:
            await lease.exclusive(job)

    async with anyio.create_task_group() as tg:
        tg.start_soon(process, "a")
        tg.start_soon(process, "b")
        with anyio.fail_after(5):
            while not running:
                await anyio.sleep(0.02)
        holder = running[0]
        other = "b" if holder == "a" else "a"
        await anyio.sleep(1.0)  # several renewal periods: the standby never runs the job
        assert running == [holder]
        assert (await redis_client.get(keys.singleton("reconciler"))) == holder.encode()
        scopes[holder].cancel()  # the holder stops
        with anyio.fail_after(5):
            await started[other].wait()
        assert running == [other]
        tg.cancel_scope.cancel()


async def test_paper_broker_account_follows_its_executions() -> None:
    """The in-process paper account: holdings on an average-cost basis, sellable less what a
    working SELL covers, and with a cost model cash moved by fees and taxes per execution."""
    from broker.paper import PaperBroker
    from market.clock import ManualClock
    from market.costs import CostModel
    from market.sim import SimulatedMarket

    clock = ManualClock(SESSION.open + timedelta(hours=1))
    market = SimulatedMarket(seed=7, session=SESSION, n_symbols=20)
    costs = CostModel()
    paper = PaperBroker(market, clock, cash=Decimal(10_000_000), costs=costs)
    assert (await PaperBroker(market, clock).account()).cash is None  # no cost model: no cash
    symbol = max(market.symbols, key=lambda s: market.quote(s, clock.now(), 0).ask_qty)
    buy = await paper.submit_order(OrderRequest(symbol, Side.BUY, 10, OrderType.MARKET))
    sell = await paper.submit_order(OrderRequest(symbol, Side.SELL, 4, OrderType.MARKET))
    upper = market.limits(symbol)[1]
    await paper.submit_order(OrderRequest(symbol, Side.SELL, 2, OrderType.LIMIT, upper))  # rests
    bought = paper.executions(buy.broker_order_id)
    sold = paper.executions(sell.broker_order_id)
    assert sum(e.qty for e in bought) == 10
    assert sum(e.qty for e in sold) == 4
    account = await paper.account()
    held = account.holdings[symbol]
    assert (held.qty, held.sellable_qty) == (6, 4)
    buy_amount = sum((e.qty * e.price for e in bought), Decimal(0))
    assert held.avg_price == buy_amount / 10
    board = market.instrument(symbol).board
    cash = Decimal(10_000_000)
    for e in bought:
        cash -= e.qty * e.price + costs.commission(e.qty * e.price)
    for e in sold:
        amount = e.qty * e.price
        cash += amount - costs.commission(amount) - costs.sell_taxes(amount, board, DAY).total
    assert account.cash == cash
