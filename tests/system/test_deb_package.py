"""The .deb, piuparts-style: install, reinstall, upgrade, purge in a throw-away Debian 12.

A minbase bookworm tree from ``mmdebstrap`` with what the package depends on, entered with
``chroot`` in namespaces of its own (mount, PID with its own /proc, network: none).
The package built by ``make deb`` (``build/deb/``; ``make test`` builds it first) is installed
with dpkg, checked (``slotctl --version``, the guard in common-auth/common-account, the units
enabled or not, man pages, completion), installed again over itself, upgraded to a repacked
higher version, then purged; every file of the tree is compared before and after. Nothing
here touches this machine's own packages or PAM stack.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root]
REPO = Path(__file__).resolve().parents[2]
# What the package depends on (debian/control), present before it is installed: the tree has no
# network once built.
DEPENDS = ["python3", "python3-click", "python3-rich", "python3-psutil", "python3-pyroute2",
           "python3-cryptography", "python3-jinja2", "python3-pampy", "python3-pyotp", "python3-qrcode",
           "passwd", "procps", "psmisc", "acl", "libpam-runtime"]
# Changed by dpkg's own bookkeeping or by triggers whatever the package: not ours.
NOISE = ("var/log/", "var/cache/debconf/", "var/lib/dpkg/", "var/cache/ldconfig/", "etc/ld.so.cache", "tmp/",
         "run/", "root/")


def the_package() -> Path:
    """build/deb's package, or the one $SLOTWARDEN_DEB names."""
    if os.environ.get("SLOTWARDEN_DEB"):
        return Path(os.environ["SLOTWARDEN_DEB"])
    debs = sorted((REPO / "build" / "deb").glob("slotwarden_*.deb"))
    if len(debs) != 1:
        pytest.fail(f"expected one package in build/deb (run 'make deb'), found {debs}")
    return debs[0]


@pytest.fixture(scope="module")
def tree() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.fail("the package test needs root (mmdebstrap, chroot)")
    root = Path(tempfile.mkdtemp(prefix="swdeb-", dir="/var/tmp"))
    try:
        subprocess.run(["mmdebstrap", "--quiet", "--variant=minbase", "--include=" + ",".join(DEPENDS),
                        "bookworm", str(root / "os")], check=True, timeout=900, capture_output=True)
        yield root / "os"
    finally:
        shutil.rmtree(root, ignore_errors=True)


def inside(os_dir: Path, *argv: str, check: bool = True, env: dict[str, str] | None = None,
           ) -> subprocess.CompletedProcess[str]:
    """Run ARGV chrooted in the tree, in new mount, PID and network namespaces (its own /proc, no
    network), with a clean environment."""
    base = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["unshare", "--mount", "--pid", "--net", "--fork", f"--mount-proc={os_dir / 'proc'}",
           "chroot", str(os_dir), *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
                          env={**base, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"{argv} exited {proc.returncode}: {proc.stdout}{proc.stderr}")
    return proc


def repack_newer(deb: Path, into: Path) -> Path:
    """The same package with a higher version, to exercise the upgrade path of the scripts."""
    work = Path(tempfile.mkdtemp(prefix="swdeb-repack-", dir="/var/tmp"))
    try:
        subprocess.run(["dpkg-deb", "-R", str(deb), str(work / "pkg")], check=True, capture_output=True)
        control = work / "pkg" / "DEBIAN" / "control"
        lines = control.read_text().splitlines()
        lines = [ln + "+upgrade1" if ln.startswith("Version: ") else ln for ln in lines]
        control.write_text("\n".join(lines) + "\n")
        out = into / deb.name.replace(".deb", "+upgrade1.deb")
        subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(work / "pkg"), str(out)],
                       check=True, capture_output=True)
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def footprint(os_dir: Path) -> dict[str, str]:
    """Every path of the tree (but dpkg's bookkeeping and logs): its type, mode and content hash."""
    out: dict[str, str] = {}
    for dirpath, dirs, files in os.walk(os_dir):
        for name in dirs + files:
            path = Path(dirpath, name)
            rel = str(path.relative_to(os_dir)) + ("/" if name in dirs else "")
            if rel.startswith(NOISE):
                continue
            st = path.lstat()
            if path.is_symlink():
                what = "link " + os.readlink(path)
            elif path.is_file():
                what = "file " + hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                what = "dir"
            out[rel] = f"{what} {st.st_mode:o} {st.st_uid}:{st.st_gid}"
    return out


def test_install_reinstall_purge_leaves_the_tree_as_it_was(tree: Path) -> None:
    deb = the_package()
    shutil.copy(deb, tree / "tmp" / deb.name)
    before = footprint(tree)
    common_auth = (tree / "etc/pam.d/common-auth").read_text()
    assert "pam_slotwarden" not in common_auth

    inside(tree, "dpkg", "-i", f"/tmp/{deb.name}")
    assert inside(tree, "slotctl", "--version").stdout.strip() == "slotctl " + deb.name.split("_")[1]
    # the guard is host-wide: preauth first in common-auth, the success hook after pam_deny, the account check
    auth = (tree / "etc/pam.d/common-auth").read_text().splitlines()
    ours = [ln for ln in auth if "pam_slotwarden.so" in ln]
    # fail_mode = open (the default): requisite, but a module removed by hand is skipped, not fatal
    assert len(ours) == 2 and "module_unknown=ignore default=die]" in ours[0] and "authsucc" in ours[1], auth
    assert auth.index(ours[0]) < next(i for i, ln in enumerate(auth) if "pam_unix.so" in ln)
    assert auth.index(ours[1]) > next(i for i, ln in enumerate(auth) if "pam_deny.so" in ln)
    assert "pam_slotwarden.so" in (tree / "etc/pam.d/common-account").read_text()
    assert (tree / "lib/x86_64-linux-gnu/security/pam_slotwarden.so").is_file()
    # every slot session under the slot's seccomp filter and private /tmp; apps through the wrapper
    for name in ("common-session", "common-session-noninteractive"):
        assert "required\tpam_slotwarden_session.so" in (tree / "etc/pam.d" / name).read_text(), name
    assert (tree / "lib/x86_64-linux-gnu/security/pam_slotwarden_session.so").is_file()
    assert os.access(tree / "usr/libexec/slotwarden/slotwarden-confine", os.X_OK)
    # started at boot: the guard's socket and service, the retention timer, the /tmp remount; the API and
    # metrics on request
    wants = tree / "etc/systemd/system"
    assert (wants / "sockets.target.wants/slotwarden-guard.socket").is_symlink()
    assert (wants / "multi-user.target.wants/slotwarden-guard.service").is_symlink()
    assert (wants / "timers.target.wants/slotwarden-retention.timer").is_symlink()
    # the slots' /tmp tmpfs remounted at boot, before sshd and the app units (enabled, not started)
    assert (wants / "multi-user.target.wants/slotwarden-slot-tmp.service").is_symlink()
    assert not list(wants.glob("*/slotwarden-api.service")) and not list(wants.glob("*/slotwarden-metrics.service"))
    # the conffile is the defaults; tmpfiles, man pages, completion
    assert "/etc/slotwarden/slotwarden.toml" in inside(tree, "dpkg-query", "-W", "-f=${Conffiles}",
                                                       "slotwarden").stdout
    assert "d /run/slotwarden 0755 root root" in (tree / "usr/lib/tmpfiles.d/slotwarden.conf").read_text()
    man = {p.name for p in (tree / "usr/share/man/man8").glob("slotctl*.8.gz")}
    assert {"slotctl.8.gz", "slotctl-slot.8.gz", "slotctl-guard.8.gz", "slotctl-retention.8.gz"} <= man
    words = inside(tree, "slotctl", env={"_SLOTCTL_COMPLETE": "bash_complete", "COMP_WORDS": "slotctl gu",
                                         "COMP_CWORD": "1"}).stdout
    assert "plain,guard" in words.split()
    assert "_slotctl_completion" in (tree / "usr/share/bash-completion/completions/slotctl").read_text()
    assert "#compdef slotctl" in (tree / "usr/share/zsh/vendor-completions/_slotctl").read_text()
    # a PostgreSQL store gets psycopg's C build from the venv (no python3-psycopg in the tree)
    psy = inside(tree, "/usr/lib/slotwarden/venv/bin/python", "-c",
                 "import psycopg; print(psycopg.pq.__impl__, psycopg.__file__)").stdout.split()
    assert psy[0] == "binary" and psy[1].startswith("/usr/lib/slotwarden/venv/"), psy
    # works on its defaults, exit codes kept: bad input is 2 with one JSON error
    bad = inside(tree, "slotctl", "--json", "plan", "show", "nope", check=False)
    assert bad.returncode == 2 and '"ok": false' in bad.stdout
    # a man page renders without a groff warning
    if shutil.which("man", path=str(tree / "usr/bin")):
        assert not inside(tree, "man", "--warnings", "-l", "/usr/share/man/man8/slotctl-guard.8.gz").stderr

    # Over itself: prerm upgrade, postinst configure with the old version; the stack is unchanged.
    stack = (tree / "etc/pam.d/common-auth").read_text()
    inside(tree, "dpkg", "-i", f"/tmp/{deb.name}")
    assert (tree / "etc/pam.d/common-auth").read_text() == stack

    # An upgrade to a newer version (the same files repacked as VERSION+upgrade1): the old prerm
    # and postrm run with "upgrade", the new postinst with the old version; an operator's edit of
    # the conffile survives, the PAM stack is as it was.
    conf = tree / "etc/slotwarden/slotwarden.toml"
    conf.write_text(conf.read_text() + "\n# edited by the operator\n")
    newer = repack_newer(deb, tree / "tmp")
    inside(tree, "dpkg", "--force-confold", "-i", f"/tmp/{newer.name}")
    assert inside(tree, "dpkg-query", "-W", "-f=${Version}", "slotwarden").stdout.endswith("+upgrade1")
    assert conf.read_text().endswith("# edited by the operator\n")
    assert (tree / "etc/pam.d/common-auth").read_text() == stack
    newer.unlink()

    # As if the guard had run: state it made goes with the purge.
    (tree / "var/lib/slotwarden").mkdir(exist_ok=True)
    (tree / "var/lib/slotwarden/guard.db").write_bytes(b"state")
    inside(tree, "dpkg", "--purge", "slotwarden")
    (tree / "tmp" / deb.name).unlink()
    after = footprint(tree)
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    assert (added, removed, changed) == ([], [], []), {"added": added, "removed": removed, "changed": changed}


def test_lintian_clean() -> None:
    """No error or warning; the tags left are explained in debian/slotwarden.lintian-overrides."""
    proc = subprocess.run(["lintian", "--fail-on", "error,warning", "--info", str(the_package())],
                          capture_output=True, text=True, timeout=600)
    tags = [ln for ln in proc.stdout.splitlines() if ln[:2] in ("E:", "W:", "I:")]
    assert proc.returncode == 0 and not tags, proc.stdout + proc.stderr
