"""The REST side: an aiohttp application speaking KIS's paths, headers and replies.

Every API request passes, in order: the app key (``appkey`` header; unknown: EGW00103), the
per-app-key rate limit counted on arrival (EGW00201, HTTP 500), the app secret (EGW00105), the
bearer token (EGW00121 / EGW00123, HTTP 500), the path and ``tr_id`` for the domain (trading
ids are V-prefixed on mock; unknown: OPSQ0002), then the handler. POST bodies must be JSON with
upper-case keys and string values, as KIS requires.

Replies carry ``Content-Type`` capitalised and KIS's own headers in lower case with
underscores (``tr_id``, ``tr_cont``, ``gt_uid``): KIS's own client builds a namedtuple from
every all-lower-case response header name, so a lower-case ``content-type`` would break it.
aiohttp writes header names as given.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from decimal import Decimal
from functools import partial
from typing import Any

import orjson
from aiohttp import web

from exchange import errors, quotes, trading
from exchange.admin import AdminApi
from exchange.arrival import ARRIVED_AT, ArrivalSocket, arrival_middleware
from exchange.auth import RateLimiter, TokenBook, expiry_text
from exchange.venue import Venue
from exchange.wire import Call, Reply
from market.orders import Side

Handler = Callable[[Call], Awaitable[Reply] | Reply]
V1 = "/uapi/domestic-stock/v1"
JSON_TYPE = "application/json; charset=UTF-8"


def routes(venue: Venue) -> dict[str, tuple[str, dict[str, Handler]]]:
    """path -> (method, {tr_id for this domain: handler})."""
    tr = venue.config.tr
    return {
        f"{V1}/quotations/inquire-price": ("GET", {"FHKST01010100": quotes.price}),
        f"{V1}/quotations/inquire-asking-price-exp-ccn": (
            "GET",
            {"FHKST01010200": quotes.asking_price},
        ),
        f"{V1}/quotations/inquire-time-itemchartprice": (
            "GET",
            {"FHKST03010200": quotes.minute_bars},
        ),
        f"{V1}/quotations/inquire-daily-itemchartprice": (
            "GET",
            {"FHKST03010100": quotes.daily_bars},
        ),
        f"{V1}/quotations/volume-rank": ("GET", {"FHPST01710000": quotes.volume_rank}),
        f"{V1}/trading/order-cash": (
            "POST",
            {
                tr("TTTC0012U"): partial(trading.order_cash, side=Side.BUY),
                tr("TTTC0011U"): partial(trading.order_cash, side=Side.SELL),
            },
        ),
        f"{V1}/trading/order-rvsecncl": ("POST", {tr("TTTC0013U"): trading.order_rvsecncl}),
        f"{V1}/trading/inquire-psbl-rvsecncl": ("GET", {"TTTC0084R": trading.psbl_rvsecncl}),
        f"{V1}/trading/inquire-daily-ccld": ("GET", {tr("TTTC0081R"): trading.daily_ccld}),
        f"{V1}/trading/inquire-balance": ("GET", {tr("TTTC8434R"): trading.balance}),
        f"{V1}/trading/inquire-psbl-order": ("GET", {tr("TTTC8908R"): trading.psbl_order}),
    }


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    out = {"Content-Type": JSON_TYPE, **(headers or {})}
    return web.Response(status=status, body=orjson.dumps(body), headers=out)


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw:
        return {}
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise errors.invalid_input("BODY") from None
    if not isinstance(data, dict):
        raise errors.invalid_input("BODY")
    return data


class RestApi:
    """The aiohttp application of one exchange."""

    def __init__(self, venue: Venue, tokens: TokenBook, limiter: RateLimiter) -> None:
        self.venue = venue
        self.tokens = tokens
        self.limiter = limiter
        self.routes = routes(venue)

    def app(self, listener: ArrivalSocket | None = None) -> web.Application:
        """The application; served on `listener`, requests are counted when they arrived
        there (`exchange.arrival`), else when handled."""
        middlewares = [arrival_middleware(listener)] if listener is not None else []
        app = web.Application(middlewares=middlewares)
        app.router.add_post("/oauth2/tokenP", self.token)
        app.router.add_post("/oauth2/Approval", self.approval)
        app.router.add_get("/__exchange/stats", self.stats)
        app.router.add_get("/__exchange/arrivals", self.arrivals)
        app.router.add_get("/__exchange/orders", self.orders)
        AdminApi(self.venue).add_routes(app)  # /__exchange/admin/*: behind the account's back
        app.router.add_route("*", "/uapi/{tail:.*}", self.api)
        return app

    async def token(self, request: web.Request) -> web.Response:
        try:
            data = await _body(request)
            if data.get("grant_type") != "client_credentials":
                raise errors.bad_token_request("grant_type")
            token = self.tokens.issue(str(data.get("appkey", "")), str(data.get("appsecret", "")))
        except errors.ExchangeError as exc:
            return _json(exc.status, exc.body)
        remaining = int((token.expires_at - self.venue.clock.now()).total_seconds())
        body = {
            "access_token": token.value,
            "access_token_token_expired": expiry_text(token),
            "token_type": "Bearer",
            "expires_in": max(0, remaining),
        }
        return _json(200, body)

    async def approval(self, request: web.Request) -> web.Response:
        try:
            data = await _body(request)
            if data.get("grant_type") != "client_credentials":
                raise errors.bad_token_request("grant_type")
            key = self.tokens.approve(str(data.get("appkey", "")), str(data.get("secretkey", "")))
        except errors.ExchangeError as exc:
            return _json(exc.status, exc.body)
        return _json(200, {"approval_key": key})

    async def stats(self, request: web.Request) -> web.Response:
        return _json(200, stats(self.venue, self.tokens), {})

    async def arrivals(self, request: web.Request) -> web.Response:
        """GET /__exchange/arrivals?since=T: ``[arrived, handled]`` of every API request
        handled after T (``time.monotonic()`` of this machine), oldest first."""
        try:
            since = float(request.query.get("since", "0"))
        except ValueError:
            since = 0.0
        rows = [list(r) for r in self.limiter.log if r[1] > since]
        return _json(200, rows)

    async def orders(self, request: web.Request) -> web.Response:
        """GET /__exchange/orders: every order (cancel rows left out) with its account, side,
        quantity and what filled of it, the exchange's own figures (for acceptance checks)."""
        rows = [
            {"odno": o.odno, "account": o.account.spec.account, "symbol": o.symbol,
             "side": o.side.value, "qty": o.qty, "filled_qty": o.filled_qty,
             "filled_amount": str(o.filled_amount), "working": o.working}
            for o in self.venue.orders if not o.is_cancel
        ]  # fmt: skip
        return _json(200, rows)

    async def api(self, request: web.Request) -> web.Response:
        tr_id = request.headers.get("tr_id", "")
        headers = {"tr_id": tr_id, "tr_cont": "", "gt_uid": uuid.uuid4().hex}
        try:
            reply = await self._dispatch(request, tr_id)
        except errors.ExchangeError as exc:
            return _json(exc.status, exc.body, headers)
        headers["tr_cont"] = reply.tr_cont
        return _json(reply.status, reply.body, headers | reply.headers)

    async def _dispatch(self, request: web.Request, tr_id: str) -> Reply:
        venue = self.venue
        app_key = request.headers.get("appkey", "")
        account = venue.accounts.get(app_key)
        if account is None:
            raise errors.bad_app_key()
        venue.stats.bump(venue.stats.requests, app_key, tr_id)
        if not self.limiter.admit(app_key, request.get(ARRIVED_AT)):
            venue.stats.bump(venue.stats.rate_limited, app_key, tr_id)
            raise errors.rate_limited()
        if request.headers.get("appsecret", "") != account.spec.app_secret:
            raise errors.bad_app_secret()
        self.tokens.check(request.headers.get("authorization", ""), app_key)
        route = self.routes.get(request.path)
        if route is None:
            raise errors.ExchangeError(404, "OPSQ0001", f"없는 경로입니다 ({request.path})")
        method, handlers = route
        handler = handlers.get(tr_id)
        if handler is None:
            if tr_id in ("FHPST01710000", "TTTC0084R") and venue.config.mock:
                raise errors.not_on_mock()
            raise errors.unknown_service(tr_id)
        if request.method != method:
            raise errors.ExchangeError(405, "OPSQ0003", f"{method} 방식으로 요청하십시오")
        if method == "GET":
            params = dict(request.query)
        else:
            data = await _body(request)
            if any(k != k.upper() or not isinstance(v, str) for k, v in data.items()):
                raise errors.invalid_input("BODY")
            params = {str(k): str(v) for k, v in data.items()}
        call = Call(venue, account, app_key, tr_id, request.headers.get("tr_cont", ""), params)
        result = handler(call)
        return await result if not isinstance(result, Reply) else result


def stats(venue: Venue, tokens: TokenBook) -> dict[str, Any]:
    """GET /__exchange/stats: counts per app key and tr_id, and each account's state."""
    accounts: dict[str, Any] = {}
    total_orders = total_fills = 0
    for app_key, acct in venue.accounts.items():
        rows = [o for o in venue.orders if o.account is acct and not o.is_cancel]
        fills = sum(o.applied for o in rows)
        total_orders += len(rows)
        total_fills += fills
        accounts[acct.spec.account] = {
            "app_key": app_key,
            "hts_id": acct.spec.hts_id,
            "orders": len(rows),
            "working": sum(1 for o in rows if o.working),
            "cancels": sum(1 for o in venue.orders if o.account is acct and o.is_cancel),
            "fills": fills,
            "filled_qty": sum(o.filled_qty for o in rows),
            "filled_amount": str(sum((o.filled_amount for o in rows), Decimal(0))),
            "cash": str(acct.cash),
            "available_cash": str(venue.available_cash(acct)),
            "fees": str(acct.fees),
            "holdings": {h.symbol: h.qty for h in acct.holdings.values() if h.qty},
        }
    return {
        "domain": venue.config.domain,
        "clock": venue.clock.now().isoformat(),
        "session": venue.session.day.isoformat(),
        "requests": venue.stats.requests,
        "rate_limited": venue.stats.rate_limited,
        "token_issues": dict(tokens.issues),
        "ambiguous_replies": venue.stats.ambiguous,
        "dropped_notices": venue.stats.dropped_notices,
        "transfers": venue.stats.transfers,
        "orders": total_orders,
        "fills": total_fills,
        "accounts": accounts,
    }
