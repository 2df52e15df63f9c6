"""The shipped strategy: short-candle momentum with breakouts (`strategy.scan` ranks,
`strategy.signals` decides), behind the `Strategy` port.

Its parameters keep the environment names they always had (`SHORT_MA_BARS`, `STOP_LOSS_PCT`,
...): `env_prefix` is empty. Bounds match the settings table in the README.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Self

import numpy as np
from pydantic import AfterValidator, BaseModel, BeforeValidator, Field, model_validator

from market.types import Quote, Snapshot, check_symbol_codes, split_symbol_codes
from strategy.base import StrategyParams
from strategy.scan import Candidate, ScanParams, rank_candidates
from strategy.signals import (
    HeldPosition,
    SellSignal,
    SignalParams,
    entry_signal,
    evaluate_buy_signal,
    evaluate_exit_rules,
)
from strategy.triggers import SellLevels, sell_levels

#: one bar per minute of a regular session: no window is longer
MAX_BARS = 390


class MomentumFields(BaseModel):
    """The shipped strategy's parameters, declared once: `MomentumParams` validates them for
    the strategy, and the worker's `Settings` carries the same fields (its settings table, its
    near-miss check of variable names, explicit overrides) by inheriting this class."""

    short_ma_bars: int = Field(5, ge=2, le=MAX_BARS, description="fast moving average (bars)")
    long_ma_bars: int = Field(20, ge=3, le=MAX_BARS, description="slow moving average (bars)")
    breakout_bars: int = Field(30, ge=2, le=MAX_BARS, description="N-bar high for the breakout")
    surge_bars: int = Field(5, ge=1, le=MAX_BARS, description="recent window of the volume surge")
    min_volume: int = Field(20_000, ge=0, le=10**12, description="pre-filter: shares today")
    min_traded_value: Decimal = Field(
        Decimal(300_000_000), ge=0, le=10**15, description="pre-filter: won traded today"
    )
    max_spread_ticks: int = Field(3, ge=1, le=1_000, description="pre-filter: widest spread")
    min_price: Decimal = Field(Decimal(1_000), gt=0, le=10**8, description="pre-filter (won)")
    max_price: Decimal = Field(Decimal(1_000_000), gt=0, le=10**8, description="pre-filter (won)")
    exclude_symbols: Annotated[
        tuple[str, ...],
        BeforeValidator(split_symbol_codes),
        AfterValidator(check_symbol_codes),
        Field(description="never traded"),
    ] = ()
    min_score: float = Field(0.5, ge=0, le=100, description="minimum scan score for a buy")
    max_candidates: int = Field(20, ge=1, le=500, description="ranked candidates per scan")
    stop_loss_pct: Decimal = Field(Decimal("1.5"), gt=0, lt=50, description="% below the entry")
    take_profit_pct: Decimal = Field(Decimal("3.0"), gt=0, lt=100, description="% above the entry")
    max_hold_min: int = Field(90, ge=1, le=MAX_BARS, description="time exit (clock minutes)")
    trend_break_pct: Decimal = Field(
        Decimal("0.5"), ge=0, lt=50, description="exit this % below the short MA"
    )
    trend_min_hold_min: int = Field(
        5, ge=0, le=MAX_BARS, description="trend-break exit only after this (clock minutes)"
    )

    @model_validator(mode="after")
    def _momentum_consistent(self) -> Self:
        if self.short_ma_bars >= self.long_ma_bars:
            raise ValueError("SHORT_MA_BARS must be smaller than LONG_MA_BARS")
        if self.min_price > self.max_price:
            raise ValueError("MIN_PRICE must not exceed MAX_PRICE")
        return self


class MomentumParams(StrategyParams, MomentumFields):
    env_prefix: ClassVar[str] = ""


class MomentumBreakout:
    """Momentum in an uptrend with an N-bar or prior-day breakout and a volume surge; exits on
    stop loss, take profit, a break below the short MA, or time (see `strategy.signals`)."""

    Params: ClassVar[type[StrategyParams]] = MomentumParams

    def __init__(self, params: MomentumParams | None = None) -> None:
        p = MomentumParams() if params is None else params
        self._params = p
        self.scan = ScanParams(
            short_ma_bars=p.short_ma_bars,
            long_ma_bars=p.long_ma_bars,
            breakout_bars=p.breakout_bars,
            surge_bars=p.surge_bars,
            min_volume=p.min_volume,
            min_traded_value=float(p.min_traded_value),
            max_spread_ticks=p.max_spread_ticks,
            min_price=float(p.min_price),
            max_price=float(p.max_price),
            exclude=frozenset(p.exclude_symbols),
            max_candidates=p.max_candidates,
        )
        self._ranked: tuple[Snapshot, tuple[Candidate, ...]] | None = None  # the last frozen
        self.signals = SignalParams(
            min_score=p.min_score,
            stop_loss_pct=p.stop_loss_pct,
            take_profit_pct=p.take_profit_pct,
            max_hold=timedelta(minutes=p.max_hold_min),
            trend_break_pct=p.trend_break_pct,
            trend_min_hold=timedelta(minutes=p.trend_min_hold_min),
        )

    def __repr__(self) -> str:
        return f"MomentumBreakout({self._params!r})"

    @property
    def params(self) -> MomentumParams:
        return self._params

    @property
    def bars_needed(self) -> int:
        s = self.scan
        return max(s.short_ma_bars, s.long_ma_bars, s.breakout_bars, s.surge_bars)

    @property
    def quote_ma_bars(self) -> int:
        return self.scan.short_ma_bars

    def with_params(self, **changes: Any) -> MomentumBreakout:
        return MomentumBreakout(self._params.replaced(**changes))

    def candidates(self, snap: Snapshot) -> Sequence[Candidate]:
        # A snapshot whose arrays are all read-only cannot change, so the ranking of the last
        # one is kept: a backtest's workers scanning one instant share one (broker.backtest).
        last = self._ranked
        if last is not None and last[0] is snap:
            return last[1]
        ranked = rank_candidates(snap, self.scan)
        if not _read_only(snap):
            return ranked
        self._ranked = (snap, tuple(ranked))
        return self._ranked[1]

    def buy_signal(self, candidate: Candidate) -> str | None:
        return entry_signal(candidate) if evaluate_buy_signal(candidate, self.signals) else None

    def sell_signal(self, position: HeldPosition, quote: Quote, now: datetime) -> SellSignal | None:
        # forced liquidation is the core's rule (strategy.base.sell_signal_at), applied first
        return evaluate_exit_rules(position, quote, now, self.signals)

    def sell_levels(self, position: HeldPosition, quote: Quote, now: datetime) -> SellLevels:
        """The stop-loss / trend-break and take-profit prices (`triggers.HasSellLevels`)."""
        return sell_levels(position, quote, now, self.signals)


def _read_only(snap: Snapshot) -> bool:
    """Every array of `snap` is read-only (so the snapshot cannot change)."""
    return all(
        not value.flags.writeable
        for f in fields(snap)
        if isinstance(value := getattr(snap, f.name), np.ndarray)
    )
