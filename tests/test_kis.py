"""KisBroker's access token, request budget, headers and secrets, through the real adapter
against the project's KIS-compatible exchange on loopback (tests/kis_rig.py), with real Redis.

Orders, paging, fills and notices: tests/test_kis_orders.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal

import anyio
import orjson
import pytest
import redis.asyncio as aioredis
from kis_rig import ACCOUNT, APP_KEY, APP_SECRET, HTS_ID, START, KisVenue, kis_venue
from loguru import logger

from broker.errors import BrokerUnavailable, RateLimited
from broker.kis import KisBroker, KisClient, KisConfig, KisNoticeFeed, wire
from broker.kis.keys import KisKeys
from broker.kis.market import RANK_EXCLUSIONS
from broker.port import OrderRequest, OrderType, Side
from exchange.traits import EXCLUSION_FLAGS
from market.clock import ManualClock

pytestmark = pytest.mark.anyio

TOKEN_PATH = "/oauth2/tokenP"


@pytest.fixture(params=["real", "mock"])
async def venue(
    request: pytest.FixtureRequest, redis_client: aioredis.Redis, prefix: str
) -> AsyncIterator[KisVenue]:
    async with kis_venue(redis_client, prefix, request.param) as v:
        yield v


async def price(broker: KisBroker, symbol: str) -> str:
    params = {"FID_COND_MRKT_DIV_CODE": "J", "FID_INPUT_ISCD": symbol}
    reply = await broker.client.get(wire.PRICE, wire.TR_PRICE, params)
    return str(reply.body["output"]["stck_prpr"])


async def stored(venue: KisVenue) -> dict[str, str]:
    raw = await venue.redis.get(KisKeys(venue.prefix, venue.domain, APP_KEY).token)
    assert raw is not None
    doc: dict[str, str] = orjson.loads(raw)
    return doc


async def store(venue: KisVenue, token: str, expires_in_days: float = 1.0) -> None:
    """Put a token into the fleet's cache as if another process had stored it."""
    expires = venue.clock.now() + timedelta(days=expires_in_days)
    doc = {"token": token, "expires_at": expires.isoformat(), "use_until": expires.isoformat()}
    key = KisKeys(venue.prefix, venue.domain, APP_KEY).token
    await venue.redis.set(key, orjson.dumps(doc), px=600_000)


async def test_one_token_for_the_fleet(venue: KisVenue) -> None:
    a, b = await venue.broker(), await venue.broker()
    symbol = venue.symbols[0]
    async with anyio.create_task_group() as tg:
        for broker in (a, b, a, b):
            tg.start_soon(price, broker, symbol)
    assert venue.token_issues == 1
    bearers = {s.headers["authorization"] for s in venue.all_sent() if s.path.startswith("/uapi")}
    assert len(bearers) == 1  # both 'processes' used the one token
    assert (await stored(venue))["token"] == bearers.pop().removeprefix("Bearer ")
    c = await venue.broker()  # a process started later finds it in Redis
    await price(c, symbol)
    assert venue.token_issues == 1
    assert venue.recorders[-1].to(TOKEN_PATH) == []


async def test_token_used_until_kis_says_it_expires(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    # KIS: a day's token, the same one handed back for 6 hours; here an hour and 30 minutes
    async with kis_venue(
        redis_client, prefix, "real", token_ttl_s=3_600.0, token_reuse_s=1_800.0
    ) as venue:
        broker = await venue.broker(token_issue_interval_s=0.05)
        symbol = venue.symbols[0]
        await price(broker, symbol)
        first = await stored(venue)
        assert (
            first["expires_at"] == (START.replace(microsecond=0) + timedelta(hours=1)).isoformat()
        )
        await venue.advance(3_600 - 601)  # still more than the 600 s margin left
        await price(broker, symbol)
        assert venue.token_issues == 1
        await venue.advance(2)  # inside the margin: refreshed before KIS would refuse it
        await price(broker, symbol)
        assert venue.token_issues == 2
        assert (await stored(venue))["token"] != first["token"]
        assert venue.recorders[0].answered("EGW00123") == []  # never sent an expired one


async def test_expired_token_egw00123_is_refreshed_once(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    async with kis_venue(redis_client, prefix, "mock", token_ttl_s=3_600.0) as venue:
        broker = await venue.broker(token_issue_interval_s=0.05)
        symbol = venue.symbols[0]
        await price(broker, symbol)
        old = (await stored(venue))["token"]
        await venue.advance(3_700)  # KIS's clock: the token has expired
        await store(venue, old)  # ... but the cache says a day (another host's clock)
        assert await price(broker, symbol)
        recorder = venue.recorders[0]
        assert [s.status for s in recorder.answered("EGW00123")] == [500]
        assert venue.token_issues == 2
        assert (await stored(venue))["token"] != old


async def test_unknown_token_egw00121_is_refreshed_once(venue: KisVenue) -> None:
    broker = await venue.broker()
    await store(venue, "eyJ-a-token-kis-does-not-know")
    assert await price(broker, venue.symbols[0])
    recorder = venue.recorders[0]
    assert len(recorder.answered("EGW00121")) == 1
    assert venue.token_issues == 1
    assert (await stored(venue))["token"] != "eyJ-a-token-kis-does-not-know"
    # An order refused for its token is sent again with the fresh one: placed once.
    await store(venue, "eyJ-another-unknown-token")
    ack = await broker.submit_order(OrderRequest(venue.symbols[0], Side.BUY, 1, OrderType.MARKET))
    assert [o.odno for o in venue.placed()] == [ack.broker_order_id]


@pytest.mark.slow
async def test_a_refresh_waits_for_the_one_issue_a_minute(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    interval = 0.3
    async with kis_venue(redis_client, prefix, "mock") as venue:
        a = await venue.broker(token_issue_interval_s=interval)
        b = await venue.broker(token_issue_interval_s=interval)
        symbol = venue.symbols[0]
        await price(a, symbol)  # the minute's issue (exchange clock)
        await store(venue, "eyJ-refused-token")
        results: list[str] = []

        async def read(broker: KisBroker) -> None:
            results.append(await price(broker, symbol))

        started = anyio.current_time()
        async with anyio.create_task_group() as tg:
            tg.start_soon(read, a)
            tg.start_soon(read, b)
            with anyio.fail_after(10):  # KIS answers EGW00133 until its minute is over ...
                while len([s for s in venue.all_sent() if s.msg_cd == "EGW00133"]) < 3:
                    await anyio.sleep(0.02)
            asks = len([s for s in venue.all_sent() if s.path == TOKEN_PATH]) - 1
            elapsed = anyio.current_time() - started
            await venue.advance(60)  # ... and issues once it is
        assert len(results) == 2
        assert venue.token_issues == 2
        # both processes together asked at most once per interval: they waited, not spun
        assert asks <= elapsed / interval + 2


@pytest.mark.slow
async def test_shared_rate_limit_keeps_kis_from_refusing(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    async with kis_venue(redis_client, prefix, "real", rate_limit=True) as venue:
        fleet = [await venue.broker(rate_per_s=20.0) for _ in range(4)]
        await price(fleet[0], venue.symbols[0])  # the token first
        done = 0

        async def read(broker: KisBroker) -> None:
            nonlocal done
            for _ in range(10):
                await price(broker, venue.symbols[1])
                done += 1

        started = anyio.current_time()
        async with anyio.create_task_group() as tg:
            for broker in fleet:
                tg.start_soon(read, broker)
        assert done == 40
        # Unpaced, 40 reads at once would earn 20 refusals and more. Paced, KIS refuses none,
        # unless a request arrives more than the limiter's margin (MARGIN_S) after its grant
        # (a very busy host); such a refusal is retried, so every read above still arrived.
        assert venue.rate_limited() <= 1
        assert anyio.current_time() - started >= 1.0  # 41 requests at 20/s: paced, not bursted


@pytest.mark.slow
async def test_egw00201_is_retried(redis_client: aioredis.Redis, prefix: str) -> None:
    async with kis_venue(redis_client, prefix, "mock", rate_limit=True) as venue:
        fleet = [await venue.broker(backoff_s=0.1, rate_retries=10) for _ in range(4)]
        prices: list[str] = []

        async def read(broker: KisBroker) -> None:
            prices.append(await price(broker, venue.symbols[0]))

        async with anyio.create_task_group() as tg:
            for broker in fleet:
                tg.start_soon(read, broker)
        assert venue.rate_limited() > 0  # the mock domain's 2/s did refuse some ...
        assert len(prices) == 4  # ... and every read still arrived
        assert len(set(prices)) == 1


async def test_egw00201_gives_up_with_rate_limited(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    async with kis_venue(redis_client, prefix, "mock", rate_limit=True, rate_per_s=1) as venue:
        broker = await venue.broker(backoff_s=0.01, rate_retries=2)
        await price(broker, venue.symbols[0])
        with pytest.raises(RateLimited):
            await price(broker, venue.symbols[0])
        assert venue.rate_limited() == 3  # the first answer and two retries


async def test_reads_retry_transient_failures(venue: KisVenue) -> None:
    broker = await venue.broker(backoff_s=0.01, read_retries=3)
    recorder = venue.recorders[0]
    await price(broker, venue.symbols[0])
    recorder.fail_next_reads = 2
    assert await price(broker, venue.symbols[0])
    recorder.fail_next_reads = 10
    with pytest.raises(BrokerUnavailable):
        await price(broker, venue.symbols[0])


async def test_unreachable_server_places_nothing(redis_client: aioredis.Redis, prefix: str) -> None:
    cfg = KisConfig(APP_KEY, APP_SECRET, ACCOUNT, base_url="http://127.0.0.1:9", timeout_s=0.5)
    clock = ManualClock(START)
    client = KisClient(cfg, redis_client, prefix, clock=clock)
    key = KisKeys(prefix, cfg.domain, APP_KEY).token
    tomorrow = (START + timedelta(days=1)).isoformat()
    doc = {"token": "tok1", "expires_at": tomorrow, "use_until": tomorrow}
    await redis_client.set(key, orjson.dumps(doc), px=60_000)  # so the order POST is tried
    try:
        with pytest.raises(BrokerUnavailable, match="nothing was sent"):
            await KisBroker(client, clock).submit_order(
                OrderRequest("005930", Side.BUY, 1, OrderType.MARKET)
            )
    finally:
        await client.aclose()


@pytest.mark.parametrize("custtype", ["P", "B"])
async def test_custtype_header_is_configurable(
    redis_client: aioredis.Redis, prefix: str, custtype: str
) -> None:
    async with kis_venue(redis_client, prefix, "mock") as venue:
        broker = await venue.broker(custtype=custtype)
        await price(broker, venue.symbols[0])
        await broker.submit_order(OrderRequest(venue.symbols[0], Side.BUY, 1, OrderType.MARKET))
        api = [s for s in venue.recorders[0].sent if s.path.startswith("/uapi")]
        assert len(api) == 2
        assert {s.headers["custtype"] for s in api} == {custtype}
    with pytest.raises(ValueError, match="KIS_CUSTTYPE"):
        KisConfig(APP_KEY, APP_SECRET, ACCOUNT, custtype="X")


async def test_volume_rank_leaves_out_flagged_names(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    async with kis_venue(redis_client, prefix, "real", n_symbols=200) as venue:
        broker = await venue.broker(universe=None)
        universe = [i.symbol for i in await broker.instruments()]
        ranks = venue.recorders[0].to(wire.VOLUME_RANK)
        assert [s.params["FID_TRGT_EXLS_CLS_CODE"] for s in ranks] == [RANK_EXCLUSIONS]
        traits = venue.running.venue.traits
        excluded = [
            f for f, flag in zip(EXCLUSION_FLAGS, RANK_EXCLUSIONS, strict=True) if flag == "1"
        ]

        def flagged(symbol: str) -> bool:
            return any(getattr(traits[symbol], f) for f in excluded)

        assert universe
        assert not [s for s in universe if flagged(s)]
        # without the flags KIS would have ranked some of them: the flags did the work
        params = {**ranks[0].params, "FID_TRGT_EXLS_CLS_CODE": "0000000000"}
        reply = await broker.client.get(wire.VOLUME_RANK, wire.TR_VOLUME_RANK, params)
        assert [r for r in wire.rows(reply.body, "output") if flagged(r["mksc_shrn_iscd"])]


async def test_no_secret_in_any_repr_or_log(venue: KisVenue) -> None:
    lines: list[str] = []
    sink = logger.add(lines.append, level="DEBUG", format="{message} {extra}")
    try:
        broker = await venue.broker()
        await store(venue, "eyJ-refused-token")  # a refresh, logged
        await price(broker, venue.symbols[0])
        feed = KisNoticeFeed(broker.client)
        send, receive = anyio.create_memory_object_stream[object](10)
        async with anyio.create_task_group() as tg, receive:
            tg.start_soon(feed.run, send)
            with anyio.fail_after(5):
                await feed.subscribed.wait()
            tg.cancel_scope.cancel()
    finally:
        logger.remove(sink)
    token = (await stored(venue))["token"]
    approvals = [s.reply["approval_key"] for s in venue.recorders[0].to("/oauth2/Approval")]
    assert approvals  # the feed did get an approval key
    secrets = [APP_SECRET, APP_KEY, token, *approvals]
    cfg = broker.client.config
    shown = [
        repr(cfg), str(cfg), repr(broker.client), str(broker.client), repr(broker),
        repr(broker.client.tokens), repr(broker.client.limiter), repr(feed),
        repr(KisKeys(venue.prefix, venue.domain, APP_KEY)), *lines,
    ]  # fmt: skip
    assert lines  # something was logged
    assert [(s[:12], text) for text in shown for s in secrets if s in text] == []
    assert HTS_ID in repr(cfg)  # not a secret: the repr still says which customer


def test_settings_repr_hides_the_app_key_and_secret() -> None:
    from worker.settings import load_settings

    settings = load_settings(
        broker="kis", kis_app_key=APP_KEY, kis_app_secret=APP_SECRET, kis_account=ACCOUNT
    )
    assert APP_SECRET not in repr(settings)
    assert APP_KEY not in repr(settings)


async def test_built_from_settings(venue: KisVenue) -> None:
    """A BROKER=kis worker built from settings: no secret of its own, every request through
    the fleet's active gateway (tests/test_gateway.py tests the gateway itself)."""
    from broker.kis.gateway import Gateway
    from worker.app import kis_broker
    from worker.settings import ConfigError, load_settings

    settings = load_settings(
        broker="kis",
        kis_app_key=APP_KEY,
        kis_app_secret=APP_SECRET,  # the worker does not use it
        kis_account=ACCOUNT,
        kis_domain=venue.domain,
        kis_base_url=venue.running.rest_url,
        kis_ws_url=venue.running.ws_url,
        kis_hts_id=HTS_ID,
        kis_custtype="P",
        kis_rate_per_s=500,
        fleet_prefix=venue.prefix,
    )
    broker = kis_broker(settings, venue.redis, venue.clock)
    gateway = Gateway(venue.config(), venue.redis, venue.prefix, clock=venue.clock)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(gateway.run)
            cfg = broker.client.config
            assert (cfg.rate, cfg.hts_id, cfg.websocket_url) == (500, HTS_ID, venue.running.ws_url)
            assert cfg.app_secret == ""
            assert broker.client.clock is venue.clock
            # the mock domain has no volume ranking: the default universe is used there
            assert (broker.universe is not None) == (venue.domain == "mock")
            symbol = venue.symbols[0]
            lower = venue.running.venue.market.limits(symbol)[0]
            request = OrderRequest(symbol, Side.BUY, 1, OrderType.LIMIT, Decimal(lower))
            ack = await broker.submit_order(request)
            assert (await broker.order_status(ack.broker_order_id)).qty == 1
            tg.cancel_scope.cancel()
    finally:
        await broker.client.aclose()
    with pytest.raises(ConfigError, match="KIS_ACCOUNT"):
        kis_broker(settings.model_copy(update={"kis_account": "123"}), venue.redis, venue.clock)
