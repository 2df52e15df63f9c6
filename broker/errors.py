"""Broker errors, grouped by what the caller must do.

BrokerError
├── BrokerUnavailable       transient: the request did not reach the broker; retry with backoff
│   └── RateLimited         transient: the shared rate limit refused it (KIS EGW00201)
├── OrderOutcomeUnknown     the request may or may not have been placed (timeout, dropped
│                           connection): never resend blindly; reconcile with `find_orders`
├── OrderRejected           final: the broker refused the order; `reason` says why
└── UnknownOrder            the broker has no order with that id
"""

from __future__ import annotations


class BrokerError(Exception):
    """Root of every error a broker adapter raises."""


class BrokerUnavailable(BrokerError):
    """Transient: nothing was placed; the caller may retry with backoff."""


class RateLimited(BrokerUnavailable):
    """Transient: the account's shared request budget is exhausted."""


class OrderOutcomeUnknown(BrokerError):
    """The order may have been placed. Reconcile via `Broker.find_orders` before any resend."""


class OrderRejected(BrokerError):
    """Final: the broker refused the order."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UnknownOrder(BrokerError):
    """The broker does not know this order id."""
