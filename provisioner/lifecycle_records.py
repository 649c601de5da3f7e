"""The ``slot_lifecycle`` rows: each slot's plan and, while suspended, when/why/by whom and what to
restore (the table is made by :mod:`provisioner.db.migrations`; :class:`LifecycleRecords` is
the only code that reads or writes it).

>>> LifecycleRecord("alice", "small").as_dict()["plan"]
'small'
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from provisioner.store import Store


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


class LifecycleRecords:
    """The only code that writes ``slot_lifecycle`` (each slot's plan and suspension record).

    >>> import tempfile, pathlib
    >>> records = LifecycleRecords(Store(pathlib.Path(tempfile.mkdtemp()) / "t.db"))
    >>> records.put(LifecycleRecord("alice", "small"))
    >>> records.get("alice").plan
    'small'
    >>> records.delete("alice"); records.get("alice") is None
    True
    """

    def __init__(self, store: Store) -> None:
        self.store = store

    def get(self, username: str) -> LifecycleRecord | None:
        row = self.store.db.execute("SELECT * FROM slot_lifecycle WHERE username = ?", (username,)).fetchone()
        if row is None:
            return None
        values = dict(row)
        values["saved"] = json.loads(values["saved"]) if values["saved"] else None
        return LifecycleRecord(**values)

    def put(self, rec: LifecycleRecord) -> None:
        self.store.db.execute(
            "INSERT INTO slot_lifecycle VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (username) DO UPDATE SET "
            "plan = excluded.plan, suspended_at = excluded.suspended_at, suspended_reason = excluded.suspended_reason, "
            "suspended_by = excluded.suspended_by, saved = excluded.saved",
            (rec.username, rec.plan, rec.suspended_at, rec.suspended_reason, rec.suspended_by,
             json.dumps(rec.saved, sort_keys=True) if rec.saved is not None else None),
        )

    def delete(self, username: str) -> None:
        self.store.db.execute("DELETE FROM slot_lifecycle WHERE username = ?", (username,))

    def restore(self, username: str, previous: LifecycleRecord | None) -> None:
        """Put back PREVIOUS (what :meth:`get` returned before a change; None: no row)."""
        if previous is None:
            self.delete(username)
        else:
            self.put(previous)
