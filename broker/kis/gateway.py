"""`Gateway`: the one process per KIS app key that talks to KIS for the whole fleet.

One gateway is *active* per domain and app key, chosen through a Redis lease; any number wait
as standbys and one takes over within a few seconds when the active one dies:

==========================================  ======  ===========  ==============================
key (prefix ``fleet``)                      type    TTL          meaning
==========================================  ======  ===========  ==============================
``fleet:kis:gateway:{d}:{h}``               string  PX lease     JSON ``{"id", "url", "pid",
                                                    TTL          "host", "since"}`` of the
                                                                 active gateway; renewed every
                                                                 third of the TTL
==========================================  ======  ===========  ==============================

While active, a gateway

* owns the access token (`broker.kis.token.RedisTokenCache`: issued once, kept in Redis, so a
  standby taking over reuses it),
* owns the request budget (`broker.kis.lanes.LaneScheduler`: priority lanes, fairness between
  workers, counted as KIS counts on arrival),
* serves the REST relay (`broker.kis.relay`): workers send the KIS paths, parameters, bodies
  and ``tr_id`` headers they would send to KIS, without credentials, to the active gateway's
  URL (read from the lease key); the relay adds the app key, secret and token and forwards,
* runs the *services* it was given (`Service`): components that need KIS while this gateway is
  the active one (the market-data publisher, the WebSocket notice router, reconciliation). A
  service is started when the gateway becomes active and cancelled when it stops being active;
  one that returns or raises is logged and started again after a pause, while active.

A standby answers relay requests with ``FLEETSBY`` (HTTP 503, nothing sent), which sends the
worker back to the lease key for the active gateway's URL.
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

import anyio
import httpx
import redis.asyncio as aioredis
from aiohttp import web
from anyio.abc import TaskStatus
from loguru import logger
from redis.exceptions import RedisError

from broker.errors import BrokerError
from broker.kis.client import FixedRoute, GatewayLease, KisClient, KisConfig
from broker.kis.keys import KisKeys
from broker.kis.lanes import DEFAULT_JITTER_S, Lane, LaneScheduler
from broker.kis.relay import Relay, RelayReply, RelayServer
from market.clock import Clock, RealClock


class RequestFn(Protocol):
    async def __call__(
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
        """Send one KIS REST request within the budget, with the token and credentials added.

        `path` is KIS's (``/uapi/domestic-stock/v1/quotations/inquire-price``), `tr_id` the
        domain's transaction id, `payload` the query (GET) or the JSON body (POST). `lane`
        defaults to the path's (`broker.kis.lanes.lane_of`); `worker` is the name fairness
        uses inside the lane. Waits at most `wait_s` (default `KisConfig.wait_s`) for a slot,
        else raises `broker.kis.lanes.SlotTimeout` (nothing sent). EGW00201 and refused tokens
        are retried inside; any other KIS answer comes back as it is (`RelayReply`)."""
        ...


@dataclass(frozen=True)
class GatewayContext:
    """What a service gets while its gateway is active."""

    gateway_id: str
    config: KisConfig  # domain, REST and WebSocket URLs (`websocket_url`), hts_id, app key
    redis: aioredis.Redis
    keys: KisKeys  # the KIS keys of this prefix, domain and app key
    prefix: str  # the fleet's Redis prefix (FLEET_PREFIX)
    clock: Clock
    request: RequestFn  # the relay's own request function (budgeted, lane-aware)
    approval_key: Callable[[], Awaitable[str]]  # POST /oauth2/Approval: a WebSocket approval key
    relay_url: str  # this gateway's relay, as a worker would reach it over loopback
    _client: Callable[[str], KisClient] = field(repr=False)

    def client(self, worker: str = "gateway") -> KisClient:
        """A `KisClient` whose every request goes through this gateway's relay (lane by path,
        `worker` for fairness): wrap it in `KisMarketData` / `KisBroker` to read quotations or
        the account. The caller closes it (`aclose`)."""
        return self._client(worker)


#: A component run while the gateway is active; cancelled when it stops being active.
Service = Callable[[GatewayContext], Awaitable[None]]


# KEYS[1] the lease; ARGV[1] our value; ARGV[2] TTL ms. Extends the lease only if still ours.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
# KEYS[1] the lease; ARGV[1] our value. Deletes the lease only if still ours.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class Gateway:
    """One gateway process: standby until it holds the lease, then active (see the module
    docstring). `run` serves until cancelled; the relay listens from the start (a standby
    answers ``FLEETSBY``), so the URL is known before the lease is taken.

    `lease_ttl_s` bounds the takeover: a standby polls the lease every `poll_s` and takes it
    once the dead gateway's lease has expired, then waits one budget window (the old one's
    last requests may still have been arriving) before it grants the first slot.
    """

    def __init__(
        self,
        config: KisConfig,
        redis: aioredis.Redis,
        prefix: str,
        *,
        clock: Clock | None = None,
        gateway_id: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        advertise_url: str | None = None,
        lease_ttl_s: float = 3.0,
        poll_s: float | None = None,
        services: Sequence[Service] = (),
        margin_s: float = 0.005,
        jitter_s: float | None = DEFAULT_JITTER_S,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if lease_ttl_s < 1.5:
            raise ValueError("lease_ttl_s must be at least 1.5 s")
        self.config = config
        self.redis = redis
        self.prefix = prefix
        self.clock: Clock = clock or RealClock()
        self.id = gateway_id or uuid.uuid4().hex[:12]
        self.host = host
        self.port = port
        self.advertise_url = advertise_url.rstrip("/") if advertise_url else None
        self.lease_ttl_s = lease_ttl_s
        self.poll_s = poll_s if poll_s is not None else min(0.25, lease_ttl_s / 6)
        self.services = tuple(services)
        self.keys = KisKeys(prefix, config.domain, config.app_key)
        self.kis = KisClient(config, redis, prefix, clock=self.clock, transport=transport)
        limit = max(1, math.ceil(config.rate))
        self.scheduler = LaneScheduler(limit, window_s=limit / config.rate, margin_s=margin_s,
                                       jitter_s=jitter_s)  # fmt: skip
        self.relay = Relay(self.kis, self.scheduler)
        self.url = ""  # the advertised relay URL, once bound
        self.local_url = ""  # the relay over loopback (this process's services)
        self.active = False
        self.activations = 0
        self.active_since: float | None = None  # time.time() of the last activation
        self.bound = anyio.Event()
        self._lease_value = b""
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    def __repr__(self) -> str:
        return f"Gateway({self.id!r}, {self.keys!r})"

    @property
    def lease_key(self) -> str:
        return self.keys.gateway

    def stats(self) -> dict[str, Any]:
        counts = self.relay.counts
        return {
            "id": self.id,
            "url": self.url,
            "active": self.active,
            "activations": self.activations,
            "active_since": self.active_since,
            "forwarded": counts.forwarded,
            "rate_refusals": counts.rate_refusals,
            "token_refusals": counts.token_refusals,
            "lost": counts.lost,
            "budget": self.scheduler.snapshot(),
        }

    def grants(self, since: float) -> list[dict[str, Any]]:
        """The slots granted after `since` (`time.monotonic`, the machine's clock)."""
        return [
            {"lane": t.lane.label, "worker": t.worker, "enqueued_at": t.enqueued_at,
             "granted_at": t.granted_at,
             "sent_at": t.record.sent_at if t.record else None,
             "answered_at": t.record.answered_at if t.record else None}
            for t in list(self.scheduler.granted)
            if t.granted_at is not None and t.granted_at > since
        ]  # fmt: skip

    async def run(self, *, task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED) -> None:
        server = RelayServer(self.relay, lambda: self.active, self.stats, self.grants)
        runner = web.AppRunner(server.app(), access_log=None, handle_signals=False,
                               handler_cancellation=True)  # fmt: skip
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port)
            await site.start()
            srv = site._server
            assert isinstance(srv, asyncio.base_events.Server)
            port = int(srv.sockets[0].getsockname()[1])
            wildcard = self.host in ("", "0.0.0.0", "::")  # noqa: S104 (compared, not bound)
            loopback = "127.0.0.1" if wildcard else self.host
            self.local_url = f"http://{loopback}:{port}"
            self.url = self.advertise_url or (
                f"http://{socket.gethostname()}:{port}" if wildcard else self.local_url
            )
            self._lease_value = GatewayLease(
                self.id, self.url, os.getpid(), socket.gethostname(),
                datetime.now(UTC).isoformat(timespec="seconds"),
            ).encode()  # fmt: skip
            logger.info("KIS gateway {} relay at {} (standby until it holds {})",
                        self.id, self.url, self.lease_key)  # fmt: skip
            self.bound.set()
            task_status.started(self.url)
            try:
                while True:
                    await self._take_lease()
                    await self._serve_active()
            finally:
                with anyio.CancelScope(shield=True):
                    await self._give_up_lease()
        finally:
            with anyio.CancelScope(shield=True):
                await runner.cleanup()
                await self.kis.aclose()

    # ----- the lease ----------------------------------------------------------------------

    async def _take_lease(self) -> None:
        """Wait until this gateway holds the lease."""
        ttl_ms = int(self.lease_ttl_s * 1000)
        holder: bytes | str | None = None
        current: bytes | str | None = None
        while True:
            try:
                with anyio.fail_after(self.lease_ttl_s / 3):
                    if await self.redis.set(self.lease_key, self._lease_value, nx=True, px=ttl_ms):
                        return
                    current = await self.redis.get(self.lease_key)
                    # ours already (a step-down while Redis was cut off): renew it
                    if current == self._lease_value and await self._renew(
                        keys=[self.lease_key], args=[current, ttl_ms]
                    ):
                        return
            except (RedisError, TimeoutError) as exc:
                logger.warning("KIS gateway {}: cannot reach Redis for the lease: {!r}",
                               self.id, exc)  # fmt: skip
                current = None
            if current is not None and current != holder:
                holder = current
                lease = GatewayLease.decode(current)
                logger.info("KIS gateway {} standing by; active: {}", self.id,
                            lease.id if lease else "unreadable lease")  # fmt: skip
            await anyio.sleep(self.poll_s)

    async def _keep_lease(self) -> None:
        """Renew the lease every third of its TTL; return once it is lost or can no longer be
        confirmed before it would expire."""
        ttl_ms = int(self.lease_ttl_s * 1000)
        valid_until = time.monotonic() + self.lease_ttl_s
        period = self.lease_ttl_s / 3
        while True:
            await anyio.sleep(period)
            started = time.monotonic()
            try:
                with anyio.fail_after(period):
                    kept = await self._renew(
                        keys=[self.lease_key], args=[self._lease_value, ttl_ms]
                    )
            except (RedisError, TimeoutError) as exc:
                logger.warning("KIS gateway {}: lease not renewed: {!r}", self.id, exc)
                kept = None
            if kept == 0:
                logger.warning("KIS gateway {}: lease lost to another gateway", self.id)
                return
            if kept:
                valid_until = started + self.lease_ttl_s
            elif time.monotonic() + period >= valid_until:
                logger.error("KIS gateway {}: lease unconfirmed for {:.1f} s; stepping down",
                             self.id, self.lease_ttl_s - period)  # fmt: skip
                return

    async def _give_up_lease(self) -> None:
        if not self._lease_value:
            return
        try:
            with anyio.fail_after(2):
                await self._release(keys=[self.lease_key], args=[self._lease_value])
        except (RedisError, TimeoutError) as exc:
            logger.warning("KIS gateway {}: lease not released: {!r}", self.id, exc)

    # ----- active -------------------------------------------------------------------------

    async def _serve_active(self) -> None:
        self.activations += 1
        self.active_since = time.time()
        # the previous gateway's last requests may still be arriving at KIS: one window clear
        self.scheduler.hold_until(time.monotonic() + self.scheduler.budget.span_s)
        self.scheduler.open()
        self.active = True
        logger.info("KIS gateway {} active for {} (activation {})", self.id, self.keys,
                    self.activations)  # fmt: skip
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self.scheduler.run)
                tg.start_soon(self._warm_token)
                context = self.context()
                for service in self.services:
                    tg.start_soon(self._supervise, service, context)
                await self._keep_lease()
                tg.cancel_scope.cancel()
        finally:
            self.active = False
            self.scheduler.close()
            logger.info("KIS gateway {} no longer active", self.id)

    async def _warm_token(self) -> None:
        """Have the token before the first worker asks (issued once a day, kept in Redis)."""
        pause = 1.0
        while True:
            try:
                await self.relay.tokens.get(self.config.token_wait_s)
                return
            except BrokerError as exc:
                logger.warning("KIS gateway {}: no access token yet: {!r}", self.id, exc)
            await anyio.sleep(pause)
            pause = min(pause * 2, 30.0)

    def context(self) -> GatewayContext:
        config = self.config

        def client(worker: str) -> KisClient:
            # no secret in a client that never needs it
            public = replace(config, app_secret="")
            return KisClient(public, self.redis, self.prefix, clock=self.clock,
                             route=FixedRoute(self.local_url, worker))  # fmt: skip

        return GatewayContext(
            gateway_id=self.id,
            config=config,
            redis=self.redis,
            keys=self.keys,
            prefix=self.prefix,
            clock=self.clock,
            request=self.relay.request,
            approval_key=self.kis.approval_key,
            relay_url=self.local_url,
            _client=client,
        )

    async def _supervise(self, service: Service, context: GatewayContext) -> None:
        name = getattr(service, "__qualname__", None) or repr(service)
        pause = 1.0
        while True:
            try:
                await service(context)
                logger.warning("KIS gateway service {} returned; starting it again in {:.0f} s",
                               name, pause)  # fmt: skip
            except Exception as exc:
                logger.opt(exception=exc).error(
                    "KIS gateway service {} failed: {!r}; starting it again in {:.0f} s",
                    name, exc, pause,
                )  # fmt: skip
            await anyio.sleep(pause)
            pause = min(pause * 2, 30.0)
