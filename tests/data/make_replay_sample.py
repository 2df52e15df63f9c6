"""Rebuild tests/data/replay_sample.csv (the replay test's shipped sample).

    python tests/data/make_replay_sample.py

20 symbols of the seed-7 simulated day 2026-03-10 (300 symbols), the first 120 minutes of the
continuous session. THIN names are left out: their simulated spread is 2-4 ticks while a replay
derives a one-tick book (market/replay.py), so only they could scan differently live and
replayed. Rerun this after any change to the simulator's paths; tests/test_replay.py compares
the file with the simulator it came from.
"""

from __future__ import annotations

import sys
from datetime import date, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from market.calendar import Session
from market.clock import KST
from market.replay import write_replay_csv
from market.sim import SimulatedMarket
from market.types import Tier

SEED, N_SYMBOLS, MINUTES, COUNT = 7, 300, 120, 20
SESSION = Session(
    date(2026, 3, 10),
    datetime(2026, 3, 10, 9, 0, tzinfo=KST),
    datetime(2026, 3, 10, 15, 20, tzinfo=KST),
    datetime(2026, 3, 10, 15, 30, tzinfo=KST),
)
PATH = Path(__file__).with_name("replay_sample.csv")


def sample_symbols(market: SimulatedMarket) -> list[str]:
    eligible = [i.symbol for i in market.instruments if i.tier >= Tier.LOW]
    return eligible[:: len(eligible) // COUNT][:COUNT]


def main() -> None:
    market = SimulatedMarket(SEED, SESSION, N_SYMBOLS)
    write_replay_csv(market, PATH, sample_symbols(market), minutes=MINUTES)
    print(f"wrote {PATH} ({PATH.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
