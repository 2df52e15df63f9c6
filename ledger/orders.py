"""The order state machine: states, the allowed transitions, and the check.

The table below (`TRANSITIONS`) is the whole machine; in short:
NEW -> SUBMITTING -> SENT -> PARTIALLY_FILLED (repeatable) -> FILLED | CANCELED | EXPIRED;
SUBMITTING may also end REJECTED (the broker said a definite no) or become UNKNOWN; NEW may be
WITHDRAWN instead of sent; every non-terminal state after NEW may become UNKNOWN, which the
in-flight tracker resolves from the broker's truth.

* NEW: in the ledger (the fenced insert succeeded), not yet claimed for sending.
* SUBMITTING: claimed for sending by a fenced compare-and-set (`Ledger.begin_submit`) just
  before the broker call: it may be at the broker. It is never withdrawn; an adopter of the
  symbol takes it as UNKNOWN (`Ledger.adopt_position` moves it there) until the broker has
  been asked.
* SENT: the broker accepted it and gave a broker order id (KIS ODNO).
* UNKNOWN: the send's outcome is unknown (timeout, dropped connection); to be reconciled with
  the broker's order list, never resent blindly.
* WITHDRAWN: never sent; withdrawn while NEW by the symbol's current owner (an adopter, or the
  placer giving up), so a stale owner can no longer claim it.
* FILLED, CANCELED, REJECTED, EXPIRED, WITHDRAWN are terminal. CANCELED and EXPIRED orders may
  carry partial fills (the rest was canceled, or the day ended with quantity still working).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

from ledger.errors import InvalidOrderTransition


class OrderState(StrEnum):
    NEW = "NEW"
    SUBMITTING = "SUBMITTING"
    SENT = "SENT"
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    FILLED = "FILLED"
    CANCELED = "CANCELED"
    REJECTED = "REJECTED"
    EXPIRED = "EXPIRED"
    UNKNOWN = "UNKNOWN"
    WITHDRAWN = "WITHDRAWN"


_S = OrderState

#: state -> states it may move to. A state missing from its own set may not be "re-entered".
TRANSITIONS: Mapping[OrderState, frozenset[OrderState]] = {
    # A NEW order reaches the broker only through the fenced claim; unclaimed, it may only be
    # withdrawn.
    _S.NEW: frozenset({_S.SUBMITTING, _S.WITHDRAWN}),
    # The broker call's outcome: acked (SENT), a definite no (REJECTED), no clear answer
    # (UNKNOWN); or the broker's report on it arrives first (fills, cancel, end of day).
    _S.SUBMITTING: frozenset(
        {_S.SENT, _S.PARTIALLY_FILLED, _S.FILLED, _S.CANCELED, _S.REJECTED, _S.EXPIRED}
        | {_S.UNKNOWN}
    ),
    _S.SENT: frozenset(
        {_S.PARTIALLY_FILLED, _S.FILLED, _S.CANCELED, _S.REJECTED, _S.EXPIRED, _S.UNKNOWN}
    ),
    # PARTIALLY_FILLED -> PARTIALLY_FILLED: another partial fill.
    _S.PARTIALLY_FILLED: frozenset(
        {_S.PARTIALLY_FILLED, _S.FILLED, _S.CANCELED, _S.EXPIRED, _S.UNKNOWN}
    ),
    # Reconciliation resolves UNKNOWN: found at the broker (SENT or further), or never placed
    # (REJECTED).
    _S.UNKNOWN: frozenset(
        {_S.SENT, _S.PARTIALLY_FILLED, _S.FILLED, _S.CANCELED, _S.REJECTED, _S.EXPIRED}
    ),
    _S.FILLED: frozenset(),
    _S.CANCELED: frozenset(),
    _S.REJECTED: frozenset(),
    _S.EXPIRED: frozenset(),
    _S.WITHDRAWN: frozenset(),
}

TERMINAL: frozenset[OrderState] = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)
#: Orders a worker (or the one adopting its symbol) still has to drive or reconcile.
UNFINISHED: frozenset[OrderState] = frozenset(
    {_S.NEW, _S.SUBMITTING, _S.SENT, _S.PARTIALLY_FILLED, _S.UNKNOWN}
)


def can_transition(current: OrderState, requested: OrderState) -> bool:
    return requested in TRANSITIONS[current]


def check_transition(client_order_id: str, current: OrderState, requested: OrderState) -> None:
    """Raise `InvalidOrderTransition` unless `current -> requested` is in the table."""
    if not can_transition(current, requested):
        raise InvalidOrderTransition(client_order_id, current.value, requested.value)
