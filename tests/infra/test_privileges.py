"""Privileges: a tenant has no sudo and cannot read the store, the key file or the guard's records."""

from __future__ import annotations

import shlex
from typing import Any

import pytest

from tests.infra.tenants import DEFAULT_SECRET_PATHS, Slot, as_tenant

PRIVILEGED_GROUPS = {"root", "sudo", "wheel", "adm", "admin", "shadow", "disk", "docker", "lxd", "libvirt", "kvm"}


def test_tenant_has_no_sudo_and_no_privileged_group(host: Any, slots: list[Slot]) -> None:
    for slot in slots:
        out = as_tenant(host, slot, "sudo -n true 2>/dev/null && echo SUDO; sudo -n -l >/dev/null 2>&1 && echo SUDO-L; "
                                    "id -Gn")
        words = out.stdout.split()
        assert "SUDO" not in words and "SUDO-L" not in words
        assert not PRIVILEGED_GROUPS & set(words), f"{slot.name} is in {words}"


def test_tenant_cannot_read_store_key_or_guard_records(host: Any, slots: list[Slot],
                                                       request: pytest.FixtureRequest) -> None:
    roots = request.config.getoption("secret_path") or list(DEFAULT_SECRET_PATHS)
    listing = host.run("find " + " ".join(shlex.quote(r) for r in roots) + " \\( -type f -o -type d \\) -print "
                       "2>/dev/null; true").stdout.split()
    # The store, the key file and the guard's database must be there to be protected.
    assert any(p.endswith(".db") for p in listing), f"no database under {roots}: {listing}"
    paths = " ".join(shlex.quote(p) for p in listing)
    probe = (f"for p in {paths}; do "
             "if [ -d \"$p\" ]; then ls \"$p\" >/dev/null 2>&1 && echo \"LIST:$p\"; "
             "else cat \"$p\" >/dev/null 2>&1 && echo \"READ:$p\"; fi; done; true")
    for slot in slots:
        out = as_tenant(host, slot, probe)
        assert out.stdout.split() == [], f"{slot.name} can: {out.stdout.split()}"
