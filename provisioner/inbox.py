"""The tenant's inbox: what root tells a slot (support requests, notices) and the answers it gives.

``slotwarden-me`` runs as the tenant, so it cannot touch the store. Root publishes, the tenant
answers, and the kernel says who answered. Root publishes under ``[inbox] dir``
(default ``/var/spool/slotwarden``, 0711 root)::

    <user>/             0750 root:<slot group>  the tenant enters and reads, cannot write
    <user>/inbox.json   0640 root:<slot group>  open support requests, grants and notices

and the tenant answers in its own home, under its own quota (a spool outside the home would
let a tenant fill a filesystem nobody's quota covers)::

    ~/.slotwarden/answers/   one small file per answer: ``approve 3``, ``refuse 3``, ``revoke 3``

Root trusts nothing the tenant wrote about who it is: only the slot's UID (and root) can create
a file in that home, and an answer counts only if it is a regular file owned by the slot's UID
(nobody but root can give a file away). Root walks there by descriptor — the home, then each
directory ``O_NOFOLLOW``, each owned by the slot — opens each answer ``O_NOFOLLOW |
O_NONBLOCK``, reads at most 4 KiB and removes it, whatever it held. A link, FIFO or directory
planted there is removed or skipped, never followed.

>>> parse_answer("approve 12 read-only")
Answer(verb='approve', grant=12, read_only=True)
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shlex
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provisioner.config import InboxConfig
from provisioner.context import Context
from provisioner.errors import BadInput
from provisioner.steps import Step

MAX_ANSWER = 4096
MAX_ANSWERS = 100  # answers read per slot and sync; the rest are removed unread
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
VERBS = ("approve", "refuse", "revoke")


def inbox_config(ctx: Context) -> InboxConfig:
    return ctx.config.inbox


@dataclass(frozen=True)
class Answer:
    """One answer of a tenant: approve / refuse / revoke support grant GRANT."""

    verb: str
    grant: int
    read_only: bool = False


def parse_answer(text: str) -> Answer:
    """An answer file's content: ``VERB ID [read-only]`` on one line (BadInput otherwise)."""
    words = text.strip().split(" ")
    if not 2 <= len(words) <= 3 or words[0] not in VERBS:
        raise BadInput("an answer is 'approve|refuse|revoke ID [read-only]'")
    verb, ident = words[0], words[1]
    if not (ident.isascii() and ident.isdigit()) or len(ident) > 12 or int(ident) == 0:
        raise BadInput("an answer's ID is a positive number")
    read_only = len(words) == 3
    if read_only and (words[2] != "read-only" or verb != "approve"):
        raise BadInput("only 'approve ID read-only' takes an option")
    return Answer(verb, int(ident), read_only)


def _slot_gid(username: str) -> int:
    return pwd.getpwnam(username).pw_gid


def _ensure_dir(parent_fd: int, name: str, mode: int, gid: int) -> int:
    """A descriptor of PARENT/NAME, made root:GID MODE (an existing link or file is refused)."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, mode, dir_fd=parent_fd)
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
    os.fchown(fd, 0, gid)
    os.fchmod(fd, mode)
    return fd


@contextlib.contextmanager
def _slot_dir(cfg: InboxConfig, username: str) -> Any:
    cfg.dir.mkdir(mode=0o711, parents=True, exist_ok=True)
    os.chmod(cfg.dir, 0o711)  # noqa: S103 - traverse only
    base = os.open(cfg.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fd = _ensure_dir(base, username, 0o750, _slot_gid(username))
    finally:
        os.close(base)
    try:
        yield fd
    finally:
        os.close(fd)


def publish(ctx: Context, username: str) -> None:
    """Rewrite USERNAME's inbox.json from the store (support requests and grants, notices)."""
    from provisioner import notices, support

    body = {"support": support.inbox_rows(ctx, username), "notices": notices.inbox_rows(ctx, username)}
    cfg = inbox_config(ctx)
    with _slot_dir(cfg, username) as fd:
        tmp = f".inbox.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=fd)
        ffd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640, dir_fd=fd)
        try:
            os.write(ffd, json.dumps(body, indent=1, sort_keys=True).encode())
            os.fchown(ffd, 0, _slot_gid(username))
            os.fchmod(ffd, 0o640)
        finally:
            os.close(ffd)
        os.rename(tmp, "inbox.json", src_dir_fd=fd, dst_dir_fd=fd)


ANSWERS = (".slotwarden", "answers")  # below the home


def take_answers(username: str, uid: int, home: Path) -> list[Answer]:
    """Read and remove the answers USERNAME (UID) left in HOME; anything else there is dropped unread."""
    try:
        fd = os.open(home, _DIR)
    except OSError:
        return []
    try:
        if os.fstat(fd).st_uid != uid:
            return []
        for part in ANSWERS:
            try:
                nfd = os.open(part, _DIR, dir_fd=fd)
            except OSError:  # absent, a link (ELOOP), not a directory: no answers
                return []
            os.close(fd)
            fd = nfd
            if os.fstat(fd).st_uid != uid:
                return []
        answers: list[Answer] = []
        for n, name in enumerate(sorted(os.listdir(fd))):
            text = _read_answer(fd, name, uid) if n < MAX_ANSWERS else None
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=fd)
            if text is None:
                continue
            with contextlib.suppress(BadInput):
                answers.append(parse_answer(text))
        return answers
    finally:
        os.close(fd)


def _read_answer(dir_fd: int, name: str, uid: int) -> str | None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != uid or st.st_size > MAX_ANSWER:
            return None
        return os.read(fd, MAX_ANSWER).decode("utf-8", "replace")
    finally:
        os.close(fd)


def remove_inbox(ctx: Context, username: str) -> None:
    """Remove USERNAME's inbox directory (slot removal); absent is fine."""
    import shutil

    cfg = inbox_config(ctx)
    try:
        base = os.open(cfg.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(username, dir_fd=base)
    finally:
        os.close(base)


LOGIN_SCRIPT = """\
# slotwarden: show the tenant its open support requests and notices at login (installed by host init).
if [ -x {me} ] && [ "$(id -u)" -ne 0 ]; then
    {me} login-message 2>/dev/null || true
fi
"""


def install_login_script(target: Path, me_path: Path) -> None:
    """Write the ``/etc/profile.d`` script that runs ``slotwarden-me login-message`` (0644 root)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(LOGIN_SCRIPT.format(me=shlex.quote(str(me_path))), encoding="utf-8")
    os.chmod(tmp, 0o644)
    os.replace(tmp, target)


def host_steps(ctx: Context, _req: object) -> list[Step]:
    """``host init``: install the login script when ``[inbox] login_script`` names one."""
    from provisioner.metrics import metrics_config

    target = inbox_config(ctx).login_script
    if target is None:
        return []
    me = metrics_config(ctx).me_path
    try:
        if target.read_text(encoding="utf-8") == LOGIN_SCRIPT.format(me=shlex.quote(str(me))):
            return []
    except (OSError, UnicodeDecodeError):
        pass
    return [Step("login-message", f"install {target} (shows the tenant its inbox at login)",
                 lambda: install_login_script(target, me))]
