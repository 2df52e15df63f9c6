"""`KisNoticeFeed`: the account's fill notices (and real-time trades) over KIS's WebSocket.

KIS pushes a notice when one of the account's orders is accepted, refused, cancelled or
executed (``H0STCNI0`` on the real domain, ``H0STCNI9`` on the mock one). The adapter uses a
notice only to ask the daily-fills inquiry about that order at once (`KisBroker.hint`): the
inquiry stays the check, and nothing from a notice reaches the ledger by itself. The feed is
optional; without it the orders are still followed by polling.

The session, as KIS's own client runs it:

1. ``POST /oauth2/Approval`` ``{grant_type, appkey, secretkey}`` -> ``approval_key``.
2. Connect to ``{ws_url}/tryitout`` and subscribe: ``{"header": {"approval_key", "custtype",
   "tr_type": "1", "content-type": "utf-8"}, "body": {"input": {"tr_id", "tr_key"}}}`` with the
   customer's HTS id as ``tr_key``.
3. The reply is JSON: ``header`` (``tr_id``, ``tr_key``, ``encrypt``) and ``body`` (``rt_cd``,
   ``msg_cd``, ``msg1``, ``output`` with the AES ``key`` and ``iv``).
4. Notices come as text ``{0|1}|{tr_id}|{count}|{payload}``: ``1`` = the payload is base64 of
   AES-256-CBC (key and iv are the reply's strings as bytes, PKCS#7 padding); the plain text is
   ``^``-separated fields, 26 per notice (`COLUMNS`).
5. ``PINGPONG`` frames (JSON, ``header.tr_id`` "PINGPONG") are answered: sent back as received,
   and with a WebSocket pong carrying the same bytes (KIS's samples do one or the other).

6. Real-time trades (``H0STCNT0``, optional: `watch_trades`) share the session: one
   subscription per symbol (``tr_key`` the symbol), frames ``0|H0STCNT0|{count}|{payload}`` in
   plain text, 46 ``^``-separated fields per trade (`TRADE_COLUMNS`), handed to `on_trade`.
   The session follows the wanted set: symbols that leave it are unsubscribed (``tr_type`` "2"),
   new ones subscribed; after a reconnect every wanted symbol is subscribed again. A refused
   trade subscription (unknown symbol, no room) is logged and not asked again until the wanted
   set changes.

One session per app key and at most about 40 subscriptions: KIS refuses a second session of the
same app key (``OPSP8996``); the feed then retries slowly. With fill notices on, 39 symbols' trades
fit beside them; symbols beyond that are left out with a WARNING. The approval key is never
logged.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

import anyio
import orjson
from anyio.abc import ObjectSendStream
from loguru import logger

from broker.errors import BrokerError
from broker.kis.client import KisConfig
from market.orders import BrokerOrderId, Side, canonical_broker_order_id

if TYPE_CHECKING:
    # aiohttp and cryptography (~10 MB) load only in the process that holds the WebSocket (the
    # gateway); a worker decodes what it publishes (FillNotice, Trade) without them.
    import aiohttp

#: Fill-notice transaction ids per domain.
NOTICE_TR = {"real": "H0STCNI0", "mock": "H0STCNI9"}
#: The WebSocket path KIS's client connects to.
WS_PATH = "/tryitout"
#: Fields of one notice, in order (KIS's sample client, ``ccnl_notice``).
COLUMNS = (
    "CUST_ID", "ACNT_NO", "ODER_NO", "OODER_NO", "SELN_BYOV_CLS", "RCTF_CLS",
    "ODER_KIND", "ODER_COND", "STCK_SHRN_ISCD", "CNTG_QTY", "CNTG_UNPR",
    "STCK_CNTG_HOUR", "RFUS_YN", "CNTG_YN", "ACPT_YN", "BRNC_NO", "ODER_QTY",
    "ACNT_NAME", "ORD_COND_PRC", "ORD_EXG_GB", "POPUP_YN", "FILLER", "CRDT_CLS",
    "CRDT_LOAN_DATE", "CNTG_ISNM40", "ODER_PRC",
)  # fmt: skip
_INDEX = {name: i for i, name in enumerate(COLUMNS)}
_PING = "PINGPONG"
#: Real-time trades (KRX), the same id on both domains.
TRADE_TR = "H0STCNT0"
#: Fields of one trade, in order (KIS's sample client, ``ccnl_krx``).
TRADE_COLUMNS = (
    "MKSC_SHRN_ISCD", "STCK_CNTG_HOUR", "STCK_PRPR", "PRDY_VRSS_SIGN",
    "PRDY_VRSS", "PRDY_CTRT", "WGHN_AVRG_STCK_PRC", "STCK_OPRC",
    "STCK_HGPR", "STCK_LWPR", "ASKP1", "BIDP1", "CNTG_VOL", "ACML_VOL",
    "ACML_TR_PBMN", "SELN_CNTG_CSNU", "SHNU_CNTG_CSNU", "NTBY_CNTG_CSNU",
    "CTTR", "SELN_CNTG_SMTN", "SHNU_CNTG_SMTN", "CCLD_DVSN", "SHNU_RATE",
    "PRDY_VOL_VRSS_ACML_VOL_RATE", "OPRC_HOUR", "OPRC_VRSS_PRPR_SIGN",
    "OPRC_VRSS_PRPR", "HGPR_HOUR", "HGPR_VRSS_PRPR_SIGN", "HGPR_VRSS_PRPR",
    "LWPR_HOUR", "LWPR_VRSS_PRPR_SIGN", "LWPR_VRSS_PRPR", "BSOP_DATE",
    "NEW_MKOP_CLS_CODE", "TRHT_YN", "ASKP_RSQN1", "BIDP_RSQN1",
    "TOTAL_ASKP_RSQN", "TOTAL_BIDP_RSQN", "VOL_TNRT",
    "PRDY_SMNS_HOUR_ACML_VOL", "PRDY_SMNS_HOUR_ACML_VOL_RATE",
    "HOUR_CLS_CODE", "MRKT_TRTM_CLS_CODE", "VI_STND_PRC",
)  # fmt: skip
_TRADE_INDEX = {name: i for i, name in enumerate(TRADE_COLUMNS)}
#: Subscriptions KIS allows one session.
MAX_SUBSCRIPTIONS = 40


class NoticeSource(Protocol):
    """Where the feed gets its settings and approval keys: a `KisClient`, or the gateway's
    context (`broker.kis.gateway.GatewayContext`)."""

    @property
    def config(self) -> KisConfig: ...

    @property
    def approval_key(self) -> Callable[[], Awaitable[str]]: ...


class NoticeError(BrokerError):
    """A frame of the notice feed could not be read (bad cipher text, too few fields)."""


@dataclass(frozen=True, slots=True)
class FillNotice:
    """One notice as KIS sent it. `executed`: an execution (``CNTG_YN`` "2"), else the
    acceptance, cancel or refusal of an order (``CNTG_YN`` "1")."""

    broker_order_id: BrokerOrderId
    original_order_id: BrokerOrderId | None  # OODER_NO: set for a modify / cancel
    symbol: str
    side: Side
    executed: bool
    refused: bool
    qty: int  # CNTG_QTY: executed quantity (executions), else the order's quantity
    price: Decimal  # CNTG_UNPR
    order_qty: int
    at: str  # STCK_CNTG_HOUR, HHMMSS Korea time
    fields: Sequence[str] = field(repr=False, compare=False)


def decrypt(key: str, iv: str, payload: str) -> str:
    """AES-256-CBC with PKCS#7 padding, as the notice feed encrypts (key and iv as text)."""
    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    try:
        data = base64.b64decode(payload, validate=True)
        decryptor = Cipher(algorithms.AES(key.encode()), modes.CBC(iv.encode())).decryptor()
        padded = decryptor.update(data) + decryptor.finalize()
        unpadder = padding.PKCS7(128).unpadder()
        return (unpadder.update(padded) + unpadder.finalize()).decode()
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise NoticeError(f"notice payload does not decrypt: {exc}") from exc


def parse_notices(text: str, count: int) -> list[FillNotice]:
    """The `count` notices in one decrypted payload."""
    values = text.split("^")
    if count < 1 or len(values) < count * (_INDEX["ODER_QTY"] + 1):
        raise NoticeError(f"{len(values)} fields for {count} notice(s)")
    width = len(values) // count
    return [_notice(values[i * width : (i + 1) * width]) for i in range(count)]


def _notice(v: Sequence[str]) -> FillNotice:
    def get(name: str) -> str:
        return v[_INDEX[name]].strip()

    def number(name: str) -> Decimal:
        try:
            return Decimal(get(name) or 0)
        except InvalidOperation:
            raise NoticeError(f"notice field {name}={get(name)!r} is not a number") from None

    original = get("OODER_NO")
    return FillNotice(
        broker_order_id=canonical_broker_order_id(get("ODER_NO")),
        original_order_id=canonical_broker_order_id(original) if original.strip("0") else None,
        symbol=get("STCK_SHRN_ISCD"),
        side=Side.SELL if get("SELN_BYOV_CLS") == "01" else Side.BUY,
        executed=get("CNTG_YN") == "2",
        refused=get("RFUS_YN") not in ("", "0", "N"),
        qty=int(number("CNTG_QTY")),
        price=number("CNTG_UNPR"),
        order_qty=int(number("ODER_QTY")),
        at=get("STCK_CNTG_HOUR"),
        fields=tuple(v),
    )


@dataclass(frozen=True, slots=True)
class Trade:
    """One real-time trade of a symbol (``H0STCNT0``): the last price and what it changed."""

    symbol: str
    day: str  # BSOP_DATE, YYYYMMDD
    at: str  # STCK_CNTG_HOUR, HHMMSS Korea time
    price: Decimal
    volume: int  # ACML_VOL: cumulative shares today
    traded_value: Decimal  # ACML_TR_PBMN: cumulative won today
    day_high: Decimal
    day_low: Decimal
    ask: Decimal  # ASKP1
    bid: Decimal  # BIDP1
    ask_qty: int  # ASKP_RSQN1
    bid_qty: int  # BIDP_RSQN1


def parse_trades(text: str, count: int) -> list[Trade]:
    """The `count` trades of one ``H0STCNT0`` payload, oldest first."""
    values = text.split("^")
    if count < 1 or len(values) < count * (_TRADE_INDEX["BIDP_RSQN1"] + 1):
        raise NoticeError(f"{len(values)} fields for {count} trade(s)")
    width = len(values) // count
    return [_trade(values[i * width : (i + 1) * width]) for i in range(count)]


def _trade(v: Sequence[str]) -> Trade:
    def get(name: str) -> str:
        return v[_TRADE_INDEX[name]].strip()

    def number(name: str) -> Decimal:
        try:
            return Decimal(get(name) or 0)
        except InvalidOperation:
            raise NoticeError(f"trade field {name}={get(name)!r} is not a number") from None

    return Trade(
        symbol=get("MKSC_SHRN_ISCD"),
        day=get("BSOP_DATE"),
        at=get("STCK_CNTG_HOUR"),
        price=number("STCK_PRPR"),
        volume=int(number("ACML_VOL")),
        traded_value=number("ACML_TR_PBMN"),
        day_high=number("STCK_HGPR"),
        day_low=number("STCK_LWPR"),
        ask=number("ASKP1"),
        bid=number("BIDP1"),
        ask_qty=int(number("ASKP_RSQN1")),
        bid_qty=int(number("BIDP_RSQN1")),
    )


TradeHandler = Callable[[Trade], Awaitable[None]]


class KisNoticeFeed:
    """The WebSocket session of one app key: `run` sends every fill notice to a stream, and
    hands each real-time trade of the watched symbols (`watch_trades`) to `on_trade`."""

    def __init__(
        self,
        client: NoticeSource,
        *,
        notices: bool = True,
        on_trade: TradeHandler | None = None,
        reconnect_s: float = 1.0,
        max_reconnect_s: float = 60.0,
        connect_timeout_s: float = 10.0,
        max_subscriptions: int = MAX_SUBSCRIPTIONS,
    ) -> None:
        cfg = client.config
        if notices and not cfg.hts_id:
            raise ValueError("KIS_HTS_ID is needed for fill notices (the subscription's key)")
        self.client = client
        self.notices = notices
        self.hts_id = cfg.hts_id or ""
        self.tr_id = NOTICE_TR[cfg.domain]
        self.url = cfg.websocket_url + WS_PATH
        self.on_trade = on_trade
        self.reconnect_s = reconnect_s
        self.max_reconnect_s = max_reconnect_s
        self.connect_timeout_s = connect_timeout_s
        self.trade_room = max_subscriptions - (1 if notices else 0)
        self.subscribed = anyio.Event()  # set once the notice subscription was confirmed
        self.received = 0  # notices read since start
        self.trades = 0  # trades read since start
        self.connections = 0  # sessions opened since start
        self._approval: str | None = None
        self._cipher: tuple[str, str] | None = None
        self._wanted: frozenset[str] = frozenset()  # symbols whose trades are wanted
        self._refused: frozenset[str] = frozenset()  # refused for the current wanted set
        self._live: set[str] = set()  # trade subscriptions confirmed in this session
        self._asked: dict[str, str] = {}  # symbol -> tr_type sent, not answered yet
        self._changed = anyio.Event()
        self._send_lock = anyio.Lock()

    @property
    def watching(self) -> frozenset[str]:
        """The symbols whose trades the session receives now (confirmed subscriptions)."""
        return frozenset(self._live)

    def watch_trades(self, symbols: Collection[str]) -> None:
        """Receive the trades of `symbols` (and no others) from now on; at most `trade_room`
        of them (the rest are left out, with a WARNING)."""
        wanted = sorted(set(symbols))
        if len(wanted) > self.trade_room:
            logger.warning("KIS real-time trades: {} symbols wanted, room for {}; left out: {}",
                           len(wanted), self.trade_room, wanted[self.trade_room :])  # fmt: skip
            wanted = wanted[: self.trade_room]
        if frozenset(wanted) != self._wanted:
            self._wanted = frozenset(wanted)
            self._refused = frozenset()
            self._changed.set()

    def __repr__(self) -> str:
        return f"KisNoticeFeed({self.url!r}, {self.tr_id})"

    async def run(self, send: ObjectSendStream[FillNotice]) -> NoReturn:
        """Keep a session open and send each notice to `send`; reconnects with backoff."""
        import aiohttp

        pause = self.reconnect_s
        async with send:
            while True:
                try:
                    await self._session(send)
                    pause = self.reconnect_s
                except (aiohttp.ClientError, BrokerError, OSError, TimeoutError) as exc:
                    logger.warning("KIS notice feed: {!r}; reconnecting in {:.1f} s", exc, pause)
                await anyio.sleep(pause)
                pause = min(pause * 2, self.max_reconnect_s)

    async def _session(self, send: ObjectSendStream[FillNotice]) -> None:
        import aiohttp

        if self._approval is None:
            self._approval = await self.client.approval_key()
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout_s)
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.ws_connect(self.url, autoping=True) as ws,
        ):
            self.connections += 1
            self._live.clear()
            self._asked.clear()
            if self.notices:
                await self._send(ws, self._subscribe_message(self.tr_id, self.hts_id))
            failure: Exception | None = None
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._keep_subscriptions, ws)
                try:
                    async for msg in ws:
                        if msg.type is aiohttp.WSMsgType.TEXT:
                            await self._frame(ws, str(msg.data), send)
                        elif msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                            break
                except Exception as exc:  # raised below, outside the task group
                    failure = exc
                tg.cancel_scope.cancel()
            if failure is not None:
                raise failure
        raise aiohttp.ClientConnectionError("notice session closed")

    async def _send(self, ws: aiohttp.ClientWebSocketResponse, text: str) -> None:
        async with self._send_lock:
            await ws.send_str(text)

    async def _keep_subscriptions(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Subscribe the wanted symbols' trades and unsubscribe the others, whenever the wanted
        set changes. A send that fails ends here; the reader sees the session close."""
        import aiohttp

        try:
            while True:
                self._changed = anyio.Event()
                wanted = self._wanted - self._refused
                for symbol in sorted(wanted - self._live - set(self._asked)):
                    self._asked[symbol] = "1"
                    await self._send(ws, self._subscribe_message(TRADE_TR, symbol))
                for symbol in sorted(self._live - wanted - set(self._asked)):
                    self._asked[symbol] = "2"
                    await self._send(ws, self._subscribe_message(TRADE_TR, symbol, "2"))
                await self._changed.wait()
        except (aiohttp.ClientError, ConnectionError) as exc:
            logger.warning("KIS real-time trades: subscription not sent: {!r}", exc)

    def _subscribe_message(self, tr_id: str, tr_key: str, tr_type: str = "1") -> str:
        assert self._approval is not None
        message = {
            "header": {
                "approval_key": self._approval,
                "custtype": self.client.config.custtype,
                "tr_type": tr_type,
                "content-type": "utf-8",
            },
            "body": {"input": {"tr_id": tr_id, "tr_key": tr_key}},
        }
        return orjson.dumps(message).decode()

    async def _frame(
        self, ws: aiohttp.ClientWebSocketResponse, data: str, send: ObjectSendStream[FillNotice]
    ) -> None:
        if data[:1] in ("0", "1"):
            try:
                if data.split("|", 2)[1:2] == [TRADE_TR]:
                    await self._trades(data)
                    return
                notices = self._read(data)
            except NoticeError as exc:  # one bad frame: skip it, the inquiry still polls
                logger.warning("KIS notice feed: frame skipped: {}", exc)
                return
            for notice in notices:
                self.received += 1
                await send.send(notice)
            return
        try:
            doc: dict[str, Any] = orjson.loads(data)
            header = doc.get("header") or {}
        except (orjson.JSONDecodeError, AttributeError):
            logger.warning("KIS notice feed: unreadable frame of {} bytes", len(data))
            return
        if header.get("tr_id") == _PING:
            await self._send(ws, data)
            await ws.pong(data.encode())
            return
        if header.get("tr_id") == TRADE_TR:
            self._trade_reply(str(header.get("tr_key", "")), doc)
            return
        self._system(doc)

    def _trade_reply(self, symbol: str, doc: dict[str, Any]) -> None:
        """KIS's answer to a trade (un)subscription of ours."""
        body = doc.get("body") or {}
        code, text = str(body.get("msg_cd", "")), str(body.get("msg1", ""))
        asked = self._asked.pop(symbol, None)
        ok = str(body.get("rt_cd", "")) == "0" or code == "OPSP0002"  # already subscribed
        if asked == "2" or "UNSUBSCRIBE" in text.upper():
            self._live.discard(symbol)
        elif ok:
            self._live.add(symbol)
        else:
            logger.warning("KIS real-time trades of {} refused: {} {}", symbol, code, text)
            self._refused |= {symbol}
        self._changed.set()

    async def _trades(self, data: str) -> None:
        parts = data.split("|", 3)
        if len(parts) < 4:
            raise NoticeError("trade frame without a payload")
        try:
            count = int(parts[2])
        except ValueError:
            raise NoticeError(f"trade count {parts[2]!r}") from None
        trades = parse_trades(parts[3], count)
        self.trades += len(trades)
        if self.on_trade is not None:
            for trade in trades:
                await self.on_trade(trade)

    def _system(self, doc: dict[str, Any]) -> None:
        """A reply to our subscription: keep the cipher key and iv, or raise the refusal."""
        body = doc.get("body") or {}
        code, text = str(body.get("msg_cd", "")), str(body.get("msg1", ""))
        if str(body.get("rt_cd", "")) != "0":
            if code in ("OPSP0011", "OPSP9994", "OPSP0010"):  # approval key not valid: ask anew
                self._approval = None
            raise NoticeRefused(f"{code} {text}".strip())
        output = body.get("output") or {}
        if output.get("key") and output.get("iv"):
            self._cipher = (str(output["key"]), str(output["iv"]))
        logger.info("KIS notice feed: {} {} ({})", self.tr_id, text or code, "subscribed")
        self.subscribed.set()

    def _read(self, data: str) -> list[FillNotice]:
        parts = data.split("|", 3)
        if len(parts) < 4 or parts[1] != self.tr_id:
            return []  # not a notice of ours (another subscription's data)
        payload = parts[3]
        if parts[0] == "1":
            if self._cipher is None:
                raise NoticeError("encrypted notice before the subscription's key and iv")
            payload = decrypt(*self._cipher, payload)
        try:
            count = int(parts[2])
        except ValueError:
            raise NoticeError(f"notice count {parts[2]!r}") from None
        return parse_notices(payload, count)


class NoticeRefused(BrokerError):
    """KIS refused the notice subscription (``rt_cd`` != "0"), e.g. OPSP8996: the app key
    already has a session elsewhere."""
