"""The report's plotly figures, one per section; None where a section has nothing to draw.

Times are drawn in Asia/Seoul wall time; over several days the time axes skip the nights,
weekends and the weekdays with no activity (plotly range breaks), so the days sit side by side.
Money is converted to float only here, for drawing; hover texts show the exact won.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from market.clock import KST
from market.types import Tier
from worker.report_data import LOCK_BUCKET, LOCK_KINDS, ReportData

EQUITY_CAPTION = (
    "Realized PnL after fees and taxes, summed over the trades closed so far (a step at each "
    "close), and its drawdown from the running peak."
)
WORKERS_CAPTION = "Realized PnL per worker over the range; hover for trades and win rate."
TRADES_CAPTION = (
    "Each closed trade at its exit time: PnL by exit reason. The table lists entry, exit, "
    "reason and slippage (won against the signal price, positive = cost)."
)
EXITS_CAPTION = "Trades and realized PnL by exit reason (tuning_exit_reasons)."
FORCED_CAPTION = (
    "What the forced liquidation before the close cost: the shortfall of its sells against "
    "their signal prices (signal price x qty - proceeds, positive = cost) and the PnL of the "
    "trades it closed (tuning_forced_exits)."
)
SLIPPAGE_CAPTION = (
    "Fill prices against the signal price by liquidity tier and side, in basis points of the "
    "notional (positive = cost to us; tuning_slippage over the range)."
)
LOCKS_CAPTION = (
    "Symbol locks held by the fleet, and lock events per 10 minutes: 'changed hands' is a "
    "grant of a symbol another worker held earlier that day; expired, recovered and lost "
    "grants are a holder that stopped renewing. Refused acquisitions are counted by the "
    "workers' metrics (tradefleet_lock_contention_total), not in the ledger."
)

_GREEN, _RED, _BLUE, _GREY = "#0e7c3a", "#c81e1e", "#2563eb", "#9aa5b1"
_REASON_COLORS = {
    "take_profit": _GREEN,
    "stop_loss": _RED,
    "trend_break": "#d97706",
    "time_exit": "#7c3aed",
    "forced_liquidation": "#0f172a",
}
_LOCK_COLORS = {
    "acquired": "#93c5fd",
    "changed hands": "#f59e0b",
    "released": "#cbd2d9",
    "expired": "#dc2626",
    "recovered": "#7c3aed",
    "lost": "#111827",
}


def _t(at: datetime) -> datetime:
    """Asia/Seoul wall time, naive: plotly.js draws naive times as they are."""
    return at.astimezone(KST).replace(tzinfo=None)


def _f(v: Decimal) -> float:
    return float(v)


def _won(v: Decimal) -> str:
    return "0" if v == 0 else f"{v:+,.0f}"


def _layout(fig: go.Figure, height: int, **kw: Any) -> go.Figure:
    fig.update_layout(
        template="plotly_white",
        height=height,
        margin={"l": 70, "r": 20, "t": 30, "b": 40},
        legend={"orientation": "h", "y": 1.12, "x": 0},
        hovermode="closest",
        **kw,
    )
    return fig


def _time_axes(fig: go.Figure, days: Sequence[date]) -> None:
    """Over several days: hide nights, weekends and weekdays without activity."""
    if len(days) < 2:
        return
    have = set(days)
    idle = [
        (days[0] + timedelta(d)).isoformat()
        for d in range((days[-1] - days[0]).days)
        if (days[0] + timedelta(d)).weekday() < 5 and days[0] + timedelta(d) not in have
    ]
    breaks: list[dict[str, Any]] = [
        {"bounds": ["sat", "mon"]},
        {"bounds": [16, 8.5], "pattern": "hour"},
    ]
    if idle:
        breaks.append({"values": idle})
    fig.update_xaxes(rangebreaks=breaks)


def equity(data: ReportData) -> go.Figure | None:
    if len(data.equity) < 2:
        return None
    xs = [_t(p.at) for p in data.equity]
    fig = make_subplots(
        rows=2, cols=1, shared_xaxes=True, row_heights=[0.68, 0.32], vertical_spacing=0.06
    )
    fig.add_trace(
        go.Scatter(
            x=xs,
            y=[_f(p.equity) for p in data.equity],
            name="equity",
            mode="lines",
            line_shape="hv",
            line={"color": _BLUE, "width": 2},
            text=[_won(p.equity) for p in data.equity],
            hovertemplate="%{x|%m-%d %H:%M:%S}<br>equity %{text} won<extra></extra>",
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Scatter(
            x=xs,
            y=[_f(p.drawdown) for p in data.equity],
            name="drawdown",
            mode="lines",
            line_shape="hv",
            fill="tozeroy",
            line={"color": _RED, "width": 1},
            text=[_won(p.drawdown) for p in data.equity],
            hovertemplate="%{x|%m-%d %H:%M:%S}<br>drawdown %{text} won<extra></extra>",
        ),
        row=2,
        col=1,
    )
    fig.update_yaxes(title_text="won", tickformat=",.0f", row=1, col=1)
    fig.update_yaxes(title_text="drawdown", tickformat=",.0f", row=2, col=1)
    _time_axes(fig, data.days)
    return _layout(fig, 440)


def workers(data: ReportData) -> go.Figure | None:
    if not data.workers:
        return None
    names = list(data.workers)
    figs = list(data.workers.values())
    fig = go.Figure(
        go.Bar(
            x=[data.names[n] for n in names],
            y=[_f(f.pnl) for f in figs],
            marker_color=[_GREEN if f.pnl >= 0 else _RED for f in figs],
            customdata=[
                [
                    n,
                    f.trades,
                    f"{float(f.win_rate) * 100:.1f}%",
                    _won(f.pnl),
                    _won(-f.fees - f.taxes),
                ]
                for n, f in zip(names, figs, strict=True)
            ],
            hovertemplate="%{customdata[0]}<br>PnL %{customdata[3]} won<br>"
            "%{customdata[1]} trades, win rate %{customdata[2]}<br>"
            "fees and taxes %{customdata[4]} won<extra></extra>",
        )
    )
    fig.update_yaxes(title_text="won", tickformat=",.0f")
    fig.update_xaxes(title_text="worker", type="category")
    return _layout(fig, 340, showlegend=False)


def trades(data: ReportData) -> go.Figure | None:
    if not data.trades:
        return None
    fig = go.Figure()
    for reason in _ordered({r.trade.exit_reason or "?" for r in data.trades}):
        rows = [r for r in data.trades if (r.trade.exit_reason or "?") == reason]
        fig.add_trace(
            go.Scatter(
                x=[_t(r.trade.closed_at) for r in rows],
                y=[_f(r.trade.pnl) for r in rows],
                mode="markers",
                name=reason,
                marker={"color": _REASON_COLORS.get(reason, _GREY), "size": 8, "opacity": 0.8},
                customdata=[
                    [
                        r.trade.symbol,
                        data.names[r.trade.worker_id],
                        _t(r.trade.opened_at).strftime("%H:%M:%S"),
                        _won(r.trade.pnl),
                        _won(r.slippage),
                        r.trade.qty,
                    ]
                    for r in rows
                ],
                hovertemplate="%{customdata[0]} x%{customdata[5]} (worker %{customdata[1]})"
                "<br>%{customdata[2]} -> %{x|%H:%M:%S}<br>PnL %{customdata[3]} won, "
                "slippage %{customdata[4]} won<extra>%{fullData.name}</extra>",
            )
        )
    fig.add_hline(y=0, line={"color": _GREY, "width": 1})
    fig.update_yaxes(title_text="PnL (won)", tickformat=",.0f")
    _time_axes(fig, data.days)
    return _layout(fig, 380)


def exit_reasons(data: ReportData) -> go.Figure | None:
    if not data.exit_reasons:
        return None
    rows = data.exit_reasons
    names = [r.exit_reason for r in rows]
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("trades", "realized PnL (won)"),
        shared_yaxes=True,
        horizontal_spacing=0.04,
    )
    colors = [_REASON_COLORS.get(n, _GREY) for n in names]
    fig.add_trace(
        go.Bar(
            y=names,
            x=[r.trades for r in rows],
            orientation="h",
            marker_color=colors,
            customdata=[[r.wins] for r in rows],
            hovertemplate="%{y}: %{x} trades, %{customdata[0]} wins<extra></extra>",
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Bar(
            y=names,
            x=[_f(r.pnl) for r in rows],
            orientation="h",
            marker_color=colors,
            customdata=[[_won(r.pnl), _won(r.worst)] for r in rows],
            hovertemplate="%{y}: PnL %{customdata[0]} won, worst trade %{customdata[1]} won"
            "<extra></extra>",
        ),
        row=1,
        col=2,
    )
    fig.update_xaxes(tickformat=",.0f", row=1, col=2)
    _layout(fig, 300, showlegend=False)
    fig.update_layout(margin={"l": 140})
    return fig


def forced(data: ReportData) -> go.Figure | None:
    if not data.forced_exits:
        return None
    rows = data.forced_exits
    days = [r.trading_day.isoformat() for r in rows]
    fig = go.Figure()
    fig.add_trace(
        go.Bar(
            x=days,
            y=[_f(r.shortfall_won) for r in rows],
            name="shortfall (cost)",
            marker_color="#d97706",
            customdata=[[_won(r.shortfall_won), r.symbols, r.qty] for r in rows],
            hovertemplate="%{x}: %{customdata[0]} won over %{customdata[1]} symbols, "
            "%{customdata[2]} shares<extra>shortfall</extra>",
        )
    )
    fig.add_trace(
        go.Bar(
            x=days,
            y=[_f(r.trades_pnl) for r in rows],
            name="PnL of the trades it closed",
            marker_color=[_GREEN if r.trades_pnl >= 0 else _RED for r in rows],
            customdata=[[_won(r.trades_pnl)] for r in rows],
            hovertemplate="%{x}: %{customdata[0]} won<extra>trades</extra>",
        )
    )
    fig.update_xaxes(type="category")
    fig.update_yaxes(title_text="won", tickformat=",.0f")
    return _layout(fig, 320, barmode="group")


def slippage(data: ReportData) -> go.Figure | None:
    rows = [r for r in data.slippage if r.bps is not None]
    if not rows:
        return None
    fig = go.Figure()
    for side, color in (("BUY", _BLUE), ("SELL", "#d97706")):
        mine = [r for r in rows if r.side.value == side]
        if not mine:
            continue
        fig.add_trace(
            go.Bar(
                x=[_tier(r.tier) for r in mine],
                y=[float(r.bps or 0) for r in mine],
                name=side,
                marker_color=color,
                customdata=[[_won(r.slippage_won), r.orders, r.qty] for r in mine],
                hovertemplate="tier %{x}, " + side + ": %{y:.1f} bp = %{customdata[0]} won"
                "<br>%{customdata[1]} orders, %{customdata[2]} shares<extra></extra>",
            )
        )
    order = [_tier(t) for t in sorted({r.tier for r in rows}, key=lambda t: -1 if t is None else t)]
    fig.update_xaxes(
        title_text="liquidity tier", type="category", categoryorder="array", categoryarray=order
    )
    fig.update_yaxes(title_text="basis points", zeroline=True)
    return _layout(fig, 320, barmode="group")


def locks(data: ReportData) -> go.Figure | None:
    if not data.locks_held:
        return None
    fig = make_subplots(
        rows=2, cols=1, shared_xaxes=True, row_heights=[0.45, 0.55], vertical_spacing=0.08
    )
    fig.add_trace(
        go.Scatter(
            x=[_t(at) for at, _ in data.locks_held],
            y=[n for _, n in data.locks_held],
            name="locks held",
            mode="lines",
            line_shape="hv",
            line={"color": _BLUE},
            hovertemplate="%{x|%H:%M:%S}: %{y} held<extra></extra>",
        ),
        row=1,
        col=1,
    )
    starts = [_t(b.start) for b in data.lock_buckets]
    for kind in LOCK_KINDS:
        counts = [b.counts[kind] for b in data.lock_buckets]
        if not any(counts):
            continue
        fig.add_trace(
            go.Bar(
                x=starts,
                y=counts,
                name=kind,
                marker_color=_LOCK_COLORS[kind],
                width=LOCK_BUCKET.total_seconds() * 1000 * 0.9,
                offset=0,
                hovertemplate="%{x|%H:%M} +10 min: %{y} " + kind + "<extra></extra>",
            ),
            row=2,
            col=1,
        )
    fig.update_yaxes(title_text="held", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(title_text="events / 10 min", row=2, col=1)
    _time_axes(fig, data.days)
    return _layout(fig, 420, barmode="stack", bargap=0.1)


def _tier(tier: int | None) -> str:
    if tier is None:
        return "?"
    try:
        return Tier(tier).name
    except ValueError:
        return str(tier)


def _ordered(reasons: Iterable[str]) -> list[str]:
    known = list(_REASON_COLORS)
    return sorted(reasons, key=lambda r: (known.index(r) if r in known else len(known), r))


@dataclass(frozen=True, slots=True)
class Section:
    """One section of the page under its chart: `draw` returns None when it has nothing to
    draw, and the page shows `empty` instead."""

    key: str
    heading: str
    caption: str
    draw: Callable[[ReportData], go.Figure | None]
    empty: str


SECTIONS = (
    Section("equity", "Equity and drawdown", EQUITY_CAPTION, equity, "No trade closed."),
    Section("workers", "PnL per worker", WORKERS_CAPTION, workers, "No trade closed."),
    Section("trades", "Trades", TRADES_CAPTION, trades, "No trade closed."),
    Section("exits", "Exit reasons", EXITS_CAPTION, exit_reasons, "No trade closed."),
    Section("forced", "Forced-exit cost", FORCED_CAPTION, forced, "No forced liquidation."),
    Section(
        "slippage",
        "Slippage by tier",
        SLIPPAGE_CAPTION,
        slippage,
        "No filled order with a signal price.",
    ),
    Section(
        "locks",
        "Lock contention",
        LOCKS_CAPTION,
        locks,
        "No lock event recorded for these days' orders.",
    ),
)
