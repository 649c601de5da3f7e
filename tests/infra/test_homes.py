"""Homes: each tenant owns a 0700 home that no other tenant can list, read, write or enter.

A world-readable canary file inside each home proves it is the home's mode that protects
it, not the file's. Files the other tenant owns anywhere else (app credentials and
configs, wherever an app puts them) must be unreadable too.
"""

from __future__ import annotations

import shlex
from typing import Any

from tests.infra.tenants import Slot, as_tenant

CANARY = ".swv-canary"
INTRUDER = ".swv-intruder"
# Where slot-owned files outside the home may live (app configs, credentials, sockets). The
# shared temp directories are left out: what a tenant puts there is its own business, and on a
# shared test machine they hold leftovers of earlier users whose UID a slot now reuses.
OWNED_ELSEWHERE = "/etc /opt /srv /var /run /home"


def test_home_is_owned_by_its_slot_and_mode_0700(host: Any, slots: list[Slot]) -> None:
    out = host.check_output("stat -c '%n %U %a' " + " ".join(shlex.quote(s.home) for s in slots))
    seen = {line.split()[0]: line.split()[1:] for line in out.splitlines()}
    assert {s.home: [s.name, "700"] for s in slots} == seen


def test_tenant_cannot_list_read_write_or_enter_another_home(host: Any, pairs: list[tuple[Slot, Slot]],
                                                            slots: list[Slot]) -> None:
    setup = "; ".join(
        f"printf secret > {shlex.quote(s.home + '/' + CANARY)}; "
        f"chown {s.name}: {shlex.quote(s.home + '/' + CANARY)}; chmod 0644 {shlex.quote(s.home + '/' + CANARY)}"
        for s in slots)
    host.check_output(setup)
    try:
        breaches = {}
        for a, b in pairs:
            hb = shlex.quote(b.home)
            probe = (f"ls {hb} >/dev/null 2>&1 && echo LIST; "
                     f"cat {hb}/{CANARY} 2>/dev/null && echo READ; "
                     f"touch {hb}/{INTRUDER} 2>/dev/null && echo WRITE; "
                     f"(cd {hb}) 2>/dev/null && echo TRAVERSE; "
                     f"cat {shlex.quote(a.home)}/{CANARY} >/dev/null || echo OWN-HOME-BROKEN; true")
            out = as_tenant(host, a, probe).stdout.split()
            if out:
                breaches[f"{a.name} -> {b.name}"] = out
        assert breaches == {}
    finally:
        host.run("rm -f " + " ".join(shlex.quote(f"{s.home}/{f}") for s in slots for f in (CANARY, INTRUDER)))


def test_tenant_cannot_read_files_another_owns_elsewhere(host: Any, pairs: list[tuple[Slot, Slot]]) -> None:
    owned: dict[str, list[str]] = {}
    for _a, b in pairs:
        if b.name not in owned:
            out = host.run(f"find {OWNED_ELSEWHERE} -path /var/tmp -prune -o "
                           f"\\( -user {b.name} -o -group {b.name} \\) -type f "
                           f"-not -path {shlex.quote(b.home + '/*')} -print 2>/dev/null")
            owned[b.name] = out.stdout.split()
    breaches = {}
    for a, b in pairs:
        if owned[b.name]:
            paths = " ".join(shlex.quote(p) for p in owned[b.name])
            out = as_tenant(host, a, f"for f in {paths}; do test -r \"$f\" && echo \"$f\"; done; true")
            if out.stdout.split():
                breaches[f"{a.name} -> {b.name}"] = out.stdout.split()
    assert breaches == {}
