"""Alembic, driven programmatically: no alembic.ini, script_location = the `migrations` package.

Every call holds a Postgres advisory lock for its transaction, so several processes running
`migrate` at once apply each revision exactly once; the whole upgrade is one transaction
(Postgres DDL is transactional), so a failure leaves the schema where it was.

`schema_status` compares the database's revision with the code's head (the schema gate of
`run` and the inspection commands): current, behind (an older revision, or none at all) or
ahead (a revision these migrations do not know: a newer release migrated the database).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
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
    return _scripts().get_current_head()


@cache
def _scripts() -> ScriptDirectory:
    cfg = Config()
    cfg.set_main_option("script_location", _script_location())
    return ScriptDirectory.from_config(cfg)


#: what `database` is called in messages when the database has no revision (unmigrated)
UNMIGRATED = "base"


@dataclass(frozen=True, slots=True)
class SchemaStatus:
    """The database's revision against the code's head."""

    database: str | None  # None: unmigrated (no alembic_version row)
    head: str
    state: Literal["current", "behind", "ahead"]

    @property
    def current(self) -> bool:
        return self.state == "current"

    @property
    def problem(self) -> str | None:
        """One line saying what is wrong and what to do; None when current."""
        rev = self.database or UNMIGRATED
        if self.state == "behind":
            return f"database schema {rev} is behind {self.head}: run 'python -m worker migrate'"
        if self.state == "ahead":
            return (
                f"database schema {rev} is ahead of {self.head} (a revision this release does "
                "not know): run a release that knows it"
            )
        return None


def status_of(database: str | None) -> SchemaStatus:
    """Classify the revision `database` (None: unmigrated) against the installed head."""
    head = head_revision()
    if head is None:
        raise RuntimeError("the `migrations` package has no revisions")
    if database == head:
        return SchemaStatus(database, head, "current")
    if database is None:
        return SchemaStatus(None, head, "behind")
    known = database in _known_revisions()
    return SchemaStatus(database, head, "behind" if known else "ahead")


@cache
def _known_revisions() -> frozenset[str]:
    return frozenset(script.revision for script in _scripts().walk_revisions())


def schema_status_on(connection: Connection) -> SchemaStatus:
    """`SchemaStatus` over an open sync connection (with an async engine:
    `await conn.run_sync(schema_status_on)`). Reads `alembic_version` only."""
    return status_of(MigrationContext.configure(connection).get_current_revision())


def schema_status(url: str) -> SchemaStatus:
    """`SchemaStatus` of the database at `url` (one short connection).

    Raises `LedgerUnavailable` when the database cannot be reached."""
    engine = create_engine(normalize_url(url), poolclass=pool.NullPool)
    try:
        with translate_db_errors(), engine.connect() as conn:
            return schema_status_on(conn)
    finally:
        engine.dispose()
