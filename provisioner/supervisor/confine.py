"""The exec wrapper every slot program starts through: the slot's seccomp filter for apps.

Logins get the filter from ``pam_slotwarden_session.so`` at session open; apps have no PAM
session, so both supervisor backends start a slot's program through ``slotwarden-confine``
(``pam_hooks/c/slotwarden-confine.c``), which installs the same filter (no btrfs subvolume or
snapshot of the tenant's own: EPERM) before the tenant's code runs. supervisord runs it as root
with ``--user`` (the filter first, then the drop to the slot user, so setuid programs keep
working); systemd runs it as the unit's ``User=`` under ``NoNewPrivileges=yes``.

The wrapper is the package's (``/usr/libexec/slotwarden``) or, from a checkout, the one
``make pam`` builds.

>>> confine_argv("/usr/libexec/slotwarden/slotwarden-confine", "alice", ["/bin/sleep", "9"])
['/usr/libexec/slotwarden/slotwarden-confine', '--user', 'alice', '--', '/bin/sleep', '9']
"""

from __future__ import annotations

import os
from pathlib import Path

from provisioner.supervisor import SupervisorError

INSTALLED = Path("/usr/libexec/slotwarden/slotwarden-confine")
CHECKOUT = Path(__file__).resolve().parents[2] / "pam_hooks" / "c" / "slotwarden-confine"


def confine_wrapper() -> str:
    """The wrapper's path: the package's, else the checkout's build; refuses when neither exists.

    A checkout's build must be root's own (a wrapper that someone else could replace would run
    as root under supervisord).
    """
    for path in (INSTALLED, CHECKOUT):
        try:
            st = path.stat()
        except OSError:
            continue
        if st.st_uid == 0 and not st.st_mode & 0o022 and os.access(path, os.X_OK):
            return str(path)
    raise SupervisorError(f"{INSTALLED} is missing (install the package, or run 'make pam' in the checkout "
                          f"for {CHECKOUT}): slot programs start only under their seccomp filter")


def confine_argv(wrapper: str, user: str | None, argv: list[str], tmpfs_root: str | None = None) -> list[str]:
    """ARGV started through WRAPPER: as root dropping to USER, or (USER None) as the user already.

    TMPFS_ROOT (with USER): where the slots' /tmp tmpfs are, if not the package's default.

    >>> confine_argv("/w", "alice", ["/bin/true"], "/srv/state/slot-tmp")
    ['/w', '--user', 'alice', '--tmpfs-root', '/srv/state/slot-tmp', '--', '/bin/true']
    """
    opts = ["--user", user, *(["--tmpfs-root", tmpfs_root] if tmpfs_root else [])] if user is not None else []
    return [wrapper, *opts, "--", *argv]
