"""The faults of bench/chaos.py: when they happen, whom they hit, and the garbage they plant.

Times are simulated minutes after the open of a 390-minute session, drawn from the run's seeded
generator. Victims are chosen at the moment of the fault from what the ledger and Redis say then.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from typing import Any

import psycopg
import redis

PG_STOP_S = 30.0  # wall seconds


@dataclass(order=True)
class Fault:
    minute: float  # simulated minutes after the open
    kind: str = field(compare=False)
    arg: Any = field(default=None, compare=False)


def plan_faults(rng: random.Random, speed: float, workers: int, ttl_s: float) -> list[Fault]:
    """The day's faults.

    * pg_stop (30 s wall) early, then redis_restart and pg_restart once it is over;
    * kill: `workers - 2` SIGKILLs, half restarted with the same id and half with a new one,
      after 0.5-3 lock TTLs (arg: ("same" | "new", wall seconds)); one more in the liquidation
      window, not restarted (arg: (None, 0));
    * stop: `workers - 2` SIGSTOPs of 1.5-3 lock TTLs (arg: wall seconds);
    * lock_garbage, fence_garbage, stream_garbage: twice each.
    """
    stop_min = PG_STOP_S * speed / 60
    pg_stop = Fault(rng.uniform(40, 90), "pg_stop")
    redis_at = pg_stop.minute + stop_min + rng.uniform(20, 40)
    pg_restart = Fault(redis_at + rng.uniform(20, 40), "pg_restart")
    if pg_restart.minute > 340:
        raise ValueError(f"speed {speed:g}: the 30 s Postgres stop leaves too little day after it")
    faults = [pg_stop, Fault(redis_at, "redis_restart"), pg_restart]
    n = max(2, workers - 2)
    modes = list(itertools.islice(itertools.cycle(["same", "new"]), n))
    rng.shuffle(modes)
    for mode in modes:
        faults.append(Fault(rng.uniform(15, 350), "kill", (mode, rng.uniform(0.5, 3) * ttl_s)))
    faults.append(Fault(rng.uniform(366, 374), "kill", (None, 0.0)))
    for _ in range(n):
        faults.append(Fault(rng.uniform(15, 350), "stop", rng.uniform(1.5, 3) * ttl_s))
    for kind in ("lock_garbage", "fence_garbage", "stream_garbage"):
        faults += [Fault(rng.uniform(30, 340), kind) for _ in range(2)]
    return sorted(faults)


def working_order_workers(libpq: str, side: str | None) -> list[str]:
    """Workers with an order working at the venue (of `side`, or any); [] if Postgres is away."""
    try:
        with psycopg.connect(libpq, connect_timeout=1) as conn:
            conn.execute("SET statement_timeout = 1000")
            rows = conn.execute(
                "SELECT DISTINCT worker_id FROM orders WHERE broker_order_id IS NOT NULL"
                " AND status IN ('SENT', 'PARTIALLY_FILLED', 'UNKNOWN')"
                " AND (%(side)s::text IS NULL OR side = %(side)s)",
                {"side": side},
            ).fetchall()
        return sorted(r[0] for r in rows)
    except psycopg.Error:
        return []


def lock_holders(r: redis.Redis, prefix: str) -> dict[str, str]:
    """symbol -> holder, from the lock keys that hold a lease value ({} if Redis is away)."""
    out: dict[str, str] = {}
    try:
        for key in r.scan_iter(match=f"{prefix}:lock:*", count=500):
            if r.type(key) in ("string", b"string"):
                value = _text(r.get(key))
                worker, _, fence = value.rpartition(":")
                if fence.isdigit():
                    out[_text(key).rsplit(":", 1)[1]] = worker
    except redis.RedisError:
        pass
    return out


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value or "")


def plant_lock_garbage(r: redis.Redis, prefix: str, rng: random.Random) -> str | None:
    """A held symbol's lock key becomes a list (the wrong type); None if nothing is held."""
    held = lock_holders(r, prefix)
    if not held:
        return None
    symbol = rng.choice(sorted(held))
    key = f"{prefix}:lock:{symbol}"
    with r.pipeline(transaction=True) as p:
        p.delete(key)
        p.rpush(key, "chaos", "garbage")
        p.execute()
    return f"{key} (held by {held[symbol]}) is now a list"


def plant_fence_garbage(r: redis.Redis, prefix: str, rng: random.Random) -> str | None:
    """A non-number at a fence key: of a held symbol if any, else of one traded today."""
    held = sorted(lock_holders(r, prefix))
    known = sorted(_text(k).rsplit(":", 1)[1] for k in r.scan_iter(match=f"{prefix}:fence:*"))
    if not (held or known):
        return None
    key = f"{prefix}:fence:{rng.choice(held or known)}"
    r.set(key, "not-a-number")
    return key


def plant_stream_garbage(r: redis.Redis, prefix: str, _rng: random.Random) -> str | None:
    """Junk entries in the notice stream: a garbage ts with no JSON data, an unknown type with
    no worker, fields that are no notice at all and are not UTF-8."""
    stream = f"{prefix}:events"
    junk: list[dict[str, str | bytes]] = [
        {"type": "lock.acquired", "worker_id": "ghost", "symbol": "005930", "ts": "garbage",
         "data": "{not json"},
        {"type": "no.such.type", "ts": "2026-11-24T09:00:00+09:00"},
        {"junk": b"\xff\xfe"},
    ]  # fmt: skip
    for entry in junk:
        r.xadd(stream, entry)  # type: ignore[arg-type]
    return f"{len(junk)} entries into {stream}"
