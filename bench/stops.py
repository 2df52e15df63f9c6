"""How fast a holder reacts to the trade that crosses its stop: on the exchange, via the gateway.

    python bench/stops.py [--symbols 10] [--rounds 3] [--hold-interval 10]

Runs, against the Redis at REDIS_URL (a fresh key prefix, removed at the end):

* the project's exchange (`python -m worker exchange`, real domain) on a simulated session that
  is in progress whatever the wall time (PAPER_DAY, PAPER_EPOCH and PAPER_SPEED=1.001: a
  simulated day runs faster than real time, and 0.1% faster is real time for this purpose);
* one KIS gateway (in this process, the same code as `python -m worker gateway`) with the
  real-time service: the app key's WebSocket session, held symbols' trades to Redis;
* holders, one per symbol (`--symbols`, the most liquid names), each holding one share bought
  at the start. A round: each holder sets a stop one tick under the price it sees and waits for
  it the way HOLD does. *tick*: `GatewayMarketData.wait_price` (the trade stream); *poll*: a
  quote every `--hold-interval` seconds, as HOLD does without a price watch. When the rule
  fires it submits a SELL (a marketable limit at the bid) through the gateway.

The reaction is from the exchange's first print through the stop to the SELL's submit. The
print's instant is exact: the exchange's market is `SimulatedMarket(PAPER_SEED, session,
PAPER_SYMBOLS)`, so the bench builds the same market and asks it (`first_touch`) when the price
first reached the stop, then maps that instant to wall time through the shared epoch. The figure
includes the exchange's own publishing cadence (its WebSocket frames go out every 100 ms, as
KIS pushes a trade once it printed), the gateway, Redis and the holder's wake-up; it leaves out
the ledger's intent row a worker writes before a submit (one INSERT, a few ms).

Prints ``name=value``: stop_reaction_p50_ms, stop_reaction_p99_ms (goal p99 <= 250),
poll_reaction_p50_ms, poll_reaction_p99_ms (the same with polling only), trials, tick_wakes.
Exit 1 when a round gets no trial or the tick p99 misses the goal.
Run it alone on the machine (`flock`): latency depends on the CPU being free.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import time
from collections.abc import Mapping
from dataclasses import replace
from datetime import date, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import redis.asyncio as aioredis

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from _procs import Exchange  # noqa: E402

from broker.kis import KisBroker, KisClient, KisConfig  # noqa: E402
from broker.kis.client import GatewayRoute  # noqa: E402
from broker.kis.fanout import decode_trade, realtime  # noqa: E402
from broker.kis.feed import GatewayMarketData  # noqa: E402
from broker.kis.gateway import Gateway, GatewayContext  # noqa: E402
from broker.kis.keys import KisKeys  # noqa: E402
from broker.kis.lanes import percentile  # noqa: E402
from broker.port import OrderRequest, OrderType, Side  # noqa: E402
from market.calendar import default_calendar  # noqa: E402
from market.clock import SimClock  # noqa: E402
from market.sim import SimulatedMarket  # noqa: E402
from market.ticks import step  # noqa: E402
from market.types import Tier  # noqa: E402

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DAY = date(2026, 3, 10)  # a plain session day (09:00-15:30 KST)
START_AT = timedelta(hours=1, minutes=30)  # the exchange's clock reads 10:30 when we start
SEED, N_SYMBOLS = 0, 300
SPEED = 1.001
ACCOUNT, HTS_ID = "12345678-01", "benchstops"
GOAL_P99_MS = 250.0
ROUND_TIMEOUT_S = 120.0


def _twin() -> tuple[Any, SimulatedMarket]:
    session = default_calendar().session(DAY)
    assert session is not None
    return session, SimulatedMarket(SEED, session, N_SYMBOLS)


def _liquid(market: SimulatedMarket, n: int) -> list[str]:
    ranked = sorted(market.instruments, key=lambda i: (-int(i.tier), i.symbol))
    return [i.symbol for i in ranked if i.tier >= Tier.MID][:n]


class Holders:
    """The holders' shared state: the symbols they hold (what the gateway streams)."""

    def __init__(self, symbols: list[str]) -> None:
        self.held = {s: f"holder-{k}" for k, s in enumerate(symbols)}

    def of(self, ctx: GatewayContext) -> Any:
        async def holders() -> Mapping[str, str]:
            return dict(self.held)

        return holders


async def _one(
    mode: str,
    symbol: str,
    *,
    twin: SimulatedMarket,
    clock: SimClock,
    md: GatewayMarketData,
    redis: aioredis.Redis,
    keys: KisKeys,
    broker: KisBroker,
    hold_interval_s: float,
    out: list[float],
) -> None:
    """One trial: a stop one tick under the price now; wait for it; SELL; record the
    reaction (submit wall time - the first print through the stop, in wall time)."""
    start = clock.now()
    price = twin.quote(symbol, start).price
    stop = step(price, -1)
    deadline = time.monotonic() + ROUND_TIMEOUT_S
    fired = False
    while time.monotonic() < deadline and not fired:
        if mode == "tick":
            fired = await md.wait_price(symbol, stop, None, min(hold_interval_s, 30.0))
        else:  # the freshest price a poll can see: the gateway's latest trade of the symbol
            raw = await redis.hget(keys.md_trades, symbol)
            fired = raw is not None and decode_trade(raw).trade.price <= stop
            if not fired:
                await anyio.sleep(hold_interval_s)
    if not fired:
        return
    submitted_wall = time.time()
    wake = clock.now()
    bid = twin.quote(symbol, wake).bid
    await broker.submit_order(OrderRequest(symbol, Side.SELL, 1, OrderType.LIMIT, bid))
    crossed = twin.first_touch(symbol, stop, None, start, wake + timedelta(seconds=1))
    if crossed is None:  # the frame showed a print the twin never made: a bench bug
        raise RuntimeError(f"{symbol}: woke at {wake} but the market never printed {stop}")
    crossed_wall = clock.epoch + (crossed - clock.session_open).total_seconds() / clock.speed
    out.append((submitted_wall - crossed_wall) * 1000)


async def _run(args: argparse.Namespace, redis_url: str, ex: Exchange, creds: dict[str, str],
               epoch: float) -> dict[str, list[float]]:  # fmt: skip
    session, twin = _twin()
    clock = SimClock(session.open, SPEED, epoch)
    redis = aioredis.Redis.from_url(redis_url)
    prefix = f"benchstops{secrets.token_hex(4)}"
    keys = KisKeys(prefix, "real", creds["EXCHANGE_APP_KEY"])
    config = KisConfig(creds["EXCHANGE_APP_KEY"], creds["EXCHANGE_APP_SECRET"], ACCOUNT,
                       domain="real", base_url=ex.rest_url, ws_url=ex.ws_url, hts_id=HTS_ID,
                       wait_s=30.0)  # fmt: skip
    symbols = _liquid(twin, args.symbols)
    holders = Holders(symbols)
    results: dict[str, list[float]] = {"tick": [], "poll": []}
    try:
        service = partial(realtime, holders_of=holders.of, held_poll_s=0.2)
        gw = Gateway(config, redis, prefix, clock=clock, gateway_id="bench-gw",
                     services=[service])  # fmt: skip
        async with anyio.create_task_group() as tg:
            await tg.start(gw.run)
            with anyio.fail_after(60):
                while not gw.active:  # noqa: ASYNC110 (the gateway's flag, no event to wait on)
                    await anyio.sleep(0.02)
            worker_config = replace(config, app_secret="")
            client = KisClient(worker_config, redis, prefix, clock=clock,
                               route=GatewayRoute(redis, keys, "holder"))  # fmt: skip
            broker = KisBroker(client, clock)
            md = GatewayMarketData(redis, keys, clock)
            for s in symbols:  # one share each, so every SELL is a real one
                await broker.submit_order(OrderRequest(s, Side.BUY, args.rounds + 1,
                                                       OrderType.MARKET))  # fmt: skip
            # the gateway streams a symbol once it subscribed: wait for each one's first trade
            with anyio.fail_after(60):
                while await redis.exists(*(keys.md_ticks(s) for s in symbols)) < len(symbols):  # noqa: ASYNC110
                    await anyio.sleep(0.1)
            for mode in ("tick", "poll"):
                for _ in range(args.rounds):
                    before = len(results[mode])
                    async with anyio.create_task_group() as trials:
                        for s in symbols:
                            trial = partial(_one, mode, s, twin=twin, clock=clock, md=md,
                                            redis=redis, keys=keys, broker=broker,
                                            hold_interval_s=args.hold_interval,
                                            out=results[mode])  # fmt: skip
                            trials.start_soon(trial)
                    if len(results[mode]) == before:
                        raise RuntimeError(f"{mode}: a round without a single trial")
            await client.aclose()
            tg.cancel_scope.cancel()
    finally:
        async for key in redis.scan_iter(match=f"{prefix}:*", count=500):
            await redis.delete(key)
        await redis.aclose()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", type=int, default=10, help="holders (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per mode (default 3)")
    parser.add_argument("--hold-interval", type=float, default=10.0,
                        help="HOLD_INTERVAL_S of the polling holders (default 10)")  # fmt: skip
    args = parser.parse_args()
    redis_url = os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL
    seed = secrets.token_hex(6)
    creds = {
        "EXCHANGE_APP_KEY": f"PS{seed}key",
        "EXCHANGE_APP_SECRET": f"{seed}secret",
        "EXCHANGE_ACCOUNT": ACCOUNT,
        "EXCHANGE_HTS_ID": HTS_ID,
    }
    # the session reads START_AT past the open once the exchange is up (a few seconds)
    epoch = time.time() - START_AT.total_seconds() / SPEED
    base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "VIRTUAL_ENV")}
    env = {**base, **creds, "PAPER_DAY": DAY.isoformat(), "PAPER_EPOCH": f"{epoch:.3f}",
           "PAPER_SPEED": str(SPEED), "PAPER_SEED": str(SEED),
           "PAPER_SYMBOLS": str(N_SYMBOLS)}  # fmt: skip
    root = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-stops-{seed}"
    root.mkdir(parents=True, exist_ok=True)
    ex = Exchange(root, env, ["--domain", "real"])
    try:
        results = anyio.run(_run, args, redis_url, ex, creds, epoch)
    except RuntimeError as exc:
        print(f"stops: {exc}", file=sys.stderr)
        return 1
    finally:
        ex.proc.stop(10)
    tick, poll = sorted(results["tick"]), sorted(results["poll"])
    print(f"trials={len(tick)}+{len(poll)}", flush=True)
    print(f"stop_reaction_p50_ms={statistics.median(tick):.0f}", flush=True)
    print(f"stop_reaction_p99_ms={percentile(tick, 0.99):.0f}", flush=True)
    print(f"poll_reaction_p50_ms={statistics.median(poll):.0f}", flush=True)
    print(f"poll_reaction_p99_ms={percentile(poll, 0.99):.0f}", flush=True)
    print(f"stop_reaction_goal_p99_ms={GOAL_P99_MS:.0f}", flush=True)
    return 0 if percentile(tick, 0.99) <= GOAL_P99_MS else 1


if __name__ == "__main__":
    sys.exit(main())
