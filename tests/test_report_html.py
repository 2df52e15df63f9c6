"""The HTML report: its figures equal the ledger's to the won, the command's arguments and exit
codes, and the page in a real headless Chromium (Debian's, no download) with the network cut:
no console or page errors, every section's chart drawn.

The ledger is written through the real `Ledger` API on a real Postgres: two days, two workers,
five round trips (one with a partial fill, one forced liquidation, one symbol changing hands),
lock grants mirrored with the wall clock as the workers mirror them.
"""

from __future__ import annotations

import shutil
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import anyio
import pytest
from support import sql

from broker.port import BrokerOrderId, ClientOrderId, OrderStatus, OrderType, Side
from ledger.db import create_engine
from ledger.records import OrderIntent, OrderRecord
from ledger.reporting import ReportRows, on_trading_clock, read_report_rows
from ledger.repository import Ledger
from market.clock import KST
from market.costs import CostModel
from market.types import Board
from worker.report_data import ReportData, build_report, short_names

D = Decimal
DAY1, DAY2 = date(2026, 11, 24), date(2026, 11, 25)
ALPHA, BETA = "w-alpha-0001", "w-beta-0002"
CHROMIUM = "/usr/bin/chromium"
_seq = iter(range(1, 1_000_000))


def _at(day: date, hh: int, mm: int) -> datetime:
    return datetime(day.year, day.month, day.day, hh, mm, tzinfo=KST)


class _Day:
    """Writes one worker's round trips on one day the way the trading code does."""

    def __init__(self, ledger: Ledger, day: date) -> None:
        self.ledger = ledger
        self.day = day

    async def order(
        self,
        worker: str,
        fence: int,
        symbol: str,
        side: Side,
        qty: int,
        signal: int,
        *,
        at: datetime,
        reason: str,
        tier: int,
        market: bool = False,
    ) -> OrderRecord:
        intent = OrderIntent(
            client_order_id=ClientOrderId(f"r{next(_seq)}"),
            worker_id=worker,
            symbol=symbol,
            side=side,
            order_type=OrderType.MARKET if market else OrderType.LIMIT,
            qty=qty,
            price=None if market else D(signal),
            fence=fence,
            reason=reason,
            signal_price=D(signal),
            trading_day=self.day,
            created_at=at,
            tier=tier,
        )
        order = await self.ledger.create_order(intent)
        await self.ledger.begin_submit(order.client_order_id, worker, fence, at)
        await self.ledger.mark_order_sent(order.client_order_id, _broker_id(order), at)
        return order

    async def fill(self, order: OrderRecord, cum_qty: int, cum_amount: int, at: datetime) -> None:
        status = OrderStatus(
            broker_order_id=_broker_id(order),
            symbol=order.symbol,
            side=order.side,
            qty=order.qty,
            filled_qty=cum_qty,
            filled_amount=D(cum_amount),
            remaining_qty=order.qty - cum_qty,
            rejected_qty=0,
            canceled=False,
            ordered_at=at,
            updated_at=at,
        )
        await self.ledger.apply_order_status(order.client_order_id, status, Board.KOSPI, at)

    async def round_trip(
        self,
        worker: str,
        fence: int,
        symbol: str,
        qty: int,
        tier: int,
        buy: tuple[int, int],
        sell: tuple[int, int],
        *,
        opened: datetime,
        minutes: int,
        exit_reason: str,
        partial: bool = False,
        release: bool = True,
    ) -> None:
        """BUY at signal buy[0] filled at buy[1], SELL at signal sell[0] filled at sell[1]."""
        closed = opened + timedelta(minutes=minutes)
        await self.ledger.lock_acquired(symbol, worker, fence, 3_000, datetime.now(UTC))
        b = await self.order(
            worker, fence, symbol, Side.BUY, qty, buy[0], at=opened, reason="breakout", tier=tier
        )
        if partial:
            await self.fill(b, qty // 2, qty // 2 * buy[1], opened + timedelta(seconds=20))
        await self.fill(b, qty, qty * buy[1], opened + timedelta(seconds=40))
        forced = exit_reason == "forced_liquidation"
        s = await self.order(
            worker,
            fence,
            symbol,
            Side.SELL,
            qty,
            sell[0],
            at=closed,
            reason=exit_reason,
            tier=tier,
            market=forced,
        )
        await self.fill(s, qty, qty * sell[1], closed)
        if release:
            await self.ledger.lock_released(symbol, worker, fence, datetime.now(UTC))


def _broker_id(order: OrderRecord) -> BrokerOrderId:
    return BrokerOrderId(f"B{order.client_order_id}")


async def _write_ledger(ledger: Ledger) -> None:
    d1 = _Day(ledger, DAY1)
    await d1.round_trip(
        ALPHA,
        1,
        "005930",
        10,
        3,
        (50_000, 50_100),
        (51_000, 50_900),
        opened=_at(DAY1, 9, 5),
        minutes=40,
        exit_reason="take_profit",
    )
    await d1.round_trip(
        BETA,
        1,
        "000660",
        5,
        2,
        (100_000, 100_000),
        (98_000, 97_900),
        opened=_at(DAY1, 10, 0),
        minutes=25,
        exit_reason="stop_loss",
    )
    # the symbol changes hands: alpha's fence 1, then beta's fence 2
    await d1.round_trip(
        BETA,
        2,
        "005930",
        10,
        3,
        (50_500, 50_600),
        (50_000, 49_800),
        opened=_at(DAY1, 14, 30),
        minutes=50,
        exit_reason="forced_liquidation",
        partial=True,
    )
    await ledger.summarize_day(DAY1)
    d2 = _Day(ledger, DAY2)  # never summarized
    await d2.round_trip(
        ALPHA,
        1,
        "035720",
        20,
        0,
        (29_950, 30_000),
        (30_350, 30_300),
        opened=_at(DAY2, 9, 30),
        minutes=90,
        exit_reason="time_exit",
        release=False,
    )
    await d2.round_trip(
        ALPHA,
        1,
        "035720",
        20,
        0,
        (30_100, 30_100),
        (29_800, 29_800),
        opened=_at(DAY2, 13, 0),
        minutes=20,
        exit_reason="trend_break",
    )


@pytest.fixture
async def written(ledger: Ledger) -> Ledger:
    await _write_ledger(ledger)
    return ledger


async def _report(database_url: str, first: date, last: date) -> tuple[ReportRows, ReportData]:
    engine = create_engine(database_url)
    try:
        rows = await read_report_rows(engine, first, last)
    finally:
        await engine.dispose()
    return rows, build_report(rows)


# -- the figures equal the ledger's, to the won ---------------------------------------------------


@pytest.mark.anyio
async def test_figures_equal_the_ledger_to_the_won(written: Ledger, database_url: str) -> None:
    rows, data = await _report(database_url, DAY1, DAY2)
    assert data.days == (DAY1, DAY2)

    trades = sql(database_url, "SELECT worker_id, trading_day, pnl, fees, taxes FROM trades")
    assert data.total.trades == len(trades) == 5
    assert data.total.pnl == sum(t[2] for t in trades)  # type: ignore[misc]
    assert data.total.fees == sum(t[3] for t in trades)  # type: ignore[misc]
    assert data.total.taxes == sum(t[4] for t in trades)  # type: ignore[misc]
    # per worker: the stored per-worker summary (day 1) plus day 2's trades
    by_worker: defaultdict[str, Decimal] = defaultdict(Decimal)
    for worker, _, pnl, _, _ in trades:
        by_worker[str(worker)] += pnl  # type: ignore[operator]
    assert {w: f.pnl for w, f in data.workers.items()} == dict(by_worker)
    stored_w = dict(sql(database_url, "SELECT worker_id, pnl FROM daily_worker_summaries"))
    day2_alpha = sum(t[2] for t in trades if t[1] == DAY2)  # type: ignore[misc]
    assert data.workers[BETA].pnl == stored_w[BETA]
    assert data.workers[ALPHA].pnl == stored_w[ALPHA] + day2_alpha

    # per day: trades = stored summary (day 1 only) = fills (Invariant 3)
    day1, day2 = data.day_rows
    [(stored_pnl,)] = sql(database_url, "SELECT pnl FROM daily_summaries WHERE date = %s", DAY1)
    assert day1.stored_pnl == day1.figures.pnl == day1.pnl_from_fills == stored_pnl
    assert day2.stored_pnl is None
    assert day2.figures.pnl == day2.pnl_from_fills
    assert data.pnl_from_fills == data.total.pnl
    assert data.open_fills == 0

    # equity ends at the total; drawdown from the running peak, recomputed here by close time
    assert data.equity[0].equity == 0
    assert data.equity[-1].equity == data.total.pnl
    closes = sql(database_url, "SELECT pnl FROM trades ORDER BY closed_at, id")
    equity = peak = worst = D(0)
    for (pnl,) in closes:
        equity += pnl  # type: ignore[operator]
        peak = max(peak, equity)
        worst = min(worst, equity - peak)
    assert data.max_drawdown == worst

    # slippage per trade, by hand: (fill - signal) x qty on the buy, (signal - fill) on the sell
    by_symbol_time = {
        (r.trade.symbol, r.trade.opened_at.astimezone(KST).hour): r for r in data.trades
    }
    assert by_symbol_time[("005930", 9)].slippage == 100 * 10 + 100 * 10
    assert by_symbol_time[("000660", 10)].slippage == 0 + 100 * 5
    assert by_symbol_time[("005930", 14)].slippage == 100 * 10 + 200 * 10  # partial buy
    assert by_symbol_time[("035720", 9)].slippage == 50 * 20 + 50 * 20
    assert by_symbol_time[("035720", 13)].slippage == 0
    assert by_symbol_time[("005930", 9)].entry_price == 50_100
    assert by_symbol_time[("005930", 9)].exit_price == 50_900

    # slippage by tier and side, forced exits, exit reasons: the tuning views' figures
    view = sql(
        database_url,
        "SELECT tier, side, sum(orders), sum(qty), sum(slippage_won)"
        " FROM tuning_slippage GROUP BY tier, side ORDER BY tier, side",
    )
    assert [(r.tier, r.side.value, r.orders, r.qty, r.slippage_won) for r in data.slippage] == [
        tuple(v) for v in view
    ]
    assert data.slippage_total == sum(r.slippage_won for r in data.slippage)
    assert data.slippage_total == sum(r.slippage for r in data.trades) == 7_500
    [(shortfall, forced_pnl)] = sql(
        database_url, "SELECT shortfall_won, trades_pnl FROM tuning_forced_exits"
    )
    assert (
        (data.forced_shortfall, data.forced_pnl)
        == (shortfall, forced_pnl)
        == (D(2_000), by_symbol_time[("005930", 14)].trade.pnl)
    )
    reasons = dict(
        sql(
            database_url,
            "SELECT exit_reason, sum(pnl) FROM tuning_exit_reasons GROUP BY exit_reason",
        )
    )
    assert {r.exit_reason: r.pnl for r in data.exit_reasons} == reasons
    assert set(reasons) == {
        "take_profit",
        "stop_loss",
        "forced_liquidation",
        "time_exit",
        "trend_break",
    }

    # locks: every grant of the range, on the trading clock, in its own day's session
    assert [(e.symbol, e.fence, e.event) for e in rows.lock_events] == [
        ("005930", 1, "acquired"),
        ("005930", 1, "released"),
        ("000660", 1, "acquired"),
        ("000660", 1, "released"),
        ("005930", 2, "acquired"),
        ("005930", 2, "released"),
        ("035720", 1, "acquired"),
        ("035720", 1, "released"),
    ]
    for e in rows.lock_events:
        local = e.trading_at.astimezone(KST)
        assert local.date() in (DAY1, DAY2), e
        assert 9 <= local.hour < 16, e
    assert [n for _, n in data.locks_held] == [1, 0, 1, 0, 1, 0, 1, 0]
    kinds: defaultdict[str, int] = defaultdict(int)
    for b in data.lock_buckets:
        for kind, n in b.counts.items():
            kinds[kind] += n
    assert dict(kinds) == {
        "acquired": 3,
        "changed hands": 1,
        "released": 4,
        "expired": 0,
        "recovered": 0,
        "lost": 0,
    }


@pytest.mark.anyio
async def test_one_day_leaves_the_other_out(written: Ledger, database_url: str) -> None:
    rows, data = await _report(database_url, DAY2, DAY2)
    assert data.days == (DAY2,)
    assert data.total.trades == 2
    assert {e.symbol for e in rows.lock_events} == {"035720"}
    assert [r.trading_day for r in data.forced_exits] == []
    # a section with nothing to draw says so, and draws no chart
    from worker.report_charts import SECTIONS
    from worker.report_html import render_html

    page = render_html(data, "day <2>")
    assert "<title>day &lt;2&gt;</title>" in page
    for section in SECTIONS:
        drawn = f'<div class="chart" data-section="{section.key}">' in page
        assert drawn == (section.key != "forced"), section.key
    assert '<p class="empty">No forced liquidation.</p>' in page
    empty, _ = await _report(database_url, date(2026, 11, 20), date(2026, 11, 20))
    assert empty.days == ()
    assert empty.trades == ()
    assert empty.lock_events == ()


def test_wall_instants_are_placed_on_the_trading_clock() -> None:
    wall = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)
    trading = _at(DAY1, 9, 0)
    # a day at 600x: one wall second is ten trading minutes; the write lag makes pairs overlap
    pairs = [
        (wall, trading),
        (wall + timedelta(seconds=1), trading + timedelta(minutes=10)),
        (wall + timedelta(seconds=1, milliseconds=1), trading + timedelta(minutes=9)),
    ]
    placed = on_trading_clock(
        pairs,
        [
            wall - timedelta(seconds=2),
            wall + timedelta(milliseconds=500),
            wall + timedelta(seconds=1, microseconds=500),
            wall + timedelta(seconds=3),
        ],
    )
    assert placed == [
        trading - timedelta(seconds=2),  # outside the pairs: real speed from the nearest
        trading + timedelta(minutes=5),
        trading + timedelta(minutes=10),  # never earlier than an earlier write's trading time
        trading + timedelta(minutes=10, seconds=2) - timedelta(milliseconds=1),
    ]
    assert on_trading_clock([], [wall]) == [wall]
    # between two days' writes: real speed from the earlier, never past the later
    night = [(wall, trading), (wall + timedelta(seconds=2), _at(DAY2, 9, 0))]
    assert on_trading_clock(night, [wall + timedelta(seconds=1)]) == [
        trading + timedelta(seconds=1)
    ]


def test_workers_are_named_by_their_shortest_unique_prefix() -> None:
    uuids = {"0f8e2c4a-1b2c-4d5e-8f90-1234567890ab", "7a1b9c3d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"}
    assert sorted(short_names(uuids).values()) == ["0f8e2c4a", "7a1b9c3d"]
    fleet = {"backtest-w1", "backtest-w2", "backtest-w10"}
    assert short_names(fleet) == {i: i for i in fleet}


# -- the command ----------------------------------------------------------------------------------


def _cli(monkeypatch: pytest.MonkeyPatch, database_url: str, *argv: str) -> int:
    from worker.cli import main

    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.delenv("REDIS_URL", raising=False)
    try:
        return main(["report", *argv])
    except SystemExit as exc:  # argparse's refusals
        return int(exc.code or 0)


def test_report_command(
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async def write() -> None:
        engine = create_engine(database_url)
        try:
            await _write_ledger(Ledger(engine, CostModel()))
        finally:
            await engine.dispose()

    anyio.run(write)
    out = tmp_path / "r.html"
    # the default day: the latest with an order
    assert _cli(monkeypatch, database_url, "--out", str(out)) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1
    assert printed[0].startswith(f"report on {DAY2}: 2 trades, PnL ")
    assert out.stat().st_size > 1_000_000
    assert "chart-equity" in out.read_text()

    assert (
        _cli(monkeypatch, database_url, "--from", str(DAY1), "--to", str(DAY2), "--out", str(out))
        == 0
    )
    assert capsys.readouterr().out.startswith(f"report from {DAY1} to {DAY2}: 5 trades")

    def refused(code: int, *argv: str) -> str:
        assert _cli(monkeypatch, database_url, *argv) == code
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
        assert "Traceback" not in err
        return err

    out.unlink()
    assert "--from 2026-11-25 is after --to 2026-11-24" in refused(
        2, "--from", str(DAY2), "--to", str(DAY1), "--out", str(out)
    )
    assert "must be YYYY-MM-DD" in refused(2, "--date", "2026-02-30", "--out", str(out))
    assert "cannot be combined" in refused(
        2, "--date", str(DAY1), "--from", str(DAY1), "--out", str(out)
    )
    assert "does not exist" in refused(2, "--date", str(DAY1), "--out", str(tmp_path / "n/r.html"))
    err = refused(1, "--date", "2026-11-20", "--out", str(out))
    assert f"no orders or trades recorded on 2026-11-20 (latest day with orders: {DAY2})" in err
    assert not out.exists()


# -- the page in a real browser -------------------------------------------------------------------

SECTIONS_WITH_CHARTS = ("equity", "workers", "trades", "exits", "forced", "slippage", "locks")


@pytest.mark.anyio
async def test_page_draws_every_chart_offline(
    written: Ledger, database_url: str, tmp_path: Path
) -> None:
    chromium = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    if chromium is None:
        pytest.skip(f"chromium is not installed ({CHROMIUM}, nor on PATH)")
    from worker.report_charts import SECTIONS
    from worker.report_html import write_report

    out = tmp_path / "report.html"
    data = await write_report(database_url, [DAY1, DAY2], out)
    assert data.total.trades == 5
    result = await anyio.to_thread.run_sync(_open_in_chromium, chromium, out)
    assert result["errors"] == [], result["errors"]
    assert result["blocked"] == [], "the page asked for something off the file"
    assert [s.key for s in SECTIONS] == list(SECTIONS_WITH_CHARTS)
    assert result["sections"] == ["summary", *SECTIONS_WITH_CHARTS]
    assert result["charts"] == list(SECTIONS_WITH_CHARTS)
    for key in SECTIONS_WITH_CHARTS:
        drawn = result["drawn"][key]
        assert drawn["svgs"] >= 1, (key, drawn)
        assert drawn["traces"] >= 1, (key, drawn)
        assert drawn["marks"] >= 1, (key, drawn)
    # the figures on the page: the total PnL and the per-day check
    assert result["kpi"] == f"{data.total.pnl:+,.0f}"
    assert result["checks"] == ["matches", "not summarized"]


_PROBE = """() => {
  const out = {sections: [...document.querySelectorAll('section')].map(s => s.id),
               charts: [...document.querySelectorAll('.chart')].map(c => c.dataset.section),
               drawn: {}};
  for (const c of document.querySelectorAll('.chart')) {
    const marks = [...c.querySelectorAll('path.point, g.point path, path.js-line')]
      .filter(p => (p.getAttribute('d') || '').length > 2);
    out.drawn[c.dataset.section] = {
      svgs: c.querySelectorAll('.main-svg').length,
      traces: c.querySelectorAll('g.trace').length,
      marks: marks.length};
  }
  out.kpi = document.querySelector('.kpi b').textContent;
  out.checks = [...document.querySelectorAll('table.days tr')].slice(1)
    .map(r => r.lastElementChild.textContent);
  return out;
}"""


def _open_in_chromium(chromium: str, path: Path) -> dict[str, object]:
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    blocked: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))

            def route(r: object) -> None:
                url = r.request.url  # type: ignore[attr-defined]
                if url.startswith("file:"):
                    r.continue_()  # type: ignore[attr-defined]
                else:
                    blocked.append(url)
                    r.abort()  # type: ignore[attr-defined]

            page.route("**/*", route)
            page.goto(path.as_uri(), wait_until="load")
            # plotly draws asynchronously: wait until every chart div holds its svg
            page.wait_for_function(
                "[...document.querySelectorAll('.chart')].every("
                "c => c.querySelector('.main-svg g.trace'))",
                timeout=30_000,
            )
            result: dict[str, object] = page.evaluate(_PROBE)
        finally:
            browser.close()
    return {**result, "errors": errors, "blocked": blocked}
