"""Paths, transaction ids and field parsing shared by the KIS order and market-data code.

KIS sends every number as a string ("70000", "0000000010", sometimes "" for none) and every
time as ``HHMMSS`` next to a ``YYYYMMDD`` date, in Korea time. Field names come in lower case
in most replies and in upper case in some (the order-cash reply), so lookups try both.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime, time
from decimal import Decimal, InvalidOperation
from typing import Any

from broker.kis.client import TrId
from market.clock import KST

_BASE = "/uapi/domestic-stock/v1"
ORDER_CASH = f"{_BASE}/trading/order-cash"
ORDER_RVSECNCL = f"{_BASE}/trading/order-rvsecncl"
DAILY_CCLD = f"{_BASE}/trading/inquire-daily-ccld"
PRICE = f"{_BASE}/quotations/inquire-price"
ASKING_PRICE = f"{_BASE}/quotations/inquire-asking-price-exp-ccn"
MINUTE_BARS = f"{_BASE}/quotations/inquire-time-itemchartprice"
DAILY_BARS = f"{_BASE}/quotations/inquire-daily-itemchartprice"
VOLUME_RANK = f"{_BASE}/quotations/volume-rank"

TR_BUY = TrId("TTTC0012U", "VTTC0012U")
TR_SELL = TrId("TTTC0011U", "VTTC0011U")
TR_CANCEL = TrId("TTTC0013U", "VTTC0013U")
TR_DAILY_CCLD = TrId("TTTC0081R", "VTTC0081R")  # orders of the last three months
TR_PRICE = TrId.same("FHKST01010100")
TR_ASKING_PRICE = TrId.same("FHKST01010200")
TR_MINUTE_BARS = TrId.same("FHKST03010200")
TR_DAILY_BARS = TrId.same("FHKST03010100")
TR_VOLUME_RANK = TrId.same("FHPST01710000")  # real domain only: the mock domain lacks it

#: KIS codes in the sll_buy_dvsn_cd field and the SLL_BUY_DVSN_CD filter.
SELL_CODE = "01"
BUY_CODE = "02"
#: Minute bars per inquire-time-itemchartprice call.
BARS_PER_CALL = 30


def field(row: Mapping[str, Any], name: str) -> str:
    """`row[name]` in either case, as a stripped string ("" when absent)."""
    value = row.get(name.lower(), row.get(name.upper(), ""))
    return "" if value is None else str(value).strip()


def raw(row: Mapping[str, Any], name: str) -> str:
    """`row[name]` in either case exactly as sent ("" when absent): for values that must go
    back to KIS byte for byte, such as the space-padded paging keys CTX_AREA_FK100 / NK100."""
    value = row.get(name.lower(), row.get(name.upper(), ""))
    return "" if value is None else str(value)


def num(row: Mapping[str, Any], name: str) -> Decimal:
    text = field(row, name).replace(",", "")
    if not text:
        return Decimal(0)
    try:
        return Decimal(text)
    except InvalidOperation:
        raise ValueError(f"KIS field {name}={text!r} is not a number") from None


def qty(row: Mapping[str, Any], name: str) -> int:
    return int(num(row, name))


def ymd(day: date) -> str:
    return day.strftime("%Y%m%d")


def parse_day(text: str) -> date:
    return datetime.strptime(text, "%Y%m%d").replace(tzinfo=KST).date()


def at(day: date, hhmmss: str) -> datetime:
    """A KIS date and ``HHMMSS`` time as an aware KST datetime."""
    text = hhmmss.strip().zfill(6)[:6]
    moment = time(int(text[:2]), int(text[2:4]), int(text[4:6]))
    return datetime.combine(day, moment, tzinfo=KST)


def output(body: Mapping[str, Any], name: str = "output") -> dict[str, Any]:
    """A single-object output (KIS documents some as a one-element array)."""
    value = body.get(name, body.get(name.capitalize()))
    if isinstance(value, list):
        value = value[0] if value else {}
    return value if isinstance(value, dict) else {}


def rows(body: Mapping[str, Any], name: str) -> list[dict[str, Any]]:
    value = body.get(name, body.get(name.capitalize()))
    if isinstance(value, dict):
        return [value]
    return [r for r in value if isinstance(r, dict)] if isinstance(value, list) else []
