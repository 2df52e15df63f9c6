"""The KIS request budget through one gateway: a scan burst of 20 workers on the exchange.

    python bench/kis.py [--domain real|mock] [--workers 20] [--symbols 3] [--keep]

Starts its own Redis and the exchange (`python -m worker exchange`, its per-app-key rate limit
on: 20/s on the real domain, 2/s on mock, counted on arrival over any one-second window) on free
loopback ports in a temporary folder, then one `python -m worker gateway` in front of it. In
this process, `--workers` BROKER=kis worker clients (each its own connection pool and worker
id, as separate processes would have) take a market snapshot of `--symbols` names at the same
moment: for each name inquire-price, the asking price and two pages of minute bars, four
requests a name, all through the gateway's relay (the universe is described once beforehand:
that is a once-a-day cost, not a scan's). While
they saturate the budget, a trader worker places a resting limit BUY every few slots. The
workers stand for other hosts: this process runs them at `--worker-nice` (10), so on a small
machine they do not starve the gateway and the exchange (whose arrival times play KIS's).

Prints one ``name=value`` line per figure:

* ``kis_budget_use``: requests granted per second during the burst over the limit, from the
  gateway's grant times: (granted - 1) / (last grant - first grant) / limit. Goal >= 0.95.
* ``kis_rate_refusals``: EGW00201 answers the exchange gave (its /__exchange/stats). Goal 0.
* ``order_wait_p99_ms``: p99 of an order's wait for a slot at the gateway while market data
  saturates the budget. Goal <= two slots: 100 ms real, 1,000 ms mock.
* ``token_issues``: access tokens the exchange issued. Goal 1.

Informative: requests, burst_s, orders, order_wait_max_ms, market_wait_p50_ms, limit, the
gateway's send-to-answer times (rtt_p50_ms, rtt_p99_ms: what a slot is held past one second
without a jitter bound), grant_to_send_p99_ms, and jitter_bound_ms: the gateway's J at the
end (`broker.kis.lanes.DEFAULT_JITTER_S`, doubled on each EGW00201). From the exchange's
arrival log (`/__exchange/arrivals`: the kernel's receive time of each request and when the
exchange's loop handled it): arrival_after_mark_p50_ms / _max_ms (a request's arrival after
the gateway's send mark, taken once its last byte is written: at most 0 on loopback, the
quantity J bounds), arrival_to_handling_p99_ms / _max_ms (how late the
exchange's loop got to a request: counting then instead of on arrival bunches requests the
gateway spaced), and max_sends_in_1s / max_arrivals_in_1s (the most in any one second at
either end; the limit is the goal). Exit 0
when every goal is met, else 1. A run takes about 20 s on the real domain (320 requests at
20/s) plus start-up; on mock use fewer workers (``--workers 4 --symbols 1``: ~10 s).
"""

from __future__ import annotations

import argparse
import bisect
import math
import os
import secrets
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import anyio  # noqa: E402
import httpx  # noqa: E402
import redis.asyncio as aioredis  # noqa: E402
from _procs import Proc, Rig, interrupts_as_exceptions, wait_for  # noqa: E402

from broker.kis import KisBroker, KisClient, KisConfig  # noqa: E402
from broker.kis.client import GatewayLease, GatewayRoute  # noqa: E402
from broker.kis.keys import KisKeys  # noqa: E402
from broker.kis.lanes import percentile  # noqa: E402
from broker.kis.market import KisMarketData  # noqa: E402
from broker.port import OrderRequest, OrderType, Side  # noqa: E402
from market.calendar import default_calendar  # noqa: E402
from market.clock import KST, RealClock  # noqa: E402
from market.sim import SimulatedMarket  # noqa: E402

PREFIX = "benchkis"
ACCOUNT = "12345678-01"
N_BARS = 40  # two minute-bar pages a name
GOAL_USE = 0.95
GOAL_WAIT_MS = {"real": 100.0, "mock": 1_000.0}


def _symbols(n: int) -> list[str]:
    """The first `n` names of the exchange's market (PAPER_SEED 0, the session it trades)."""
    calendar = default_calendar()
    today = datetime.now(KST).date()
    session = calendar.session(today) or calendar.next_session(today)
    return [i.symbol for i in SimulatedMarket(0, session, 300).instruments[:n]]


def _start_gateway(rig: Rig, env: dict[str, str]) -> tuple[Proc, str]:
    argv = [sys.executable, "-m", "worker", "gateway"]
    proc = Proc("gateway", argv, env, rig.root / "gateway.log")
    rig.on_close(lambda: proc.stop(10))

    def first_line() -> str:
        if not proc.alive():
            raise RuntimeError(f"gateway exited {proc.returncode}:\n{proc.tail()}")
        for line in proc.log.read_text(errors="replace").splitlines():
            if line.startswith("gateway relay="):
                return line
        return ""

    line = wait_for(first_line, 60, "gateway start")
    return proc, line.split()[1].removeprefix("relay=")


async def _burst(
    args: argparse.Namespace, redis_url: str, app_key: str, gateway_url: str
) -> dict[str, Any]:
    redis = aioredis.Redis.from_url(redis_url)
    keys = KisKeys(PREFIX, args.domain, app_key)
    clock = RealClock()
    symbols = _symbols(args.symbols)
    clients: list[KisClient] = []

    def client(name: str) -> KisClient:
        config = KisConfig(app_key, "", ACCOUNT, domain=args.domain, wait_s=120.0)
        c = KisClient(config, redis, PREFIX, clock=clock,
                      route=GatewayRoute(redis, keys, name))  # fmt: skip
        clients.append(c)
        return c

    try:
        with anyio.fail_after(30):
            while GatewayLease.decode(await redis.get(keys.gateway)) is None:  # noqa: ASYNC110
                await anyio.sleep(0.05)
        trader = KisBroker(client("trader"), clock, universe=symbols[:1])
        quote = await trader.quote(symbols[0], short_ma_bars=0)  # the token, and a price
        workers = [KisMarketData(client(f"w{n + 1:02d}"), clock, universe=symbols)
                   for n in range(args.workers)]  # fmt: skip
        # describing the universe (price, daily bars) is once a day, not part of a scan: one
        # worker does it and the others start from its answer
        await workers[0].instruments()
        for w in workers[1:]:
            w._described = dict(workers[0]._described)
            w._instruments = dict(workers[0]._instruments or {})
        orders_done = anyio.Event()
        started = time.monotonic()
        placed = 0

        async def trade(done: anyio.Event) -> None:
            nonlocal placed
            request = OrderRequest(symbols[0], Side.BUY, 1, OrderType.LIMIT, quote.lower_limit)
            while not done.is_set():
                await anyio.sleep(args.order_every_s)
                if done.is_set():
                    break
                await trader.submit_order(request)
                placed += 1
            orders_done.set()

        done = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(trade, done)
            async with anyio.create_task_group() as burst:
                for w in workers:
                    burst.start_soon(w.snapshot, N_BARS)
            done.set()
            await orders_done.wait()
        ended = time.monotonic()
        async with httpx.AsyncClient() as http:
            grants = (await http.get(f"{gateway_url}/__gateway/grants",
                                     params={"since": str(started)})).json()  # fmt: skip
            gw_stats = (await http.get(f"{gateway_url}/__gateway/stats")).json()
        return {"grants": grants, "stats": gw_stats, "burst_s": ended - started,
                "orders": placed, "started": started}  # fmt: skip
    finally:
        for c in clients:
            await c.aclose()
        await redis.aclose()


def _nearest(times: list[float], t: float) -> float:
    """The element of `times` (sorted) nearest to `t`; inf for none."""
    i = bisect.bisect_left(times, t)
    near = [times[j] for j in (i - 1, i) if 0 <= j < len(times)]
    return min(near, key=lambda x: abs(x - t)) if near else math.inf


def _max_in_window(times: list[float], window_s: float) -> int:
    """The most of `times` (sorted) inside any half-open window of `window_s`."""
    best = lo = 0
    for hi, t in enumerate(times):
        while times[lo] <= t - window_s:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def run(args: argparse.Namespace) -> int:
    with Rig("bench-kis", keep=args.keep) as rig:
        redis = rig.redis()
        app_key = "PS" + secrets.token_urlsafe(16)
        creds = {"EXCHANGE_APP_KEY": app_key, "EXCHANGE_APP_SECRET": secrets.token_urlsafe(40),
                 "EXCHANGE_ACCOUNT": ACCOUNT}  # fmt: skip
        base = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_"))}
        # the session opened ten simulated minutes ago: minute bars exist, orders are taken
        speed = 2  # a faster simulated clock makes the exchange's matching passes long
        env = {**base, **creds, "EXCHANGE_RATE_LIMIT": "1", "PAPER_SPEED": str(speed),
               "PAPER_EPOCH": str(time.time() - 600 / speed), "LOG_LEVEL": "WARNING"}  # fmt: skip
        exchange = rig.exchange(env, ["--domain", args.domain])
        gw_env = {**env, "REDIS_URL": redis.url, "FLEET_PREFIX": PREFIX,
                  "KIS_APP_KEY": app_key, "KIS_APP_SECRET": creds["EXCHANGE_APP_SECRET"],
                  "KIS_ACCOUNT": ACCOUNT, "KIS_DOMAIN": args.domain,
                  "KIS_BASE_URL": exchange.rest_url, "GATEWAY_PORT": "0",
                  "WORKER_ID": "bench-gateway"}  # fmt: skip
        _, gateway_url = _start_gateway(rig, gw_env)
        # the workers stand for other hosts: on this machine they yield the CPU to the
        # gateway and to the exchange, whose arrival times stand for KIS's front end
        os.nice(args.worker_nice)
        out = anyio.run(_burst, args, redis.url, app_key, gateway_url)
        stats = exchange.stats()
        arrivals = httpx.get(f"{exchange.rest_url}/__exchange/arrivals",
                             params={"since": str(out["started"])}, timeout=10).json()  # fmt: skip

    limit = out["stats"]["budget"]["limit"]
    grants = out["grants"]
    times = sorted(g["granted_at"] for g in grants)
    span = times[-1] - times[0] if len(times) > 1 else math.inf
    use = (len(times) - 1) / span / limit if span > 0 else 0.0
    order_waits = [(g["granted_at"] - g["enqueued_at"]) * 1000 for g in grants
                   if g["lane"] == "order"]  # fmt: skip
    market_waits = [(g["granted_at"] - g["enqueued_at"]) * 1000 for g in grants
                    if g["lane"] == "market"]  # fmt: skip
    answered = [g for g in grants if g.get("answered_at") is not None]
    rtts = [(g["answered_at"] - g["sent_at"]) * 1000 for g in answered]
    late_sends = [(g["sent_at"] - g["granted_at"]) * 1000 for g in answered]
    # the gateway's send marks (taken once the last byte is written) against the exchange's
    # arrivals (one machine, one monotonic clock): each mark's nearest arrival, how much later
    # than the mark it was (negative: before it, as it should be; J bounds it from above)
    sends = sorted(g["sent_at"] for g in answered)
    arrived = sorted(a for a, _handled in arrivals)
    transit = [_nearest(arrived, s) - s for s in sends]
    transit_ms = [t * 1000 for t in transit if math.isfinite(t)]
    handling_lag = [(h - a) * 1000 for a, h in arrivals]
    refusals = sum(sum(v.values()) for v in stats["rate_limited"].values())
    tokens = sum(stats["token_issues"].values())
    wait_p99 = percentile(order_waits, 0.99)
    figures = {
        "kis_budget_use": round(use, 3),
        "kis_rate_refusals": refusals,
        "order_wait_p99_ms": round(wait_p99, 1),
        "token_issues": tokens,
        "limit": limit,
        "requests": len(times),
        "burst_s": round(out["burst_s"], 1),
        "orders": len(order_waits),
        "order_wait_max_ms": round(max(order_waits, default=0.0), 1),
        "market_wait_p50_ms": round(percentile(market_waits, 0.5), 1),
        "gateway_rate_refusals": out["stats"]["rate_refusals"],
        "jitter_bound_ms": out["stats"]["budget"]["jitter_ms"],
        "rtt_p50_ms": round(percentile(rtts, 0.5), 1),
        "rtt_p99_ms": round(percentile(rtts, 0.99), 1),
        "grant_to_send_p99_ms": round(percentile(late_sends, 0.99), 1),
        "arrival_after_mark_p50_ms": round(percentile(transit_ms, 0.5), 2),
        "arrival_after_mark_max_ms": round(max(transit_ms, default=0.0), 2),
        "arrival_to_handling_p99_ms": round(percentile(handling_lag, 0.99), 1),
        "arrival_to_handling_max_ms": round(max(handling_lag, default=0.0), 1),
        "max_sends_in_1s": _max_in_window(sends, 1.0),
        "max_arrivals_in_1s": _max_in_window(arrived, 1.0),
    }
    for name, value in figures.items():
        print(f"{name}={value}")
    failed = [
        name
        for name, bad in (
            ("kis_budget_use", use < GOAL_USE),
            ("kis_rate_refusals", refusals != 0),
            ("order_wait_p99_ms", not order_waits or wait_p99 > GOAL_WAIT_MS[args.domain]),
            ("token_issues", tokens != 1),
        )
        if bad
    ]
    if failed:
        print(f"goals missed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--domain", choices=("real", "mock"), default="real")
    p.add_argument("--workers", type=int, default=20)
    p.add_argument("--symbols", type=int, default=4, help="names in each worker's snapshot")
    p.add_argument("--order-every-s", type=float, default=None,
                   help="seconds between the trader's orders (default: 5 slots)")  # fmt: skip
    p.add_argument("--worker-nice", type=int, default=10,
                   help="niceness of the worker clients during the burst")  # fmt: skip
    p.add_argument("--keep", action="store_true", help="keep the folder (logs)")
    args = p.parse_args(argv)
    if args.order_every_s is None:
        args.order_every_s = 5 / (20 if args.domain == "real" else 2)
    interrupts_as_exceptions()
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
