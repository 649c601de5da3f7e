"""Support access with consent, on the host under test: a staff account reads a slot's home only
while the tenant's approval lasts, read-only, and a link the tenant planted shows it nothing.

The kernel's idmapped mounts carry the grant; the VM lab runs this on Debian 12's kernel, this
machine's run on its own. Root sets the scene (a staff account in the admin group, the request)
and clears it; the tenant approves as itself with ``slotwarden-me``.
"""

from __future__ import annotations

import json
import secrets
import shlex
import sys
import tomllib
from pathlib import Path
from typing import Any

from tests.infra.tenants import Slot, as_tenant

FILE = ".swv-support"
LINK = ".swv-support-shadow"


def _slotctl() -> str:
    # The host's slotctl (site.yml links it) or, on this machine, the one next to this Python.
    return f"$(command -v slotctl || echo {shlex.quote(str(Path(sys.executable).parent / 'slotctl'))})"


def _config(host: Any) -> dict[str, Any]:
    text = host.run("cat \"${SLOTWARDEN_CONFIG:-/etc/slotwarden/slotwarden.toml}\" 2>/dev/null").stdout
    return tomllib.loads(text) if text.strip() else {}


def _as(host: Any, user: str, script: str) -> Any:
    with host.sudo(user):
        return host.run(f"cd / && {{ {script}\n}}")


def test_staff_reads_a_home_only_with_the_tenants_consent(host: Any, slots: list[Slot]) -> None:
    tenant = slots[0]
    cfg = _config(host)
    admin = cfg.get("host", {}).get("admin_group", "slotwarden-admin")
    me = cfg.get("metrics", {}).get("me_path", "/usr/local/bin/slotwarden-me")
    staff = f"swvst{secrets.token_hex(3)}"
    slotctl = _slotctl()
    host.check_output(f"useradd -M -s /bin/sh -G {shlex.quote(admin)} {staff}")
    grant_id = None
    try:
        assert as_tenant(host, tenant, f"umask 077; echo consented > {FILE}; ln -sf /etc/shadow {LINK}").rc == 0
        made = json.loads(host.check_output(
            f"{slotctl} --json support request {tenant.name} --by {staff} --reason 'infra suite' --for 10m"))
        grant_id = made["id"]
        assert _as(host, staff, f"cat {shlex.quote(tenant.home)}/{FILE}").rc != 0

        approved = as_tenant(host, tenant, f"{shlex.quote(me)} support approve {grant_id}")
        assert approved.rc == 0, approved.stderr
        shown = json.loads(host.check_output(f"{slotctl} --json support show {grant_id}"))
        assert shown["state"] == "active" and shown["write"] is False, shown
        view = shlex.quote(shown["mountpoint"])

        read = _as(host, staff, f"cat {view}/{FILE}")
        assert read.rc == 0 and read.stdout == "consented\n"
        assert _as(host, staff, f"touch {view}/.swv-intruder").rc != 0
        assert _as(host, staff, f"cat {view}/{LINK}").rc != 0

        host.check_output(f"{slotctl} support revoke {grant_id}")
        grant_id = None
        assert _as(host, staff, f"cat {view}/{FILE}").rc != 0
    finally:
        if grant_id is not None:
            host.run(f"{slotctl} support revoke {grant_id}")
        host.run(f"pkill -KILL -u {staff}; userdel {staff}")
        as_tenant(host, tenant, f"rm -f {FILE} {LINK}; rm -rf .slotwarden")
