"""`KisClient`: HTTP to the KIS Open API, with the fleet's token and rate limit.

What every request gets: a slot from the fleet-wide `RedisRateLimiter`, the fleet's access token
(`RedisTokenCache`), the headers KIS expects (``authorization: Bearer …``, ``appkey``,
``appsecret``, ``tr_id`` for the domain, ``custtype`` (`KisConfig.custtype`), ``tr_cont`` when
paging), and a deadline. POST bodies carry upper-case keys and string values (the caller builds
them so).

How answers map onto `broker.errors` (the reply is KIS's JSON ``rt_cd`` / ``msg_cd`` / ``msg1``):

* ``rt_cd == "0"`` -> `KisReply`.
* ``EGW00201`` (per-second budget exceeded; the gateway answers it before anything reaches the
  order system) -> retried with exponential backoff `rate_retries` times, then `RateLimited`.
  Safe for orders too.
* ``EGW00121`` (token unknown) or ``EGW00123`` (token expired) -> the token is dropped
  fleet-wide and the request is sent once more with a fresh one (which waits for KIS's
  one-issue-a-minute turn if need be). Safe for orders too: the gateway refused the request.
  Refused again with the fresh token -> `BrokerUnavailable`.
* Reads (GET): connection failures, timeouts, HTTP 5xx without a KIS body and gateway trouble
  (`GATEWAY_TRANSIENT`) are retried with backoff `read_retries` times, then
  `BrokerUnavailable`; any other ``rt_cd`` -> `KisRefused` (final).
* Orders and cancels (`post_order`): sent at most once. A failure before anything was sent (no
  connection could be opened, no pooled connection free) -> `BrokerUnavailable`. A refusal
  whose ``msg_cd`` is in `KNOWN_REFUSALS` -> `KisRefused` (the adapter's `OrderRejected`).
  Everything else that is not a clean ``rt_cd "0"`` (a timeout or a dropped connection after
  sending, HTTP 5xx, an unreadable reply, ``rt_cd`` != "0" with any other code) ->
  `OrderOutcomeUnknown`: the order may exist; look it up, never resend. HTTP 4xx without a KIS
  body (wrong path, proxy refusal) -> `KisRefused`: the order system never saw it.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

import anyio
import httpx
import orjson
import redis.asyncio as aioredis
from loguru import logger

from broker.errors import BrokerUnavailable, OrderOutcomeUnknown, RateLimited
from broker.kis.errors import (
    GATEWAY_TRANSIENT,
    KNOWN_REFUSALS,
    RATE_LIMITED,
    TOKEN_REFUSALS,
    TOKEN_TOO_SOON,
    KisRefused,
    TokenTooSoon,
    TokenUnavailable,
)
from broker.kis.keys import KisKeys
from broker.kis.ratelimit import DEFAULT_RATE_PER_S, RedisRateLimiter
from broker.kis.token import IssuedToken, RedisTokenCache
from market.clock import KST, Clock, RealClock

Domain = Literal["real", "mock"]

BASE_URLS: Mapping[str, str] = {
    "real": "https://openapi.koreainvestment.com:9443",
    "mock": "https://openapivts.koreainvestment.com:29443",
}
#: WebSocket base URLs (KIS's sample configuration: ``ops`` / ``vops``).
WS_URLS: Mapping[str, str] = {
    "real": "ws://ops.koreainvestment.com:21000",
    "mock": "ws://ops.koreainvestment.com:31000",
}
TOKEN_PATH = "/oauth2/tokenP"  # noqa: S105 (a path, not a secret)
APPROVAL_PATH = "/oauth2/Approval"

# Nothing was sent: safe to call the order "not placed".
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(frozen=True, slots=True)
class TrId:
    """A transaction id per domain (trading ids differ on the mock domain, quotations do not)."""

    real: str
    mock: str

    @classmethod
    def same(cls, tr_id: str) -> TrId:
        return cls(tr_id, tr_id)


@dataclass(frozen=True)
class KisConfig:
    """Credentials and knobs. `account` is the 10-digit account, with or without the dash
    between the 8-digit CANO and the 2-digit product code (``12345678-01``). `hts_id` is the
    customer's HTS id, the key of the fill-notice subscription (needed only for it). The app key
    and secret never show in a repr."""

    app_key: str = field(repr=False)
    app_secret: str = field(repr=False)
    account: str
    domain: Domain = "mock"
    base_url: str | None = None  # default: KIS's URL for the domain
    ws_url: str | None = None  # default: KIS's WebSocket URL for the domain
    hts_id: str | None = None
    custtype: str = "P"  # P: individual customer, B: partner (KIS's "custtype" header)
    rate_per_s: float | None = None  # default: DEFAULT_RATE_PER_S[domain]
    timeout_s: float = 5.0  # one HTTP exchange
    wait_s: float = 10.0  # longest wait for a rate-limit slot
    token_wait_s: float = 75.0  # longest wait for a token: KIS issues one a minute
    read_retries: int = 3
    rate_retries: int = 5
    backoff_s: float = 0.1
    token_issue_interval_s: float = 61.0  # KIS: one issue per minute per app key

    def __post_init__(self) -> None:
        digits = self.account.replace("-", "")
        if len(digits) != 10 or not digits.isdigit():
            raise ValueError("KIS_ACCOUNT must be 10 digits: 8-digit CANO + 2-digit product code")
        if self.custtype not in ("P", "B"):
            raise ValueError(f"KIS_CUSTTYPE must be P or B, got {self.custtype!r}")
        if self.domain not in BASE_URLS:
            raise ValueError(f"KIS_DOMAIN must be real or mock, got {self.domain!r}")

    @property
    def cano(self) -> str:
        return self.account.replace("-", "")[:8]

    @property
    def product_code(self) -> str:
        return self.account.replace("-", "")[8:]

    @property
    def url(self) -> str:
        return (self.base_url or BASE_URLS[self.domain]).rstrip("/")

    @property
    def websocket_url(self) -> str:
        return (self.ws_url or WS_URLS[self.domain]).rstrip("/")

    @property
    def rate(self) -> float:
        return self.rate_per_s or DEFAULT_RATE_PER_S[self.domain]

    def tr(self, tr: TrId) -> str:
        return tr.real if self.domain == "real" else tr.mock


@dataclass(frozen=True, slots=True)
class KisReply:
    body: dict[str, Any]
    tr_cont: str  # response header: "F"/"M" more pages follow, "D"/"E" last page

    @property
    def more(self) -> bool:
        return self.tr_cont in ("F", "M")


class KisClient:
    """One connection pool to KIS for this process; the token and the rate limit are shared
    with every other process on the same Redis prefix (keys in `broker.kis.keys`)."""

    def __init__(
        self,
        config: KisConfig,
        redis: aioredis.Redis,
        prefix: str,
        *,
        clock: Clock | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config
        self.clock: Clock = clock or RealClock()
        self.http = httpx.AsyncClient(
            base_url=config.url,
            timeout=httpx.Timeout(config.timeout_s),
            transport=transport,
            headers={"content-type": "application/json; charset=utf-8"},
        )
        keys = KisKeys(prefix, config.domain, config.app_key)
        self.limiter = RedisRateLimiter(redis, keys, config.rate)
        self.tokens = RedisTokenCache(
            redis,
            keys,
            self._issue_token,
            self.clock,
            issue_interval_s=config.token_issue_interval_s,
        )

    def __repr__(self) -> str:
        return f"KisClient({self.config!r})"

    async def aclose(self) -> None:
        await self.http.aclose()

    async def get(
        self, path: str, tr: TrId, params: Mapping[str, str], *, tr_cont: str = ""
    ) -> KisReply:
        """A read; retried on transient failures (see the module docstring)."""
        return await self._call("GET", path, tr, params, order=False, tr_cont=tr_cont)

    async def post_order(self, path: str, tr: TrId, body: Mapping[str, str]) -> KisReply:
        """An order or cancel; never resent once it may have reached KIS."""
        return await self._call("POST", path, tr, body, order=True, tr_cont="")

    async def approval_key(self) -> str:
        """A WebSocket approval key (``/oauth2/Approval``); never logged."""
        cfg = self.config
        body = {
            "grant_type": "client_credentials",
            "appkey": cfg.app_key,
            "secretkey": cfg.app_secret,
        }
        try:
            resp = await self.http.post(APPROVAL_PATH, content=orjson.dumps(body))
        except httpx.TransportError as exc:
            raise BrokerUnavailable(f"KIS approval endpoint: {type(exc).__name__}") from exc
        data = _json(resp) or {}
        key = data.get("approval_key")
        if resp.is_success and isinstance(key, str) and key:
            return key
        code = str(data.get("error_code") or data.get("msg_cd") or resp.status_code)
        text = str(data.get("error_description") or data.get("msg1") or "")
        if resp.status_code >= 500:
            raise BrokerUnavailable(f"KIS approval endpoint: HTTP {resp.status_code} {code}")
        raise KisRefused(code, text, APPROVAL_PATH)

    # ----- internals ----------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        tr: TrId,
        payload: Mapping[str, str],
        *,
        order: bool,
        tr_cont: str,
    ) -> KisReply:
        cfg = self.config
        rate_hits = transient = 0
        refreshed = False
        while True:
            try:
                return await self._attempt(method, path, tr, payload, order, tr_cont)
            except _Retry as retry:
                if retry.kind == "token":
                    if refreshed:  # a brand-new token refused too: not ours to fix
                        raise BrokerUnavailable(f"{retry.what} with a fresh token") from None
                    refreshed = True
                    logger.info("KIS refused the access token ({}); refreshing", retry.what)
                    await self.tokens.invalidate(retry.token)
                    continue
                if retry.kind == "rate":
                    if rate_hits >= cfg.rate_retries:
                        raise RateLimited(f"{retry.what} after {rate_hits} retries") from None
                    rate_hits += 1
                    await self._backoff(rate_hits, retry.what)
                    continue
                if transient >= cfg.read_retries:
                    raise BrokerUnavailable(retry.what) from retry.__cause__
                transient += 1
                await self._backoff(transient, retry.what)

    async def _attempt(
        self,
        method: str,
        path: str,
        tr: TrId,
        payload: Mapping[str, str],
        order: bool,
        tr_cont: str,
    ) -> KisReply:
        """One request: the reply, a final error, or `_Retry` saying which budget to spend."""
        cfg = self.config
        # The token first: a slot is spent only when the request can leave at once, so the
        # moment Redis grants it stays close to the moment KIS sees the request.
        token = await self.tokens.get(cfg.token_wait_s)
        await self.limiter.acquire(cfg.wait_s)
        headers = {
            "authorization": f"Bearer {token}",
            "appkey": cfg.app_key,
            "appsecret": cfg.app_secret,
            "tr_id": cfg.tr(tr),
            "custtype": cfg.custtype,
        }
        if tr_cont:
            headers["tr_cont"] = tr_cont
        try:
            if method == "GET":
                resp = await self.http.get(path, params=dict(payload), headers=headers)
            else:
                content = orjson.dumps(dict(payload))
                resp = await self.http.post(path, content=content, headers=headers)
        except httpx.TransportError as exc:
            what = f"{method} {path}: {type(exc).__name__} {exc}".strip()
            if order and not isinstance(exc, _NOT_SENT):
                raise OrderOutcomeUnknown(f"{what}; the order may have been placed") from exc
            if order:
                raise BrokerUnavailable(f"{what}; nothing was sent") from exc
            raise _Retry("transient", what, token) from exc
        return self._answer(method, path, resp, token, order)

    def _answer(
        self, method: str, path: str, resp: httpx.Response, token: str, order: bool
    ) -> KisReply:
        body = _json(resp)
        msg_cd = str(body.get("msg_cd") or body.get("error_code") or "") if body else ""
        if msg_cd == RATE_LIMITED:
            raise _Retry("rate", f"{path}: {RATE_LIMITED}", token)
        if msg_cd in TOKEN_REFUSALS:
            raise _Retry("token", f"{path}: {msg_cd}", token)
        if body is None or "rt_cd" not in body:
            what = f"{method} {path}: HTTP {resp.status_code} without a KIS answer"
            if 400 <= resp.status_code < 500:
                raise KisRefused(str(resp.status_code), resp.text[:200], path)
            if order:
                raise OrderOutcomeUnknown(f"{what}; the order may have been placed")
            raise _Retry("transient", what, token)
        if str(body["rt_cd"]) == "0":
            return KisReply(body, resp.headers.get("tr_cont", ""))
        msg1 = str(body.get("msg1", "")).strip()
        if order and msg_cd not in KNOWN_REFUSALS:
            raise OrderOutcomeUnknown(
                f"{path}: HTTP {resp.status_code} {msg_cd} {msg1}; the order may have been placed"
            )
        if not order and msg_cd in GATEWAY_TRANSIENT:
            raise _Retry("transient", f"{path}: {msg_cd} {msg1}", token)
        raise KisRefused(msg_cd, msg1, path)

    async def _backoff(self, attempt: int, what: str) -> None:
        delay = self.config.backoff_s * 2 ** (attempt - 1) * (0.5 + random.random())
        logger.debug("KIS {}; retry {} in {:.2f} s", what, attempt, delay)
        await anyio.sleep(delay)

    async def _issue_token(self) -> IssuedToken:
        cfg = self.config
        body = {
            "grant_type": "client_credentials",
            "appkey": cfg.app_key,
            "appsecret": cfg.app_secret,
        }
        try:
            resp = await self.http.post(TOKEN_PATH, content=orjson.dumps(body))
        except httpx.TransportError as exc:
            raise TokenUnavailable(f"KIS token endpoint: {type(exc).__name__} {exc}") from exc
        data = _json(resp) or {}
        token = data.get("access_token")
        if resp.is_success and isinstance(token, str) and token:
            return IssuedToken(token, self._expiry(data))
        code = str(data.get("error_code") or data.get("msg_cd") or resp.status_code)
        text = str(data.get("error_description") or data.get("msg1") or "")
        if code == TOKEN_TOO_SOON:
            raise TokenTooSoon(f"KIS token endpoint: {code} (one issue per minute) {text}")
        if resp.status_code >= 500:
            raise TokenUnavailable(f"KIS token endpoint: HTTP {resp.status_code} {text}")
        raise KisRefused(code, text, TOKEN_PATH)

    def _expiry(self, data: Mapping[str, Any]) -> datetime:
        """``access_token_token_expired`` (Korea time), else now + ``expires_in``."""
        stated = str(data.get("access_token_token_expired") or "").strip()
        if stated:
            try:
                return datetime.strptime(stated, "%Y-%m-%d %H:%M:%S").replace(tzinfo=KST)
            except ValueError:
                logger.warning("KIS token expiry {!r} unreadable; using expires_in", stated)
        try:
            seconds = float(data.get("expires_in") or 86_400)
        except (TypeError, ValueError):
            seconds = 86_400.0
        return self.clock.now().astimezone(KST) + timedelta(seconds=seconds)


class _Retry(Exception):
    """Internal: the attempt failed in a way `_call` may retry (kind says which budget)."""

    def __init__(self, kind: Literal["rate", "token", "transient"], what: str, token: str) -> None:
        super().__init__(what)
        self.kind = kind
        self.what = what
        self.token = token

    def __repr__(self) -> str:
        return f"_Retry({self.kind!r}, {self.what!r})"


def _json(resp: httpx.Response) -> dict[str, Any] | None:
    try:
        data = orjson.loads(resp.content)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None
