"""Schema version 2: the fleet controller's tables (``provisioner.fleet.inventory`` owns their rows).

``fleet_hosts``: every registered host — API URL, the CA certificate its TLS is checked
against, its API token sealed with the store's key, the last facts and contact.
``fleet_slots``: every slot the controller knows and the host it lives on.
"""

STATEMENTS = (
    """CREATE TABLE IF NOT EXISTS fleet_hosts (
    name             TEXT PRIMARY KEY,
    url              TEXT NOT NULL,
    ca_pem           TEXT NOT NULL,
    token_nonce      TEXT NOT NULL,
    token_sealed     TEXT NOT NULL,
    added_at         REAL NOT NULL,
    facts            TEXT,
    facts_at         REAL,
    up               INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT,
    last_contact_at  REAL
)""",
    """CREATE TABLE IF NOT EXISTS fleet_slots (
    username     TEXT PRIMARY KEY,
    host         TEXT NOT NULL REFERENCES fleet_hosts(name),
    state        TEXT NOT NULL,
    quota_bytes  INTEGER NOT NULL DEFAULT 0,
    placed_at    REAL NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS fleet_slots_host ON fleet_slots(host)",
)
