"""Shared pieces of the fleet system tests: a lab host directory, its inventory, checks, teardown.

A *lab host* (the Ansible tests') is this machine seen as a fleet host whose every path site.yml touches lives in a
temp dir: the venv (installed from the wheel built from this checkout), the config, the state
dir, the btrfs loopback image and its mount, the sshd drop-in. Nothing under /etc/slotwarden,
/var/lib/slotwarden or /etc/ssh is touched; /etc/fstab is left alone (persist off).

:func:`fleet_api_lab` builds the controller's lab: hosts as network namespaces, each a slot host
of its own serving its provisioning API over TLS, and a controller (``api serve --fleet``) in
another namespace.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyroute2 import netns

from provisioner import accounts
from provisioner.config import load_config
from provisioner.context import Context
from provisioner.executors import SlotChange
from provisioner.executors.ansible import AnsibleExecutor
from provisioner.operations import remove_slot
from tests.system.conftest import SLOTCTL, SlotHost, make_slot_host, teardown_slot_host
from tests.system.lab import LabHost as NetnsHost
from tests.system.lab import LabNet, stop_process, wait_for
from tests.system.lifecycle_env import self_signed_cert

with warnings.catch_warnings():  # verifying a password against its shadow hash; in 3.11's stdlib
    warnings.simplefilter("ignore", DeprecationWarning)
    import crypt
REPO = Path(__file__).resolve().parents[2]


def random_name(prefix: str = "tf") -> str:
    return prefix + secrets.token_hex(3)


@dataclass
class LabHost:
    """One fleet host's paths (all under ROOT) and the slot names a test made on it."""

    root: Path
    wheelhouse: Path
    made: list[str] = field(default_factory=list)

    @property
    def config(self) -> Path:
        return self.root / "etc" / "slotwarden.toml"

    @property
    def slots_root(self) -> Path:
        return self.root / "slots"

    def vars(self) -> dict[str, str]:
        r = self.root
        return {
            "slotwarden_prefix": str(r / "opt"),
            "slotwarden_config": str(self.config),
            "slotwarden_state_dir": str(r / "state"),
            "slotwarden_loopback_image": str(r / "slots.img"),
            "slotwarden_loopback_size": "512M",
            "slotwarden_loopback_root": str(self.slots_root),
            "slotwarden_persist": "false",
            "slotwarden_link_slotctl": "false",
            "slotwarden_sshd_dropin": str(r / "sshd_config.d" / "50-slotwarden.conf"),
            "slotwarden_sshd_reload": "false",
            # A venv in the temp dir: the .deb installs host-wide (make deb-test and the VM lab
            # prove that path).
            "slotwarden_install": "wheelhouse",
            "slotwarden_wheelhouse": str(self.wheelhouse),
            # The guard's profiles go to a temp dir; enabling them (pam-auth-update edits
            # /etc/pam.d/common-*) and starting the service are host-wide: not on a shared machine.
            "slotwarden_guard": "true",
            "slotwarden_pam_configs_dir": str(r / "pam-configs"),
            "slotwarden_guard_enable_pam": "false",
            "slotwarden_guard_supervise": "false",
        }

    def write_inventory(self, host_line: str, extra: dict[str, str] | None = None) -> Path:
        lines = ["[slotwarden]", host_line, "", "[slotwarden:vars]"]
        lines += [f"{k}={v}" for k, v in {**self.vars(), **(extra or {})}.items()]
        path = self.root / "inventory.ini"
        path.write_text("\n".join(lines) + "\n")
        return path

    def context(self) -> Context:
        return Context(load_config(self.config))


def make_lab_host(kind: str, wheelhouse: Path) -> LabHost:
    root = Path(tempfile.mkdtemp(prefix=f"swf-{kind}-", dir="/tmp"))
    os.chmod(root, 0o755)  # tenants must be able to traverse to their homes
    (root / "sshd_config.d").mkdir()
    return LabHost(root, wheelhouse)


def teardown_lab_host(lab: LabHost) -> None:
    """Remove every slot the lab's store knows and every name a test made, unmount, delete."""
    if lab.config.exists():
        try:
            ctx = lab.context()
            for rec in ctx.store.list_slots():
                try:
                    remove_slot(ctx, rec.username)
                except Exception:  # keep cleaning up
                    pass
            ctx.close()
        except Exception:
            pass
    for name in lab.made:
        acct = accounts.lookup_user(name)
        if acct is not None and acct.comment == accounts.SLOT_COMMENT:
            subprocess.run(["userdel", name], check=False, capture_output=True)
        if accounts.group_exists(name):
            subprocess.run(["groupdel", name], check=False, capture_output=True)
    if os.path.ismount(lab.slots_root):
        subprocess.run(["umount", str(lab.slots_root)], check=False, capture_output=True)
    img = lab.root / "slots.img"
    out = subprocess.run(["losetup", "-j", str(img)], capture_output=True, text=True).stdout
    for line in out.splitlines():
        subprocess.run(["losetup", "-d", line.split(":", 1)[0]], check=False, capture_output=True)
    shutil.rmtree(lab.root, ignore_errors=True)


def password_matches(name: str, password: str) -> bool:
    """Whether PASSWORD is NAME's password according to /etc/shadow."""
    for line in Path("/etc/shadow").read_text().splitlines():
        parts = line.split(":")
        if parts[0] == name:
            return crypt.crypt(password, parts[1]) == parts[1]
    return False


def files_containing(needle: str, *roots: Path, max_size: int = 64 << 20) -> list[Path]:
    """Every regular file under ROOTS (not crossing into other mounts, e.g. the slots filesystem)
    whose bytes contain NEEDLE; files over MAX_SIZE (the sparse loopback image) are skipped."""
    raw = needle.encode()
    found = []
    for root in roots:
        if root.is_file():
            candidates = [root]
        else:
            candidates = []
            for d, dirs, files in os.walk(root):
                dirs[:] = [x for x in dirs if not os.path.ismount(os.path.join(d, x))]
                candidates += [Path(d) / f for f in files]
        for path in candidates:
            try:
                if (path.is_file() and not path.is_symlink() and path.stat().st_size <= max_size
                        and raw in path.read_bytes()):
                    found.append(path)
            except OSError:
                continue
    return found


def check_slot_lifecycle(ex: AnsibleExecutor, lab: LabHost, host: str, runner_dirs: list[Path]) -> None:
    """site.yml has run on HOST: create for real, no change on re-run, check mode inert, absent leaves no trace."""
    name = random_name()
    lab.made.append(name)
    want = SlotChange.parse({"username": name, "email": f"{name}@example.com", "country": "DE", "quota": "64M"})

    # Check mode: the outcome says what would happen, and nothing happens.
    [o] = ex.apply([want], check=True)
    assert (o.host, o.username, o.action, o.changed, o.ok) == (host, name, "created", True, True), o
    assert o.password is None
    assert accounts.lookup_user(name) is None
    assert lab.context().store.get_slot(name) is None
    assert not (lab.slots_root / name).exists()

    # Create for real.
    [o] = ex.apply([want])
    assert (o.action, o.changed, o.ok) == ("created", True, True), o
    assert o.password and len(o.password) >= 22
    password = o.password
    acct = accounts.lookup_user(name)
    assert acct is not None and acct.comment == accounts.SLOT_COMMENT
    home = lab.slots_root / name
    st = home.stat()
    assert (st.st_uid, st.st_mode & 0o777) == (acct.uid, 0o700)
    ctx = lab.context()
    rec = ctx.store.get_slot(name)
    assert rec is not None and rec.state == "active" and rec.quota_bytes == 64 << 20
    assert ctx.quota.usage(name, home).limit_bytes == 64 << 20
    assert password_matches(name, password), "the password handed back is not the slot's password"

    # A second run reports no change (the play's stats too).
    [o] = ex.apply([want])
    assert (o.action, o.changed, o.ok) == ("unchanged", False, True), o
    assert o.password is None
    assert ex.last_run is not None and ex.last_run.changed == 0

    # Check mode on absent: the slot stays.
    gone = SlotChange.parse({"username": name, "state": "absent"})
    [o] = ex.apply([gone], check=True)
    assert (o.action, o.changed) == ("removed", True), o
    assert accounts.lookup_user(name) is not None and home.is_dir()

    # Absent removes without trace (the audit rows stay).
    uid = acct.uid
    [o] = ex.apply([gone])
    assert (o.action, o.changed, o.ok) == ("removed", True, True), o
    assert accounts.lookup_user(name) is None
    assert not accounts.group_exists(name)
    assert not home.exists()
    ctx = lab.context()
    assert ctx.store.get_slot(name) is None
    assert not any(line.split(":")[2:3] == [str(uid)] for line in Path("/etc/passwd").read_text().splitlines())
    assert [e["action"] for e in ctx.store.audit_entries(name)][-1] == "slot.remove"
    [o] = ex.apply([gone])
    assert (o.action, o.changed) == ("unchanged", False)

    # The password reached us (above) and nowhere else: not in artifacts, env/, logs, state.
    leaks = files_containing(password, *runner_dirs, lab.root, Path("/var/log"))
    assert not leaks, f"the slot password leaked into {leaks}"


# --- the fleet controller's lab: hosts in network namespaces, each serving its own API ---------


@dataclass
class ApiHost:
    """A lab host in its own netns: a btrfs slot host (own config, store, slots filesystem)
    serving its provisioning API over TLS on its lab address."""

    name: str
    net: NetnsHost
    slot_host: SlotHost
    cert: Path
    key: Path
    token_file: Path
    port: int = 8780
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://{self.net.addr}:{self.port}"

    def start(self) -> None:
        log = open(self.slot_host.base / "api.log", "ab")
        self.proc = self.net.popen([SLOTCTL, "api", "serve", "--listen", f"{self.net.addr}:{self.port}",
                                    "--cert", str(self.cert), "--key", str(self.key)],
                                   env=self.slot_host.env(), stdout=log, stderr=subprocess.STDOUT)
        log.close()
        if not wait_for(lambda: self.proc is None or self.proc.poll() is not None
                        or port_open_in(self.net.netns, self.net.addr, self.port), timeout=60):
            raise RuntimeError(f"{self.name}: API did not start")
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name}: API exited: {(self.slot_host.base / 'api.log').read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop_process(self.proc)
        self.proc = None

    def store_names(self) -> set[str]:
        ctx = self.slot_host.ctx()
        try:
            return {r.username for r in ctx.store.list_slots()}
        finally:
            ctx.close()


_NETNS_SWITCH = threading.Lock()  # pyroute2 keeps one stack of saved namespaces per process


@contextlib.contextmanager
def entered_netns(name: str) -> Iterator[None]:
    """Sockets made inside this block belong to netns NAME (the calling thread's namespace is switched)."""
    with _NETNS_SWITCH:
        netns.pushns(name)
        try:
            yield
        finally:
            netns.popns()


def port_open_in(ns: str, addr: str, port: int) -> bool:
    with entered_netns(ns):
        s = socket.socket()
    try:
        s.settimeout(2)
        return s.connect_ex((addr, port)) == 0
    finally:
        s.close()


@dataclass
class Controller:
    """``slotctl api serve --fleet`` in its own netns, with its own config and store."""

    net: NetnsHost
    base: Path
    cert: Path
    key: Path
    token: str = ""
    port: int = 8781
    proc: subprocess.Popen[bytes] | None = None

    @property
    def config(self) -> Path:
        return self.base / "slotwarden.toml"

    def env(self) -> dict[str, str]:
        return {**os.environ, "SLOTWARDEN_CONFIG": str(self.config), "COLUMNS": "200"}

    def slotctl(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """slotctl on the controller (inside its netns, where the hosts are reachable)."""
        return self.net.run([SLOTCTL, *args], env=self.env(), capture_output=True, text=True, input=input,
                            timeout=300)

    def start(self) -> None:
        log = open(self.base / "api.log", "ab")
        self.proc = self.net.popen([SLOTCTL, "api", "serve", "--fleet", "--listen", f"{self.net.addr}:{self.port}",
                                    "--cert", str(self.cert), "--key", str(self.key)],
                                   env=self.env(), stdout=log, stderr=subprocess.STDOUT)
        log.close()
        if not wait_for(lambda: self.proc is None or self.proc.poll() is not None
                        or port_open_in(self.net.netns, self.net.addr, self.port), timeout=60):
            raise RuntimeError("controller API did not start")

    def connect(self) -> http.client.HTTPSConnection:
        """A connection to the controller's API made inside its netns, TLS checked against its cert."""
        tls = ssl.create_default_context(cafile=str(self.cert))
        with entered_netns(self.net.netns):
            conn = http.client.HTTPSConnection(self.net.addr, self.port, timeout=300, context=tls)
            conn.connect()
        return conn

    def call(self, method: str, path: str, body: dict[str, Any] | None = None, *, key: str | None = None,
             token: str | None = "default", conn: http.client.HTTPSConnection | None = None,
             ) -> tuple[int, dict[str, Any]]:
        """One request to the controller's API (on CONN, kept open, or a connection of its own)."""
        own = conn is None
        conn = conn or self.connect()
        try:
            headers = {"Content-Type": "application/json"}
            tok = self.token if token == "default" else token
            if tok:
                headers["Authorization"] = f"Bearer {tok}"
            if key:
                headers["Idempotency-Key"] = key
            conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read())
        finally:
            if own:
                conn.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop_process(self.proc)


@dataclass
class FleetApiLab:
    hosts: dict[str, ApiHost]
    controller: Controller
    prefix: str

    def slot_name(self) -> str:
        return f"{self.prefix}s{secrets.token_hex(3)}"

    def host_of(self, username: str) -> list[str]:
        """The lab hosts whose own store holds USERNAME."""
        return [n for n, h in self.hosts.items() if username in h.store_names()]


@contextlib.contextmanager
def fleet_api_lab(sizes: dict[str, str], *, register: bool = True) -> Iterator[FleetApiLab]:
    """Hosts NAME -> slots-filesystem SIZE, each in a netns serving its API, and a controller.

    Every host gets a token for the controller (in a 0600 file), a certificate for its lab
    address; with REGISTER the controller knows them all (the first through ``fleet host add``,
    the others through ``fleet host import`` of an Ansible inventory). All torn down at exit.
    """
    prefix = f"tq{secrets.token_hex(2)}"
    base = Path(tempfile.mkdtemp(prefix="swq-", dir="/tmp"))
    os.chmod(base, 0o755)
    hosts: dict[str, ApiHost] = {}
    controller: Controller | None = None
    with LabNet("swq-") as net:
        try:
            for i, (name, size) in enumerate(sizes.items()):
                nh = net.host(name, f"198.51.100.{10 + i}")
                sh = make_slot_host(base / name, f"{prefix}{chr(ord('a') + i)}", size=size)
                cert, key = self_signed_cert(sh.base, nh.addr)
                token = json.loads(sh.slotctl("--json", "api", "token", "create", "controller").stdout)["token"]
                token_file = sh.base / "controller.token"
                fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                os.write(fd, token.encode() + b"\n")
                os.close(fd)
                hosts[name] = ApiHost(name, nh, sh, cert, key, token_file)
                hosts[name].start()
            cbase = base / "controller"
            cbase.mkdir()
            cnet = net.host("ctl", "198.51.100.2")
            ccert, ckey = self_signed_cert(cbase, cnet.addr)
            controller = Controller(cnet, cbase, ccert, ckey)
            # The controller's [slots] and [plans] must be the hosts' (site.yml writes one config).
            controller.config.write_text(f'state_dir = "{cbase / "state"}"\n')
            made = controller.slotctl("--json", "api", "token", "create", "billing")
            controller.token = json.loads(made.stdout)["token"]
            if register:
                first, *rest = hosts.values()
                r = controller.slotctl("fleet", "host", "add", first.name, "--url", first.url, "--ca", str(first.cert),
                                       "--token-file", str(first.token_file))
                assert r.returncode == 0, r.stderr
                inv = cbase / "inventory.ini"
                inv.write_text("[slotwarden]\n" + "".join(
                    f"{h.name} slotwarden_api_url={h.url} slotwarden_api_ca={h.cert} "
                    f"slotwarden_api_token_file={h.token_file}\n" for h in rest))
                r = controller.slotctl("fleet", "host", "import", str(inv))
                assert r.returncode == 0, r.stdout + r.stderr
            controller.start()
            yield FleetApiLab(hosts, controller, prefix)
        finally:
            if controller is not None:
                controller.stop()
            for h in hosts.values():
                h.stop()
            for h in hosts.values():
                with contextlib.suppress(Exception):
                    teardown_slot_host(h.slot_host)
            for line in Path("/etc/passwd").read_text().splitlines():
                name = line.split(":", 1)[0]
                if name.startswith(f"{prefix}s"):
                    subprocess.run(["userdel", "-r", name], check=False, capture_output=True)
            shutil.rmtree(base, ignore_errors=True)
