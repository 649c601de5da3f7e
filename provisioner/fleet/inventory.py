"""The controller's fleet tables — the only code that writes their SQL.

``fleet_hosts``: every registered host (name, API URL, the CA certificate its TLS is checked
against, its API token *sealed* with the store's key, the last facts and the last contact).
``fleet_slots``: every slot the controller knows and the host it lives on (``placing`` while a
create is in flight, so concurrent placements count each other's quota, and a retried create
goes back to the same host). One username lives on one host: the primary key says so.

The tables are made by migration 2 (``provisioner/db/migrations/v0002_fleet.py``); the SQL here
is the store engine's portable dialect, so the controller's store may be SQLite or PostgreSQL.

>>> import tempfile, pathlib
>>> from provisioner.store import Store
>>> inv = FleetInventory(Store(pathlib.Path(tempfile.mkdtemp()) / "t.db"))
>>> inv.put_host("web1", "https://198.51.100.2:8780", "PEM", "bm9uY2U=", "c2VhbGVk")
'added'
>>> [h.name for h in inv.hosts()]
['web1']
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from provisioner.errors import BadInput, SlotError
from provisioner.fleet.facts import HostFacts
from provisioner.fleet.placement import HostRoom, Placement
from provisioner.store import Store
from provisioner.sweep import shown as printable

# A create whose outcome is unknown (the host stopped answering mid-request) keeps its
# ``placing`` row this long, so a retry goes to the same host; a refresh after that drops it
# unless the host lists the slot.
PLACING_KEPT_S = 600.0


class NoRoom(SlotError):
    """No fleet host has room for the slot (the system refused: exit 1, HTTP 409)."""


class UnknownHost(BadInput):
    """A host name the controller does not know."""


@dataclass(frozen=True)
class HostRecord:
    name: str
    url: str
    ca_pem: str
    token_nonce: str
    token_sealed: str
    added_at: float
    facts: dict[str, Any] | None
    facts_at: float | None
    up: bool
    last_error: str | None
    last_contact_at: float | None


@dataclass(frozen=True)
class FleetSlot:
    username: str
    host: str
    state: str
    quota_bytes: int
    placed_at: float


def _host(row: Any) -> HostRecord:
    return HostRecord(row["name"], row["url"], row["ca_pem"], row["token_nonce"], row["token_sealed"],
                      row["added_at"], json.loads(row["facts"]) if row["facts"] else None, row["facts_at"],
                      bool(row["up"]), row["last_error"], row["last_contact_at"])


def _slot(row: Any) -> FleetSlot:
    return FleetSlot(row["username"], row["host"], row["state"], row["quota_bytes"], row["placed_at"])


class FleetInventory:
    """Hosts, their facts and the slots on them, in the controller's store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # --- hosts ------------------------------------------------------------------------------

    def put_host(self, name: str, url: str, ca_pem: str, token_nonce: str, token_sealed: str) -> str:
        """Register NAME (``added``), or point it at a new URL/CA/token (``updated``)."""
        with self.store.transaction() as db:
            row = db.execute("SELECT url, ca_pem FROM fleet_hosts WHERE name = ?", (name,)).fetchone()
            if row is None:
                db.execute("INSERT INTO fleet_hosts (name, url, ca_pem, token_nonce, token_sealed, added_at) "
                           "VALUES (?, ?, ?, ?, ?, ?)", (name, url, ca_pem, token_nonce, token_sealed, time.time()))
                return "added"
            db.execute("UPDATE fleet_hosts SET url = ?, ca_pem = ?, token_nonce = ?, token_sealed = ? "
                       "WHERE name = ?", (url, ca_pem, token_nonce, token_sealed, name))
            return "updated" if (row["url"], row["ca_pem"]) != (url, ca_pem) else "token"

    def remove_host(self, name: str) -> None:
        """Forget NAME; refused while the controller knows slots on it."""
        with self.store.transaction() as db:
            n = db.execute("SELECT COUNT(*) FROM fleet_slots WHERE host = ?", (name,)).fetchone()[0]
            if n:
                raise BadInput(f"host {name} still holds {n} slots; remove them first")
            if db.execute("DELETE FROM fleet_hosts WHERE name = ?", (name,)).rowcount == 0:
                raise BadInput(f"no fleet host named {name!r}")

    def host(self, name: str) -> HostRecord | None:
        row = self.store.db.execute("SELECT * FROM fleet_hosts WHERE name = ?", (name,)).fetchone()
        return _host(row) if row else None

    def hosts(self) -> list[HostRecord]:
        return [_host(r) for r in self.store.db.execute("SELECT * FROM fleet_hosts ORDER BY name")]

    def record_facts(self, name: str, facts: HostFacts, at: float | None = None) -> list[str]:
        """Store NAME's FACTS and make its slot rows what it reported; the names another host holds.

        ``placing`` rows younger than :data:`PLACING_KEPT_S` survive a report that lacks them
        (their create may still be running). A name the controller places on another host is
        left there and returned, for the operator to settle.
        """
        at = time.time() if at is None else at
        summary = {k: v for k, v in facts.as_dict().items() if k != "slots"}
        conflicts: list[str] = []
        with self.store.transaction() as db:
            db.execute("UPDATE fleet_hosts SET facts = ?, facts_at = ?, up = 1, last_error = NULL, "
                       "last_contact_at = ? WHERE name = ?", (json.dumps(summary), at, at, name))
            reported = {s.username: s for s in facts.slots}
            for row in db.execute("SELECT username, state, placed_at FROM fleet_slots WHERE host = ?",
                                  (name,)).fetchall():
                if row["username"] in reported:
                    continue
                if row["state"] == "placing" and at - row["placed_at"] < PLACING_KEPT_S:
                    continue
                db.execute("DELETE FROM fleet_slots WHERE username = ?", (row["username"],))
            for s in reported.values():
                cur = db.execute("INSERT INTO fleet_slots (username, host, state, quota_bytes, placed_at) "
                                 "VALUES (?, ?, ?, ?, ?) ON CONFLICT (username) DO NOTHING",
                                 (s.username, name, s.state, s.quota_bytes, at))
                if cur.rowcount == 0:
                    updated = db.execute("UPDATE fleet_slots SET state = ?, quota_bytes = ? "
                                         "WHERE username = ? AND host = ?",
                                         (s.state, s.quota_bytes, s.username, name)).rowcount
                    if not updated:
                        conflicts.append(s.username)
        return sorted(conflicts)

    def record_failure(self, name: str, error: str, at: float | None = None) -> None:
        """NAME did not answer (or answered nonsense): it is not placed on until it answers again.

        ERROR may quote the host; it is kept as printable text (escapes for control characters).
        """
        at = time.time() if at is None else at
        self.store.db.execute("UPDATE fleet_hosts SET up = 0, last_error = ?, last_contact_at = ? WHERE name = ?",
                              (printable(error)[:500], at, name))

    # --- slots --------------------------------------------------------------------------------

    def rooms(self, db: Any = None) -> list[HostRoom]:
        """Every host as placement sees it: committed quota is the controller's own sum."""
        db = db or self.store.db
        totals = {r["host"]: (r["n"], r["q"]) for r in db.execute(
            "SELECT host, COUNT(*) AS n, COALESCE(SUM(quota_bytes), 0) AS q FROM fleet_slots GROUP BY host")}
        out = []
        for h in (_host(r) for r in db.execute("SELECT * FROM fleet_hosts ORDER BY name")):
            n, q = totals.get(h.name, (0, 0))
            f = h.facts or {}
            out.append(HostRoom(h.name, h.up and h.facts is not None, int(f.get("disk_bytes", 0)), int(q), int(n),
                                int(f.get("mem_available_bytes", 0)), float((f.get("load") or [0.0])[0]),
                                None if h.up else (h.last_error or "no facts gathered yet")))
        return out

    def place(self, username: str, quota_bytes: int, choose: Callable[[list[HostRoom], int], Placement],
              host: str | None = None) -> tuple[FleetSlot, Placement | None, bool]:
        """The slot USERNAME's host: its known one, HOST (if it has room), or CHOOSE's pick — recorded ``placing``.

        One write transaction, so two creates at once see each other's quota. Returns the
        row, the placement when one was made (None when the name was known or HOST was given),
        and whether the row is new.
        """
        with self.store.transaction() as db:
            row = db.execute("SELECT * FROM fleet_slots WHERE username = ?", (username,)).fetchone()
            if row is not None:
                return _slot(row), None, False
            placement = None
            if host is None:
                placement = choose(self.rooms(db), quota_bytes)
                if placement.host is None:
                    raise NoRoom(f"no fleet host has room for a slot of {quota_bytes} bytes "
                                   "(slotctl fleet place --explain)")
                host = placement.host
            else:
                room = next((r for r in self.rooms(db) if r.name == host), None)
                if room is None:
                    raise UnknownHost(f"host: no fleet host named {host!r}")
                if room.up and room.room_bytes < quota_bytes:  # a host never answered yet is tried
                    raise NoRoom(f"host {host} has room for {max(room.room_bytes, 0)} bytes, "
                                 f"not {quota_bytes}")
            now = time.time()
            db.execute("INSERT INTO fleet_slots (username, host, state, quota_bytes, placed_at) VALUES (?, ?, ?, ?, ?)",
                       (username, host, "placing", quota_bytes, now))
            return FleetSlot(username, host, "placing", quota_bytes, now), placement, True

    def slot(self, username: str) -> FleetSlot | None:
        row = self.store.db.execute("SELECT * FROM fleet_slots WHERE username = ?", (username,)).fetchone()
        return _slot(row) if row else None

    def slots(self, host: str | None = None) -> list[FleetSlot]:
        if host is None:
            rows = self.store.db.execute("SELECT * FROM fleet_slots ORDER BY host, username")
        else:
            rows = self.store.db.execute("SELECT * FROM fleet_slots WHERE host = ? ORDER BY username", (host,))
        return [_slot(r) for r in rows]

    def set_slot(self, username: str, state: str, quota_bytes: int | None = None) -> None:
        if quota_bytes is None:
            self.store.db.execute("UPDATE fleet_slots SET state = ? WHERE username = ?", (state, username))
        else:
            self.store.db.execute("UPDATE fleet_slots SET state = ?, quota_bytes = ? WHERE username = ?",
                                  (state, quota_bytes, username))

    def forget_slot(self, username: str) -> None:
        self.store.db.execute("DELETE FROM fleet_slots WHERE username = ?", (username,))

