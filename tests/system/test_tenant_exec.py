"""No tenant code in root's context: attacks that need root to set the scene.

The operator is played for real: ``slotctl`` (or the provisioner) runs in a terminal of its
own (a pty that is its controlling terminal, as an operator's ssh session is), with a
root-only file open on an inheritable descriptor (what a careless wrapper script leaks), and
with its working directory in a place a tenant can write. The tenant plants code where the
operation might pick it up; the planted code writes a marker saying who ran it and whether it
had a terminal. After the operation: no marker (the code never ran in the operator's
command), or — for code that legitimately runs as the tenant — no terminal, no leaked
descriptor, the tenant's own uid, a clean environment.
"""

from __future__ import annotations

import json
import os
import pty
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.as_tenant import TenantAccount, run_as_tenant
from provisioner.operations import install_app, uninstall_app
from tests.system.fixtures.apps import AppLab, make_lab
from tests.system.fixtures.hosts import SLOTCTL
from tests.system.fixtures.processes import run_as

pytestmark = pytest.mark.root

# Makes the pty on stdin the controlling terminal, opens ROOT-FILE on an inheritable
# descriptor, and execs the rest of argv: an operator's root shell with a leaky wrapper.
OPERATOR_TERMINAL = r"""
import fcntl, os, sys, termios
fcntl.ioctl(0, termios.TIOCSCTTY, 0)
fd = os.open(sys.argv[1], os.O_RDONLY)
os.set_inheritable(fd, True)
os.execvpe(sys.argv[2], sys.argv[2:], os.environ)
"""

# What tenant code learns about its surroundings (printed as JSON).
PROBE = r"""
import errno, fcntl, json, os, termios
out = {"uid": os.getuid(), "gid": os.getgid(), "groups": sorted(os.getgroups()), "cwd": os.getcwd(),
       "env": sorted(os.environ), "session_leader": os.getsid(0) == os.getpid(), "fds": {}}
try:
    os.close(os.open("/dev/tty", os.O_RDWR)); out["dev_tty"] = "opened"
except OSError as exc:
    out["dev_tty"] = errno.errorcode[exc.errno]
out["tiocsti"] = []
for fd in (0, 1, 2):
    try:
        fcntl.ioctl(fd, termios.TIOCSTI, b"#"); out["tiocsti"].append(fd)
    except OSError:
        pass
for name in os.listdir("/proc/self/fd"):
    try:
        out["fds"][name] = os.readlink(f"/proc/self/fd/{name}")
    except OSError:
        pass
print(json.dumps(out))
"""


def in_operator_terminal(argv: list[str], root_file: Path, cwd: Path, env: dict[str, str]) -> tuple[int, str]:
    """Run ARGV as root with a pty as its controlling terminal and ROOT_FILE leaked on a descriptor."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-I", "-c", OPERATOR_TERMINAL, str(root_file), *argv],
                                stdin=slave, stdout=slave, stderr=slave, start_new_session=True, cwd=cwd, env=env)
    finally:
        os.close(slave)
    chunks = []
    try:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every holder of the pty's other end is gone
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    return proc.wait(timeout=600), b"".join(chunks).decode("utf-8", "replace")


@pytest.fixture(scope="module")
def lab() -> Iterator[AppLab]:
    base = random.randrange(30000, 39000, 100)  # parallel runs get different port windows
    yield from make_lab(base, base + 99, mariadb=True)


@pytest.fixture
def root_file(lab: AppLab) -> Path:
    """A root-only file (0600): leaked to tenant code it must not be, written through never."""
    path = lab.root / f"root-only-{os.urandom(3).hex()}"
    path.write_text("root's secret\n")
    path.chmod(0o600)
    return path


def _plant_dir(lab: AppLab, owner: str) -> Path:
    """A directory the tenant owns and writes (the operator will `cd` into it)."""
    d = lab.root / f"plant-{owner}"
    d.mkdir(mode=0o755)
    os.chown(d, *_ids(lab, owner))
    return d


def _ids(lab: AppLab, name: str) -> tuple[int, int]:
    st = (lab.host.slots_root / name).stat()
    return st.st_uid, st.st_gid


def _write_as(owner: str, path: Path, text: str) -> None:
    """Write TEXT to PATH as the tenant (parents made as the tenant too)."""
    r = run_as(owner, "/bin/sh", "-c", 'mkdir -p "$(dirname "$1")" && printf %s "$2" > "$1"', "sh", str(path), text)
    assert r.returncode == 0, r.stderr


def _env(lab: AppLab) -> dict[str, str]:
    return {**os.environ, "SLOTWARDEN_CONFIG": str(lab.config_path), "TERM": "xterm"}


def test_run_as_tenant_gives_no_terminal_no_descriptor_no_environment(lab: AppLab, root_file: Path) -> None:
    owner = lab.new_slot()
    out = lab.root / f"probe-{owner}.json"
    # The operator's process (in a terminal, leaking a descriptor) runs the probe as the tenant.
    child = ("import sys; from pathlib import Path; from provisioner.as_tenant import TenantAccount, run_as_tenant; "
             f"r = run_as_tenant(TenantAccount.of({owner!r}), ['python3', '-I', '-c', {PROBE!r}]); "
             f"Path({str(out)!r}).write_text(r.stdout)")
    env = {**_env(lab), "SLOTWARDEN_ROOT_ONLY": "x", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    rc, text = in_operator_terminal([sys.executable, "-c", child], root_file, Path("/"), env)
    assert rc == 0, text
    seen = json.loads(out.read_text())
    uid, gid = _ids(lab, owner)
    assert (seen["uid"], seen["gid"], seen["groups"]) == (uid, gid, [gid])
    assert seen["dev_tty"] == "ENXIO", "no controlling terminal"
    assert seen["tiocsti"] == [], "no descriptor is a terminal"
    assert seen["session_leader"]
    assert str(root_file) not in seen["fds"].values(), "the leaked root descriptor did not follow"
    assert sorted(seen["fds"]) == ["0", "1", "2"], seen["fds"]  # stdio only
    assert seen["fds"]["0"] == "/dev/null"
    assert seen["cwd"] == str(lab.host.slots_root / owner)
    assert seen["env"] == ["HOME", "LANG", "LOGNAME", "PATH", "SHELL", "USER"]


def test_run_as_tenant_kills_the_whole_session_on_timeout(lab: AppLab) -> None:
    owner = lab.new_slot()
    with pytest.raises(Exception, match="timed out"):
        run_as_tenant(TenantAccount.of(owner), ["/bin/sh", "-c", "sleep 300 & sleep 300"], timeout=1)
    from provisioner.accounts import pids_of
    from tests.system.fixtures.processes import wait_for

    # Killed at once; the orphaned one is reaped by init a moment later.
    wait_for(lambda: pids_of(_ids(lab, owner)[0]) == [], timeout=10, what="no process of the command left")


JUPYTER_PLANTS = {
    "jupyter_server/__init__.py": "jupyter_server",
    "argon2/__init__.py": "argon2",
    "sitecustomize.py": "sitecustomize",
    "usercustomize.py": "usercustomize",
}


def _plant_python(owner: str, where: Path, marker_dir: Path) -> None:
    for rel, tag in JUPYTER_PLANTS.items():
        code = (f"import os; open({str(marker_dir)!r} + '/ran-{tag}-uid%d' % os.getuid(), 'w').close()\n")
        _write_as(owner, where / rel, code)


@pytest.mark.parametrize("cwd", ["plant-dir", "home"])
def test_jupyterlab_install_never_imports_planted_modules(lab: AppLab, root_file: Path, cwd: str) -> None:
    owner = lab.new_slot()
    markers = _plant_dir(lab, owner)
    where = markers if cwd == "plant-dir" else lab.host.slots_root / owner
    _plant_python(owner, where, markers)
    rc, text = in_operator_terminal([str(SLOTCTL), "app", "install", owner, "jupyterlab", "--json"], root_file,
                                    where, _env(lab))
    try:
        assert rc == 0, text
        assert sorted(p.name for p in markers.iterdir() if p.name.startswith("ran-")) == []
    finally:
        uninstall_app(lab.context(), owner, "jupyterlab")


WP_PLANTS = ("wp-content/db.php", "wp-content/object-cache.php", "wp-content/advanced-cache.php",
             "wp-content/fatal-error-handler.php", "wp-content/mu-plugins/evil.php")


def _php_marker(marker: Path) -> str:
    # Only the php CLI (what the operator's command runs) writes the marker; the slot's own
    # PHP-FPM serving its site loads drop-ins legitimately, as the tenant, outside any terminal.
    return ("<?php if (PHP_SAPI === 'cli') { $fds = []; foreach (scandir('/proc/self/fd') as $f) "
            "{ $fds[$f] = @readlink('/proc/self/fd/' . $f); } "
            f"file_put_contents('{marker}', json_encode(['uid' => posix_getuid(), "
            "'tty' => @fopen('/dev/tty', 'r') !== false, 'fds' => $fds]) . \"\\n\", FILE_APPEND); }\n")


def test_wordpress_install_and_rotate_never_load_the_tenants_code(lab: AppLab, root_file: Path) -> None:
    owner = lab.new_slot()
    home = lab.host.slots_root / owner
    marker = home / "wp-marker.json"
    app_dir = home / "apps" / "wordpress"
    # Planted before the install: the install keeps the tenant's directories and files.
    for rel in WP_PLANTS:
        _write_as(owner, app_dir / rel, _php_marker(marker))
    rc, text = in_operator_terminal([str(SLOTCTL), "app", "install", owner, "wordpress", "--json"], root_file,
                                    home, _env(lab))
    try:
        assert rc == 0, text
        assert not marker.exists(), marker.read_text()
        rc, text = in_operator_terminal([str(SLOTCTL), "app", "rotate", owner, "wordpress", "--json"], root_file,
                                        home, _env(lab))
        assert rc == 0, text
        assert not marker.exists(), marker.read_text()
        # The drop-ins are really there for the site itself: it is the operator's command
        # that never ran them.
        assert all((app_dir / rel).is_file() for rel in WP_PLANTS)
    finally:
        uninstall_app(lab.context(), owner, "wordpress")


# --- symlinks and hardlinks in the home during root's app operations -------------------------


def test_app_files_never_written_through_a_planted_symlink(lab: AppLab, root_file: Path) -> None:
    canary = root_file  # standing in for /etc/shadow: nothing may ever write through to it
    owner, other = lab.new_slot(), lab.new_slot()
    home, other_home = lab.host.slots_root / owner, lab.host.slots_root / other
    before = canary.read_bytes()
    # ~/apps itself a link to another tenant's home: the install refuses and writes nothing there.
    assert run_as(owner, "ln", "-s", str(other_home), str(home / "apps")).returncode == 0
    r = lab.slotctl("app", "install", owner, "transmission")
    assert r.returncode == 1 and "symlink" in r.stderr, r.stderr
    assert sorted(p.name for p in other_home.iterdir()) == sorted(p.name for p in Path("/etc/skel").iterdir())
    assert run_as(owner, "rm", str(home / "apps")).returncode == 0
    install_app(lab.context(), owner, "transmission")
    app_dir = home / "apps" / "transmission"
    try:
        # The owner's copy and the config replaced by links to the canary; a hardlink to a file
        # of the tenant's own stands in for the other file: rotate replaces names, never writes
        # into what they point at.
        script = (f"ln -sf {canary} {app_dir}/credentials.json && echo keep > {home}/keep && "
                  f"rm -f {app_dir}/config/settings.json && ln {home}/keep {app_dir}/config/settings.json")
        assert run_as(owner, "/bin/sh", "-c", script).returncode == 0
        r = lab.slotctl("app", "rotate", owner, "transmission", "--json")
        assert r.returncode == 0, r.stderr
        assert canary.read_bytes() == before
        assert (home / "keep").read_text() == "keep\n"
        assert not (app_dir / "credentials.json").is_symlink()
        assert json.loads((app_dir / "credentials.json").read_text())["password"] == json.loads(r.stdout)["password"]
        # The config directory itself a link into the other home: rotate refuses, nothing lands there.
        script = f"mv {app_dir}/config {app_dir}/config.old && ln -s {other_home} {app_dir}/config"
        assert run_as(owner, "/bin/sh", "-c", script).returncode == 0
        r = lab.slotctl("app", "rotate", owner, "transmission")
        assert r.returncode == 1 and "symlink" in r.stderr, r.stderr
        assert not (other_home / "settings.json").exists()
        # Uninstall with links to the canary and the other home inside the app dir: only the
        # links go.
        assert run_as(owner, "ln", "-s", str(canary), str(app_dir / "downloads" / "shadow")).returncode == 0
    finally:
        uninstall_app(lab.context(), owner, "transmission")
    assert canary.read_bytes() == before
    assert other_home.is_dir() and (other_home / ".bashrc").exists()
    assert not (home / "apps").exists()
