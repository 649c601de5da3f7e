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
