"""Backtest figures (ledger/stats.py): pure functions over closed trades."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal

from ledger.records import TradeRecord
from ledger.stats import DayInput, day_figures, max_drawdown, sharpe, total_figures
from market.clock import KST

D1, D2 = date(2026, 3, 9), date(2026, 3, 10)


def trade(n: int, pnl: int, day: date = D1, held_min: int = 30, close_min: int = 60) -> TradeRecord:
    closed = datetime.combine(day, datetime.min.time(), tzinfo=KST) + timedelta(
        hours=9, minutes=close_min
    )
    return TradeRecord(
        id=n, position_id=n, worker_id="w1", symbol="005930", qty=1,
        buy_amount=Decimal(10_000), sell_amount=Decimal(10_000 + pnl), fees=Decimal(3),
        taxes=Decimal(20), pnl=Decimal(pnl), opened_at=closed - timedelta(minutes=held_min),
        closed_at=closed, exit_reason="take_profit", entry_reason=None, trading_day=day,
    )  # fmt: skip


def test_day_figures() -> None:
    trades = [trade(1, 300, close_min=10), trade(2, -100, close_min=20),
              trade(3, -200, close_min=30), trade(4, 100, close_min=40)]  # fmt: skip
    f = day_figures(DayInput(D1, trades, session_seconds=6 * 3600, workers=2,
                             forced_exit_cost=Decimal(7)))  # fmt: skip
    assert (f.trades, f.wins, f.losses) == (4, 2, 2)
    assert (f.pnl, f.fees, f.taxes) == (Decimal(100), Decimal(12), Decimal(80))
    assert f.win_rate == Decimal("0.5000")
    assert (f.avg_win, f.avg_loss) == (Decimal(200), Decimal(-150))
    assert f.profit_factor == Decimal("1.3333")
    assert f.max_drawdown == Decimal(300)  # 300 -> 0
    assert f.sharpe is None  # one day
    assert f.exposure == Decimal("0.1667")  # 4 x 30 min over 2 x 6 h
    assert f.forced_exit_cost == Decimal(7)


def test_trades_are_taken_in_closing_order() -> None:
    late_loss, early_win = trade(1, -500, close_min=50), trade(2, 400, close_min=10)
    f = day_figures(DayInput(D1, [late_loss, early_win], 3600, 1))
    assert f.max_drawdown == Decimal(500)  # +400, then -500 from the peak


def test_no_trades_and_no_losses() -> None:
    empty = day_figures(DayInput(D1, [], 3600, 1))
    assert (empty.trades, empty.win_rate, empty.avg_win, empty.profit_factor) == (0, None, None,
                                                                                  None)  # fmt: skip
    assert empty.exposure == 0
    assert empty.max_drawdown == 0
    winners = day_figures(DayInput(D1, [trade(1, 10)], 3600, 1))
    assert winners.profit_factor is None
    assert winners.avg_loss is None


def test_total_runs_the_drawdown_across_days_and_a_daily_sharpe() -> None:
    d1 = DayInput(D1, [trade(1, 1_000)], 3600, 1)
    d2 = DayInput(D2, [trade(2, -300, day=D2), trade(3, 100, day=D2)], 3600, 1)
    t = total_figures([d2, d1])
    assert t.pnl == Decimal(800)
    assert t.trades == 3
    assert t.max_drawdown == Decimal(300)
    assert t.sharpe == sharpe([Decimal(1_000), Decimal(-200)])
    assert t.exposure == Decimal("0.7500")


def test_helpers() -> None:
    assert max_drawdown([Decimal(x) for x in (-5, 10, -3, -4, 2)]) == Decimal(7)
    assert sharpe([Decimal(1)]) is None
    assert sharpe([Decimal(2), Decimal(2)]) is None
    # mean 2, sample stdev 1: 2 x sqrt(252)
    assert sharpe([Decimal(1), Decimal(2), Decimal(3)]) == Decimal("31.7490")
    assert day_figures(DayInput(D1, [trade(1, 5)], 3600, 1)).as_dict()["sharpe"] is None
