"""The data report and retention, for real: a slot with an app and failed attempts.

The apps and guard stores are filled the way their packages write them (the guard's
``attempts`` table; ``apps`` / ``app_credentials`` rows in the state store) — the report and
retention must list and purge them, and never print a secret.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from provisioner.apps import registry_of
from provisioner.config import load_config
from provisioner.context import Context
from tests.system.fixtures.metrics import Lab, lab_fixture  # noqa: F401

pytestmark = pytest.mark.root
APP_SECRET = "app-Secret-9f8e7d6c5b4a"
ATTEMPTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY, ts REAL NOT NULL, username TEXT NOT NULL, ip TEXT NOT NULL,
    ipkey TEXT NOT NULL, service TEXT NOT NULL, state TEXT NOT NULL, counted INTEGER NOT NULL DEFAULT 1
);
"""
DESIGN_ITEMS = ["email", "username", "country", "slot password", "application passwords", "payment reference",
                "failed login attempts", "per-slot metrics", "user data, bash history", "audit entries"]


def guard_db(lab: Lab) -> sqlite3.Connection:
    conn = sqlite3.connect(str(lab.state_dir / "guard.db"), isolation_level=None)
    conn.executescript(ATTEMPTS_SCHEMA)
    return conn


def add_attempt(lab: Lab, user: str, ip: str, age_hours: float) -> None:
    with guard_db(lab) as conn:
        conn.execute("INSERT INTO attempts (ts, username, ip, ipkey, service, state) VALUES (?, ?, ?, ?, 'sshd', "
                     "'failed')", (time.time() - age_hours * 3600, user, ip, ip))


def attempts_of(lab: Lab, user: str) -> list[float]:
    conn = guard_db(lab)
    try:
        return [r[0] for r in conn.execute("SELECT ts FROM attempts WHERE username = ?", (user,))]
    finally:
        conn.close()


def store(lab: Lab) -> sqlite3.Connection:
    return sqlite3.connect(str(lab.state_dir / "slotwarden.db"), isolation_level=None)


def install_app(lab: Lab, user: str, app: str, secret: str) -> None:
    """Record an installed app and its sealed credentials through the apps package's registry
    (the daemon itself is the apps tests' business)."""
    ctx = Context(load_config(lab.config))
    try:
        reg = registry_of(ctx)
        reg.begin_install(user, app, None)
        reg.set_state(user, app, "installed")
        reg.put_credentials(user, app, {"password": secret})
    finally:
        ctx.close()


def uninstall_leaving_credentials(lab: Lab, user: str, app: str) -> None:
    ctx = Context(load_config(lab.config))
    try:
        registry_of(ctx).forget_install(user, app)
    finally:
        ctx.close()


def shadow_hash(user: str) -> str:
    for line in Path("/etc/shadow").read_text().splitlines():
        if line.startswith(user + ":"):
            return line.split(":")[1]
    raise AssertionError("no shadow entry")


def test_report_lists_every_item_and_no_secret(lab: Lab) -> None:
    name = lab.create_slot()
    install_app(lab, name, "transmission", APP_SECRET)
    add_attempt(lab, name, "203.0.113.7", 1)
    add_attempt(lab, name, "203.0.113.7", 2)
    add_attempt(lab, name, "198.51.100.9", 0.5)
    hist = lab.slots_root / name / ".bash_history"
    hist.write_text("ls\n" * 100)

    rep = lab.slotctl_json("data", "report", name)
    items = {i["item"]: i for i in rep["items"]}
    for item in DESIGN_ITEMS:
        assert item in items, item
        assert items[item]["stored"] and items[item]["kept"] and items[item]["why"]
    assert items["email"]["value"] == f"{name}@example.com"
    assert items["country"]["value"] == "DE"
    assert items["payment reference"]["value"] == f"PAYID-{name.upper()}"
    assert "set" in items["slot password"]["value"]
    assert items["application passwords"]["value"] == [{"app": "transmission", "installed": "installed",
                                                        "credentials stored": True}]
    attempts = {a["ip"]: a["count"] for a in items["failed login attempts"]["value"]}
    assert attempts == {"203.0.113.7": 2, "198.51.100.9": 1}
    assert items["user data, bash history"]["value"]["bash history size"] == "300"
    assert items["audit entries"]["value"]["count"] >= 1
    assert items["failed login attempts"]["kept"].startswith("24 hours")
    assert items["known login origins"]["value"] == "none"

    text = lab.slotctl("data", "report", name).stdout
    for out in (json.dumps(rep), text):
        assert lab.passwords[name] not in out
        assert APP_SECRET not in out
        assert shadow_hash(name) not in out
    assert "transmission" in text and "203.0.113.7" in text
    conn = store(lab)
    try:
        nonce, ct = conn.execute("SELECT nonce, ciphertext FROM app_credentials WHERE username = ?", (name,)).fetchone()
    finally:
        conn.close()
    for out in (json.dumps(rep), text):
        assert bytes(ct).hex() not in out and bytes(nonce).hex() not in out


def test_report_of_a_non_slot_has_attempts_only(lab: Lab) -> None:
    add_attempt(lab, "tmnotaslot", "203.0.113.8", 1)
    rep = lab.slotctl_json("data", "report", "tmnotaslot")
    assert rep["is_slot"] is False
    assert [i["item"] for i in rep["items"]] == ["failed login attempts", "known login origins"]
    assert rep["items"][0]["value"][0]["ip"] == "203.0.113.8"


def test_retention_removes_25h_old_attempt_keeps_23h_old(lab: Lab) -> None:
    add_attempt(lab, "tmold", "203.0.113.9", 25)
    add_attempt(lab, "tmold", "203.0.113.9", 23)
    dry = lab.slotctl_json("retention", "run", "--dry-run")
    rule = next(r for r in dry["rules"] if r["rule"] == "attempts")
    assert any("'tmold'" in item for item in rule["removed"])
    assert len(attempts_of(lab, "tmold")) == 2, "a dry run removes nothing"

    lab.slotctl_json("retention", "run")
    left = attempts_of(lab, "tmold")
    assert len(left) == 1 and time.time() - left[0] < 24 * 3600
    again = lab.slotctl_json("retention", "run")
    assert all(not any("tmold" in i for i in r["removed"]) for r in again["rules"]), "idempotent"


def test_retention_drops_orphaned_credentials_only(lab: Lab) -> None:
    name = lab.create_slot()
    install_app(lab, name, "transmission", APP_SECRET)
    install_app(lab, name, "jupyterlab", "other-secret-1234")
    uninstall_leaving_credentials(lab, name, "jupyterlab")  # uninstalled, credentials left behind
    conn = store(lab)
    try:  # credentials of a slot that is gone
        conn.execute("INSERT INTO app_credentials VALUES ('tmgone', 'transmission', x'00', x'00', 0)")
    finally:
        conn.close()
    dry = lab.slotctl_json("retention", "run", "--dry-run")
    assert len(next(r for r in dry["rules"] if r["rule"] == "app-credentials")["removed"]) == 2
    out = lab.slotctl_json("retention", "run")
    rule = next(r for r in out["rules"] if r["rule"] == "app-credentials")
    assert sorted(rule["removed"]) == sorted([f"{name}/jupyterlab", "tmgone/transmission"])
    conn = store(lab)
    try:
        left = conn.execute("SELECT username, app FROM app_credentials WHERE username IN (?, 'tmgone')",
                            (name,)).fetchall()
    finally:
        conn.close()
    assert left == [(name, "transmission")]


def test_retention_removes_kept_homes_past_their_period(lab: Lab) -> None:
    old, recent = lab.create_slot(), lab.create_slot()
    lab.slotctl("slot", "remove", old, "--keep-data")
    lab.slotctl("slot", "remove", recent, "--keep-data")
    conn = store(lab)
    try:
        kept = dict(conn.execute("SELECT username, path FROM kept_homes WHERE username IN (?, ?)", (old, recent)))
        conn.execute("UPDATE kept_homes SET kept_at = ? WHERE username = ?", (time.time() - 31 * 86400, old))
    finally:
        conn.close()
    assert Path(kept[old]).is_dir() and Path(kept[recent]).is_dir()
    out = lab.slotctl_json("retention", "run")
    rule = next(r for r in out["rules"] if r["rule"] == "kept-homes")
    assert rule["removed"] == [kept[old]]
    assert not Path(kept[old]).exists() and Path(kept[recent]).is_dir()
    subprocess.run(["btrfs", "subvolume", "delete", kept[recent]], check=False, capture_output=True)
    conn = store(lab)
    try:
        conn.execute("DELETE FROM kept_homes WHERE username = ?", (recent,))
    finally:
        conn.close()


def test_forget_attempts_on_request(lab: Lab) -> None:
    add_attempt(lab, "tmforget", "203.0.113.10", 1)
    add_attempt(lab, "tmforget", "203.0.113.11", 2)
    add_attempt(lab, "tmkeepme", "203.0.113.10", 1)
    out = lab.slotctl_json("data", "forget-attempts", "--user", "tmforget")
    assert out["removed"] == 2
    assert attempts_of(lab, "tmforget") == [] and len(attempts_of(lab, "tmkeepme")) == 1
    audit = sqlite3.connect(str(lab.state_dir / "slotwarden.db"))
    try:
        rows = audit.execute("SELECT username, detail FROM audit WHERE action = 'attempts.forget'").fetchall()
    finally:
        audit.close()
    assert rows and all(r[0] is None and "tmforget" not in r[1] for r in rows), "a forgotten name stays forgotten"
    r = lab.slotctl("data", "forget-attempts", "--user", "", check=False)
    assert r.returncode == 2


def test_report_lists_known_login_origins(lab: Lab) -> None:
    """The guard keeps where a user logged in with a password (its per-username rule spares those
    origins): that is data about the user, so the report lists it."""
    from pam_hooks.protocol import name_key
    from pam_hooks.store import open_store

    name = lab.create_slot()
    conn = open_store(lab.state_dir / "guard.db")  # the guard's own schema
    try:
        conn.execute("INSERT INTO known_origins (username, ipkey, last) VALUES (?, ?, ?)",
                     (name_key(name), "198.51.100.4", time.time() - 60))
        conn.commit()
    finally:
        conn.close()
    rep = lab.slotctl_json("data", "report", name)
    items = {i["item"]: i for i in rep["items"]}
    assert [o["origin"] for o in items["known login origins"]["value"]] == ["198.51.100.4"]
    assert "known_origins" in items["known login origins"]["stored"]
