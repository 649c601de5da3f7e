"""The provisioner's store engine: one connection type over SQLite and PostgreSQL, one schema.

- :mod:`provisioner.db.database` — :func:`connect`, :class:`Database` (placeholders translated,
  writer transactions, driver errors as :class:`DatabaseError`);
- :mod:`provisioner.db.migrations` — numbered migrations and the schema version (how a module
  adds its tables is written there);
- :mod:`provisioner.db.copy` — moving every row of one store into another (SQLite → PostgreSQL).

Each area's rows are read and written by one repository class in the area's module
(:class:`provisioner.store.Store`, ``LifecycleRecords``, ``AppRegistry``, ``ApiTokens``,
``IdempotencyKeys``, ``SessionStore`` …); nothing else runs SQL on them
(``tests/unit/provisioner/test_schema_owners.py`` lists them and enforces it).
"""

from provisioner.db.database import Database, DatabaseError, IntegrityError, connect
from provisioner.db.migrations import LATEST, SchemaError, check, current_version, upgrade

__all__ = ["LATEST", "Database", "DatabaseError", "IntegrityError", "SchemaError", "check", "connect",
           "current_version", "upgrade"]
