"""A KIS fleet day on the exchange: 2 gateways, N `run` workers (BROKER=kis), the active gateway
SIGKILLed once mid-day.

    python bench/kis_fleet.py [--domain real|mock] [--workers 20] [--speed 20] [--keep]

Starts its own Redis and Postgres, the exchange (`python -m worker exchange`, its per-app-key
rate limit on: 20/s real, 2/s mock, counted on arrival) on a simulated clock, two
`python -m worker gateway` processes and `--workers` `python -m worker run` processes with
BROKER=kis, every one a separate process on that clock (a rehearsal on an exchange follows
PAPER_SPEED), trading `KIS_UNIVERSE` (liquid names the exchange lists). The workers join the
session late in the afternoon (`--join`), the active gateway is SIGKILLed at `--kill`, the
standby takes over, the workers liquidate and exit at the close. Then it checks, and prints as
``name=value`` lines:

* invariants (exit 1 when one fails, the failures on stderr): every worker exited 0; flat at
  the close (no open position in the ledger, fills net to zero per symbol, no holding at the
  exchange); every order final in the ledger and none working at the exchange; per order the
  ledger's filled quantity and amount equal the exchange's, to the share and the won, and
  every exchange order is in the ledger; ``rate_refusals=0`` (EGW00201 in
  ``/__exchange/stats``); ``token_issues=1`` for the whole day; the standby took the lease.
* ``takeover_s``: SIGKILL to the standby holding the lease; ``takeover_serving_s``: to its
  first granted request (it first waits one budget window for the dead one's last requests).
* fill notices against polling: ``notice_to_ledger_p50_ms`` / ``_p99_ms`` (a notice routed to
  its worker's stream until that order's next fill row is in the ledger, wall ms),
  ``poll_interval_ms`` (ORDER_POLL_S in wall ms: polling alone finds a fill after half of it
  on average, a whole one at worst) and ``notice_lead_over_poll_ms`` (half the poll interval
  minus the p50: how much sooner the ledger had the fill than an average poll).
* informative: orders, fills, requests, day_wall_s, notices.

`run_day` is the same day for a caller that brings its own servers (the test suite runs a
smaller one).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import httpx  # noqa: E402
import psycopg  # noqa: E402
import redis as redis_sync  # noqa: E402
from _procs import Exchange, Proc, Rig, interrupts_as_exceptions, wait_for  # noqa: E402

from broker.kis.client import GatewayLease  # noqa: E402
from broker.kis.keys import KisKeys  # noqa: E402
from broker.kis.lanes import percentile  # noqa: E402
from market.calendar import default_calendar  # noqa: E402
from market.sim import SimulatedMarket  # noqa: E402
from market.types import Tier  # noqa: E402

ACCOUNT = "12345678-01"
HTS_ID = "fleet01"
FINAL = {"FILLED", "CANCELED", "REJECTED", "EXPIRED", "WITHDRAWN"}


@dataclass
class DayPlan:
    """One fleet day; times of day are the session's (KST), `speed` the clock's."""

    domain: str = "real"
    workers: int = 20
    speed: float = 20.0
    day: str = "2026-11-24"  # a Tuesday: opens 09:00, closes 15:30
    join: str = "14:45"  # the clock when the workers start
    kill: str = "14:55"  # when the active gateway is SIGKILLed
    symbols: int = 8  # KIS_UNIVERSE size
    seed: int = 7
    order_poll_s: float = 40.0  # clock s
    lead_s: float = 8.0  # wall seconds to start everything before `join`
    extra_env: dict[str, str] = field(default_factory=dict)


@dataclass
class DayResult:
    figures: dict[str, Any]
    failures: list[str]


def _at(plan: DayPlan, hhmm: str) -> float:
    """Minutes after the open of `plan.day` for ``HH:MM``."""
    session = default_calendar().session(date.fromisoformat(plan.day))
    assert session is not None, plan.day
    hh, mm = (int(x) for x in hhmm.split(":"))
    at = session.open.replace(hour=hh, minute=mm)
    return (at - session.open).total_seconds() / 60


def universe(plan: DayPlan, n_symbols: int = 300) -> list[str]:
    """Liquid names of the exchange's market (its seed and day), within the price band."""
    session = default_calendar().session(date.fromisoformat(plan.day))
    assert session is not None
    market = SimulatedMarket(plan.seed, session, n_symbols)
    liquid = [i for i in market.instruments if i.tier in (Tier.HIGH, Tier.MID)
              and Decimal(2_000) <= i.prev_close <= Decimal(500_000)]  # fmt: skip
    return [i.symbol for i in liquid[: plan.symbols]]


def _sql(database_url: str, query: str) -> list[tuple[Any, ...]]:
    url = database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url, autocommit=True) as conn:
        return list(conn.execute(query).fetchall())


def run_day(
    plan: DayPlan,
    *,
    root: Path,
    database_url: str,
    redis_url: str,
    prefix: str,
    on_close: Callable[[Callable[[], object]], None],
) -> DayResult:
    """Run the day on the given servers (the database migrated); every process's log under
    `root`; `on_close` registers each process's stop."""
    app_key = "PS" + secrets.token_hex(10)
    secret = secrets.token_urlsafe(40)
    names = universe(plan)
    join_min = _at(plan, plan.join)
    epoch = time.time() + plan.lead_s - join_min * 60 / plan.speed
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("PAPER_", "EXCHANGE_", "KIS_", "GATEWAY_", "DATABASE_",
                                 "REDIS_", "BROKER", "WORKER_ID"))}  # fmt: skip
    clock_env = {"PAPER_SPEED": str(plan.speed), "PAPER_EPOCH": str(epoch),
                 "PAPER_SEED": str(plan.seed), "PAPER_DAY": plan.day,
                 "LOG_LEVEL": "INFO"}  # fmt: skip
    exchange = Exchange(
        root,
        {
            **base,
            **clock_env,
            "EXCHANGE_APP_KEY": app_key,
            "EXCHANGE_APP_SECRET": secret,
            "EXCHANGE_ACCOUNT": ACCOUNT,
            "EXCHANGE_HTS_ID": HTS_ID,
            "EXCHANGE_CASH": "10000000000",
            "EXCHANGE_RATE_LIMIT": "1",
        },
        ["--domain", plan.domain],
    )
    on_close(exchange.stop)
    kis_env = {**base, **clock_env, "REDIS_URL": redis_url, "FLEET_PREFIX": prefix,
               "KIS_APP_KEY": app_key, "KIS_ACCOUNT": ACCOUNT, "KIS_DOMAIN": plan.domain,
               "KIS_BASE_URL": exchange.rest_url, "KIS_UNIVERSE": ",".join(names)}  # fmt: skip
    gateways: dict[str, Proc] = {}
    for name in ("gw-a", "gw-b"):
        env = {**kis_env, "KIS_APP_SECRET": secret, "KIS_WS_URL": exchange.ws_url,
               "KIS_HTS_ID": HTS_ID, "GATEWAY_PORT": "0", "WORKER_ID": name}  # fmt: skip
        gateways[name] = gw = Proc(name, [sys.executable, "-m", "worker", "gateway"], env,
                                   root / f"{name}.log")  # fmt: skip
        on_close(partial(gw.stop, 10))
    keys = KisKeys(prefix, plan.domain, app_key)
    r = redis_sync.Redis.from_url(redis_url)
    on_close(r.close)

    def lease() -> GatewayLease | None:
        return GatewayLease.decode(r.get(keys.gateway))

    first = wait_for(lease, 60, "an active gateway")
    assert first is not None
    poll = plan.order_poll_s
    worker_env = {**kis_env, "DATABASE_URL": database_url, "BROKER": "kis",
                  "LOCK_TTL_MS": "3000", "ORDER_POLL_S": str(poll),
                  "ORDER_TIMEOUT_S": str(max(60.0, 1.5 * poll)), "LISTING_LAG_S": "60",
                  "SCAN_INTERVAL_S": "30", "HOLD_INTERVAL_S": "10", "MAX_HOLD_MIN": "4",
                  "LIQUIDATION_LEAD_MIN": "5", "THIN_LIQUIDATION_LEAD_MIN": "5",
                  "RECONCILE_INTERVAL_S": "600", "MIN_SCORE": "0.2",
                  **plan.extra_env}  # fmt: skip
    workers = {}
    for n in range(1, plan.workers + 1):
        wid = f"w{n:02d}"
        env = {**worker_env, "WORKER_ID": wid}
        workers[wid] = proc = Proc(wid, [sys.executable, "-m", "worker", "run"], env,
                                   root / f"{wid}.log")  # fmt: skip
        on_close(partial(proc.stop, 10))

    # the active gateway dies at `kill` (clock), whatever it was doing
    kill_wall = epoch + _at(plan, plan.kill) * 60 / plan.speed
    while time.time() < kill_wall:
        time.sleep(0.05)
    victim_lease = lease()
    victim = victim_lease.id if victim_lease else first.id
    gateways[victim].signal(signal.SIGKILL)
    killed = time.monotonic()
    heir = next(name for name in gateways if name != victim)
    new = wait_for(lambda: (got := lease()) is not None and got.id == heir and got,
                   60, "the standby taking over")  # fmt: skip
    takeover_s = time.monotonic() - killed
    assert new
    served = _first_grant_after(new.url, killed, 60)
    takeover_serving_s = served - killed if served is not None else math.inf

    # the close: every worker exits on its own
    close_wall = epoch + _at(plan, "15:30") * 60 / plan.speed
    failures: list[str] = []
    for wid, proc in workers.items():
        try:
            proc.popen.wait(max(5.0, close_wall - time.time() + 60))
        except Exception:
            failures.append(f"{wid} still running after the close")
            continue
        if proc.returncode != 0:
            failures.append(f"{wid} exited {proc.returncode}: {proc.tail(5)}")
    day_wall_s = time.time() - (epoch + join_min * 60 / plan.speed)
    stats = exchange.stats()
    venue = httpx.get(f"{exchange.rest_url}/__exchange/orders", timeout=30).json()
    gw_stats = httpx.get(f"{new.url}/__gateway/stats", timeout=10).json()
    notices = _notices(r, keys, list(workers))
    figures, more = _check(database_url, stats, venue, notices, plan)
    failures += more
    figures.update({
        "takeover_s": round(takeover_s, 2),
        "takeover_serving_s": round(takeover_serving_s, 2),
        "gateway_rate_refusals_after_takeover": gw_stats["rate_refusals"],
        "requests": sum(sum(v.values()) for v in stats["requests"].values()),
        "day_wall_s": round(day_wall_s, 1),
        "workers": plan.workers,
        "speed": plan.speed,
        "domain": plan.domain,
    })  # fmt: skip
    if gateways[heir].returncode is not None:
        failures.append(f"the standby gateway exited {gateways[heir].returncode}")
    return DayResult(figures, failures)


def _first_grant_after(url: str, since: float, timeout_s: float) -> float | None:
    """The monotonic time the gateway at `url` granted its first slot after `since`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            rows = httpx.get(f"{url}/__gateway/grants", params={"since": str(since)},
                             timeout=5).json()  # fmt: skip
            if rows:
                return float(min(row["granted_at"] for row in rows))
        time.sleep(0.05)
    return None


def _notices(r: redis_sync.Redis, keys: KisKeys, workers: list[str]) -> list[tuple[float, str]]:
    """(routed at, wall seconds; broker order id) of every executed-fill notice routed."""
    out = []
    for wid in workers:
        entries: Any = r.xrange(keys.fills(wid))
        for entry_id, fields in entries:
            data = {k.decode(): v.decode() for k, v in fields.items()}
            if data.get("executed") == "1":
                out.append((int(entry_id.decode().split("-")[0]) / 1000, data["odno"]))
    return out


def _notice_latencies(
    notices: list[tuple[float, str]], fills: list[tuple[Any, ...]]
) -> list[float]:
    """Per routed notice, ms until that order's next fill row was in the ledger."""
    rows: dict[str, list[float]] = {}
    for odno, recorded in fills:
        rows.setdefault(str(odno), []).append(recorded.timestamp())
    lat = []
    for routed, odno in notices:
        after = [t for t in rows.get(odno, []) if t >= routed - 0.005]
        if after:
            lat.append((min(after) - routed) * 1000)
    return lat


def _check(
    database_url: str,
    stats: Mapping[str, Any],
    venue: list[dict[str, Any]],
    notices: list[tuple[float, str]],
    plan: DayPlan,
) -> tuple[dict[str, Any], list[str]]:
    failures = []
    account = stats["accounts"][ACCOUNT]
    orders = _sql(database_url, "SELECT broker_order_id, status, filled_qty, filled_amount"
                                " FROM orders")  # fmt: skip
    open_positions = _sql(database_url, "SELECT symbol, qty FROM positions"
                                        " WHERE status <> 'CLOSED'")  # fmt: skip
    net = _sql(database_url, "SELECT symbol FROM fills GROUP BY symbol HAVING"
                             " sum(CASE side WHEN 'BUY' THEN qty ELSE -qty END) <> 0")  # fmt: skip
    fills = _sql(database_url, "SELECT o.broker_order_id, f.recorded_at FROM fills f"
                               " JOIN orders o ON o.id = f.order_id")  # fmt: skip
    if open_positions or net:
        failures.append(f"not flat in the ledger: {open_positions or net}")
    if account["holdings"]:
        failures.append(f"holdings left at the exchange: {account['holdings']}")
    unfinished = [o for o in orders if o[1] not in FINAL]
    if unfinished:
        failures.append(f"{len(unfinished)} order(s) not final: {unfinished[:3]}")
    if account["working"]:
        failures.append(f"{account['working']} order(s) working at the exchange")
    by_odno = {str(v["odno"]): (int(v["filled_qty"]), Decimal(v["filled_amount"]))
               for v in venue if v["account"] == ACCOUNT}  # fmt: skip
    ledger = {str(o[0]): (int(o[2]), Decimal(o[3])) for o in orders if o[0] is not None}
    differ = [(k, ledger.get(k), v) for k, v in by_odno.items() if ledger.get(k) != v]
    if differ:
        failures.append(f"{len(differ)} order(s) differ from the exchange: {differ[:3]}")
    refusals = sum(sum(v.values()) for v in stats["rate_limited"].values())
    if refusals:
        failures.append(f"{refusals} request(s) refused for rate (EGW00201)")
    tokens = sum(stats["token_issues"].values())
    if tokens != 1:
        failures.append(f"{tokens} access tokens issued")
    if not by_odno:
        failures.append("no order reached the exchange")
    lat = _notice_latencies(notices, fills)
    poll_ms = plan.order_poll_s / plan.speed * 1000
    p50 = percentile(lat, 0.5)  # polling alone finds a fill half an interval late on average
    figures = {
        "rate_refusals": refusals,
        "token_issues": tokens,
        "orders": len(by_odno),
        "fills": len(fills),
        "filled_qty": account["filled_qty"],
        "notices": len(notices),
        "notice_to_ledger_p50_ms": round(p50, 1),
        "notice_to_ledger_p99_ms": round(percentile(lat, 0.99), 1),
        "poll_interval_ms": round(poll_ms, 1),
        "notice_lead_over_poll_ms": round(poll_ms / 2 - p50, 1) if lat else "n/a",
    }
    if notices and not lat:
        failures.append("no fill notice was followed by its fill in the ledger")
    return figures, failures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--domain", choices=("real", "mock"), default="real")
    p.add_argument("--workers", type=int, default=None, help="default 20 real, 4 mock")
    p.add_argument("--speed", type=float, default=None, help="clock speed (20 real, 6 mock)")
    p.add_argument("--join", default=None, help="clock time the workers start (HH:MM)")
    p.add_argument("--kill", default=None, help="clock time the active gateway is killed")
    p.add_argument("--symbols", type=int, default=None, help="KIS_UNIVERSE size")
    p.add_argument("--keep", action="store_true", help="keep the folder (logs)")
    args = p.parse_args(argv)
    mock = args.domain == "mock"
    plan = DayPlan(
        domain=args.domain,
        workers=args.workers or (4 if mock else 20),
        speed=args.speed or (6.0 if mock else 20.0),
        join=args.join or ("15:05" if mock else "14:45"),
        kill=args.kill or ("15:09" if mock else "14:55"),
        symbols=args.symbols or (3 if mock else 8),
        order_poll_s=24.0 if mock else 40.0,
    )
    interrupts_as_exceptions()
    with Rig("bench-kis-fleet", keep=args.keep) as rig:
        redis = rig.redis()
        pg = rig.postgres()
        argv = [sys.executable, "-m", "worker", "migrate"]
        env = {**os.environ, "DATABASE_URL": pg.url}
        migrate = Proc("migrate", argv, env, rig.root / "migrate.log")
        if migrate.popen.wait(120) != 0:
            print(f"migrate failed:\n{migrate.tail()}", file=sys.stderr)
            return 1
        result = run_day(plan, root=rig.root, database_url=pg.url, redis_url=redis.url,
                         prefix="fleet", on_close=rig.on_close)  # fmt: skip
    for name, value in result.figures.items():
        print(f"{name}={value}")
    for failure in result.failures:
        print(f"invariant failed: {failure}", file=sys.stderr)
    return 1 if result.failures else 0


if __name__ == "__main__":
    sys.exit(main())
