"""The ``slot_lifecycle`` table: each slot's plan and, while suspended, when/why/by whom and what to restore.

>>> LifecycleRecord("alice", "small").as_dict()["plan"]
'small'
"""

from __future__ import annotations

import json
import weakref
from dataclasses import dataclass
from typing import Any

from provisioner.store import Store

SCHEMA = """
CREATE TABLE IF NOT EXISTS slot_lifecycle (
    username          TEXT PRIMARY KEY,
    plan              TEXT,
    suspended_at      REAL,
    suspended_reason  TEXT,
    suspended_by      TEXT,
    saved             TEXT
);
"""


@dataclass(frozen=True)
class LifecycleRecord:
    """The lifecycle row of a slot: its plan and, while suspended, when/why and what to restore."""

    username: str
    plan: str | None = None
    suspended_at: float | None = None
    suspended_reason: str | None = None
    suspended_by: str | None = None
    saved: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"plan": self.plan, "suspended_at": self.suspended_at,
                "suspended_reason": self.suspended_reason, "suspended_by": self.suspended_by}


# Stores whose lifecycle table is known to exist. ensure_schema runs executescript, which
# commits an open transaction, so it must run once per connection, before any transaction.
_READY: weakref.WeakSet[Store] = weakref.WeakSet()


def ensure_schema(store: Store) -> None:
    if store not in _READY:
        store.ensure_schema(SCHEMA)
        _READY.add(store)


def get_lifecycle(store: Store, username: str) -> LifecycleRecord | None:
    ensure_schema(store)
    row = store.db.execute("SELECT * FROM slot_lifecycle WHERE username = ?", (username,)).fetchone()
    if row is None:
        return None
    values = dict(row)
    values["saved"] = json.loads(values["saved"]) if values["saved"] else None
    return LifecycleRecord(**values)


def put_lifecycle(store: Store, rec: LifecycleRecord) -> None:
    ensure_schema(store)
    store.db.execute(
        "INSERT OR REPLACE INTO slot_lifecycle VALUES (?, ?, ?, ?, ?, ?)",
        (rec.username, rec.plan, rec.suspended_at, rec.suspended_reason, rec.suspended_by,
         json.dumps(rec.saved, sort_keys=True) if rec.saved is not None else None),
    )


def delete_lifecycle(store: Store, username: str) -> None:
    ensure_schema(store)
    store.db.execute("DELETE FROM slot_lifecycle WHERE username = ?", (username,))


def restore_lifecycle(store: Store, username: str, previous: LifecycleRecord | None) -> None:
    if previous is None:
        delete_lifecycle(store, username)
    else:
        put_lifecycle(store, previous)
