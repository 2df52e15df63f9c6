"""The KIS gateway: workers' requests relayed through the real adapter to the project's exchange
on loopback, orders ahead of market data, fairness between workers, the budget as the exchange
counts it, and the lease taken over when the active gateway process is SIGKILLed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest
import redis.asyncio as aioredis
from kis_rig import APP_KEY, ORDER_CASH, KisVenue, Recorder, kis_venue
from support import eventually, start_exchange, venue_env

from broker.errors import OrderOutcomeUnknown, RateLimited
from broker.kis import KisBroker, KisClient, KisConfig, wire
from broker.kis.client import GatewayLease, GatewayRoute
from broker.kis.gateway import Gateway, GatewayContext
from broker.kis.keys import KisKeys
from broker.kis.lanes import Lane
from broker.port import OrderRequest, OrderType, Side
from market.clock import RealClock, SimClock

pytestmark = pytest.mark.anyio


@dataclass
class Rig:
    venue: KisVenue
    gateway: Gateway
    upstream: Recorder  # what the gateway sent to the exchange

    async def worker(self, name: str, **options: Any) -> KisBroker:
        """A BROKER=kis worker 'process': no secret, every request through the gateway."""
        venue = self.venue
        config = replace(venue.config(**options), app_secret="")
        keys = KisKeys(venue.prefix, venue.domain, APP_KEY)
        recorder = Recorder()
        venue.recorders.append(recorder)
        route = GatewayRoute(venue.redis, keys, name)
        client = KisClient(config, venue.redis, venue.prefix, clock=venue.clock,
                           transport=recorder, route=route)  # fmt: skip
        venue.stack.push_async_callback(client.aclose)
        return KisBroker(client, venue.clock, universe=[venue.symbols[0]], cancel_poll_s=1.0)


@asynccontextmanager
async def gateway_rig(
    redis: aioredis.Redis, prefix: str, domain: str, *, rate: int | None = None, **exchange: Any
) -> AsyncIterator[Rig]:
    """An exchange (rate limit on at `rate` per second unless told otherwise) and one active
    gateway in front of it, budgeted at the same rate."""
    options: dict[str, Any] = {"rate_limit": True, "rate_per_s": rate}
    options.update(exchange)
    async with kis_venue(redis, prefix, domain, **options) as venue:
        upstream = Recorder()
        limit = venue.running.venue.config.rate
        config = venue.config(rate_per_s=float(limit), wait_s=30.0)
        gw = Gateway(config, redis, prefix, clock=venue.clock, transport=upstream,
                     gateway_id="gw-test")  # fmt: skip
        async with anyio.create_task_group() as tg:
            await tg.start(gw.run)
            with anyio.fail_after(10):
                while not gw.active:
                    await anyio.sleep(0.01)
            yield Rig(venue, gw, upstream)
            tg.cancel_scope.cancel()


async def price(broker: KisBroker, symbol: str) -> str:
    params = {"FID_COND_MRKT_DIV_CODE": "J", "FID_INPUT_ISCD": symbol}
    reply = await broker.client.get(wire.PRICE, wire.TR_PRICE, params)
    return str(reply.body["output"]["stck_prpr"])


@pytest.mark.parametrize("domain", ["real", "mock"])
async def test_relay_forwards_orders_and_quotes_without_the_workers_credentials(
    redis_client: aioredis.Redis, prefix: str, domain: str
) -> None:
    async with gateway_rig(redis_client, prefix, domain) as rig:
        venue = rig.venue
        broker = await rig.worker("w1")
        symbol = venue.symbols[0]
        quote = await broker.quote(symbol)
        assert quote.price > 0
        lower = venue.running.venue.market.limits(symbol)[0]
        ack = await broker.submit_order(OrderRequest(symbol, Side.BUY, 3, OrderType.LIMIT, lower))
        status = await broker.order_status(ack.broker_order_id)
        assert (status.symbol, status.qty, status.side) == (symbol, 3, Side.BUY)
        canceled = await broker.cancel_order(ack.broker_order_id)
        assert canceled.done
        assert [o.qty for o in venue.placed()] == [3]  # placed once
        # the worker sent no credential; the gateway sent them all, with one token
        sent = venue.recorders[-1].sent
        assert sent
        for s in sent:
            assert not {"appkey", "appsecret", "authorization"} & set(s.headers), s.headers
            assert s.headers["x-fleet-worker"] == "w1"
        assert rig.upstream.to(ORDER_CASH)[0].headers["tr_id"] == venue.tr("TTTC0012U")
        bearers = {s.headers["authorization"] for s in rig.upstream.sent if "/uapi" in s.path}
        assert len(bearers) == 1
        assert venue.token_issues == 1
        assert venue.rate_limited() == 0


async def test_an_order_whose_reply_is_lost_on_the_way_back_is_unknown_and_never_resent(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    async with gateway_rig(redis_client, prefix, "mock", rate_limit=False) as rig:
        venue = rig.venue
        broker = await rig.worker("w1")
        symbol = venue.symbols[0]
        lower = venue.running.venue.market.limits(symbol)[0]
        venue.recorders[-1].lose_next_order_reply = True  # after the gateway sent it on
        with pytest.raises(OrderOutcomeUnknown):
            await broker.submit_order(OrderRequest(symbol, Side.BUY, 2, OrderType.LIMIT, lower))
        assert len(venue.placed()) == 1
        assert len(rig.upstream.to(ORDER_CASH)) == 1  # sent to KIS once, never again
        assert len(venue.recorders[-1].to(ORDER_CASH)) == 1


async def test_a_request_is_marked_sent_once_written_so_no_arrival_precedes_its_mark(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    """The jitter bound J is about the network only: the relay marks a request sent when its
    last byte was written, so the exchange's arrival stamp (the kernel's receive time) never
    precedes the mark, however long the gateway took to reach the write after the grant."""
    async with gateway_rig(redis_client, prefix, "real") as rig:
        since = time.monotonic()
        broker = await rig.worker("w1")
        for symbol in rig.venue.symbols[:5]:
            await price(broker, symbol)
        marks = sorted(g["sent_at"] for g in rig.gateway.grants(since))
        arrivals = sorted(a for a, _handled in rig.venue.running.limiter.log if a > since)
        assert len(marks) == len(arrivals) == 5
        for mark, arrived in zip(marks, arrivals, strict=True):
            assert arrived <= mark + 0.001  # the stamp moved onto the monotonic clock
            assert mark - arrived < 0.5


async def test_no_slot_within_the_workers_wait_is_rate_limited_and_nothing_is_sent(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    async with gateway_rig(redis_client, prefix, "mock", rate=2) as rig:
        venue, sched = rig.venue, rig.gateway.scheduler
        reader, trader = await rig.worker("reader"), await rig.worker("trader", wait_s=0.3)
        await price(reader, venue.symbols[0])
        symbol = venue.symbols[1]
        lower = venue.running.venue.market.limits(symbol)[0]
        async with anyio.create_task_group() as tg:
            for _ in range(3):  # keeps the budget (2/s) busy past the trader's wait
                tg.start_soon(price, reader, symbol)
            with anyio.fail_after(10):
                while sched.budget.wait(sched.monotonic()) == 0:
                    await anyio.sleep(0.005)
            sched.hold_until(sched.monotonic() + 2.0)
            with pytest.raises(RateLimited):
                await trader.submit_order(OrderRequest(symbol, Side.BUY, 1, OrderType.LIMIT, lower))
        assert venue.placed() == []
        assert sched.stats[Lane.ORDER].timed_out == 1


async def test_a_queued_order_overtakes_queued_market_data(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    """Market data saturates the budget (4/s at the exchange); an order sent meanwhile is the
    next request granted, ahead of every quotation queued before it."""
    async with gateway_rig(redis_client, prefix, "mock", rate=4) as rig:
        venue, sched = rig.venue, rig.gateway.scheduler
        reader, trader = await rig.worker("reader"), await rig.worker("trader")
        await price(reader, venue.symbols[0])  # the token is in place
        symbol = venue.symbols[1]
        lower = venue.running.venue.market.limits(symbol)[0]
        async with anyio.create_task_group() as tg:
            for _ in range(12):
                tg.start_soon(price, reader, symbol)
            with anyio.fail_after(10):
                while sched.queue.waiting(Lane.MARKET) < 6:
                    await anyio.sleep(0.005)
            await trader.submit_order(OrderRequest(symbol, Side.BUY, 1, OrderType.LIMIT, lower))
        order = next(t for t in sched.granted if t.lane is Lane.ORDER)
        assert order.granted_at is not None
        overtaken = [
            t for t in sched.granted if t.lane is Lane.MARKET and t.enqueued_at < order.enqueued_at
        ]
        assert any(t.granted_at > order.granted_at for t in overtaken)  # type: ignore[operator]
        between = [t for t in sched.granted if t.lane is Lane.MARKET
                   and order.enqueued_at < t.granted_at < order.granted_at]  # type: ignore[operator]  # fmt: skip
        assert between == []
        assert order.wait_s < 2 * (1 / 4) + 0.5  # about one slot on a loaded host
        assert venue.rate_limited() == 0


async def test_workers_take_turns_inside_a_lane(redis_client: aioredis.Redis, prefix: str) -> None:
    """A worker with many quotations queued does not make one with a few wait behind all of
    them: the lane serves the workers in turn."""
    async with gateway_rig(redis_client, prefix, "mock", rate=4) as rig:
        venue, sched = rig.venue, rig.gateway.scheduler
        busy, quiet = await rig.worker("busy"), await rig.worker("quiet")
        await price(busy, venue.symbols[0])
        start = len(sched.granted)
        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(price, busy, venue.symbols[0])
            with anyio.fail_after(10):
                while sched.queue.waiting(Lane.MARKET) < 6:
                    await anyio.sleep(0.005)
            for _ in range(2):
                tg.start_soon(price, quiet, venue.symbols[1])
        order = [t.worker for t in list(sched.granted)[start:]]
        last_quiet = max(i for i, w in enumerate(order) if w == "quiet")
        assert order[last_quiet + 1 :].count("busy") >= 3, order  # quiet did not wait for all
        assert venue.rate_limited() == 0


async def test_services_run_only_while_active_and_reach_kis_through_the_relay(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    async with kis_venue(redis_client, prefix, "mock") as venue:
        seen: list[str] = []
        running = anyio.Event()

        async def service(ctx: GatewayContext) -> None:
            client = ctx.client("svc")
            try:
                broker = KisBroker(client, ctx.clock, universe=[venue.symbols[0]])
                seen.append(str((await broker.quote(venue.symbols[0])).price))
                reply = await ctx.request("GET", wire.PRICE, "FHKST01010100",
                                          {"FID_COND_MRKT_DIV_CODE": "J",
                                           "FID_INPUT_ISCD": venue.symbols[0]})  # fmt: skip
                assert reply.status == 200
                assert (reply.json() or {}).get("rt_cd") == "0"
                running.set()
                await anyio.sleep_forever()
            finally:
                await client.aclose()

        gw = Gateway(venue.config(), redis_client, prefix, clock=venue.clock, services=[service])
        async with anyio.create_task_group() as tg:
            await tg.start(gw.run)
            with anyio.fail_after(10):
                await running.wait()
            assert gw.active
            assert len(seen) == 1
            tg.cancel_scope.cancel()
        assert not gw.active
        # the lease was given back on the way out
        assert await redis_client.get(KisKeys(prefix, "mock", APP_KEY).gateway) is None


# ----- two gateway processes, one SIGKILLed ---------------------------------------------------


def _gateway(env: dict[str, str], name: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "worker", "gateway"],
                                env={**env, "WORKER_ID": name}, stdout=out,
                                stderr=subprocess.STDOUT)  # fmt: skip

    def first_line() -> str | None:
        assert proc.poll() is None, log.read_text()[-2000:]
        for line in log.read_text().splitlines():
            if line.startswith("gateway relay="):
                return line
        return None

    line = eventually(first_line, timeout=30)
    return proc, line.split()[1].removeprefix("relay=")


def _first_symbol() -> str:
    """A symbol of the exchange's market (PAPER_SEED 0, 300 names)."""
    from market.calendar import default_calendar
    from market.sim import SimulatedMarket

    session = default_calendar().next_session(_today())
    return SimulatedMarket(0, session, 300).instruments[0].symbol


def _today() -> Any:
    from datetime import datetime

    from market.clock import KST

    return datetime.now(KST).date()


@pytest.mark.slow
async def test_standby_takes_over_when_the_active_gateway_is_killed(
    redis_url: str, redis_client: aioredis.Redis, prefix: str, tmp_path: Path
) -> None:
    """Two `python -m worker gateway` processes; the active one is SIGKILLed while a worker
    reads quotations through it. The standby takes the lease and relays within a few seconds,
    with the token the first one was issued (the exchange issued one), and the exchange never
    refuses a request for rate."""
    creds = venue_env("gwtakeover")
    env = {**os.environ, **creds, "EXCHANGE_RATE_LIMIT": "1", "PAPER_SPEED": "10",
           "PAPER_EPOCH": str(int(time.time()))}  # fmt: skip
    env.pop("DATABASE_URL", None)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        exchange, rest = start_exchange(env, tmp_path / "exchange.log")
        procs.append(exchange)
        gw_env = {**env, "REDIS_URL": redis_url, "FLEET_PREFIX": prefix,
                  "KIS_APP_KEY": creds["EXCHANGE_APP_KEY"],
                  "KIS_APP_SECRET": creds["EXCHANGE_APP_SECRET"],
                  "KIS_ACCOUNT": creds["EXCHANGE_ACCOUNT"], "KIS_DOMAIN": "mock",
                  "KIS_BASE_URL": rest, "GATEWAY_PORT": "0",
                  "GATEWAY_LEASE_TTL_MS": "3000"}  # fmt: skip
        keys = KisKeys(prefix, "mock", creds["EXCHANGE_APP_KEY"])

        async def holder() -> GatewayLease | None:
            return GatewayLease.decode(await redis_client.get(keys.gateway))

        first, first_url = _gateway(gw_env, "gw-a", tmp_path / "gw-a.log")
        procs.append(first)
        with anyio.fail_after(30):
            while (lease := await holder()) is None or lease.id != "gw-a":
                await anyio.sleep(0.05)
        second, second_url = _gateway(gw_env, "gw-b", tmp_path / "gw-b.log")
        procs.append(second)
        assert second_url != first_url

        config = KisConfig(creds["EXCHANGE_APP_KEY"], "", creds["EXCHANGE_ACCOUNT"],
                           domain="mock", wait_s=10.0)  # fmt: skip
        client = KisClient(config, redis_client, prefix,
                           route=GatewayRoute(redis_client, keys, "reader"))  # fmt: skip
        broker = KisBroker(client, client.clock, universe=[_first_symbol()])
        async with httpx.AsyncClient() as http:

            async def stats() -> dict[str, Any]:
                doc: dict[str, Any] = orjson.loads(
                    (await http.get(f"{rest}/__exchange/stats")).content
                )
                return doc

            symbol = _first_symbol()
            for _ in range(3):
                assert float(await price(broker, symbol)) > 0

            killed_at = time.monotonic()
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
            with anyio.fail_after(30):
                assert float(await price(broker, symbol)) > 0  # rides the takeover
            takeover_s = time.monotonic() - killed_at
            lease = await holder()
            assert lease is not None
            assert lease.id == "gw-b"
            for _ in range(3):
                assert float(await price(broker, symbol)) > 0
            doc = await stats()
            gw_stats = orjson.loads((await http.get(f"{second_url}/__gateway/stats")).content)
        await client.aclose()
        print(f"gateway takeover {takeover_s:.2f} s")
        assert takeover_s < 3.0 + 1.0 + 3.0  # lease TTL + one budget window + a loaded host
        assert sum(doc["token_issues"].values()) == 1
        assert sum(sum(v.values()) for v in doc["rate_limited"].values()) == 0
        assert gw_stats["active"] is True
        assert gw_stats["activations"] == 1
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


# ----- KIS_UNIVERSE and the rehearsal clock ---------------------------------------------------


def _kis_env(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    for name in list(os.environ):
        if name.startswith(("KIS_", "PAPER_", "BROKER")):
            monkeypatch.delenv(name)
    base = {"BROKER": "kis", "KIS_APP_KEY": APP_KEY, "KIS_ACCOUNT": "50012345-01"}
    for name, value in {**base, **env}.items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize(
    "value",
    ["005930,,000660", "SAMSUNG", "005930,005930", ",".join(f"{n:06d}" for n in range(201))],
)
def test_kis_universe_is_strict(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    from worker.settings import ConfigError, load_settings

    _kis_env(monkeypatch, KIS_UNIVERSE=value)
    with pytest.raises(ConfigError, match=r"^KIS_UNIVERSE"):
        load_settings()


def test_kis_universe_is_what_the_gateway_publishes_and_the_workers_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The configured names replace the mock domain's built-in list (and the real domain's
    volume ranking) in every `KisMarketData` / `KisBroker` built on the config."""
    from broker.kis.market import DEFAULT_UNIVERSE, KisMarketData
    from worker.settings import kis_config, load_settings

    _kis_env(monkeypatch, KIS_UNIVERSE="000020, 000040", KIS_DOMAIN="mock")
    settings = load_settings()
    assert settings.kis_universe == ("000020", "000040")
    config = kis_config(settings)
    assert config.universe == ("000020", "000040")
    client = KisClient(config, aioredis.Redis(), "unused")
    assert KisMarketData(client, RealClock(), universe=DEFAULT_UNIVERSE).universe == (
        "000020",
        "000040",
    )
    _kis_env(monkeypatch)
    assert kis_config(load_settings()).universe is None  # unset: each default stands


def test_a_rehearsal_on_an_exchange_runs_on_its_clock_and_kis_in_real_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from worker.gateway import gateway_clock
    from worker.settings import load_settings

    epoch = str(int(time.time()))
    _kis_env(monkeypatch, KIS_BASE_URL="http://127.0.0.1:18443", PAPER_SPEED="60",
             PAPER_EPOCH=epoch, PAPER_DAY="2026-11-24")  # fmt: skip
    settings = load_settings()
    assert settings.kis_on_exchange
    clock = gateway_clock(settings)
    assert isinstance(clock, SimClock)
    assert clock.speed == 60
    assert clock.now().date().isoformat() == "2026-11-24"
    for url in ("https://openapi.koreainvestment.com:9443", ""):
        _kis_env(
            monkeypatch,
            PAPER_SPEED="60",
            PAPER_EPOCH=epoch,
            **({"KIS_BASE_URL": url} if url else {}),
        )
        settings = load_settings()
        assert not settings.kis_on_exchange
        assert isinstance(gateway_clock(settings), RealClock)
