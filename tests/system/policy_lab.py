"""Lab for the data-policy tests (support, notices, report): a slot host with its own inbox and more.

Everything lives under a fresh world-traversable directory (tenants run the installed
``slotwarden-me`` from it) and goes in teardown, mounts made under it included.
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.system.conftest import SlotHost, as_user, make_slot_host, teardown_slot_host, world_traversable_tmpdir


@contextlib.contextmanager
def policy_host(tag: str, extra: Callable[[Path], str]) -> Iterator[SlotHost]:
    """A slot host whose config has an ``[inbox]`` under its base plus EXTRA(base)."""
    base = world_traversable_tmpdir(tag)
    config = f'[inbox]\ndir = "{base}/inbox"\nlogin_script = "{base}/profile.d/slotwarden-inbox.sh"\n' + extra(base)
    host = make_slot_host(base, f"{tag[:2]}{secrets.token_hex(2)}", extra_config=config)
    try:
        yield host
    finally:
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            mnt = line.split()[4]
            if mnt.startswith(f"{base}/"):
                subprocess.run(["umount", "-l", mnt], check=False)
        teardown_slot_host(host)


def make_slot(host: SlotHost) -> str:
    """A new slot on HOST (its email NAME@example.com)."""
    name = host.name()
    out = host.slotctl("slot", "create", name, "--email", f"{name}@example.com", "--country", "DE")
    assert out.returncode == 0, out.stderr
    return name


def me(host: SlotHost, user: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the installed slotwarden-me as USER."""
    return as_user(user, " ".join([str(host.base / "bin" / "slotwarden-me"), *args]))
