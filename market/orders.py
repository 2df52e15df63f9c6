"""Order values shared by the ledger and every broker adapter: sides, order types, our and the
broker's order ids, an order request, the broker's acknowledgement and its cumulative report.

Broker order ids are canonical from the adapter onwards (`canonical_broker_order_id`): KIS pads
its order number (`ODNO`) with zeros to ten digits in some replies and not in others, and the
ledger compares ids as strings, so every id is brought to one spelling where it enters.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import NewType

ClientOrderId = NewType("ClientOrderId", str)
BrokerOrderId = NewType("BrokerOrderId", str)


#: KIS order numbers (ODNO) are ten digits, zero-padded.
BROKER_ORDER_ID_WIDTH = 10


def canonical_broker_order_id(raw: str) -> BrokerOrderId:
    """One spelling per broker order id: digits zero-padded to ten (KIS `ODNO`), so "117057",
    " 0000117057" and "0000117057" are the same order. Ids that are not all digits (another
    broker's) are kept as given, minus surrounding blanks. ValueError for an empty id.
    """
    text = raw.strip()
    if not text:
        raise ValueError("empty broker order id")
    if text.isdigit():
        return BrokerOrderId(text.lstrip("0").rjust(BROKER_ORDER_ID_WIDTH, "0"))
    return BrokerOrderId(text)


class Side(StrEnum):
    BUY = "BUY"
    SELL = "SELL"


class OrderType(StrEnum):
    LIMIT = "LIMIT"  # KIS ORD_DVSN 00
    MARKET = "MARKET"  # KIS ORD_DVSN 01


@dataclass(frozen=True, slots=True)
class OrderRequest:
    symbol: str
    side: Side
    qty: int
    order_type: OrderType
    price: Decimal | None = None  # required for LIMIT, on the tick grid; None for MARKET


@dataclass(frozen=True, slots=True)
class OrderAck:
    broker_order_id: BrokerOrderId
    accepted_at: datetime


@dataclass(frozen=True, slots=True)
class OrderStatus:
    """Cumulative state of one broker order (KIS inquire-daily-ccld row)."""

    broker_order_id: BrokerOrderId
    symbol: str
    side: Side
    qty: int  # ordered
    filled_qty: int  # cumulative (tot_ccld_qty)
    filled_amount: Decimal  # cumulative won (tot_ccld_amt): sum of qty x price per execution
    remaining_qty: int  # still working (rmn_qty); 0 once done, canceled or rejected
    rejected_qty: int  # rjct_qty
    canceled: bool  # cncl_yn
    ordered_at: datetime
    updated_at: datetime

    @property
    def done(self) -> bool:
        """No quantity is working any more: further polls will not change the fills."""
        return self.remaining_qty == 0

    @property
    def avg_price(self) -> Decimal | None:
        return self.filled_amount / self.filled_qty if self.filled_qty else None
