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

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import redis.asyncio as aioredis

from broker.kis.client import KisClient, KisConfig
from broker.kis.keys import KisKeys
from broker.kis.lanes import Lane
from market.clock import Clock

if TYPE_CHECKING:
    from broker.kis.relay import RelayReply


class RequestFn(Protocol):
    async def __call__(
        self,
        method: str,
        path: str,
        tr_id: str,
        payload: Mapping[str, str],
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
