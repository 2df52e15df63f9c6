"""The exchange's WebSocket side (aiohttp's client) and the `exchange` command."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from datetime import timedelta
from typing import Any

import aiohttp
import orjson
import pytest
from test_exchange import KEY, KEY2, SECRET, SECRET2, at, client, liquid_symbol, running

from exchange.frames import NOTICE_COLUMNS, TRADE_COLUMNS
from exchange.ws import decrypt

pytestmark = pytest.mark.anyio


async def approval(http: aiohttp.ClientSession, rest_url: str, key: str, secret: str) -> str:
    body = {"grant_type": "client_credentials", "appkey": key, "secretkey": secret}
    async with http.post(f"{rest_url}/oauth2/Approval", json=body) as r:
        assert r.status == 200
        return str((await r.json())["approval_key"])


def request(approval_key: str, tr_id: str, tr_key: str, tr_type: str = "1") -> str:
    header = {
        "approval_key": approval_key,
        "custtype": "P",
        "tr_type": tr_type,
        "content-type": "utf-8",
    }
    return orjson.dumps(
        {"header": header, "body": {"input": {"tr_id": tr_id, "tr_key": tr_key}}}
    ).decode()


class Inbox:
    """Every frame one connection received, kept until a test asks for it (nothing is lost
    while waiting for another kind); each wait has an overall deadline."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.frames: list[str] = []

    async def _take(self, match: Any, timeout: float) -> str:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for i, text in enumerate(self.frames):
                if match(text):
                    return self.frames.pop(i)
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError("no such frame in time")
            msg = await asyncio.wait_for(self.ws.receive(), left)
            if msg.type is not aiohttp.WSMsgType.TEXT:
                raise ConnectionError(f"websocket {msg.type.name}")
            self.frames.append(msg.data)

    async def json(self, tr_id: str | None = None, timeout: float = 10.0) -> dict[str, Any]:
        def match(text: str) -> bool:
            if text[0] in "01":
                return False
            got = orjson.loads(text)["header"]["tr_id"]
            return got == tr_id if tr_id else got != "PINGPONG"

        return dict(orjson.loads(await self._take(match, timeout)))

    async def data(self, tr_id: str, timeout: float = 10.0) -> list[str]:
        text = await self._take(lambda t: t[0] in "01" and t.split("|")[1] == tr_id, timeout)
        return text.split("|")


async def test_fill_notices_are_encrypted_and_arrive_without_polling() -> None:
    async with (
        running(now=at(10, 0)) as (ex, clock),
        client(ex) as c,
        aiohttp.ClientSession() as http,
    ):
        key = await approval(http, ex.rest_url, KEY, SECRET)
        async with http.ws_connect(f"{ex.ws_url}/tryitout") as ws:
            inbox = Inbox(ws)
            await ws.send_str(request(key, "H0STCNI9", "user01"))
            reply = await inbox.json()
            assert reply["header"] == {"tr_id": "H0STCNI9", "tr_key": "user01", "encrypt": "Y"}
            assert reply["body"]["rt_cd"] == "0"
            assert reply["body"]["msg1"] == "SUBSCRIBE SUCCESS"
            aes_key, iv = reply["body"]["output"]["key"], reply["body"]["output"]["iv"]
            assert (len(aes_key), len(iv)) == (32, 16)
            symbol = liquid_symbol(ex)
            lower, _upper = ex.venue.market.limits(symbol)
            # A resting BUY far from the market: accepted now, filled later.
            bid = ex.venue.market.quote(symbol, at(10, 0)).bid
            odno = (await c.order("BUY", symbol, 50, int(bid))).json()["output"]["ODNO"]
            enc, _tr_id, count, payload = await inbox.data("H0STCNI9")
            assert (enc, count) == ("1", "001")
            fields = decrypt(aes_key, iv, payload).split("^")
            assert len(fields) == len(NOTICE_COLUMNS)
            notice = dict(zip(NOTICE_COLUMNS, fields, strict=True))
            assert (notice["ODER_NO"], notice["CNTG_YN"], notice["CUST_ID"]) == (
                odno,
                "1",
                "user01",
            )
            assert notice["ODER_QTY"] == "50"
            assert notice["SELN_BYOV_CLS"] == "02"
            # The clock moves on; nobody asks the REST side; the pump matches and notifies.
            filled = 0
            deadline = 40
            while filled < 50 and deadline:
                deadline -= 1
                clock.t += timedelta(minutes=1)
                try:
                    _, _, _, payload = await inbox.data("H0STCNI9", timeout=1.0)
                except TimeoutError:
                    continue
                n = dict(zip(NOTICE_COLUMNS, decrypt(aes_key, iv, payload).split("^"), strict=True))
                assert n["CNTG_YN"] == "2"
                assert n["ODER_NO"] == odno
                assert lower <= int(n["CNTG_UNPR"]) <= bid  # one execution, one price
                filled += int(n["CNTG_QTY"])
            assert filled == 50
            assert ex.venue.orders[0].filled_qty == 50


async def test_one_session_per_app_key_and_forty_subscriptions() -> None:
    async with running() as (ex, _), aiohttp.ClientSession() as http:
        key = await approval(http, ex.rest_url, KEY, SECRET)
        async with http.ws_connect(f"{ex.ws_url}/tryitout") as first:
            inbox = Inbox(first)
            symbols = list(ex.venue.market.symbols)
            for s in symbols[:40]:
                await first.send_str(request(key, "H0STCNT0", s))
                assert (await inbox.json())["body"]["rt_cd"] == "0"
            await first.send_str(request(key, "H0STASP0", symbols[0]))
            over = await inbox.json()
            assert (over["body"]["rt_cd"], over["body"]["msg_cd"]) == ("1", "OPSP0008")
            await first.send_str(request(key, "H0STCNT0", symbols[0], tr_type="2"))
            unsub = await inbox.json()
            assert unsub["body"]["msg1"].startswith("UNSUB")
            another = await approval(http, ex.rest_url, KEY, SECRET)  # a fresh approval key
            async with http.ws_connect(f"{ex.ws_url}/tryitout") as second:
                await second.send_str(request(another, "H0STCNT0", symbols[1]))
                refused = await Inbox(second).json()
                assert refused["body"]["msg1"] == "ALREADY IN USE appkey"
                assert (await second.receive()).type in (
                    aiohttp.WSMsgType.CLOSE,
                    aiohttp.WSMsgType.CLOSED,
                )
            other_key = await approval(http, ex.rest_url, KEY2, SECRET2)
            async with http.ws_connect(f"{ex.ws_url}/tryitout") as third:  # another app key
                await third.send_str(request(other_key, "H0STCNT0", symbols[1]))
                assert (await Inbox(third).json())["body"]["rt_cd"] == "0"
            await first.send_str(request(key, "H0STCNI9", "user02"))  # not this key's HTS id
            assert (await inbox.json())["body"]["rt_cd"] != "0"


async def test_trades_asking_prices_and_pingpong() -> None:
    async with (
        running(now=at(10, 0), ping_interval_s=0.2) as (ex, clock),
        aiohttp.ClientSession() as http,
    ):
        key = await approval(http, ex.rest_url, KEY, SECRET)
        symbol = liquid_symbol(ex)
        async with http.ws_connect(f"{ex.ws_url}/tryitout") as ws:
            inbox = Inbox(ws)
            for tr_id in ("H0STCNT0", "H0STASP0"):
                await ws.send_str(request(key, tr_id, symbol))
                reply = await inbox.json()
                assert reply["body"]["rt_cd"] == "0"
                assert reply["header"]["encrypt"] == "N"
            _, _, _count, data = await inbox.data("H0STCNT0")
            trade = dict(zip(TRADE_COLUMNS, data.split("^"), strict=True))
            assert trade["MKSC_SHRN_ISCD"] == symbol
            assert trade["STCK_CNTG_HOUR"] == "100000"
            clock.t += timedelta(seconds=30)
            _, _, _, data = await inbox.data("H0STCNT0")
            later = dict(zip(TRADE_COLUMNS, data.split("^"), strict=True))
            assert int(later["ACML_VOL"]) - int(trade["ACML_VOL"]) == int(later["CNTG_VOL"]) > 0
            _, _, _, book = await inbox.data("H0STASP0")
            assert len(book.split("^")) == 59
            assert book.split("^")[0] == symbol
            ping = await inbox.json("PINGPONG")
            assert len(ping["header"]["datetime"]) == 14
            await ws.send_str(orjson.dumps(ping).decode())  # KIS clients echo it
            await ws.send_str(request(key, "H0STCNT0", symbol, tr_type="2"))
            assert (await inbox.json("H0STCNT0"))["body"]["rt_cd"] == "0"


@pytest.mark.slow
def test_cli_prints_its_urls_first_and_stops_on_sigterm() -> None:
    env = {
        **os.environ,
        "PAPER_SPEED": "100",
        "PAPER_SYMBOLS": "20",
        "EXCHANGE_APP_KEY": "k1",
        "EXCHANGE_APP_SECRET": "s1",
        "EXCHANGE_CASH": "5000000",
    }
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "worker",
            "exchange",
            "--port",
            "0",
            "--ws-port",
            "0",
            "--domain",
            "real",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().strip()
        words = first.split(" ")
        assert words[0] == "exchange", first
        assert words[3] == "domain=real", first
        assert words[1].startswith("rest=http://127.0.0.1:")
        assert words[2].startswith("ws=ws://127.0.0.1:")
        assert int(words[1].rsplit(":", 1)[1]) > 0
        assert int(words[2].rsplit(":", 1)[1]) > 0
        second = proc.stdout.readline()
        assert "app_key=k1" in second
        assert "s1" not in second
        assert "cash=5000000" in second
        import httpx

        token = httpx.post(
            f"{words[1][5:]}/oauth2/tokenP",
            json={"grant_type": "client_credentials", "appkey": "k1", "appsecret": "s1"},
            timeout=10,
        )
        assert token.status_code == 200
        assert token.json()["access_token"]
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
