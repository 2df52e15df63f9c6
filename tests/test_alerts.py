"""Alerts to a person, against a local HTTP receiver and real Redis (and Postgres where a
notice comes from the ledger): each event gives exactly one alert with its fields; dedup and
the rate limit hold with several senders racing; a hanging or failing endpoint changes nothing
in the day's trading; the payload shapes of the generic webhook, Slack and Telegram."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import date, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from prometheus_client import CollectorRegistry
from support import free_port
from trading_rig import SESSION, Rig

from broker.errors import BrokerUnavailable
from coordination.alerts import RedisAlertGate, Verdict
from coordination.keys import Keyspace
from coordination.locks import RedisSymbolLock
from coordination.notices import Notices, NoticeType
from coordination.reaper import LeaseReaper
from ledger.errors import LedgerUnavailable
from ledger.orders import OrderState
from ledger.repository import Ledger
from market.calendar import default_calendar
from market.clock import KST, ManualClock
from market.orders import OrderType, Side
from trading.orders import Placement
from trading.tenure import Tenure
from worker.alerts import FleetAlerts, probe_alert
from worker.notifier import AlertFailed, SlackNotifier, TelegramNotifier, deliver
from worker.settings import ConfigError, Settings, load_settings

pytestmark = pytest.mark.anyio

TOKEN = "123456:SECRET-token_abc"


class Receiver:
    """A local alert endpoint: records every request (path, JSON) and answers as `mode` says:
    ``ok`` (200), ``500``, ``hang`` (never answers), ``telegram`` (the Bot API's ``ok``)."""

    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode
        self.requests: list[dict[str, Any]] = []
        self._arrived = anyio.Event()
        self._release = anyio.Event()
        self.url = ""

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append({"path": request.path, "json": await request.json()})
        self._arrived.set()
        self._arrived = anyio.Event()
        if self.mode == "hang":
            await self._release.wait()
        if self.mode == "500":
            return web.Response(status=500, text="boom")
        if self.mode == "telegram":
            return web.json_response({"ok": True, "result": {"message_id": 1}})
        return web.Response(text="ok")

    async def wait_for(self, n: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        with anyio.fail_after(timeout):
            while len(self.requests) < n:
                await self._arrived.wait()
        return self.requests

    def texts(self) -> list[str]:
        return [str(r["json"].get("text", "")) for r in self.requests]

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[Receiver]:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        runner = web.AppRunner(app, shutdown_timeout=0.5)
        await runner.setup()
        port = free_port()
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        self.url = f"http://127.0.0.1:{port}"
        try:
            yield self
        finally:
            self._release.set()
            await runner.cleanup()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver().serving() as r:
        yield r


def _settings(redis_url: str, prefix: str, url: str, **kw: Any) -> Settings:
    return load_settings(redis_url=redis_url, fleet_prefix=prefix, worker_id=kw.pop("worker_id",
                         "p1"), alert_webhook_url=url, **kw)  # fmt: skip


async def until(probe: Callable[[], Awaitable[bool] | bool], timeout: float = 10.0) -> None:
    """Wait until `probe()` holds (checked every 20 ms)."""
    with anyio.fail_after(timeout):
        while True:
            value = probe()
            if not isinstance(value, bool):
                value = await value
            if value:
                return
            await anyio.sleep(0.02)


@asynccontextmanager
async def sending(settings: Settings, redis: aioredis.Redis) -> AsyncIterator[FleetAlerts]:
    """One process's `FleetAlerts`, running, until the block ends; yields once its sender
    reads the stream (it holds the fleet's lease)."""
    keys = Keyspace(settings.fleet_prefix)
    alerts = FleetAlerts.build(settings, redis, keys, Notices(redis, keys), CollectorRegistry())
    async with anyio.create_task_group() as tg:
        tg.start_soon(alerts.run)
        assert alerts.sender is not None
        with anyio.fail_after(10):
            await alerts.sender.reading.wait()
        yield alerts
        tg.cancel_scope.cancel()


async def _marker(alerts: FleetAlerts, receiver: Receiver, n: int) -> None:
    """Publish a marker alert and wait until the sender handled it: it handles notices in
    order, so every notice published before the marker is handled too (`n` requests in all)."""
    marker = await alerts.notices.publish(NoticeType.WORKER_CRASHED, "marker", None,
                                          {"error": f"marker {n}"})  # fmt: skip
    assert alerts.sender is not None
    assert await alerts.sender.settle(marker, 15)
    assert len(receiver.requests) == n
    assert "marker" in receiver.texts()[-1]


# --- each event: exactly one alert with its fields -----------------------------------------

EVENTS = [
    # (type, worker, symbol, data, fields the alert must carry)
    (NoticeType.RISK_HALT, "w1", None, {"why": "realized pnl reached -2000000"},
     ["Daily loss limit reached", "worker w1", "realized pnl reached -2000000", "summary"]),
    (NoticeType.ORDER_FAILED, "w2", "005930",
     {"client_order_id": "c-42", "side": "SELL", "order_type": "LIMIT", "qty": 10,
      "price": "71000", "status_reason": "not placed: gateway away"},
     ["SELL order on 005930 failed", "order c-42", "not placed: gateway away", "still held"]),
    (NoticeType.LOCK_LOST, "w3", "000660", {"fence": 7, "reason": "lock key gone"},
     ["Lease on 000660 lost while held (fence 7)", "worker w3", "lock key gone", "adopts"]),
    (NoticeType.WORKER_STATE, "w4", "035720", {"from": "SCAN", "to": "HOLD", "event": "adopted"},
     ["Orphaned position on 035720 adopted by worker w4", "symbol 035720", "previous owner"]),
    (NoticeType.LOCK_EXPIRED, "w5", "051910", {"fence": 3, "reaped": True},
     ["Worker w5 stopped renewing its lease on 051910", "fence 3 expired, reaped", "pod"]),
    (NoticeType.WORKER_CRASHED, "w6", None, {"error": "KeyError: 'x'"},
     ["Worker w6 stopped on an error", "KeyError", "traceback"]),
    (NoticeType.SERVER_UNREACHABLE, "w7", None,
     {"server": "Postgres", "error": "LedgerUnavailable: timeout"},
     ["Postgres unreachable past the retry budget: worker w7 stopped", "Restore Postgres"]),
    (NoticeType.ACCOUNT_DRIFT, "rec", "005380",
     {"why": "the broker holds 5 shares the ledger does not know", "kind": "holding",
      "drift_id": 9, "change": "new", "broker_qty": 5, "ledger_qty": 0},
     ["Account drift on 005380", "broker qty 5, ledger qty 0", "No worker buys 005380",
      "record 9"]),
    (NoticeType.POSITION_LEFT_OPEN, "w8", "068270",
     {"qty": 12, "avg_price": "181500", "status": "OPEN", "day": "2026-11-24"},
     ["Position on 068270 still open at the close (x12)", "worker w8", "181500", "sell it"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "worker", "symbol", "data", "expected"), EVENTS, ids=[e[0].value for e in EVENTS]
)
async def test_each_event_gives_exactly_one_alert_with_its_fields(
    redis_client: aioredis.Redis, redis_url: str, prefix: str, receiver: Receiver,
    kind: NoticeType, worker: str, symbol: str | None, data: dict[str, Any], expected: list[str],
) -> None:  # fmt: skip
    settings = _settings(redis_url, prefix, receiver.url)
    async with sending(settings, redis_client) as alerts:
        notices = alerts.notices
        await notices.publish(NoticeType.ORDER_FILLED, worker, "005930", {"qty": 1})  # no alert
        await notices.publish(kind, worker, symbol, data)
        await notices.publish(kind, worker, symbol, data)  # the same event again: a duplicate
        await _marker(alerts, receiver, 2)
    [alert, _] = [r["json"] for r in receiver.requests]
    assert alert["kind"] == kind.value
    assert alert["worker"] == worker
    assert alert["symbol"] == symbol
    assert alert["fleet"] == prefix
    assert alert["action"]
    text = alert["text"]
    assert "what to do: " in text
    assert "where: " in text
    for field in expected:
        assert field in text, (field, text)
    assert alerts.metrics is not None
    assert alerts.metrics.value("sent") == 2
    assert alerts.metrics.value("duplicate") == 1


async def test_a_state_change_that_is_no_adoption_is_no_alert(
    redis_client: aioredis.Redis, redis_url: str, prefix: str, receiver: Receiver
) -> None:
    settings = _settings(redis_url, prefix, receiver.url)
    async with sending(settings, redis_client) as alerts:
        await alerts.notices.publish(NoticeType.WORKER_STATE, "w1", "005930",
                                     {"from": "SCAN", "to": "HOLD", "event": "bought"})  # fmt: skip
        await _marker(alerts, receiver, 1)


# --- the emitters: where each new notice comes from -----------------------------------------


async def test_an_order_the_broker_rejects_alerts_once_with_its_order_id(
    ledger: Ledger, redis_client: aioredis.Redis, redis_url: str, prefix: str,
    receiver: Receiver,
) -> None:  # fmt: skip
    rig = Rig(ledger, redis_client, Keyspace(prefix))
    party = rig.party("A")
    symbol = "999990"  # listed nowhere: the paper broker refuses the order
    lease = await party.lock.acquire(symbol)
    assert lease is not None
    settings = _settings(redis_url, prefix, receiver.url)
    async with sending(settings, redis_client), anyio.create_task_group() as tg:
        tg.start_soon(party.tracker.run)
        async with Tenure.open(party.ctx, lease) as tenure:
            final = await tenure.place(
                Placement(symbol, Side.BUY, 1, OrderType.LIMIT, Decimal(10_000), lease.fence,
                          "test", Decimal(10_000)), rig.clock.now() + timedelta(minutes=1),
            )  # fmt: skip
        assert final.status is OrderState.REJECTED
        [request] = await receiver.wait_for(1)
        tg.cancel_scope.cancel()
    alert = request["json"]
    assert alert["kind"] == "order.failed"
    assert (alert["worker"], alert["symbol"]) == ("A", symbol)
    assert alert["order"] == final.client_order_id
    assert "unknown symbol" in alert["detail"]
    assert "Nothing was bought" in alert["action"]


async def test_a_lease_the_reaper_finds_expired_alerts_as_a_stalled_worker(
    redis_client: aioredis.Redis, redis_url: str, prefix: str, receiver: Receiver
) -> None:
    keys = Keyspace(prefix)
    settings = _settings(redis_url, prefix, receiver.url)
    async with sending(settings, redis_client):
        lock = RedisSymbolLock(redis_client, keys, "dead", ttl_ms=100)
        lease = await lock.acquire("005930")
        assert lease is not None
        reaper = LeaseReaper(redis_client, keys)  # the dead worker never renews: it expires
        await until(lambda: _reap_all(reaper))
        [request] = await receiver.wait_for(1)
    alert = request["json"]
    assert alert["kind"] == "lock.expired"
    assert (alert["worker"], alert["symbol"]) == ("dead", "005930")
    assert f"fence {lease.fence} expired, reaped" in alert["detail"]


async def _reap_all(reaper: LeaseReaper) -> bool:
    return any([await reaper.reap(lease) for lease in await reaper.expired()])


async def test_crashes_are_announced_once_each_and_a_server_away_names_it(
    redis_client: aioredis.Redis, redis_url: str, prefix: str, receiver: Receiver
) -> None:
    settings = _settings(redis_url, prefix, receiver.url)
    fleet: Any = [
        SimpleNamespace(id="w1", crashed=None),
        SimpleNamespace(id="w2", crashed=LedgerUnavailable("statement timeout")),
    ]
    async with sending(settings, redis_client) as alerts, anyio.create_task_group() as tg:
        tg.start_soon(alerts.watch_crashes, fleet, 0.02)
        [first] = await receiver.wait_for(1)
        fleet[0].crashed = KeyError("boom")  # a later crash is seen by the watcher too
        await receiver.wait_for(2)
        tg.cancel_scope.cancel()
    # the day ends: the last look reports nothing twice
    await alerts.close_day(None, SESSION, ManualClock(SESSION.open), fleet)  # type: ignore[arg-type]
    assert first["json"]["kind"] == "server.unreachable"
    assert first["json"]["worker"] == "w2"
    assert "Postgres unreachable past the retry budget" in first["json"]["title"]
    second = receiver.requests[1]["json"]
    assert (second["kind"], second["worker"]) == ("worker.crashed", "w1")
    assert "KeyError" in second["detail"]
    stream = await redis_client.xrange(Keyspace(prefix).events)
    kinds = [f[b"type"] for _, f in stream]
    assert kinds.count(b"server.unreachable") == 1
    assert kinds.count(b"worker.crashed") == 1


async def test_with_redis_away_a_crash_alert_is_sent_directly(
    redis_url: str, prefix: str, receiver: Receiver
) -> None:
    dead = aioredis.Redis(host="127.0.0.1", port=free_port(), socket_timeout=0.5,
                          socket_connect_timeout=0.5)  # fmt: skip
    settings = _settings(redis_url, prefix, receiver.url)
    keys = Keyspace(prefix)
    alerts = FleetAlerts.build(settings, dead, keys, Notices(dead, keys, timeout_s=0.5), None)
    try:
        await alerts.report_crash("w1", BrokerUnavailable("gateway away for 12 minutes"))
    finally:
        await dead.aclose()
        assert alerts.notifier is not None
        await alerts.notifier.aclose()
    [request] = receiver.requests
    assert request["json"]["kind"] == "server.unreachable"
    assert "the broker unreachable" in request["json"]["title"]


async def test_positions_open_at_the_close_alert_once_however_many_processes_report_them(
    ledger: Ledger, redis_client: aioredis.Redis, redis_url: str, prefix: str,
    receiver: Receiver,
) -> None:  # fmt: skip
    rig = Rig(ledger, redis_client, Keyspace(prefix))
    party = rig.party("owner")
    symbol = rig.liquid_symbol()
    lease = await party.lock.acquire(symbol)
    assert lease is not None
    async with anyio.create_task_group() as tg:
        tg.start_soon(party.tracker.run)
        async with Tenure.open(party.ctx, lease) as tenure:
            bought = await tenure.place(rig.buy(symbol, lease.fence), rig.clock.now())
        tg.cancel_scope.cancel()
    assert bought.filled_qty > 0
    after_close = ManualClock(SESSION.close + timedelta(minutes=3))
    one = _settings(redis_url, prefix, receiver.url, worker_id="p1")
    two = _settings(redis_url, prefix, receiver.url, worker_id="p2")
    async with sending(one, redis_client) as first:
        keys = Keyspace(prefix)
        second = FleetAlerts.build(two, redis_client, keys, Notices(redis_client, keys), None)
        await second.close_day(ledger, SESSION, after_close)  # the other process: no sender
        await first.close_day(ledger, SESSION, after_close)  # this one waits for delivery
        assert len(receiver.requests) == 1  # delivered before close_day returned
        await _marker(first, receiver, 2)
    alert = receiver.requests[0]["json"]
    assert alert["kind"] == "position.left_open"
    assert (alert["worker"], alert["symbol"]) == ("owner", symbol)
    assert f"x{bought.filled_qty}" in alert["title"]


async def test_nothing_is_announced_before_the_close(
    ledger: Ledger, redis_client: aioredis.Redis, redis_url: str, prefix: str
) -> None:
    keys = Keyspace(prefix)
    alerts = FleetAlerts.build(_settings(redis_url, prefix, "http://127.0.0.1:9"), redis_client,
                               keys, Notices(redis_client, keys), None)  # fmt: skip
    await alerts.close_day(ledger, SESSION, ManualClock(SESSION.close - timedelta(minutes=1)))
    assert await redis_client.xlen(keys.events) == 0
    assert alerts.notifier is not None
    await alerts.notifier.aclose()


# --- one sender per fleet; dedup and the rate limit ------------------------------------------


async def test_racing_gates_admit_an_alert_once_and_the_limit_exactly(
    redis_url: str, prefix: str
) -> None:
    clients = [aioredis.Redis.from_url(redis_url) for _ in range(8)]
    keys = Keyspace(prefix)
    gates = [RedisAlertGate(c, keys, dedup_ms=60_000, limit=5, period_ms=1_500) for c in clients]
    verdicts: list[Verdict] = []
    try:

        async def admit(gate: RedisAlertGate, identity: str) -> None:
            verdicts.append((await gate.admit(identity)).verdict)

        async with anyio.create_task_group() as tg:  # 8 senders x the same alert
            for gate in gates:
                tg.start_soon(admit, gate, "risk.halt/w1")
        assert sorted(verdicts) == sorted([Verdict.SEND] + [Verdict.DUPLICATE] * 7)
        verdicts.clear()
        async with anyio.create_task_group() as tg:  # 8 senders x 3 alerts: 4 slots left
            for i in range(24):
                tg.start_soon(admit, gates[i % 8], f"alert {i}")
        assert verdicts.count(Verdict.SEND) == 4
        assert verdicts.count(Verdict.LIMITED) == 20
        # the next window: the first admitted alert says how many the limit dropped
        started = time.monotonic()
        with anyio.fail_after(10):
            while (admission := await gates[0].admit("later")).verdict is Verdict.LIMITED:
                await anyio.sleep(0.05)
        assert time.monotonic() - started < 5
        assert admission.suppressed >= 20  # and any refused while waiting for the window
    finally:
        for c in clients:
            await c.aclose()


async def test_three_processes_one_sender_each_alert_once_and_the_rate_limit_holds(
    redis_url: str, prefix: str, receiver: Receiver
) -> None:
    clients = [aioredis.Redis.from_url(redis_url) for _ in range(3)]
    keys = Keyspace(prefix)
    procs = [
        FleetAlerts.build(
            _settings(redis_url, prefix, receiver.url, worker_id=f"p{i}", alert_max_per_min=4),
            c,
            keys,
            Notices(c, keys),
            CollectorRegistry(),
        )
        for i, c in enumerate(clients)
    ]
    try:
        async with anyio.create_task_group() as tg:
            for p in procs:
                tg.start_soon(p.run)
            await until(lambda: any(p.sender is not None and p.sender.reading.is_set()
                                    for p in procs))  # fmt: skip
            # every process reports the same position left open, and each one crash of its own
            for i, p in enumerate(procs):
                await p.notices.publish(NoticeType.POSITION_LEFT_OPEN, "owner", "005930",
                                        {"qty": 3, "avg_price": "100", "day": "2026-11-24",
                                         "status": "OPEN", "seen_by": f"p{i}"})  # fmt: skip
            for i, p in enumerate(procs):
                await p.notices.publish(NoticeType.WORKER_CRASHED, f"w{i}", None,
                                        {"error": f"boom {i}"})  # fmt: skip
            await receiver.wait_for(4)
            senders = [p for p in procs if p.sender is not None and p.sender.active]

            def handled() -> bool:
                return sum(p.metrics.value(o) for p in procs if p.metrics for o in
                           ("sent", "duplicate", "rate_limited")) == 6  # fmt: skip

            await until(handled)
            tg.cancel_scope.cancel()
    finally:
        for c in clients:
            await c.aclose()
    assert len(senders) == 1, "one sender per fleet"
    kinds = [r["json"]["kind"] for r in receiver.requests]
    assert kinds == ["position.left_open", "worker.crashed", "worker.crashed", "worker.crashed"]
    total = {o: sum(p.metrics.value(o) for p in procs if p.metrics)
             for o in ("sent", "duplicate", "rate_limited")}  # fmt: skip
    # 6 notices: 2 duplicates of the open position; 4 alerts fill the minute's limit
    assert total == {"sent": 4, "duplicate": 2, "rate_limited": 0}
    # a fifth alert in the same minute is dropped
    gate = RedisAlertGate(aioredis.Redis.from_url(redis_url), keys, dedup_ms=60_000, limit=4)
    try:
        assert (await gate.admit("fifth")).verdict is Verdict.LIMITED
    finally:
        await gate.redis.aclose()


# --- a failing endpoint changes nothing for the traders -------------------------------------


@pytest.mark.parametrize("mode", ["hang", "500"])
async def test_a_failing_endpoint_is_bounded_counted_and_never_waited_on(
    redis_client: aioredis.Redis, redis_url: str, prefix: str, mode: str
) -> None:
    async with Receiver(mode).serving() as bad:
        settings = _settings(redis_url, prefix, bad.url, alert_timeout_s=0.5, alert_attempts=2)
        async with sending(settings, redis_client) as alerts:
            assert alerts.metrics is not None
            publish_s = []
            for i in range(20):  # what workers do while the sender is stuck on the endpoint
                started = time.monotonic()
                await alerts.notices.publish(NoticeType.WORKER_CRASHED, f"w{i}", None,
                                             {"error": "x"})  # fmt: skip
                publish_s.append(time.monotonic() - started)
            await bad.wait_for(2)  # the first alert: both attempts made
            await until(lambda: alerts.metrics.value("failed") >= 1, timeout=10)  # type: ignore[union-attr]
    assert max(publish_s) < 0.25
    assert len(bad.requests) >= 2
    # each alert: at most ALERT_ATTEMPTS requests
    assert [r["json"]["worker"] for r in bad.requests][:2] == ["w0", "w0"]


@pytest.fixture
def other_database_url(pg_server_url: str, database_pool: Any) -> Iterator[str]:
    """A second database at migration head, this test's alone."""
    from sqlalchemy.engine import make_url

    name = database_pool.take()
    try:
        yield make_url(pg_server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        database_pool.give_back(name)


@pytest.mark.slow
async def test_a_fleet_day_with_a_hanging_endpoint_trades_as_without_alerts(
    database_url: str, other_database_url: str, redis_url: str, prefix: str
) -> None:
    """The end of one session, twice: alerts off, then alerts sent to an endpoint that never
    answers while the workers trade. Both finish as soon, flat, with every order final."""
    async with Receiver("hang").serving() as hang:
        free = await _late_session(database_url, redis_url, f"{prefix}a", "")
        hung = await _late_session(other_database_url, redis_url, f"{prefix}b", hang.url)
        assert len(hang.requests) >= 1, "the sender was stuck on the endpoint during the day"
    (free_s, free_trades), (hung_s, hung_trades) = free, hung
    assert free_trades > 0
    assert hung_trades > 0
    assert hung_s < free_s + 3.0, (free_s, hung_s)


SPEED = 600.0  # 14:40 to the close in ~5 s of wall time: liquidation on a loaded machine too
DAY = date(2026, 11, 24)


async def _late_session(db: str, redis_url: str, prefix: str, alert_url: str) -> tuple[float, int]:
    """Run two workers from 14:40 to the close; (wall seconds, trades closed)."""
    from support import sql

    from worker.app import run_fleet

    session = default_calendar().session(DAY)
    assert session is not None
    start = datetime(2026, 11, 24, 14, 40, tzinfo=KST)
    epoch = time.time() + 0.3 - (start - session.open).total_seconds() / SPEED
    settings = load_settings(
        database_url=db, redis_url=redis_url, fleet_prefix=prefix, worker_id="day",
        paper_seed=7, paper_symbols=300, paper_day=DAY, lock_ttl_ms=3_000,
        alert_webhook_url=alert_url or None, alert_timeout_s=5.0, alert_attempts=3,
    )  # fmt: skip
    keys = Keyspace(prefix)
    r = aioredis.Redis.from_url(redis_url)

    async def alert_during_the_day() -> None:
        if not alert_url:
            return
        await until(lambda: r.exists(keys.singleton("alerts")), timeout=20)
        await until(lambda: _has_group(r, keys.events), timeout=20)
        for i in range(3):
            await Notices(r, keys).publish(NoticeType.RISK_HALT, f"w{i}", None, {"why": "test"})

    started = time.monotonic()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(alert_during_the_day)
            await run_fleet(settings, database_url=db, redis_url=redis_url, workers=2,
                            speed=SPEED, epoch=epoch, handle_signals=False)  # fmt: skip
        took = time.monotonic() - started
    finally:
        await r.aclose()
    open_positions = sql(db, "SELECT count(*) FROM positions WHERE status <> 'CLOSED'")
    unfinished = sql(db, "SELECT count(*) FROM orders WHERE status NOT IN "
                         "('FILLED','CANCELED','REJECTED','EXPIRED','WITHDRAWN')")  # fmt: skip
    trades = sql(db, "SELECT count(*) FROM trades")[0][0]
    assert open_positions == [(0,)]
    assert unfinished == [(0,)]
    return took, int(trades)  # type: ignore[call-overload]


async def _has_group(r: aioredis.Redis, stream: str) -> bool:
    try:
        return any(g["name"] in (b"alerts", "alerts") for g in await r.xinfo_groups(stream))
    except Exception:
        return False


# --- payload shapes, the test command, the settings ----------------------------------------


async def test_slack_and_telegram_payload_shapes() -> None:
    alert = probe_alert("fleet", "p1")
    async with Receiver("ok").serving() as slack_endpoint:
        slack = SlackNotifier(f"{slack_endpoint.url}/services/T000/B000/XXXX")
        try:
            await slack.send(alert)
        finally:
            await slack.aclose()
    [request] = slack_endpoint.requests
    assert request["path"] == "/services/T000/B000/XXXX"
    assert list(request["json"]) == ["text"]
    assert request["json"]["text"].startswith("[tradefleet] Test alert")
    async with Receiver("telegram").serving() as bot_api:
        telegram = TelegramNotifier(f"{bot_api.url}/bot{TOKEN}", "-100123")
        try:
            await telegram.send(alert)
        finally:
            await telegram.aclose()
    [request] = bot_api.requests
    assert request["path"] == f"/bot{TOKEN}/sendMessage"
    assert request["json"]["chat_id"] == -100123
    assert "what to do: Nothing to do." in request["json"]["text"]


async def test_failures_never_name_the_url_and_4xx_is_not_retried() -> None:
    alert = probe_alert("fleet", "p1")
    async with Receiver("ok").serving() as not_telegram:  # answers 200 without ok=true
        telegram = TelegramNotifier(f"{not_telegram.url}/bot{TOKEN}", "@alerts_channel")
        try:
            with pytest.raises(AlertFailed) as failed:
                await deliver(telegram, alert, attempts=3, backoff_s=0.01)
        finally:
            await telegram.aclose()
        assert len(not_telegram.requests) == 1  # a definite no: not retried
        assert not_telegram.requests[0]["json"]["chat_id"] == "@alerts_channel"
    refused = SlackNotifier(f"http://127.0.0.1:{free_port()}/hooks/{TOKEN}", timeout_s=0.5)
    try:
        with pytest.raises(AlertFailed) as unreachable:
            await deliver(refused, alert, attempts=2, backoff_s=0.01)
    finally:
        await refused.aclose()
    for exc in (failed.value, unreachable.value):
        assert TOKEN not in str(exc)
        assert "127.0.0.1" not in str(exc)
    assert unreachable.value.retryable


async def _cli(env: dict[str, str]) -> tuple[int, str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("ALERT_", "DATABASE_",
                                                                       "REDIS_"))}  # fmt: skip
    result = await anyio.run_process([sys.executable, "-m", "worker", "alert", "--test"],
                                     env={**clean, **env}, check=False)  # fmt: skip
    return result.returncode, result.stdout.decode(), result.stderr.decode()


async def test_the_alert_test_command_exits_0_1_or_2() -> None:
    async with Receiver("ok").serving() as ok:
        code, out, _ = await _cli({"ALERT_WEBHOOK_URL": f"{ok.url}/hook", "ALERT_KIND": "slack"})
        assert code == 0
        assert "test alert accepted by the slack endpoint" in out
        assert ok.requests[0]["json"]["text"].startswith("[tradefleet] Test alert")
    async with Receiver("500").serving() as failing:
        url = f"{failing.url}/bot{TOKEN}"
        code, _, err = await _cli({"ALERT_WEBHOOK_URL": url, "ALERT_KIND": "telegram",
                                   "ALERT_TELEGRAM_CHAT": "42", "ALERT_ATTEMPTS": "2"})  # fmt: skip
        assert code == 1
        assert err.strip().splitlines() == [
            "python -m worker: error: AlertFailed: telegram endpoint answered 500"
        ]
        assert len(failing.requests) == 2  # ALERT_ATTEMPTS
    code, _, err = await _cli({})
    assert code == 2
    assert "ALERT_WEBHOOK_URL" in err


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"alert_kind": "slack"}, "ALERT_KIND"),
        ({"alert_webhook_url": "ftp://hooks.example/T/B/SECRET"}, "ALERT_WEBHOOK_URL"),
        ({"alert_webhook_url": "https://x.example/hook/SECRET", "alert_kind": "sms"},
         "ALERT_KIND"),
        ({"alert_webhook_url": "https://api.telegram.org/botSECRET", "alert_kind": "telegram",
          "alert_telegram_chat": "42"}, "ALERT_WEBHOOK_URL"),
        ({"alert_webhook_url": f"https://api.telegram.org/bot{TOKEN}",
          "alert_kind": "telegram"}, "ALERT_TELEGRAM_CHAT"),
        ({"alert_webhook_url": "https://x.example/hook/SECRET", "alert_telegram_chat": "42"},
         "ALERT_TELEGRAM_CHAT"),
        ({"alert_webhook_url": "https://x.example/hook/SECRET", "alert_dedup_s": 0},
         "ALERT_DEDUP_S"),
        ({"alert_webhook_url": "https://x.example/hook/SECRET", "alert_max_per_min": 0},
         "ALERT_MAX_PER_MIN"),
        ({"alert_webhook_url": "https://x.example/hook/SECRET", "alert_timeout_s": "nan"},
         "ALERT_TIMEOUT_S"),
    ],
)  # fmt: skip
def test_bad_alert_settings_name_the_setting_and_never_echo_the_url(
    env: dict[str, Any], named: str
) -> None:
    with pytest.raises(ConfigError) as bad:
        load_settings(**env)
    message = str(bad.value)
    assert named in message
    assert "SECRET" not in message
    assert TOKEN not in message


def test_alerts_are_off_by_default() -> None:
    settings = load_settings()
    assert settings.alert_webhook_url is None
    assert load_settings(alert_webhook_url=f"https://api.telegram.org/bot{TOKEN}",
                         alert_kind="telegram", alert_telegram_chat="-100123")  # fmt: skip
