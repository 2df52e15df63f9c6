"""The WebSocket side, KIS's real-time protocol.

A client sends JSON requests ``{"header": {"approval_key", "custtype", "tr_type",
"content-type"}, "body": {"input": {"tr_id", "tr_key"}}}`` with ``tr_type`` "1" (subscribe) or
"2" (unsubscribe) and gets a JSON reply ``{"header": {"tr_id", "tr_key", "encrypt"}, "body":
{"rt_cd", "msg_cd", "msg1", "output": {"iv", "key"}}}``. Data arrive as text frames
``<encrypted 0|1>|<tr_id>|<count 001>|<fields joined by ^>``; fill notices (H0STCNI0 real,
H0STCNI9 mock, tr_key = the HTS id) are AES-256-CBC encrypted with the reply's 32-character key
and 16-character iv (used as bytes), PKCS7 padded, base64 encoded, and their reply header says
``"encrypt": "Y"``. The server sends ``{"header": {"tr_id": "PINGPONG", "datetime": ...}}``
every `ping_interval_s`; clients echo it back or answer with a WebSocket pong.

One session per app key: a second connection whose requests carry an approval key of an app key
already connected gets ``OPSP8996 ALREADY IN USE appkey`` and is closed. At most 40
subscriptions per session (OPSP0008 MAX SUBSCRIBE OVER).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import WSMsgType, web
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from exchange.auth import TokenBook
from exchange.config import MAX_SUBSCRIPTIONS
from exchange.frames import asking_price_fields, notice_fields, trade_fields
from exchange.venue import Notice, Venue

TRADES, ASKING = "H0STCNT0", "H0STASP0"


def encrypt(key: str, iv: str, text: str) -> str:
    """AES-256-CBC, PKCS7, base64: what KIS's client undoes with the reply's key and iv."""
    padder = padding.PKCS7(128).padder()
    data = padder.update(text.encode()) + padder.finalize()
    enc = Cipher(algorithms.AES(key.encode()), modes.CBC(iv.encode())).encryptor()
    return base64.b64encode(enc.update(data) + enc.finalize()).decode()


def decrypt(key: str, iv: str, b64: str) -> str:
    """The inverse of `encrypt` (for tests and clients written in Python)."""
    dec = Cipher(algorithms.AES(key.encode()), modes.CBC(iv.encode())).decryptor()
    data = dec.update(base64.b64decode(b64)) + dec.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    return (unpadder.update(data) + unpadder.finalize()).decode()


def _reply(
    tr_id: str, tr_key: str, rt_cd: str, msg_cd: str, msg1: str, **extra: Any
) -> dict[str, Any]:
    header = {"tr_id": tr_id, "tr_key": tr_key, "encrypt": extra.pop("encrypt", "N")}
    return {"header": header, "body": {"rt_cd": rt_cd, "msg_cd": msg_cd, "msg1": msg1, **extra}}


@dataclass(eq=False)
class Session:
    ws: web.WebSocketResponse
    key: str = field(default_factory=lambda: secrets.token_hex(16))
    iv: str = field(default_factory=lambda: secrets.token_hex(8))
    app_key: str | None = None
    subs: set[tuple[str, str]] = field(default_factory=set)
    queue: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue)
    last: dict[tuple[str, str], Any] = field(default_factory=dict)  # what was last sent

    def send(self, payload: str | dict[str, Any]) -> None:
        text = payload if isinstance(payload, str) else orjson.dumps(payload).decode()
        self.queue.put_nowait(text)


class WsServer:
    """Sessions, subscriptions and the frames they receive."""

    def __init__(self, venue: Venue, tokens: TokenBook) -> None:
        self.venue = venue
        self.tokens = tokens
        self.notice_tr = "H0STCNI9" if venue.config.mock else "H0STCNI0"
        self.bound: dict[str, Session] = {}  # app key -> its one session
        self.sessions: set[Session] = set()
        self.refused = 0  # connections refused as a second session of an app key
        venue.listen(self._notice)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True, max_msg_size=1 << 20)
        await ws.prepare(request)
        session = Session(ws)
        self.sessions.add(session)
        writer = asyncio.create_task(self._write(session))
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT and not await self._request(session, msg.data):
                    break
        finally:
            session.queue.put_nowait(None)
            with contextlib.suppress(Exception):
                await writer
            self.sessions.discard(session)
            if session.app_key is not None and self.bound.get(session.app_key) is session:
                del self.bound[session.app_key]
            await ws.close()
        return ws

    async def _write(self, session: Session) -> None:
        while (text := await session.queue.get()) is not None:
            if session.ws.closed:
                return
            await session.ws.send_str(text)

    async def _request(self, session: Session, text: str) -> bool:
        """Handle one client message; False to close the connection."""
        try:
            msg = orjson.loads(text)
            header, body = msg["header"], msg.get("body") or {}
        except (orjson.JSONDecodeError, KeyError, TypeError):
            session.send(_reply("(null)", "", "9", "OPSP0001", "JSON PARSING ERROR"))
            return True
        if header.get("tr_id") == "PINGPONG":
            return True  # the client's echo
        inp = body.get("input") or {}
        tr_id, tr_key = str(inp.get("tr_id", "")), str(inp.get("tr_key", ""))
        app_key = self.tokens.approved(str(header.get("approval_key", "")))
        if app_key is None:
            session.send(_reply(tr_id, tr_key, "9", "OPSP0011", "invalid approval : NOT FOUND"))
            return True
        owner = self.bound.get(app_key)
        if session.app_key is None and owner is not None and owner is not session:
            self.refused += 1
            session.send(_reply("(null)", "", "9", "OPSP8996", "ALREADY IN USE appkey"))
            await asyncio.sleep(0)
            return False
        if session.app_key not in (None, app_key):
            session.send(_reply(tr_id, tr_key, "9", "OPSP8996", "ALREADY IN USE appkey"))
            return True
        session.app_key = app_key
        self.bound[app_key] = session
        tr_type = str(header.get("tr_type", ""))
        if tr_type == "1":
            self._subscribe(session, app_key, tr_id, tr_key)
        elif tr_type in ("2", "0"):
            self._unsubscribe(session, tr_id, tr_key)
        else:
            session.send(_reply(tr_id, tr_key, "9", "OPSP0003", "invalid tr_type"))
        return True

    def _subscribe(self, session: Session, app_key: str, tr_id: str, tr_key: str) -> None:
        account = self.venue.accounts[app_key].spec
        if tr_id == self.notice_tr:
            if tr_key != account.hts_id:
                session.send(_reply(tr_id, tr_key, "9", "OPSP0012", "invalid tr_key (HTS ID)"))
                return
        elif tr_id in (TRADES, ASKING):
            if tr_key not in self.venue.market.symbols:
                session.send(_reply(tr_id, tr_key, "9", "OPSP0012", "invalid tr_key"))
                return
        else:
            session.send(_reply(tr_id, tr_key, "9", "OPSP0009", "invalid tr_id"))
            return
        if (tr_id, tr_key) in session.subs:
            session.send(_reply(tr_id, tr_key, "1", "OPSP0002", "ALREADY IN SUBSCRIBE"))
            return
        if len(session.subs) >= MAX_SUBSCRIPTIONS:
            session.send(_reply(tr_id, tr_key, "1", "OPSP0008", "MAX SUBSCRIBE OVER"))
            return
        session.subs.add((tr_id, tr_key))
        output = {"iv": session.iv, "key": session.key}
        flag = "Y" if tr_id == self.notice_tr else "N"
        msg = "SUBSCRIBE SUCCESS"
        ok = _reply(tr_id, tr_key, "0", "OPSP0000", msg, output=output, encrypt=flag)
        session.send(ok)

    def _unsubscribe(self, session: Session, tr_id: str, tr_key: str) -> None:
        if (tr_id, tr_key) not in session.subs:
            session.send(_reply(tr_id, tr_key, "1", "OPSP0003", "UNSUBSCRIBE ERROR(not found!)"))
            return
        session.subs.discard((tr_id, tr_key))
        session.last.pop((tr_id, tr_key), None)
        output = {"iv": session.iv, "key": session.key}
        session.send(_reply(tr_id, tr_key, "0", "OPSP0001", "UNSUBSCRIBE SUCCESS", output=output))

    # ----- data -----------------------------------------------------------------------------

    def _notice(self, notice: Notice) -> None:
        plain = "^".join(notice_fields(notice))
        for session in self.bound.values():
            if (self.notice_tr, notice.hts_id) in session.subs:
                cipher = encrypt(session.key, session.iv, plain)
                session.send(f"1|{self.notice_tr}|001|{cipher}")

    async def feed(self) -> None:
        """Push a trade / asking-price frame for every subscribed symbol that changed."""
        venue = self.venue
        now = venue.clock.now()
        for session in list(self.bound.values()):
            for tr_id, symbol in sorted(session.subs):
                if tr_id == TRADES:
                    prev = session.last.get((tr_id, symbol))
                    frame, state = trade_fields(venue, symbol, now, prev)
                elif tr_id == ASKING:
                    frame, state = asking_price_fields(venue, symbol, now)
                    if session.last.get((tr_id, symbol)) == state:
                        frame = None
                else:
                    continue
                if frame is not None:
                    session.last[(tr_id, symbol)] = state
                    session.send(f"0|{tr_id}|001|{'^'.join(frame)}")

    async def ping_forever(self) -> None:
        while True:
            await asyncio.sleep(self.venue.config.ping_interval_s)
            stamp = self.venue.clock.now().strftime("%Y%m%d%H%M%S")
            for session in list(self.sessions):
                session.send({"header": {"tr_id": "PINGPONG", "datetime": stamp}})

    async def close_all(self) -> None:
        for session in list(self.sessions):
            await session.ws.close()
