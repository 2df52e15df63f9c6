"""The Redis keys the KIS adapter shares across the fleet, named from the fleet's prefix alone.

`broker` never imports `coordination`, so the adapter names its own keys; the table in the
`broker.kis` docstring lists them. An app key is never written into a key name as it is: a key
name shows up in ``redis-cli --scan`` and in logs, so it carries a short hash of the app key.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


def app_key_hash(app_key: str) -> str:
    """Twelve hex digits of SHA-256 of the app key: tells app keys apart, reveals nothing."""
    return hashlib.sha256(app_key.encode()).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class KisKeys:
    """Key names for one fleet prefix, one KIS domain and one app key."""

    prefix: str
    domain: str
    app_key: str

    def __repr__(self) -> str:
        return f"KisKeys({self.prefix!r}, {self.domain!r}, {self.app_key_hash})"

    @property
    def app_key_hash(self) -> str:
        return app_key_hash(self.app_key)

    @property
    def rate(self) -> str:
        """Zset: requests granted in the current window (the fleet-wide request budget)."""
        return f"{self.prefix}:kis:rate"

    @property
    def token(self) -> str:
        """String: the access token of this domain and app key, with its expiry (JSON)."""
        return f"{self.prefix}:kis:token:{self.domain}:{self.app_key_hash}"

    @property
    def token_issue(self) -> str:
        """String: held while one process may ask KIS for a token (at most once a minute)."""
        return f"{self.prefix}:kis:token:issue:{self.domain}:{self.app_key_hash}"

    @property
    def gateway(self) -> str:
        """String: the lease of the active gateway of this domain and app key (JSON: its id
        and relay URL), with a PX TTL renewed while it lives (`broker.kis.gateway`)."""
        return f"{self.prefix}:kis:gateway:{self.domain}:{self.app_key_hash}"

    # ----- the gateway's fan-out (broker.kis.fanout writes, broker.kis.feed reads) ----------
    # Market data is the same for every app key of a domain: named by domain only.

    @property
    def md_universe(self) -> str:
        """String: JSON ``{"day", "at", "n_bars", "instruments": [...]}``, the day's universe as
        the active gateway described it (PX one day)."""
        return f"{self.prefix}:kis:md:{self.domain}:universe"

    @property
    def md_rows(self) -> str:
        """Hash symbol -> JSON ``{"at", "instrument", "price", "book", "bars"}``: the symbol's
        latest REST quotation (inquire-price, asking price, completed minute bars), ``at`` the
        gateway's clock when it was read (PX one day, renewed on each write)."""
        return f"{self.prefix}:kis:md:{self.domain}:rows"

    @property
    def md_trades(self) -> str:
        """Hash symbol -> JSON of the symbol's latest real-time trade (H0STCNT0: price,
        cumulative volume and value, day high/low, best bid/ask and sizes, ``at``), for the
        symbols the fleet holds (PX one day, renewed on each write)."""
        return f"{self.prefix}:kis:md:{self.domain}:trades"

    def md_ticks(self, symbol: str) -> str:
        """Stream (MAXLEN ~ 100, PX one day): every real-time trade of a held `symbol`, as in
        `md_trades` (field ``trade``), for the holder that waits on the trade that reaches a sell
        level (`GatewayMarketData.wait_price`)."""
        return f"{self.prefix}:kis:md:{self.domain}:ticks:{symbol}"

    @property
    def md_state(self) -> str:
        """Hash: the publisher's last cycle (``at``, ``cycle_s``, ``requests``, ``symbols``,
        ``held``, ``gateway``), for operators and the health of the feed."""
        return f"{self.prefix}:kis:md:{self.domain}:state"

    def fills(self, worker_id: str) -> str:
        """Stream (MAXLEN ~ 1,000, PX one day): the fill notices of orders on symbols
        `worker_id` holds, routed by the gateway (hints: the worker asks the broker)."""
        return f"{self.prefix}:kis:fills:{self.app_key_hash}:{worker_id}"
