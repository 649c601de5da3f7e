"""Processes: /proc is mounted hidepid, so a tenant sees its own processes and nothing else."""

from __future__ import annotations

from typing import Any

from tests.infra.tenants import Slot, as_tenant


def test_proc_is_mounted_with_hidepid(host: Any) -> None:
    options = host.check_output("findmnt -no OPTIONS /proc").split(",")
    assert "hidepid=invisible" in options or "hidepid=2" in options


def test_tenant_sees_only_its_own_processes(host: Any, pairs: list[tuple[Slot, Slot]]) -> None:
    for a, b in pairs[:2]:
        # The other tenant's process, started as that tenant: a tenant must not see it,
        # nor root's processes (sshd, init, the guard).
        with host.sudo(b.name):
            pid = host.check_output("nohup setsid sleep 300 >/dev/null 2>&1 </dev/null & echo $!")
        try:
            out = as_tenant(host, a, f"ps -eo user:32= | sort -u; test -e /proc/{pid} && echo VISIBLE:{pid}; true")
            assert out.stdout.split() == [a.name], f"{a.name} sees: {out.stdout.split()}"
        finally:
            host.run(f"kill {pid}")
