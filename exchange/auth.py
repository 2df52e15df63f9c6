"""Access tokens, WebSocket approval keys and the per-app-key request budget.

Tokens follow KIS's published rules on the exchange clock: valid 24 hours; a request within 6
hours of the last issue gets the same token back (with its original expiry); at most one issue
a minute per app key (else HTTP 403 EGW00133). A token nobody issued answers EGW00121, an
expired one EGW00123. Earlier tokens stay valid until their own expiry.

The rate limit is counted on arrival over a sliding wall-clock second per app key (KIS's limit
is real time, whatever the simulated clock does): a request that would make any one-second
window hold more than `rate` admitted arrivals is refused with EGW00201 and does not count.
The arrival is the kernel's receive time of the request's first byte (`exchange.arrival`),
not the moment the exchange's event loop got to it.
"""

from __future__ import annotations

import bisect
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from exchange import errors
from exchange.config import ExchangeAccount, ExchangeConfig
from market.clock import KST, Clock


@dataclass(frozen=True)
class Token:
    value: str
    app_key: str
    issued_at: datetime
    expires_at: datetime


class TokenBook:
    """Issues and checks access tokens and approval keys for the configured app keys."""

    def __init__(self, config: ExchangeConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self._accounts = {a.app_key: a for a in config.accounts}
        self._tokens: dict[str, Token] = {}
        self._latest: dict[str, Token] = {}  # app key -> last token issued
        self._last_issue: dict[str, datetime] = {}
        self._approvals: dict[str, str] = {}  # approval key -> app key
        self.issues: dict[str, int] = {}  # app key -> successful token replies

    def account(self, app_key: str) -> ExchangeAccount | None:
        return self._accounts.get(app_key)

    def _check_pair(self, app_key: str, secret: str) -> ExchangeAccount:
        account = self._accounts.get(app_key)
        if account is None:
            raise errors.TokenError(403, "EGW00103", "유효하지 않은 AppKey입니다.")
        if not secrets.compare_digest(account.app_secret, secret):
            raise errors.TokenError(403, "EGW00105", "유효하지 않은 AppSecret입니다.")
        return account

    def issue(self, app_key: str, app_secret: str) -> Token:
        """POST /oauth2/tokenP."""
        self._check_pair(app_key, app_secret)
        now = self.clock.now()
        cfg = self.config
        last = self._last_issue.get(app_key)
        if last is not None and (now - last).total_seconds() < cfg.token_issue_interval_s:
            raise errors.token_too_soon()
        self._last_issue[app_key] = now
        self.issues[app_key] = self.issues.get(app_key, 0) + 1
        latest = self._latest.get(app_key)
        if (
            latest is not None
            and (now - latest.issued_at).total_seconds() < cfg.token_reuse_s
            and now < latest.expires_at
        ):
            return latest
        # Whole seconds: access_token_token_expired has no fraction, and clients compare
        # against it.
        issued = now.replace(microsecond=0)
        token = Token(
            value=_token_text(),
            app_key=app_key,
            issued_at=issued,
            expires_at=issued + timedelta(seconds=cfg.token_ttl_s),
        )
        self._tokens[token.value] = token
        self._latest[app_key] = token
        return token

    def check(self, authorization: str, app_key: str) -> Token:
        """The bearer token of a request: EGW00121 unless known and of this app key,
        EGW00123 once expired."""
        scheme, _, value = authorization.strip().partition(" ")
        token = self._tokens.get(value.strip()) if scheme.lower() == "bearer" else None
        if token is None or token.app_key != app_key:
            raise errors.token_invalid()
        if self.clock.now() >= token.expires_at:
            raise errors.token_expired()
        return token

    def approve(self, app_key: str, secret_key: str) -> str:
        """POST /oauth2/Approval: a WebSocket approval key (one per app key, reissued each call
        while the old one stays valid)."""
        self._check_pair(app_key, secret_key)
        key = secrets.token_hex(18)
        key = f"{key[:8]}-{key[8:12]}-{key[12:16]}-{key[16:20]}-{key[20:]}"
        self._approvals[key] = app_key
        return key

    def approved(self, approval_key: str) -> str | None:
        """The app key an approval key belongs to."""
        return self._approvals.get(approval_key)


def _token_text() -> str:
    # KIS hands out a long opaque JWT-like string; only its opacity matters here.
    return "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzUxMiJ9." + secrets.token_urlsafe(96)


def expiry_text(token: Token) -> str:
    """access_token_token_expired: "YYYY-MM-DD HH:MM:SS" on the exchange clock, Korea time."""
    return token.expires_at.astimezone(KST).strftime("%Y-%m-%d %H:%M:%S")


class RateLimiter:
    """A sliding one-second window of admitted requests per app key (wall time), counted at
    each request's arrival (`exchange.arrival`), whatever order they are handled in."""

    def __init__(
        self, rate: int, *, enabled: bool = True, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.enabled = enabled
        self.monotonic = monotonic
        self._windows: dict[str, list[float]] = {}
        #: (arrival, handled) of the latest requests, every app key (`/__exchange/arrivals`)
        self.log: deque[tuple[float, float]] = deque(maxlen=20_000)

    def admit(self, app_key: str, arrived_at: float | None = None) -> bool:
        """Count one arrival (default: now); False when some one-second window holding it
        would then hold more than `rate` admitted requests (it then does not count)."""
        now = self.monotonic()
        at = now if arrived_at is None else min(arrived_at, now)
        self.log.append((at, now))
        if not self.enabled:
            return True
        window = self._windows.setdefault(app_key, [])
        horizon = bisect.bisect_right(window, now - 5.0)
        if horizon:
            del window[:horizon]  # arrivals that can share no window with any new one
        # every window (t - 1, t] holding `at` has t in [at, at + 1): the ones that matter end
        # at `at` or at a later admitted arrival (requests handled out of arrival order)
        ends = [at] + [a for a in window if at < a < at + 1.0]
        for end in ends:
            inside = bisect.bisect_right(window, end) - bisect.bisect_right(window, end - 1.0)
            if inside + 1 > self.rate:
                return False
        bisect.insort(window, at)
        return True
