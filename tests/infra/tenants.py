"""What the isolation checks share: the slot as the suite sees it, and running as a tenant."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any

# Where slotwarden keeps what no tenant may read by default: its state_dir holds the store,
# the app-credentials key file and the guard's attempt records.
DEFAULT_SECRET_PATHS = ("/var/lib/slotwarden",)


@dataclass(frozen=True)
class Slot:
    """A slot as the suite sees it: the Linux user and its home."""

    name: str
    uid: int
    home: str



def as_tenant(host: Any, slot: Slot, script: str) -> Any:
    """Run a shell script as the slot user, from its home (HOME set to it)."""
    home = shlex.quote(slot.home)
    with host.sudo(slot.name):
        return host.run(f"export HOME={home}; cd {home} && {{ {script}\n}}")


# Run as the tenant (python3 -I -c, argv: a directory, a name prefix): every ioctl that makes a
# btrfs subvolume, straight at the kernel — the _V2 ones with an explicit, empty qgroup-inherit
# list (join no group: no cap). Prints one "NAME errno-name" line each ("NAME MADE" if it worked).
# seccomp answers before the kernel looks at the descriptor, so a filtered ioctl is EPERM on any
# filesystem, where an unfiltered one makes a subvolume (btrfs) or is ENOTTY (ext4, xfs).
RAW_SUBVOLUME_IOCTLS = r"""
import ctypes, errno, fcntl, os, struct, sys
where, prefix = sys.argv[1], sys.argv[2]
fd = os.open(where, os.O_RDONLY | os.O_DIRECTORY)
inherit = ctypes.create_string_buffer(struct.pack("=9Q", 0, 0, 0, 0, 0, 0, 0, 0, 0), 72)
def v1(name, src):
    return bytearray(struct.pack("=q", src) + name.encode().ljust(4088, b"\0"))
def v2(name, src):
    head = struct.pack("=qQQQQ16x", src, 0, 1 << 2, 72, ctypes.addressof(inherit))
    return bytearray(head + name.encode().ljust(4040, b"\0"))
for label, cmd, build, src in (("SNAP_CREATE", 0x50009401, v1, fd), ("SUBVOL_CREATE", 0x5000940E, v1, 0),
                               ("SNAP_CREATE_V2", 0x50009417, v2, fd), ("SUBVOL_CREATE_V2", 0x50009418, v2, 0)):
    try:
        fcntl.ioctl(fd, cmd, build(prefix + label.lower(), src))
        print(label, "MADE")
    except OSError as e:
        print(label, errno.errorcode.get(e.errno, str(e.errno)))
"""
SUBVOLUME_IOCTLS = ("SNAP_CREATE", "SUBVOL_CREATE", "SNAP_CREATE_V2", "SUBVOL_CREATE_V2")
PREFIX = ".swv-raw-"


def subvolume_attack() -> str:
    """The tenant's whole attempt (sh): the btrfs tool, then the raw ioctls, then its own status."""
    return ("btrfs subvolume create $HOME/.swv-tool 2>&1; echo tool=$?; "
            f"python3 -I -c {shlex.quote(RAW_SUBVOLUME_IOCTLS)} $HOME {PREFIX}; "
            "grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status")


def assert_refused(out: str, fs: str) -> None:
    """Every ioctl refused by the filter (EPERM), the tool too where it reaches one (btrfs)."""
    answers = dict(line.split(" ", 1) for line in out.splitlines() if line.split(" ", 1)[0] in SUBVOLUME_IOCTLS)
    assert answers == dict.fromkeys(SUBVOLUME_IOCTLS, "EPERM"), out
    assert "tool=0" not in out, out
    if fs == "btrfs":
        assert "Operation not permitted" in out, out
    # Without no_new_privs: setuid programs (su, sudo, passwd) keep working in the session.
    assert "Seccomp:\t2" in out and "NoNewPrivs:\t0" in out, out
