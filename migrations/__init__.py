"""Alembic migrations of the ledger schema (run through `ledger.migrate`, no alembic.ini)."""
