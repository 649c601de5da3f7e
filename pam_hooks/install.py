"""Put the guard's lines into a PAM service file, and take them out byte for byte.

Debian's service files pull the real stack in with ``@include common-auth`` /
``@include common-account``. A failure inside common-auth ends at its
``requisite pam_deny.so``, so a line after the include runs only on success and
a line before it runs on every try. The guard therefore adds::

    auth     requisite pam_slotwarden.so ...            (before @include common-auth)
    auth     optional  pam_slotwarden.so authsucc ...   (right after it)
    account  required  pam_slotwarden.so ...            (before @include common-account)

With ``fail_mode = open`` (the default) ``requisite`` and ``required`` are
written in Linux-PAM's bracket form with ``module_unknown=ignore`` added: a
module that cannot be loaded (deleted by hand, a broken upgrade) makes PAM
answer PAM_MODULE_UNKNOWN, and that alone then skips the line instead of
failing every login on the host. libpam still logs "unable to dlopen" to
syslog. With ``fail_mode = closed`` a missing module refuses, as a stopped
service does.

Lines before the auth include come after ``pam_rootok`` in ``su``, so root's
own ``su`` is never prompted. Only stacks included inline (``@include`` or
``auth include``) are accepted: with ``substack`` or a ``required`` pam_unix
a failure would continue past the success hook.

The untouched original is kept under ``<state_dir>/pam-backup/``;
:func:`uninstall` restores it exactly when the file still is what we wrote,
and otherwise removes only our lines.

>>> plan = plan_install("auth requisite pam_nologin.so\\n@include common-auth\\n", "--args--", tolerant=False)
>>> print(plan, end="")
auth requisite pam_nologin.so
# slotwarden-guard: preauth (slotctl guard uninstall removes this)
auth     requisite pam_slotwarden.so --args--
@include common-auth
# slotwarden-guard: authsucc (slotctl guard uninstall removes this)
auth     optional  pam_slotwarden.so authsucc --args--
# slotwarden-guard: account (slotctl guard uninstall removes this)
account  required  pam_slotwarden.so --args--
>>> plan_install("@include common-auth\\n", "x").splitlines()[1]
'auth     [success=ok new_authtok_reqd=ok ignore=ignore module_unknown=ignore default=die] pam_slotwarden.so x'
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pam_hooks.config import GuardConfig

MARK = "# slotwarden-guard:"
MODULE = "pam_slotwarden.so"
SERVICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
_AUTH_INCLUDE = re.compile(r"^\s*(@include\s+common-auth|auth\s+include\s+common-auth)\s*(#.*)?$")
_ACCT_INCLUDE = re.compile(r"^\s*(@include\s+common-account|account\s+include\s+common-account)\s*(#.*)?$")
_ACCT_LINE = re.compile(r"^\s*-?account\s")


# requisite / required, except that a module PAM cannot load is skipped (see the module docstring).
TOLERANT = {
    "requisite": "[success=ok new_authtok_reqd=ok ignore=ignore module_unknown=ignore default=die]",
    "required": "[success=ok new_authtok_reqd=ok ignore=ignore module_unknown=ignore default=bad]",
}


class InstallError(RuntimeError):
    """The PAM file cannot be changed safely; nothing was written."""


@dataclass(frozen=True)
class InstallResult:
    """What install/uninstall did (or would do with ``dry_run``)."""

    service: str
    path: str
    changed: bool
    backup: str | None
    diff: str
    module: str | None = None


def module_args(cfg: GuardConfig) -> str:
    """The options the C module reads (it cannot parse TOML)."""
    return f"socket={cfg.socket} timeout={cfg.timeout_ms} fail_mode={cfg.fail_mode}"


def control(name: str, tolerant: bool) -> str:
    """``requisite``/``required``, or its bracket form that skips a missing module."""
    return TOLERANT[name] if tolerant else name


def tolerates_missing_module(cfg: GuardConfig) -> bool:
    """Only ``fail_mode = open`` lets logins through without the module (as without the service)."""
    return cfg.fail_mode == "open"


def _line(kind: str, ctl: str, args: str, what: str, module: str = MODULE) -> list[str]:
    return [f"{MARK} {what} (slotctl guard uninstall removes this)\n", f"{kind:<8} {ctl:<9} {module} {args}\n"]


def plan_install(text: str, args: str, tolerant: bool = True, module: str = MODULE) -> str:
    """Return the service file text with the guard lines added (pure).

    ``module`` is the name PAM loads (a bare name from the module directory,
    or an absolute path); ``tolerant`` writes the controls that skip it when
    it cannot be loaded.
    """
    if MARK in text:
        raise InstallError("the guard is already installed in this file")
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    auth = [i for i, ln in enumerate(lines) if _AUTH_INCLUDE.match(ln)]
    if not auth:
        raise InstallError("no '@include common-auth' line: the guard needs the stack included inline "
                           "(a failure must end inside it before the success hook)")
    acct = [i for i, ln in enumerate(lines) if _ACCT_INCLUDE.match(ln)]
    if not acct:
        acct = [i for i, ln in enumerate(lines) if _ACCT_LINE.match(ln)]
    pre, acc = control("requisite", tolerant), control("required", tolerant)
    out: list[str] = []
    for i, ln in enumerate(lines):
        if i == auth[0]:
            out += _line("auth", pre, args, "preauth", module)
        if acct and i == acct[0]:
            out += _line("account", acc, args, "account", module)
        out.append(ln)
        if i == auth[0]:
            out += _line("auth", "optional", "authsucc " + args, "authsucc", module)
    if not acct:
        out += _line("account", acc, args, "account", module)
    return "".join(out)


def plan_remove(text: str) -> str:
    """Remove our marked lines (each marker and the line after it)."""
    out, skip = [], False
    for ln in text.splitlines(keepends=True):
        if skip:
            skip = False
            if MODULE in ln:
                continue
        if ln.startswith(MARK):
            skip = True
            continue
        out.append(ln)
    return "".join(out)


def _backup_path(cfg: GuardConfig, path: Path) -> Path:
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    return cfg.state_dir / "pam-backup" / f"{path.name}.{digest}"


def _diff(a: str, b: str, name: str) -> str:
    import difflib

    return "".join(difflib.unified_diff(a.splitlines(True), b.splitlines(True), f"{name} (now)", f"{name} (new)"))


def _write_like(path: Path, data: bytes, like: os.stat_result) -> None:
    """Replace ``path`` atomically with the original owner and mode."""
    tmp = path.with_name(f".{path.name}.slotwarden-tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chown(tmp, like.st_uid, like.st_gid)
    os.chmod(tmp, like.st_mode & 0o7777)
    os.replace(tmp, path)


def _read_service(pam_dir: Path, service: str) -> tuple[Path, bytes, str]:
    if not SERVICE_NAME.match(service):
        raise InstallError(f"invalid PAM service name {service!r}")
    path = pam_dir / service
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InstallError(f"{path} does not exist") from None
    return path, raw, raw.decode("utf-8", "surrogateescape")


def module_dir() -> Path:
    """Where PAM looks for modules on this host."""
    try:
        out = subprocess.run(["pkg-config", "--variable=libdir", "pam"], capture_output=True, text=True,
                             check=True).stdout.strip()
        if out:
            return Path(out) / "security"
    except (OSError, subprocess.CalledProcessError):
        pass
    for cand in ("/usr/lib/x86_64-linux-gnu/security", "/lib/x86_64-linux-gnu/security", "/lib/security",
                 "/usr/lib64/security", "/usr/lib/security"):
        if Path(cand, "pam_unix.so").exists():
            return Path(cand)
    raise InstallError("cannot find the PAM module directory")


def built_module() -> Path:
    """pam_slotwarden.so built from pam_hooks/c (``make pam``), building it if needed."""
    cdir = Path(__file__).resolve().parent / "c"
    so = cdir / MODULE
    src = cdir / "pam_slotwarden.c"
    if not so.exists() or so.stat().st_mtime < src.stat().st_mtime:
        try:
            subprocess.run(["make", "-s", "-C", str(cdir)], check=True, capture_output=True, text=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            msg = getattr(exc, "stderr", "") or str(exc)
            raise InstallError(f"building {MODULE} failed (need gcc and libpam0g-dev): {msg.strip()}") from None
    return so


def install_module(dest_dir: Path | None = None, dry_run: bool = False) -> Path:
    """Copy the built module into the PAM module directory (0644 root)."""
    dest = (dest_dir or module_dir()) / MODULE
    if dry_run:
        return dest
    src = built_module()
    tmp = dest.with_name(f".{MODULE}.tmp")
    shutil.copyfile(src, tmp)
    os.chmod(tmp, 0o644)
    os.replace(tmp, dest)
    return dest


def install(cfg: GuardConfig, service: str, pam_dir: Path = Path("/etc/pam.d"), dry_run: bool = False,
            with_module: bool = True, module_path: Path | None = None) -> InstallResult:
    """Add the guard lines to ``<pam_dir>/<service>`` after backing it up.

    ``module_path`` (absolute) names the module file in the lines instead of
    the module directory's copy; nothing is copied then.
    """
    path, raw, text = _read_service(pam_dir, service)
    common = pam_dir / "common-auth"
    if common.exists() and MODULE in common.read_text(errors="replace"):
        # Twice in one stack would reserve twice per try (and halve pair_deny).
        raise InstallError(f"the guard is already host-wide in {common} (pam-auth-update); nothing to add")
    if module_path is not None:
        if not module_path.is_absolute() or not module_path.is_file():
            raise InstallError(f"--module-path {module_path}: expected an absolute path to a built {MODULE}")
        with_module = False
    module = str(module_path) if module_path is not None else MODULE
    new = plan_install(text, module_args(cfg), tolerates_missing_module(cfg), module)
    backup = _backup_path(cfg, path)
    mod = install_module(dry_run=dry_run) if with_module else module_path
    if module_path is None and not with_module and not (module_dir() / MODULE).exists():
        # A stack naming a module PAM cannot load fails every login: refuse instead.
        raise InstallError(f"{module_dir() / MODULE} is not installed (make pam; or install without --no-module)")
    if not dry_run:
        backup.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        backup.write_bytes(raw)
        os.chmod(backup, 0o600)
        (backup.with_suffix(backup.suffix + ".installed")).write_bytes(new.encode("utf-8", "surrogateescape"))
        _write_like(path, new.encode("utf-8", "surrogateescape"), path.stat())
    return InstallResult(service, str(path), not dry_run, str(backup), _diff(text, new, str(path)),
                         str(mod) if mod else None)


def uninstall(cfg: GuardConfig, service: str, pam_dir: Path = Path("/etc/pam.d"),
              dry_run: bool = False) -> InstallResult:
    """Restore the file byte for byte (or, if edited since, remove only our lines)."""
    path, raw, text = _read_service(pam_dir, service)
    if MARK not in text:
        raise InstallError(f"the guard is not installed in {path}")
    backup = _backup_path(cfg, path)
    written = backup.with_suffix(backup.suffix + ".installed")
    if backup.exists() and written.exists() and written.read_bytes() == raw:
        new_raw = backup.read_bytes()
    else:
        new_raw = plan_remove(text).encode("utf-8", "surrogateescape")
    new = new_raw.decode("utf-8", "surrogateescape")
    if not dry_run:
        _write_like(path, new_raw, path.stat())
        backup.unlink(missing_ok=True)
        written.unlink(missing_ok=True)
    return InstallResult(service, str(path), not dry_run, None, _diff(text, new, str(path)))


# -- Debian's pam-auth-update: the guard host-wide, in common-auth/common-account ------------

PROFILES = ("slotwarden", "slotwarden-authsucc")


def pam_auth_update_profiles(cfg: GuardConfig, enabled_by_default: bool = False) -> dict[str, str]:
    """The two profiles for /usr/share/pam-configs (enable both with pam-auth-update).

    ``enabled_by_default`` writes ``Default: yes`` (the .deb's profiles: its postinst's
    ``pam-auth-update --package`` enables them unless the operator turned them off before).

    ``slotwarden`` puts the preauth line first in common-auth's primary block
    (priority above pam_unix's 256, so pam_unix takes the password it obtained
    with ``try_first_pass``) and the account check into common-account.
    ``slotwarden-authsucc`` is an *Additional* auth module: pam-auth-update puts
    those after ``requisite pam_deny.so``, where only a success arrives.
    """
    args = module_args(cfg)
    tolerant = tolerates_missing_module(cfg)
    pre, acc = control("requisite", tolerant), control("required", tolerant)
    default = "yes" if enabled_by_default else "no"
    return {
        "slotwarden": (
            "Name: slotwarden login guard (record failed logins, refuse locked users and addresses)\n"
            f"Default: {default}\nPriority: 1024\n"
            "Auth-Type: Primary\n"
            f"Auth:\n\t{pre}\t{MODULE} {args}\n"
            f"Auth-Initial:\n\t{pre}\t{MODULE} {args}\n"
            "Account-Type: Additional\n"
            f"Account:\n\t{acc}\t{MODULE} {args}\n"
        ),
        "slotwarden-authsucc": (
            "Name: slotwarden login guard, success hook (enable together with 'slotwarden')\n"
            f"Default: {default}\nPriority: 1024\n"
            "Auth-Type: Additional\n"
            f"Auth:\n\toptional\t{MODULE} authsucc {args}\n"
        ),
    }


def write_pam_auth_update_profiles(cfg: GuardConfig, directory: Path = Path("/usr/share/pam-configs"),
                                   dry_run: bool = False, enabled_by_default: bool = False) -> list[str]:
    """Write both profiles (0644); returns their paths. Enabling them is pam-auth-update's job."""
    paths = []
    for name, text in pam_auth_update_profiles(cfg, enabled_by_default).items():
        path = directory / name
        paths.append(str(path))
        if not dry_run:
            directory.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{name}.tmp")
            tmp.write_text(text)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
    return paths


# -- systemd: the socket before sshd, the service behind it ----------------------------------

UNITS = ("slotwarden-guard.socket", "slotwarden-guard.service")


def systemd_units(cfg: GuardConfig, python: str, workdir: str, config_file: str) -> dict[str, str]:
    """The two unit files of ``pam_hooks/systemd/``, rendered for this host (pure).

    >>> u = systemd_units(GuardConfig(), "/usr/bin/python3", "/opt/sw", "/etc/slotwarden/slotwarden.toml")
    >>> [ln for ln in u["slotwarden-guard.socket"].splitlines() if ln.startswith("ListenStream")]
    ['ListenStream=/run/slotwarden/guard.sock']
    """
    for what, value in (("python", python), ("workdir", workdir), ("config", config_file)):
        if not value.startswith("/") or any(c.isspace() or c in "%$\\\"'" for c in value):
            raise InstallError(f"{what} {value!r}: a unit needs an absolute path without spaces, quotes or %")
    values = {"@SOCKET@": str(cfg.socket), "@PYTHON@": python, "@WORKDIR@": workdir, "@CONFIG@": config_file}
    out = {}
    for name in UNITS:
        text = (Path(__file__).resolve().parent / "systemd" / name).read_text()
        for key, value in values.items():
            text = text.replace(key, value)
        out[name] = text
    return out
