"""The app fence: only the slot (and root, and the front door) may connect to a slot's app ports.

Apps listen on 127.0.0.1 TCP ports, which every local user can connect to. The Hub keeps one
nftables table (``[hub] fence_table``, family ``inet``) whose output chain, for loopback
traffic to any registered app port, accepts root, the front door's user and the port's slot
and resets everyone else's connection. The bridge rebuilds it from the app registry every few
seconds and at start (one atomic ``nft -f`` transaction, only when it changed), so a new app
is fenced within seconds of its install and a removed one stops being.

>>> print(fence_script("sw", {(40001, 1001)}, hub_uid=999))  # doctest: +ELLIPSIS
table inet sw {}
delete table inet sw
table inet sw {
    set ports { type inet_service; elements = { 40001 } }
    set allowed { type inet_service . uid; elements = { 40001 . 1001 } }
...
"""

from __future__ import annotations

import logging

from provisioner.context import Context
from provisioner.runner import run

log = logging.getLogger("slotwarden.hub.fence")


def fence_script(table: str, allowed: set[tuple[int, int]], hub_uid: int) -> str:
    """The nft script that replaces TABLE with a fence for ALLOWED (port, uid) pairs."""
    ports = sorted({p for p, _ in allowed})
    pairs = sorted(allowed)
    port_set = f"elements = {{ {', '.join(map(str, ports))} }} " if ports else ""
    pair_set = f"elements = {{ {', '.join(f'{p} . {u}' for p, u in pairs)} }} " if pairs else ""
    return (f"table inet {table} {{}}\n"
            f"delete table inet {table}\n"
            f"table inet {table} {{\n"
            f"    set ports {{ type inet_service; {port_set}}}\n"
            f"    set allowed {{ type inet_service . uid; {pair_set}}}\n"
            f"    chain output {{\n"
            f"        type filter hook output priority 0; policy accept;\n"
            f"        oifname \"lo\" tcp dport @ports meta skuid {{ 0, {hub_uid} }} accept\n"
            f"        oifname \"lo\" tcp dport . meta skuid @allowed accept\n"
            f"        oifname \"lo\" tcp dport @ports reject with tcp reset\n"
            f"    }}\n"
            f"}}\n")


def registered_ports(ctx: Context) -> set[tuple[int, int]]:
    """(port, slot uid) of every port of every installed app of every slot."""
    import pwd

    from provisioner.apps import registry_of

    reg = registry_of(ctx)
    out: set[tuple[int, int]] = set()
    for rec in ctx.store.list_slots():
        try:
            uid = pwd.getpwnam(rec.username).pw_uid
        except KeyError:
            continue
        for inst in reg.installs(rec.username):
            out |= {(port, uid) for port in reg.ports(rec.username, inst.app).values()}
    return out


def apply_fence(table: str, script: str) -> None:
    """Load SCRIPT (one transaction: the old table is replaced atomically)."""
    run(["nft", "-f", "-"], stdin=script)


def remove_fence(table: str) -> None:
    run(["nft", "delete", "table", "inet", table], check=False)
