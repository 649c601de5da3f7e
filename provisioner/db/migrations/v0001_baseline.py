"""Schema version 1: every table slotwarden 0.1 created lazily, now created in one place.

The statements are 0.1's own (``IF NOT EXISTS``), so a 0.1 store, which holds only the tables
its commands happened to need, gets the missing ones and keeps every row of the others.
"""

STATEMENTS = (
    # the store: slots, audit, host settings, slot ids, homes kept with --keep-data
    """CREATE TABLE IF NOT EXISTS slots (
    username     TEXT PRIMARY KEY,
    uid          INTEGER,
    email        TEXT NOT NULL,
    country      TEXT NOT NULL,
    payment_ref  TEXT,
    quota_bytes  INTEGER,
    home         TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('creating', 'active', 'removing', 'suspended')),
    created_at   REAL NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS audit (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    at        REAL NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    username  TEXT,
    detail    TEXT NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS audit_username ON audit(username)",
    """CREATE TABLE IF NOT EXISTS host_settings (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS slot_ids (
    id          INTEGER PRIMARY KEY,
    username    TEXT NOT NULL,
    allocated_at REAL NOT NULL,
    retired_at  REAL
)""",
    "CREATE INDEX IF NOT EXISTS slot_ids_username ON slot_ids(username)",
    """CREATE TABLE IF NOT EXISTS kept_homes (
    path      TEXT PRIMARY KEY,
    username  TEXT NOT NULL,
    kept_at   REAL NOT NULL
)""",
    # lifecycle: plan and suspension per slot
    """CREATE TABLE IF NOT EXISTS slot_lifecycle (
    username          TEXT PRIMARY KEY,
    plan              TEXT,
    suspended_at      REAL,
    suspended_reason  TEXT,
    suspended_by      TEXT,
    saved             TEXT
)""",
    # apps: installs, the port registry, sealed credentials
    """CREATE TABLE IF NOT EXISTS app_installs (
    username      TEXT NOT NULL,
    app           TEXT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('installing', 'installed', 'removing')),
    version       TEXT,
    installed_at  REAL NOT NULL,
    PRIMARY KEY (username, app)
)""",
    """CREATE TABLE IF NOT EXISTS app_ports (
    port      INTEGER PRIMARY KEY CHECK (port BETWEEN 1 AND 65535),
    username  TEXT NOT NULL,
    app       TEXT NOT NULL,
    purpose   TEXT NOT NULL,
    UNIQUE (username, app, purpose)
)""",
    """CREATE TABLE IF NOT EXISTS app_credentials (
    username    TEXT NOT NULL,
    app         TEXT NOT NULL,
    nonce       BLOB NOT NULL,
    ciphertext  BLOB NOT NULL,
    updated_at  REAL NOT NULL,
    PRIMARY KEY (username, app)
)""",
    # the provisioning API: tokens and idempotency keys
    """CREATE TABLE IF NOT EXISTS api_tokens (
    name        TEXT PRIMARY KEY,
    token_hash  TEXT NOT NULL UNIQUE,
    created_at  REAL NOT NULL,
    revoked_at  REAL
)""",
    """CREATE TABLE IF NOT EXISTS api_idempotency (
    token_name    TEXT NOT NULL,
    key           TEXT NOT NULL,
    request_hash  TEXT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('pending', 'done')),
    status        INTEGER,
    response      TEXT,
    created_at    REAL NOT NULL,
    PRIMARY KEY (token_name, key)
)""",
    # the Hub: sessions, logins, metrics history, TOTP
    """CREATE TABLE IF NOT EXISTS hub_sessions (
    token_hash TEXT PRIMARY KEY,
    username TEXT NOT NULL,
    role TEXT NOT NULL DEFAULT 'tenant',
    created REAL NOT NULL,
    last_seen REAL NOT NULL,
    address TEXT NOT NULL,
    agent TEXT NOT NULL,
    csrf TEXT NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS hub_sessions_user ON hub_sessions (username)",
    """CREATE TABLE IF NOT EXISTS hub_logins (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    username TEXT NOT NULL,
    address TEXT NOT NULL,
    ok INTEGER NOT NULL,
    detail TEXT NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS hub_logins_user ON hub_logins (username, at)",
    """CREATE TABLE IF NOT EXISTS hub_history (
    username TEXT NOT NULL,
    tier TEXT NOT NULL,
    idx INTEGER NOT NULL,
    start REAL NOT NULL,
    n INTEGER NOT NULL,
    ram_bytes REAL, swap_bytes REAL, processes REAL,
    cpu_seconds REAL, disk_used_bytes REAL, io_read_bytes REAL, io_write_bytes REAL,
    PRIMARY KEY (username, tier, idx)
)""",
    """CREATE TABLE IF NOT EXISTS hub_totp (
    username TEXT PRIMARY KEY,
    nonce BLOB NOT NULL,
    sealed BLOB NOT NULL,
    enabled INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    last_step INTEGER NOT NULL DEFAULT 0,
    recovery TEXT NOT NULL DEFAULT '[]',
    failures INTEGER NOT NULL DEFAULT 0,
    failed_at REAL NOT NULL DEFAULT 0
)""",
    # the data policy: support grants, takedown notices
    """CREATE TABLE IF NOT EXISTS support_grants (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    username      TEXT NOT NULL,
    staff         TEXT NOT NULL,
    reason        TEXT NOT NULL,
    write         INTEGER NOT NULL,
    duration      INTEGER NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('requested', 'refused', 'active', 'revoked', 'expired')),
    requested_at  REAL NOT NULL,
    decided_at    REAL,
    expires_at    REAL,
    ended_at      REAL,
    ended_by      TEXT,
    mountpoint    TEXT
)""",
    "CREATE INDEX IF NOT EXISTS support_grants_username ON support_grants(username)",
    """CREATE TABLE IF NOT EXISTS notices (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    username        TEXT NOT NULL,
    path            TEXT NOT NULL,
    ref             TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('open', 'quarantined', 'gone', 'closed')),
    created_at      REAL NOT NULL,
    deadline        REAL NOT NULL,
    quarantined_at  REAL,
    sha256          TEXT,
    size            INTEGER,
    quarantine_path TEXT,
    closed_at       REAL,
    closed_by       TEXT,
    note            TEXT
)""",
    "CREATE INDEX IF NOT EXISTS notices_username ON notices(username)",
    # limits: what was applied to each slot
    """CREATE TABLE IF NOT EXISTS slot_limits (
    username    TEXT PRIMARY KEY,
    limits      TEXT NOT NULL,
    backend     TEXT NOT NULL,
    applied_at  REAL NOT NULL
)""",
    # metrics: the health probe's one row
    "CREATE TABLE IF NOT EXISTS health_probe (id INTEGER PRIMARY KEY, at REAL NOT NULL)",
)
