"""The two shadow fields suspension changes (expiry day, password lock), read and set through usermod.

>>> st = LoginState(expire="", locked=False)
>>> st.suspended
False
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from provisioner.errors import SlotError
from provisioner.runner import run

SHADOW = Path("/etc/shadow")
# The expiry day suspend sets: 1970-01-02, long past, so pam_unix's account phase says "expired".
SUSPENDED_EXPIRE = "1"


@dataclass(frozen=True)
class LoginState:
    """The two shadow fields suspend changes: the expiry day ('' = never) and the password lock."""

    expire: str
    locked: bool

    @property
    def suspended(self) -> bool:
        return self.expire == SUSPENDED_EXPIRE and self.locked


def login_state(username: str, shadow: Path = SHADOW) -> LoginState:
    """Read USERNAME's expiry and lock from the shadow file (root only)."""
    with open(shadow, encoding="utf-8") as f:
        for line in f:
            fields = line.rstrip("\n").split(":")
            if fields[0] == username and len(fields) >= 8:
                return LoginState(expire=fields[7], locked=fields[1].startswith("!"))
    raise SlotError(f"{username!r} has no shadow entry")


def set_expire(username: str, expire: str) -> None:
    """Set the account expiry day ('' = never expires)."""
    run(["usermod", "--expiredate", expire, username])


def lock_password(username: str) -> None:
    run(["usermod", "--lock", username])


def unlock_password(username: str) -> None:
    run(["usermod", "--unlock", username])
