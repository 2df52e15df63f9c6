"""`python -m worker report`: one self-contained HTML file over a range of trading days.

The page holds plotly.js inline (~4.8 MB) and one interactive chart per section (zoom, hover,
PNG export), so it opens from disk with no network. Sections: the headline figures and the
days (summary = trades = fills, Invariant 3), equity and drawdown, PnL per worker, the trades
(with a table: entry, exit, reason, slippage), exit reasons, forced-exit cost, slippage by
liquidity tier, and lock activity over the day. A section with nothing to show (e.g. no forced
exits) says so instead of drawing an empty chart. Every figure is read from the ledger
(`ledger.reporting`, one snapshot) and computed in `worker.report_data`.

The command: `--date D`, or `--from D [--to D]` (`--to` defaults to today in Asia/Seoul), or
neither (the latest day with an order in the ledger). Exit 0 with the file written; 2 for bad
arguments (one line); 1 when the range holds no orders or trades (one line naming
the latest day that has some; no file written) or on a runtime failure.

plotly is imported only when a page is rendered (the `workbench` extra).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.db import create_engine
from ledger.reporting import latest_day, read_report_rows
from market.clock import KST
from worker.report_data import ReportData, build_report

if TYPE_CHECKING:
    from worker.report_charts import Section
    from worker.settings import Settings


class NoReportData(ValueError):
    """The range holds no orders or trades: there is nothing to report."""


async def write_report(
    source: AsyncEngine | str,
    days: Sequence[date],
    out_path: str | os.PathLike[str],
    *,
    title: str | None = None,
) -> ReportData:
    """Write the report over min(days)..max(days) to `out_path` and return its figures.

    `source` is an engine on the ledger or its URL (an engine is then made and disposed of
    here). Raises `NoReportData` when the range holds nothing.
    """
    if not days:
        raise ValueError("write_report needs at least one day")
    first, last = min(days), max(days)
    engine = create_engine(source) if isinstance(source, str) else source
    try:
        rows = await read_report_rows(engine, first, last)
    finally:
        if isinstance(source, str):
            await engine.dispose()
    if not rows.days:
        raise NoReportData(f"no orders or trades recorded {_span(first, last)}")
    data = build_report(rows)
    page = render_html(data, title)
    await anyio.Path(out_path).write_text(page, encoding="utf-8")
    return data


# --- the page ----------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#1f2933;
background:#f5f7fa}
header{background:#1f2933;color:#fff;padding:18px 28px}header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;color:#cbd2d9}main{max-width:1180px;margin:0 auto;padding:12px 20px}
section{background:#fff;border:1px solid #e4e7eb;border-radius:6px;margin:14px 0;
padding:12px 18px}h2{font-size:16px;margin:4px 0 6px}.caption{color:#52606d;margin:0 0 8px}
.kpis{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:8px}
.kpi{background:#f5f7fa;border-radius:4px;padding:6px 10px}.kpi b{display:block;font-size:17px}
.kpi span{color:#52606d;font-size:12px}table{border-collapse:collapse;width:100%;font-size:12.5px}
th,td{padding:3px 8px;border-bottom:1px solid #e4e7eb;text-align:right;white-space:nowrap}
th{background:#f5f7fa;position:sticky;top:0}td.l,th.l{text-align:left}.neg{color:#c81e1e}
.pos{color:#0e7c3a}td.wrap{white-space:normal;min-width:12em}
.empty{color:#7b8794;font-style:italic}details summary{cursor:pointer;margin:8px 0}
.scroll{max-height:520px;overflow:auto}
"""

_CONFIG = {"displaylogo": False, "responsive": True}


def render_html(data: ReportData, title: str | None = None) -> str:
    """The whole page as one string: plotly.js inline, one chart per section with data."""
    from plotly.offline import get_plotlyjs

    from worker import report_charts as charts

    span = _span(data.first, data.last)
    heading = title or f"tradefleet report {span}"
    summary = (
        '<section id="summary"><h2>Summary</h2>'
        f'<p class="caption">{escape(_SUMMARY_CAPTION)}</p>{_kpis(data)}{_days(data)}</section>'
    )
    sections = [summary]
    for section in charts.SECTIONS:
        extra = _trades(data) if section.key == "trades" else ""
        sections.append(_section(section, section.draw(data), extra))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(heading)}</title><style>{_CSS}</style>"
        f'<script type="text/javascript">{get_plotlyjs()}</script></head><body>'
        f"<header><h1>{escape(heading)}</h1><p>{len(data.days)} trading day(s) with activity, "
        "times in Asia/Seoul (KST), money in won</p></header><main>"
        + "".join(sections)
        + "</main></body></html>\n"
    )


def _section(section: Section, fig: Any | None, extra: str) -> str:
    if fig is None:
        body = f'<p class="empty">{escape(section.empty)}</p>'
    else:
        import plotly.io as pio

        html = pio.to_html(
            fig,
            full_html=False,
            include_plotlyjs=False,
            div_id=f"chart-{section.key}",
            config=_CONFIG,
            default_height=f"{fig.layout.height or 380}px",
        )
        body = f'<div class="chart" data-section="{section.key}">{html}</div>'
    return (
        f'<section id="{section.key}"><h2>{escape(section.heading)}</h2>'
        f'<p class="caption">{escape(section.caption)}</p>{body}{extra}</section>'
    )


_SUMMARY_CAPTION = (
    "Realized PnL is after fees and taxes. Per day, the PnL of the trades, the stored daily "
    "summary and the PnL recomputed from the fills must agree to the won."
)


def _kpis(data: ReportData) -> str:
    t = data.total
    pf = t.profit_factor
    items = [
        ("Realized PnL", won(t.pnl), t.pnl),
        ("Trades", f"{t.trades:,}", None),
        ("Win rate", f"{float(t.win_rate) * 100:.1f}%", None),
        ("Profit factor", "n/a" if pf is None else f"{float(pf):.2f}", None),
        ("Max drawdown", won(data.max_drawdown), data.max_drawdown),
        ("Fees", f"{t.fees:,}", None),
        ("Taxes", f"{t.taxes:,}", None),
        ("Slippage (cost)", won(data.slippage_total), -data.slippage_total),
        ("Forced-exit shortfall (cost)", won(data.forced_shortfall), -data.forced_shortfall),
        ("PnL of forced exits", won(data.forced_pnl), data.forced_pnl),
    ]
    cells = "".join(
        f'<div class="kpi"><b class="{_sign(v)}">{escape(text)}</b><span>{escape(label)}'
        "</span></div>"
        for label, text, v in items
    )
    return f'<div class="kpis">{cells}</div>'


def _days(data: ReportData) -> str:
    names = ["day", "trades", "wins", "PnL", "fees", "taxes", "stored summary", "from fills",
             "slippage (cost)", "check"]  # fmt: skip
    rows = []
    for d in data.day_rows:
        f = d.figures
        agree = d.pnl_from_fills == f.pnl and d.stored_pnl in (None, f.pnl)
        check = "matches" if d.stored_pnl is not None else "not summarized"
        rows.append([
            _Cell(d.day.isoformat(), "l"), _Cell(f"{f.trades:,}"), _Cell(f"{f.wins:,}"),
            _pnl(f.pnl), _Cell(f"{f.fees:,}"), _Cell(f"{f.taxes:,}"),
            _Cell("—") if d.stored_pnl is None else _pnl(d.stored_pnl),
            _pnl(d.pnl_from_fills), _cost(d.slippage),
            _Cell(check, "l") if agree else _Cell("DOES NOT MATCH", "l neg"),
        ])  # fmt: skip
    note = (
        f'<p class="caption">{data.open_fills} fill(s) belong to positions not closed in '
        "this range.</p>"
        if data.open_fills
        else ""
    )
    return _table("days", names, rows) + note


def _trades(data: ReportData) -> str:
    if not data.trades:
        return ""
    names = ["#", "day", "worker", "symbol", "qty", "entry", "entry price", "exit", "exit price",
             "held", "PnL", "slippage (cost)", "exit reason", "entry signal"]  # fmt: skip
    rows = []
    for i, r in enumerate(data.trades, 1):
        t = r.trade
        minutes = (t.closed_at - t.opened_at).total_seconds() / 60
        rows.append([
            _Cell(str(i)), _Cell(t.trading_day.isoformat(), "l"),
            _Cell(data.names[t.worker_id], "l"), _Cell(t.symbol, "l"), _Cell(f"{t.qty:,}"),
            _Cell(_hms(t.opened_at)), _Cell(price(r.entry_price)), _Cell(_hms(t.closed_at)),
            _Cell(price(r.exit_price)), _Cell(f"{minutes:.0f} min"), _pnl(t.pnl),
            _cost(r.slippage), _Cell(t.exit_reason or "?", "l"),
            _Cell(t.entry_reason or "?", "l wrap"),
        ])  # fmt: skip
    return (
        f"<details><summary>All {len(data.trades):,} trades</summary>"
        f'<div class="scroll">{_table("trades", names, rows)}</div></details>'
    )


def _table(cls: str, names: Sequence[str], rows: Sequence[Sequence[_Cell]]) -> str:
    """A table whose headers align like the first row's cells."""
    first = rows[0] if rows else []
    head = "".join(
        f'<th class="l">{escape(n)}</th>'
        if i < len(first) and "l" in first[i].cls.split()
        else f"<th>{escape(n)}</th>"
        for i, n in enumerate(names)
    )
    body = "".join(_tr(r) for r in rows)
    return f'<table class="{cls}"><tr>{head}</tr>{body}</table>'


@dataclass(frozen=True, slots=True)
class _Cell:
    text: str
    cls: str = ""


def _pnl(v: Decimal) -> _Cell:
    """Money that adds to the PnL: green when positive."""
    return _Cell(won(v), _sign(v))


def _cost(v: Decimal) -> _Cell:
    """A cost (positive = paid): red when positive."""
    return _Cell(won(v), _sign(-v))


def _tr(cells: Sequence[_Cell]) -> str:
    out = "".join(
        f'<td class="{c.cls}">{escape(c.text)}</td>' if c.cls else f"<td>{escape(c.text)}</td>"
        for c in cells
    )
    return f"<tr>{out}</tr>"


def won(v: Decimal) -> str:
    """Signed won with thousands separators, to the won: +1,234 / -56 / 0."""
    return "0" if v == 0 else f"{v:+,.0f}"


def price(v: Decimal) -> str:
    return f"{v:,.2f}".rstrip("0").rstrip(".")


def _sign(v: Decimal | None) -> str:
    if v is None or v == 0:
        return ""
    return "pos" if v > 0 else "neg"


def _hms(at: datetime) -> str:
    return at.astimezone(KST).strftime("%H:%M:%S")


def _span(first: date, last: date) -> str:
    return f"on {first}" if first == last else f"from {first} to {last}"


# --- the command -------------------------------------------------------------------------------


def report_command(settings: Settings, args: argparse.Namespace) -> int:
    """`report` from its parsed arguments (`--date`, `--from`, `--to`, `--out`)."""
    return report(
        settings,
        day=args.date,
        first=args.first,
        last=args.last,
        out=args.out,
        prog=args.report_prog,
    )


def report(
    settings: Settings,
    *,
    day: date | None,
    first: date | None,
    last: date | None,
    out: str,
    prog: str,
) -> int:
    """`report`: check the arguments (exit 2), read the ledger, write the page."""

    def bad(message: str) -> int:
        sys.stderr.write(f"{prog}: error: {message}\n")
        return 2

    if day is not None and (first is not None or last is not None):
        return bad("--date cannot be combined with --from/--to")
    if first is None and last is not None:
        return bad("--to needs --from")
    if first is not None:
        last = last or datetime.now(KST).date()
        if first > last:
            return bad(f"--from {first} is after --to {last}")
    target = Path(out)
    if not target.parent.is_dir():
        return bad(f"--out: folder {target.parent} does not exist")
    if target.is_dir():
        return bad(f"--out: {target} is a folder")
    try:
        import plotly  # noqa: F401
    except ModuleNotFoundError:
        sys.stderr.write(
            f"{prog}: error: plotly is not installed (pip install 'tradefleet[workbench]')\n"
        )
        return 1
    if day is not None:
        first = last = day
    return anyio.run(_report, settings, first, last, target, prog)


async def _report(
    settings: Settings, first: date | None, last: date | None, out: Path, prog: str
) -> int:
    from ledger.db import wait_ready
    from worker.schema import check_schema

    assert settings.database_url
    await wait_ready(settings.database_url, attempts=settings.connect_attempts)
    engine = create_engine(settings.database_url)
    try:
        await check_schema(engine)
        if first is None or last is None:
            latest = await latest_day(engine)
            if latest is None:
                sys.stderr.write(f"{prog}: no orders recorded in the ledger: no report written\n")
                return 1
            first = last = latest
        try:
            data = await write_report(engine, [first, last], out)
        except NoReportData as exc:
            latest = await latest_day(engine)
            hint = f" (latest day with orders: {latest})" if latest else ""
            sys.stderr.write(f"{prog}: {exc}{hint}: no report written\n")
            return 1
    finally:
        await engine.dispose()
    size_mb = (await anyio.Path(out).stat()).st_size / 1e6
    print(
        f"report {_span(data.first, data.last)}: {data.total.trades:,} trades, "
        f"PnL {won(data.total.pnl)} won -> {out} ({size_mb:.1f} MB)"
    )
    return 0
