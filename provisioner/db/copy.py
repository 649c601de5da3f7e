"""Moving a store: every row of every table of one store into another, empty one.

What ``slotctl db copy --to URL`` runs to move a host's SQLite store into the fleet's PostgreSQL
(or back, or into a fresh SQLite file). The source must be at this code's schema version
(``slotctl db upgrade`` first); the target is brought to it, must hold no rows, and receives
everything in one transaction: a failure leaves it as empty as it was. Identity columns on
PostgreSQL continue after the highest id copied. The counts per table are checked afterwards.

>>> import tempfile, pathlib
>>> from provisioner.store import Store
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> s = Store(d / "a.db"); s.audit("root", "noop", None, {})
>>> copy_store(s.db, connect(str(d / "b.db")))["audit"]
1
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from provisioner.db.database import Database, connect
from provisioner.db.migrations import LATEST, SchemaError, current_version, describe, upgrade

BATCH = 1000
_IDENT = re.compile(r"[a-z_][a-z0-9_]*")


def data_tables(db: Database) -> list[str]:
    """The tables whose rows make up the store (not the schema's own bookkeeping), sorted."""
    names = sorted(db.tables() - {"schema_version"})
    for name in names:
        if not _IDENT.fullmatch(name):
            raise SchemaError(f"the store {db.where} holds a table this code does not know: {name!r}")
    return names


def columns(db: Database, table: str) -> list[str]:
    cur = db.execute(f"SELECT * FROM {table} WHERE 1 = 0")  # noqa: S608 - checked against _IDENT
    return [d[0] for d in cur.description]  # type: ignore[attr-defined]


def count(db: Database, table: str) -> int:
    return int(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])  # noqa: S608 - checked name


def rows(db: Database, table: str, cols: list[str]) -> Iterator[tuple[object, ...]]:
    """Every row of TABLE in a stable order (all columns), as tuples."""
    order = ", ".join(cols)
    for row in db.execute(f"SELECT {order} FROM {table} ORDER BY {order}"):  # noqa: S608 - checked names
        yield tuple(row)


def _batches(it: Iterator[tuple[object, ...]]) -> Iterator[list[tuple[object, ...]]]:
    batch: list[tuple[object, ...]] = []
    for item in it:
        batch.append(item)
        if len(batch) >= BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def copy_store(src: Database, dst: Database) -> dict[str, int]:
    """Copy every row of SRC into DST (see the module docstring); {table: rows copied}."""
    version = current_version(src)
    if version != LATEST:
        raise SchemaError(f"the store {src.where} has schema version {describe(version)}, not {LATEST}: "
                          "run 'slotctl db upgrade' on it first")
    upgrade(dst)
    tables = data_tables(src)
    missing = set(tables) - dst.tables()
    if missing:
        raise SchemaError(f"the store {dst.where} lacks tables {sorted(missing)}")
    copied: dict[str, int] = {}
    with dst.transaction():
        for table in tables:
            held = count(dst, table)
            if held:
                raise SchemaError(f"the store {dst.where} is not empty ({table}: {held} rows); "
                                  "copy only into an empty store")
        for table in tables:
            cols = columns(src, table)
            insert = (f"INSERT INTO {table} ({', '.join(cols)}) "  # noqa: S608 - checked names
                      f"VALUES ({', '.join('?' for _ in cols)})")
            for batch in _batches(rows(src, table, cols)):
                dst.executemany(insert, batch)
            copied[table] = count(dst, table)
            if dst.dialect == "postgresql" and "id" in cols:
                # Identity columns: the next id follows the highest copied one.
                dst.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "  # noqa: S608
                            f"COALESCE((SELECT MAX(id) FROM {table}), 0) + 1, false) "
                            f"WHERE pg_get_serial_sequence('{table}', 'id') IS NOT NULL")
    for table in tables:
        expected = count(src, table)
        if copied[table] != expected:
            raise SchemaError(f"copy of {table}: {copied[table]} rows in {dst.where}, {expected} in {src.where}")
    return copied


__all__ = ["connect", "copy_store", "data_tables", "rows"]
