"""Buy and sell rules: pure functions of a candidate / a held position and a quote.

Sell rules, first match wins:
1. forced liquidation: at or after the liquidation start            -> MARKETABLE
2. stop loss: last price <= entry x (1 - STOP_LOSS_PCT / 100)       -> MARKETABLE
3. take profit: last price >= entry x (1 + TAKE_PROFIT_PCT / 100)   -> PASSIVE
4. trend break: last price TREND_BREAK_PCT below the short MA,
   held at least TREND_MIN_HOLD_MIN minutes                        -> MARKETABLE
5. time exit: held for MAX_HOLD_MIN minutes                         -> PASSIVE

Urgency decides the sell order: PASSIVE = limit at the best ask (rests), MARKETABLE = limit at
the best bid (crosses the spread), MARKET = market order. Each retry of an unfilled remainder
escalates one step, so every exit ends as a market order if it must.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from enum import IntEnum, StrEnum

from broker.port import OrderType
from market.ticks import Direction, round_to_tick
from market.types import Quote
from strategy.scan import Candidate


class ExitReason(StrEnum):
    STOP_LOSS = "stop_loss"
    TAKE_PROFIT = "take_profit"
    TREND_BREAK = "trend_break"
    TIME_EXIT = "time_exit"
    FORCED_LIQUIDATION = "forced_liquidation"


class Urgency(IntEnum):
    PASSIVE = 0
    MARKETABLE = 1
    MARKET = 2

    def escalate(self) -> Urgency:
        return Urgency(min(self + 1, Urgency.MARKET))


@dataclass(frozen=True, slots=True)
class SellSignal:
    reason: ExitReason
    urgency: Urgency
    trigger_price: Decimal


@dataclass(frozen=True, slots=True)
class HeldPosition:
    symbol: str
    qty: int
    avg_price: Decimal
    opened_at: datetime


@dataclass(frozen=True, slots=True)
class SignalParams:
    min_score: float = 0.5
    stop_loss_pct: Decimal = Decimal("1.5")
    take_profit_pct: Decimal = Decimal("3.0")
    max_hold: timedelta = timedelta(minutes=90)
    trend_break_pct: Decimal = Decimal("0.5")
    trend_min_hold: timedelta = timedelta(minutes=5)


def evaluate_buy_signal(candidate: Candidate, params: SignalParams) -> bool:
    """Uptrend (fast MA over slow MA), a breakout, and a score at or above the minimum."""
    breakout = candidate.breakout_nbar or candidate.breakout_prev_high
    uptrend = candidate.fast_ma > candidate.slow_ma
    return uptrend and breakout and candidate.score >= params.min_score


def evaluate_sell_signal(
    position: HeldPosition,
    quote: Quote,
    now: datetime,
    params: SignalParams,
    liquidation_start: datetime,
) -> SellSignal | None:
    if now >= liquidation_start:
        return SellSignal(ExitReason.FORCED_LIQUIDATION, Urgency.MARKETABLE, quote.price)
    return evaluate_exit_rules(position, quote, now, params)


def evaluate_exit_rules(
    position: HeldPosition, quote: Quote, now: datetime, params: SignalParams
) -> SellSignal | None:
    """Rules 2-5 (everything but forced liquidation, which the trading core applies first)."""
    price = quote.price
    if price <= position.avg_price * (1 - params.stop_loss_pct / 100):
        return SellSignal(ExitReason.STOP_LOSS, Urgency.MARKETABLE, price)
    if price >= position.avg_price * (1 + params.take_profit_pct / 100):
        return SellSignal(ExitReason.TAKE_PROFIT, Urgency.PASSIVE, price)
    held = now - position.opened_at
    below_ma = quote.short_ma is not None and price < quote.short_ma * (
        1 - params.trend_break_pct / 100
    )
    if below_ma and held >= params.trend_min_hold:
        return SellSignal(ExitReason.TREND_BREAK, Urgency.MARKETABLE, price)
    if held >= params.max_hold:
        return SellSignal(ExitReason.TIME_EXIT, Urgency.PASSIVE, price)
    return None


def _limit_price(price: Decimal, quote: Quote, direction: Direction) -> Decimal:
    """`price` clamped into the day's limits, then onto the grid.

    The limits are grid prices, so rounding a clamped price towards the inside of the band
    cannot leave it: the result is on the grid and inside the limits even if an adapter hands
    us an off-grid bid or ask (invariant 6 does not rest on every adapter being right).
    """
    clamped = min(max(price, quote.lower_limit), quote.upper_limit)
    return round_to_tick(clamped, direction)


def sell_order(urgency: Urgency, quote: Quote) -> tuple[OrderType, Decimal | None]:
    """The order type and limit price that carry out a sell at this urgency."""
    if urgency is Urgency.MARKET:
        return OrderType.MARKET, None
    if urgency is Urgency.PASSIVE:
        return OrderType.LIMIT, _limit_price(quote.ask, quote, "up")
    return OrderType.LIMIT, _limit_price(quote.bid, quote, "down")


def buy_order(quote: Quote) -> tuple[OrderType, Decimal]:
    """Entries are marketable limits at the best ask, never above the upper limit."""
    return OrderType.LIMIT, _limit_price(quote.ask, quote, "up")


SURGE_FOR_LABEL = 1.5


def entry_signal(candidate: Candidate) -> str:
    """A stable label of the entry filters that fired, so tomorrow's tuning can group by it."""
    flags = [
        name
        for name, on in (
            ("nbar_breakout", candidate.breakout_nbar),
            ("prior_high_breakout", candidate.breakout_prev_high),
            ("volume_surge", candidate.surge >= SURGE_FOR_LABEL),
        )
        if on
    ]
    return "+".join(flags) or "momentum"
