"""Takedown notices, for real: the tenant is told, the file is quarantined after the deadline.

Real slots on a btrfs loop image; the tenant plants symlinks (to /etc/shadow, to another home,
a linked directory on the way) that the notice must refuse and the quarantine must never
follow; the hook command is a real script that records what it was told.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.retention import run_retention
from tests.system.fixtures.hosts import SlotHost
from tests.system.fixtures.policy import make_slot, policy_host
from tests.system.fixtures.policy import me as run_me
from tests.system.fixtures.processes import as_user

pytestmark = pytest.mark.root


def hook_config(base: Path) -> str:
    hook = base / "hook.sh"
    hook.write_text(f"#!/bin/sh\ncat >> {base}/hook.log\necho >> {base}/hook.log\n")
    hook.chmod(0o700)
    return f'[notices]\ntakedown_after = "24h"\nhook = ["{hook}"]\n'


@pytest.fixture(scope="module")
def host() -> Iterator[SlotHost]:
    with policy_host("notices", hook_config) as h:
        yield h


def me(host: SlotHost, user: str, *args: str) -> str:
    out = run_me(host, user, *args)
    assert out.returncode == 0, out.stderr
    return out.stdout


def hook_events(host: SlotHost) -> list[dict[str, object]]:
    log = host.base / "hook.log"
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []


def retention_at(host: SlotHost, when: float) -> None:
    ctx = host.ctx()
    try:
        run_retention(ctx, now=when)
    finally:
        ctx.close()


def test_bad_paths_are_refused_and_nothing_is_recorded(host: SlotHost) -> None:
    slot, other = make_slot(host), make_slot(host)
    h = host.slots_root / slot
    as_user(other, "echo theirs > ~/theirs.txt")
    as_user(slot, f"mkdir ~/www; echo x > ~/www/f; ln -s /etc/shadow ~/sh; ln -s {host.slots_root / other} ~/o; "
                  "ln -s www ~/linkdir; mkfifo ~/fifo")
    cases = [
        (["notice", "takedown", slot, "/etc/shadow", "--ref", "C1"], "outside the home"),
        (["notice", "takedown", slot, f"{h}/../{other}/theirs.txt", "--ref", "C1"], "'..'"),
        (["notice", "takedown", slot, "sh", "--ref", "C1"], "symlink"),
        (["notice", "takedown", slot, "o/theirs.txt", "--ref", "C1"], "symlink"),
        (["notice", "takedown", slot, "linkdir/f", "--ref", "C1"], "symlink"),
        (["notice", "takedown", slot, "fifo", "--ref", "C1"], "not a regular file"),
        (["notice", "takedown", slot, "nosuch", "--ref", "C1"], "no such file"),
        (["notice", "takedown", slot, "www/f", "--ref", ""], "--ref"),
        (["notice", "takedown", slot, "www/f", "--ref", "a\nb"], "--ref"),
        (["notice", "takedown", f"{host.prefix}nosuch", "www/f", "--ref", "C1"], "no slot"),
    ]
    for args, msg in cases:
        r = host.slotctl(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
    assert json.loads(host.slotctl("--json", "notice", "list", slot).stdout) == []
    assert (host.slots_root / other / "theirs.txt").read_text() == "theirs\n"


def test_takedown_tells_the_tenant_then_quarantines_after_the_deadline(host: SlotHost) -> None:
    slot = make_slot(host)
    h = host.slots_root / slot
    as_user(slot, "mkdir -p ~/www; head -c 100000 /dev/urandom > ~/www/song.mp3; echo keep > ~/www/keep.txt; "
                  "echo gone > ~/www/gone.txt")
    digest = hashlib.sha256((h / "www" / "song.mp3").read_bytes()).hexdigest()
    out = host.slotctl("--json", "notice", "takedown", slot, f"{h}/www/song.mp3", "--ref", "DMCA-2026-17")
    assert out.returncode == 0, out.stderr
    n = json.loads(out.stdout)
    assert n["state"] == "open" and n["path"] == "www/song.mp3"
    gone = json.loads(host.slotctl("--json", "notice", "takedown", slot, "www/gone.txt", "--ref", "C2").stdout)
    swapped = json.loads(host.slotctl("--json", "notice", "takedown", slot, "www/keep.txt", "--ref", "C3").stdout)

    # Told in the shell (login message and `slotwarden-me notices`) and through the hook.
    msg = me(host, slot, "login-message")
    assert f"notice {n['id']}" in msg and "www/song.mp3" in msg and "DMCA-2026-17" in msg
    assert "www/song.mp3" in me(host, slot, "notices")
    events = hook_events(host)
    assert any(e["event"] == "takedown" and e["username"] == slot and e["email"] == f"{slot}@example.com"
               for e in events)

    # The tenant deletes one file and swaps another for a link to /etc/shadow.
    as_user(slot, "rm ~/www/gone.txt; rm ~/www/keep.txt; ln -s /etc/shadow ~/www/keep.txt")

    dry = host.slotctl("--json", "retention", "run", "--dry-run")
    rule = next(r for r in json.loads(dry.stdout)["rules"] if r["rule"] == "notices")
    assert rule["count"] == 0  # before the deadline nothing is due
    retention_at(host, float(n["deadline"]) - 60)
    assert (h / "www" / "song.mp3").exists()

    retention_at(host, max(float(x["deadline"]) for x in (n, gone, swapped)) + 1)
    q = json.loads(host.slotctl("--json", "notice", "show", str(n["id"])).stdout)
    assert q["state"] == "quarantined" and q["sha256"] == digest and q["size"] == 100000
    assert not (h / "www" / "song.mp3").exists()
    qpath = Path(q["quarantine_path"])
    st = qpath.stat()
    assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o600
    assert hashlib.sha256(qpath.read_bytes()).hexdigest() == digest
    assert stat.S_IMODE(qpath.parent.stat().st_mode) == 0o700
    assert as_user(slot, f"cat {qpath}").returncode != 0
    assert json.loads(host.slotctl("--json", "notice", "show", str(gone["id"])).stdout)["state"] == "gone"
    sw = json.loads(host.slotctl("--json", "notice", "show", str(swapped["id"])).stdout)
    assert sw["state"] == "gone" and "symlink" in sw["note"]
    assert os.path.islink(h / "www" / "keep.txt")  # the link is left; /etc/shadow untouched
    assert Path("/etc/shadow").stat().st_uid == 0

    assert "quarantined" in me(host, slot, "notices")
    assert any(e["event"] == "quarantined" for e in hook_events(host))

    closed = host.slotctl("--json", "notice", "close", str(n["id"]))
    assert closed.returncode == 0 and json.loads(closed.stdout)["state"] == "closed"
    assert host.slotctl("notice", "close", str(n["id"])).returncode == 1
    assert f"notice {n['id']}" not in me(host, slot, "login-message")

    audit = [a["action"] for a in host.ctx().store.audit_entries(slot)]
    for action in ("notice.takedown", "notice.quarantined", "notice.gone", "notice.close"):
        assert action in audit, audit
    report = json.loads(host.slotctl("--json", "data", "report", slot).stdout)
    item = next(i for i in report["items"] if i["item"] == "takedown notices")
    assert {r["id"] for r in item["value"]} == {n["id"], gone["id"], swapped["id"]}

    # Removal takes the quarantined copy with the slot; the records stay.
    assert host.slotctl("slot", "remove", slot).returncode == 0
    assert not qpath.exists()
    assert json.loads(host.slotctl("--json", "notice", "show", str(n["id"])).stdout)["state"] == "closed"
