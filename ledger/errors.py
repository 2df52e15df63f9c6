"""Ledger errors, grouped by what the caller must do.

    LedgerError                     root: every error the ledger raises
    ├── LedgerUnavailable           transient: Postgres unreachable, the connection dropped, or
    │                               the call met a deadline (connect, statement, lock or per-call
    │                               timeout); nothing was committed (unless the deadline met the
    │                               COMMIT itself: every write is idempotent or fenced, so the
    │                               retry is safe); retry with backoff
    ├── StaleFence                  the write was refused: the worker's fence is not the one the
    │                               lock mirror holds for the symbol (or a newer one exists); stop
    │                               trading that symbol
    ├── OrderNotNew                 the fenced claim NEW -> SUBMITTING found the order already
    │   │                           past NEW (and not claimed by this worker and fence): do not
    │   │                           send it
    │   └── OrderWithdrawn          ... because the symbol's current owner withdrew it
    ├── LossLimitReached            the BUY was refused: the day's realized loss reached the daily
    │                               loss limit (Invariant 5); selling is still allowed
    ├── SymbolDrifted               the BUY was refused: the account reconciliation found the
    │                               symbol's holdings at the broker differ from the ledger's, and
    │                               nothing has explained it yet; selling is still allowed
    ├── CapitalLimitExceeded        (also a ValueError) the BUY would cost more than the worker's
    │                               capital limit (Invariant 6); resize the order
    ├── InvalidOrderTransition      a status change the order state machine does not allow
    ├── OrderNotFound               (also a LookupError) no order with that client order id
    └── LedgerInconsistent          fatal: the broker's figures contradict the ledger (cumulative
                                    fills going backwards, a sell with no position); page someone

`sqlalchemy.exc` and `psycopg` exceptions never leave this package: `translate_db_errors()`
re-raises them as `LedgerUnavailable` (connection-level) or `LedgerError` (anything else),
`from` the original.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from sqlalchemy import exc as sa_exc


class LedgerError(Exception):
    """Root of every error the ledger raises."""


class LedgerUnavailable(LedgerError):
    """Transient: the database could not be reached or the connection broke. Retry later."""


class StaleFence(LedgerError):
    """The order was refused because its fence is not the symbol's current one."""


class OrderNotNew(LedgerError):
    """The claim for sending was refused: the order is no longer NEW. Never send it."""

    def __init__(self, client_order_id: str, status: str) -> None:
        super().__init__(f"order {client_order_id} is {status}, not NEW: not claimed for sending")
        self.client_order_id = client_order_id
        self.status = status


class OrderWithdrawn(OrderNotNew):
    """The claim for sending was refused: the symbol's current owner withdrew the order."""


class LossLimitReached(LedgerError):
    """A BUY was refused because the day's realized loss reached the daily loss limit."""


class SymbolDrifted(LedgerError):
    """A BUY was refused because an unexplained account drift on its symbol is open."""


class CapitalLimitExceeded(LedgerError, ValueError):
    """A BUY was refused because qty × price + commission exceeds the capital limit."""


class InvalidOrderTransition(LedgerError):
    """The order state machine does not allow this status change."""

    def __init__(self, client_order_id: str, current: str, requested: str) -> None:
        super().__init__(f"order {client_order_id}: {current} -> {requested} is not allowed")
        self.client_order_id = client_order_id
        self.current = current
        self.requested = requested


class OrderNotFound(LedgerError, LookupError):
    """No order with the given client order id."""


class LedgerInconsistent(LedgerError):
    """Fatal: the broker's report contradicts what the ledger holds."""


@contextmanager
def translate_db_errors() -> Iterator[None]:
    """Re-raise driver and SQLAlchemy exceptions as ledger errors (ours pass through)."""
    try:
        yield
    except LedgerError:
        raise
    except (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError) as exc:
        raise LedgerUnavailable(_one_line(exc)) from exc
    except sa_exc.DBAPIError as exc:
        if exc.connection_invalidated:
            raise LedgerUnavailable(_one_line(exc)) from exc
        raise LedgerError(_one_line(exc)) from exc
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        raise LedgerUnavailable(_one_line(exc)) from exc
    except (sa_exc.SQLAlchemyError, psycopg.Error) as exc:
        raise LedgerError(_one_line(exc)) from exc


def _one_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
