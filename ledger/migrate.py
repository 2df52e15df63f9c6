"""Alembic, driven programmatically: no alembic.ini, script_location = the `migrations` package.

Every call holds a Postgres advisory lock for its transaction, so several processes running
`migrate` at once apply each revision exactly once; the whole upgrade is one transaction
(Postgres DDL is transactional), so a failure leaves the schema where it was.

`schema_status` compares the database's revision with the code's head (the schema gate of
`run` and the inspection commands): current, behind (an older revision, or none at all) or
ahead (a revision these migrations do not know: a newer release migrated the database). The
gate needs no alembic: it reads the revision graph from the migration files (`ast`, nothing of
them runs) and `alembic_version` with one query, so a running worker never imports alembic
(about 8 MB of resident memory and 0.1 s at its start).
"""

from __future__ import annotations

import ast
import importlib.util
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from sqlalchemy import Connection, create_engine, pool, text

from ledger.db import normalize_url
from ledger.errors import translate_db_errors

if TYPE_CHECKING:
    from alembic.config import Config

#: pg_advisory_xact_lock key: "tradefleet migrations".
_LOCK_KEY = 0x7466_6D69_6772


def _script_location() -> str:
    spec = importlib.util.find_spec("migrations")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the `migrations` package is not installed")
    return str(Path(next(iter(spec.submodule_search_locations))))


def _config(connection: Connection) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", _script_location())
    # The connection is handed over directly, so no URL goes through configparser
    # interpolation (a '%' in a password would break it).
    cfg.attributes["connection"] = connection
    return cfg


def _run(url: str, action: str) -> None:
    from alembic import command

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
    from alembic.runtime.migration import MigrationContext

    engine = create_engine(normalize_url(url), poolclass=pool.NullPool)
    try:
        with translate_db_errors(), engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def head_revision() -> str | None:
    """The newest revision the installed migrations know (None: there are none)."""
    graph = _revisions()
    heads = sorted(set(graph) - {down for downs in graph.values() for down in downs})
    if len(heads) > 1:
        raise RuntimeError(f"the migrations have several heads: {', '.join(heads)}")
    return heads[0] if heads else None


@cache
def _revisions() -> dict[str, tuple[str, ...]]:
    """Revision -> the revisions it revises, from each migration file's module-level
    `revision` and `down_revision` (parsed, not imported)."""
    graph: dict[str, tuple[str, ...]] = {}
    for path in sorted(Path(_script_location(), "versions").glob("*.py")):
        found: dict[str, object] = {}
        for node in ast.parse(path.read_text(encoding="utf-8"), str(path)).body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target, value = node.targets[0], node.value
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                target, value = node.target, node.value
            else:
                continue
            if isinstance(target, ast.Name) and target.id in ("revision", "down_revision"):
                found[target.id] = ast.literal_eval(value)
        revision, down = found.get("revision"), found.get("down_revision")
        if not isinstance(revision, str):
            continue  # not a migration (__init__.py)
        if isinstance(down, str):
            graph[revision] = (down,)
        else:  # None (the first migration) or a tuple (a merge)
            graph[revision] = tuple(str(d) for d in down) if isinstance(down, tuple | list) else ()
    return graph


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


def _known_revisions() -> frozenset[str]:
    return frozenset(_revisions())


def schema_status_on(connection: Connection) -> SchemaStatus:
    """`SchemaStatus` over an open sync connection (with an async engine:
    `await conn.run_sync(schema_status_on)`). Reads `alembic_version` only."""
    return status_of(_database_revision(connection))


def _database_revision(connection: Connection) -> str | None:
    """What alembic's `MigrationContext.get_current_revision` reads: the one row of
    `alembic_version` (on the search path), None without the table or a row."""
    if connection.execute(text("SELECT to_regclass('alembic_version')")).scalar() is None:
        return None
    rows = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    if len(rows) > 1:
        raise RuntimeError(f"alembic_version has several revisions: {', '.join(rows)}")
    return str(rows[0]) if rows else None


def schema_status(url: str) -> SchemaStatus:
    """`SchemaStatus` of the database at `url` (one short connection).

    Raises `LedgerUnavailable` when the database cannot be reached."""
    engine = create_engine(normalize_url(url), poolclass=pool.NullPool)
    try:
        with translate_db_errors(), engine.connect() as conn:
            return schema_status_on(conn)
    finally:
        engine.dispose()
