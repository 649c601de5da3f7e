BEGIN TRANSACTION;
CREATE TABLE api_idempotency (
    token_name    TEXT NOT NULL,
    key           TEXT NOT NULL,
    request_hash  TEXT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('pending', 'done')),
    status        INTEGER,
    response      TEXT,
    created_at    REAL NOT NULL,
    PRIMARY KEY (token_name, key)
);
INSERT INTO "api_idempotency" VALUES('billing','k-1','efefefefefefefefefefefefefefefefefefefefefefefefefefefefefefefef','done',201,'{"username": "alice"}',1.79500000012345600122e+09);
INSERT INTO "api_idempotency" VALUES('billing','k-2','0101010101010101010101010101010101010101010101010101010101010101','pending',NULL,NULL,1.79500000012345600122e+09);
CREATE TABLE api_tokens (
    name        TEXT PRIMARY KEY,
    token_hash  TEXT NOT NULL UNIQUE,
    created_at  REAL NOT NULL,
    revoked_at  REAL
);
INSERT INTO "api_tokens" VALUES('billing','abababababababababababababababababababababababababababababababab',1.79500000012345600122e+09,NULL);
INSERT INTO "api_tokens" VALUES('old','cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd',1.79500000012345600122e+09,1.79500000912345600125e+09);
CREATE TABLE app_credentials (
    username    TEXT NOT NULL,
    app         TEXT NOT NULL,
    nonce       BLOB NOT NULL,
    ciphertext  BLOB NOT NULL,
    updated_at  REAL NOT NULL,
    PRIMARY KEY (username, app)
);
INSERT INTO "app_credentials" VALUES('alice','jupyterlab',X'00016E6F6E6365FF',X'DEADBEEFDEADBEEFDEADBEEFDEADBEEFDEADBEEFDEADBEEFDEADBEEFDEADBEEF',1.79500000012345600122e+09);
CREATE TABLE app_installs (
    username      TEXT NOT NULL,
    app           TEXT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('installing', 'installed', 'removing')),
    version       TEXT,
    installed_at  REAL NOT NULL,
    PRIMARY KEY (username, app)
);
INSERT INTO "app_installs" VALUES('alice','jupyterlab','installed','4.2.1',1.79500000012345600122e+09);
INSERT INTO "app_installs" VALUES('alice','wordpress','installing',NULL,1.79500000012345600122e+09);
CREATE TABLE app_ports (
    port      INTEGER PRIMARY KEY CHECK (port BETWEEN 1 AND 65535),
    username  TEXT NOT NULL,
    app       TEXT NOT NULL,
    purpose   TEXT NOT NULL,
    UNIQUE (username, app, purpose)
);
INSERT INTO "app_ports" VALUES(20001,'alice','jupyterlab','http');
INSERT INTO "app_ports" VALUES(65535,'alice','wordpress','http');
CREATE TABLE audit (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    at        REAL NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    username  TEXT,
    detail    TEXT NOT NULL
);
INSERT INTO "audit" VALUES(1,1.79500000012345600122e+09,'root (via sudo)','slot.create','alice','{"quota": 1073741824}');
INSERT INTO "audit" VALUES(2,1.79500000212345600129e+09,'root','host.init',NULL,'{"note": "tab\there \"q\""}');
CREATE TABLE health_probe (id INTEGER PRIMARY KEY, at REAL NOT NULL);
INSERT INTO "health_probe" VALUES(1,1.79500000012345600122e+09);
CREATE TABLE host_settings (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
INSERT INTO "host_settings" VALUES('quota_backend','btrfs');
INSERT INTO "host_settings" VALUES('slot_root','/srv/slots');
CREATE TABLE hub_history (
    username TEXT NOT NULL,
    tier TEXT NOT NULL,
    idx INTEGER NOT NULL,
    start REAL NOT NULL,
    n INTEGER NOT NULL,
    ram_bytes REAL, swap_bytes REAL, processes REAL,
    cpu_seconds REAL, disk_used_bytes REAL, io_read_bytes REAL, io_write_bytes REAL,
    PRIMARY KEY (username, tier, idx)
);
INSERT INTO "hub_history" VALUES('alice','minute',0,1.79500000012345600122e+09,3,1500000000.0,0.0,12.0,3.25,40000000000.0,NULL,7.0);
CREATE TABLE hub_logins (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    username TEXT NOT NULL,
    address TEXT NOT NULL,
    ok INTEGER NOT NULL,
    detail TEXT NOT NULL
);
INSERT INTO "hub_logins" VALUES(1,1.79500000012345600122e+09,'alice','198.51.100.7',1,'ok');
INSERT INTO "hub_logins" VALUES(2,1.79500000112345600125e+09,'al<b>ice','2001:db8::1',0,'bad password');
CREATE TABLE hub_sessions (
    token_hash TEXT PRIMARY KEY,
    username TEXT NOT NULL,
    role TEXT NOT NULL DEFAULT 'tenant',
    created REAL NOT NULL,
    last_seen REAL NOT NULL,
    address TEXT NOT NULL,
    agent TEXT NOT NULL,
    csrf TEXT NOT NULL
);
INSERT INTO "hub_sessions" VALUES('1212121212121212121212121212121212121212121212121212121212121212','alice','tenant',1.79500000012345600122e+09,1.79500006012345600129e+09,'198.51.100.7','Mozilla/5.0 "x"','csrf-1');
CREATE TABLE hub_totp (
    username TEXT PRIMARY KEY,
    nonce BLOB NOT NULL,
    sealed BLOB NOT NULL,
    enabled INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    last_step INTEGER NOT NULL DEFAULT 0,
    recovery TEXT NOT NULL DEFAULT '[]',
    failures INTEGER NOT NULL DEFAULT 0,
    failed_at REAL NOT NULL DEFAULT 0
);
INSERT INTO "hub_totp" VALUES('alice',X'6E6E6E6E6E6E6E6E6E6E6E6E',X'7365616C6564006279746573',1,1.79500000012345600122e+09,59833333,'["h1", "h2"]',2,1.79500000412345600128e+09);
CREATE TABLE kept_homes (
    path      TEXT PRIMARY KEY,
    username  TEXT NOT NULL,
    kept_at   REAL NOT NULL
);
INSERT INTO "kept_homes" VALUES('/srv/kept/carol-1','carol',1.79500000512345600132e+09);
CREATE TABLE notices (
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
);
INSERT INTO "notices" VALUES(1,'alice','public_html/x.mp4','DMCA-7','quarantined',1.79500000012345600122e+09,1.79508640012345600128e+09,1.79508640112345600131e+09,'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa',8589934592,'/var/lib/slotwarden/quarantine/1',NULL,NULL,NULL);
INSERT INTO "notices" VALUES(2,'bob','café/日本.txt','ref','closed',1.79500000012345600122e+09,1.79508640012345600128e+09,NULL,NULL,NULL,NULL,1.79500000912345600125e+09,'root','withdrawn');
CREATE TABLE slot_ids (
    id          INTEGER PRIMARY KEY,
    username    TEXT NOT NULL,
    allocated_at REAL NOT NULL,
    retired_at  REAL
);
INSERT INTO "slot_ids" VALUES(60001,'alice',1.79500000012345600122e+09,NULL);
INSERT INTO "slot_ids" VALUES(60002,'carol',1.79500000012345600122e+09,1.79500000512345600132e+09);
CREATE TABLE slot_lifecycle (
    username          TEXT PRIMARY KEY,
    plan              TEXT,
    suspended_at      REAL,
    suspended_reason  TEXT,
    suspended_by      TEXT,
    saved             TEXT
);
INSERT INTO "slot_lifecycle" VALUES('alice','two',NULL,NULL,NULL,NULL);
INSERT INTO "slot_lifecycle" VALUES('bob','one',1.79500000312345600128e+09,'unpaid; — invoice 7','billing','{"shell": "/bin/bash"}');
CREATE TABLE slot_limits (
    username    TEXT PRIMARY KEY,
    limits      TEXT NOT NULL,
    backend     TEXT NOT NULL,
    applied_at  REAL NOT NULL
);
INSERT INTO "slot_limits" VALUES('alice','{"cpu": 1.5, "memory": 1073741824}','cgroup_v1',1.79500000012345600122e+09);
CREATE TABLE slots (
    username     TEXT PRIMARY KEY,
    uid          INTEGER,
    email        TEXT NOT NULL,
    country      TEXT NOT NULL,
    payment_ref  TEXT,
    quota_bytes  INTEGER,
    home         TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('creating', 'active', 'removing', 'suspended')),
    created_at   REAL NOT NULL
);
INSERT INTO "slots" VALUES('alice',60001,'alice@example.com','DE','PAYPAL-1''x',5497558138880,'/srv/slots/alice','active',1.79500000012345600122e+09);
INSERT INTO "slots" VALUES('bob',NULL,'böb@example.com','FR',NULL,NULL,'/srv/slots/bob','suspended',1.79500000112345600125e+09);
CREATE TABLE support_grants (
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
);
INSERT INTO "support_grants" VALUES(1,'alice','staff1','ticket #42',0,3600,'active',1.79500000012345600122e+09,1.79500000112345600125e+09,1.79500360112345600125e+09,NULL,NULL,'/run/slotwarden/support/1');
INSERT INTO "support_grants" VALUES(2,'bob','staff2','look',1,600,'refused',1.79500000012345600122e+09,1.79500000212345600129e+09,NULL,1.79500000212345600129e+09,'bob',NULL);
CREATE INDEX audit_username ON audit(username);
CREATE INDEX slot_ids_username ON slot_ids(username);
CREATE INDEX hub_sessions_user ON hub_sessions (username);
CREATE INDEX hub_logins_user ON hub_logins (username, at);
CREATE INDEX support_grants_username ON support_grants(username);
CREATE INDEX notices_username ON notices(username);
DELETE FROM "sqlite_sequence";
INSERT INTO "sqlite_sequence" VALUES('audit',2);
INSERT INTO "sqlite_sequence" VALUES('hub_logins',2);
INSERT INTO "sqlite_sequence" VALUES('support_grants',2);
INSERT INTO "sqlite_sequence" VALUES('notices',2);
COMMIT;
