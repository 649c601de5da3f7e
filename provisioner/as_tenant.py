"""The one way the provisioner runs anything as a tenant: :func:`run_as_tenant`.

Whatever runs as a slot user may be the tenant's own code (a WordPress drop-in, a config file
the app executes), so it gets nothing of the operator's: it starts in a **new session** with
no controlling terminal (``setsid``: no ``/dev/tty``, no ``TIOCSTI`` into root's shell), its
standard input is ``/dev/null`` unless the caller pipes data (a secret) in, its output is
captured (never the operator's terminal), **no other descriptor** is inherited
(``close_fds``), the environment is built from scratch, the working directory is the home
(entered as root, but it is the slots root's own entry, which no tenant can swap), the
process has the tenant's uid, gid and supplementary groups (``initgroups``), and it runs
under the tenant's limits (no core dumps, bounded CPU time, processes and open files,
through ``prlimit`` run as the tenant). On timeout the whole session is killed.

``runuser``/``su`` are not used: they open a PAM session in the caller's terminal.

>>> tenant_env(TenantAccount("alice", 5000, 5000, Path("/srv/slots/alice")))["HOME"]
'/srv/slots/alice'
"""

from __future__ import annotations

import logging
import os
import pwd
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from provisioner.errors import CommandFailed, SlotError

log = logging.getLogger("slotwarden.as_tenant")

PRLIMIT = "/usr/bin/prlimit"
PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class TenantAccount:
    """The slot user a command runs as."""

    name: str
    uid: int
    gid: int
    home: Path

    @classmethod
    def of(cls, username: str) -> TenantAccount:
        """The account of slot user USERNAME; refuses root and system accounts."""
        try:
            pw = pwd.getpwnam(username)
        except KeyError:
            raise SlotError(f"slot {username!r} has no system user") from None
        if pw.pw_uid == 0 or pw.pw_gid == 0:
            raise SlotError(f"{username!r} has uid/gid 0; refusing to run anything as it")
        return cls(pw.pw_name, pw.pw_uid, pw.pw_gid, Path(pw.pw_dir))


@dataclass(frozen=True)
class TenantLimits:
    """Resource limits of a command run as a tenant (hard and soft alike)."""

    cpu_seconds: int = 300
    processes: int = 512
    open_files: int = 1024
    core_bytes: int = 0

    def prlimit_args(self) -> list[str]:
        """``prlimit`` options that set these limits (pure)."""
        return [f"--cpu={self.cpu_seconds}", f"--nproc={self.processes}", f"--nofile={self.open_files}",
                f"--core={self.core_bytes}"]


def tenant_env(account: TenantAccount, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The whole environment of a command run as ACCOUNT: nothing inherited from the caller."""
    env = {"HOME": str(account.home), "USER": account.name, "LOGNAME": account.name, "SHELL": "/bin/sh",
           "PATH": PATH, "LANG": "C.UTF-8"}
    env.update(extra or {})
    return env


def tenant_argv(argv: list[str], limits: TenantLimits) -> list[str]:
    """ARGV wrapped so it starts under LIMITS (prlimit runs as the tenant and execs it)."""
    return [PRLIMIT, *limits.prlimit_args(), "--", *argv]


def run_as_tenant(
    account: TenantAccount,
    argv: list[str],
    *,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
    limits: TenantLimits | None = None,
    timeout: float = 300,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run ARGV as ACCOUNT, isolated from the caller (see the module docstring).

    STDIN (which may hold a secret) is piped in and never logged; ENV adds variables to the
    clean environment. Raises :class:`CommandFailed` on a non-zero exit when CHECK.
    """
    if account.uid == 0 or account.gid == 0:
        raise SlotError("refusing to run a tenant command as root")
    full = tenant_argv(argv, limits or TenantLimits())
    log.debug("run as %s: %s%s", account.name, argv, " (with input on stdin)" if stdin is not None else "")
    groups = [g for g in os.getgrouplist(account.name, account.gid) if g != 0]
    try:
        proc = subprocess.Popen(
            full,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=tenant_env(account, env),
            cwd=str(account.home),
            user=account.uid,
            group=account.gid,
            extra_groups=groups,
            start_new_session=True,
            close_fds=True,
            umask=0o077,
        )
    except FileNotFoundError:
        raise CommandFailed(argv, 127, f"{full[0]}: command not found") from None
    except OSError as exc:
        raise CommandFailed(argv, 126, f"cannot start as {account.name}: {exc.strerror}") from None
    try:
        out, err = proc.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_session(proc)
        raise CommandFailed(argv, -1, f"timed out after {timeout:g}s") from None
    finally:
        if proc.poll() is None:
            _kill_session(proc)
    if check and proc.returncode != 0:
        raise CommandFailed(argv, proc.returncode, err)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def _kill_session(proc: subprocess.Popen[str]) -> None:
    """Kill the command's whole process group (its session leader's group) and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.communicate()
