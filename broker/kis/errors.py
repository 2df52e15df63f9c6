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
                                   retrying will not help, an operator must look. An order
                                   refused with a code of `KNOWN_REFUSALS` becomes
                                   `OrderRejected`; any other non-"0" reply to an order becomes
                                   `OrderOutcomeUnknown` (see `broker.kis.client`).
"""

from __future__ import annotations

from collections.abc import Mapping

from broker.errors import BrokerError, BrokerUnavailable

#: Per-second request budget of the app key exceeded ("초당 거래건수를 초과하였습니다"). The
#: gateway answers it before anything reaches the order system.
RATE_LIMITED = "EGW00201"
#: The access token is not one KIS knows ("유효하지 않은 token 입니다").
TOKEN_INVALID = "EGW00121"  # noqa: S105 (a message code)
#: The access token has expired ("기간이 만료된 token 입니다").
TOKEN_EXPIRED = "EGW00123"  # noqa: S105 (a message code)
#: Token issued less than a minute ago ("1분당 1회"); the token endpoint answers HTTP 403.
TOKEN_TOO_SOON = "EGW00133"  # noqa: S105 (a message code)
#: Gateway refusals after which the request is sent again with a fresh token: the gateway
#: refused it before it reached the order system, so an order sent again is not a second one.
TOKEN_REFUSALS = frozenset({TOKEN_INVALID, TOKEN_EXPIRED})

#: Gateway trouble (temporary error, server error, routing errors, connection or transaction
#: time exceeded): a read answered so is tried again; an order answered so has an unknown outcome.
GATEWAY_TRANSIENT = frozenset(
    {"EGW00001", "EGW00002", "EGW00202", "EGW00203", "EGW00300", "EGW00301", "EGW00302"}
)

#: Replies to an order that mean "not placed", by ``msg_cd``. Kept short on purpose: KIS does
#: not document which codes guarantee that an order was not placed, so any other non-"0" reply
#: to an order (EGW00203 routing error, EGW00301/EGW00302 "check the previous transaction", a
#: code never seen) is an unknown outcome: looked up, never resent. Codes are from replies
#: quoted by public KIS client code, except where marked unconfirmed.
KNOWN_REFUSALS: Mapping[str, str] = {
    "APBK0952": "real: more than the account can pay for (주문가능금액을 초과)",
    "APBK0919": "real: not enough deposit (예수금 부족)",
    "APBK0400": "real: more than the sellable quantity (주문가능수량을 초과)",
    "APBK0918": "real: outside trading hours, or not enough cash or holdings",
    "APBK0656": "real: no such symbol (해당종목정보가 없습니다)",
    "40250000": "mock: more than the account can pay for (모의투자 주문가능금액이 부족)",
    "40270000": "mock: more than the sellable quantity (unconfirmed: the project's exchange)",
    "40580000": "mock: market closed (모의투자 장종료)",
    "40310000": "mock: symbol not tradable (모의투자 매매불가 종목)",
    "40100000": "mock: not offered on the mock domain / not a business day",
    "OPSQ2000": "input check: account number (INPUT INVALID_CHECK_ACNO)",
    "OPSQ2001": "input check: a field of the request (INPUT INVALID_CHECK_...)",
    "OPSQ2002": "input check: a field's length (INPUT INVALID_CHECK_FIELD_LENGTH)",
}


class TokenUnavailable(BrokerUnavailable):
    """Transient: no valid access token could be obtained before the deadline."""


class TokenTooSoon(TokenUnavailable):
    """KIS refused to issue a token (EGW00133): one was issued for this app key under a minute
    ago, possibly by a process outside this fleet's Redis."""


class KisRefused(BrokerError):
    """Final: KIS refused a request (`rt_cd` != "0")."""

    def __init__(self, msg_cd: str, msg1: str, path: str) -> None:
        super().__init__(f"{path}: {msg_cd} {msg1}".strip())
        self.msg_cd = msg_cd
        self.msg1 = msg1
        self.path = path
