"""How much memory and start-up time one `python -m worker run` process costs.

    python bench/footprint.py [--symbols 300] [--keep-logs] [--no-kis] [--kis-real-time]

Starts real worker processes against the configured servers (DATABASE_URL and REDIS_URL,
default the local PostgreSQL and Redis), each on a fresh database at migration head and a fleet
prefix of its own, both removed at the end:

* the paper worker: `BROKER=paper`, `PAPER_SYMBOLS` symbols, a simulated session (PAPER_DAY, a
  fixed session day) that opens the moment the process starts (`PAPER_EPOCH`), so it scans at
  once. Timed from the process start to its first finished SCAN tick (the
  `scan_duration_seconds` histogram on its `/metrics`, polled every 10 ms); its RSS is the
  largest seen from start until one second after that scan.
* the KIS worker (`kis_footprint`): `BROKER=kis` on the real domain against the project's
  exchange on loopback (`python -m worker exchange`), with its app key, account and URLs. The
  exchange, the gateway and the worker share PAPER_DAY's session on a x10 clock that opens as
  the exchange starts (a rehearsal on an exchange, `Settings.kis_on_exchange`), so it scans at
  any hour (measured after its first scan, like the paper worker). With `--kis-real-time` it
  trades today's session in real time, as against KIS itself, and what it reaches depends on
  the hour: in a session it scans; before the open it has fetched its universe and registered
  and waits (measured then, after one second); after the close it has no session and exits
  (its peak until then is printed: a lower bound); in the closing auction it scans nothing.
  `kis_worker_phase` says which: scanned, waiting or closed (or timeout: it got none of these
  within a minute; its RSS so far is printed and the bench exits 1). When the CLI has a
  `gateway` command, the gateway for the app key is started first (BROKER=kis workers reach
  KIS through it).

The workers get the bench's PATH, HOME, locale and virtualenv, and any glibc allocator knob
set for it (`MALLOC_ARENA_MAX`, `MALLOC_MMAP_THRESHOLD_`, ...), nothing else of its environment.

Prints ``name=value`` lines: worker_rss_mb, first_scan_s, kis_worker_rss_mb (the figures with
goals: <= 80, <= 1.5 and <= 60) and informative ones (time to the SCAN state, import-only RSS
of `worker.app` in a bare interpreter, the KIS phase, and each worker's USS: its private memory,
what one more worker adds on a node where the image's files are already in the page cache).
Exit 1 if a worker fails to get there.
Run it alone on the machine (`flock`): the times depend on the CPU being free.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._procs import Exchange, Proc, free_port, fresh_database  # noqa: E402

DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
PAPER_DAY = "2026-03-10"  # a plain session day (09:00-15:30 KST)
SETTLE_S = 1.0  # RSS is watched this long after the point measured
START_TIMEOUT_S = 60.0
_SCANS = re.compile(r"^\w*scan_duration_seconds_count(?:\{[^}]*\})?\s+([0-9.e+]+)", re.M)
_MB = 1024 * 1024


# ----- servers: a fresh database and prefix per worker ------------------------------------------


@contextlib.contextmanager
def fresh_prefix(redis_url: str) -> Iterator[str]:
    """A fleet prefix nobody else uses; its keys are deleted afterwards."""
    import redis

    prefix = f"footprint-{secrets.token_hex(4)}"
    try:
        yield prefix
    finally:
        client = redis.Redis.from_url(redis_url)
        try:
            keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
            if keys:
                client.delete(*keys)
        finally:
            client.close()


# ----- one worker process -----------------------------------------------------------------------


@dataclass
class Footprint:
    rss_mb: float  # the largest RSS seen up to SETTLE_S after `reached_s`
    uss_mb: float  # its private memory (USS) at the end of SETTLE_S: what a second copy adds
    reached_s: float  # process start -> the point measured (first scan done, or waiting)
    scan_state_s: float | None  # process start -> the "-> SCAN" transition in its log
    phase: str  # "scanned", "waiting" (for the open) or "sleeping" (until the next session)


class WorkerProcess:
    """`python -m worker run` with `env`; its RSS watched while the caller waits on it."""

    def __init__(self, env: Mapping[str, str], log: Path) -> None:
        self.health_port = int(env["HEALTH_PORT"])
        self.proc = Proc("worker", [sys.executable, "-m", "worker", "run"], env, log)
        self.ps = psutil.Process(self.proc.pid)
        self.peak = 0
        self.uss = 0
        self.scan_state_s: float | None = None  # start -> the first "-> SCAN" in its log

    def sample(self) -> None:
        with contextlib.suppress(psutil.Error):
            self.peak = max(self.peak, self.ps.memory_info().rss)

    def elapsed(self) -> float:
        return time.monotonic() - self.proc.started

    def check_alive(self) -> None:
        if not self.proc.alive():
            raise RuntimeError(f"worker exited {self.proc.returncode}:\n{self.proc.tail(30)}")

    def scans(self) -> float:
        """Finished SCAN ticks, from its /metrics (0 while the server is not up yet)."""
        url = f"http://127.0.0.1:{self.health_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                text = reply.read().decode()
        except (urllib.error.URLError, OSError):
            return 0.0
        return sum(float(m) for m in _SCANS.findall(text))

    def log_has(self, *needles: str) -> bool:
        text = self.proc.log.read_text(errors="replace")
        return all(n in text for n in needles)

    def wait(self, probe: Callable[[], bool], what: str, every: float = 0.01) -> float:
        """Sample RSS until `probe()` is true; seconds since the process started."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            self.sample()
            if probe():
                return self.elapsed()
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not within {START_TIMEOUT_S:.0f}s\n{self.proc.tail()}")
            time.sleep(every)

    def settle(self) -> None:
        until = time.monotonic() + SETTLE_S
        while time.monotonic() < until:
            self.sample()
            time.sleep(0.02)
        self.check_alive()
        with contextlib.suppress(psutil.Error):
            self.uss = self.ps.memory_full_info().uss

    def watch_scan_state(self) -> bool:
        """True once its log shows the SCAN state (the time it was first seen is kept)."""
        if self.scan_state_s is None and self.log_has("-> SCAN"):
            self.scan_state_s = self.elapsed()
        return self.scan_state_s is not None

    def stop(self) -> None:
        self.proc.stop(15)


def base_env(database_url: str, redis_url: str, prefix: str) -> dict[str, str]:
    """The environment of a worker: the bench's PATH etc., none of its tradefleet settings."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV", "PYTHONPATH", "TZ")
    # glibc's allocator knobs pass through (MALLOC_ARENA_MAX, MALLOC_MMAP_THRESHOLD_, ...)
    env = {k: v for k, v in os.environ.items() if k in keep or k.startswith("MALLOC_")}
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        FLEET_PREFIX=prefix,
        WORKER_ID=f"{prefix}-w1",
        HEALTH_PORT=str(free_port()),
        CONNECT_ATTEMPTS="3",
    )
    return env


def paper_footprint(database_url: str, redis_url: str, symbols: int, logs: Path) -> Footprint:
    """A paper worker with `symbols` symbols, from its start to its first finished scan."""
    with fresh_database(database_url, "footprint") as db, fresh_prefix(redis_url) as prefix:
        env = base_env(db, redis_url, prefix)
        env.update(
            BROKER="paper",
            PAPER_SYMBOLS=str(symbols),
            PAPER_DAY=PAPER_DAY,
            PAPER_SPEED="10",
            PAPER_EPOCH=f"{time.time():.3f}",  # the session opens as the process starts
        )
        worker = WorkerProcess(env, logs / "paper-worker.log")
        try:
            first_scan = worker.wait(
                lambda: worker.watch_scan_state() and worker.scans() >= 1, "paper worker's scan"
            )
            worker.settle()
            return Footprint(worker.peak / _MB, worker.uss / _MB, first_scan, worker.scan_state_s,
                             "scanned")  # fmt: skip
        finally:
            worker.stop()


def kis_footprint(
    database_url: str, redis_url: str, logs: Path, *, real_time: bool = False
) -> Footprint:
    """A BROKER=kis worker against the project's exchange on loopback, on the real domain (as
    in production: the universe is the volume ranking, which the mock domain does not offer).

    The exchange serves a session with its own generated market; the worker authenticates with
    the exchange's app key, reads its universe and boards through the KIS adapter, and fill
    notices come over the exchange's WebSocket (KIS_HTS_ID). By default that session is
    PAPER_DAY's, opening as the exchange starts (exchange, gateway and worker on the same
    `PAPER_*` clock, as a rehearsal on an exchange runs), so the worker scans at any hour;
    `real_time`: today's session in real time, as against KIS itself."""
    seed = secrets.token_hex(6)
    creds = {
        "EXCHANGE_APP_KEY": f"PS{seed}key",
        "EXCHANGE_APP_SECRET": f"{seed}secret",
        "EXCHANGE_ACCOUNT": "12345678-01",
        "EXCHANGE_HTS_ID": "user01",
        "EXCHANGE_RATE_LIMIT": "0",
    }
    clock = {} if real_time else {
        "PAPER_DAY": PAPER_DAY, "PAPER_SPEED": "10", "PAPER_EPOCH": f"{time.time():.3f}",
    }  # fmt: skip
    ex_env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "VIRTUAL_ENV")}
    exchange = Exchange(logs, {**ex_env, **creds, **clock}, ["--domain", "real"])
    try:
        with fresh_database(database_url, "footprint") as db, fresh_prefix(redis_url) as prefix:
            env = base_env(db, redis_url, prefix)
            env.update(
                BROKER="kis",
                KIS_DOMAIN="real",
                KIS_APP_KEY=creds["EXCHANGE_APP_KEY"],
                KIS_APP_SECRET=creds["EXCHANGE_APP_SECRET"],
                KIS_ACCOUNT=creds["EXCHANGE_ACCOUNT"],
                KIS_HTS_ID=creds["EXCHANGE_HTS_ID"],
                KIS_BASE_URL=exchange.rest_url,
                KIS_WS_URL=exchange.ws_url,
                KIS_RATE_PER_S="100",
                **clock,
            )
            gateway = start_gateway(env, logs)
            try:
                return _measure_kis_worker(env, logs)
            finally:
                if gateway is not None:
                    gateway.stop(15)
    finally:
        exchange.stop()


def start_gateway(env: Mapping[str, str], logs: Path) -> Proc | None:
    """`python -m worker gateway` for the worker's app key when the CLI has that command (the
    KIS gateway that BROKER=kis workers reach KIS through); None when it has not."""
    out = subprocess.run([sys.executable, "-m", "worker", "--help"], capture_output=True,
                         text=True, cwd=REPO, timeout=60, check=False)  # fmt: skip
    if "gateway" not in out.stdout:
        return None
    genv = {k: v for k, v in env.items() if k not in ("HEALTH_PORT", "WORKER_ID")}
    genv.update(GATEWAY_HOST="127.0.0.1", GATEWAY_PORT=str(free_port()))
    gateway = Proc("gateway", [sys.executable, "-m", "worker", "gateway"], genv,
                   logs / "kis-gateway.log")  # fmt: skip
    deadline = time.monotonic() + START_TIMEOUT_S
    while "active for" not in gateway.log.read_text(errors="replace"):
        if not gateway.alive() or time.monotonic() > deadline:
            gateway.stop(5)
            raise RuntimeError(f"KIS gateway did not become active:\n{gateway.tail()}")
        time.sleep(0.05)
    return gateway


def _measure_kis_worker(env: Mapping[str, str], logs: Path) -> Footprint:
    """Start the KIS worker and watch it to its first scan, the wait for the open or its exit."""
    worker = WorkerProcess(env, logs / "kis-worker.log")
    try:
        phase = ""

        def reached() -> bool:
            nonlocal phase
            if worker.watch_scan_state() and worker.scans() >= 1:
                phase = "scanned"
            elif worker.log_has("for the open"):
                phase = "waiting"
            elif worker.proc.returncode == 0:
                phase = "closed"  # no session left today: it started and exited
            return bool(phase)

        try:
            at = worker.wait(reached, "KIS worker's scan (or wait for the open)", every=0.02)
        except TimeoutError as exc:  # still starting: what it holds so far, for the record
            print(f"footprint: {exc}", file=sys.stderr)
            return Footprint(worker.peak / _MB, worker.uss / _MB, worker.elapsed(),
                             worker.scan_state_s, "timeout")  # fmt: skip
        if phase != "closed":
            worker.settle()
        return Footprint(worker.peak / _MB, worker.uss / _MB, at, worker.scan_state_s, phase)
    finally:
        worker.stop()


def import_rss_mb() -> float:
    """RSS of a bare interpreter after `import worker.app` (informative)."""
    code = "import worker.app, psutil; print(psutil.Process().memory_info().rss)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=REPO, timeout=120)  # fmt: skip
    return int(out.stdout.split()[-1]) / _MB


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", type=int, default=300, help="PAPER_SYMBOLS (default 300)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the workers' logs")
    parser.add_argument("--no-kis", action="store_true", help="skip the KIS worker")
    parser.add_argument("--kis-real-time", action="store_true",
                        help="the KIS worker on today's real-time session (default: "
                        "PAPER_DAY's, on the exchange's clock, opening as it starts)")  # fmt: skip
    args = parser.parse_args()
    database_url = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    redis_url = os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL
    logs = Path(tempfile.mkdtemp(prefix="footprint-"))
    try:
        print(f"import_rss_mb={import_rss_mb():.1f}", flush=True)
        paper = paper_footprint(database_url, redis_url, args.symbols, logs)
        print(f"worker_rss_mb={paper.rss_mb:.1f}", flush=True)
        print(f"worker_uss_mb={paper.uss_mb:.1f}", flush=True)
        print(f"first_scan_s={paper.reached_s:.2f}", flush=True)
        if paper.scan_state_s is not None:
            print(f"scan_state_s={paper.scan_state_s:.2f}", flush=True)
        if not args.no_kis:
            kis = kis_footprint(database_url, redis_url, logs, real_time=args.kis_real_time)
            print(f"kis_worker_rss_mb={kis.rss_mb:.1f}", flush=True)
            print(f"kis_worker_uss_mb={kis.uss_mb:.1f}", flush=True)
            print(f"kis_worker_phase={kis.phase}", flush=True)
            print(f"kis_worker_ready_s={kis.reached_s:.2f}", flush=True)
            if kis.phase == "timeout":
                return 1
    except (RuntimeError, TimeoutError) as exc:
        print(f"footprint: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep_logs:
            print(f"logs: {logs}", file=sys.stderr)
        else:
            import shutil

            shutil.rmtree(logs, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
