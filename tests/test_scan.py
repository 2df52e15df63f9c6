"""The vectorized scan (worker/scan.py) against the plainest per-symbol Python.

Tolerance for indicators and scores: relative 1e-9, plus absolute 1e-9 for values near zero
(momentum is the difference of two nearly equal means, so its relative error can be large
while its absolute error stays at float64 rounding). The filters and the ranking are compared
exactly.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import replace
from datetime import date, datetime
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from market.clock import KST
from market.paths import tick_of
from market.types import Snapshot, Tier
from strategy.scan import ScanParams, compute_indicators, liquid_mask, rank_candidates, score

AT = datetime(2026, 3, 10, 10, 0, tzinfo=KST)
NAN = float("nan")


def snapshot(rows: list[dict[str, Any]], closes: list[list[float]], volumes: list[list[float]]):
    """A Snapshot from per-symbol dicts (symbol, price, bid, ask, volume, traded_value, ...)."""

    def col(name: str, default: float | None = None) -> np.ndarray:
        return np.array([r.get(name, default) for r in rows], dtype=np.float64)

    price = col("price")
    return Snapshot(
        at=AT,
        trading_day=date(2026, 3, 10),
        symbols=tuple(r["symbol"] for r in rows),
        price=price,
        bid=col("bid"),
        ask=col("ask"),
        tick=tick_of(price),
        volume=col("volume"),
        traded_value=col("traded_value"),
        day_high=price.copy(),
        day_low=price.copy(),
        prev_close=col("prev_close"),
        prev_high=col("prev_high"),
        prev_low=col("prev_low"),
        tier=np.array([int(r.get("tier", Tier.MID)) for r in rows], dtype=np.int64),
        closes=np.array(closes, dtype=np.float64).reshape(len(rows), -1),
        volumes=np.array(volumes, dtype=np.float64).reshape(len(rows), -1),
    )


# ----- the reference: one symbol at a time, no numpy ------------------------------------------


def ref_mean(xs: list[float]) -> float:
    return NAN if any(math.isnan(x) for x in xs) else statistics.mean(xs)


def ref_max(xs: list[float]) -> float:
    return NAN if any(math.isnan(x) for x in xs) else max(xs)


def ref_row(snap: Snapshot, i: int, p: ScanParams) -> dict[str, float]:
    closes = [float(x) for x in snap.closes[i]]
    volumes = [float(x) for x in snap.volumes[i]]
    price = float(snap.price[i])
    fast = ref_mean(closes[-p.short_ma_bars :])
    slow = ref_mean(closes[-p.long_ma_bars :])
    nbar_high = ref_max(closes[-p.breakout_bars :])
    recent = statistics.mean(volumes[-p.surge_bars :])
    base = statistics.mean(volumes[-p.long_ma_bars :])
    surge = recent / base if base > 0 else 0.0
    spread = (float(snap.ask[i]) - float(snap.bid[i])) / float(snap.tick[i])

    momentum = -math.inf if math.isnan(fast) or math.isnan(slow) else (fast / slow - 1) * 100
    total = momentum
    if price > nbar_high:
        total += 1.0
    if price > float(snap.prev_high[i]):
        total += 0.5
    total += 0.5 * min(max(surge - 1.0, 0.0), 3.0)

    window = closes[-max(p.long_ma_bars, p.breakout_bars) :]
    liquid = (
        snap.volume[i] >= p.min_volume
        and snap.traded_value[i] >= p.min_traded_value
        and spread <= p.max_spread_ticks
        and p.min_price <= price <= p.max_price
        and price < float(snap.prev_close[i]) * 1.25
        and not any(math.isnan(x) for x in window)
        and snap.symbols[i] not in p.exclude
    )
    return {
        "fast": fast,
        "slow": slow,
        "nbar_high": nbar_high,
        "surge": surge,
        "spread": spread,
        "score": total,
        "liquid": float(liquid),
    }


def close(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if math.isinf(a) or math.isinf(b):
        return a == b
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


# ----- random universes -----------------------------------------------------------------------

_PRICE = st.one_of(
    st.sampled_from([1_000.0, 1_005.0, 9_990.0]),  # repeated values make score ties
    st.floats(500.0, 1_200_000.0, allow_nan=False),
)


# Passing values are drawn more often than failing ones so that, often, more symbols pass the
# filters than `max_candidates` and the cut (with its ties) is exercised.
@st.composite
def universes(draw: st.DrawFn) -> tuple[Snapshot, ScanParams]:
    short = draw(st.integers(1, 8))
    p = ScanParams(
        short_ma_bars=short,
        long_ma_bars=draw(st.integers(short + 1, 30)),
        breakout_bars=draw(st.integers(1, 40)),
        surge_bars=draw(st.integers(1, 10)),
        min_volume=20_000,
        min_traded_value=3e8,
        max_spread_ticks=3,
        exclude=frozenset(draw(st.sets(st.sampled_from(["000010", "000020", "000989"])))),
        max_candidates=draw(st.integers(1, 6)),
    )
    n = draw(st.integers(1, 16))
    n_bars = draw(st.integers(1, 45))
    rows, closes, volumes = [], [], []
    for i in range(n):
        pad = draw(st.integers(0, n_bars)) if draw(st.integers(0, 3)) == 0 else 0
        bars = draw(st.lists(_PRICE, min_size=n_bars - pad, max_size=n_bars - pad))
        closes.append([NAN] * pad + bars)
        vols = draw(
            st.lists(
                st.sampled_from([0.0, 100.0, 5_000.0, 77_777.0]),
                min_size=n_bars - pad,
                max_size=n_bars - pad,
            )
        )
        volumes.append([0.0] * pad + vols)
        price = draw(_PRICE)
        tick = float(tick_of(np.array([price]))[0])
        rows.append(
            {
                "symbol": f"{(i + 1) * 10:06d}" if draw(st.booleans()) else f"{999 - i * 10:06d}",
                "price": price,
                "bid": price,
                "ask": price + tick * draw(st.sampled_from([0, 1, 1, 1, 2, 3, 4])),
                "volume": draw(st.sampled_from([0.0, 19_999.0, 20_000.0, *[1e6] * 3])),
                "traded_value": draw(st.sampled_from([0.0, 3e8 - 1, 3e8, *[1e10] * 3])),
                "prev_close": price / draw(st.sampled_from([0.8, 1.0, 1.0, 1.0, 1.25, 1.3])),
                "prev_high": draw(_PRICE),
                "prev_low": 1.0,
            }
        )
    # Duplicate symbols would make the tie-break ambiguous: keep the first of each.
    first = {r["symbol"]: i for i, r in reversed(list(enumerate(rows)))}
    keep = sorted(first.values())
    snap = snapshot([rows[i] for i in keep], [closes[i] for i in keep], [volumes[i] for i in keep])
    return snap, p


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(universes())
def test_indicators_scores_and_filters_equal_the_plain_reference(
    data: tuple[Snapshot, ScanParams],
) -> None:
    snap, p = data
    ind = compute_indicators(snap, p)
    scores = score(snap, ind)
    mask = liquid_mask(snap, ind, p)
    for i in range(len(snap.symbols)):
        ref = ref_row(snap, i, p)
        got = {
            "fast": ind.fast_ma[i],
            "slow": ind.slow_ma[i],
            "nbar_high": ind.nbar_high[i],
            "surge": ind.surge[i],
            "spread": ind.spread_ticks[i],
            "score": scores[i],
            "liquid": float(mask[i]),
        }
        for key, value in got.items():
            assert close(float(value), ref[key]), (key, i, float(value), ref[key])


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(universes())
def test_ranking_is_a_plain_sort_of_liquid_symbols_by_score_then_symbol(
    data: tuple[Snapshot, ScanParams],
) -> None:
    snap, p = data
    ind = compute_indicators(snap, p)
    scores = score(snap, ind)
    mask = liquid_mask(snap, ind, p)
    liquid = [i for i in range(len(snap.symbols)) if mask[i]]
    expected = sorted(liquid, key=lambda i: (-scores[i], snap.symbols[i]))[: p.max_candidates]
    ranked = rank_candidates(snap, p)
    assert [c.symbol for c in ranked] == [snap.symbols[i] for i in expected]
    for c, i in zip(ranked, expected, strict=True):
        ref = ref_row(snap, i, p)
        assert close(c.score, ref["score"])
        assert close(c.fast_ma, ref["fast"])
        assert close(c.slow_ma, ref["slow"])
        assert c.breakout_nbar == (snap.price[i] > ref["nbar_high"])
        assert c.breakout_prev_high == (snap.price[i] > snap.prev_high[i])


# ----- the filters, one row per reason --------------------------------------------------------

PARAMS = ScanParams(
    short_ma_bars=2,
    long_ma_bars=4,
    breakout_bars=5,
    surge_bars=2,
    min_volume=20_000,
    min_traded_value=300_000_000.0,
    max_spread_ticks=3,
    min_price=1_000.0,
    max_price=1_000_000.0,
    exclude=frozenset({"000990"}),
)
BASE = {
    "price": 10_000.0,
    "bid": 10_000.0,
    "ask": 10_010.0,
    "volume": 50_000.0,
    "traded_value": 5e8,
    "prev_close": 9_900.0,
    "prev_high": 10_500.0,
    "prev_low": 9_500.0,
}
UP = [9_900.0, 9_920.0, 9_940.0, 9_960.0, 9_980.0, 9_990.0]

# (symbol, overrides, bars, passes): each failing row breaks exactly one filter; the boundary
# rows sit exactly on a threshold, which passes.
FILTER_TABLE: list[tuple[str, dict[str, float], list[float], bool]] = [
    ("000010", {}, UP, True),
    ("000020", {"volume": 19_999.0}, UP, False),
    ("000030", {"volume": 20_000.0}, UP, True),
    ("000040", {"traded_value": 299_999_999.0}, UP, False),
    ("000050", {"traded_value": 300_000_000.0}, UP, True),
    ("000060", {"ask": 10_040.0}, UP, False),  # 4 ticks of 10 won
    ("000070", {"ask": 10_030.0}, UP, True),  # 3 ticks
    ("000080", {"price": 995.0, "bid": 995.0, "ask": 996.0, "prev_close": 990.0}, UP, False),
    ("000090", {"price": 1_000.0, "bid": 1_000.0, "ask": 1_001.0, "prev_close": 990.0}, UP, True),
    (
        "000100",
        {"price": 1_001_000.0, "bid": 1_001_000.0, "ask": 1_002_000.0, "prev_close": 1_000_000.0},
        UP,
        False,
    ),
    (
        "000110",
        {"price": 12_500.0, "bid": 12_500.0, "ask": 12_510.0, "prev_close": 10_000.0},
        UP,
        False,
    ),  # +25%: too close to the upper limit
    (
        "000120",
        {"price": 12_450.0, "bid": 12_450.0, "ask": 12_460.0, "prev_close": 10_000.0},
        UP,
        True,
    ),
    ("000130", {}, [NAN, NAN, *UP[2:]], False),  # one bar short of the breakout window
    ("000990", {}, UP, False),  # excluded
]


def filter_snapshot() -> Snapshot:
    rows = [{**BASE, **over, "symbol": sym} for sym, over, _, _ in FILTER_TABLE]
    closes = [bars for _, _, bars, _ in FILTER_TABLE]
    volumes = [[1_000.0] * len(UP) for _ in FILTER_TABLE]
    return snapshot(rows, closes, volumes)


def test_filters_drop_exactly_the_rows_built_to_fail_them() -> None:
    snap = filter_snapshot()
    mask = liquid_mask(snap, compute_indicators(snap, PARAMS), PARAMS)
    assert dict(zip(snap.symbols, mask.tolist(), strict=True)) == {
        sym: passes for sym, _, _, passes in FILTER_TABLE
    }
    ranked = rank_candidates(snap, replace(PARAMS, max_candidates=100))
    assert sorted(c.symbol for c in ranked) == [s for s, _, _, ok in FILTER_TABLE if ok]


def test_without_exclusions_the_excluded_row_passes() -> None:
    snap = filter_snapshot()
    p = replace(PARAMS, exclude=frozenset())
    mask = liquid_mask(snap, compute_indicators(snap, p), p)
    assert mask[snap.symbols.index("000990")]


def test_ties_are_broken_by_symbol_across_the_cut() -> None:
    # Eight identical rows in scrambled order: the cut at 3 keeps the three smallest codes.
    symbols = ["000070", "000020", "000080", "000010", "000050", "000040", "000030", "000060"]
    rows = [{**BASE, "symbol": s} for s in symbols]
    snap = snapshot(rows, [UP] * len(rows), [[1_000.0] * len(UP)] * len(rows))
    ranked = rank_candidates(snap, replace(PARAMS, exclude=frozenset(), max_candidates=3))
    assert [c.symbol for c in ranked] == ["000010", "000020", "000030"]
    assert len({c.score for c in ranked}) == 1


def test_reasons_name_what_produced_the_score() -> None:
    rows = [{**BASE, "symbol": "000010", "price": 10_600.0, "bid": 10_600.0, "ask": 10_610.0}]
    volumes = [[1_000.0, 1_000.0, 1_000.0, 1_000.0, 3_000.0, 3_000.0]]
    snap = snapshot(rows, [UP], volumes)
    (c,) = rank_candidates(snap, replace(PARAMS, exclude=frozenset()))
    assert c.breakout_nbar
    assert c.breakout_prev_high
    assert c.surge == pytest.approx(1.5)  # mean(3000, 3000) / mean(1000, 1000, 3000, 3000)
    assert c.reasons == (
        f"momentum {(c.fast_ma / c.slow_ma - 1) * 100:+.2f}%",
        "breakout 5-bar high",
        "above prior-day high",
        "volume x1.5",
    )
    momentum = (statistics.mean(UP[-2:]) / statistics.mean(UP[-4:]) - 1) * 100
    assert c.score == pytest.approx(momentum + 1.0 + 0.5 + 0.25, rel=1e-12)


def test_an_empty_universe_ranks_nothing() -> None:
    snap = snapshot([{**BASE, "symbol": "000010", "volume": 0.0}], [UP], [[0.0] * len(UP)])
    assert rank_candidates(snap, PARAMS) == []


def test_a_symbol_in_a_volatility_interruption_is_not_a_candidate() -> None:
    rows = [{**BASE, "symbol": s} for s in ("000010", "000020")]
    snap = snapshot(rows, [UP, UP], [[1_000.0] * len(UP)] * 2)
    p = replace(PARAMS, exclude=frozenset())
    assert [c.symbol for c in rank_candidates(snap, p)] == ["000010", "000020"]
    halted = replace(snap, halted=np.array([True, False]))
    assert [c.symbol for c in rank_candidates(halted, p)] == ["000020"]
