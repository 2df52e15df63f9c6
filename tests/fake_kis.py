"""A fake KIS Open API on loopback: a real HTTP server in a thread, for the KIS adapter tests.

It speaks the shapes the adapter relies on (rt_cd / msg_cd / msg1, output / output1 / output2,
upper-case POST bodies with string values, tr_cont paging with CTX_AREA_FK100 / NK100) and
enforces the rules that shape the design:

* ``/oauth2/tokenP`` issues at most once per `token_interval_s` (else HTTP 403 EGW00133);
  `expire_tokens()` makes every token answer EGW00123 from then on.
* `rate_per_s` requests per sliding second for the app key; beyond it HTTP 500 EGW00201.
* tr_id must match the path, side and domain (V-prefixed trading ids on "mock").

Matching model (tiny, deterministic): a MARKET order, or a LIMIT order that crosses the touch,
fills `fill_per_poll[symbol]` shares (default: all) at the touch each time the account's orders
are inquired, starting with the first inquiry after it was placed; other LIMIT orders rest.
Reject codes ``FK...`` are the fake's own; real KIS codes differ.

Fault switches: `drop_next_order` (record the order, then close the connection unanswered),
`delay_next_s` (sleep before answering the next API request), `fail_next_reads` (HTTP 503
without a KIS body).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from market.clock import (
    KST,  # re-exported for the KIS tests
)
from market.ticks import is_on_grid, price_limits

APP_KEY = "fake-app-key"
APP_SECRET = "fake-app-secret"
ACCOUNT = "50012345-01"
ORGNO = "91252"
_V1 = "/uapi/domestic-stock/v1"


@dataclass
class FakeStock:
    symbol: str
    name: str
    market: str  # rprs_mrkt_kor_name
    price: int
    prev_close: int
    bid: int
    ask: int
    avg_value: int  # won per session, recent days

    @property
    def limits(self) -> tuple[Decimal, Decimal]:
        return price_limits(Decimal(self.prev_close))


@dataclass
class FakeOrder:
    odno: str
    symbol: str
    side: str  # "01" sell, "02" buy
    qty: int
    price: int  # 0 for market
    dvsn: str
    at: datetime
    filled: int = 0
    amount: int = 0
    canceled: int = 0
    orgn_odno: str = ""
    informed: datetime | None = None
    seen_by_inquiry: bool = False

    @property
    def remaining(self) -> int:
        return self.qty - self.filled - self.canceled if not self.orgn_odno else 0


def default_stocks() -> list[FakeStock]:
    return [
        FakeStock(
            "005930", "삼성전자", "KOSPI200", 70_000, 69_500, 69_900, 70_000, 900_000_000_000
        ),
        FakeStock(
            "000660", "SK하이닉스", "KOSPI200", 180_000, 178_000, 179_900, 180_000, 500_000_000_000
        ),
        FakeStock("035720", "카카오", "KOSPI", 41_000, 40_800, 40_950, 41_000, 40_000_000_000),
        FakeStock(
            "091990", "셀트리온헬스케어", "KOSDAQ", 8_000, 8_100, 7_990, 8_000, 5_000_000_000
        ),
        FakeStock("123456", "테스트", "KOSDAQ", 1_500, 1_500, 1_499, 1_500, 1_000_000_000),
    ]


@dataclass
class FakeKis:
    clock: Callable[[], datetime]
    domain: str = "real"
    rate_per_s: int = 1000
    token_interval_s: float = 60.0
    page_size: int = 100
    stocks: dict[str, FakeStock] = field(default_factory=dict)
    fill_per_poll: dict[str, int] = field(default_factory=dict)
    # observations
    issued: int = 0
    rate_limited: int = 0
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    orders: list[FakeOrder] = field(default_factory=list)
    # faults
    drop_next_order: bool = False
    delay_next_s: float = 0.0
    fail_next_reads: int = 0

    def __post_init__(self) -> None:
        if not self.stocks:
            self.stocks = {s.symbol: s for s in default_stocks()}
        self.lock = threading.Lock()
        self._tokens: set[str] = set()
        self._expired: set[str] = set()
        self._last_issue = float("-inf")
        self._window: deque[float] = deque()
        self._next_no = 1

    # ----- controls -----------------------------------------------------------------------

    def expire_tokens(self) -> None:
        with self.lock:
            self._expired |= self._tokens

    def placed(self, symbol: str | None = None) -> list[FakeOrder]:
        with self.lock:
            return [o for o in self.orders if not o.orgn_odno and symbol in (None, o.symbol)]

    # ----- dispatch (called from the server threads) ---------------------------------------

    def handle(self, method: str, path: str, headers: dict[str, str], data: dict[str, str]):
        """-> (status, headers, body or None to drop the connection)."""
        if path == "/oauth2/tokenP":
            return self._token(data)
        with self.lock:
            token = headers.get("authorization", "").removeprefix("Bearer ")
            if token in self._expired:
                return 500, {}, _err("EGW00123", "기간이 만료된 token 입니다.")
            if token not in self._tokens or headers.get("appkey") != APP_KEY:
                return 500, {}, _err("EGW00121", "유효하지 않은 token 입니다.")
            if headers.get("appsecret") != APP_SECRET or headers.get("custtype") != "P":
                return 500, {}, _err("FK000000", "bad headers")
            now = time.monotonic()
            while self._window and self._window[0] <= now - 1.0:
                self._window.popleft()
            if len(self._window) >= self.rate_per_s:
                self.rate_limited += 1
                return 500, {}, _err("EGW00201", "초당 거래건수를 초과하였습니다.")
            self._window.append(now)
            self.requests.append((method, path, dict(data)))
            delay, self.delay_next_s = self.delay_next_s, 0.0
            if method == "GET" and self.fail_next_reads:
                self.fail_next_reads -= 1
                return 503, {}, b"<html>Service Unavailable</html>"
        if delay:
            time.sleep(delay)
        tr_id = headers.get("tr_id", "")
        with self.lock:
            routes = {
                f"{_V1}/trading/order-cash": self._order,
                f"{_V1}/trading/order-rvsecncl": self._cancel,
                f"{_V1}/trading/inquire-daily-ccld": self._ccld,
                f"{_V1}/quotations/inquire-price": self._price,
                f"{_V1}/quotations/inquire-asking-price-exp-ccn": self._book,
                f"{_V1}/quotations/inquire-time-itemchartprice": self._minutes,
                f"{_V1}/quotations/inquire-daily-itemchartprice": self._days,
                f"{_V1}/quotations/volume-rank": self._rank,
            }
            route = routes.get(path)
            if route is None:
                return 404, {}, b"not found"
            if method == "POST" and any(
                k != k.upper() or not isinstance(v, str) for k, v in data.items()
            ):
                return (
                    500,
                    {},
                    _err("FK000001", "POST body keys must be upper case, values strings"),
                )
            return route(tr_id, data, headers)

    # ----- token ------------------------------------------------------------------------------

    def _token(self, data: dict[str, str]):
        with self.lock:
            if data.get("appkey") != APP_KEY or data.get("appsecret") != APP_SECRET:
                return (
                    403,
                    {},
                    json.dumps({"error_code": "EGW00103", "error_description": "bad key"}).encode(),
                )
            now = time.monotonic()
            if now - self._last_issue < self.token_interval_s:
                body = {
                    "error_code": "EGW00133",
                    "error_description": "접근토큰 발급 잠시 후 다시 시도하세요(1분당 1회)",
                }
                return 403, {}, json.dumps(body, ensure_ascii=False).encode()
            self._last_issue = now
            self.issued += 1
            token = f"tok{self.issued}"
            self._tokens.add(token)
            expires = (datetime.now(KST) + timedelta(days=1)).strftime("%Y-%m-%d %H:%M:%S")
            body = {
                "access_token": token,
                "token_type": "Bearer",
                "expires_in": 86400,
                "access_token_token_expired": expires,
            }
            return 200, {}, json.dumps(body).encode()

    # ----- orders -----------------------------------------------------------------------------

    def _expect(self, tr_id: str, real: str) -> bytes | None:
        want = real if self.domain == "real" else "V" + real[1:]
        return None if tr_id == want else _err("FK000002", f"tr_id {tr_id!r}, expected {want!r}")

    def _account_ok(self, data: dict[str, str]) -> bool:
        return data.get("CANO") == ACCOUNT[:8] and data.get("ACNT_PRDT_CD") == ACCOUNT[-2:]

    def _order(self, tr_id: str, data: dict[str, str], headers: dict[str, str]):
        side = "02" if tr_id.endswith("0012U") else "01"
        bad = self._expect(tr_id, "TTTC0012U" if side == "02" else "TTTC0011U")
        if bad or not self._account_ok(data):
            return 500, {}, bad or _err("FK000003", "계좌번호 오류")
        stock = self.stocks.get(data.get("PDNO", ""))
        qty, price, dvsn = int(data["ORD_QTY"]), int(data["ORD_UNPR"]), data["ORD_DVSN"]
        if stock is None:
            return 500, {}, _err("FK000004", "종목코드 오류 (unknown symbol)")
        if qty <= 0:
            return 500, {}, _err("FK000005", "주문수량 오류")
        if dvsn == "00":
            lower, upper = stock.limits
            if not is_on_grid(Decimal(price)):
                return 500, {}, _err("FK000006", "호가단위 오류 (price not on the tick grid)")
            if not lower <= price <= upper:
                return (
                    500,
                    {},
                    _err("FK000007", f"주문가격이 상하한가를 벗어났습니다 ({lower}~{upper})"),
                )
        elif dvsn != "01" or price != 0:
            return 500, {}, _err("FK000008", "주문구분 오류")
        now = self.clock()
        order = FakeOrder(self._odno(), stock.symbol, side, qty, price, dvsn, now)
        self.orders.append(order)
        if self.drop_next_order:
            self.drop_next_order = False
            return 0, {}, None
        out = {"KRX_FWDG_ORD_ORGNO": ORGNO, "ODNO": order.odno, "ORD_TMD": now.strftime("%H%M%S")}
        return 200, {}, _ok(output=out, msg="주문 전송 완료 되었습니다.")

    def _cancel(self, tr_id: str, data: dict[str, str], headers: dict[str, str]):
        bad = self._expect(tr_id, "TTTC0013U")
        if bad or not self._account_ok(data):
            return 500, {}, bad or _err("FK000003", "계좌번호 오류")
        if data.get("KRX_FWDG_ORD_ORGNO") != ORGNO:
            return 500, {}, _err("FK000009", "주문조직번호 오류")
        if data.get("RVSE_CNCL_DVSN_CD") != "02" or data.get("QTY_ALL_ORD_YN") != "Y":
            return 500, {}, _err("FK000010", "only cancel-all is modelled")
        target = next(
            (o for o in self.orders if o.odno == data.get("ORGN_ODNO") and not o.orgn_odno), None
        )
        if target is None:
            return 500, {}, _err("FK000011", "원주문번호 오류")
        self._match(target)
        if target.remaining == 0:
            return 500, {}, _err("FK000012", "정정/취소할 수량이 없습니다.")
        now = self.clock()
        qty = target.remaining
        target.canceled, target.informed = qty, now
        self.orders.append(
            FakeOrder(
                self._odno(), target.symbol, target.side, qty, 0, "00", now, orgn_odno=target.odno
            )
        )
        out = {
            "krx_fwdg_ord_orgno": ORGNO,
            "odno": self.orders[-1].odno,
            "ord_tmd": now.strftime("%H%M%S"),
        }
        return 200, {}, _ok(output=out, msg="주문 전송 완료 되었습니다.")

    def _ccld(self, tr_id: str, data: dict[str, str], headers: dict[str, str]):
        bad = self._expect(tr_id, "TTTC0081R")
        if bad or not self._account_ok(data):
            return 500, {}, bad or _err("FK000003", "계좌번호 오류")
        start, cursor = data["CTX_AREA_FK100"], data["CTX_AREA_NK100"]
        if bool(cursor) != (headers.get("tr_cont") == "N"):
            return (
                500,
                {},
                _err("FK000013", "tr_cont N goes with CTX_AREA_NK100 of the previous page"),
            )
        day_from, day_to = data["INQR_STRT_DT"], data["INQR_END_DT"]
        selected = [
            o
            for o in self.orders
            if day_from <= o.at.strftime("%Y%m%d") <= day_to
            and data.get("PDNO", "") in ("", o.symbol)
            and data.get("SLL_BUY_DVSN_CD", "00") in ("00", o.side)
            and data.get("ODNO", "").lstrip("0") in ("", o.odno.lstrip("0"))
        ]
        if data.get("INQR_DVSN") == "00":
            selected.reverse()
        offset = int(cursor or 0)
        page = selected[offset : offset + self.page_size]
        for o in page:
            self._match(o)
        more = offset + self.page_size < len(selected)
        body = _ok(
            output1=[self._row(o) for o in page],
            output2={"tot_ord_qty": str(sum(o.qty for o in page))},
            ctx_area_fk100=start or "fk",
            ctx_area_nk100=str(offset + self.page_size) if more else "",
        )
        return 200, {"tr_cont": "M" if more else "D"}, body

    def _match(self, o: FakeOrder) -> None:
        if not o.seen_by_inquiry:
            o.seen_by_inquiry = True  # fills begin with the first inquiry after placement
            return
        stock = self.stocks[o.symbol]
        touch = stock.ask if o.side == "02" else stock.bid
        crosses = o.dvsn == "01" or (o.price >= touch if o.side == "02" else o.price <= touch)
        if o.remaining and crosses:
            step = min(o.remaining, self.fill_per_poll.get(o.symbol, o.qty))
            o.filled += step
            o.amount += step * touch
            o.informed = self.clock()

    def _row(self, o: FakeOrder) -> dict[str, str]:
        return {
            "ord_dt": o.at.strftime("%Y%m%d"),
            "ord_gno_brno": ORGNO,
            "odno": o.odno,
            "orgn_odno": o.orgn_odno,
            "ord_dvsn_name": "취소" if o.orgn_odno else "지정가",
            "sll_buy_dvsn_cd": o.side,
            "pdno": o.symbol,
            "prdt_name": self.stocks[o.symbol].name,
            "ord_qty": str(o.qty),
            "ord_unpr": str(o.price),
            "ord_tmd": o.at.strftime("%H%M%S"),
            "tot_ccld_qty": str(o.filled),
            "avg_prvs": str(o.amount // o.filled if o.filled else 0),
            "cncl_yn": "Y" if o.canceled or o.orgn_odno else "N",
            "tot_ccld_amt": str(o.amount),
            "ord_dvsn_cd": o.dvsn,
            "cnc_cfrm_qty": str(o.canceled),
            "rmn_qty": str(o.remaining),
            "rjct_qty": "0",
            "infm_tmd": o.informed.strftime("%H%M%S") if o.informed else "",
            "excg_id_dvsn_Cd": "KRX",
        }

    def _odno(self) -> str:
        n, self._next_no = self._next_no, self._next_no + 1
        return f"{n:010d}"

    # ----- quotations ---------------------------------------------------------------------------

    def _stock(self, data: dict[str, str]) -> FakeStock | None:
        return self.stocks.get(data.get("FID_INPUT_ISCD", ""))

    def _price(self, tr_id: str, data: dict[str, str], headers: dict[str, str]):
        s = self._stock(data)
        if s is None or tr_id != "FHKST01010100":
            return 500, {}, _err("FK000020", "조회할 자료가 없습니다")
        lower, upper = s.limits
        out = {
            "stck_prpr": str(s.price),
            "stck_sdpr": str(s.prev_close),
            "stck_mxpr": str(upper),
            "stck_llam": str(lower),
            "stck_hgpr": str(s.price + 500),
            "stck_lwpr": str(s.price - 500),
            "acml_vol": "123456",
            "acml_tr_pbmn": str(123456 * s.price),
            "rprs_mrkt_kor_name": s.market,
        }
        return 200, {}, _ok(output=out)

    def _book(self, tr_id: str, data: dict[str, str], headers: dict[str, str]):
        s = self._stock(data)
        if s is None or tr_id != "FHKST01010200":
            return 500, {}, _err("FK000020", "조회할 자료가 없습니다")
        out = {"askp1": str(s.ask), "bidp1": str(s.bid), "askp_rsqn1": "1200", "bidp_rsqn1": "900"}
        return 200, {}, _ok(output1=out, output2={})

    def _minutes(self, tr_id: str, data: dict[str, str], headers: dict[str, str]):
        s = self._stock(data)
        if s is None or tr_id != "FHKST03010200":
            return 500, {}, _err("FK000020", "조회할 자료가 없습니다")
        now = self.clock()
        hour = data["FID_INPUT_HOUR_1"]
        end = now.replace(hour=int(hour[:2]), minute=int(hour[2:4]), second=0, microsecond=0)
        end = min(end, now.replace(second=0, microsecond=0))
        first = end.replace(hour=9, minute=0)
        rows = []
        t = end
        while t >= first and len(rows) < 30:
            rows.append(
                {
                    "stck_bsop_date": t.strftime("%Y%m%d"),
                    "stck_cntg_hour": t.strftime("%H%M00"),
                    "stck_prpr": str(bar_close(s, t)),
                    "cntg_vol": str(100 + t.minute),
                }
            )
            t -= timedelta(minutes=1)
        return 200, {}, _ok(output1={"stck_prpr": str(s.price)}, output2=rows)

    def _days(self, tr_id: str, data: dict[str, str], headers: dict[str, str]):
        s = self._stock(data)
        if s is None or tr_id != "FHKST03010100":
            return 500, {}, _err("FK000020", "조회할 자료가 없습니다")
        today = self.clock().date()
        rows = []
        for back in range(0, 6):
            d = today - timedelta(days=back)
            close = s.prev_close if back == 1 else s.prev_close + 100 * back
            rows.append(
                {
                    "stck_bsop_date": d.strftime("%Y%m%d"),
                    "stck_clpr": str(close),
                    "stck_hgpr": str(close + 1000),
                    "stck_lwpr": str(close - 1000),
                    "acml_tr_pbmn": str(s.avg_value),
                }
            )
        return 200, {}, _ok(output1={"hts_kor_isnm": s.name}, output2=rows)

    def _rank(self, tr_id: str, data: dict[str, str], headers: dict[str, str]):
        if self.domain != "real" or tr_id != "FHPST01710000":
            return 500, {}, _err("FK000021", "모의투자에서는 해당업무가 제공되지 않습니다.")
        ranked = sorted(self.stocks.values(), key=lambda s: -s.avg_value)
        rows = [
            {
                "mksc_shrn_iscd": s.symbol,
                "hts_kor_isnm": s.name,
                "data_rank": str(i + 1),
                "stck_prpr": str(s.price),
                "acml_vol": "123456",
            }
            for i, s in enumerate(ranked)
        ]
        return 200, {}, _ok(output=rows)


def bar_close(s: FakeStock, t: datetime) -> int:
    """The fake's close for the minute starting at `t` (a small saw-tooth around the price)."""
    return s.price + (t.hour * 60 + t.minute) % 5 * 100 - 200


def _ok(msg: str = "정상처리 되었습니다.", **outputs: Any) -> bytes:
    return json.dumps(
        {"rt_cd": "0", "msg_cd": "MCA00000", "msg1": msg, **outputs}, ensure_ascii=False
    ).encode()


def _err(code: str, msg: str) -> bytes:
    return json.dumps({"rt_cd": "1", "msg_cd": code, "msg1": msg}, ensure_ascii=False).encode()


class _Handler(BaseHTTPRequestHandler):
    fake: FakeKis
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        data = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        self._answer("GET", parts.path, data)

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", 0))
        data = json.loads(self.rfile.read(length) or b"{}")
        self._answer("POST", urlsplit(self.path).path, data)

    def _answer(self, method: str, path: str, data: dict[str, Any]) -> None:
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, extra, body = self.fake.handle(method, path, headers, data)
        if body is None:  # the fault: accepted, then the connection drops
            self.close_connection = True
            self.connection.close()
            return
        self.send_response(status)
        self.send_header("content-type", "application/json; charset=utf-8")
        self.send_header("content-length", str(len(body)))
        for k, v in extra.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)


@contextmanager
def serve(fake: FakeKis) -> Iterator[str]:
    """Run `fake` on an ephemeral loopback port; yields its base URL."""
    handler = type("Handler", (_Handler,), {"fake": fake})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
