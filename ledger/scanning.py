"""The scan's one read (`Ledger.scan_view`): open positions, unfinished orders, the day's
loss-limit figures and the symbols with an open account drift in a single statement, run
outside a transaction on the scan's hot path."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date
from decimal import Decimal
from functools import lru_cache
from typing import Any

from sqlalchemy import ColumnElement, literal_column, select, union_all
from sqlalchemy.sql.selectable import CompoundSelect

from ledger.drift import HOLDING
from ledger.models import AccountDrift, Order, Position
from ledger.orders import UNFINISHED
from ledger.records import ScanView
from ledger.risk import day_low_pnl, day_pnl, halt_recorded

_UNFINISHED = [s.value for s in UNFINISHED]


@lru_cache(maxsize=4)
def scan_statement(trading_day: date) -> CompoundSelect[Any]:
    """Rows (kind, symbol, worker_id, value): P = open position, O = unfinished order,
    R = the day's realized pnl, L = its low so far, H = 1 when the day's halt is recorded,
    D = a symbol with an open holding drift.

    Built once per trading day and reused (statements are immutable): building it costs
    more than running it (1.9 -> 0.75 ms a scan view, CPU, on an empty ledger)."""
    none: ColumnElement[Any] = literal_column("NULL")
    no_value: ColumnElement[Any] = literal_column("NULL::numeric")
    return union_all(
        select(literal_column("'P'"), Position.symbol, Position.worker_id, no_value).where(
            Position.status != "CLOSED"
        ),
        select(literal_column("'O'"), Order.symbol, Order.worker_id, no_value).where(
            Order.status.in_(_UNFINISHED)
        ),
        select(literal_column("'R'"), none, none, day_pnl(trading_day)),
        select(literal_column("'L'"), none, none, day_low_pnl(trading_day)),
        select(literal_column("'H'"), none, none, literal_column("1::numeric")).where(
            halt_recorded(trading_day)
        ),
        select(literal_column("'D'"), AccountDrift.symbol, none, no_value).where(
            AccountDrift.kind == HOLDING, AccountDrift.cleared_at.is_(None)
        ),
    )


def scan_view_of(rows: Iterable[Sequence[Any]]) -> ScanView:
    """The `ScanView` in the rows of `scan_statement`."""
    positions: dict[str, str] = {}
    unfinished: dict[str, str] = {}
    pnl = low = Decimal(0)
    halted = False
    drifted: set[str] = set()
    for kind, symbol, worker_id, value in rows:
        if kind == "P":
            positions[symbol] = worker_id
        elif kind == "O":
            unfinished.setdefault(symbol, worker_id)
        elif kind == "R":
            pnl = Decimal(value)
        elif kind == "L":
            low = Decimal(value)
        elif kind == "D":
            drifted.add(symbol)
        else:
            halted = True
    return ScanView(positions, unfinished, pnl, low, halted, frozenset(drifted))
