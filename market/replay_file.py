"""The replay file: reading and writing the CSV layout described in `market.replay`."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from market.calendar import Session
from market.sim import SimulatedMarket
from market.types import Board, Tier

REQUIRED_COLUMNS = (
    "symbol",
    "board",
    "minute",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "prev_close",
    "prev_high",
    "prev_low",
)
OPTIONAL_COLUMNS = ("value", "tier")
MINUTE = timedelta(minutes=1)
_PRICES = ("open", "high", "low", "close")


class ReplayFormatError(ValueError):
    """The replay file does not follow the layout in this module's docstring.

    The message names the file and, where there is one, the line.
    """


@dataclass(frozen=True, slots=True)
class _Static:
    board: Board
    tier: Tier
    prev: tuple[int, int, int]


class Reader:
    """Parses the file into per-row arrays, reporting the first bad line."""

    def __init__(self, path: Path, session: Session) -> None:
        self.path, self.session = path, session
        self.n_minutes = int((session.continuous_close - session.open) / MINUTE)
        self.statics: dict[str, _Static] = {}  # insertion order = first appearance
        self.ordinal: dict[str, int] = {}
        self.sym: list[int] = []
        self.minute: list[int] = []  # minutes since the open; >= n_minutes: closing auction
        self.line: list[int] = []
        self.bars: list[tuple[float, float, float, float, float, float]] = []

    def fail(self, line: int | None, message: str) -> ReplayFormatError:
        where = f"{self.path}:{line}" if line is not None else str(self.path)
        return ReplayFormatError(f"{where}: {message}")

    def read(self) -> None:
        with self.path.open(newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise self.fail(None, "empty file")
            names = [h.strip() for h in header]
            missing = [c for c in REQUIRED_COLUMNS if c not in names]
            if missing:
                raise self.fail(1, f"missing column(s) {', '.join(missing)}")
            col = {
                name: names.index(name)
                for name in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS)
                if name in names
            }
            for line, row in enumerate(reader, start=2):
                if not row:
                    continue
                if len(row) != len(names):
                    raise self.fail(line, f"expected {len(names)} fields, got {len(row)}")
                try:
                    self._row(row, col)
                except ValueError as exc:
                    raise self.fail(line, str(exc)) from None
                self.line.append(line)
        if not self.bars:
            raise self.fail(None, "no bars")

    def _row(self, row: list[str], col: dict[str, int]) -> None:
        symbol = row[col["symbol"]].strip()
        if len(symbol) != 6 or not symbol.isalnum():
            raise ValueError(f"symbol {symbol!r} is not a six-character KRX code")
        static = _Static(
            Board(row[col["board"]].strip()),
            _tier(row[col["tier"]]) if "tier" in col else Tier.MID,
            (
                _whole(row[col["prev_close"]], "prev_close"),
                _whole(row[col["prev_high"]], "prev_high"),
                _whole(row[col["prev_low"]], "prev_low"),
            ),
        )
        if self.statics.setdefault(symbol, static) != static:
            raise ValueError(
                f"board, tier or prior-day prices of {symbol} differ from earlier rows"
            )
        o, h, lo, c = (_whole(row[col[name]], name) for name in _PRICES)
        if not lo <= min(o, c) <= max(o, c) <= h:
            raise ValueError("need low <= open, close <= high")
        volume = _whole(row[col["volume"]], "volume", minimum=0)
        value = float(_whole(row[col["value"]], "value", minimum=0)) if "value" in col else np.nan
        self.sym.append(self.ordinal.setdefault(symbol, len(self.ordinal)))
        self.minute.append(self._minute(row[col["minute"]].strip()))
        self.bars.append((o, h, lo, c, volume, value))

    def _minute(self, text: str) -> int:
        at = datetime.fromisoformat(text)
        s = self.session
        if at.tzinfo is None:
            raise ValueError(f"minute {text!r} has no UTC offset")
        if at.second or at.microsecond or (at - s.open) % MINUTE:
            raise ValueError(f"minute {text!r} is not on a whole minute of the session")
        if s.open <= at <= s.close:
            return int((at - s.open) / MINUTE)
        raise ValueError(f"minute {text!r} is outside the session of {s.day}")


def _whole(text: str, name: str, minimum: int = 1) -> int:
    raw = text.strip()
    try:
        number = int(raw)
    except ValueError:
        as_float = float(raw)  # "70000.0" from a spreadsheet export is still whole won
        if not as_float.is_integer():
            raise ValueError(f"{name} {raw!r} is not a whole number") from None
        number = int(as_float)
    if number < minimum:
        raise ValueError(f"{name} {raw!r} must be >= {minimum}")
    return number


def _tier(text: str) -> Tier:
    raw = text.strip().upper()
    if raw.isdigit():
        return Tier(int(raw))
    if raw not in Tier.__members__:
        raise ValueError(f"tier {text.strip()!r} is not one of {', '.join(Tier.__members__)}")
    return Tier[raw]


def write_replay_csv(
    market: SimulatedMarket,
    path: Path,
    symbols: Sequence[str] | None = None,
    *,
    minutes: int | None = None,
) -> None:
    """Export a simulated day (all symbols, or `symbols`) in the replay layout, with `value`
    and `tier` columns.

    `minutes` limits the export to the first minutes of the continuous session; the closing
    auction row is written only for a full day.
    """
    s = market.session
    chosen = list(market.symbols if symbols is None else symbols)
    rows = np.array([market.index(sym) for sym in chosen], dtype=np.int64)
    count = market.n_minutes if minutes is None else min(minutes, market.n_minutes)
    if count < 1:
        raise ValueError("minutes must be >= 1")
    full = market.snapshot(s.continuous_close, market.n_minutes)
    # Snapshots at each minute boundary: the price there is the new bar's open, and the
    # difference of cumulative traded value is the finished bar's value.
    edges = [market.snapshot(s.open + m * MINUTE, 0) for m in range(count + 1)]
    cum_value = np.stack([e.traded_value[rows] for e in edges], axis=1)
    bar_value = np.diff(cum_value, axis=1)
    closed = market.snapshot(s.close, 0)  # after the closing auction
    header = (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS)
    with Path(path).open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f, lineterminator="\n")
        out.writerow(header)
        for j, (sym, i) in enumerate(zip(chosen, rows, strict=True)):
            inst = market.instruments[int(i)]
            head = (sym, inst.board.value)
            tail = (inst.prev_close, inst.prev_high, inst.prev_low)
            tier = inst.tier.name
            for m in range(count):
                start = s.open + m * MINUTE
                low, high = market.traded_range(sym, start, start + MINUTE)
                ohlc = (int(edges[m].price[i]), high, low, int(full.closes[i, m]))
                volume, value = int(full.volumes[i, m]), int(bar_value[j, m])
                out.writerow((*head, start.isoformat(), *ohlc, volume, *tail, value, tier))
            if minutes is None:
                price = int(closed.price[i])
                volume = int(closed.volume[i] - full.volume[i])
                value = int(closed.traded_value[i] - full.traded_value[i])
                auction = (s.close.isoformat(), price, price, price, price, volume)
                out.writerow((*head, *auction, *tail, value, tier))
