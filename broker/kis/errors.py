"""KIS-specific errors and the gateway message codes the adapter acts on.

Everything here sits in the `broker.errors` tree, so callers that handle `BrokerError` need
nothing KIS-specific:

    BrokerError
    ├── BrokerUnavailable
    │   ├── RateLimited            EGW00201 after the bounded retries, or no limiter slot in time
    │   └── TokenUnavailable       no access token could be had in time (EGW00133, token endpoint
    │                              down); transient
    └── KisRefused                 final: KIS answered rt_cd != "0" to a read (bad parameter,
                                   account not allowed, endpoint not offered on this domain);
                                   retrying will not help, an operator must look. Order refusals
                                   become `OrderRejected` instead.
"""

from __future__ import annotations

from broker.errors import BrokerError, BrokerUnavailable

#: Per-second request budget of the app key exceeded ("초당 거래건수를 초과하였습니다").
RATE_LIMITED = "EGW00201"
#: The access token has expired.
TOKEN_EXPIRED = "EGW00123"  # noqa: S105 (a message code)
#: Token issued less than a minute ago ("1분당 1회"); the token endpoint answers HTTP 403.
TOKEN_TOO_SOON = "EGW00133"  # noqa: S105 (a message code)


class TokenUnavailable(BrokerUnavailable):
    """Transient: no valid access token could be obtained before the deadline."""


class KisRefused(BrokerError):
    """Final: KIS refused a read request (`rt_cd` != "0")."""

    def __init__(self, msg_cd: str, msg1: str, path: str) -> None:
        super().__init__(f"{path}: {msg_cd} {msg1}".strip())
        self.msg_cd = msg_cd
        self.msg1 = msg1
        self.path = path
