"""The other doors into a slot: ``su`` and ``cron``, each with a lab PAM stack of our own.

``su`` and ``cron`` take their PAM service names from their own code (``su``/``su-l``,
``cron``), so a test cannot give them another service the way it gives the lab sshd one. The
machine's files stay untouched: each door runs in a private mount namespace (``unshare
--mount``) in which the lab's stack is bind-mounted over ``/etc/pam.d/<service>``; the bind
mount and everything else in that namespace end with the door's last process.

The cron door is a second ``cron -f`` of its own: in its namespace the machine's
``/etc/crontab`` and ``/etc/cron.d`` are hidden behind empty ones (so it never runs the
machine's jobs twice), the user crontabs come from a spool directory of the test, and ``/run``
is a fresh tmpfs (so its pid file never meets the machine's cron).
"""

from __future__ import annotations

import grp
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.system.lab import stop_process, wait_for

# Session lines every lab stack starts with: the identity checks a real su/cron stack has.
AUTH_ACCOUNT = "auth sufficient pam_rootok.so\nauth required pam_deny.so\naccount required pam_unix.so\n"


def su_stack(session_lines: str) -> str:
    """A stack for ``su`` run by root (pam_rootok: no password), then the lab's session lines."""
    return AUTH_ACCOUNT + "session required pam_unix.so\n" + session_lines


def run_su(user: str, command: str, stack: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``su -s /bin/sh -c COMMAND USER`` as root, PAM service ``su`` being STACK (private mount ns)."""
    with tempfile.TemporaryDirectory(prefix="swdoor-su-") as tmp:
        pam = Path(tmp) / "su"
        pam.write_text(stack)
        pam.chmod(0o644)
        script = 'mount --bind "$1" /etc/pam.d/su && shift && exec "$@"'
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", str(pam),
                "su", "-s", "/bin/sh", "-c", command, user]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


class LabCron:
    """A private ``cron -f`` whose PAM service ``cron`` is the lab's stack; ``crontab(user, text)``
    installs a user's crontab in its spool, as ``crontab -e`` would (owner USER, group crontab,
    mode 0600)."""

    def __init__(self, proc: subprocess.Popen[str], spool: Path) -> None:
        self.proc = proc
        self.spool = spool

    def crontab(self, user: str, text: str) -> None:
        install_crontab(self.spool, user, text)


def install_crontab(spool: Path, user: str, text: str) -> None:
    """USER's crontab in SPOOL as ``crontab -e`` leaves it, and the spool marked changed."""
    path = spool / user
    tmp = spool / f".{user}.tmp"
    tmp.write_text(text)
    shutil.chown(tmp, user, "crontab")
    tmp.chmod(0o600)
    tmp.replace(path)
    # cron rereads the spool when the directory's mtime differs from the one it last read,
    # at one-second resolution: a write in the second cron last looked would go unseen.
    later = max(time.time(), spool.stat().st_mtime) + 2
    os.utime(spool, (later, later))


@contextmanager
def lab_cron(session_lines: str, crontabs: dict[str, str] | None = None) -> Iterator[LabCron]:
    """Start the private cron (see the module's docstring) with CRONTABS (user → text) already in
    its spool; stopped by pid at the end."""
    tmp = Path(tempfile.mkdtemp(prefix="swdoor-cron-"))
    try:
        os.chmod(tmp, 0o755)
        pam = tmp / "cron"
        pam.write_text(AUTH_ACCOUNT + session_lines)
        pam.chmod(0o644)
        (tmp / "crontab").write_text("")
        (tmp / "cron.d").mkdir()
        spool = tmp / "crontabs"
        spool.mkdir()
        os.chown(spool, 0, grp.getgrnam("crontab").gr_gid)
        spool.chmod(0o1730)
        for user, text in (crontabs or {}).items():
            install_crontab(spool, user, text)
        script = ('mount -t tmpfs -o mode=0755 lab-run /run && mount --bind "$1/cron" /etc/pam.d/cron && '
                  'mount --bind "$1/crontab" /etc/crontab && mount --bind "$1/cron.d" /etc/cron.d && '
                  'mount --bind "$1/crontabs" /var/spool/cron/crontabs && exec cron -f -L 15')
        proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                                 str(tmp)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        try:
            # cron is up once its process is cron itself (the shell exec'd it, the mounts are done).
            assert wait_for(lambda: _comm(proc.pid) == "cron" or proc.poll() is not None, timeout=10)
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            yield LabCron(proc, spool)
        finally:
            stop_process(proc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""
