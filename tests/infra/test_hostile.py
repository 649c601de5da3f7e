"""Hostile tenants, from the tenant's side: what a tenant with a shell tries against the boundary.

Root only sets the scene and clears it; every attempt runs as a slot user.
"""

from __future__ import annotations

import shlex
from typing import Any

from tests.infra.tenants import Slot, as_tenant


class TestIdentity:
    """A slot's identity is its own: no id of the system's ranges, no borrowed ids, no setuid."""

    def test_slot_ids_come_from_outside_the_ranges_useradd_hands_out(self, host: Any, slots: list[Slot]) -> None:
        defs = {}
        for line in host.file("/etc/login.defs").content_string.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                defs[parts[0]] = int(parts[1])
        ranges = {k: (defs.get(f"{k}_MIN", lo), defs.get(f"{k}_MAX", hi))
                  for k, (lo, hi) in {"UID": (1000, 60000), "SUB_UID": (100000, 600100000)}.items()}
        inside = {s.name: k for s in slots for k, (lo, hi) in ranges.items() if lo <= s.uid <= hi}
        assert inside == {}, "a slot uid that useradd (or a subordinate range) could hand out again"

    def test_each_slot_has_a_private_group_of_its_own_number(self, host: Any, slots: list[Slot]) -> None:
        for s in slots:
            out = host.check_output(f"id -g {shlex.quote(s.name)}; getent group {s.uid}")
            gid, group = out.splitlines()
            assert int(gid) == s.uid and group.split(":")[0] == s.name

    def test_a_tenant_has_no_subordinate_ids_to_map_other_uids(self, host: Any, slots: list[Slot]) -> None:
        for path in ("/etc/subuid", "/etc/subgid"):
            f = host.file(path)
            owners = {ln.split(":", 1)[0] for ln in f.content_string.splitlines() if ln} if f.exists else set()
            assert owners & {s.name for s in slots} == set(), f"slot users in {path}"
        # And from the tenant's side: newuidmap refuses every mapping beyond its own uid.
        s = slots[0]
        probe = ("command -v newuidmap >/dev/null || { echo NO-TOOL; exit 0; }; "
                 "unshare -U sleep 5 & p=$!; sleep 0.3; "
                 f"newuidmap $p 0 {s.uid + 1} 1 2>/dev/null && echo MAPPED; kill $p 2>/dev/null; true")
        assert "MAPPED" not in as_tenant(host, s, probe).stdout

    def test_a_setuid_file_in_a_home_does_not_elevate(self, host: Any, pairs: list[tuple[Slot, Slot]]) -> None:
        a, b = pairs[0]
        pub = f"{a.home}/.swv-pub"
        shell = f"{pub}/sh"
        plant = (f"mkdir -p {shlex.quote(pub)} && cp /bin/bash {shlex.quote(shell)} && "
                 f"chmod 4755 {shlex.quote(shell)} && chmod 755 {shlex.quote(pub)} && chmod 711 {shlex.quote(a.home)}")
        assert as_tenant(host, a, plant).rc == 0
        try:
            # The other tenant runs A's setuid shell (bash -p keeps what the kernel gave it).
            out = as_tenant(host, b, f"{shlex.quote(shell)} -p -c 'id -u' 2>/dev/null || echo CANNOT-RUN")
            assert out.stdout.strip() in {str(b.uid), "CANNOT-RUN"}, f"{b.name} became uid {out.stdout.strip()}"
        finally:
            as_tenant(host, a, f"rm -rf {shlex.quote(pub)}; chmod 700 {shlex.quote(a.home)}")
