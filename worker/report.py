"""Human-readable and JSON renderings of a day's summary."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from ledger.records import DaySummaryRecord, SummaryFigures


def summary_table(record: DaySummaryRecord) -> str:
    """The day's figures per worker and in total, as a fixed-width table."""
    header = (
        f"{'worker':<38} {'trades':>6} {'win rate':>8} {'PnL (won)':>14} "
        f"{'avg PnL':>12} {'max loss':>12}"
    )
    rule = "-" * len(header)
    rows = [header, rule]
    for worker_id, figures in sorted(record.by_worker.items()):
        rows.append(_row(worker_id, figures))
    rows.append(rule)
    rows.append(_row("TOTAL", record.total))
    return "\n".join(rows)


def _row(name: str, figures: SummaryFigures) -> str:
    d = figures.summary
    return (
        f"{name[:38]:<38} {d.trades_count:>6} {float(d.win_rate) * 100:>7.1f}% "
        f"{d.pnl:>+14,.0f} {d.avg_pnl:>+12,.0f} {d.max_loss:>+12,.0f}"
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
