"""What the lifecycle and API system tests build: a slots host, a lab sshd, su through a pty, an app.

- :func:`slot_host` — a btrfs loop image under a fresh ``/tmp/swl-*`` dir, ``host init`` on it with
  its own config (plans included) and state dir; every slot left in its store is removed at exit.
- :func:`lab_sshd` — a minimal lab: a network namespace ``swl-*`` whose loopback holds a lab address
  (198.51.100.0/24) and Debian's sshd on it with its own config, host key and PAM service (sshd
  takes the service from its program name, so the binary is copied to ``<tmp>/<service>`` and
  ``/etc/pam.d/<service>`` is a copy of the stock ``sshd`` file). The guard branch writes a fuller
  reusable ``tests/system/lab.py``; this one stays minimal until the two are merged.
- :func:`ssh_password` / :func:`ssh_key` / :func:`su_password` / :func:`su_from_root` — one login
  attempt each, returning whether it got a shell. Passwords travel through pipes and a pty, never argv.
- :class:`ProcessApps` — an :class:`~provisioner.extensions.AppControl` whose "app" is a real
  process of the slot user listening on a port (stands in for the apps package).

Name prefixes: users ``tl`` + random, netns ``swl-``, ports 2500-2599.
"""

from __future__ import annotations

import json
import os
import pty
import pwd
import secrets
import select
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from provisioner import accounts
from provisioner.config import Config, load_config
from provisioner.context import Context
from provisioner.extensions import AppControl, Extension, load_extensions
from provisioner.host import host_init, parse_host_request
from provisioner.operations import remove_slot
from tests.system.lab import stop_process

PLANS_TOML = """
[plans.small]
quota = "64M"
description = "test plan"

[plans.medium]
quota = "128M"
apps = ["web"]
max_apps = 1

[plans.large]
quota = "256M"

[apps]
port_min = {port_min}
port_max = {port_max}
"""


def new_name(prefix: str = "tl") -> str:
    """A slot name nobody else uses: PREFIX (``tl``, or a caller's own) + 8 hex digits."""
    return prefix + secrets.token_hex(4)


def wait_for(pred: object, timeout: float = 15.0, step: float = 0.05) -> bool:
    """Poll PRED() until true or TIMEOUT; returns the last result (never asserts a time)."""
    end = time.monotonic() + timeout
    while True:
        ok = bool(pred())  # type: ignore[operator]
        if ok or time.monotonic() > end:
            return ok
        time.sleep(step)


class ControlOnly(Extension):
    """An extension that contributes a test's app control and nothing else."""

    name = "test-apps"

    def __init__(self, control: AppControl) -> None:
        self.control = control

    def app_control(self) -> AppControl:
        return self.control


@dataclass
class SlotHost:
    """A prepared slots host with its own config and state dir."""

    root: Path
    config_path: Path
    config: Config

    def ctx(self, app_control: AppControl | None = None) -> Context:
        """A Context on this host; APP_CONTROL (a fake) replaces the apps extension, passed through it."""
        if app_control is None:
            return Context(self.config)
        others = [e for e in load_extensions() if e.name != "apps"]
        return Context(self.config, extensions=[*others, ControlOnly(app_control)])

    def env(self) -> dict[str, str]:
        return {**os.environ, "SLOTWARDEN_CONFIG": str(self.config_path)}

    def slotctl_path(self) -> Path:
        """The slotctl of the interpreter running the tests (the checkout's venv)."""
        import sys

        exe = Path(sys.executable).parent / "slotctl"
        return exe if exe.exists() else Path(__file__).resolve().parents[2] / ".venv" / "bin" / "slotctl"

    def slotctl(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.slotctl_path()), *args], env=self.env(), capture_output=True, text=True,
                              check=check, timeout=300)


@contextmanager
def slot_host(image_size: str = "1G", extra_toml: str = "", *, name_prefix: str = "tl",
              app_ports: tuple[int, int] = (2580, 2599)) -> Iterator[SlotHost]:
    """Initialise a btrfs slots host in a temp dir; remove every slot and the mount at exit.

    NAME_PREFIX is the caller's slot-name prefix (users a crashed test left are swept by it);
    APP_PORTS the caller's port range for apps.
    """
    root = Path(tempfile.mkdtemp(prefix="swl-", dir="/tmp"))
    os.chmod(root, 0o711)  # slot users must traverse to their homes (sshd reads authorized_keys as them)
    cfg_path = root / "slotwarden.toml"
    plans = PLANS_TOML.format(port_min=app_ports[0], port_max=app_ports[1])
    cfg_path.write_text(f'state_dir = "{root}/state"\n{plans}\n{extra_toml}')
    slots_root = root / "slots"
    config = load_config(cfg_path)
    try:
        ctx = Context(config)
        req = parse_host_request(ctx, str(slots_root), "btrfs", str(root / "slots.img"), image_size, True, False)
        host_init(ctx, req)
        ctx.close()
        yield SlotHost(root, cfg_path, config)
    finally:
        ctx = Context(config)
        with suppress(Exception):
            for rec in ctx.store.list_slots():
                with suppress(Exception):
                    remove_slot(ctx, rec.username)
        ctx.close()
        # Anything a crashed test left: users of ours whose home is under this root.
        for pw in pwd.getpwall():
            if pw.pw_name.startswith(name_prefix) and pw.pw_dir.startswith(str(slots_root) + "/"):
                with suppress(Exception):
                    accounts.stop_processes(pw.pw_uid)
                subprocess.run(["userdel", pw.pw_name], check=False, capture_output=True)
                subprocess.run(["groupdel", pw.pw_name], check=False, capture_output=True)
        with suppress(Exception):  # host init started a supervisord for this state dir
            from provisioner.supervisor import load_supervisor

            load_supervisor("supervisord", config.state_dir).shutdown()
        subprocess.run(["umount", str(slots_root)], check=False, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


# --- a minimal lab sshd -------------------------------------------------------------------------


@dataclass
class LabSshd:
    netns: str
    addr: str
    port: int
    tmp: Path
    log: Path

    def cmd(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv]


_SSH_OPTS = ["-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
             "-o", "ConnectTimeout=15", "-o", "LogLevel=ERROR"]


def _listening(sshd: LabSshd) -> bool:
    probe = ("import socket,sys; s=socket.socket(); s.settimeout(1); "
             f"sys.exit(s.connect_ex(('{sshd.addr}', {sshd.port})))")
    return subprocess.run(sshd.cmd(["/usr/bin/python3", "-c", probe]), capture_output=True).returncode == 0


@dataclass
class LabNetns:
    """A network namespace ``swl-*`` whose loopback also holds a lab address."""

    netns: str
    addr: str

    def cmd(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv]


@contextmanager
def lab_netns() -> Iterator[LabNetns]:
    """A fresh netns with one lab address (198.51.100.0/24) on its loopback; deleted at exit."""
    netns = f"swl-{secrets.token_hex(3)}"
    addr = f"198.51.100.{secrets.randbelow(200) + 20}"
    try:
        subprocess.run(["ip", "netns", "add", netns], check=True)
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "-n", netns, "addr", "add", f"{addr}/32", "dev", "lo"], check=True)
        yield LabNetns(netns, addr)
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False, capture_output=True)


@contextmanager
def lab_sshd(port: int, allow_users: str = "tl*") -> Iterator[LabSshd]:
    """Debian's sshd on a lab address in its own netns, own config, host key and PAM service."""
    with lab_netns() as ns:
        yield from _lab_sshd(ns, port, allow_users)


def _lab_sshd(ns: LabNetns, port: int, allow_users: str) -> Iterator[LabSshd]:
    netns, addr = ns.netns, ns.addr
    service = f"swl-sshd-{netns.removeprefix('swl-')}"
    tmp = Path(tempfile.mkdtemp(prefix="swl-sshd-"))
    pam_file = Path("/etc/pam.d") / service
    proc: subprocess.Popen[bytes] | None = None
    log = tmp / "sshd.log"
    try:
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / "host_key")], check=True)
        binary = tmp / service
        shutil.copy2("/usr/sbin/sshd", binary)
        shutil.copyfile("/etc/pam.d/sshd", pam_file)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
        cfg = tmp / "sshd_config"
        cfg.write_text(
            f"Port {port}\nListenAddress {addr}\nHostKey {tmp / 'host_key'}\nPidFile {tmp / 'sshd.pid'}\n"
            "UsePAM yes\nPasswordAuthentication yes\nKbdInteractiveAuthentication no\n"
            "PubkeyAuthentication yes\nAuthorizedKeysFile .ssh/authorized_keys\nPermitRootLogin no\n"
            f"StrictModes yes\nAllowUsers {allow_users}\nLogLevel VERBOSE\nMaxStartups 50\n"
            "PrintMotd no\nSubsystem sftp internal-sftp\n")
        with open(log, "wb") as logf:
            proc = subprocess.Popen(["ip", "netns", "exec", netns, str(binary), "-D", "-e", "-f", str(cfg)],
                                    stdout=logf, stderr=subprocess.STDOUT)
        sshd = LabSshd(netns, addr, port, tmp, log)
        if not wait_for(lambda: _listening(sshd) or proc.poll() is not None) or proc.poll() is not None:
            raise RuntimeError(f"lab sshd did not start: {log.read_text()[-2000:]}")
        yield sshd
    finally:
        if proc is not None:
            stop_process(proc, 10)
        pam_file.unlink(missing_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)


def ssh_password(sshd: LabSshd, user: str, password: str) -> bool:
    """One password login; True when the remote command ran."""
    r, w = os.pipe()
    try:
        os.write(w, password.encode() + b"\n")
        os.close(w)
        w = -1
        argv = ["sshpass", "-d", str(r), "ssh", *_SSH_OPTS, "-o", "PreferredAuthentications=password",
                "-o", "PubkeyAuthentication=no", "-o", "NumberOfPasswordPrompts=1",
                "-p", str(sshd.port), f"{user}@{sshd.addr}", "echo", "LOGIN-OK"]
        out = subprocess.run(sshd.cmd(argv), pass_fds=(r,), capture_output=True, text=True, timeout=60)
    finally:
        os.close(r)
        if w != -1:
            os.close(w)
    return out.returncode == 0 and "LOGIN-OK" in out.stdout


def ssh_key(sshd: LabSshd, user: str, key: Path) -> bool:
    """One public-key login; True when the remote command ran."""
    argv = ["ssh", *_SSH_OPTS, "-o", "BatchMode=yes", "-o", "PreferredAuthentications=publickey",
            "-o", "IdentitiesOnly=yes", "-i", str(key), "-p", str(sshd.port), f"{user}@{sshd.addr}",
            "echo", "LOGIN-OK"]
    out = subprocess.run(sshd.cmd(argv), capture_output=True, text=True, timeout=60)
    return out.returncode == 0 and "LOGIN-OK" in out.stdout


def add_key(user: str, keydir: Path) -> Path:
    """Generate an ed25519 key in KEYDIR and authorize it for USER; returns the private key path."""
    key = keydir / f"id_{user}"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    pw = pwd.getpwnam(user)
    ssh_dir = Path(pw.pw_dir) / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    auth = ssh_dir / "authorized_keys"
    shutil.copyfile(f"{key}.pub", auth)
    os.chmod(auth, 0o600)
    for p in (ssh_dir, auth):
        os.chown(p, pw.pw_uid, pw.pw_gid)
    return key


# --- su ------------------------------------------------------------------------------------------


def su_password(user: str, password: str, as_uid: int = 65534) -> bool:
    """``su USER`` run by an unprivileged user (nobody), password typed on a pty; True on a shell."""
    master, slave = pty.openpty()
    argv = ["setpriv", f"--reuid={as_uid}", f"--regid={as_uid}", "--clear-groups", "--",
            "su", user, "-c", "echo SU-OK"]
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, start_new_session=True, close_fds=True)
    os.close(slave)
    out = b""
    sent = False
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: the other side closed
                    break
                if not chunk:
                    break
                out += chunk
                if not sent and b"assword" in out:
                    os.write(master, password.encode() + b"\n")
                    sent = True
            elif proc.poll() is not None:
                break
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return proc.returncode == 0 and b"SU-OK" in out


def su_from_root(user: str) -> bool:
    """``su USER`` run by root (no password asked: only the account phase can refuse)."""
    out = subprocess.run(["su", user, "-c", "echo SU-OK"], stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, timeout=60)
    return out.returncode == 0 and "SU-OK" in out.stdout


# --- an app that is a real process of the slot --------------------------------------------------


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) == 0


@dataclass
class ProcessApps:
    """AppControl stand-in: app ``web`` is ``python3 -m http.server PORT`` run as the slot user."""

    ports: dict[str, int]
    name: str = "test-apps"
    procs: dict[tuple[str, str], tuple[subprocess.Popen[bytes], threading.Event]] = field(default_factory=dict)

    def installed(self, ctx: Context, username: str) -> list[str]:
        return ["web"] if username in self.ports else []

    def running(self, ctx: Context, username: str) -> list[str]:
        entry = self.procs.get((username, "web"))
        return ["web"] if entry is not None and not entry[1].is_set() else []

    def stop(self, ctx: Context, username: str, app: str) -> None:
        entry = self.procs.pop((username, app), None)
        if entry is not None and not entry[1].is_set():
            entry[0].terminate()
            if not entry[1].wait(timeout=10):
                entry[0].kill()
                entry[1].wait(timeout=10)

    def start(self, ctx: Context, username: str, app: str) -> None:
        if self.running(ctx, username):
            return
        pw = pwd.getpwnam(username)
        port = self.ports[username]
        p = subprocess.Popen(
            ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--",
             "/usr/bin/python3", "-m", "http.server", str(port), "--bind", "127.0.0.1"],
            cwd=pw.pw_dir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        # Reap it whoever kills it (suspend SIGKILLs the whole UID): a zombie still counts as a
        # process of the UID and would make stop_processes wait in vain. The event says it exited
        # (Popen.poll answers None while another thread waits).
        exited = threading.Event()

        def reap() -> None:
            p.wait()
            exited.set()

        threading.Thread(target=reap, daemon=True).start()
        self.procs[(username, app)] = (p, exited)
        if not wait_for(lambda: port_open(port)):
            raise RuntimeError(f"app web of {username} did not listen on {port}")


# --- the API server ------------------------------------------------------------------------------


@dataclass
class ApiServer:
    """``slotctl api serve`` running on loopback for HOST, with a token."""

    host: SlotHost
    url: str
    token: str
    log: Path

    def client(self, token: str | None = "default", **kw: object) -> httpx.Client:
        tok = self.token if token == "default" else token
        headers = {"Authorization": f"Bearer {tok}"} if tok else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=300, **kw)  # type: ignore[arg-type]


def make_token(host: SlotHost, name: str) -> str:
    out = host.slotctl("--json", "api", "token", "create", name, check=True)
    return str(json.loads(out.stdout)["token"])


@contextmanager
def api_server(host: SlotHost, ports: range = range(2500, 2550)) -> Iterator[ApiServer]:
    """Start the API on 127.0.0.1 (a free port of PORTS) as a subprocess; stop it at exit."""
    token = make_token(host, f"tests-{secrets.token_hex(3)}")
    log = host.root / f"api-{secrets.token_hex(3)}.log"
    proc: subprocess.Popen[bytes] | None = None
    try:
        for _attempt in range(8):
            port = ports[secrets.randbelow(len(ports))]
            with open(log, "ab") as logf:
                proc = subprocess.Popen([str(host.slotctl_path()), "api", "serve", "--listen", f"127.0.0.1:{port}"],
                                        env=host.env(), stdout=logf, stderr=subprocess.STDOUT)
            url = f"http://127.0.0.1:{port}"

            def up(url: str = url) -> bool:
                try:
                    return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_for(lambda: proc.poll() is not None or up(), timeout=30)  # noqa: B023
            if proc.poll() is None and up():
                yield ApiServer(host, url, token, log)
                return
            proc.wait()  # port taken by someone else: try another
        raise RuntimeError(f"the API server did not start: {log.read_text()[-2000:]}")
    finally:
        if proc is not None and proc.poll() is None:
            stop_process(proc, 15)


def self_signed_cert(directory: Path, ip: str) -> tuple[Path, Path]:
    """A throwaway self-signed certificate for IP (and its key), for the TLS test."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ip)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "api-cert.pem", directory / "api-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    os.chmod(key_path, 0o600)
    return cert_path, key_path
