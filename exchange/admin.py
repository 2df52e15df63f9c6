"""Operator endpoints of the exchange, for rehearsals and tests: things that happen to an
account behind the back of whoever trades it. Not part of KIS's surface (``/__exchange/``).

``POST /__exchange/admin/sell`` ``{"account": "12345678-01", "symbol": "005930", "qty": 10}``
    A market SELL placed outside the fleet (a manual sell in the HTS app): an ordinary order
    of the account, listed in inquire-daily-ccld under an order number nobody in the fleet
    knows. ``qty`` defaults to everything the account can sell. Reply: ``{"odno", "qty",
    "filled_qty", "held"}``.
``POST /__exchange/admin/transfer`` ``{"account", "symbol", "qty"}``
    Shares moved in (``qty`` > 0, at the current price as their cost) or out (``qty`` < 0)
    without an order and without cash (a transfer between accounts). Reply: ``{"held"}``.
``POST /__exchange/admin/drop-notices`` ``{"n": 1}``
    The next ``n`` fill notices (H0STCNI0 / H0STCNI9) are not sent: executions still happen
    and inquiries still show them. Reply: ``{"pending_drops"}``.

Errors: HTTP 400 ``{"error": "..."}`` for a bad request; KIS refusals (market closed, not
enough shares) come back with KIS's code and message.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
from aiohttp import web

from exchange import errors
from exchange.venue import MARKET, Venue
from market.orders import Side

JSON_TYPE = "application/json; charset=UTF-8"


def _reply(status: int, body: Any) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), headers={"Content-Type": JSON_TYPE})


class BadAdminRequest(Exception):
    pass


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        data = orjson.loads(await request.read() or b"{}")
    except orjson.JSONDecodeError:
        raise BadAdminRequest("body is not JSON") from None
    if not isinstance(data, dict):
        raise BadAdminRequest("body is not a JSON object")
    return data


def _int(data: dict[str, Any], name: str, default: int | None = None) -> int:
    value = data.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise BadAdminRequest(f"{name} must be an integer")
    try:
        return int(value)
    except ValueError:
        raise BadAdminRequest(f"{name} must be an integer") from None


class AdminApi:
    """The handlers of one exchange's ``/__exchange/admin/*`` routes."""

    def __init__(self, venue: Venue) -> None:
        self.venue = venue

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/__exchange/admin/sell", self.sell)
        app.router.add_post("/__exchange/admin/transfer", self.transfer)
        app.router.add_post("/__exchange/admin/drop-notices", self.drop_notices)

    def _app_key(self, data: dict[str, Any]) -> str:
        account = str(data.get("account", "")).replace("-", "")
        for app_key, state in self.venue.accounts.items():
            if state.spec.number == account:
                return app_key
        raise BadAdminRequest("unknown account")

    async def _handle(self, request: web.Request, action: Any) -> web.Response:
        try:
            return _reply(200, await action(await _body(request)))
        except BadAdminRequest as exc:
            return _reply(400, {"error": str(exc)})
        except errors.ExchangeError as exc:
            return _reply(exc.status, exc.body)

    async def sell(self, request: web.Request) -> web.Response:
        async def act(data: dict[str, Any]) -> dict[str, Any]:
            app_key, symbol = self._app_key(data), str(data.get("symbol", ""))
            account = self.venue.accounts[app_key]
            await self.venue.sync()
            qty = _int(data, "qty", self.venue.sellable(account, symbol))
            if qty <= 0:
                raise BadAdminRequest(f"nothing to sell of {symbol!r}")
            order = await self.venue.place(app_key, symbol, Side.SELL, MARKET, qty, Decimal(0))
            return {"odno": order.odno, "qty": qty, "filled_qty": order.filled_qty,
                    "held": account.held(symbol)}  # fmt: skip

        return await self._handle(request, act)

    async def transfer(self, request: web.Request) -> web.Response:
        async def act(data: dict[str, Any]) -> dict[str, Any]:
            app_key, symbol = self._app_key(data), str(data.get("symbol", ""))
            qty = _int(data, "qty")
            if qty == 0:
                raise BadAdminRequest("qty must not be 0")
            return {"held": await self.venue.transfer(app_key, symbol, qty)}

        return await self._handle(request, act)

    async def drop_notices(self, request: web.Request) -> web.Response:
        async def act(data: dict[str, Any]) -> dict[str, Any]:
            n = _int(data, "n", 1)
            if n < 0:
                raise BadAdminRequest("n must be >= 0")
            self.venue.drop_fill_notices += n
            return {"pending_drops": self.venue.drop_fill_notices}

        return await self._handle(request, act)
