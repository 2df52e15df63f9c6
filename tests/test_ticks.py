"""The KRX tick grid and daily price limits (market/ticks.py)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from market.ticks import (
    is_on_grid,
    price_limits,
    round_to_tick,
    step,
    tick_size,
    ticks_between,
)

D = Decimal

# (price, tick) on both sides of every band boundary.
TABLE = [
    (1, 1),
    (1_999, 1),
    (2_000, 5),
    (4_999, 5),
    (5_000, 10),
    (19_999, 10),
    (20_000, 50),
    (49_999, 50),
    (50_000, 100),
    (199_999, 100),
    (200_000, 500),
    (499_999, 500),
    (500_000, 1_000),
    (3_000_000, 1_000),
]

prices = st.decimals(min_value=D(1), max_value=D(3_000_000), places=2, allow_nan=False)
grid_prices = st.integers(min_value=1, max_value=3_000_000).map(
    lambda n: round_to_tick(D(n), "down")
)


@pytest.mark.parametrize(("price", "tick"), TABLE)
def test_tick_size_at_every_boundary(price: int, tick: int) -> None:
    assert tick_size(D(price)) == D(tick)


@pytest.mark.parametrize(
    ("price", "on_grid"),
    [
        (1_999, True),
        (2_001, False),
        (2_005, True),
        (49_950, True),
        (49_960, False),
        (50_050, False),
        (50_100, True),
        (499_500, True),
        (500_500, False),
        (501_000, True),
    ],
)
def test_is_on_grid(price: int, on_grid: bool) -> None:
    assert is_on_grid(D(price)) is on_grid


def test_is_on_grid_rejects_fractions_and_non_positive() -> None:
    assert not is_on_grid(D("1000.5"))
    assert not is_on_grid(D(0))
    assert not is_on_grid(D(-5))


@given(prices)
def test_round_up_is_minimal_grid_price_at_or_above(price: Decimal) -> None:
    up = round_to_tick(price, "up")
    assert is_on_grid(up)
    assert up >= price
    # Minimal: the grid price just below is already under `price`.
    assert up == 1 or step(up, -1) < price


@given(prices)
def test_round_down_is_maximal_grid_price_at_or_below(price: Decimal) -> None:
    down = round_to_tick(price, "down")
    assert is_on_grid(down)
    assert down <= price
    assert step(down, 1) > price


@pytest.mark.parametrize(
    ("price", "up", "down"),
    [
        ("1999.5", 2_000, 1_999),
        (2_001, 2_005, 2_000),
        (19_995, 20_000, 19_990),
        (49_975, 50_000, 49_950),
        (499_501, 500_000, 499_500),
        (500_001, 501_000, 500_000),
    ],
)
def test_round_across_band_boundaries(price: str | int, up: int, down: int) -> None:
    assert round_to_tick(D(price), "up") == D(up)
    assert round_to_tick(D(price), "down") == D(down)


def test_round_rejects_non_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        round_to_tick(D(0), "up")


@given(grid_prices, st.integers(min_value=-50, max_value=50))
def test_step_round_trips_and_counts(price: Decimal, n: int) -> None:
    moved = step(price, n)
    if moved < 1:
        return  # stepped below the grid's bottom; not a price
    assert is_on_grid(moved)
    assert step(moved, -n) == price
    low, high = sorted((price, moved))
    assert ticks_between(low, high) == abs(n)


def test_step_across_boundaries() -> None:
    assert step(D(1_999), 1) == D(2_000)
    assert step(D(2_000), 1) == D(2_005)
    assert step(D(2_000), -1) == D(1_999)
    assert step(D(50_000), -1) == D(49_950)
    assert step(D(500_000), 1) == D(501_000)


@given(grid_prices.filter(lambda p: p >= 100))
def test_price_limits_on_grid_inside_30_percent_and_widest(base: Decimal) -> None:
    lower, upper = price_limits(base)
    assert is_on_grid(lower)
    assert is_on_grid(upper)
    assert base * D("0.7") <= lower <= base <= upper <= base * D("1.3")
    # Widest band inside ±30%: one more tick out would leave it.
    assert step(upper, 1) > base * D("1.3")
    assert step(lower, -1) < base * D("0.7")


@pytest.mark.parametrize(
    ("base", "lower", "upper"),
    [
        (10_000, 7_000, 13_000),
        (71_300, 49_950, 92_600),
        (1_000, 700, 1_300),
        (600_000, 420_000, 780_000),
    ],
)
def test_price_limits_examples(base: int, lower: int, upper: int) -> None:
    assert price_limits(D(base)) == (D(lower), D(upper))
