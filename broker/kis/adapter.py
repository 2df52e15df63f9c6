"""`KisBroker`: the `Broker` and `MarketData` ports over the KIS Open API (domestic stocks).

Orders (this module):

* `submit_order` -> POST ``trading/order-cash`` (ORD_DVSN 00 limit / 01 market, KRX). The reply
  carries ``ODNO`` (our `BrokerOrderId`, canonical from here on), ``KRX_FWDG_ORD_ORGNO`` (kept:
  a cancel must quote it) and ``ORD_TMD`` (the acceptance time, to the second). Quantity, price
  and grid are checked here first so an obviously bad order costs no request. A known refusal
  (`broker.kis.errors.KNOWN_REFUSALS`) becomes `OrderRejected` carrying KIS's ``msg_cd`` and
  ``msg1``; any other unclear answer becomes `OrderOutcomeUnknown` and the order is never
  resent (see `broker.kis.client`).
* `order_status` / `find_orders` -> GET ``trading/inquire-daily-ccld``, every page: while the
  ``tr_cont`` response header says F or M, the next page is asked with ``tr_cont: N`` and the
  reply's ``CTX_AREA_FK100`` / ``CTX_AREA_NK100`` sent back byte for byte (fixed-width,
  space-padded). Fields: ``tot_ccld_qty``, ``tot_ccld_amt``, ``rmn_qty``, ``rjct_qty``,
  ``cncl_yn``, ``cnc_cfrm_qty``, ``ord_tmd``. Rows that carry an ``orgn_odno`` are
  modify/cancel requests, not orders of ours, and are skipped. An order not listed yet (KIS
  lists late) is `UnknownOrder`.
* `cancel_order` -> POST ``trading/order-rvsecncl`` (RVSE_CNCL_DVSN_CD 02, all remaining),
  then polls the inquiry a few times for the confirmed state. An order already done is returned
  as it is, with no cancel sent. The org number comes from this process's memory of the submit
  reply, or else from the inquiry row's ``ord_gno_brno`` (so another process can cancel it).
* `account` -> GET ``trading/inquire-balance`` (every page) and ``trading/inquire-psbl-order``
  (`broker.kis.account`): holdings, the settled deposit and the buying power.
* Fill notices (optional, `follow_notices` with a `broker.kis.notices.KisNoticeFeed`): each
  notice makes the adapter ask the inquiry about that order at once (`hint`) and hand the
  answer to `on_status` listeners; a notice is never taken as a fill by itself.

Assumptions, not yet confirmed against a live account:
``infm_tmd`` is the time of the row's last change (used as `updated_at`, else ``ord_tmd``);
``rmn_qty`` may lag a confirmed cancel, so remaining is also capped by ``cnc_cfrm_qty``;
``find_orders`` compares at whole seconds because ``ord_tmd`` has no fraction.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import date, datetime
from typing import TYPE_CHECKING, Any, NoReturn

import anyio
from loguru import logger

from broker.errors import (
    BrokerError,
    BrokerUnavailable,
    OrderOutcomeUnknown,
    OrderRejected,
    UnknownOrder,
)
from broker.kis import wire
from broker.kis.account import read_account
from broker.kis.client import KisClient
from broker.kis.errors import KisRefused
from broker.kis.market import RANK_EXCLUSIONS, KisMarketData
from broker.kis.notices import FillNotice, KisNoticeFeed
from broker.port import (
    AccountSnapshot,
    Broker,
    BrokerOrderId,
    MarketData,
    OrderAck,
    OrderRequest,
    OrderStatus,
    OrderType,
    Side,
    canonical_broker_order_id,
)
from market.clock import KST, Clock
from market.ticks import is_on_grid

#: Most inquiry pages read for one question (100 rows each on a real account, 15 on mock).
MAX_PAGES = 200

#: Called with the inquiry's answer about an order a fill notice named.
StatusListener = Callable[[OrderStatus], Awaitable[None]]


class KisBroker(KisMarketData):
    """One KIS account (orders) and KIS quotations (market data) behind the ports.

    Safe to share between the workers of one process. Several processes may each have one:
    they share the access token and the request budget through Redis (`KisClient`).
    """

    def __init__(
        self,
        client: KisClient,
        clock: Clock,
        *,
        universe: Sequence[str] | None = None,
        snapshot_ttl_s: float = 10.0,
        rank_exclusions: str = RANK_EXCLUSIONS,
        cancel_polls: int = 3,
        cancel_poll_s: float = 0.3,
    ) -> None:
        super().__init__(
            client,
            clock,
            universe=universe,
            snapshot_ttl_s=snapshot_ttl_s,
            rank_exclusions=rank_exclusions,
        )
        if cancel_polls < 1:
            raise ValueError("cancel_polls must be >= 1")
        self.cancel_polls = cancel_polls
        self.cancel_poll_s = cancel_poll_s
        self._orgno: dict[str, str] = {}  # canonical ODNO -> KRX_FWDG_ORD_ORGNO
        self._listeners: list[StatusListener] = []

    # ----- Broker -------------------------------------------------------------------------

    async def submit_order(self, request: OrderRequest) -> OrderAck:
        _validate(request)
        cfg = self.client.config
        body = {
            "CANO": cfg.cano,
            "ACNT_PRDT_CD": cfg.product_code,
            "PDNO": request.symbol,
            "ORD_DVSN": "00" if request.order_type is OrderType.LIMIT else "01",
            "ORD_QTY": str(request.qty),
            "ORD_UNPR": str(int(request.price)) if request.price is not None else "0",
            "EXCG_ID_DVSN_CD": "KRX",
        }
        if request.side is Side.SELL:
            body["SLL_TYPE"] = "01"  # ordinary sale
        tr = wire.TR_BUY if request.side is Side.BUY else wire.TR_SELL
        try:
            reply = await self.client.post_order(wire.ORDER_CASH, tr, body)
        except KisRefused as exc:  # a known refusal (client.KNOWN_REFUSALS): not placed
            raise OrderRejected(f"{exc.msg_cd} {exc.msg1}".strip()) from exc
        out = wire.output(reply.body)
        odno, orgno = wire.field(out, "ODNO"), wire.field(out, "KRX_FWDG_ORD_ORGNO")
        if not odno.strip("0"):
            raise OrderOutcomeUnknown(f"order-cash accepted without an ODNO: {sorted(out)}")
        broker_id = canonical_broker_order_id(odno)
        self._orgno[broker_id] = orgno
        tmd = wire.field(out, "ORD_TMD")
        now = self.clock.now().astimezone(KST)
        accepted = wire.at(now.date(), tmd) if tmd else now
        return OrderAck(broker_id, accepted)

    async def cancel_order(self, broker_order_id: BrokerOrderId) -> OrderStatus:
        broker_order_id = canonical_broker_order_id(broker_order_id)
        status, row = await self._lookup(broker_order_id)
        if status.done:
            return status
        cfg = self.client.config
        orgno = self._orgno.get(broker_order_id) or wire.field(row, "ord_gno_brno")
        body = {
            "CANO": cfg.cano,
            "ACNT_PRDT_CD": cfg.product_code,
            "KRX_FWDG_ORD_ORGNO": orgno,
            "ORGN_ODNO": broker_order_id,
            "ORD_DVSN": "00",
            "RVSE_CNCL_DVSN_CD": "02",  # cancel
            "ORD_QTY": "0",
            "ORD_UNPR": "0",
            "QTY_ALL_ORD_YN": "Y",  # everything still working
            "EXCG_ID_DVSN_CD": "KRX",
        }
        try:
            await self.client.post_order(wire.ORDER_RVSECNCL, wire.TR_CANCEL, body)
        except KisRefused as exc:
            # Typically the order finished in between; the inquiry below says.
            refused: BaseException | None = exc
        except OrderOutcomeUnknown as exc:
            # Any unclear answer (e.g. "nothing left to cancel" under a code we do not list):
            # the inquiry below says; a cancel is harmless to repeat if the caller calls again.
            refused = exc
        else:
            refused = None
        for attempt in range(self.cancel_polls):
            status = await self.order_status(broker_order_id)
            if status.done or attempt == self.cancel_polls - 1:
                break
            await self.clock.sleep(self.cancel_poll_s)
        if refused is not None and not status.done:
            raise BrokerUnavailable(f"cancel of {broker_order_id} not confirmed: {refused}")
        return status

    async def order_status(self, broker_order_id: BrokerOrderId) -> OrderStatus:
        status, _ = await self._lookup(canonical_broker_order_id(broker_order_id))
        return status

    async def find_orders(
        self, symbol: str, side: Side, qty: int, since: datetime
    ) -> Sequence[OrderStatus]:
        # ord_tmd has whole seconds: an order placed at 10:00:00.7 reads as 10:00:00.
        floor = since.astimezone(KST).replace(microsecond=0)
        code = wire.SELL_CODE if side is Side.SELL else wire.BUY_CODE
        found = [
            s
            for s in (_status(r) for r in await self._rows(floor.date(), symbol=symbol, side=code))
            if s.qty == qty and s.side is side and s.ordered_at >= floor
        ]
        return sorted(found, key=lambda s: (s.ordered_at, s.broker_order_id))

    async def account(self) -> AccountSnapshot:
        return await read_account(self.client, self.clock, self.universe or ())

    # ----- fill notices (optional) --------------------------------------------------------

    def on_status(self, listener: StatusListener) -> None:
        """Call `listener` with the inquiry's answer each time a fill notice names an order."""
        self._listeners.append(listener)

    async def hint(self, broker_order_id: BrokerOrderId) -> OrderStatus | None:
        """A fill notice named this order: ask the daily-fills inquiry about it now and hand
        that answer to the listeners. The notice's own figures are never used: the inquiry
        stays the check. None while the order is not listed yet."""
        try:
            status = await self.order_status(broker_order_id)
        except UnknownOrder:
            return None
        for listener in self._listeners:
            await listener(status)
        return status

    async def follow_notices(self, feed: KisNoticeFeed) -> NoReturn:
        """Run `feed` (the WebSocket fill notices) and turn each notice into a `hint`. Notices
        that arrive while an inquiry runs are merged, one inquiry per order. Runs until
        cancelled; an inquiry that fails is logged and left to the regular polling."""
        send, receive = anyio.create_memory_object_stream[FillNotice](1_000)
        async with anyio.create_task_group() as tg:
            tg.start_soon(feed.run, send)
            async with receive:
                async for first in receive:
                    pending = [first.broker_order_id]
                    while True:
                        try:
                            notice = receive.receive_nowait()
                        except anyio.WouldBlock:
                            break
                        if notice.broker_order_id not in pending:
                            pending.append(notice.broker_order_id)
                    for broker_order_id in pending:
                        try:
                            await self.hint(broker_order_id)
                        except BrokerError as exc:
                            logger.warning("inquiry after a fill notice for {} failed: {!r}",
                                           broker_order_id, exc)  # fmt: skip
        raise AssertionError("the notice feed never ends")  # pragma: no cover

    # ----- internals ----------------------------------------------------------------------

    async def _lookup(self, broker_order_id: BrokerOrderId) -> tuple[OrderStatus, dict[str, Any]]:
        today = self.clock.now().astimezone(KST).date()
        for row in await self._rows(today, odno=broker_order_id):
            if _odno(row) == broker_order_id:
                return _status(row), row
        raise UnknownOrder(f"no order {broker_order_id!r} today on this account (yet)")

    async def _rows(
        self, start: date, *, symbol: str = "", side: str = "00", odno: str = ""
    ) -> list[dict[str, Any]]:
        """Every order row (not modify/cancel rows) from `start` to today, oldest first."""
        cfg = self.client.config
        today = self.clock.now().astimezone(KST).date()
        params = {
            "CANO": cfg.cano,
            "ACNT_PRDT_CD": cfg.product_code,
            "INQR_STRT_DT": wire.ymd(min(start, today)),
            "INQR_END_DT": wire.ymd(today),
            "SLL_BUY_DVSN_CD": side,
            "PDNO": symbol,
            "ORD_GNO_BRNO": "",
            "ODNO": odno,
            "CCLD_DVSN": "00",  # filled and unfilled
            "INQR_DVSN": "01",  # oldest first
            "INQR_DVSN_1": "",
            "INQR_DVSN_3": "00",
            "EXCG_ID_DVSN_CD": "KRX",
            "CTX_AREA_FK100": "",
            "CTX_AREA_NK100": "",
        }
        found: list[dict[str, Any]] = []
        for page in range(MAX_PAGES):
            reply = await self.client.get(
                wire.DAILY_CCLD, wire.TR_DAILY_CCLD, params, tr_cont="N" if page else ""
            )
            found.extend(r for r in wire.rows(reply.body, "output1") if not _is_amendment(r))
            if not reply.more:  # tr_cont D / E: the last page
                break
            # fixed-width, space-padded: sent back exactly as received, never trimmed
            params["CTX_AREA_FK100"] = wire.raw(reply.body, "ctx_area_fk100")
            params["CTX_AREA_NK100"] = wire.raw(reply.body, "ctx_area_nk100")
        else:
            raise BrokerUnavailable(f"inquire-daily-ccld: more than {MAX_PAGES} pages")
        return found


def _validate(request: OrderRequest) -> None:
    """The checks KIS would make anyway, made without spending a request."""
    if request.qty <= 0:
        raise OrderRejected(f"qty must be positive, got {request.qty}")
    if request.order_type is OrderType.LIMIT:
        if request.price is None:
            raise OrderRejected("LIMIT order needs a price")
        if not is_on_grid(request.price):
            raise OrderRejected(f"price {request.price} is not on the tick grid")
    elif request.price is not None:
        raise OrderRejected("MARKET order must not carry a price")


def _is_amendment(row: Mapping[str, Any]) -> bool:
    return bool(wire.field(row, "orgn_odno").lstrip("0"))


def _odno(row: Mapping[str, Any]) -> BrokerOrderId | None:
    text = wire.field(row, "odno")
    return canonical_broker_order_id(text) if text else None


def _status(row: Mapping[str, Any]) -> OrderStatus:
    day = wire.parse_day(wire.field(row, "ord_dt"))
    ordered_at = wire.at(day, wire.field(row, "ord_tmd"))
    informed = wire.field(row, "infm_tmd")
    updated_at = max(ordered_at, wire.at(day, informed)) if informed else ordered_at
    qty = wire.qty(row, "ord_qty")
    filled = wire.qty(row, "tot_ccld_qty")
    rejected = wire.qty(row, "rjct_qty")
    canceled_qty = wire.qty(row, "cnc_cfrm_qty")
    remaining = max(0, min(wire.qty(row, "rmn_qty"), qty - filled - rejected - canceled_qty))
    side = Side.SELL if wire.field(row, "sll_buy_dvsn_cd") == wire.SELL_CODE else Side.BUY
    return OrderStatus(
        broker_order_id=canonical_broker_order_id(wire.field(row, "odno")),
        symbol=wire.field(row, "pdno"),
        side=side,
        qty=qty,
        filled_qty=filled,
        filled_amount=wire.num(row, "tot_ccld_amt"),
        remaining_qty=remaining,
        rejected_qty=rejected,
        canceled=wire.field(row, "cncl_yn").upper() == "Y" or canceled_qty > 0,
        ordered_at=ordered_at,
        updated_at=updated_at,
    )


if TYPE_CHECKING:  # mypy proves KisBroker satisfies both ports

    def _ports(broker: KisBroker) -> tuple[Broker, MarketData]:
        return broker, broker
