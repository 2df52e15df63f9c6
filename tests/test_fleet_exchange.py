"""A fleet day on one venue: the exchange and four `run` workers trading on it (PAPER_VENUE).

One worker is SIGKILLed while its SELL is working at the exchange. At the close every position
is flat, every order final, and per order the ledger's filled quantity and amount equal the
exchange's (read back through the KIS adapter), so the dead worker's SELL was followed to its
end by whoever adopted the symbol.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from datetime import date
from decimal import Decimal
from pathlib import Path

import anyio
import httpx
import pytest
from support import sql, start_exchange, venue_env

pytestmark = pytest.mark.slow

SPEED = 120.0
DAY = "2026-11-24"  # opens 09:00 KST
JOIN_MIN = 5 * 60 + 30  # the workers join the session at 14:30
LEAD_S = 6.0  # wall seconds to start the exchange and the workers before the clock says 14:30
WORKERS = 4
WORKING = ("SENT", "PARTIALLY_FILLED")


def _working_sell(database_url: str) -> tuple[int, str] | None:
    rows = sql(
        database_url,
        "SELECT id, worker_id FROM orders WHERE side = 'SELL' AND broker_order_id IS NOT NULL"
        " AND status = ANY(%s) ORDER BY id LIMIT 1",
        list(WORKING),
    )
    return (int(rows[0][0]), str(rows[0][1])) if rows else None


def _order_status(database_url: str, order_id: int) -> str:
    return str(sql(database_url, "SELECT status FROM orders WHERE id = %s", order_id)[0][0])


async def _exchange_figures(
    rest_url: str, env: dict[str, str], redis_url: str, prefix: str, ids: list[str]
) -> dict[str, tuple[int, Decimal]]:
    """Per broker order id, (filled qty, filled amount) as the exchange reports it through
    inquire-daily-ccld, read by the KIS adapter on the fleet's clock and token."""
    import redis.asyncio as aioredis

    from broker.kis import KisBroker, KisClient, KisConfig
    from market.calendar import default_calendar
    from market.clock import SimClock
    from market.orders import BrokerOrderId

    session = default_calendar().session(date.fromisoformat(DAY))
    assert session is not None
    clock = SimClock(session.open, SPEED, float(env["PAPER_EPOCH"]))
    config = KisConfig(
        app_key=env["EXCHANGE_APP_KEY"],
        app_secret=env["EXCHANGE_APP_SECRET"],
        account=env["EXCHANGE_ACCOUNT"],
        domain="mock",
        base_url=rest_url,
        rate_per_s=1000,
    )
    redis = aioredis.Redis.from_url(redis_url)
    client = KisClient(config, redis, prefix, clock=clock)
    broker = KisBroker(client, clock)
    try:
        out = {}
        for odno in ids:
            status = await broker.order_status(BrokerOrderId(odno))
            out[odno] = (status.filled_qty, status.filled_amount)
        return out
    finally:
        await client.aclose()
        await redis.aclose()


def test_a_worker_killed_while_its_sell_works_loses_nothing(
    database_url: str, redis_url: str, prefix: str, tmp_path: Path
) -> None:
    epoch = time.time() + LEAD_S - JOIN_MIN * 60 / SPEED
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PAPER_", "EXCHANGE_"))},
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "FLEET_PREFIX": prefix,
        "BROKER": "paper",
        "KIS_DOMAIN": "mock",
        "PAPER_SPEED": str(SPEED),
        "PAPER_EPOCH": str(epoch),
        "PAPER_SEED": "7",
        "PAPER_DAY": DAY,
        "LOCK_TTL_MS": "2000",
        "LISTING_LAG_S": "30",
        "MAX_HOLD_MIN": "6",  # positions turn over, so SELLs are placed all afternoon
        "LOG_LEVEL": "INFO",
        **venue_env(secrets.token_hex(8)),
        "EXCHANGE_CASH": "10000000000",
    }
    exchange, rest_url = start_exchange(env, tmp_path / "exchange.log")
    env["PAPER_VENUE"] = rest_url
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for n in range(1, WORKERS + 1):
            with open(tmp_path / f"w{n}.log", "wb") as out:
                procs[f"w{n}"] = subprocess.Popen(
                    [sys.executable, "-m", "worker", "run"], env={**env, "WORKER_ID": f"w{n}"},
                    stdout=out, stderr=subprocess.STDOUT,
                )  # fmt: skip

        # A SELL at the exchange, not final in the ledger: freeze its worker, make sure the
        # SELL is still unfinished (nobody else may touch it while the lease lives), kill it.
        victim = order_id = None
        deadline = time.monotonic() + 60
        while victim is None:
            assert time.monotonic() < deadline, "no SELL was ever seen working"
            found = _working_sell(database_url)
            if found is None or procs[found[1]].poll() is not None:
                time.sleep(0.02)
                continue
            order_id, worker = found
            procs[worker].send_signal(signal.SIGSTOP)
            if _order_status(database_url, order_id) in WORKING:
                procs[worker].send_signal(signal.SIGKILL)
                victim = worker
            else:
                procs[worker].send_signal(signal.SIGCONT)  # finished meanwhile: look again
        procs[victim].wait(10)
        assert _order_status(database_url, order_id) in WORKING

        for worker, proc in procs.items():
            if worker != victim:
                proc.wait(90)
                assert proc.returncode == 0, (tmp_path / f"{worker}.log").read_text()[-3000:]

        stats = httpx.get(f"{rest_url}/__exchange/stats", timeout=10).json()
        account = stats["accounts"][env["EXCHANGE_ACCOUNT"]]
        orders = sql(
            database_url,
            "SELECT id, broker_order_id, status, filled_qty, filled_amount, worker_id, symbol,"
            " fence FROM orders",
        )
        ids = sorted({str(o[1]) for o in orders if o[1] is not None})
        venue = anyio.run(_exchange_figures, rest_url, env, redis_url, prefix, ids)
    finally:
        for proc in [*procs.values(), exchange]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait()

    # flat, in the ledger and at the exchange; nothing working anywhere
    left = sql(database_url, "SELECT symbol, qty, status FROM positions WHERE status <> 'CLOSED'")
    assert left == []
    net = sql(
        database_url,
        "SELECT symbol, sum(CASE side WHEN 'BUY' THEN qty ELSE -qty END) FROM fills"
        " GROUP BY symbol HAVING sum(CASE side WHEN 'BUY' THEN qty ELSE -qty END) <> 0",
    )
    assert net == []
    final = {"FILLED", "CANCELED", "REJECTED", "EXPIRED", "WITHDRAWN"}
    assert [o for o in orders if o[2] not in final] == []
    assert account["holdings"] == {}
    assert account["working"] == 0
    # the victim's SELL moved to the worker that adopted the symbol, which followed it to its end
    sell = next(o for o in orders if o[0] == order_id)
    assert sell[5] != victim
    assert venue[str(sell[1])] == (sell[3], sell[4])
    takeovers = sql(
        database_url,
        "SELECT worker_id FROM lock_events WHERE symbol = %s AND event = 'acquired'"
        " AND fence > %s",
        sell[6], sell[7],
    )  # fmt: skip
    assert (sell[5],) in takeovers, f"{sell[5]} holds {victim}'s SELL without a newer lease"
    # every exchange order is in the ledger, and per order the fills agree to the share and won
    assert account["orders"] == len(ids)
    for _id, odno, _status, qty, amount, *_ in orders:
        if odno is not None:
            assert venue[str(odno)] == (qty, amount), odno
    by_rows = sql(database_url, "SELECT order_id, sum(qty), sum(amount) FROM fills GROUP BY 1")
    rows = {int(r[0]): (int(r[1]), Decimal(r[2])) for r in by_rows}
    for oid, _odno, _status, qty, amount, *_ in orders:
        assert rows.get(int(oid), (0, Decimal(0))) == (qty, amount)
    assert sum(q for q, _a in venue.values()) == account["filled_qty"]
