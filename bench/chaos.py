"""A fleet of `run` processes trading one simulated day on the exchange, under injected faults.

    python bench/chaos.py [--speed N] [--workers 8] [--seed S] [--keep]
                          [--ambiguous-rate R] [--venue-listing-lag-s S]

At the default --speed 100 a run takes about 4.5 minutes of wall time (the session is 234 s of
it, the Postgres stop 30 s of that) and keeps two cores busy.

Starts its own Redis, Postgres (migrated) and exchange (`python -m worker exchange`, rate limit
off) on free loopback ports in a temporary folder, never the machine's shared servers; then
`--workers` `python -m worker run` processes (BROKER=paper, PAPER_VENUE=the exchange, one
PAPER_EPOCH/SEED/SPEED/DAY, a short LOCK_TTL_MS and LISTING_LAG_S) through a whole session.
While the day runs it injects, at times drawn from `--seed` (victims are picked from the ledger
and Redis at that moment, preferring workers with a working SELL, then any working order, then
a held lock):

* SIGKILLs of workers, each restarted after a little while with the same or a new worker id
  (both happen), and one in the liquidation window that nobody restarts;
* SIGSTOPs longer than the lock TTL, then SIGCONT;
* garbage: a wrong-type value at held lock keys, a non-number at fence keys, junk entries in the
  events stream;
* one Redis restart (same port, every key lost), one `pg_ctl restart`, one 30 s Postgres stop.

After the close (every worker exits, or is stopped after a grace) it prints one ``name=value``
line per figure. Checked (each must be 0): overlaps, double_orders, not_flat, open_orders,
pnl_mismatch_won, locks_left (Redis lock keys + stock_locks rows), workers_crashed (an exit
code other than 0 and the injected SIGKILL, or still running a minute after the close),
fills_mismatch (per order: ledger vs its fill rows vs the exchange, read through the KIS
adapter; exchange orders the ledger does not know), summary_missing; the ledger figures are
defined in bench/_figures.py. Informative: trades, orders, fills, kills, restarts, stops,
garbage, exchange requests and ambiguous replies, log errors, wall_s. Exit 0 when every checked
figure is 0, else 1; the violations are listed on stderr. Everything started is stopped and the
folder removed (kept with --keep, e.g. to read the workers' logs), also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import os
import random
import secrets
import signal
import string
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from functools import partial
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import _figures as fig  # noqa: E402
import anyio  # noqa: E402
import psycopg  # noqa: E402
import redis  # noqa: E402
from _faults import (  # noqa: E402
    PG_STOP_S,
    Fault,
    lock_holders,
    plan_faults,
    plant_fence_garbage,
    plant_lock_garbage,
    plant_stream_garbage,
    working_order_workers,
)
from _procs import Proc, Rig, interrupts_as_exceptions  # noqa: E402

DEFAULT_SPEED = 100.0
DAY = date(2026, 11, 24)
PREFIX = "fleet"
LEAD_S = 20.0  # wall seconds from starting the workers to the simulated open
CLOSE_GRACE_S = 60.0  # wall seconds after the close before stragglers are stopped

CHECKED = ("overlaps", "double_orders", "not_flat", "open_orders", "pnl_mismatch_won",
           "locks_left", "workers_crashed", "fills_mismatch", "summary_missing")  # fmt: skip


COUNTED = ("kills", "restarts_same", "restarts_new", "stops", "lock_garbage", "fence_garbage",
           "stream_garbage", "redis_restarts", "pg_restarts", "pg_stop_s")  # fmt: skip


@dataclass(frozen=True)
class Options:
    speed: float
    workers: int
    seed: int
    keep: bool
    symbols: int
    day: date
    lock_ttl_ms: int
    listing_lag_s: float
    domain: str
    venue_listing_lag_s: float
    ambiguous_rate: float


@dataclass
class Run:
    """One incarnation of a worker process."""

    worker_id: str
    proc: Proc
    killed: bool = False
    exit_code: int | None = None
    hung: bool = False


class Chaos:
    def __init__(self, rig: Rig, o: Options) -> None:
        self.rig = rig
        self.o = o
        self.rng = random.Random(o.seed)
        self.runs: list[Run] = []
        self.count: dict[str, int] = {}
        self.queue: list[tuple[float, int, Callable[[], None]]] = []
        self.seq = itertools.count()
        self.ids = itertools.count(o.workers + 1)
        (rig.root / "logs").mkdir()

    # ----- setup ------------------------------------------------------------------------

    def start(self) -> None:
        from market.calendar import default_calendar

        session = default_calendar().session(self.o.day)
        if session is None:
            raise SystemExit(f"{self.o.day} is not a KRX session day")
        self.session = session
        self.redis = self.rig.redis()
        self.pg = self.rig.postgres()
        env = {**os.environ, "DATABASE_URL": self.pg.url}
        out = Proc("migrate", [sys.executable, "-m", "worker", "migrate"], env,
                   self.rig.root / "migrate.log")  # fmt: skip
        if out.popen.wait(120) != 0:
            raise RuntimeError(f"migrate failed:\n{out.tail()}")
        self.epoch = time.time() + LEAD_S
        self.env = self._env()
        self.exchange = self.rig.exchange(self.env, ("--domain", self.o.domain))
        self.env["PAPER_VENUE"] = self.exchange.rest_url
        self.r = redis.Redis.from_url(self.redis.url, decode_responses=True, socket_timeout=2)
        self.rig.on_close(self.r.close)
        self.rig.on_close(self._stop_workers)
        for n in range(1, self.o.workers + 1):
            self._spawn(f"w{n}")

    def _env(self) -> dict[str, str]:
        alnum = string.ascii_letters + string.digits
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PAPER_", "EXCHANGE_"))}
        env.update(
            DATABASE_URL=self.pg.url,
            REDIS_URL=self.redis.url,
            FLEET_PREFIX=PREFIX,
            BROKER="paper",
            KIS_DOMAIN=self.o.domain,  # the venue's domain: its tr_ids and page sizes
            PAPER_SPEED=f"{self.o.speed:g}",
            PAPER_EPOCH=f"{self.epoch:.3f}",
            PAPER_SEED=str(self.o.seed),
            PAPER_DAY=self.o.day.isoformat(),
            PAPER_SYMBOLS=str(self.o.symbols),
            LOCK_TTL_MS=str(self.o.lock_ttl_ms),
            LISTING_LAG_S=f"{self.o.listing_lag_s:g}",
            LOG_LEVEL="INFO",
            # a worker (re)started during the 30 s Postgres stop waits for it instead of exiting
            CONNECT_ATTEMPTS="12",
            EXCHANGE_APP_KEY="PS" + "".join(secrets.choice(alnum) for _ in range(34)),
            EXCHANGE_APP_SECRET="".join(secrets.choice(alnum) for _ in range(180)),
            EXCHANGE_ACCOUNT="50123456-01",
            EXCHANGE_HTS_ID="chaos",
            EXCHANGE_CASH="100000000000",
            EXCHANGE_RATE_LIMIT="0",
            EXCHANGE_LISTING_LAG_S=f"{self.o.venue_listing_lag_s:g}",
            EXCHANGE_AMBIGUOUS_RATE=f"{self.o.ambiguous_rate:g}",
        )
        return env

    def _spawn(self, worker_id: str) -> None:
        n = sum(r.worker_id == worker_id for r in self.runs)
        log = self.rig.root / "logs" / f"{worker_id}.{n}.log"
        argv = [sys.executable, "-m", "worker", "run"]
        self.runs.append(Run(worker_id, Proc(worker_id, argv, {**self.env, "WORKER_ID": worker_id},
                                             log)))  # fmt: skip

    # ----- the day ----------------------------------------------------------------------

    def wall(self, minute: float) -> float:
        """time.monotonic() at `minute` simulated minutes after the open."""
        return time.monotonic() + (self.epoch + minute * 60 / self.o.speed - time.time())

    def at(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self.queue, (when, next(self.seq), action))

    def day(self) -> None:
        for f in plan_faults(self.rng, self.o.speed, self.o.workers, self.o.lock_ttl_ms / 1000):
            self.at(self.wall(f.minute), partial(self.inject, f))
        close = self.wall((self.session.close - self.session.open).total_seconds() / 60)
        deadline = close + CLOSE_GRACE_S
        while time.monotonic() < deadline:
            while self.queue and self.queue[0][0] <= time.monotonic():
                heapq.heappop(self.queue)[2]()
            for run in self.runs:
                if run.exit_code is None and run.proc.returncode is not None:
                    run.exit_code = run.proc.returncode
            if not self.queue and all(r.exit_code is not None for r in self.runs):
                break
            time.sleep(0.05)
        for run in self.runs:
            if run.proc.alive():
                run.hung = True
                print(f"{run.worker_id} still running {CLOSE_GRACE_S:.0f}s after the close: "
                      "stopping it", file=sys.stderr)  # fmt: skip
        self._stop_workers()

    def _stop_workers(self) -> None:
        for run in self.runs:
            if run.proc.alive():
                run.proc.signal(signal.SIGCONT)
                run.proc.popen.terminate()
        for run in self.runs:
            code = run.proc.stop(10)
            if run.exit_code is None:
                run.exit_code = code

    def bump(self, name: str, by: int = 1) -> None:
        self.count[name] = self.count.get(name, 0) + by

    def inject(self, f: Fault) -> None:
        now = self.session.open + timedelta(seconds=(time.time() - self.epoch) * self.o.speed)
        hhmm = f"{now:%H:%M}"
        if f.kind.endswith("_garbage"):
            what = self._garbage(f.kind.removesuffix("_garbage"))
        else:
            what = getattr(self, f"_{f.kind}")(f.arg)
        print(f"[{hhmm}] {f.kind}: {what}", file=sys.stderr, flush=True)

    def _live(self) -> list[Run]:
        return [r for r in self.runs if r.proc.alive() and not r.proc.stopped and not r.killed]

    def _victim(self) -> tuple[Run, str] | None:
        """A live worker and why it was picked: preferably one with a working SELL, then a
        working order, then a lock; ties broken by the seeded generator."""
        live = {r.worker_id: r for r in self._live()}
        if not live:
            return None
        working = partial(working_order_workers, self.pg.libpq)
        holders = lock_holders(self.r, PREFIX).values()
        for why, ids in (("a working SELL", working("SELL")), ("a working order", working(None)),
                         ("a lock", holders)):  # fmt: skip
            found = sorted(set(ids) & set(live))
            if found:
                return live[self.rng.choice(found)], why
        return live[self.rng.choice(sorted(live))], "nothing"

    def _kill(self, arg: tuple[str | None, float]) -> str:
        mode, restart_after_s = arg
        picked = self._victim()
        if picked is None:
            return "no live worker"
        run, why = picked
        run.killed = True
        run.proc.signal(signal.SIGKILL)
        run.proc.popen.wait()
        self.bump("kills")
        if mode is None:
            return f"{run.worker_id} holding {why} (not restarted)"
        new_id = run.worker_id if mode == "same" else f"w{next(self.ids)}"
        self.bump(f"restarts_{mode}")
        self.at(time.monotonic() + restart_after_s, lambda: self._spawn(new_id))
        return f"{run.worker_id} holding {why}, restarted as {new_id} in {restart_after_s:.1f}s"

    def _stop(self, seconds: float) -> str:
        holders = set(lock_holders(self.r, PREFIX).values())
        live = self._live()
        pick = [r for r in live if r.worker_id in holders] or live
        if not pick:
            return "no live worker"
        run = self.rng.choice(sorted(pick, key=lambda r: r.worker_id))
        run.proc.signal(signal.SIGSTOP)
        self.bump("stops")
        self.at(time.monotonic() + seconds, lambda: run.proc.signal(signal.SIGCONT))
        return f"{run.worker_id} for {seconds:.1f}s"

    def _garbage(self, kind: str) -> str:
        plant = {"lock": plant_lock_garbage, "fence": plant_fence_garbage,
                 "stream": plant_stream_garbage}[kind]  # fmt: skip
        what = plant(self.r, PREFIX, self.rng)
        if what:
            self.bump(f"{kind}_garbage")
        return what or "nothing to spoil yet"

    def _redis_restart(self, _arg: object) -> str:
        away = self.redis.restart()
        self.bump("redis_restarts")
        return f"away {away:.2f}s"

    def _pg_restart(self, _arg: object) -> str:
        took = self.pg.restart()
        self.bump("pg_restarts")
        return f"took {took:.2f}s"

    def _pg_stop(self, _arg: object) -> str:
        self.pg.stop("fast")
        stopped = time.monotonic()

        def start() -> None:
            self.pg.start()
            self.count["pg_stop_s"] = round(time.monotonic() - stopped)
            print(f"pg_start after {time.monotonic() - stopped:.1f}s", file=sys.stderr)

        self.at(stopped + PG_STOP_S, start)
        return f"for {PG_STOP_S:.0f}s"

    # ----- figures ----------------------------------------------------------------------

    def figures(self, wall_s: float) -> tuple[dict[str, Any], list[str]]:
        from ledger.orders import TERMINAL
        from market.clock import SimClock
        from market.orders import canonical_broker_order_id

        if not self.pg.running():
            self.pg.start()
        terminal = {s.value for s in TERMINAL} | {"WITHDRAWN"}
        sim = fig.sim_clock(self.session.open, self.epoch, self.o.speed)
        with psycopg.connect(self.pg.libpq) as conn:
            day = fig.load_day(conn, self.o.day, terminal, sim)
        stats = self.exchange.stats()
        account = stats["accounts"][self.env["EXCHANGE_ACCOUNT"]]
        ids = sorted({o.broker_order_id for o in day.orders if o.broker_order_id})
        clock = SimClock(self.session.open, self.o.speed, self.epoch)
        venue = anyio.run(self.exchange.order_figures, ids, self.redis.url, PREFIX, clock)
        # exchange orders the ledger has no broker id for (every ledger id was looked up)
        unknown = max(0, int(account["orders"]) - len(venue))
        canon: Callable[[str], str] = lambda s: str(canonical_broker_order_id(s))  # noqa: E731
        mismatches = fig.fill_mismatches(day, venue, canon)
        lock_keys = sum(1 for _ in self.r.scan_iter(match=f"{PREFIX}:lock:*"))
        crashed = [r for r in self.runs if r.hung or (r.exit_code != 0 and not r.killed)]
        out: dict[str, Any] = {
            "overlaps": fig.overlaps(day),
            "double_orders": len(fig.double_order_pairs(day)),
            "not_flat": len(fig.not_flat(day, account["holdings"])),
            "open_orders": len(fig.open_orders(day)),
            "pnl_mismatch_won": fig.pnl_mismatch(day),
            "locks_left": lock_keys + day.stock_locks,
            "workers_crashed": len(crashed),
            "fills_mismatch": len(mismatches) + unknown,
            "summary_missing": int(day.summary_pnl is None),
            "trades": day.trades,
            "orders": len(day.orders),
            "fills": len(day.fills),
            "pnl_won": day.summary_pnl if day.summary_pnl is not None else day.trades_pnl,
            "venue_orders": account["orders"],
            "venue_working": account["working"],
            "venue_held_symbols": len(account["holdings"]),
            "venue_requests": sum(sum(t.values()) for t in stats["requests"].values()),
            "venue_ambiguous_replies": stats["ambiguous_replies"],
            **{k: self.count.get(k, 0) for k in COUNTED},
            "workers_hung": sum(r.hung for r in self.runs),
            **log_counts(self.rig.root / "logs"),
            "wall_s": round(wall_s, 1),
        }
        details = fig.describe(day, venue, canon)
        if unknown:
            details.append(f"{unknown} exchange order(s) unknown to the ledger")
        details += [f"held at the exchange: {s} {q}" for s, q in account["holdings"].items()]
        for r in crashed:
            details.append(f"worker {r.worker_id} exit {r.exit_code} (log {r.proc.log.name}):"
                           f"\n{r.proc.tail(8)}")  # fmt: skip
        return out, details


def log_counts(folder: Path) -> dict[str, int]:
    errors = tracebacks = 0
    for log in folder.glob("*.log"):
        for line in log.read_text(errors="replace").splitlines():
            errors += " ERROR " in line or '"level": "ERROR"' in line or "| ERROR" in line
            tracebacks += line.startswith("Traceback")
    return {"log_errors": errors, "log_tracebacks": tracebacks}


def emit(name: str, value: object) -> None:
    print(f"{name}={value}", flush=True)


def parse(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--speed", type=float, default=DEFAULT_SPEED, help="PAPER_SPEED")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--seed", type=int, default=None, help="faults and market (default: random)")
    p.add_argument("--keep", action="store_true", help="keep the folder (logs, data)")
    p.add_argument("--symbols", type=int, default=300, help="PAPER_SYMBOLS")
    p.add_argument("--day", type=date.fromisoformat, default=DAY, help="PAPER_DAY")
    p.add_argument("--lock-ttl-ms", type=int, default=2000)
    p.add_argument("--listing-lag-s", type=float, default=60.0, help="LISTING_LAG_S (clock s)")
    p.add_argument("--domain", choices=("real", "mock"), default="mock", help="exchange's")
    p.add_argument("--venue-listing-lag-s", type=float, default=0.0,
                   help="EXCHANGE_LISTING_LAG_S (clock s)")  # fmt: skip
    p.add_argument("--ambiguous-rate", type=float, default=0.0, help="EXCHANGE_AMBIGUOUS_RATE")
    a = p.parse_args(argv)
    if not 1 <= a.speed <= 300 or a.workers < 2:
        p.error("--speed must be in [1, 300] and --workers >= 2")
    seed = a.seed if a.seed is not None else random.randrange(1_000_000)
    return Options(a.speed, a.workers, seed, a.keep, a.symbols, a.day, a.lock_ttl_ms,
                   a.listing_lag_s, a.domain, a.venue_listing_lag_s, a.ambiguous_rate)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    o = parse(argv)
    interrupts_as_exceptions()
    started = time.monotonic()
    emit("seed", o.seed)
    emit("speed", f"{o.speed:g}")
    emit("workers", o.workers)
    with Rig("tf-chaos", keep=o.keep) as rig:
        chaos = Chaos(rig, o)
        try:
            chaos.start()
            chaos.day()
            figures, details = chaos.figures(time.monotonic() - started)
        except KeyboardInterrupt:
            print("interrupted: stopping everything", file=sys.stderr)
            return 130
    for line in details[:40]:
        print(line, file=sys.stderr)
    if len(details) > 40:
        print(f"... {len(details) - 40} more", file=sys.stderr)
    for name, value in figures.items():
        emit(name, value)
    failed = [n for n in CHECKED if figures[n] != 0]
    emit("failed", ",".join(failed) or "none")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
