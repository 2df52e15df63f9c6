"""The account drifts under a running fleet: the exchange (`python -m worker exchange`) and two
`run` workers trading on it (PAPER_VENUE, the KIS adapter). Mid-session the exchange sells a
held position behind the fleet's back (a manual sell in the HTS app) and shares of a symbol the
fleet traded earlier are transferred in. The fleet's one reconciler raises the alarm for both
(ERROR log, ``account.drift`` notice, ``account_drift_total`` metric, ledger row) and no BUY
lands on either symbol afterwards, while the fleet keeps trading others.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis
from support import eventually, free_port, sql, start_exchange, venue_env

pytestmark = pytest.mark.slow

SPEED = 120.0
DAY = "2026-11-24"  # opens 09:00 KST
JOIN_MIN = 4 * 60  # the workers join the session at 13:00
LEAD_S = 6.0  # wall seconds to start the exchange and the workers before the clock says 13:00
AFTER_S = 20.0  # wall seconds (40 clock minutes) of trading after the alarm


def _quiet_position(database_url: str) -> tuple[str, int] | None:
    """A symbol held in the ledger with no order in flight on it."""
    rows = sql(
        database_url,
        "SELECT p.symbol, p.qty FROM positions p WHERE p.status = 'OPEN' AND p.qty > 0"
        " AND NOT EXISTS (SELECT 1 FROM orders o WHERE o.symbol = p.symbol AND o.status IN"
        " ('NEW', 'SUBMITTING', 'SENT', 'PARTIALLY_FILLED', 'UNKNOWN')) ORDER BY p.id LIMIT 1",
    )
    return (str(rows[0][0]), int(rows[0][1])) if rows else None


def _traded_and_flat(database_url: str, besides: str) -> str | None:
    rows = sql(
        database_url,
        "SELECT symbol FROM trades WHERE symbol <> %s AND symbol NOT IN (SELECT symbol FROM"
        " positions WHERE status <> 'CLOSED') AND symbol NOT IN (SELECT symbol FROM orders"
        " WHERE status NOT IN ('FILLED', 'CANCELED', 'REJECTED', 'EXPIRED', 'WITHDRAWN'))"
        " ORDER BY id LIMIT 1",
        besides,
    )
    return str(rows[0][0]) if rows else None


def _drift(database_url: str, symbol: str) -> tuple[object, ...] | None:
    rows = sql(
        database_url,
        "SELECT detected_at, broker_qty, ledger_qty, recorded_by FROM account_drifts"
        " WHERE kind = 'holding' AND symbol = %s AND cleared_at IS NULL",
        symbol,
    )
    return rows[0] if rows else None


def _metric(port: int, symbol: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith("tradefleet_account_drift_total{") and f'symbol="{symbol}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_drift_behind_the_fleets_back_raises_the_alarm_and_no_buy_lands(
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
        "MAX_HOLD_MIN": "6",  # positions turn over: symbols are traded, closed, wanted again
        "RECONCILE_INTERVAL_S": "30",  # a quarter of a wall second
        "LOG_LEVEL": "INFO",
        **venue_env(secrets.token_hex(8)),
        "EXCHANGE_CASH": "10000000000",
    }
    exchange, rest_url = start_exchange(env, tmp_path / "exchange.log")
    env["PAPER_VENUE"] = rest_url
    ports = {f"w{n}": free_port() for n in (1, 2)}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for worker, port in ports.items():
            with open(tmp_path / f"{worker}.log", "wb") as out:
                procs[worker] = subprocess.Popen(
                    [sys.executable, "-m", "worker", "run"],
                    env={**env, "WORKER_ID": worker, "HEALTH_PORT": str(port)},
                    stdout=out, stderr=subprocess.STDOUT,
                )  # fmt: skip

        # 1. a position the fleet holds is sold at the exchange behind its back (retried when
        # its holder placed a SELL of its own just before and nothing is left to sell)
        sold = ""
        deadline = time.monotonic() + 60
        while not sold:
            assert time.monotonic() < deadline, "no position to sell behind the fleet's back"
            found = _quiet_position(database_url)
            if found is None:
                time.sleep(0.05)
                continue
            reply = httpx.post(
                f"{rest_url}/__exchange/admin/sell",
                json={"account": env["EXCHANGE_ACCOUNT"], "symbol": found[0]},
                timeout=10,
            )
            if reply.status_code == 200:
                sold = found[0]
        # 2. shares of a symbol the fleet traded and closed earlier appear in the account
        wanted = eventually(lambda: _traded_and_flat(database_url, sold), timeout=60, every=0.1)
        reply = httpx.post(
            f"{rest_url}/__exchange/admin/transfer",
            json={"account": env["EXCHANGE_ACCOUNT"], "symbol": wanted, "qty": 5},
            timeout=10,
        )
        assert reply.status_code == 200, reply.text

        sold_drift = eventually(lambda: _drift(database_url, sold), timeout=20)
        wanted_drift = eventually(lambda: _drift(database_url, wanted), timeout=20)
        assert sold_drift[1] < sold_drift[2]  # the ledger holds shares the broker does not
        assert wanted_drift[1] - wanted_drift[2] == 5  # and the other way round
        assert sold_drift[3] in ports  # recorded by the one reconciler, in a run worker
        time.sleep(AFTER_S)  # the fleet trades on: nothing may buy either symbol
        metrics = {s: sum(_metric(p, s) for p in ports.values()) for s in (sold, wanted)}
        buys_elsewhere = sql(
            database_url,
            "SELECT count(*) FROM orders WHERE side = 'BUY' AND created_at > %s",
            sold_drift[0],
        )
    finally:
        for proc in [*procs.values(), exchange]:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    for symbol, drift in ((sold, sold_drift), (wanted, wanted_drift)):
        late_buys = sql(
            database_url,
            "SELECT client_order_id, status FROM orders WHERE symbol = %s AND side = 'BUY'"
            " AND created_at >= %s",
            symbol,
            drift[0],
        )
        assert late_buys == [], f"a BUY on drifted {symbol}"
    assert buys_elsewhere[0][0] > 0  # the fleet went on buying other symbols
    logs = "".join((tmp_path / f"{w}.log").read_text() for w in ports)
    for symbol in (sold, wanted):
        assert f"account drift {symbol} (new)" in logs
    # the notices on the fleet's stream, one per drift
    client = redis.Redis.from_url(redis_url)
    try:
        entries = client.xrange(f"{prefix}:events")
    finally:
        client.close()
    drifts = [f for _id, f in entries if f[b"type"] == b"account.drift"]
    # one alarm a symbol, by the one reconciler; announced again only when its figures changed
    # (the transferred symbol may have been bought again just before the shares came in, then
    # sold: broker 5 more than the ledger, then 5 against 0)
    new = [f[b"symbol"].decode() for f in drifts
           if f[b"symbol"] and json.loads(f[b"data"])["change"] == "new"]  # fmt: skip
    assert sorted(new) == sorted([sold, wanted])
    for symbol in (sold, wanted):
        announced = [f for f in drifts if f[b"symbol"] == symbol.encode()]
        assert metrics[symbol] == len(announced)
