"""`KisClient`: HTTP to the KIS Open API, with the fleet's token and rate limit.

What every request gets: a slot from the fleet-wide `RedisRateLimiter`, the fleet's access token
(`RedisTokenCache`), the headers KIS expects (``authorization: Bearer …``, ``appkey``,
``appsecret``, ``tr_id`` for the domain, ``custtype: P``, ``tr_cont`` when paging), and a
deadline. POST bodies carry upper-case keys and string values (the caller builds them so).

How answers map onto `broker.errors` (the reply is KIS's JSON ``rt_cd`` / ``msg_cd`` / ``msg1``):

* ``rt_cd == "0"`` -> `KisReply`.
* ``EGW00201`` (per-second budget exceeded; KIS answers it before doing anything) -> retried with
  exponential backoff `rate_retries` times, then `RateLimited`. Safe for orders too.
* ``EGW00123`` (token expired) -> the token is invalidated fleet-wide and the request is sent
  once more with a fresh one. Safe for orders too: the gateway refused it.
* any other ``rt_cd`` -> `KisRefused` (the adapter turns it into `OrderRejected` for orders).
* Reads (GET): connection failures, timeouts and HTTP 5xx without a KIS body are retried with
  backoff `read_retries` times, then `BrokerUnavailable`.
* Orders (`post_order`): sent at most once. A failure before anything was sent (no connection
  could be opened, no pooled connection free) -> `BrokerUnavailable`; a timeout or a dropped
  connection after sending, an HTTP 5xx without a KIS body, or an unreadable reply ->
  `OrderOutcomeUnknown`: the order may exist; look it up, never resend.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import httpx
import orjson
import redis.asyncio as aioredis
from loguru import logger

from broker.errors import BrokerUnavailable, OrderOutcomeUnknown, RateLimited
from broker.kis.errors import RATE_LIMITED, TOKEN_EXPIRED, TOKEN_TOO_SOON, KisRefused
from broker.kis.errors import TokenUnavailable as TokenUnavailable
from broker.kis.ratelimit import DEFAULT_RATE_PER_S, RedisRateLimiter
from broker.kis.token import IssuedToken, RedisTokenCache

Domain = Literal["real", "mock"]

BASE_URLS: Mapping[str, str] = {
    "real": "https://openapi.koreainvestment.com:9443",
    "mock": "https://openapivts.koreainvestment.com:29443",
}
TOKEN_PATH = "/oauth2/tokenP"  # noqa: S105 (a path, not a secret)

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
    between the 8-digit CANO and the 2-digit product code (``12345678-01``)."""

    app_key: str
    app_secret: str
    account: str
    domain: Domain = "mock"
    base_url: str | None = None  # default: KIS's URL for the domain
    rate_per_s: float | None = None  # default: DEFAULT_RATE_PER_S[domain]
    timeout_s: float = 5.0  # one HTTP exchange
    wait_s: float = 10.0  # longest wait for a rate-limit slot or a token
    read_retries: int = 3
    rate_retries: int = 5
    backoff_s: float = 0.1
    token_issue_interval_s: float = 61.0  # KIS: one issue per minute per app key

    def __post_init__(self) -> None:
        digits = self.account.replace("-", "")
        if len(digits) != 10 or not digits.isdigit():
            raise ValueError("KIS_ACCOUNT must be 10 digits: 8-digit CANO + 2-digit product code")

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
    with every other process on the same Redis prefix."""

    def __init__(
        self,
        config: KisConfig,
        redis: aioredis.Redis,
        prefix: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config
        self.http = httpx.AsyncClient(
            base_url=config.url,
            timeout=httpx.Timeout(config.timeout_s),
            transport=transport,
            headers={"content-type": "application/json; charset=utf-8"},
        )
        self.limiter = RedisRateLimiter(redis, prefix, config.rate)
        self.tokens = RedisTokenCache(
            redis, prefix, self._issue_token, issue_interval_s=config.token_issue_interval_s
        )

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
                    if refreshed:  # a brand-new token called expired: not ours to fix
                        raise BrokerUnavailable(retry.what) from None
                    refreshed = True
                    logger.info("KIS token expired ({}); refreshing", TOKEN_EXPIRED)
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
        token = await self.tokens.get(cfg.wait_s)
        await self.limiter.acquire(cfg.wait_s)
        headers = {
            "authorization": f"Bearer {token}",
            "appkey": cfg.app_key,
            "appsecret": cfg.app_secret,
            "tr_id": cfg.tr(tr),
            "custtype": "P",
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
        body = _json(resp)
        msg_cd = str(body.get("msg_cd") or body.get("error_code") or "") if body else ""
        if msg_cd == RATE_LIMITED:
            raise _Retry("rate", f"{path}: {RATE_LIMITED}", token)
        if msg_cd == TOKEN_EXPIRED:
            raise _Retry("token", f"{path}: {TOKEN_EXPIRED} with a fresh token", token)
        if body is None or "rt_cd" not in body:
            what = f"{method} {path}: HTTP {resp.status_code} without a KIS answer"
            if order and (resp.status_code >= 500 or resp.is_success):
                raise OrderOutcomeUnknown(f"{what}; the order may have been placed")
            if resp.status_code < 500 and not resp.is_success:
                raise KisRefused(str(resp.status_code), resp.text[:200], path)
            raise _Retry("transient", what, token)
        if str(body["rt_cd"]) != "0":
            raise KisRefused(msg_cd, str(body.get("msg1", "")).strip(), path)
        return KisReply(body, resp.headers.get("tr_cont", ""))

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
        if resp.is_success and data.get("access_token"):
            return IssuedToken(str(data["access_token"]), float(data.get("expires_in", 86_400)))
        code = str(data.get("error_code") or data.get("msg_cd") or resp.status_code)
        text = str(data.get("error_description") or data.get("msg1") or "")
        if code == TOKEN_TOO_SOON:
            raise TokenUnavailable(f"KIS token endpoint: {code} (one issue per minute) {text}")
        if resp.status_code >= 500:
            raise TokenUnavailable(f"KIS token endpoint: HTTP {resp.status_code} {text}")
        raise KisRefused(code, text, TOKEN_PATH)


class _Retry(Exception):
    """Internal: the attempt failed in a way `_call` may retry (kind says which budget)."""

    def __init__(self, kind: Literal["rate", "token", "transient"], what: str, token: str) -> None:
        super().__init__(what)
        self.kind = kind
        self.what = what
        self.token = token


def _json(resp: httpx.Response) -> dict[str, Any] | None:
    try:
        data = orjson.loads(resp.content)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None
