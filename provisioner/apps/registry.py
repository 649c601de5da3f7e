"""The apps' tables in the store: installs, the port registry, and sealed credentials.

:class:`AppRegistry` is the only code that runs SQL on ``app_installs`` (one row per app
installed in a slot), ``app_ports`` and ``app_credentials``; :mod:`provisioner.retention` and
the data report call it (reading names and states, never a secret).

Ports come from a configurable range and are handed out inside one write transaction; the
``PRIMARY KEY`` on the port is the uniqueness constraint, so two installs racing for the
same port cannot both get it — one transaction waits for the other and takes the next.
A port someone else is already listening on (outside our registry) is skipped too.

>>> free_port(range(20000, 20004), used={20000, 20002}, busy={20001})
20003
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from provisioner.apps.vault import Vault
from provisioner.db import IntegrityError
from provisioner.errors import SlotError
from provisioner.store import Store


@dataclass(frozen=True)
class InstallRecord:
    """An app installed (or being installed/removed) in a slot."""

    username: str
    app: str
    state: str
    version: str | None
    installed_at: float


def listening_ports() -> set[int]:
    """TCP ports something listens on now (from /proc/net/tcp{,6}: state 0A = LISTEN)."""
    found: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 3 and parts[3] == "0A":
                found.add(int(parts[1].rsplit(":", 1)[1], 16))
    return found


def free_port(port_range: range, used: set[int], busy: set[int]) -> int | None:
    """The lowest port of PORT_RANGE neither registered (USED) nor listened on (BUSY)."""
    for port in port_range:
        if port not in used and port not in busy:
            return port
    return None


class AppRegistry:
    """The apps' rows in one store, plus the vault that seals their credentials."""

    def __init__(self, store: Store, vault: Vault) -> None:
        self.store = store
        self.vault = vault

    # --- installs -----------------------------------------------------------------------

    def get(self, username: str, app: str) -> InstallRecord | None:
        row = self.store.db.execute("SELECT * FROM app_installs WHERE username = ? AND app = ?",
                                    (username, app)).fetchone()
        return InstallRecord(**dict(row)) if row else None

    def installs(self, username: str | None = None) -> list[InstallRecord]:
        if username is None:
            rows = self.store.db.execute("SELECT * FROM app_installs ORDER BY username, app").fetchall()
        else:
            rows = self.store.db.execute("SELECT * FROM app_installs WHERE username = ? ORDER BY app",
                                         (username,)).fetchall()
        return [InstallRecord(**dict(r)) for r in rows]

    def begin_install(self, username: str, app: str, version: str | None) -> None:
        try:
            self.store.db.execute("INSERT INTO app_installs VALUES (?, ?, 'installing', ?, ?)",
                                  (username, app, version, time.time()))
        except IntegrityError:
            raise SlotError(f"{app} is already installed in slot {username}") from None

    def set_state(self, username: str, app: str, state: str) -> None:
        self.store.db.execute("UPDATE app_installs SET state = ? WHERE username = ? AND app = ?",
                              (state, username, app))

    def forget_install(self, username: str, app: str) -> None:
        self.store.db.execute("DELETE FROM app_installs WHERE username = ? AND app = ?", (username, app))

    # --- ports --------------------------------------------------------------------------

    def allocate_port(self, username: str, app: str, purpose: str, port_range: range) -> int:
        """Reserve a port for (USERNAME, APP, PURPOSE); the same triple gets its port back."""
        with self.store.transaction() as db:
            row = db.execute("SELECT port FROM app_ports WHERE username = ? AND app = ? AND purpose = ?",
                             (username, app, purpose)).fetchone()
            if row:
                return int(row["port"])
            used = {int(r["port"]) for r in db.execute(
                "SELECT port FROM app_ports WHERE port BETWEEN ? AND ?", (port_range.start, port_range.stop - 1))}
            port = free_port(port_range, used, listening_ports())
            if port is None:
                raise SlotError(f"no free port left in {port_range.start}-{port_range.stop - 1} "
                                "(apps.port_min/apps.port_max)")
            db.execute("INSERT INTO app_ports (port, username, app, purpose) VALUES (?, ?, ?, ?)",
                       (port, username, app, purpose))
            return port

    def ports(self, username: str, app: str) -> dict[str, int]:
        rows = self.store.db.execute("SELECT purpose, port FROM app_ports WHERE username = ? AND app = ?",
                                     (username, app)).fetchall()
        return {r["purpose"]: int(r["port"]) for r in rows}

    def release_ports(self, username: str, app: str) -> None:
        self.store.db.execute("DELETE FROM app_ports WHERE username = ? AND app = ?", (username, app))

    # --- credentials --------------------------------------------------------------------

    def put_credentials(self, username: str, app: str, secrets_: dict[str, str]) -> None:
        nonce, ct = self.vault.seal(username, app, secrets_)
        self.store.db.execute(
            "INSERT INTO app_credentials VALUES (?, ?, ?, ?, ?) ON CONFLICT(username, app) DO UPDATE SET "
            "nonce = excluded.nonce, ciphertext = excluded.ciphertext, updated_at = excluded.updated_at",
            (username, app, nonce, ct, time.time()))

    def credentials(self, username: str, app: str) -> dict[str, str] | None:
        row = self.store.db.execute("SELECT nonce, ciphertext FROM app_credentials WHERE username = ? AND app = ?",
                                    (username, app)).fetchone()
        return self.vault.open(username, app, bytes(row["nonce"]), bytes(row["ciphertext"])) if row else None

    def credential_apps(self, username: str) -> list[str]:
        """Apps of USERNAME with stored credentials (names only: nothing is unsealed)."""
        rows = self.store.db.execute("SELECT DISTINCT app FROM app_credentials WHERE username = ? ORDER BY app",
                                     (username,)).fetchall()
        return [r["app"] for r in rows]

    def orphaned_credentials(self, slots: Collection[str]) -> list[tuple[str, str]]:
        """(username, app) of credentials whose app is not installed (in any state) or whose slot is
        not among SLOTS (the store's slots: the slots table is :class:`~provisioner.store.Store`'s)."""
        rows = self.store.db.execute(
            "SELECT DISTINCT c.username, c.app FROM app_credentials c WHERE NOT EXISTS "
            "(SELECT 1 FROM app_installs a WHERE a.username = c.username AND a.app = c.app) "
            "ORDER BY c.username, c.app").fetchall()
        orphans = {(r["username"], r["app"]) for r in rows}
        orphans.update((u, a) for u, a in self.credential_keys() if u not in slots)
        return sorted(orphans)

    def credential_keys(self) -> list[tuple[str, str]]:
        """(username, app) of every stored credential (nothing is unsealed)."""
        rows = self.store.db.execute("SELECT username, app FROM app_credentials ORDER BY username, app").fetchall()
        return [(r["username"], r["app"]) for r in rows]

    def delete_credentials(self, username: str, app: str) -> None:
        self.store.db.execute("DELETE FROM app_credentials WHERE username = ? AND app = ?", (username, app))
