"""The gateway's REST relay: KIS requests of the whole fleet, sent within one app key's budget.

`Relay.request` is the one way the active gateway talks to KIS REST: it waits for a slot of the
`LaneScheduler` in the request's lane, adds the token and the credentials, sends, and hands
KIS's answer back as it came. Two refusals it handles itself, both safe for orders because KIS's
front end refuses before the order system: EGW00201 (should not happen: the scheduler counts
as KIS does; logged as a warning and sent again in its lane) and a refused token (EGW00121 /
EGW00123: dropped fleet-wide, issued again, sent once more).

`RelayServer` is the HTTP face of it (aiohttp): the same paths, query strings, JSON bodies and
``tr_id`` / ``tr_cont`` headers a `KisClient` sends to KIS, without ``appkey``, ``appsecret``
or ``authorization`` (ignored if present); ``X-Fleet-Worker`` names the worker for fairness and
``X-Fleet-Wait-Ms`` bounds its wait for a slot. Replies carry KIS's status, body and its
``tr_id`` / ``tr_cont`` / ``gt_uid`` headers, and ``Content-Type`` capitalised as KIS sends it.
The relay's own refusals are HTTP 503 with a KIS-shaped body and a ``FLEET…`` ``msg_cd``
(`broker.kis.client.RELAY_CODES`): no slot in time, a standby, no token, KIS unreachable (all:
nothing was sent) and `RELAY_LOST` (sent, answer lost). Also served: ``/__gateway/stats``
(JSON counts), ``/__gateway/grants?since=T`` (the slots granted after monotonic time T:
lane, worker, enqueued_at, granted_at; for benchmarks), ``/livez`` and ``/readyz`` (200 only on
the active gateway).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import orjson
from aiohttp import web
from loguru import logger

from broker.errors import BrokerUnavailable
from broker.kis.client import (
    _NOT_SENT,
    RELAY_BUSY,
    RELAY_LOST,
    RELAY_NO_TOKEN,
    RELAY_NOT_SENT,
    RELAY_STANDBY,
    WAIT_HEADER,
    WORKER_HEADER,
    KisClient,
)
from broker.kis.errors import RATE_LIMITED, TOKEN_REFUSALS, TokenUnavailable
from broker.kis.lanes import Lane, LaneScheduler, Sent, SlotTimeout, lane_of

JSON_TYPE = "application/json; charset=UTF-8"
#: KIS's own reply headers handed back to the worker.
KIS_HEADERS = ("tr_id", "tr_cont", "gt_uid")
#: Longest wait for a slot a worker may ask for.
MAX_WAIT_S = 60.0


@dataclass(frozen=True, slots=True)
class RelayReply:
    """KIS's answer as it came: HTTP status, KIS's own headers (``tr_id``, ``tr_cont``,
    ``gt_uid``, lower case) and the body bytes."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> dict[str, Any] | None:
        try:
            data = orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return None
        return data if isinstance(data, dict) else None


class RelayFailed(BrokerUnavailable):
    """The relay could not get an answer from KIS; `code` says whether anything was sent."""

    def __init__(self, code: str, what: str) -> None:
        super().__init__(what)
        self.code = code


@dataclass
class RelayCounts:
    forwarded: int = 0
    rate_refusals: int = 0  # EGW00201 answers KIS gave (should stay 0)
    token_refusals: int = 0
    lost: int = 0


class Relay:
    """Sends KIS REST requests for the whole fleet through one `LaneScheduler`.

    `kis` is a direct-mode `KisClient`: its HTTP pool and token cache are used, never its own
    rate limiter (the scheduler replaces it)."""

    def __init__(self, kis: KisClient, scheduler: LaneScheduler, *, rate_retries: int = 3) -> None:
        if kis.route is not None or kis.tokens is None:
            raise ValueError("the relay needs a direct KisClient (credentials, token cache)")
        self.kis = kis
        self.tokens = kis.tokens
        self.config = kis.config
        self.scheduler = scheduler
        self.rate_retries = rate_retries
        self.counts = RelayCounts()

    async def request(
        self,
        method: str,
        path: str,
        tr_id: str,
        payload: Mapping[str, Any],
        *,
        lane: Lane | None = None,
        tr_cont: str = "",
        worker: str = "gateway",
        wait_s: float | None = None,
    ) -> RelayReply:
        """See `broker.kis.gateway.RequestFn`. Raises `SlotTimeout` (no slot in time),
        `TokenUnavailable` or `RelayFailed` (`RELAY_NOT_SENT` / `RELAY_LOST`)."""
        cfg = self.config
        lane = lane_of(path) if lane is None else lane
        deadline = anyio.current_time() + (cfg.wait_s if wait_s is None else wait_s)
        rate_hits = 0
        refreshed = False
        while True:
            left = max(0.0, deadline - anyio.current_time())
            token = await self.tokens.get(min(left, cfg.token_wait_s))
            headers = {
                "authorization": f"Bearer {token}",
                "appkey": cfg.app_key,
                "appsecret": cfg.app_secret,
                "tr_id": tr_id,
                "custtype": cfg.custtype,
            }
            if tr_cont:
                headers["tr_cont"] = tr_cont
            left = max(0.0, deadline - anyio.current_time())
            async with self.scheduler.slot(lane, worker, wait_s=left) as sent:
                # once granted, a worker hanging up does not cut the request off mid-flight
                with anyio.CancelScope(shield=True):
                    sent.mark_sent(self.scheduler.monotonic())
                    try:
                        resp = await self._send(method, path, payload, headers, sent)
                    except httpx.TransportError as exc:
                        what = f"{method} {path}: {type(exc).__name__} {exc}".strip()
                        if isinstance(exc, _NOT_SENT):
                            raise RelayFailed(RELAY_NOT_SENT, what) from exc
                        # it may still arrive: keep its slot a while longer
                        sent.hold_s = cfg.timeout_s
                        self.counts.lost += 1
                        raise RelayFailed(RELAY_LOST, what) from exc
            code = _msg_cd(resp)
            if code == RATE_LIMITED:
                self.counts.rate_refusals += 1
                jitter = self.scheduler.budget.widen()
                logger.warning("KIS answered {} to {} ({} lane); jitter bound now {}",
                               RATE_LIMITED, path, lane.label,
                               "none" if jitter is None else f"{jitter * 1000:.0f} ms")  # fmt: skip
                if rate_hits < self.rate_retries:
                    rate_hits += 1
                    continue
            if code in TOKEN_REFUSALS and not refreshed:
                refreshed = True
                self.counts.token_refusals += 1
                logger.info("KIS refused the access token ({}); refreshing", code)
                await self.tokens.invalidate(token)
                continue
            self.counts.forwarded += 1
            kept = {k: resp.headers[k] for k in KIS_HEADERS if k in resp.headers}
            return RelayReply(resp.status_code, kept, resp.content)

    async def _send(
        self,
        method: str,
        path: str,
        payload: Mapping[str, Any],
        headers: Mapping[str, str],
        sent: Sent,
    ) -> httpx.Response:
        monotonic = self.scheduler.monotonic

        async def written(event: str, info: Mapping[str, Any]) -> None:
            # the request's last byte is on the wire now: its send mark moves here, so the
            # jitter bound covers the network alone, not this process reaching the write
            if event.endswith("send_request_body.complete"):
                sent.mark_sent(monotonic())

        http = self.kis.http
        trace = {"trace": written}
        if method == "GET":
            return await http.get(path, params=dict(payload), headers=headers, extensions=trace)
        return await http.request(method, path, content=orjson.dumps(dict(payload)),
                                  headers=headers, extensions=trace)  # fmt: skip


def _msg_cd(resp: httpx.Response) -> str:
    try:
        body = orjson.loads(resp.content)
    except orjson.JSONDecodeError:
        return ""
    if not isinstance(body, dict):
        return ""
    return str(body.get("msg_cd") or body.get("error_code") or "")


def _refusal(code: str, text: str) -> web.Response:
    body = {"rt_cd": "1", "msg_cd": code, "msg1": text}
    return web.Response(status=503, body=orjson.dumps(body), headers={"Content-Type": JSON_TYPE})


class RelayServer:
    """The relay's HTTP application; `is_active` says whether to relay or answer standby."""

    def __init__(
        self,
        relay: Relay,
        is_active: Callable[[], bool],
        stats: Callable[[], dict[str, Any]],
        grants: Callable[[float], list[dict[str, Any]]] | None = None,
    ) -> None:
        self.relay = relay
        self.is_active = is_active
        self.stats = stats
        self.grants = grants

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/__gateway/stats", self._stats)
        app.router.add_get("/__gateway/grants", self._grants)
        app.router.add_get("/livez", self._live)
        app.router.add_get("/readyz", self._ready)
        app.router.add_route("*", "/uapi/{tail:.*}", self._relay)
        return app

    async def _stats(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self.stats()), headers={"Content-Type": JSON_TYPE})

    async def _grants(self, request: web.Request) -> web.Response:
        try:
            since = float(request.query.get("since", "0"))
        except ValueError:
            since = 0.0
        rows = self.grants(since) if self.grants is not None else []
        return web.Response(body=orjson.dumps(rows), headers={"Content-Type": JSON_TYPE})

    async def _live(self, request: web.Request) -> web.Response:
        return web.Response(text="alive\n")

    async def _ready(self, request: web.Request) -> web.Response:
        if self.is_active():
            return web.Response(text="active\n")
        return web.Response(status=503, text="standby\n")

    async def _relay(self, request: web.Request) -> web.Response:
        if not self.is_active():
            return _refusal(RELAY_STANDBY, "not the active KIS gateway")
        worker = request.headers.get(WORKER_HEADER) or (request.remote or "anonymous")
        wait_s = _wait(request.headers.get(WAIT_HEADER), self.relay.config.wait_s)
        if request.method == "GET":
            payload: Mapping[str, Any] = dict(request.query)
        else:
            raw = await request.read()
            try:
                data = orjson.loads(raw) if raw else {}
            except orjson.JSONDecodeError:
                data = None
            if not isinstance(data, dict):
                return _refusal("OPSQ2001", "the body must be a JSON object")
            payload = data
        try:
            reply = await self.relay.request(
                request.method,
                request.path,
                request.headers.get("tr_id", ""),
                payload,
                tr_cont=request.headers.get("tr_cont", ""),
                worker=worker,
                wait_s=wait_s,
            )
        except SlotTimeout as exc:
            if not self.is_active():
                return _refusal(RELAY_STANDBY, "the KIS gateway stepped down")
            return _refusal(RELAY_BUSY, str(exc))
        except TokenUnavailable as exc:
            return _refusal(RELAY_NO_TOKEN, str(exc))
        except RelayFailed as exc:
            return _refusal(exc.code, str(exc))
        headers = {"Content-Type": JSON_TYPE, **reply.headers}
        return web.Response(status=reply.status, body=reply.body, headers=headers)


def _wait(text: str | None, default_s: float) -> float:
    try:
        value = float(text) / 1000 if text else default_s
    except ValueError:
        value = default_s
    if not math.isfinite(value):
        value = default_s
    return min(max(value, 0.0), MAX_WAIT_S)
