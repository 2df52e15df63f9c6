"""Listing attributes of the simulated symbols, for volume-rank's exclusion flags and the
status fields of inquire-price.

The simulated market has no such attributes, so each symbol draws them once from the seed
(a few percent each): investment warning, administrative issue, liquidation trading, unfaithful
disclosure, preferred share, ETF, ETN, no credit orders, SPAC. Trading suspension is never
drawn (a suspended symbol would not trade in the simulation either), so its flag never
excludes anything. The attributes only label symbols; they do not change matching.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from market.sim import SimulatedMarket

#: FID_TRGT_EXLS_CLS_CODE digit order (KIS's volume-rank sample): 투자위험/경고/주의, 관리종목,
#: 정리매매, 불성실공시, 우선주, 거래정지, ETF, ETN, 신용주문불가, SPAC.
EXCLUSION_FLAGS = (
    "warning",
    "administrative",
    "liquidation",
    "unfaithful",
    "preferred",
    "suspended",
    "etf",
    "etn",
    "no_credit",
    "spac",
)
_RATE = 0.04


@dataclass(frozen=True)
class Traits:
    warning: bool = False
    administrative: bool = False
    liquidation: bool = False
    unfaithful: bool = False
    preferred: bool = False
    suspended: bool = False
    etf: bool = False
    etn: bool = False
    no_credit: bool = False
    spac: bool = False

    def excluded(self, flags: str) -> bool:
        """Whether a FID_TRGT_EXLS_CLS_CODE string (0/1 digits, missing ones 0) excludes it."""
        return any(
            digit == "1" and getattr(self, name)
            for digit, name in zip(flags, EXCLUSION_FLAGS, strict=False)
        )


def symbol_traits(market: SimulatedMarket, seed: int) -> dict[str, Traits]:
    out: dict[str, Traits] = {}
    for symbol in market.symbols:
        rng = random.Random(f"{seed}:{symbol}:traits")
        drawn = {name: rng.random() < _RATE for name in EXCLUSION_FLAGS if name != "suspended"}
        out[symbol] = Traits(**drawn)
    return out
