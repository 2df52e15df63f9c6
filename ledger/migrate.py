"""Alembic, driven programmatically: no alembic.ini, script_location = the `migrations` package.

Every call holds a Postgres advisory lock for its transaction, so several processes running
`migrate` at once apply each revision exactly once; the whole upgrade is one transaction
(Postgres DDL is transactional), so a failure leaves the schema where it was.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, create_engine, pool, text

from ledger.db import normalize_url
from ledger.errors import translate_db_errors

#: pg_advisory_xact_lock key: "tradefleet migrations".
_LOCK_KEY = 0x7466_6D69_6772


def _script_location() -> str:
    spec = importlib.util.find_spec("migrations")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the `migrations` package is not installed")
    return str(Path(next(iter(spec.submodule_search_locations))))


def _config(connection: Connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", _script_location())
    # The connection is handed over directly, so no URL goes through configparser
    # interpolation (a '%' in a password would break it).
    cfg.attributes["connection"] = connection
    return cfg


def _run(url: str, action: str) -> None:
    engine = create_engine(normalize_url(url), poolclass=pool.NullPool)
    try:
        with translate_db_errors(), engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
            cfg = _config(conn)
            if action == "upgrade":
                command.upgrade(cfg, "head")
            else:
                command.downgrade(cfg, "base")
    finally:
        engine.dispose()


def upgrade_head(url: str) -> None:
    """Apply every migration up to head. Idempotent."""
    _run(url, "upgrade")


def downgrade_base(url: str) -> None:
    """Revert every migration (drops the ledger tables; `alembic_version` stays, empty)."""
    _run(url, "downgrade")


def current_revision(url: str) -> str | None:
    """The revision the database is at, or None for an unmigrated database."""
    engine = create_engine(normalize_url(url), poolclass=pool.NullPool)
    try:
        with translate_db_errors(), engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def head_revision() -> str | None:
    """The newest revision the installed migrations know."""
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", _script_location())
    return ScriptDirectory.from_config(cfg).get_current_head()
