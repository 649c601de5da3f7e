"""Who listens on a loopback TCP port: the kernel's socket table (/proc/net/tcp, tcp6), not a guess.

A port answering is no proof that the slot's app answers: any local user may bind a free port
while the app is down (a restart, a rotate, a reboot) and serve a fake login page. The kernel
records the UID that created each socket; :func:`listener_owners` reads it for every socket
that would accept a connection to 127.0.0.1:PORT (bound to 127.0.0.1, 0.0.0.0, ``::`` or
``::ffff:127.0.0.1``), and :func:`check_owner` refuses unless all of them belong to the slot.

>>> line = "   0: 0100007F:9C41 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1001        0 4242 1"
>>> parse_socket_table("header\\n" + line + "\\n")
[Listener(address='127.0.0.1', port=40001, uid=1001, inode=4242)]
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

from provisioner.errors import SlotError

LISTEN = "0A"
REACHES_LOOPBACK = frozenset({"127.0.0.1", "0.0.0.0", "::", "::ffff:127.0.0.1"})  # noqa: S104 - matched, not bound


class ListenerRefused(SlotError):
    """The port is not (only) the slot's: nothing listens, or another user does."""


@dataclass(frozen=True)
class Listener:
    """One listening TCP socket: its local address and port, its owner's UID, its inode."""

    address: str
    port: int
    uid: int
    inode: int


def _address(hex_addr: str) -> str:
    raw = bytes.fromhex(hex_addr)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    if len(raw) == 16:  # four host-order 32-bit words
        words = struct.unpack("<4I", raw)
        return str(ipaddress.IPv6Address(struct.pack(">4I", *words)))
    raise ValueError("bad address")


def parse_socket_table(text: str) -> list[Listener]:
    """The LISTEN sockets of a /proc/net/tcp or tcp6 text (malformed lines are skipped)."""
    out = []
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) < 10 or f[3] != LISTEN:
            continue
        try:
            addr, _, port = f[1].partition(":")
            out.append(Listener(_address(addr), int(port, 16), int(f[7]), int(f[9])))
        except ValueError:
            continue
    return out


def listener_owners(port: int, proc: Path = Path("/proc")) -> list[Listener]:
    """Every listening socket that accepts connections to 127.0.0.1:PORT."""
    found = []
    for name in ("tcp", "tcp6"):
        try:
            text = (proc / "net" / name).read_text()
        except OSError:
            continue
        found += [s for s in parse_socket_table(text) if s.port == port and s.address in REACHES_LOOPBACK]
    return found


def check_owner(port: int, uid: int, proc: Path = Path("/proc")) -> None:
    """Refuse unless something listens on 127.0.0.1:PORT and every such listener is UID's."""
    owners = listener_owners(port, proc)
    if not owners:
        raise ListenerRefused(f"nothing listens on 127.0.0.1:{port}")
    strangers = sorted({s.uid for s in owners if s.uid != uid})
    if strangers:
        raise ListenerRefused(f"127.0.0.1:{port} is held by uid {strangers[0]}, not the slot's uid {uid} "
                              "(a squatted port)")
