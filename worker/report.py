"""Human-readable and JSON renderings of a day's summary."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from ledger.records import DaySummaryRecord, SummaryFigures


def summary_table(record: DaySummaryRecord) -> str:
    """The day's figures per worker and in total, as a fixed-width table.

    PnL is net: each trade's sells minus its buys, fees (commission) and taxes (securities
    transaction and rural special tax), which have their own columns; the last line gives the
    PnL before them."""
    names = [*record.by_worker, "TOTAL"]
    width = min(max(len("worker"), *(len(n) for n in names)), 38)
    header = (
        f"{'worker':<{width}} {'trades':>6} {'win rate':>8} {'PnL (won)':>14} "
        f"{'fees':>11} {'taxes':>11} {'avg PnL':>12} {'max loss':>12}"
    )
    rule = "-" * len(header)
    rows = [header, rule]
    for worker_id, figures in sorted(record.by_worker.items()):
        rows.append(_row(worker_id, figures, width))
    rows.append(rule)
    rows.append(_row("TOTAL", record.total, width))
    total = record.total
    gross = total.summary.pnl + total.fees + total.taxes
    rows.append(
        f"PnL is after fees and taxes: {gross:+,.0f} won before them, "
        f"{total.fees:,.0f} fees, {total.taxes:,.0f} taxes"
    )
    return "\n".join(rows)


def _row(name: str, figures: SummaryFigures, width: int) -> str:
    d = figures.summary
    return (
        f"{name[:width]:<{width}} {d.trades_count:>6} {float(d.win_rate) * 100:>7.1f}% "
        f"{d.pnl:>+14,.0f} {figures.fees:>11,.0f} {figures.taxes:>11,.0f} "
        f"{d.avg_pnl:>+12,.0f} {d.max_loss:>+12,.0f}"
    )


def summary_dict(record: DaySummaryRecord, pnl_from_fills: Decimal) -> dict[str, Any]:
    """The summary as JSON-ready data (money as strings, exact)."""

    def figures(f: SummaryFigures) -> dict[str, Any]:
        d = f.summary
        return {
            "pnl": str(d.pnl),
            "win_rate": str(d.win_rate),
            "avg_pnl": str(d.avg_pnl),
            "max_loss": str(d.max_loss),
            "trades_count": d.trades_count,
            "wins": d.wins,
            "fees": str(f.fees),
            "taxes": str(f.taxes),
        }

    return {
        "date": record.trading_day.isoformat(),
        "total": figures(record.total),
        "workers": {w: figures(f) for w, f in sorted(record.by_worker.items())},
        "pnl_from_fills": str(pnl_from_fills),
        "computed_at": record.computed_at.isoformat(),
    }
