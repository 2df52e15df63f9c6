"""`KisNoticeFeed`: the account's fill notices over KIS's WebSocket, as hints to poll.

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

One session per app key and at most about 40 subscriptions: KIS refuses a second session of the
same app key (``OPSP8996``); the feed then retries slowly. The approval key is never logged.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, NoReturn

import aiohttp
import anyio
import orjson
from anyio.abc import ObjectSendStream
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from loguru import logger

from broker.errors import BrokerError
from broker.kis.client import KisClient
from market.orders import BrokerOrderId, Side, canonical_broker_order_id

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


class KisNoticeFeed:
    """The fill-notice session of one app key: `run` sends every notice to a stream."""

    def __init__(
        self,
        client: KisClient,
        *,
        reconnect_s: float = 1.0,
        max_reconnect_s: float = 60.0,
        connect_timeout_s: float = 10.0,
    ) -> None:
        cfg = client.config
        if not cfg.hts_id:
            raise ValueError("KIS_HTS_ID is needed for fill notices (the subscription's key)")
        self.client = client
        self.hts_id = cfg.hts_id
        self.tr_id = NOTICE_TR[cfg.domain]
        self.url = cfg.websocket_url + WS_PATH
        self.reconnect_s = reconnect_s
        self.max_reconnect_s = max_reconnect_s
        self.connect_timeout_s = connect_timeout_s
        self.subscribed = anyio.Event()  # set once a subscription was confirmed
        self.received = 0  # notices read since start
        self.connections = 0  # sessions opened since start
        self._approval: str | None = None
        self._cipher: tuple[str, str] | None = None

    def __repr__(self) -> str:
        return f"KisNoticeFeed({self.url!r}, {self.tr_id})"

    async def run(self, send: ObjectSendStream[FillNotice]) -> NoReturn:
        """Keep a session open and send each notice to `send`; reconnects with backoff."""
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
        if self._approval is None:
            self._approval = await self.client.approval_key()
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout_s)
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.ws_connect(self.url, autoping=True) as ws,
        ):
            self.connections += 1
            await ws.send_str(self._subscribe_message())
            async for msg in ws:
                if msg.type is aiohttp.WSMsgType.TEXT:
                    await self._frame(ws, str(msg.data), send)
                elif msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                    break
        raise aiohttp.ClientConnectionError("notice session closed")

    def _subscribe_message(self) -> str:
        assert self._approval is not None
        message = {
            "header": {
                "approval_key": self._approval,
                "custtype": self.client.config.custtype,
                "tr_type": "1",
                "content-type": "utf-8",
            },
            "body": {"input": {"tr_id": self.tr_id, "tr_key": self.hts_id}},
        }
        return orjson.dumps(message).decode()

    async def _frame(
        self, ws: aiohttp.ClientWebSocketResponse, data: str, send: ObjectSendStream[FillNotice]
    ) -> None:
        if data[:1] in ("0", "1"):
            try:
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
            await ws.send_str(data)
            await ws.pong(data.encode())
            return
        self._system(doc)

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
