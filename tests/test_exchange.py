"""The exchange's REST side, driven with raw HTTP the way a KIS client would drive KIS."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest

from exchange import ExchangeAccount, ExchangeConfig, RunningExchange, serve_exchange
from exchange.config import Domain
from market.calendar import Session
from market.clock import KST, ManualClock
from market.sim import SimulatedMarket

pytestmark = pytest.mark.anyio

DAY = date(2025, 3, 4)
V1 = "/uapi/domestic-stock/v1"
KEY, SECRET = "PSappkey0001", "secret-one"
KEY2, SECRET2 = "PSappkey0002", "secret-two"


def at(hh: int, mm: int, ss: int = 0) -> datetime:
    return datetime(DAY.year, DAY.month, DAY.day, hh, mm, ss, tzinfo=KST)


SESSION = Session(DAY, at(9, 0), at(15, 20), at(15, 30))


def config(domain: Domain = "mock", **kw: Any) -> ExchangeConfig:
    accounts = (
        ExchangeAccount(
            KEY,
            SECRET,
            account="12345678-01",
            hts_id="user01",
            cash=kw.pop("cash", Decimal(100_000_000)),
        ),
        ExchangeAccount(KEY2, SECRET2, account="87654321-01", hts_id="user02"),
    )
    kw.setdefault("rate_limit", False)
    return ExchangeConfig(accounts=accounts, domain=domain, session=SESSION, n_symbols=40, **kw)


@asynccontextmanager
async def running(
    domain: Domain = "mock", now: datetime | None = None, **kw: Any
) -> AsyncIterator[tuple[RunningExchange, ManualClock]]:
    clock = ManualClock(now or at(10, 0))
    async with serve_exchange(config(domain, **kw), clock) as ex:
        yield ex, clock


class Client:
    """What a KIS client sends: token, appkey/appsecret, tr_id, custtype, upper-case bodies."""

    def __init__(self, ex: RunningExchange, key: str = KEY, secret: str = SECRET) -> None:
        self.ex = ex
        self.http = httpx.AsyncClient(base_url=ex.rest_url, timeout=10)
        self.key, self.secret = key, secret
        self.token = ""
        self.mock = ex.venue.config.mock
        acct = ex.venue.accounts[key].spec
        self.acct = {"CANO": acct.cano, "ACNT_PRDT_CD": acct.product_code}

    async def aclose(self) -> None:
        await self.http.aclose()

    async def issue(self) -> httpx.Response:
        body = {"grant_type": "client_credentials", "appkey": self.key, "appsecret": self.secret}
        return await self.http.post("/oauth2/tokenP", json=body)

    async def login(self) -> None:
        r = await self.issue()
        assert r.status_code == 200, r.text
        self.token = r.json()["access_token"]

    def tr(self, real: str) -> str:
        return "V" + real[1:] if self.mock and real[0] == "T" else real

    def headers(self, tr_id: str, tr_cont: str = "") -> dict[str, str]:
        h = {
            "authorization": f"Bearer {self.token}",
            "appkey": self.key,
            "appsecret": self.secret,
            "tr_id": tr_id,
            "custtype": "P",
        }
        if tr_cont:
            h["tr_cont"] = tr_cont
        return h

    async def get(
        self, path: str, tr_id: str, params: dict[str, str], tr_cont: str = ""
    ) -> httpx.Response:
        return await self.http.get(
            f"{V1}/{path}", params=params, headers=self.headers(tr_id, tr_cont)
        )

    async def post(self, path: str, tr_id: str, body: dict[str, str]) -> httpx.Response:
        return await self.http.post(f"{V1}/{path}", json=body, headers=self.headers(tr_id))

    async def price(self, symbol: str) -> httpx.Response:
        params = {"FID_COND_MRKT_DIV_CODE": "J", "FID_INPUT_ISCD": symbol}
        return await self.get("quotations/inquire-price", "FHKST01010100", params)

    async def order(
        self, side: str, symbol: str, qty: int, price: int | None = None
    ) -> httpx.Response:
        body = {
            **self.acct,
            "PDNO": symbol,
            "ORD_DVSN": "01" if price is None else "00",
            "ORD_QTY": str(qty),
            "ORD_UNPR": "0" if price is None else str(price),
            "EXCG_ID_DVSN_CD": "KRX",
        }
        tr_id = self.tr("TTTC0012U" if side == "BUY" else "TTTC0011U")
        return await self.post("trading/order-cash", tr_id, body)

    async def cancel(self, odno: str) -> httpx.Response:
        body = {
            **self.acct,
            "KRX_FWDG_ORD_ORGNO": "06010",
            "ORGN_ODNO": odno,
            "ORD_DVSN": "00",
            "RVSE_CNCL_DVSN_CD": "02",
            "ORD_QTY": "0",
            "ORD_UNPR": "0",
            "QTY_ALL_ORD_YN": "Y",
            "EXCG_ID_DVSN_CD": "KRX",
        }
        return await self.post("trading/order-rvsecncl", self.tr("TTTC0013U"), body)

    def ccld_params(self, **kw: str) -> dict[str, str]:
        return {
            **self.acct,
            "INQR_STRT_DT": DAY.strftime("%Y%m%d"),
            "INQR_END_DT": DAY.strftime("%Y%m%d"),
            "SLL_BUY_DVSN_CD": "00",
            "PDNO": "",
            "CCLD_DVSN": "00",
            "INQR_DVSN": "01",
            "INQR_DVSN_1": "",
            "INQR_DVSN_3": "00",
            "ORD_GNO_BRNO": "",
            "ODNO": "",
            "EXCG_ID_DVSN_CD": "KRX",
            "CTX_AREA_FK100": "",
            "CTX_AREA_NK100": "",
            **kw,
        }

    async def ccld_page(self, params: dict[str, str], tr_cont: str = "") -> httpx.Response:
        return await self.get("trading/inquire-daily-ccld", self.tr("TTTC0081R"), params, tr_cont)

    async def rows(self) -> list[dict[str, str]]:
        """Every inquire-daily-ccld row, paging as KIS's client does."""
        params = self.ccld_params()
        out: list[dict[str, str]] = []
        tr_cont = ""
        for _ in range(50):
            r = await self.ccld_page(params, tr_cont)
            body = r.json()
            assert body["rt_cd"] == "0", body
            out += body["output1"]
            if r.headers["tr_cont"] not in ("F", "M"):
                return out
            params["CTX_AREA_FK100"] = body["ctx_area_fk100"]
            params["CTX_AREA_NK100"] = body["ctx_area_nk100"]
            tr_cont = "N"
        raise AssertionError("too many pages")


@asynccontextmanager
async def client(
    ex: RunningExchange, key: str = KEY, secret: str = SECRET
) -> AsyncIterator[Client]:
    c = Client(ex, key, secret)
    await c.login()
    try:
        yield c
    finally:
        await c.aclose()


def liquid_symbol(ex: RunningExchange) -> str:
    """A symbol with a deep book, traded at a moderate price."""
    market: SimulatedMarket = ex.venue.market
    return max(
        market.symbols, key=lambda s: (market.instrument(s).tier, -market.instrument(s).prev_close)
    )


async def wait_for(probe: Callable[[], Awaitable[Any]], timeout: float = 10.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


# ----- tokens -----------------------------------------------------------------------------------


async def test_tokens_reuse_one_a_minute_expiry_and_unknown() -> None:
    async with running() as (ex, clock):
        c = Client(ex)
        first = await c.issue()
        assert first.status_code == 200
        t1 = first.json()
        assert t1["token_type"] == "Bearer"
        assert t1["expires_in"] == 86_400
        assert t1["access_token_token_expired"] == "2025-03-05 10:00:00"
        again = await c.issue()
        assert again.status_code == 403
        assert again.json()["error_code"] == "EGW00133"
        clock.t += timedelta(minutes=2)
        reused = (await c.issue()).json()
        assert reused["access_token"] == t1["access_token"]
        assert reused["access_token_token_expired"] == t1["access_token_token_expired"]
        clock.t += timedelta(hours=6)
        fresh = (await c.issue()).json()
        assert fresh["access_token"] != t1["access_token"]
        c.token = t1["access_token"]  # the old token still works until its own expiry
        assert (await c.price(ex.venue.market.symbols[0])).json()["rt_cd"] == "0"
        clock.t = at(10, 0) + timedelta(hours=24)
        expired = await c.price(ex.venue.market.symbols[0])
        assert expired.status_code == 500
        assert expired.json()["msg_cd"] == "EGW00123"
        c.token = fresh["access_token"]
        assert (await c.price(ex.venue.market.symbols[0])).json()["rt_cd"] == "0"
        c.token = "not-a-token"
        unknown = await c.price(ex.venue.market.symbols[0])
        assert (unknown.status_code, unknown.json()["msg_cd"]) == (500, "EGW00121")
        other = Client(ex, KEY2, SECRET2)
        other.token = fresh["access_token"]  # another app key's token
        assert (await other.price(ex.venue.market.symbols[0])).json()["msg_cd"] == "EGW00121"
        bad = Client(ex, KEY, "wrong")
        assert (await bad.issue()).status_code == 403
        stats = (await c.http.get("/__exchange/stats")).json()
        assert stats["token_issues"][KEY] == 3
        for x in (c, other, bad):
            await x.aclose()


# ----- rate limit -------------------------------------------------------------------------------


@pytest.mark.parametrize(("domain", "rate"), [("mock", 2), ("real", 20)])
async def test_rate_limit_per_app_key_counted_on_arrival(domain: Domain, rate: int) -> None:
    async with (
        running(domain, rate_limit=True) as (ex, _),
        client(ex) as c,
        client(ex, KEY2, SECRET2) as c2,
    ):
        now = [100.0]
        ex.limiter.monotonic = lambda: now[0]
        symbol = ex.venue.market.symbols[0]
        for _ in range(rate):
            assert (await c.price(symbol)).json()["rt_cd"] == "0"
        refused = await c.price(symbol)
        assert refused.status_code == 500
        assert refused.json()["msg_cd"] == "EGW00201"
        assert (await c2.price(symbol)).json()["rt_cd"] == "0"  # another app key, its own budget
        now[0] += 0.5
        assert (await c.price(symbol)).status_code == 500  # still the same second
        now[0] += 0.6
        assert (await c.price(symbol)).json()["rt_cd"] == "0"
        stats = (await c.http.get("/__exchange/stats")).json()
        assert stats["rate_limited"][KEY]["FHKST01010100"] == 2
        assert stats["requests"][KEY]["FHKST01010100"] == rate + 3
        ex.limiter.enabled = False
        for _ in range(3 * rate):
            assert (await c.price(symbol)).status_code == 200


async def test_rate_limit_counts_the_arrival_not_the_moment_the_loop_got_to_it() -> None:
    """Mock (2/s): r1 arrives while the exchange's loop is busy for a second and is handled
    only after it; r2 and r3 follow 1.1 s and 1.45 s after r1. Counted on arrival every
    one-second window holds at most two, so all three pass; counted when handled, r1, r2 and r3
    would share one second and r3 would be refused."""
    async with running("mock", rate_limit=True) as (ex, _), client(ex) as c:
        symbol = ex.venue.market.symbols[0]
        params = {"FID_COND_MRKT_DIV_CODE": "J", "FID_INPUT_ISCD": symbol}
        url = f"{ex.rest_url}{V1}/quotations/inquire-price"
        headers = c.headers("FHKST01010100")
        sent: list[float] = []
        busy = threading.Event()

        def block() -> None:
            busy.set()
            time.sleep(1.0)  # a long matching pass: the loop reads no socket meanwhile

        def send_three() -> list[int]:
            codes = []
            assert busy.wait(30)
            with httpx.Client(timeout=10) as http:
                for offset in (0.0, 1.1, 1.45):
                    pause = sent[0] + offset - time.monotonic() if sent else 0.0
                    time.sleep(max(0.0, pause))
                    sent.append(time.monotonic())
                    codes.append(http.get(url, params=params, headers=headers).status_code)
            return codes

        sender = asyncio.ensure_future(asyncio.to_thread(send_three))
        await asyncio.sleep(0)  # the sender's thread starts and waits for the busy loop
        asyncio.get_running_loop().call_soon(block)
        codes = await sender
        assert codes == [200, 200, 200]
        log = list(ex.limiter.log)[-3:]
        (a1, h1), (a2, _), (a3, _) = log
        assert h1 - a1 > 0.5, "r1 waited for the busy loop, but counts from its arrival"
        tolerance = 0.001  # the kernel's wall-clock stamp moved onto the monotonic clock
        assert a1 >= sent[0] - tolerance
        assert a1 < h1
        assert a3 - a1 > 1.0  # r1 and r3 share no second at the exchange
        assert a2 >= sent[1] - tolerance
        assert a3 >= sent[2] - tolerance


# ----- headers ----------------------------------------------------------------------------------


async def test_response_headers_keep_kis_case() -> None:
    """KIS's client turns every all-lower-case header into a namedtuple field: Content-Type must
    be capitalised and KIS's own headers lower case with underscores."""
    async with running() as (ex, _), client(ex) as c:
        symbol = ex.venue.market.symbols[0]
        reader, writer = await asyncio.open_connection(ex.host, ex.port)
        h = c.headers("FHKST01010100")
        query = f"FID_COND_MRKT_DIV_CODE=J&FID_INPUT_ISCD={symbol}"
        lines = [
            f"GET {V1}/quotations/inquire-price?{query} HTTP/1.1",
            f"Host: {ex.host}",
            "Connection: close",
            *(f"{k}: {v}" for k, v in h.items()),
        ]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        raw = (await reader.read()).decode()
        writer.close()
        head = raw.split("\r\n\r\n")[0].split("\r\n")[1:]
        names = [line.split(":")[0] for line in head]
        assert "Content-Type" in names
        assert {"tr_id", "tr_cont", "gt_uid"} <= set(names)
        lower = [n for n in names if n.islower()]
        assert all(n.isidentifier() for n in lower), lower  # a namedtuple accepts them
        r = await c.price(symbol)
        assert r.headers["tr_id"] == "FHKST01010100"
        assert r.json()["output"]["stck_shrn_iscd"] == symbol
        assert all(isinstance(v, str) for v in r.json()["output"].values())


# ----- orders, fills, paging ------------------------------------------------------------------


async def test_market_buy_fills_and_the_reply_is_kis_shaped() -> None:
    async with running() as (ex, _), client(ex) as c:
        symbol = liquid_symbol(ex)
        r = await c.order("BUY", symbol, 10)
        body = r.json()
        assert body["rt_cd"] == "0", body
        out = body["output"]
        assert set(out) == {"KRX_FWDG_ORD_ORGNO", "ODNO", "ORD_TMD"}
        assert len(out["ODNO"]) == 10
        assert out["ODNO"].isdigit()
        assert out["ORD_TMD"] == "100000"
        rows = await c.rows()
        assert [r["odno"] for r in rows] == [out["ODNO"]]
        row = rows[0]
        assert row["tot_ccld_qty"] == "10"
        assert row["rmn_qty"] == "0"
        assert int(row["tot_ccld_amt"]) == sum(
            e.qty * e.price for e in ex.venue.broker.executions(ex.venue.orders[0].broker_id)
        )
        assert row["sll_buy_dvsn_cd"] == "02"
        assert row["pdno"] == symbol
        assert all(isinstance(v, str) for v in row.values())
        # A real tr_id on the mock domain is another service.
        wrong = await c.post("trading/order-cash", "TTTC0012U", {**c.acct, "PDNO": symbol})
        assert wrong.json()["msg_cd"] == "OPSQ0002"


@pytest.mark.slow
@pytest.mark.parametrize(("domain", "size"), [("mock", 15), ("real", 100)])
async def test_daily_fills_page_with_padded_keys(domain: Domain, size: int) -> None:
    async with running(domain) as (ex, _), client(ex) as c:
        symbol = liquid_symbol(ex)
        lower = int(ex.venue.market.limits(symbol)[0])
        n = 2 * size + 3
        placed = []
        for _ in range(n):
            body = (await c.order("BUY", symbol, 1, lower)).json()
            assert body["rt_cd"] == "0", body
            placed.append(body["output"]["ODNO"])
        params = c.ccld_params()
        first = await c.ccld_page(params)
        b1 = first.json()
        assert first.headers["tr_cont"] == "F"
        assert len(b1["output1"]) == size
        assert len(b1["ctx_area_fk100"]) == 100
        assert len(b1["ctx_area_nk100"]) == 100
        assert b1["ctx_area_nk100"].endswith(" ")
        assert b1["ctx_area_nk100"].strip()
        # A trimmed key (what a careless client sends) is refused, not silently restarted.
        trimmed = c.ccld_params(
            CTX_AREA_FK100=b1["ctx_area_fk100"], CTX_AREA_NK100=b1["ctx_area_nk100"].strip()
        )
        refused = (await c.ccld_page(trimmed, "N")).json()
        assert (refused["rt_cd"], refused["msg_cd"]) == ("2", "OPSQ2001")
        follow = c.ccld_params(
            CTX_AREA_FK100=b1["ctx_area_fk100"], CTX_AREA_NK100=b1["ctx_area_nk100"]
        )
        second = await c.ccld_page(follow, "N")
        assert second.headers["tr_cont"] == "M"
        rows = await c.rows()
        assert [r["odno"] for r in rows] == placed  # INQR_DVSN 01: oldest first, each once
        newest = await c.ccld_page(c.ccld_params(INQR_DVSN="00"))
        assert newest.json()["output1"][0]["odno"] == placed[-1]
        one = (await c.ccld_page(c.ccld_params(ODNO=placed[3]))).json()
        assert [r["odno"] for r in one["output1"]] == [placed[3]]
        last = await c.ccld_page(c.ccld_params(ODNO=placed[3]))  # one page, the last
        assert last.headers["tr_cont"] == "D"


async def test_cash_and_holdings_refusals() -> None:
    async with running(cash=Decimal(1_000_000)) as (ex, _), client(ex) as c:
        symbol = liquid_symbol(ex)
        price = int(ex.venue.market.quote(symbol, at(10, 0)).ask)
        qty = 1_000_000 // price
        too_much = (await c.order("BUY", symbol, qty + 1, price)).json()
        assert (too_much["rt_cd"], too_much["msg_cd"]) == ("1", "40250000")
        lower = int(ex.venue.market.limits(symbol)[0])
        half = 600_000 // lower
        assert (await c.order("BUY", symbol, half, lower)).json()["rt_cd"] == "0"
        # The working BUY holds its cash back: the same again does not fit.
        assert (await c.order("BUY", symbol, half, lower)).json()["msg_cd"] == "40250000"
        no_shares = (await c.order("SELL", symbol, 1)).json()
        assert (no_shares["rt_cd"], no_shares["msg_cd"]) == ("1", "40270000")
        assert (await c.order("BUY", symbol, 5)).json()["rt_cd"] == "0"  # market: fills now
        assert ex.venue.accounts[KEY].held(symbol) == 5
        assert (await c.order("SELL", symbol, 6)).json()["msg_cd"] == "40270000"
        assert (await c.order("SELL", symbol, 3, int(ex.venue.market.limits(symbol)[1]))).json()[
            "rt_cd"
        ] == "0"
        # 3 are promised to the working SELL: 2 remain sellable.
        assert (await c.order("SELL", symbol, 3)).json()["msg_cd"] == "40270000"
        assert (await c.order("SELL", symbol, 2)).json()["rt_cd"] == "0"
        off_grid = (await c.order("BUY", symbol, 1, lower + 1)).json() if lower >= 2000 else None
        if off_grid is not None:
            assert off_grid["rt_cd"] == "1"
        beyond = (
            await c.order("BUY", symbol, 1, int(ex.venue.market.limits(symbol)[1]) * 2)
        ).json()
        assert beyond["rt_cd"] == "1"
        balance = (
            await c.get(
                "trading/inquire-balance",
                "VTTC8434R",
                {**c.acct, "INQR_DVSN": "02", "PRCS_DVSN": "00"},
            )
        ).json()
        [holding] = balance["output1"]
        assert holding["pdno"] == symbol
        assert holding["hldg_qty"] == "3"
        cash = Decimal(balance["output2"][0]["dnca_tot_amt"])
        assert cash == ex.venue.accounts[KEY].cash
        power = (
            await c.get(
                "trading/inquire-psbl-order",
                "VTTC8908R",
                {
                    **c.acct,
                    "PDNO": symbol,
                    "ORD_UNPR": str(lower),
                    "ORD_DVSN": "00",
                    "CMA_EVLU_AMT_ICLD_YN": "N",
                    "OVRS_ICLD_YN": "N",
                },
            )
        ).json()
        assert Decimal(power["output"]["ord_psbl_cash"]) == ex.venue.available_cash(
            ex.venue.accounts[KEY]
        )
        assert int(power["output"]["nrcvb_buy_qty"]) * lower <= Decimal(
            power["output"]["ord_psbl_cash"]
        )


async def test_orders_outside_the_session_are_refused() -> None:
    async with running(now=at(8, 30)) as (ex, clock), client(ex) as c:
        symbol = liquid_symbol(ex)
        assert (await c.order("BUY", symbol, 1)).json()["msg_cd"] == "40570000"
        clock.set(at(15, 31))
        assert (await c.order("BUY", symbol, 1)).json()["msg_cd"] == "40580000"


async def test_late_listing() -> None:
    async with running(listing_lag_s=30.0) as (ex, clock), client(ex) as c:
        symbol = liquid_symbol(ex)
        odno = (await c.order("BUY", symbol, 1)).json()["output"]["ODNO"]
        assert await c.rows() == []
        clock.t += timedelta(seconds=29)
        assert await c.rows() == []
        clock.t += timedelta(seconds=2)
        assert [r["odno"] for r in await c.rows()] == [odno]


async def test_ambiguous_reply_but_the_order_was_placed() -> None:
    async with running() as (ex, _), client(ex) as c:
        symbol = liquid_symbol(ex)
        ex.venue.faults.force_ambiguous(2)
        replies = [await c.order("BUY", symbol, 1) for _ in range(3)]
        for r in replies[:2]:
            body = r.json()
            assert r.status_code == 500 or body["rt_cd"] != "0"
            assert "output" not in body
        assert replies[2].json()["rt_cd"] == "0"
        rows = await c.rows()
        assert len(rows) == 3  # all three were placed
        assert ex.venue.accounts[KEY].held(symbol) == 3
        assert (await c.http.get("/__exchange/stats")).json()["ambiguous_replies"] == 2


async def test_ambiguous_rate_is_deterministic_from_the_seed() -> None:
    outcomes = []
    for _ in range(2):
        async with running(ambiguous_rate=0.5, fault_seed=11) as (ex, _), client(ex) as c:
            symbol = liquid_symbol(ex)
            seq = [(await c.order("BUY", symbol, 1)).status_code for _ in range(12)]
            outcomes.append((seq, len(ex.venue.orders), ex.venue.stats.ambiguous))
    assert outcomes[0] == outcomes[1]
    assert 0 < outcomes[0][2] < 12
    assert outcomes[0][1] == 12  # every order was placed, whatever the reply said


async def test_cancel_shows_on_the_order_and_as_its_own_row() -> None:
    async with running(domain="real") as (ex, _), client(ex) as c:
        symbol = liquid_symbol(ex)
        lower = int(ex.venue.market.limits(symbol)[0])
        account = ex.venue.accounts[KEY]
        before = ex.venue.available_cash(account)
        odno = (await c.order("BUY", symbol, 7, lower)).json()["output"]["ODNO"]
        assert ex.venue.available_cash(account) < before
        psbl = (
            await c.get(
                "trading/inquire-psbl-rvsecncl",
                "TTTC0084R",
                {
                    **c.acct,
                    "INQR_DVSN_1": "0",
                    "INQR_DVSN_2": "0",
                    "CTX_AREA_FK100": "",
                    "CTX_AREA_NK100": "",
                },
            )
        ).json()
        assert [(r["odno"], r["psbl_qty"]) for r in psbl["output"]] == [(odno, "7")]
        r = (await c.cancel(odno)).json()
        assert r["rt_cd"] == "0", r
        cancel_no = r["output"]["odno"]
        assert cancel_no != odno
        rows = {row["odno"]: row for row in await c.rows()}
        assert rows[odno]["rmn_qty"] == "0"
        assert rows[odno]["cnc_cfrm_qty"] == "7"
        assert rows[cancel_no]["orgn_odno"] == odno
        assert rows[cancel_no]["cncl_yn"] == "Y"
        assert ex.venue.available_cash(account) == before
        again = (await c.cancel(odno)).json()
        assert (again["rt_cd"], again["msg_cd"]) == ("1", "APBK0344")
        unknown = (await c.cancel("0000099999")).json()
        assert unknown["rt_cd"] == "1"


async def test_closing_auction_and_the_minute_bars_gap() -> None:
    async with running(now=at(15, 25)) as (ex, clock), client(ex) as c:
        symbol = liquid_symbol(ex)
        odno = (await c.order("BUY", symbol, 4)).json()["output"]["ODNO"]
        [row] = await c.rows()
        assert row["rmn_qty"] == "4"
        assert row["tot_ccld_qty"] == "0"
        clock.set(at(15, 30))
        [row] = await c.rows()
        price = ex.venue.market.auction_price(symbol)
        assert (row["odno"], row["tot_ccld_qty"], row["avg_prvs"]) == (odno, "4", str(int(price)))
        bars = (
            await c.get(
                "quotations/inquire-time-itemchartprice",
                "FHKST03010200",
                {
                    "FID_COND_MRKT_DIV_CODE": "J",
                    "FID_INPUT_ISCD": symbol,
                    "FID_INPUT_HOUR_1": "160000",
                    "FID_PW_DATA_INCU_YN": "Y",
                    "FID_ETC_CLS_CODE": "",
                },
            )
        ).json()["output2"]
        hours = [b["stck_cntg_hour"] for b in bars]
        assert len(bars) == 30
        assert hours[:3] == ["153000", "151900", "151800"]
        assert bars[0]["stck_prpr"] == str(int(price))
        assert all(b["stck_bsop_date"] == "20250304" for b in bars)


async def test_minute_bars_thirty_a_call_and_the_first_row_quirk() -> None:
    async with running(now=at(10, 5)) as (ex, _), client(ex) as c:
        symbol = liquid_symbol(ex)
        params = {
            "FID_COND_MRKT_DIV_CODE": "J",
            "FID_INPUT_ISCD": symbol,
            "FID_INPUT_HOUR_1": "120000",
            "FID_PW_DATA_INCU_YN": "Y",
            "FID_ETC_CLS_CODE": "",
        }
        bars = (
            await c.get("quotations/inquire-time-itemchartprice", "FHKST03010200", params)
        ).json()["output2"]
        hours = [b["stck_cntg_hour"] for b in bars]
        assert hours[0] == "100500"  # a later hour reads as now
        assert hours[1:3] == ["100400", "100300"]
        assert len(bars) == 30
        assert hours[-1] == "093600"
        # At 10:05:00.000 nothing traded yet in the 10:05 bar: it shows the 10:04 bar's volume.
        assert bars[0]["cntg_vol"] == bars[1]["cntg_vol"] != "0"
        early = (
            await c.get(
                "quotations/inquire-time-itemchartprice",
                "FHKST03010200",
                params | {"FID_INPUT_HOUR_1": "090300"},
            )
        ).json()["output2"]
        assert [b["stck_cntg_hour"] for b in early] == ["090300", "090200", "090100", "090000"]


async def test_volume_rank_real_only_with_exclusions() -> None:
    async with running(domain="real") as (ex, _), client(ex) as c:
        params = {
            "FID_COND_MRKT_DIV_CODE": "J",
            "FID_COND_SCR_DIV_CODE": "20171",
            "FID_INPUT_ISCD": "0000",
            "FID_DIV_CLS_CODE": "0",
            "FID_BLNG_CLS_CODE": "0",
            "FID_TRGT_CLS_CODE": "111111111",
            "FID_TRGT_EXLS_CLS_CODE": "0000000000",
            "FID_INPUT_PRICE_1": "",
            "FID_INPUT_PRICE_2": "",
            "FID_VOL_CNT": "",
            "FID_INPUT_DATE_1": "",
        }
        rows = (await c.get("quotations/volume-rank", "FHPST01710000", params)).json()["output"]
        assert len(rows) == 30
        volumes = [int(r["acml_vol"]) for r in rows]
        assert volumes == sorted(volumes, reverse=True)
        flagged = {s for s, t in ex.venue.traits.items() if t.preferred or t.etf or t.warning}
        assert flagged & {r["mksc_shrn_iscd"] for r in rows}
        excluded = (
            await c.get(
                "quotations/volume-rank",
                "FHPST01710000",
                params | {"FID_TRGT_EXLS_CLS_CODE": "1000101000"},
            )
        ).json()["output"]
        assert not flagged & {r["mksc_shrn_iscd"] for r in excluded}
    async with running(domain="mock") as (ex, _), client(ex) as c:
        refused = (await c.get("quotations/volume-rank", "FHPST01710000", params)).json()
        assert refused["rt_cd"] == "1"


async def test_stats_per_account() -> None:
    async with running() as (ex, _), client(ex) as c:
        symbol = liquid_symbol(ex)
        await c.order("BUY", symbol, 3)
        stats = (await c.http.get("/__exchange/stats")).json()
        acct = stats["accounts"]["12345678-01"]
        assert acct["orders"] == 1
        assert acct["holdings"] == {symbol: 3}
        assert acct["fills"] >= 1
        assert acct["filled_qty"] == 3
        assert Decimal(acct["cash"]) < Decimal(100_000_000)
        assert stats["requests"][KEY]["VTTC0012U"] == 1
        assert stats["accounts"]["87654321-01"]["orders"] == 0
