"""Bar data for backtests (market/bars.py): several days from CSV or Parquet, and every kind of
bad data refused with one line naming the file, the line and the problem."""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from market.bars import BarDataError, load_bars
from market.calendar import default_calendar
from market.clock import KST, ManualClock

CAL = default_calendar()
MON, TUE = date(2026, 3, 9), date(2026, 3, 10)  # two sessions in a row
HEADER = "symbol,board,minute,open,high,low,close,volume,prev_close,prev_high,prev_low"


def minute(day: date, m: int) -> str:
    return (datetime.combine(day, datetime.min.time(), tzinfo=KST)
            + timedelta(hours=9, minutes=m)).isoformat()  # fmt: skip


def row(day: date, m: int, o: int = 10_000, h: int = 10_050, lo: int = 9_990, c: int = 10_020,
        v: int = 1_000, prev: tuple[int, int, int] = (10_000, 10_100, 9_900),
        symbol: str = "005930") -> str:  # fmt: skip
    return f"{symbol},KOSPI,{minute(day, m)},{o},{h},{lo},{c},{v},{prev[0]},{prev[1]},{prev[2]}"


def write(path: Path, rows: list[str], header: str = HEADER) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def two_days() -> list[str]:
    return [row(d, m) for d in (MON, TUE) for m in range(3)]


def bad(path: Path, first: date | None = None, last: date | None = None) -> str:
    with pytest.raises(BarDataError) as info:
        load_bars(path, CAL, first, last)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_several_days_load_in_order_and_the_range_selects(tmp_path: Path) -> None:
    path = write(tmp_path / "bars.csv", two_days())
    days = load_bars(path, CAL)
    assert [d.session.day for d in days] == [MON, TUE]
    assert days[0].symbols == ("005930",)
    assert days[0].open[0, 0] == 10_000
    assert [d.session.day for d in load_bars(path, CAL, TUE, TUE)] == [TUE]
    market = days[1].market(ManualClock(days[1].session.open + timedelta(minutes=2)))
    quote = market.quote_at("005930", market.clock.now())
    assert quote.price == 10_020
    assert quote.prev_close == 10_000


def test_a_parquet_file_loads_like_the_csv(tmp_path: Path) -> None:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    csv = write(tmp_path / "bars.csv", two_days())
    folder = tmp_path / "pq"
    folder.mkdir()
    table = pacsv.read_csv(csv, convert_options=pacsv.ConvertOptions(
        column_types={"symbol": "string", "minute": "string"}))  # fmt: skip
    pq.write_table(table, folder / "bars.parquet")
    a, b = load_bars(csv, CAL), load_bars(folder, CAL)
    assert [d.session.day for d in a] == [d.session.day for d in b]
    assert np.array_equal(a[1].close, b[1].close, equal_nan=True)
    assert a[1].statics == b[1].statics


def test_parquet_text_is_trimmed_and_a_missing_value_named_by_its_row(tmp_path: Path) -> None:
    """Parquet text columns are read dictionary-encoded: padding, case and nulls behave as in
    the CSV path, in row groups of their own."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [r.split(",") for r in two_days()]
    names = HEADER.split(",")
    columns: dict[str, list[object]] = {n: [r[k] for r in rows] for k, n in enumerate(names)}
    for n in names[3:]:
        columns[n] = [int(str(v)) for v in columns[n]]
    columns["symbol"] = [f" {s} " for s in columns["symbol"]]
    columns["tier"] = ["thin", " Thin", "THIN", "thin", "thin", "thin"]
    path = tmp_path / "bars.parquet"
    pq.write_table(pa.table(columns), path, row_group_size=4)
    days = load_bars(path, CAL)
    assert days[1].symbols == ("005930",)
    assert days[1].tier("005930").name == "THIN"
    assert np.array_equal(days[1].close, load_bars(write(tmp_path / "b.csv", two_days()),
                                                   CAL)[1].close, equal_nan=True)  # fmt: skip
    columns["symbol"][4] = None
    pq.write_table(pa.table(columns), path, row_group_size=4)
    assert bad(path) == f"{path}:row 5: no value in column symbol"


def test_prev_columns_come_from_the_prior_session_when_left_out(tmp_path: Path) -> None:
    head = HEADER.rsplit(",", 3)[0]
    rows = [row(MON, 0, 10_000, 10_300, 9_800, 10_100).rsplit(",", 3)[0],
            row(MON, 1, 10_100, 10_200, 10_000, 10_150).rsplit(",", 3)[0],
            row(TUE, 0).rsplit(",", 3)[0]]  # fmt: skip
    path = write(tmp_path / "bars.csv", rows, head)
    (tue,) = load_bars(path, CAL, TUE, TUE)
    assert tue.statics["005930"].prev == (10_150, 10_300, 9_800)
    # Monday itself has no prior session in the data: it cannot be traded
    assert "no prev_close column" in bad(path, MON, TUE)


def test_missing_column(tmp_path: Path) -> None:
    path = write(tmp_path / "bars.csv", [r.replace(",1000,", ",") for r in two_days()],
                 HEADER.replace(",volume", ""))  # fmt: skip
    assert bad(path) == f"{path}:1: missing column(s) volume"


def test_unsorted_minutes(tmp_path: Path) -> None:
    rows = [row(TUE, 0), row(TUE, 2), row(TUE, 1), row(TUE, 3)]
    path = write(tmp_path / "bars.csv", rows)
    message = bad(path)
    assert message.startswith(f"{path}:4: unsorted minutes: 005930 at {minute(TUE, 1)}")
    # another symbol's rows may interleave
    rows = [row(TUE, 0), row(TUE, 0, symbol="000660"), row(TUE, 1), row(TUE, 1, symbol="000660")]
    assert len(load_bars(write(tmp_path / "ok.csv", rows), CAL)[0].symbols) == 2


def test_a_duplicate_minute(tmp_path: Path) -> None:
    path = write(tmp_path / "bars.csv", [row(TUE, 0), row(TUE, 1), row(TUE, 1)])
    assert bad(path) == f"{path}:4: a second row for the same symbol and minute"


def test_price_off_the_grid(tmp_path: Path) -> None:
    path = write(tmp_path / "bars.csv", [row(TUE, 0), row(TUE, 1, h=10_051)])
    assert bad(path) == f"{path}:3: a price off the KRX tick grid"


def test_outside_the_limits(tmp_path: Path) -> None:
    # prev_close 10,000: the upper limit is 13,000
    path = write(tmp_path / "bars.csv", [row(TUE, 0), row(TUE, 1, 12_900, 13_100, 12_900, 13_000)])
    assert bad(path) == (f"{path}:3: outside the limits: high above the upper limit from "
                         "prev_close")  # fmt: skip


@pytest.mark.parametrize(
    ("rows", "problem"),
    [
        ([row(date(2026, 3, 7), 0)], "wrong day: 2026-03-07 is not a KRX session day"),
        ([row(TUE, -10)], "wrong day: minute 2026-03-10T08:50:00+09:00 is outside the session"),
        ([row(TUE, 0), row(TUE, 400)], "wrong day: minute 2026-03-10T15:40:00+09:00 is outside"),
    ],
)
def test_wrong_day(tmp_path: Path, rows: list[str], problem: str) -> None:
    path = write(tmp_path / "bars.csv", rows)
    assert re.match(rf"{re.escape(str(path))}:\d+: {re.escape(problem)}", bad(path))


def test_a_range_without_any_session_of_the_data(tmp_path: Path) -> None:
    path = write(tmp_path / "bars.csv", two_days())
    assert bad(path, date(2026, 4, 1), date(2026, 4, 30)) == (
        f"{path}: wrong day: no session of the data (2026-03-09..2026-03-10) falls in "
        "2026-04-01..2026-04-30"
    )


def test_a_folder_names_the_file_at_fault(tmp_path: Path) -> None:
    write(tmp_path / "a.csv", [row(MON, 0)])
    b = write(tmp_path / "b.csv", [row(TUE, 0), row(TUE, 1, c=10_021)])
    assert bad(tmp_path) == f"{b}:3: a price off the KRX tick grid"


def test_the_fast_parquet_export_writes_what_the_csv_export_writes(tmp_path: Path) -> None:
    from market.bars import write_simulated_parquet
    from market.replay_file import write_replay_csv
    from market.sim import SimulatedMarket

    session = CAL.session(TUE)
    assert session is not None
    market = SimulatedMarket(3, session, 12)
    write_replay_csv(market, tmp_path / "a.csv")
    write_simulated_parquet(market, tmp_path / "b.parquet")
    (a,) = load_bars(tmp_path / "a.csv", CAL)
    (b,) = load_bars(tmp_path / "b.parquet", CAL)
    assert a.symbols == b.symbols
    assert a.statics == b.statics
    for name in ("open", "high", "low", "close", "volume", "auction_price", "auction_volume"):
        assert np.array_equal(getattr(a, name), getattr(b, name), equal_nan=True), name
