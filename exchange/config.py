"""The exchange's configuration: accounts, domain, fault knobs; and the KIS constants it serves.

Everything here is a frozen value built once (from the environment by the CLI, or directly by
tests) and handed to `serve_exchange`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

from market.calendar import Session
from market.costs import DEFAULT_COMMISSION_RATE

Domain = Literal["real", "mock"]

#: Requests per second per app key before KIS answers EGW00201 (its own client sleeps 0.05 s on
#: real and 0.5 s on mock between calls).
DEFAULT_RATE_PER_S: dict[str, int] = {"real": 20, "mock": 2}
#: inquire-daily-ccld rows per page (KIS's sample: 100 on real accounts, 15 on mock ones).
CCLD_PAGE: dict[str, int] = {"real": 100, "mock": 15}
#: inquire-balance rows per page (KIS's sample: 50 real, 20 mock).
BALANCE_PAGE: dict[str, int] = {"real": 50, "mock": 20}
#: inquire-psbl-rvsecncl rows per page (KIS's sample: 50).
PSBL_RVSECNCL_PAGE = 50
#: Minute bars per inquire-time-itemchartprice call, and rows of volume-rank.
BARS_PER_CALL = 30
RANK_ROWS = 30
#: WebSocket subscriptions per session.
MAX_SUBSCRIPTIONS = 40
#: The KRX routing organisation number our replies carry (KRX_FWDG_ORD_ORGNO, ord_gno_brno).
ORGNO = "06010"


@dataclass(frozen=True)
class ExchangeAccount:
    """One KIS customer: an app key pair, one 10-digit account, its HTS id and starting cash."""

    app_key: str
    app_secret: str = field(repr=False)
    account: str = "12345678-01"
    hts_id: str = "user01"
    cash: Decimal = Decimal(100_000_000)
    name: str = "SIM ACCOUNT"

    def __post_init__(self) -> None:
        digits = self.account.replace("-", "")
        if len(digits) != 10 or not digits.isdigit():
            raise ValueError("account must be 10 digits: 8-digit CANO + 2-digit product code")
        if not self.app_key or not self.app_secret:
            raise ValueError("app_key and app_secret must not be empty")
        if self.cash < 0:
            raise ValueError("cash must be >= 0")

    @property
    def cano(self) -> str:
        return self.account.replace("-", "")[:8]

    @property
    def product_code(self) -> str:
        return self.account.replace("-", "")[8:]

    @property
    def number(self) -> str:
        """The ten digits without the dash (the fill notices' ACNT_NO)."""
        return self.cano + self.product_code


@dataclass(frozen=True)
class ExchangeConfig:
    """How the exchange behaves.

    `session` is the simulated trading day (default: the session of the clock's day, else the
    next). `rate_limit=False` turns the per-app-key limit off (a paper venue for the fleet).
    `listing_lag_s` delays an order's appearance in inquire-daily-ccld by that many exchange-
    clock seconds. `ambiguous_rate` is the share of order-cash replies that come back as an
    error although the order was placed (drawn from `fault_seed`, default `seed`).
    """

    accounts: tuple[ExchangeAccount, ...]
    domain: Domain = "mock"
    seed: int = 0
    n_symbols: int = 300
    session: Session | None = None
    rate_limit: bool = True
    rate_per_s: int | None = None  # default: DEFAULT_RATE_PER_S[domain]
    listing_lag_s: float = 0.0
    ambiguous_rate: float = 0.0
    fault_seed: int | None = None
    commission_rate: Decimal = DEFAULT_COMMISSION_RATE
    token_ttl_s: float = 86_400.0
    token_reuse_s: float = 6 * 3_600.0
    token_issue_interval_s: float = 60.0
    pump_interval_s: float = 0.1  # wall seconds between matching passes
    ping_interval_s: float = 10.0  # wall seconds between PINGPONG frames
    first_order_no: int = 1

    def __post_init__(self) -> None:
        if self.domain not in ("real", "mock"):
            raise ValueError(f"domain must be 'real' or 'mock', got {self.domain!r}")
        if not self.accounts:
            raise ValueError("at least one account is needed")
        keys = [a.app_key for a in self.accounts]
        numbers = [a.number for a in self.accounts]
        if len(set(keys)) != len(keys) or len(set(numbers)) != len(numbers):
            raise ValueError("app keys and account numbers must be unique")
        if not 0.0 <= self.ambiguous_rate <= 1.0:
            raise ValueError("ambiguous_rate must be in [0, 1]")
        if self.listing_lag_s < 0:
            raise ValueError("listing_lag_s must be >= 0")
        if self.rate_per_s is not None and self.rate_per_s <= 0:
            raise ValueError("rate_per_s must be > 0")

    @property
    def rate(self) -> int:
        return self.rate_per_s or DEFAULT_RATE_PER_S[self.domain]

    @property
    def mock(self) -> bool:
        return self.domain == "mock"

    def tr(self, real: str) -> str:
        """A trading tr_id for this domain: the V-prefixed one on mock."""
        return "V" + real[1:] if self.mock and real[0] in "TJC" else real
