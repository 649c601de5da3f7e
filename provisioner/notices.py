"""Takedown notices: the tenant is told, has 24 hours, then the file is quarantined.

``slotctl notice takedown USER PATH --ref CASE`` records the notice (table ``notices``) and
tells the tenant three ways: its inbox (shown by ``slotwarden-me`` at every login and by
``slotwarden-me notices``; the Hub reads the same rows through :func:`list_notices`), and the
configured ``[notices] hook`` command (e.g. a mailer), run with the event as JSON on stdin.

PATH must name a regular file inside the slot's home, reached without any symlink: each
component is opened ``O_NOFOLLOW`` relative to the previous directory's descriptor. After
``[notices] takedown_after`` (24 h) :func:`quarantine_due` (a retention rule, so the timer runs
it) copies a file still there into ``<state_dir>/quarantine/`` (root only, 0600), records its
SHA-256, and unlinks the name — only if the name still is the very inode copied. A file the
tenant removed (or replaced by a link) is recorded as gone; nothing is ever followed.

>>> home_relative("/srv/slots/ann", "/srv/slots/ann/www/song.mp3")
['www', 'song.mp3']
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import stat
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from provisioner import inbox
from provisioner.config import NoticesConfig
from provisioner.context import Context
from provisioner.errors import BadInput, SlotError
from provisioner.extensions import Hooks
from provisioner.names import validate_username
from provisioner.runner import run
from provisioner.steps import Step
from provisioner.store import SlotRecord, Store, current_actor

log = logging.getLogger("slotwarden.notices")
MAX_REF = 100
MAX_PATH = 4096
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def notices_config(ctx: Context) -> NoticesConfig:
    return ctx.config.notices


@dataclass(frozen=True)
class Notice:
    """One takedown notice and what became of it."""

    id: int
    username: str
    path: str
    ref: str
    state: str
    created_at: float
    deadline: float
    quarantined_at: float | None
    sha256: str | None
    size: int | None
    quarantine_path: str | None
    closed_at: float | None
    closed_by: str | None
    note: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Notices:
    """The only code that writes ``notices``."""

    _UPDATABLE = frozenset({"state", "quarantined_at", "sha256", "size", "quarantine_path", "closed_at",
                            "closed_by", "note"})

    def __init__(self, store: Store) -> None:
        self.store = store

    def add(self, username: str, path: str, ref: str, now: float, deadline: float) -> int:
        row = self.store.db.execute(
            "INSERT INTO notices (username, path, ref, state, created_at, deadline) VALUES (?, ?, ?, 'open', ?, ?) "
            "RETURNING id", (username, path, ref, now, deadline)).fetchone()
        return int(row[0])

    def get(self, notice_id: int) -> Notice | None:
        row = self.store.db.execute("SELECT * FROM notices WHERE id = ?", (notice_id,)).fetchone()
        return Notice(**dict(row)) if row else None

    def list(self, username: str | None = None) -> list[Notice]:
        if username is None:
            rows = self.store.db.execute("SELECT * FROM notices ORDER BY id").fetchall()
        else:
            rows = self.store.db.execute("SELECT * FROM notices WHERE username = ? ORDER BY id", (username,)).fetchall()
        return [Notice(**dict(r)) for r in rows]

    def update(self, notice_id: int, **values: Any) -> None:
        bad = set(values) - self._UPDATABLE
        if bad:
            raise ValueError(f"not an updatable notice column: {sorted(bad)}")
        cols = ", ".join(f"{k} = :{k}" for k in values)  # names checked against _UPDATABLE
        self.store.db.execute(f"UPDATE notices SET {cols} WHERE id = :id", {**values, "id": notice_id})  # noqa: S608


# --- paths inside a home, never through a link ------------------------------------------------------


def home_relative(home: str, path: object) -> list[str]:
    """PATH's components below HOME (PATH absolute under HOME, or relative to it); BadInput otherwise."""
    if not isinstance(path, str) or not path or len(path) > MAX_PATH or "\x00" in path \
            or not path.isprintable():
        raise BadInput("PATH must be a file inside the slot's home")
    rel = path
    if path.startswith("/"):
        prefix = home.rstrip("/") + "/"
        if not path.startswith(prefix):
            raise BadInput(f"PATH {path!r} is outside the home {home}")
        rel = path[len(prefix):]
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise BadInput(f"PATH {path!r} must name a file inside the home, without '..'")
    return parts


@contextlib.contextmanager
def open_parent(home: Path, parts: list[str]) -> Any:
    """A descriptor of the directory holding PARTS[-1], no component followed if it is a link."""
    fd = os.open(home, _DIR)
    try:
        for part in parts[:-1]:
            try:
                nfd = os.open(part, _DIR, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise BadInput(f"{'/'.join(parts)}: {part!r} is a symlink or not a directory") from None
                if exc.errno == errno.ENOENT:
                    raise BadInput(f"{'/'.join(parts)}: no such file in the home") from None
                raise
            os.close(fd)
            fd = nfd
        yield fd
    finally:
        os.close(fd)


def regular_file_stat(dir_fd: int, name: str) -> os.stat_result | None:
    """lstat of NAME in DIR_FD if it is a regular file; None if absent; BadInput for a link or other kind."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        raise BadInput(f"{name!r} is a symlink; a notice names the file itself")
    if not stat.S_ISREG(st.st_mode):
        raise BadInput(f"{name!r} is not a regular file")
    return st


def validate_ref(ref: object) -> str:
    """A case reference: 1-100 printable characters on one line."""
    if not isinstance(ref, str) or not ref.strip() or len(ref) > MAX_REF or not ref.isprintable():
        raise BadInput(f"--ref must be 1-{MAX_REF} printable characters on one line")
    return ref.strip()


# --- operations ---------------------------------------------------------------------------------------


def _slot(ctx: Context, username: str) -> SlotRecord:
    validate_username(username)
    rec = ctx.store.get_slot(username)
    if rec is None or rec.state in ("creating", "removing"):
        raise BadInput(f"no slot named {username!r}")
    return rec


def _tell(ctx: Context, event: str, notice: Notice) -> None:
    """Republish the tenant's inbox and run the hook (a failing hook is logged and audited, not fatal)."""
    rec = ctx.store.get_slot(notice.username)
    if rec is None:
        return
    inbox.publish(ctx, notice.username)
    hook = notices_config(ctx).hook
    if not hook:
        return
    doc = {"event": event, "username": notice.username, "email": rec.email, "notice": notice.as_dict()}
    try:
        run([*hook], stdin=json.dumps(doc, sort_keys=True), timeout=60)
    except SlotError as exc:
        log.warning("notice hook failed: %s", exc)
        ctx.store.audit("slotwarden", "notice.hook-failed", notice.username, {"id": notice.id, "error": str(exc)})


def takedown(ctx: Context, username: str, path: str, ref: str, *, now: float | None = None) -> Notice:
    """Record a takedown notice for PATH in USERNAME's home and tell the tenant."""
    now = time.time() if now is None else now
    ref = validate_ref(ref)
    rec = _slot(ctx, username)
    parts = home_relative(rec.home, path)
    with open_parent(Path(rec.home), parts) as dfd:
        if regular_file_stat(dfd, parts[-1]) is None:
            raise BadInput(f"{'/'.join(parts)}: no such file in the home")
    rel = "/".join(parts)
    store = Notices(ctx.store)
    with ctx.store.transaction():
        nid = store.add(username, rel, ref, now, now + notices_config(ctx).takedown_after)
        ctx.store.audit(current_actor(), "notice.takedown", username, {"id": nid, "path": rel, "ref": ref})
    notice = store.get(nid)
    assert notice is not None
    _tell(ctx, "takedown", notice)
    return notice


def _quarantine_dir(ctx: Context) -> int:
    d = ctx.config.state_dir / "quarantine"
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(d, _DIR)
    os.fchown(fd, 0, 0)
    os.fchmod(fd, 0o700)
    return fd


def _quarantine(ctx: Context, notice: Notice, rec: SlotRecord, now: float) -> dict[str, Any]:
    """Move the notice's file out of the home; the new column values."""
    parts = notice.path.split("/")
    try:
        with open_parent(Path(rec.home), parts) as dfd:
            try:
                st = regular_file_stat(dfd, parts[-1])
            except BadInput as exc:
                return {"state": "gone", "note": f"replaced: {exc}; nothing followed"}
            if st is None:
                return {"state": "gone", "note": "removed by the tenant"}
            try:
                src = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
            except OSError as exc:  # swapped for a link (ELOOP) or removed since the lstat
                return {"state": "gone", "note": f"replaced or removed while quarantining ({exc.strerror})"}
            try:
                sst = os.fstat(src)
                if not stat.S_ISREG(sst.st_mode):
                    return {"state": "gone", "note": "replaced by a non-file; nothing followed"}
                name = f"{notice.id}-{notice.username}"
                qfd = _quarantine_dir(ctx)
                try:
                    digest, size = _copy(src, qfd, name)
                finally:
                    os.close(qfd)
                now_st = os.stat(parts[-1], dir_fd=dfd, follow_symlinks=False)
                if (now_st.st_dev, now_st.st_ino) == (sst.st_dev, sst.st_ino):
                    os.unlink(parts[-1], dir_fd=dfd)
                note = f"{sst.st_nlink - 1} other hard link(s) remain in the home" if sst.st_nlink > 1 else None
            finally:
                os.close(src)
    except BadInput as exc:
        return {"state": "gone", "note": f"path no longer reachable: {exc}"}
    return {"state": "quarantined", "quarantined_at": now, "sha256": digest, "size": size,
            "quarantine_path": str(ctx.config.state_dir / "quarantine" / name), "note": note}


def _copy(src: int, qfd: int, name: str) -> tuple[str, int]:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=qfd)
    dst = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=qfd)
    h = hashlib.sha256()
    size = 0
    try:
        while chunk := os.read(src, 1 << 20):
            h.update(chunk)
            size += len(chunk)
            os.write(dst, chunk)
        os.fsync(dst)
    finally:
        os.close(dst)
    return h.hexdigest(), size


def quarantine_due(ctx: Context, now: float, dry_run: bool) -> Any:
    """Retention rule: quarantine what takedown notices named once their deadline has passed."""
    from provisioner.retention import RuleResult

    store = Notices(ctx.store)
    done: list[str] = []
    for n in store.list():
        if n.state != "open" or n.deadline > now:
            continue
        done.append(f"{n.username}: notice {n.id} ({n.ref}) {n.path}")
        if dry_run:
            continue
        rec = ctx.store.get_slot(n.username)
        if rec is None:
            continue
        values = _quarantine(ctx, n, rec, now)
        with ctx.store.transaction():
            store.update(n.id, **values)
            ctx.store.audit("slotwarden", f"notice.{values['state']}", n.username,
                            {k: v for k, v in {"id": n.id, "path": n.path, **values}.items() if v is not None})
        updated = store.get(n.id)
        assert updated is not None
        _tell(ctx, values["state"], updated)
    return RuleResult("notices", "files named by takedown notices past their deadline: quarantined", done)


def list_notices(ctx: Context, username: str | None = None) -> list[Notice]:
    """Every notice (of USERNAME): what the CLI lists and the Hub shows."""
    if username is not None:
        validate_username(username)
    found = Notices(ctx.store).list(username)
    if username is not None and not found and ctx.store.get_slot(username) is None:
        raise BadInput(f"no slot named {username!r}")
    return found


def get_notice(ctx: Context, notice_id: int) -> Notice:
    notice = Notices(ctx.store).get(notice_id)
    if notice is None:
        raise BadInput(f"no notice {notice_id}")
    return notice


def close(ctx: Context, notice_id: int, *, now: float | None = None) -> Notice:
    """Close notice NOTICE_ID (the case is settled); a quarantined copy stays until the slot goes."""
    now = time.time() if now is None else now
    notice = get_notice(ctx, notice_id)
    if notice.state == "closed":
        raise SlotError(f"notice {notice_id} is already closed")
    store = Notices(ctx.store)
    actor = current_actor()
    with ctx.store.transaction():
        store.update(notice_id, state="closed", closed_at=now, closed_by=actor)
        ctx.store.audit(actor, "notice.close", notice.username, {"id": notice_id, "was": notice.state})
    if ctx.store.get_slot(notice.username) is not None:
        inbox.publish(ctx, notice.username)
    return get_notice(ctx, notice_id)


# --- inbox, data report, removal ---------------------------------------------------------------------


def _when(t: float | None) -> str | None:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t)) if t else None


def inbox_rows(ctx: Context, username: str) -> list[dict[str, Any]]:
    """What the tenant is shown: notices not yet closed."""
    return [{"id": n.id, "path": n.path, "ref": n.ref, "state": n.state, "deadline": _when(n.deadline),
             "sha256": n.sha256} for n in Notices(ctx.store).list(username) if n.state != "closed"]


def data_items(ctx: Context, username: str, rec: SlotRecord | None) -> list[Any]:
    """``slotctl data report``: every notice about the user's files."""
    from provisioner.datareport import Item

    rows = [{"id": n.id, "path": n.path, "ref": n.ref, "state": n.state, "received": _when(n.created_at),
             "deadline": _when(n.deadline), "quarantined": _when(n.quarantined_at), "sha256": n.sha256,
             "size": n.size, "closed": _when(n.closed_at)} for n in Notices(ctx.store).list(username)]
    if not rows and rec is None:
        return []
    return [Item("takedown notices", rows or "not held (no notice)",
                 "takedown: the tenant is told and has 24 hours, then the file is quarantined",
                 f"store {ctx.config.db_path} (notices) + audit; quarantined copies in "
                 f"{ctx.config.state_dir / 'quarantine'} (root only)",
                 "the record and audit are kept; quarantined copies until the slot is removed")]


def _drop_quarantined(ctx: Context, username: str) -> None:
    store = Notices(ctx.store)
    for n in store.list(username):
        if n.quarantine_path:
            Path(n.quarantine_path).unlink(missing_ok=True)
        if n.state != "closed":
            store.update(n.id, state="closed", closed_at=time.time(), closed_by="slotwarden (slot removed)")


def removal_steps(ctx: Context, rec: SlotRecord) -> list[Step]:
    """Slot removal: quarantined copies go with the slot, open notices are closed (records kept)."""
    if not Notices(ctx.store).list(rec.username):
        return []
    return [Step("notices", f"close the notices of {rec.username}, remove its quarantined files",
                 lambda: _drop_quarantined(ctx, rec.username))]



EXTENSION = Hooks("notices", removal=removal_steps, data=data_items, rules=(quarantine_due,))
