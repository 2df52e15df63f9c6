"""The schema gate: `run` and the inspection commands read and write the ledger only when the
database's Alembic revision is the code's head.

* behind (an older revision, or an unmigrated database): `SchemaNotCurrent` with the one line
  `database schema <rev> is behind <head>: run 'python -m worker migrate'` (exit 1), or, for
  `run` with `WAIT_FOR_SCHEMA=1`, a wait (not ready) until a migrate brings it to head;
* ahead (a revision this release does not know: a newer release migrated it): refused, exit 1,
  also with `WAIT_FOR_SCHEMA=1`.

Only `alembic_version` is read, so the gate works on any database, migrated or not.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.errors import translate_db_errors
from ledger.migrate import SchemaStatus, schema_status_on


class SchemaNotCurrent(RuntimeError):
    """The database is not at the code's migration head; the message is the one line to show."""

    def __init__(self, status: SchemaStatus) -> None:
        super().__init__(status.problem or "database schema is not current")
        self.status = status


async def schema_status(engine: AsyncEngine) -> SchemaStatus:
    """The database's revision against the code's head (raises `LedgerUnavailable` when the
    database cannot be reached)."""
    with translate_db_errors():
        async with engine.connect() as conn:
            return await conn.run_sync(schema_status_on)


async def check_schema(engine: AsyncEngine) -> SchemaStatus:
    """The gate: return the (current) status, or raise `SchemaNotCurrent`."""
    status = await schema_status(engine)
    if not status.current:
        raise SchemaNotCurrent(status)
    return status


__all__ = ["SchemaNotCurrent", "SchemaStatus", "check_schema", "schema_status"]
