"""Bar data for backtests: one-minute bars of several KRX sessions from CSV or Parquet files.

`load_bars(path, calendar, first, last)` reads a file (``.csv`` or ``.parquet``) or every such
file of a folder (in name order), checks all of it before anything trades, and returns one
`DayBars` per session day between `first` and `last`; `DayBars.market(clock)` is that day's
`ReplayMarket`, and its dense arrays feed the backtest broker's fill model.

The layout is `market.replay`'s (same columns, same meaning), with these differences:

* ``prev_close``, ``prev_high``, ``prev_low`` may be left out (all three) when the data holds
  each traded symbol's prior session: they are then that session's last price (the closing
  auction's, else the last bar's close), its high and its low. A symbol with no prior session
  in the data is an error.
* Several days in one file or across files; each day must be a KRX session (`market.calendar`)
  and each minute inside that day's session.
* Rows of one symbol are in time order (strictly increasing minutes, in file order, across
  files read in name order); rows of different symbols may interleave. A row of a symbol whose
  minute is earlier than that symbol's previous row is "unsorted minutes"; an equal minute is a
  duplicate. Exports that were joined or re-sorted badly show up here instead of being silently
  reordered.
* Days outside [first, last] are read and checked too (a file is valid or not as a whole), and
  serve as the prior session for derived ``prev_*``; only days inside the range are traded.

Every problem is a `BarDataError` (a `ReplayFormatError`) whose message is one line:
``FILE:LINE: problem`` for CSV (LINE counts the header as line 1, so it is the line an editor
shows when the file has no blank lines) and ``FILE:row N: problem`` for Parquet (N from 1).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import numpy.typing as npt

from market.calendar import KrxCalendar, Session
from market.clock import KST, Clock
from market.replay import ReplayMarket
from market.replay_file import (
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    Reader,
    ReplayFormatError,
    _Static,
)
from market.sim import SimulatedMarket
from market.ticks import price_limits
from market.types import Board, FloatArray, IntArray, Tier

if TYPE_CHECKING:
    import pyarrow as pa

PREV_COLUMNS = ("prev_close", "prev_high", "prev_low")
CORE_COLUMNS = tuple(c for c in REQUIRED_COLUMNS if c not in PREV_COLUMNS)
SUFFIXES = (".csv", ".parquet", ".pq")
_NUMERIC = ("open", "high", "low", "close", "volume", *PREV_COLUMNS, "value")
_TIERS = {**{t.name: t for t in Tier}, **{str(int(t)): t for t in Tier}}
_DAY_S = 86_400
_KST_OFFSET_S = 9 * 3600
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
# the tick grid (`market.ticks`): below the first bound prices step by 1 won, from each bound
# up by the next tick
_GRID_BOUNDS = np.array([2_000.0, 5_000.0, 20_000.0, 50_000.0, 200_000.0, 500_000.0])
_GRID_TICKS = np.array([1.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1_000.0])


class BarDataError(ReplayFormatError):
    """Bar data that a backtest refuses; the message names the file, the line and the problem."""


@dataclass
class DayBars:
    """One session of bars, checked, in the arrays the replay market and the fill model read.

    Dense arrays are (symbols x continuous minutes), NaN (prices) / 0 (volume) where a symbol
    has no row for a minute; `auction_*` is the closing auction per symbol (NaN / 0: none).
    """

    session: Session
    symbols: tuple[str, ...]
    statics: dict[str, _Static]
    open: FloatArray
    high: FloatArray
    low: FloatArray
    close: FloatArray
    volume: FloatArray
    auction_price: FloatArray
    auction_volume: FloatArray
    sources: tuple[str, ...]
    # row form for ReplayMarket
    _sym: IntArray = field(repr=False)
    _minute: IntArray = field(repr=False)
    _bars: FloatArray = field(repr=False)
    # the replay market built once (its arrays are read-only): `market` binds it to a clock
    _replay: ReplayMarket | None = field(default=None, repr=False, compare=False)

    @property
    def n_minutes(self) -> int:
        return int(self.open.shape[1])

    def index(self, symbol: str) -> int:
        return self.symbols.index(symbol)

    def tier(self, symbol: str) -> Tier:
        return self.statics[symbol].tier

    def board(self, symbol: str) -> Board:
        return self.statics[symbol].board

    def limits(self, symbol: str) -> tuple[Decimal, Decimal]:
        return price_limits(Decimal(self.statics[symbol].prev[0]))

    def market(self, clock: Clock) -> ReplayMarket:
        """This day's `MarketData` on `clock` (the replay conventions of `market.replay`).
        Built on the first call; later ones (another backtest of the same loaded day, as
        `tune` runs) share its read-only arrays under their own clock."""
        if self._replay is None:
            self._replay = ReplayMarket.from_rows(cast(Reader, _DayRows(self)), clock,
                                                  self.session)  # fmt: skip
            return self._replay
        market = copy.copy(self._replay)
        market.clock = clock
        return market

    @property
    def symbol_minutes(self) -> int:
        return len(self.symbols) * self.n_minutes


class _DayRows:
    """The reader interface `ReplayMarket` builds from (checked already: `fail` never runs)."""

    def __init__(self, day: DayBars) -> None:
        self.path = Path(day.sources[0])
        self.n_minutes = day.n_minutes
        self.ordinal = {s: i for i, s in enumerate(day.symbols)}
        self.statics = dict(day.statics)
        self.sym = day._sym
        self.minute = day._minute
        self.bars = day._bars
        self.line = np.arange(len(day._sym))

    def fail(self, line: int | None, message: str) -> ReplayFormatError:
        return BarDataError(f"{self.path}: {message}")


@dataclass(frozen=True)
class _Text:
    """A text column as its distinct values (sorted) and each row's code into them: a million
    rows hold a few thousand distinct strings, so checks run on the values, not the rows."""

    values: npt.NDArray[np.object_]
    codes: IntArray

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, i: int | np.integer) -> str:
        return str(self.values[self.codes[i]])

    def eq(self, value: str) -> npt.NDArray[np.bool_]:
        """Per row: the text is `value`."""
        return np.asarray(self.values == value, dtype=bool)[self.codes]

    @classmethod
    def join(cls, parts: Sequence[_Text]) -> _Text:
        """The parts' rows one after another, on one sorted set of values (each once)."""
        if not parts:
            return cls(np.zeros(0, dtype=object), np.zeros(0, dtype=np.int64))
        values, inverse = np.unique(np.concatenate([p.values for p in parts]),
                                    return_inverse=True)  # fmt: skip
        offsets = np.cumsum([0, *(len(p.values) for p in parts[:-1])])
        inverse = np.asarray(inverse, dtype=np.int64).reshape(-1)
        codes = np.concatenate([inverse[o + p.codes] for o, p in zip(offsets, parts, strict=True)])
        used = np.zeros(len(values), dtype=bool)
        used[codes] = True  # only values some row has (a dictionary may hold more)
        if used.all():
            return cls(values, codes)
        return cls(values[used], (np.cumsum(used) - 1)[codes])


_TEXT = ("symbol", "board", "minute", "tier")


@dataclass
class _Table:
    """Every file's rows, concatenated; `where(i)` names row i's file and line."""

    files: list[Path]
    file_of: IntArray
    line_of: IntArray
    parquet: npt.NDArray[np.bool_]
    cols: dict[str, np.ndarray]
    text: dict[str, _Text]

    def where(self, i: int) -> str:
        f = self.files[int(self.file_of[i])]
        if self.parquet[int(self.file_of[i])]:
            return f"{f}:row {int(self.line_of[i])}"
        return f"{f}:{int(self.line_of[i])}"

    def fail(self, i: int, message: str) -> BarDataError:
        return BarDataError(f"{self.where(i)}: {message}")

    def first_bad(self, bad: npt.ArrayLike, message: str) -> None:
        bad = np.asarray(bad, dtype=bool)
        if bad.any():
            raise self.fail(int(np.flatnonzero(bad)[0]), message)


def data_files(path: Path) -> list[Path]:
    """The file itself, or the folder's CSV and Parquet files in name order."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in SUFFIXES)
        if not files:
            raise BarDataError(f"{path}: no .csv or .parquet files in the folder")
        return files
    if not path.exists():
        raise BarDataError(f"{path}: no such file or folder")
    if path.suffix.lower() not in SUFFIXES:
        raise BarDataError(f"{path}: not a .csv or .parquet file")
    return [path]


def _read_file(path: Path) -> tuple[dict[str, np.ndarray | _Text], bool]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = path.suffix.lower() != ".csv"
    try:
        if parquet:
            # the file's own reader (`read_table` goes through pyarrow.dataset, whose import,
            # pandas with it, costs more than reading a day of bars); text columns as stored,
            # dictionary-encoded, instead of a million strings to encode again
            schema = pq.ParquetFile(path).schema_arrow
            names = list(schema.names)
            text_cols = [
                n for n in _TEXT
                if n in names and (pa.types.is_string(schema.field(n).type)
                                   or pa.types.is_large_string(schema.field(n).type))
            ]  # fmt: skip
            table = pq.ParquetFile(path, read_dictionary=text_cols).read()
        else:
            with path.open("rb") as f:
                header = f.readline().decode("utf-8-sig").strip()
            names = [h.strip() for h in header.split(",")] if header else []
            if not names:
                raise BarDataError(f"{path}: empty file")
            _check_columns(path, names, 1)
            import pyarrow.csv as pacsv  # here: its import is not free, and Parquet needs none

            types = {n: pa.string() for n in ("symbol", "board", "minute", "tier")}
            types.update({n: pa.float64() for n in _NUMERIC})
            table = pacsv.read_csv(
                path,
                read_options=pacsv.ReadOptions(column_names=names, skip_rows=1),
                parse_options=pacsv.ParseOptions(ignore_empty_lines=False),
                convert_options=pacsv.ConvertOptions(
                    column_types={n: t for n, t in types.items() if n in names},
                    strings_can_be_null=False,
                ),
            )
    except (pa.ArrowInvalid, OSError) as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BarDataError(f"{path}: {text}") from None
    _check_columns(path, names, 1 if not parquet else None)
    cols: dict[str, np.ndarray | _Text] = {}
    for name in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS):
        if name not in names:
            continue
        column = table.column(name)
        if name in _TEXT:
            cols[name] = _text_column(column, upper=name == "tier")
        else:
            cols[name] = _number_column(column)
    return cols, parquet


def _number_column(column: pa.ChunkedArray) -> FloatArray:
    """A numeric column as float64, null as NaN."""
    import pyarrow as pa

    if str(column.type) in _NUMPY_TYPES and not column.null_count:
        # straight from the buffers: pyarrow's cast kernels and to_numpy import pyarrow.compute
        # and pandas on their first use (a fifth of a second)
        parts = [_primitive(chunk).astype(np.float64) for chunk in column.chunks]
        return np.concatenate(parts) if parts else np.zeros(0)
    return np.asarray(column.cast(pa.float64()).to_numpy(zero_copy_only=False))


#: the arrow types read straight from their buffers, by name
_NUMPY_TYPES = {
    "int8": np.int8, "int16": np.int16, "int32": np.int32, "int64": np.int64,
    "uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64,
    "float": np.float32, "double": np.float64,
}  # fmt: skip


def _primitive(array: pa.Array) -> np.ndarray:
    """An arrow array of a `_NUMPY_TYPES` type without nulls, as a numpy view of its data."""
    dtype = np.dtype(_NUMPY_TYPES[str(array.type)])
    data = array.buffers()[1]
    return np.frombuffer(data, dtype=dtype, count=len(array), offset=array.offset * dtype.itemsize)


def _text_column(column: pa.ChunkedArray, *, upper: bool) -> _Text:
    """A text column trimmed (upper-cased if `upper`), null as "", through a dictionary: a
    million rows hold a few thousand distinct strings, so no Python loop over the rows."""
    import pyarrow as pa

    def clean(text: pa.Array) -> npt.NDArray[np.object_]:
        # in Python: the distinct values are few, and pyarrow.compute's string kernels cost
        # a fifth of a second to warm up on their first use in a process
        if not pa.types.is_string(text.type):
            text = text.cast(pa.string())
        out = ["" if v is None else v.strip() for v in text.to_pylist()]
        if upper:
            out = [v.upper() for v in out]
        return np.array([*out, ""], dtype=object)  # the last one: null

    def codes(indices: pa.Array, null: int) -> IntArray:
        # zero-copy, not fill_null or a copying to_numpy: those import pyarrow.compute and
        # pandas (a fifth of a second); a null is an error found later, so it may be slow
        if not indices.null_count:
            return np.asarray(_primitive(indices), dtype=np.int64)
        return np.array([null if k is None else k for k in indices.to_pylist()], dtype=np.int64)

    if pa.types.is_dictionary(column.type):  # Parquet's own dictionary, chunk by chunk
        parts = []
        for chunk in column.chunks:
            values = clean(chunk.dictionary)
            parts.append(_Text(values, codes(chunk.indices, len(values) - 1)))
        return _Text.join(parts)
    enc = column.cast(pa.string()).combine_chunks().dictionary_encode()
    values = clean(enc.dictionary)
    return _Text.join([_Text(values, codes(enc.indices, len(values) - 1))])


def _check_columns(path: Path, names: Sequence[str], line: int | None) -> None:
    missing = [c for c in CORE_COLUMNS if c not in names]
    have_prev = [c for c in PREV_COLUMNS if c in names]
    if have_prev and len(have_prev) != len(PREV_COLUMNS):
        missing += [c for c in PREV_COLUMNS if c not in names]
    if missing:
        where = f"{path}:{line}" if line is not None else str(path)
        raise BarDataError(f"{where}: missing column(s) {', '.join(missing)}")


def _read(files: list[Path]) -> _Table:
    parts: list[dict[str, np.ndarray | _Text]] = []
    parquet: list[bool] = []
    for f in files:
        part, pq_ = _read_file(f)
        parts.append(part)
        parquet.append(pq_)
    with_prev = {all(c in p for c in PREV_COLUMNS) for p in parts}
    if len(with_prev) > 1:
        odd = next(f for f, p in zip(files, parts, strict=True) if "prev_close" not in p)
        raise BarDataError(f"{odd}: missing column(s) {', '.join(PREV_COLUMNS)} (other files "
                           "have them: all files or none)")  # fmt: skip
    n = [len(p["symbol"]) for p in parts]
    file_of = np.repeat(np.arange(len(files)), n)
    line_of = np.concatenate([np.arange(k) for k in n]) if n else np.zeros(0, dtype=np.int64)
    is_pq = np.array(parquet, dtype=bool)
    line_of = line_of + np.where(is_pq[file_of], 1, 2)
    cols: dict[str, np.ndarray] = {}
    text: dict[str, _Text] = {}
    if len(parts) == 1:  # nothing to join: the columns as read
        only = parts[0]
        cols = {k: v for k, v in only.items() if not isinstance(v, _Text)}
        text = {k: v for k, v in only.items() if isinstance(v, _Text)}
    else:
        for name in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS):
            if not any(name in p for p in parts) or (
                not all(name in p for p in parts) and name not in ("value", "tier")
            ):
                continue
            if name in _TEXT:  # a file without tiers: MID
                mid = np.array(["MID"], dtype=object)
                text[name] = _Text.join([
                    cast(_Text, p[name]) if name in p else _Text(mid, np.zeros(k, dtype=np.int64))
                    for p, k in zip(parts, n, strict=True)
                ])  # fmt: skip
            else:
                numbers = [cast(np.ndarray, p[name]) if name in p else np.full(k, np.nan)
                           for p, k in zip(parts, n, strict=True)]  # fmt: skip
                cols[name] = np.concatenate(numbers)
    if not len(file_of):
        raise BarDataError(f"{files[0]}: no bars")
    return _Table(files, file_of, line_of, is_pq, cols, text)


def _minutes(t: _Table) -> IntArray:
    """Each row's minute as Unix seconds; rejects text without an offset or off a minute."""
    minute = t.text["minute"]
    secs = np.zeros(len(minute.values), dtype=np.int64)
    problems: dict[int, str] = {}  # code -> what is wrong with that text
    for k, text in enumerate(minute.values):
        try:
            at = datetime.fromisoformat(str(text).strip())
        except ValueError:
            problems[k] = f"minute {text!r} is not an ISO 8601 time"
            continue
        if at.tzinfo is None:
            problems[k] = f"minute {text!r} has no UTC offset"
        elif at.second or at.microsecond:
            problems[k] = f"minute {text!r} is not on a whole minute"
        else:
            secs[k] = int(at.timestamp())
    if problems:
        bad = np.zeros(len(minute.values), dtype=bool)
        bad[list(problems)] = True
        i = int(np.flatnonzero(bad[minute.codes])[0])
        raise t.fail(i, problems[int(minute.codes[i])])
    return secs[minute.codes]


def load_bars(
    path: Path,
    calendar: KrxCalendar,
    first: date | None = None,
    last: date | None = None,
) -> list[DayBars]:
    """Read and check every row of `path`; the sessions with first <= day <= last, in order.

    Raises `BarDataError` (one line: file, line, problem) on the first problem found, and when
    no session of the data falls in the range.
    """
    t = _read(data_files(Path(path)))
    symbols, sym_id, boards, tiers = _check_values(t)
    ts = _minutes(t)
    day_no, sessions = _check_days(t, ts, calendar)
    _check_time_order(t, symbols, sym_id, ts)
    has_prev = "prev_close" in t.cols
    _check_statics(t, symbols, sym_id, day_no, boards, tiers, has_prev)

    days_all = sorted(sessions)
    lo_day = first or sessions[days_all[0]].day
    hi_day = last or sessions[days_all[-1]].day
    wanted = [d for d in days_all if lo_day <= sessions[d].day <= hi_day]
    if not wanted:
        have = f"{sessions[days_all[0]].day}..{sessions[days_all[-1]].day}"
        raise BarDataError(
            f"{Path(path)}: wrong day: no session of the data ({have}) falls in {lo_day}..{hi_day}"
        )
    needed = set(wanted)
    if not has_prev:  # each traded day derives prev_* from its prior session, if in the data
        needed |= {_prior_key(w, sessions, calendar) for w in wanted} & set(days_all)
    built: dict[int, DayBars] = {}
    for d in sorted(needed):
        prev_day = None if has_prev else built.get(_prior_key(d, sessions, calendar))
        rows = np.flatnonzero(day_no == d)
        built[d] = _build_day(
            t, sessions[d], rows, symbols, sym_id, boards, tiers, ts, has_prev, prev_day,
            history=d not in wanted,
        )  # fmt: skip
    return [built[d] for d in wanted]


def _check_values(t: _Table) -> tuple[_Text, IntArray, IntArray, IntArray]:
    """Every cell present and well-formed; (symbols, their ids in code order, board codes
    (1: KOSPI), tier codes)."""
    c = t.cols
    for name in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS):  # in the columns' order
        if name in ("value", "tier") or (name not in c and name not in t.text):
            continue
        null = t.text[name].eq("") if name in t.text else np.isnan(c[name])
        t.first_bad(null, f"no value in column {name}")
    symbols = t.text["symbol"]  # values sorted: the codes are the ids in code order
    sym_id = symbols.codes
    _, first_row = np.unique(sym_id, return_index=True)
    for code, i in zip(symbols.values, first_row, strict=True):
        if not (len(code) == 6 and code.isalnum()):
            raise t.fail(int(i), f"symbol {code!r} is not a six-character KRX code")
    board = t.text["board"]
    kospi = board.eq(Board.KOSPI.value)
    t.first_bad(~kospi & ~board.eq(Board.KOSDAQ.value), "board is not KOSPI or KOSDAQ")
    tiers = np.full(len(symbols), int(Tier.MID), dtype=np.int64)
    if "tier" in t.text:
        tier_text = t.text["tier"]
        of_value = np.array([int(_TIERS.get(str(v), -1)) for v in tier_text.values],
                            dtype=np.int64)  # fmt: skip
        tiers = of_value[tier_text.codes]
        t.first_bad(tiers < 0, f"tier is not one of {', '.join(Tier.__members__)}")

    o, h, lo, cl, vol = (c[k] for k in ("open", "high", "low", "close", "volume"))
    prices = np.stack([o, h, lo, cl], axis=1)
    t.first_bad((prices != np.floor(prices)).any(axis=1), "a price is not a whole number of won")
    t.first_bad((prices < 1).any(axis=1), "a price below 1 won")
    t.first_bad((vol != np.floor(vol)) | (vol < 0), "volume is not a whole number >= 0")
    if "value" in c:
        v = c["value"]
        t.first_bad(~np.isnan(v) & ((v != np.floor(v)) | (v < 0)), "value is not whole won >= 0")
    t.first_bad(~((lo <= np.minimum(o, cl)) & (np.maximum(o, cl) <= h)),
                "need low <= open, close <= high")  # fmt: skip
    # column by column: the search runs several times faster over one column's prices
    t.first_bad(~(_on_grid(o) & _on_grid(h) & _on_grid(lo) & _on_grid(cl)),
                "a price off the KRX tick grid")  # fmt: skip
    if "prev_close" in c:
        pv = np.stack([c[p] for p in PREV_COLUMNS], axis=1)
        t.first_bad((pv != np.floor(pv)).any(axis=1) | (pv < 1).any(axis=1),
                    "prev_close, prev_high or prev_low is not whole won >= 1")  # fmt: skip
    return symbols, np.asarray(sym_id, dtype=np.int64), kospi.astype(np.int64), tiers


def _on_grid(prices: FloatArray) -> npt.NDArray[np.bool_]:
    """Per price: a whole multiple of its tick (`market.ticks`). A quotient by a tick of 1 to
    1,000 won is exact in float64 when whole, so no rounding and no remainder (slow) needed."""
    tick = _GRID_TICKS[np.searchsorted(_GRID_BOUNDS, prices, side="right")]
    q = prices / tick
    return np.asarray(q == np.floor(q), dtype=bool)


def _check_days(
    t: _Table, ts: IntArray, calendar: KrxCalendar
) -> tuple[IntArray, dict[int, Session]]:
    """Each row's day (days since 1970, KST) and the sessions: every minute inside one."""
    day_no = (ts + _KST_OFFSET_S) // _DAY_S
    sessions: dict[int, Session] = {}
    for d in np.unique(day_no):
        i = int(np.flatnonzero(day_no == d)[0])
        day = date.fromordinal(_EPOCH_ORDINAL + int(d))
        try:
            s = calendar.session(day)
        except ValueError as exc:
            raise t.fail(i, f"wrong day: {exc}") from None
        if s is None:
            raise t.fail(i, f"wrong day: {day} is not a KRX session day")
        sessions[int(d)] = s
    uniq, inverse = np.unique(day_no, return_inverse=True)
    opens = np.array([int(sessions[int(d)].open.timestamp()) for d in uniq])[inverse]
    closes = np.array([int(sessions[int(d)].close.timestamp()) for d in uniq])[inverse]
    outside = (ts < opens) | (ts > closes)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        s = sessions[int(day_no[i])]
        raise t.fail(
            i,
            f"wrong day: minute {t.text['minute'][i]} is outside the session of {s.day} "
            f"({s.open:%H:%M}-{s.close:%H:%M})",
        )
    return day_no, sessions


def _check_time_order(t: _Table, symbols: _Text, sym_id: IntArray, ts: IntArray) -> None:
    """Rows of each symbol strictly increasing in time, in file order."""
    order = np.lexsort((np.arange(len(ts)), sym_id))
    same = sym_id[order][1:] == sym_id[order][:-1]
    step = np.diff(ts[order])
    dup = np.zeros(len(ts), dtype=bool)
    dup[order[1:][same & (step == 0)]] = True
    back = np.zeros(len(ts), dtype=bool)
    back[order[1:][same & (step < 0)]] = True
    first_dup = int(np.flatnonzero(dup)[0]) if dup.any() else len(ts)
    first_back = int(np.flatnonzero(back)[0]) if back.any() else len(ts)
    if first_back < first_dup:
        i = first_back
        raise t.fail(
            i,
            f"unsorted minutes: {symbols[i]} at {t.text['minute'][i]} comes after a later "
            "minute of the same symbol (rows of a symbol must be in time order)",
        )
    t.first_bad(dup, "a second row for the same symbol and minute")


def _check_statics(
    t: _Table,
    symbols: _Text,
    sym_id: IntArray,
    day_no: IntArray,
    boards: IntArray,
    tiers: IntArray,
    has_prev: bool,
) -> None:
    """Board, tier and prior-day prices the same on every row of a symbol's day."""
    key = sym_id * 1_000_000 + (day_no - day_no.min())
    stat_cols = [boards, tiers]
    if has_prev:
        stat_cols += [t.cols[p] for p in PREV_COLUMNS]
    k_order = np.lexsort((np.arange(len(key)), key))
    k_same = key[k_order][1:] == key[k_order][:-1]
    differ = np.zeros(len(key), dtype=bool)
    for col in stat_cols:
        differ[k_order[1:][k_same & (col[k_order][1:] != col[k_order][:-1])]] = True
    if differ.any():
        i = int(np.flatnonzero(differ)[0])
        raise t.fail(
            i,
            f"board, tier or prior-day prices of {symbols[i]} differ from its earlier rows of "
            "the day",
        )


def _prior_key(d: int, sessions: dict[int, Session], calendar: KrxCalendar) -> int:
    prev = calendar.previous_session(sessions[d].day).day
    return prev.toordinal() - _EPOCH_ORDINAL


def _build_day(
    t: _Table,
    session: Session,
    rows: IntArray,
    symbols: _Text,
    sym_id: IntArray,
    boards: IntArray,
    tiers: IntArray,
    ts: IntArray,
    has_prev: bool,
    prev_day: DayBars | None,
    *,
    history: bool = False,
) -> DayBars:
    """One session's arrays. A `history` day (only the prior session of a traded day) whose
    own prior session is not in the data gets provisional prev_* (its first open, its high and
    low) and no limit check: nothing trades on it."""
    c = t.cols
    open_s = int(session.open.timestamp())
    n_minutes = int((session.continuous_close - session.open) / timedelta(minutes=1))
    minute = (ts[rows] - open_s) // 60
    # ids are in code order, so the day's symbols come out sorted by code
    _, first_at, sym = np.unique(sym_id[rows], return_index=True, return_inverse=True)
    sym = np.asarray(sym, dtype=np.int64)
    names = tuple(str(symbols[rows[i]]) for i in first_at)
    index = {s: i for i, s in enumerate(names)}
    statics: dict[str, _Static] = {}
    for k, (s, i) in enumerate(zip(names, rows[first_at], strict=True)):
        if has_prev:
            prev = (int(c["prev_close"][i]), int(c["prev_high"][i]), int(c["prev_low"][i]))
        elif history and (prev_day is None or s not in prev_day.statics):
            mine = rows[sym == k]
            prev = (int(c["open"][mine[0]]), int(c["high"][mine].max()), int(c["low"][mine].min()))
        else:
            prev = _derived_prev(t, int(i), s, session, prev_day)
        board = Board.KOSPI if boards[i] else Board.KOSDAQ
        statics[s] = _Static(board, Tier(int(tiers[i])), prev)

    n = len(names)
    # one file of one day: its rows are a range, read as views rather than gathered
    take = slice(int(rows[0]), int(rows[-1]) + 1) if rows[-1] - rows[0] + 1 == len(rows) else rows
    bars = np.empty((len(rows), 6))
    for j, name in enumerate(("open", "high", "low", "close", "volume", "value")):
        bars[:, j] = c[name][take] if name in c else np.nan
    lower = np.empty(n)
    upper = np.empty(n)
    for s, st in statics.items():
        lo_, hi_ = price_limits(Decimal(st.prev[0]))
        lower[index[s]], upper[index[s]] = float(lo_), float(hi_)
    if history and not has_prev:
        lower[:], upper[:] = -np.inf, np.inf
    t.first_bad(_scatter(rows, len(t.file_of), bars[:, 2] < lower[sym]),
                "outside the limits: low below the lower limit from prev_close")  # fmt: skip
    t.first_bad(_scatter(rows, len(t.file_of), bars[:, 1] > upper[sym]),
                "outside the limits: high above the upper limit from prev_close")  # fmt: skip

    dense = {k: np.full((n, n_minutes), np.nan) for k in ("open", "high", "low", "close")}
    volume = np.zeros((n, n_minutes))
    cont = minute < n_minutes
    at = (sym * n_minutes + minute)[cont]  # flat positions in the dense arrays
    for j, field_name in enumerate(("open", "high", "low", "close")):
        dense[field_name].ravel()[at] = bars[cont, j]
    volume.ravel()[at] = bars[cont, 4]
    auction_price = np.full(n, np.nan)
    auction_volume = np.zeros(n)
    a = ~cont
    if a.any():
        # rows are time-ordered per symbol: the last assignment is the latest auction row
        auction_price[sym[a]] = bars[a, 3]
        np.add.at(auction_volume, sym[a], bars[a, 4])
    sources = tuple(sorted({str(t.files[int(f)]) for f in np.unique(t.file_of[rows])}))
    return DayBars(
        session=session,
        symbols=names,
        statics=statics,
        open=dense["open"],
        high=dense["high"],
        low=dense["low"],
        close=dense["close"],
        volume=volume,
        auction_price=auction_price,
        auction_volume=auction_volume,
        sources=sources,
        _sym=sym,
        _minute=minute,
        _bars=bars,
    )


def _scatter(rows: IntArray, total: int, bad: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    out = np.zeros(total, dtype=bool)
    out[rows[bad]] = True
    return out


def _derived_prev(
    t: _Table, i: int, symbol: str, session: Session, prev_day: DayBars | None
) -> tuple[int, int, int]:
    if prev_day is None or symbol not in prev_day.statics:
        raise t.fail(i, f"no prev_close column and no bars of {symbol} for the session before "
                        f"{session.day} in the data")  # fmt: skip
    k = prev_day.index(symbol)
    closes = prev_day.close[k]
    last = prev_day.auction_price[k]
    if np.isnan(last):
        seen = closes[~np.isnan(closes)]
        last = seen[-1] if seen.size else np.nan
    high = np.nanmax(np.r_[prev_day.high[k], prev_day.auction_price[k]])
    low = np.nanmin(np.r_[prev_day.low[k], prev_day.auction_price[k]])
    if np.isnan(last):
        raise t.fail(i, f"no prev_close column and no bars of {symbol} on {prev_day.session.day}")
    return int(last), int(high), int(low)


def session_days(days: Sequence[DayBars]) -> list[date]:
    return [d.session.day for d in days]


__all__ = ["KST", "BarDataError", "DayBars", "data_files", "load_bars", "session_days"]


def write_simulated_parquet(market: SimulatedMarket, path: Path) -> int:
    """Export a whole simulated day, every symbol, in the bar layout as Parquet; returns rows.

    The same bars `market.replay_file.write_replay_csv` writes (open, the path's extremes,
    close, volume, value, the closing auction row), built column-wise: a 2,500-symbol day in
    about a second instead of minutes.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    s, u, p = market.session, market._u, market._p
    n, m = len(u.symbols), market.n_minutes
    starts = [(s.open + k * timedelta(minutes=1)).isoformat() for k in range(m)]
    minute = np.array([*starts, s.close.isoformat()], dtype=object)
    rows = np.arange(n)
    o, h, lo, c = (np.asarray(x[rows, :m]) for x in (p.open, p.high, p.low, p.close))
    auction = np.asarray(p.auction_price, dtype=np.float64)[:, None]
    a_vol = np.asarray(p.auction_volume, dtype=np.float64)[:, None]

    def with_auction(bars: np.ndarray, last: np.ndarray) -> np.ndarray:
        return np.concatenate([bars, last], axis=1).astype(np.int64).ravel()

    per_symbol = m + 1
    table = pa.table(
        {
            "symbol": np.repeat(np.array(u.symbols, dtype=object), per_symbol),
            "board": np.repeat(np.where(u.kospi, "KOSPI", "KOSDAQ").astype(object), per_symbol),
            "minute": np.tile(minute, n),
            "open": with_auction(o, auction),
            "high": with_auction(h, auction),
            "low": with_auction(lo, auction),
            "close": with_auction(c, auction),
            "volume": with_auction(np.asarray(p.volume[:, :m]), a_vol),
            "prev_close": np.repeat(u.prev_close.astype(np.int64), per_symbol),
            "prev_high": np.repeat(u.prev_high.astype(np.int64), per_symbol),
            "prev_low": np.repeat(u.prev_low.astype(np.int64), per_symbol),
            "value": with_auction(np.floor(np.asarray(p.value[:, :m])), a_vol * auction),
            "tier": np.repeat(
                np.array([Tier(int(t)).name for t in u.tier], dtype=object), per_symbol
            ),
        }
    )
    pq.write_table(table, path)
    return int(table.num_rows)
