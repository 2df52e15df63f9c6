"""Value types shared by the market, the brokers and the worker."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from enum import IntEnum, StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt


class Board(StrEnum):
    KOSPI = "KOSPI"
    KOSDAQ = "KOSDAQ"


class Tier(IntEnum):
    """Liquidity tier: drives book depth, volume and how early forced liquidation starts."""

    THIN = 0
    LOW = 1
    MID = 2
    HIGH = 3


@dataclass(frozen=True, slots=True)
class Instrument:
    symbol: str  # six-digit KRX code, e.g. "005930"
    name: str
    board: Board
    tier: Tier
    prev_close: Decimal
    prev_high: Decimal
    prev_low: Decimal
    kospi200: bool = False


@dataclass(frozen=True, slots=True)
class Quote:
    """What the worker sees of one symbol at one instant. Prices are won, on the tick grid."""

    symbol: str
    at: datetime
    price: Decimal  # last trade
    bid: Decimal
    ask: Decimal
    bid_qty: int
    ask_qty: int
    volume: int  # cumulative shares today
    traded_value: Decimal  # cumulative won today
    day_high: Decimal
    day_low: Decimal
    prev_close: Decimal
    prev_high: Decimal
    prev_low: Decimal
    upper_limit: Decimal
    lower_limit: Decimal
    tier: Tier
    short_ma: Decimal | None = None  # short moving average of minute closes, for the sell rules
    # In a volatility interruption: when its single-price auction executes; None otherwise.
    halted_until: datetime | None = None
    # Short-term volatility: the last completed minute's range (high - low) over the mean
    # range of the minutes before it that the source has (the day's, or the bars it holds);
    # None with fewer than two bars or a flat history. 1 is an ordinary minute.
    range_ratio: float | None = None


FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


class ViKind(StrEnum):
    STATIC = "STATIC"  # 10% from the last single-price auction price
    DYNAMIC = "DYNAMIC"  # a sharp move within one minute (3% KOSPI 200, 6% others)


@dataclass(frozen=True, slots=True)
class VolatilityInterruption:
    """A two-minute single-price auction of one symbol, [start, end).

    Orders collect during it and those that cross execute at `price` at `end`. A VI that would
    run past the end of continuous trading ends there and merges into the closing auction.
    """

    symbol: str
    kind: ViKind
    start: datetime
    end: datetime
    reference: Decimal  # the price the triggering move was measured from
    trigger_price: Decimal  # the printed price that triggered it
    price: Decimal | None  # the auction price at `end`; None when it merges into the close


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The whole universe at one instant, column-wise, for the vectorized scan.

    Row i of every array is `symbols[i]`. Prices are float64 here because indicators are
    statistics, not money; orders are always priced from a `Quote` (Decimal).
    `closes` / `volumes` hold the last `n_bars` completed one-minute bars, oldest first;
    a symbol with fewer bars so far is left-padded with NaN (closes) / 0 (volumes).
    """

    at: datetime
    trading_day: date
    symbols: tuple[str, ...]
    price: FloatArray
    bid: FloatArray
    ask: FloatArray
    tick: FloatArray  # tick size at the current price
    volume: FloatArray  # cumulative shares today
    traded_value: FloatArray  # cumulative won today
    day_high: FloatArray
    day_low: FloatArray
    prev_close: FloatArray
    prev_high: FloatArray
    prev_low: FloatArray
    tier: IntArray
    closes: FloatArray  # shape (n_symbols, n_bars)
    volumes: FloatArray  # shape (n_symbols, n_bars)
    halted: BoolArray | None = None  # in a volatility interruption (None: source does not say)


def range_ratio(ranges: npt.ArrayLike) -> float | None:
    """`Quote.range_ratio` from minute ranges (high - low), oldest first: the last one over the
    mean of those before it. None with fewer than two, or when those before it are all flat."""
    r = np.asarray(ranges, dtype=np.float64)
    r = r[~np.isnan(r)]
    if r.size < 2:
        return None
    base = float(r[:-1].mean())
    if base <= 0:
        return None
    return round(float(r[-1]) / base, 4)


_SYMBOL_CODE = re.compile(r"\d{6}")


def split_symbol_codes(value: Any) -> Any:
    """A setting's comma-separated 6-digit symbol codes as a tuple (a pydantic BeforeValidator;
    anything but a string passes through). Empty means none; an empty item is an error (`,,,`
    is a typo, not "none")."""
    if not isinstance(value, str):
        return value
    if not value.strip():
        return ()
    symbols = tuple(s.strip() for s in value.split(","))
    for s in symbols:
        if not _SYMBOL_CODE.fullmatch(s):
            raise ValueError(f"must be comma-separated 6-digit codes, got item {s!r}")
    return symbols


def check_symbol_codes(value: tuple[str, ...]) -> tuple[str, ...]:
    """Every item a 6-digit symbol code (a pydantic AfterValidator)."""
    for s in value:
        if not _SYMBOL_CODE.fullmatch(s):
            raise ValueError(f"must be 6-digit codes, got {s!r}")
    return value
