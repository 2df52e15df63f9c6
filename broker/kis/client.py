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

Two ways to KIS (the same calls, the same error mapping):

* **direct** (``route=None``): this process holds the credentials, takes the token from
  `RedisTokenCache` and a slot from `RedisRateLimiter` itself. Used toward a paper venue
  (`PAPER_VENUE`) and by the gateway's own relay.
* **through the gateway** (``route=GatewayRoute(...)``): requests go to the active gateway's
  relay (`broker.kis.gateway`; its URL from the lease key) without app key, secret or token;
  the gateway adds them and sends each request within the app key's one budget, by priority
  lane. Headers ``X-Fleet-Worker`` (fairness inside a lane) and ``X-Fleet-Wait-Ms`` (the longest
  wait for a slot) go along. The relay's own refusals (`RELAY_*` ``msg_cd``, HTTP 503) say that
  nothing was sent: no slot in time (`RateLimited` after the retries), a standby or no token
  (tried again at the gateway the lease names). A relay that sent an order but lost KIS's
  answer says `RELAY_LOST` (the order's outcome is unknown, as is a connection to the relay
  that drops after the order went out). A connection that could not be opened sends the
  request to the lease key again: nothing was sent, so an order may go to the new gateway.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

import anyio
import httpx
import orjson
import redis.asyncio as aioredis
from loguru import logger
from redis.exceptions import RedisError

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

#: Headers a worker sends to the gateway's relay: who it is (fairness inside a lane) and how
#: long it waits for a slot, in milliseconds.
WORKER_HEADER = "X-Fleet-Worker"
WAIT_HEADER = "X-Fleet-Wait-Ms"
#: The relay's own answers (HTTP 503, KIS-shaped body). All but RELAY_LOST: nothing was sent.
RELAY_BUSY = "FLEETBSY"  # no slot in the budget within the request's wait
RELAY_STANDBY = "FLEETSBY"  # this gateway is not the active one: ask the lease key again
RELAY_NO_TOKEN = "FLEETTKN"  # noqa: S105 (a message code) the gateway has no access token right now
RELAY_NOT_SENT = "FLEETNSN"  # the gateway could not reach KIS; nothing left it
RELAY_LOST = "FLEETUNK"  # sent to KIS, the answer was lost: an order's outcome is unknown
RELAY_CODES = frozenset({RELAY_BUSY, RELAY_STANDBY, RELAY_NO_TOKEN, RELAY_NOT_SENT, RELAY_LOST})


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
    #: a fixed universe (KIS_UNIVERSE): when set, it is the universe of every `KisMarketData`
    #: / `KisBroker` and of the gateway's market data built on this config, whatever default
    #: they were given (the volume ranking on real, `DEFAULT_UNIVERSE` on mock)
    universe: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        digits = self.account.replace("-", "")
        if len(digits) != 10 or not digits.isdigit():
            raise ValueError("KIS_ACCOUNT must be 10 digits: 8-digit CANO + 2-digit product code")
        if self.custtype not in ("P", "B"):
            raise ValueError(f"KIS_CUSTTYPE must be P or B, got {self.custtype!r}")
        if self.domain not in BASE_URLS:
            raise ValueError(f"KIS_DOMAIN must be real or mock, got {self.domain!r}")
        if self.universe is not None and not self.universe:
            raise ValueError("KIS_UNIVERSE must list at least one symbol when given")

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


@dataclass(frozen=True, slots=True)
class GatewayLease:
    """The value of the gateway lease key (`KisKeys.gateway`): which gateway is active and
    where its relay listens."""

    id: str
    url: str
    pid: int = 0
    host: str = ""
    since: str = ""

    def encode(self) -> bytes:
        return orjson.dumps(
            {"id": self.id, "url": self.url, "pid": self.pid, "host": self.host,
             "since": self.since}
        )  # fmt: skip

    @classmethod
    def decode(cls, raw: bytes | str | None) -> GatewayLease | None:
        if raw is None:
            return None
        try:
            doc = orjson.loads(raw)
            return cls(str(doc["id"]), str(doc["url"]).rstrip("/"), int(doc.get("pid") or 0),
                       str(doc.get("host") or ""), str(doc.get("since") or ""))  # fmt: skip
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None


class Route(Protocol):
    """Where a client in gateway mode sends its requests."""

    worker: str  # this process's name at the gateway (X-Fleet-Worker)

    async def url(self) -> str:
        """The relay's base URL; `BrokerUnavailable` if no gateway can be found in time."""
        ...

    def lost(self, url: str) -> None:
        """`url` could not be reached, or answered as a standby: find the active one anew."""
        ...


class GatewayRoute:
    """The active gateway's relay, read from the lease key (`KisKeys.gateway`) and kept until
    it fails; then the lease key is read again until it names another gateway (a standby that
    took over) or `find_wait_s` passes."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: KisKeys,
        worker: str,
        *,
        find_wait_s: float = 15.0,
        poll_s: float = 0.1,
        timeout_s: float = 2.0,
    ) -> None:
        self.redis = redis
        self.key = keys.gateway
        self.worker = worker
        self.find_wait_s = find_wait_s
        self.poll_s = poll_s
        self.timeout_s = timeout_s
        self._lease: GatewayLease | None = None
        self._avoid: GatewayLease | None = None  # the one that failed, until another shows up
        self._lock = anyio.Lock()

    def __repr__(self) -> str:
        return f"GatewayRoute({self.key!r}, {self.worker!r})"

    async def url(self) -> str:
        lease = self._lease
        if lease is not None:
            return lease.url
        async with self._lock:
            deadline = anyio.current_time() + self.find_wait_s
            avoid = self._avoid
            while self._lease is None:
                found = await self._read()
                if found is not None and (avoid is None or found.id != avoid.id):
                    if avoid is not None:
                        logger.info("KIS gateway {} is now the active one", found.id)
                    self._lease, self._avoid = found, None
                    break
                if anyio.current_time() >= deadline:
                    if found is not None:  # the same gateway still holds the lease: try it
                        self._lease, self._avoid = found, None
                        break
                    raise BrokerUnavailable(f"no active KIS gateway within {self.find_wait_s:g} s")
                await anyio.sleep(self.poll_s)
            return self._lease.url

    def lost(self, url: str) -> None:
        lease = self._lease
        if lease is not None and lease.url == url:
            logger.warning("KIS gateway {} at {} unreachable; looking for the active one",
                           lease.id, url)  # fmt: skip
            self._avoid, self._lease = lease, None

    async def _read(self) -> GatewayLease | None:
        try:
            with anyio.fail_after(self.timeout_s):
                raw = await self.redis.get(self.key)
        except TimeoutError as exc:
            raise BrokerUnavailable("KIS gateway lease: Redis did not answer") from exc
        except RedisError as exc:
            raise BrokerUnavailable(f"KIS gateway lease: {exc}") from exc
        return GatewayLease.decode(raw)


@dataclass
class FixedRoute:
    """A relay at a known URL (a gateway's own services reaching its relay over loopback)."""

    base_url: str
    worker: str

    async def url(self) -> str:
        return self.base_url

    def lost(self, url: str) -> None:
        pass


class KisClient:
    """One connection pool to KIS (or to the fleet's KIS gateway) for this process; the token
    and the request budget are shared with every other process on the same Redis prefix (keys
    in `broker.kis.keys`): directly, or by going through the one active gateway (`route`)."""

    def __init__(
        self,
        config: KisConfig,
        redis: aioredis.Redis,
        prefix: str,
        *,
        clock: Clock | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        route: Route | None = None,
    ) -> None:
        self.config = config
        self.clock: Clock = clock or RealClock()
        self.route = route
        keys = KisKeys(prefix, config.domain, config.app_key)
        self.limiter: RedisRateLimiter | None = None
        self.tokens: RedisTokenCache | None = None
        if route is None:
            self.http = httpx.AsyncClient(
                base_url=config.url,
                timeout=httpx.Timeout(config.timeout_s),
                transport=transport,
                headers={"content-type": "application/json; charset=utf-8"},
            )
            self.limiter = RedisRateLimiter(redis, keys, config.rate)
            self.tokens = RedisTokenCache(
                redis,
                keys,
                self._issue_token,
                self.clock,
                issue_interval_s=config.token_issue_interval_s,
            )
        else:
            # the relay holds a request until a slot frees (at most wait_s), then sends it on
            read_s = config.wait_s + 2 * config.timeout_s
            self.http = httpx.AsyncClient(
                timeout=httpx.Timeout(config.timeout_s, read=read_s),
                transport=transport,
                headers={"content-type": "application/json; charset=utf-8"},
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
        """A WebSocket approval key (``/oauth2/Approval``); never logged. Direct mode only: a
        worker going through the gateway opens no WebSocket of its own."""
        if self.route is not None:
            raise BrokerUnavailable("WebSocket approval keys are the KIS gateway's alone")
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
                    # a brand-new token refused too (or the gateway's, which refreshed it
                    # already): not ours to fix
                    if refreshed or self.tokens is None:
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
        if self.route is not None:
            return await self._relayed(self.route, method, path, tr, payload, order, tr_cont)
        assert self.tokens is not None
        assert self.limiter is not None
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
            resp = await self._send(method, path, payload, headers)
        except httpx.TransportError as exc:
            what = f"{method} {path}: {type(exc).__name__} {exc}".strip()
            if order and not isinstance(exc, _NOT_SENT):
                raise OrderOutcomeUnknown(f"{what}; the order may have been placed") from exc
            if order:
                raise BrokerUnavailable(f"{what}; nothing was sent") from exc
            raise _Retry("transient", what, token) from exc
        return self._answer(method, path, resp, token, order)

    async def _relayed(
        self,
        route: Route,
        method: str,
        path: str,
        tr: TrId,
        payload: Mapping[str, str],
        order: bool,
        tr_cont: str,
    ) -> KisReply:
        """One request through the gateway's relay (see the module docstring)."""
        cfg = self.config
        base = await route.url()
        headers = {
            "tr_id": cfg.tr(tr),
            "custtype": cfg.custtype,
            WORKER_HEADER: route.worker,
            WAIT_HEADER: str(int(cfg.wait_s * 1000)),
        }
        if tr_cont:
            headers["tr_cont"] = tr_cont
        try:
            resp = await self._send(method, base + path, payload, headers)
        except httpx.TransportError as exc:
            what = f"{method} {path} via the KIS gateway: {type(exc).__name__} {exc}".strip()
            if isinstance(exc, _NOT_SENT):
                route.lost(base)  # nothing left this process: safe to send to the active one
                raise _Retry("transient", what, "") from exc
            if order:
                raise OrderOutcomeUnknown(f"{what}; the order may have been placed") from exc
            route.lost(base)
            raise _Retry("transient", what, "") from exc
        body = _json(resp)
        code = str(body.get("msg_cd") or "") if body else ""
        if code in RELAY_CODES:
            assert body is not None
            what = f"{path}: KIS gateway {code} {body.get('msg1', '')}".strip()
            if code == RELAY_BUSY:  # the gateway waited wait_s for a slot already
                raise RateLimited(what)
            if code == RELAY_LOST and order:
                raise OrderOutcomeUnknown(f"{what}; the order may have been placed")
            if code == RELAY_STANDBY:
                route.lost(base)
            raise _Retry("transient", what, "")
        return self._answer(method, path, resp, "", order)

    async def _send(
        self, method: str, url: str, payload: Mapping[str, str], headers: Mapping[str, str]
    ) -> httpx.Response:
        if method == "GET":
            return await self.http.get(url, params=dict(payload), headers=headers)
        return await self.http.post(url, content=orjson.dumps(dict(payload)), headers=headers)

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
