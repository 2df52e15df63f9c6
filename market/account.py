"""What a brokerage account holds, as the broker reports it: cash and holdings per symbol.

Shared by every broker adapter (`Broker.account`) and the trading core's reconciliation, which
compares it with the ledger. Money is exact (`Decimal`, parsed from the broker's strings).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal


@dataclass(frozen=True, slots=True)
class Holding:
    """Shares of one symbol in the account (KIS inquire-balance ``output1`` row)."""

    symbol: str
    qty: int  # hldg_qty: held now, today's executions included
    avg_price: Decimal  # pchs_avg_pric: purchase price per share held, fees excluded
    sellable_qty: int  # ord_psbl_qty: held minus what working SELL orders already cover


@dataclass(frozen=True, slots=True)
class AccountSnapshot:
    """The account at one instant.

    `cash` is the deposit once today's executions have settled (KIS ``prvs_rcdl_excc_amt``,
    the D+2 deposit): executions move it at once, fees and taxes included, so unsettled trades
    never look like drift. None when the broker does not model cash.
    `orderable_cash` is the buying power now (KIS ``ord_psbl_cash``: cash less what working
    BUY orders hold back), None when the broker was not asked. `holdings` lists symbols with
    shares held (qty > 0) only.
    """

    cash: Decimal | None
    holdings: Mapping[str, Holding] = field(default_factory=dict)
    orderable_cash: Decimal | None = None
    as_of: datetime | None = None

    def qty(self, symbol: str) -> int:
        """Shares of `symbol` held (0 when none)."""
        held = self.holdings.get(symbol)
        return held.qty if held is not None else 0
