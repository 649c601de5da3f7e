"""The provisioner's schema: numbered migrations, one schema version, one runner.

Every table of the provisioner is created here and nowhere else. The store records the
migrations applied in ``schema_version`` (one row each: number, name, when). A store made by
slotwarden 0.1 has no such table: it is version 0, and ``slotctl db upgrade`` brings it to
:data:`LATEST` keeping every row. An empty store is created at :data:`LATEST` when first opened.
A store at an older version is refused by every command until ``slotctl db upgrade`` ran (an
operator upgrades when she chose to, after a backup; the .deb's postinst runs it on upgrade);
a store at a newer version than this code knows is refused, naming both versions.

**Adding tables or columns (fleet, a new feature):** add a module ``vNNNN_what.py`` here with

- ``STATEMENTS``: a tuple of DDL statements in SQLite's types (``INTEGER``, ``REAL``, ``TEXT``,
  ``BLOB``, ``INTEGER PRIMARY KEY AUTOINCREMENT``), which :func:`provisioner.db.dialect.ddl`
  maps for PostgreSQL; an item may instead be a dict ``{"sqlite": ..., "postgresql": ...}``
  where the two must differ;
- optionally ``apply(db)`` for data changes, run after the statements in the same transaction;

and append its name to :data:`MIGRATIONS` (the number is its position, starting at 1). Never
edit a migration that has shipped: add the next one. Then give the area one repository class
that is the only code running SQL on its tables, name it in ``OWNERS`` of
``tests/unit/provisioner/test_schema_owners.py`` (which fails on SQL anywhere else in
``provisioner/``), and test it in ``tests/system/test_store_postgres.py`` (run on SQLite and
PostgreSQL).
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType

from provisioner.db.database import Database
from provisioner.errors import SlotError

# In order; the Nth name is schema version N.
MIGRATIONS: tuple[str, ...] = (
    "v0001_baseline",
    "v0002_fleet",
)
LATEST = len(MIGRATIONS)

VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_version (
    version     INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    applied_at  REAL NOT NULL
)
"""

# Tables any 0.1 store has (made by Store itself when first opened).
_V0_1_MARKERS = frozenset({"slots", "audit", "host_settings"})


class SchemaError(SlotError):
    """The store's schema is not the one this code runs on."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str | Mapping[str, str], ...]
    apply: Callable[[Database], None] | None


def load(version: int) -> Migration:
    """Migration number VERSION (1-based)."""
    name = MIGRATIONS[version - 1]
    mod: ModuleType = importlib.import_module(f"{__name__}.{name}")
    return Migration(version, name, tuple(mod.STATEMENTS), getattr(mod, "apply", None))


def describe(version: int | None) -> str:
    """VERSION in an operator's words."""
    if version is None:
        return "empty"
    if version == 0:
        return "0 (slotwarden 0.1, unversioned)"
    return str(version)


def current_version(db: Database) -> int | None:
    """The store's schema version: None for an empty store, 0 for a 0.1 store."""
    tables = db.tables()
    if "schema_version" in tables:
        row = db.execute("SELECT MAX(version) FROM schema_version").fetchone()
        return int(row[0] or 0)
    if tables & _V0_1_MARKERS:
        return 0
    return None


def _run(db: Database, migration: Migration) -> None:
    for item in migration.statements:
        db.execute_ddl(item if isinstance(item, str) else item[db.dialect])
    if migration.apply is not None:
        migration.apply(db)
    db.execute("INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)",
               (migration.version, migration.name, time.time()))


def _refuse_newer(db: Database, version: int) -> None:
    if version > LATEST:
        raise SchemaError(f"the store {db.where} has schema version {version}, newer than this slotwarden's "
                          f"{LATEST}: upgrade slotwarden (refusing to touch it)")


def upgrade(db: Database) -> tuple[int | None, int]:
    """Apply every migration the store lacks, in one transaction; (version before, after).

    Holds the writer lock throughout, so two upgrades (or an upgrade and a first open) do not
    both apply a migration. A failure rolls everything back: the store stays at its version.
    """
    with db.transaction():
        before = current_version(db)
        if before is not None:
            _refuse_newer(db, before)
        db.execute_ddl(VERSION_TABLE)
        for version in range((before or 0) + 1, LATEST + 1):
            _run(db, load(version))
    return before, LATEST


def check(db: Database) -> None:
    """Make DB usable by this code: create an empty store, refuse an old or a newer one."""
    version = current_version(db)
    if version == LATEST:
        return
    if version is None:
        upgrade(db)
        return
    _refuse_newer(db, version)
    raise SchemaError(f"the store {db.where} has schema version {describe(version)}, this slotwarden "
                      f"needs {LATEST}: run 'slotctl db upgrade' (after a backup)")


def applied(db: Database) -> list[dict[str, object]]:
    """The migrations recorded in the store, oldest first."""
    if "schema_version" not in db.tables():
        return []
    return [dict(r) for r in db.execute("SELECT version, name, applied_at FROM schema_version ORDER BY version")]
