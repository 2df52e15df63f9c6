"""Speed of the vectorized scan next to a per-symbol pandas loop doing the same work.

    python bench/scan.py

One snapshot of 2,500 simulated symbols x 120 one-minute bars (seed 0, 200 minutes into the
session). `rank_candidates` (worker/scan.py) ranks it; the baseline walks the symbols one at a
time, applies the same pre-filters with scalar checks (so illiquid names cost it nothing), builds
a small DataFrame of each liquid symbol's bars and computes the same indicators and score with
pandas, then sorts. Before timing, the two rankings must agree (same symbols in the same order,
scores within 1e-9), or the script exits 1.

Prints one ``name=value`` line per figure (medians, milliseconds), and last
``scan_vs_pandas_loop``: our median over the loop's. The goal is <= 0.05. Also the simulator's
side of a scan at that size: ``sim_build_ms`` (drawing the 2,500-symbol day, median of 3) and
``sim_snapshot_ms`` (one 120-bar snapshot of it), next to the scan they feed.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import date, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd

from market.calendar import Session
from market.clock import KST
from market.sim import SimulatedMarket
from market.types import Snapshot
from strategy.scan import ScanParams, rank_candidates

N_SYMBOLS = 2_500
N_BARS = 120
SCAN_RUNS = 200
LOOP_RUNS = 3
SESSION = Session(
    date(2026, 3, 10),
    datetime(2026, 3, 10, 9, 0, tzinfo=KST),
    datetime(2026, 3, 10, 15, 20, tzinfo=KST),
    datetime(2026, 3, 10, 15, 30, tzinfo=KST),
)


def pandas_loop(snap: Snapshot, p: ScanParams) -> list[tuple[str, float]]:
    """(symbol, score), best first: the scan written one symbol at a time."""
    window = max(p.long_ma_bars, p.breakout_bars)
    rows = []
    for i, symbol in enumerate(snap.symbols):
        price = float(snap.price[i])
        spread = (snap.ask[i] - snap.bid[i]) / snap.tick[i]
        if (
            symbol in p.exclude
            or (snap.halted is not None and snap.halted[i])
            or snap.volume[i] < p.min_volume
            or snap.traded_value[i] < p.min_traded_value
            or spread > p.max_spread_ticks
            or not p.min_price <= price <= p.max_price
            or price >= snap.prev_close[i] * 1.25
        ):
            continue
        bars = pd.DataFrame({"close": snap.closes[i], "volume": snap.volumes[i]})
        close, volume = bars["close"], bars["volume"]
        if close.tail(window).isna().any():
            continue
        fast = close.tail(p.short_ma_bars).mean()
        slow = close.tail(p.long_ma_bars).mean()
        nbar_high = close.tail(p.breakout_bars).max()
        base = volume.tail(p.long_ma_bars).mean()
        surge = volume.tail(p.surge_bars).mean() / base if base > 0 else 0.0
        score = (fast / slow - 1.0) * 100.0
        score += 1.0 if price > nbar_high else 0.0
        score += 0.5 if price > snap.prev_high[i] else 0.0
        score += 0.5 * min(max(surge - 1.0, 0.0), 3.0)
        rows.append({"symbol": symbol, "score": score})
    table = pd.DataFrame(rows).sort_values(["score", "symbol"], ascending=[False, True])
    top = table.head(p.max_candidates)
    return list(zip(top["symbol"], top["score"], strict=True))


def median_ms(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1_000


def main() -> int:
    market = SimulatedMarket(0, SESSION, N_SYMBOLS)
    snap = market.snapshot(SESSION.open + timedelta(minutes=200), N_BARS)
    params = ScanParams()
    ours = [(c.symbol, c.score) for c in rank_candidates(snap, params)]
    theirs = pandas_loop(snap, params)
    same = [a for a, _ in ours] == [b for b, _ in theirs] and all(
        math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-9)
        for (_, x), (_, y) in zip(ours, theirs, strict=True)
    )
    if not same or not ours:
        print(f"rankings differ:\n  scan:   {ours}\n  pandas: {theirs}", file=sys.stderr)
        return 1
    excluding = replace(params, exclude=frozenset(snap.symbols[::250]))
    scan_ms = median_ms(lambda: rank_candidates(snap, params), SCAN_RUNS)
    scan_excl_ms = median_ms(lambda: rank_candidates(snap, excluding), SCAN_RUNS)
    loop_ms = median_ms(lambda: pandas_loop(snap, params), LOOP_RUNS)
    build_ms = median_ms(lambda: SimulatedMarket(0, SESSION, N_SYMBOLS), 3)
    minutes = iter(range(150, 150 + SCAN_RUNS))
    snapshot_ms = median_ms(
        lambda: market.snapshot(SESSION.open + timedelta(minutes=next(minutes) + 0.5), N_BARS),
        SCAN_RUNS,
    )
    print(f"symbols={N_SYMBOLS}")
    print(f"bars={N_BARS}")
    print(f"candidates={len(ours)}")
    print(f"scan_ms={scan_ms:.3f}")
    print(f"scan_with_exclusions_ms={scan_excl_ms:.3f}")
    print(f"sim_build_ms={build_ms:.1f}")
    print(f"sim_snapshot_ms={snapshot_ms:.3f}")
    print(f"pandas_loop_ms={loop_ms:.1f}")
    print(f"scan_vs_pandas_loop={scan_ms / loop_ms:.5f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
