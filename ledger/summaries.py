"""Daily summaries: recomputed from `trades`, stored in `daily_summaries` and
`daily_worker_summaries`, and checked against `fills` (Invariant 3).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import case, delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from ledger.convert import summary_columns, summary_figures
from ledger.models import DailySummary, DailyWorkerSummary, Fill, Trade
from ledger.money import ZERO, summarize
from ledger.records import DaySummaryRecord, SummaryFigures


def _figures(trades: list[Trade]) -> SummaryFigures:
    return SummaryFigures(
        summary=summarize([t.pnl for t in trades]),
        fees=sum((t.fees for t in trades), ZERO),
        taxes=sum((t.taxes for t in trades), ZERO),
    )


async def store_day_summary(
    s: AsyncSession, trading_day: date, at: datetime | None
) -> DaySummaryRecord:
    computed_at: datetime = at or (await s.execute(select(func.now()))).scalar_one()
    stmt = select(Trade).where(Trade.trading_day == trading_day).order_by(Trade.id)
    trades = list((await s.execute(stmt)).scalars())
    total = _figures(trades)
    grouped: defaultdict[str, list[Trade]] = defaultdict(list)
    for t in trades:
        grouped[t.worker_id].append(t)
    by_worker = {w: _figures(ts) for w, ts in sorted(grouped.items())}

    cols = {**summary_columns(total), "computed_at": computed_at}
    ins = pg_insert(DailySummary).values(date=trading_day, **cols)
    await s.execute(ins.on_conflict_do_update(index_elements=["date"], set_=cols))
    # Replace, not merge: the per-worker rows are exactly those of this computation.
    await s.execute(delete(DailyWorkerSummary).where(DailyWorkerSummary.date == trading_day))
    for worker_id, fig in by_worker.items():
        s.add(
            DailyWorkerSummary(
                date=trading_day,
                worker_id=worker_id,
                computed_at=computed_at,
                **summary_columns(fig),
            )
        )
    await s.flush()
    return DaySummaryRecord(trading_day, total, computed_at, by_worker)


async def load_day_summary(s: AsyncSession, trading_day: date) -> DaySummaryRecord | None:
    row = await s.get(DailySummary, trading_day)
    if row is None:
        return None
    workers = (
        await s.execute(
            select(DailyWorkerSummary)
            .where(DailyWorkerSummary.date == trading_day)
            .order_by(DailyWorkerSummary.worker_id)
        )
    ).scalars()
    return DaySummaryRecord(
        trading_day,
        summary_figures(row),
        row.computed_at,
        {w.worker_id: summary_figures(w) for w in workers},
    )


async def pnl_from_fills(s: AsyncSession, trading_day: date) -> Decimal:
    signed = case((Fill.side == "SELL", Fill.amount), else_=-Fill.amount)
    stmt = select(func.coalesce(func.sum(signed - Fill.fee - Fill.tax), 0)).where(
        Fill.trading_day == trading_day
    )
    return Decimal((await s.execute(stmt)).scalar_one())
