"""The strategy port: what the trading core asks of a strategy, and the parameter declaration.

A strategy is a value: its parameters are fixed at construction and `with_params` returns a new
strategy, so a worker can swap parameters between two steps without any shared state. Every
method is a pure function of its arguments (no I/O, no clock, no randomness): the same snapshot
or quote gives the same answer, which is what makes a backtest reproducible.

The core calls, per step:

* SCAN: `candidates(snapshot)` once over the whole universe (numpy arrays, one row per symbol,
  one column per completed one-minute bar, left-padded with NaN closes and 0 volumes), then
  `buy_signal(candidate)` on each ranked candidate, best first; the first one it can lock and
  the buy rule accepts is bought with a marketable limit at the ask.
* HOLD: `sell_signal(position, quote, now)` every hold interval; a signal sells the whole
  position, its `urgency` choosing the order (passive limit, marketable limit, market) and each
  unfilled round escalating one step. Forced liquidation before the close is the core's rule
  (`sell_signal_at`), never left to a strategy. A strategy whose price rules reduce to two
  levels may also offer `sell_levels` (`strategy.triggers.HasSellLevels`), so a holder waits for
  a trade through one instead of polling.

Parameters are a `StrategyParams` model: typed fields with bounds and a description. They come
from (later wins) the defaults, a TOML file of `name = value` lines (`STRATEGY_PARAMS`), and the
environment, under `env_prefix` + the field's name in upper case (`STRATEGY_LOOKBACK_BARS`; the
shipped strategy keeps its historical names such as `STOP_LOSS_PCT`). See `strategy.loading`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar, Protocol, Self, TypeVar, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from market.types import BoolArray, FloatArray, Quote, Snapshot, Tier
from strategy.signals import ExitReason, HeldPosition, SellSignal, Urgency

__all__ = [
    "BasicCandidate",
    "Candidate",
    "ExitReason",
    "HeldPosition",
    "ParamError",
    "SellSignal",
    "Strategy",
    "StrategyParams",
    "Urgency",
    "basic_candidates",
    "sell_signal_at",
    "top_indices",
]


class ParamError(ValueError):
    """A strategy parameter or the strategy itself is invalid; one line naming it."""


class StrategyParams(BaseModel):
    """Base of every strategy's parameters: frozen, unknown names refused, no inf or NaN.

    Declare each parameter as a typed field with its bounds and a description, e.g.
    `lookback_bars: int = Field(20, ge=2, le=390, description="bars in the mean")`; a
    `model_validator` checks relations between fields. `env_prefix` + the upper-case field name
    is the parameter's environment variable.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    #: environment variables of the parameters: prefix + the field name in upper case
    env_prefix: ClassVar[str] = "STRATEGY_"

    @classmethod
    def env_name(cls, field: str) -> str:
        return f"{cls.env_prefix}{field.upper()}"

    @classmethod
    def build(cls, values: dict[str, Any], names: dict[str, str] | None = None) -> Self:
        """Validate `values` (field name -> value, strings parsed); `ParamError` naming the
        first bad one by `names[field]` (default: its environment variable)."""
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise ParamError(_one_line(cls, exc, names or {})) from None

    def replaced(self, **changes: Any) -> Self:
        """A validated copy with `changes` (field name -> value, strings parsed)."""
        return self.build({**self.model_dump(), **changes})


def _one_line(cls: type[StrategyParams], exc: ValidationError, names: dict[str, str]) -> str:
    err = exc.errors()[0]
    loc = [str(p) for p in err.get("loc", ()) if p != ""]
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    given = err.get("input")
    if not loc:  # a relation between fields (model validator): the message names them
        return msg
    field = loc[0]
    name = names.get(field) or (cls.env_name(field) if field in cls.model_fields else field)
    if err.get("type") == "extra_forbidden":
        return f"{name}: not a parameter of this strategy"
    if isinstance(given, str) and len(given) > 40:
        given = given[:37] + "..."
    plain = isinstance(given, str | int | float | Decimal) and "got " not in msg
    shown = f" (got {given!r})" if plain else ""
    return f"{name}: {msg}{shown}"


@runtime_checkable
class Candidate(Protocol):
    """What the core reads of a ranked symbol (a strategy may carry more)."""

    @property
    def symbol(self) -> str: ...
    @property
    def price(self) -> Decimal:
        """The last price the scan saw, in won (the signal price the ledger records)."""

    @property
    def score(self) -> float: ...
    @property
    def tier(self) -> Tier: ...
    @property
    def reasons(self) -> tuple[str, ...]:
        """Why it ranked, in words, for the log."""


C = TypeVar("C", bound=Candidate)


@runtime_checkable
class Strategy(Protocol[C]):
    """A trading strategy. Implementations are immutable values (see the module docstring)."""

    #: the parameter model; `Class()` builds the strategy on the model's defaults
    Params: ClassVar[type[StrategyParams]]

    @property
    def params(self) -> StrategyParams:
        """The parameters this strategy runs on."""

    @property
    def bars_needed(self) -> int:
        """Completed one-minute bars `candidates` reads per symbol (the scan asks for at least
        these; fewer would silently shorten a window)."""

    @property
    def quote_ma_bars(self) -> int:
        """The window of the moving average the HOLD quote carries (`Quote.short_ma`); 0 for
        none."""

    def with_params(self, **changes: Any) -> Strategy[C]:
        """The same strategy on `params` with `changes` (field name -> value; strings are
        parsed as from the environment). Raises `ParamError` naming a bad value."""

    def candidates(self, snap: Snapshot) -> Sequence[C]:
        """Filter and score the whole universe: the symbols worth buying now, best first, ties
        in a fixed order (deterministic), at most the strategy's own cut. Must accept
        NaN-padded bars, halted symbols (`snap.halted`) and an empty universe (-> [])."""

    def buy_signal(self, candidate: C) -> str | None:
        """The entry signal's label when the buy rule accepts `candidate` (stored with the
        order and grouped by in `tuning_entry_signals`), else None."""

    def sell_signal(self, position: HeldPosition, quote: Quote, now: datetime) -> SellSignal | None:
        """Whether to sell `position` now: the reason (an `ExitReason`), the urgency and the
        price that triggered it; None to keep holding. Every strategy has a stop loss: a
        price far below the entry (at the daily limit) must give `ExitReason.STOP_LOSS`."""


def sell_signal_at(
    strategy: Strategy[Any],
    position: HeldPosition,
    quote: Quote,
    now: datetime,
    liquidation_start: datetime,
) -> SellSignal | None:
    """The core's sell rule: forced liquidation from `liquidation_start` on (marketable), then
    the strategy's own rules."""
    if now >= liquidation_start:
        return SellSignal(ExitReason.FORCED_LIQUIDATION, Urgency.MARKETABLE, quote.price)
    return strategy.sell_signal(position, quote, now)


# --- helpers for writing a strategy --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BasicCandidate:
    """A candidate with nothing but what the core reads."""

    symbol: str
    price: Decimal
    score: float
    tier: Tier
    reasons: tuple[str, ...] = ()


def top_indices(snap: Snapshot, mask: BoolArray, scores: FloatArray, k: int) -> list[int]:
    """Rows of `snap` where `mask` holds, best `scores` first, ties by symbol, at most `k`.

    NaN scores never rank (treat "no score" as "not a candidate"). Vectorized: only the rows
    that can make the cut are sorted by symbol.
    """
    idx = np.flatnonzero(mask & ~np.isnan(scores))
    if idx.size == 0 or k < 1:
        return []
    best = scores[idx]
    if idx.size > k:
        kth = -np.partition(-best, k - 1)[k - 1]
        keep = best >= kth
        idx, best = idx[keep], best[keep]
    symbols = np.asarray([snap.symbols[i] for i in idx])
    # lexsort: the last key is primary -> score descending, then symbol ascending
    return [int(i) for i in idx[np.lexsort((symbols, -best))][:k]]


def basic_candidates(
    snap: Snapshot, mask: BoolArray, scores: FloatArray, k: int, reason: str = ""
) -> list[BasicCandidate]:
    """`top_indices` as `BasicCandidate`s priced at the last price (whole won)."""
    return [
        BasicCandidate(
            symbol=snap.symbols[i],
            price=Decimal(round(float(snap.price[i]))),
            score=float(scores[i]),
            tier=Tier(int(snap.tier[i])),
            reasons=(reason,) if reason else (),
        )
        for i in top_indices(snap, mask, scores, k)
    ]
