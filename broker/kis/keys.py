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
