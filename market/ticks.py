"""The KRX price grid and daily price limits.

Tick sizes (KRX, since 2023-01-25, KOSPI and KOSDAQ alike):

    price < 2,000        1 won       price < 50,000      50 won
    price < 5,000        5 won       price < 200,000    100 won
    price < 20,000      10 won       price < 500,000    500 won
                                     price >= 500,000 1,000 won

Every band boundary is a multiple of the coarser tick above it, so rounding with the tick of
the price being rounded always lands on the grid.

Daily limits: ±30% of the base price (the prior close). The upper limit is base × 1.3 rounded
*down* to the grid, the lower limit base × 0.7 rounded *up*, so both stay inside the band.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Literal

_BANDS: tuple[tuple[Decimal, Decimal], ...] = (
    (Decimal(2_000), Decimal(1)),
    (Decimal(5_000), Decimal(5)),
    (Decimal(20_000), Decimal(10)),
    (Decimal(50_000), Decimal(50)),
    (Decimal(200_000), Decimal(100)),
    (Decimal(500_000), Decimal(500)),
)
_TOP_TICK = Decimal(1_000)
LIMIT_RATE = Decimal("0.30")

Direction = Literal["up", "down"]


def tick_size(price: Decimal) -> Decimal:
    """The tick that applies at `price` (the band `price` falls in)."""
    for bound, tick in _BANDS:
        if price < bound:
            return tick
    return _TOP_TICK


def round_to_tick(price: Decimal, direction: Direction) -> Decimal:
    """`price` moved onto the grid: the next grid price at or above (up) or at or below (down)."""
    if price <= 0:
        raise ValueError(f"price must be positive, got {price}")
    tick = tick_size(price)
    rounding = ROUND_CEILING if direction == "up" else ROUND_FLOOR
    steps = (price / tick).to_integral_value(rounding=rounding)
    result = steps * tick
    return max(result, Decimal(1))


def is_on_grid(price: Decimal) -> bool:
    return price > 0 and price == price.to_integral_value() and price % tick_size(price) == 0


def ticks_between(low: Decimal, high: Decimal) -> int:
    """How many grid steps separate two grid prices (`high` >= `low`)."""
    count = 0
    price = low
    while price < high:
        price += tick_size(price)
        count += 1
    return count


def step(price: Decimal, n: int) -> Decimal:
    """The grid price `n` ticks above (n > 0) or below (n < 0) a grid price."""
    for _ in range(abs(n)):
        if n > 0:
            price += tick_size(price)
        else:
            price -= tick_size(price - 1)
    return price


def price_limits(base: Decimal) -> tuple[Decimal, Decimal]:
    """(lower, upper) daily price limits for a base (prior close) price."""
    upper = round_to_tick(base * (1 + LIMIT_RATE), "down")
    lower = round_to_tick(base * (1 - LIMIT_RATE), "up")
    return lower, upper
