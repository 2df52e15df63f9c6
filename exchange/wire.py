"""What every handler shares: the request (`Call`), the reply (`Reply`), KIS's string
formatting, and paging with fixed-width space-padded continuation keys.

Paging (inquire-daily-ccld, inquire-balance, inquire-psbl-rvsecncl): a reply carries
``ctx_area_fk100`` (the search condition) and ``ctx_area_nk100`` (where the next page starts),
each exactly 100 characters, space-padded on the right. The client asks for the next page with
the request header ``tr_cont: N`` and both keys sent back byte for byte; a key that differs
(trimmed, say) is refused as invalid input. The reply header ``tr_cont`` is "F" (first page,
more follow), "M" (a later page, more follow), "D" (first page, the last) or "E" (a later page,
the last). Without ``tr_cont: N`` the first page comes back whatever keys are sent.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal
from typing import Any, TypeVar

from exchange import errors
from exchange.accounts import AccountState
from exchange.config import ExchangeConfig
from exchange.venue import Venue
from market.clock import KST

T = TypeVar("T")
KEY_WIDTH = 100


@dataclass
class Call:
    """One authenticated API request."""

    venue: Venue
    account: AccountState
    app_key: str
    tr_id: str
    tr_cont: str  # request header: "N" asks for the next page
    params: dict[str, str]

    @property
    def config(self) -> ExchangeConfig:
        return self.venue.config

    @property
    def mock(self) -> bool:
        return self.venue.config.mock

    def get(self, name: str, default: str = "") -> str:
        return self.params.get(name, default)

    def need(self, name: str) -> str:
        value = self.params.get(name, "").strip()
        if not value:
            raise errors.invalid_input(name)
        return value

    def number(self, name: str) -> int:
        text = self.need(name)
        if not text.isdigit():
            raise errors.invalid_input(name)
        return int(text)

    def check_account(self) -> None:
        spec = self.account.spec
        if self.get("CANO") != spec.cano or self.get("ACNT_PRDT_CD") != spec.product_code:
            raise errors.invalid_account()


@dataclass
class Reply:
    body: dict[str, Any]
    tr_cont: str = ""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


def ok(msg: str = "정상처리 되었습니다.", code: str = "MCA00000", **outputs: Any) -> dict[str, Any]:
    return {"rt_cd": "0", "msg_cd": code, "msg1": msg, **outputs}


# ----- formatting: KIS sends every value as a string -------------------------------------------


def s(value: int | Decimal) -> str:
    """A whole number of won or shares: "70000"."""
    return str(int(value))


def rate(value: Decimal, places: int = 2) -> str:
    """A percentage or ratio with fixed decimals: "1.25"."""
    return f"{value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP):f}"


def avg(amount: Decimal, qty: int, places: int = 0) -> str:
    if not qty:
        return "0" if not places else rate(Decimal(0), places)
    value = (amount / qty).quantize(Decimal(1).scaleb(-places), rounding=ROUND_DOWN)
    return f"{value:f}"


def pct(part: Decimal, whole: Decimal) -> str:
    return rate(part / whole * 100) if whole else "0.00"


def hms(at: datetime) -> str:
    return at.astimezone(KST).strftime("%H%M%S")


def ymd(at: datetime) -> str:
    return at.astimezone(KST).strftime("%Y%m%d")


def sign(price: Decimal, base: Decimal, upper: Decimal, lower: Decimal) -> str:
    """prdy_vrss_sign: 1 upper limit, 2 up, 3 unchanged, 4 lower limit, 5 down."""
    if price >= upper:
        return "1"
    if price <= lower:
        return "4"
    return "2" if price > base else "5" if price < base else "3"


# ----- paging -----------------------------------------------------------------------------------


def pad(text: str) -> str:
    return text[:KEY_WIDTH].ljust(KEY_WIDTH)


@dataclass(frozen=True)
class Page:
    rows: list[Any]
    fk100: str
    nk100: str
    tr_cont: str


def paginate(
    call: Call, rows: Sequence[T], key: Callable[[T], str], size: int, condition: str
) -> Page:
    """One page of `rows` (already filtered and ordered) after the request's cursor."""
    fk = pad(condition)
    start = 0
    following = call.tr_cont.strip().upper() == "N"
    if following:
        sent_fk, sent_nk = call.get("CTX_AREA_FK100"), call.get("CTX_AREA_NK100")
        if sent_fk != fk:
            raise errors.invalid_input("CTX_AREA_FK100")
        cursor = sent_nk.rstrip(" ") if len(sent_nk) == KEY_WIDTH else None
        keys = [key(r) for r in rows]
        if cursor is None or cursor not in keys:
            raise errors.invalid_input("CTX_AREA_NK100")
        start = keys.index(cursor) + 1
    chunk = list(rows[start : start + size])
    more = start + size < len(rows)
    last = key(chunk[-1]) if chunk else ""
    nk = pad(f"{last}" if more else "")
    tr_cont = ("M" if more else "E") if following else ("F" if more else "D")
    return Page(chunk, fk, nk, tr_cont)
