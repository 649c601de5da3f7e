"""Lab fixtures: hosts in network namespaces (pyroute2) and an sshd on a lab address.

Reusable by every system test that needs a network or a real sshd. Nothing here
touches the host's own network namespace, /etc/ssh or the machine's sshd; all
that is made is torn down by the context managers, also on failure.

- :class:`LabNet` - a private switch (a bridge in its own netns) and hosts
  plugged into it, each a netns with one ``eth0`` and one lab address
  (only 198.51.100.0/24: 203.0.113.0/24 holds this machine's package mirrors).
- :class:`LabHost` - run commands inside a host (``ip netns exec``).
- :class:`LabSshd` - Debian's sshd started in a host with its own config, host
  key, port and **its own PAM service name**: sshd takes the PAM service from
  its program name (``SSHD_PAM_SERVICE`` is ``__progname``), so the binary is
  copied to ``<tmp>/<pam_service>`` and ``/etc/pam.d/<pam_service>`` is a copy
  of Debian's stock ``/etc/pam.d/sshd`` (removed again on exit).
- :func:`lab_user` - a real local user with a password (on stdin) and a key.
- :func:`ssh_password` / :func:`ssh_key` - client attempts from a host;
  passwords reach sshpass through a pipe (``-d FD``), never argv.

>>> with LabNet("swg-") as net:                                   # doctest: +SKIP
...     srv = net.host("srv", "198.51.100.1")
...     atk = net.host("a", "198.51.100.10")
...     with LabSshd(srv, port=2201, pam_service="slotwarden-test-sshd-1a2b") as sshd, \\
...          lab_user("tg1a2b", "s3cret-Pw") as u:
...         assert ssh_password(atk, sshd, u.name, "s3cret-Pw") == 0
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from pyroute2 import IPRoute, NetNS, netns

LAB_NETS = (ipaddress.ip_network("198.51.100.0/24"),)


def _check_lab_addr(addr: str) -> None:
    ip = ipaddress.ip_address(addr)
    if not any(ip in n for n in LAB_NETS):
        raise ValueError(f"{addr} is not a lab address (198.51.100.0/24)")


@dataclass
class LabHost:
    """One network namespace with ``eth0`` holding ``addr``/``prefix``."""

    netns: str
    addr: str

    def cmd(self, argv: list[str]) -> list[str]:
        """``argv`` wrapped to run inside this host."""
        return ["ip", "netns", "exec", self.netns, *argv]

    def run(self, argv: list[str], **kw: Any) -> subprocess.CompletedProcess[Any]:
        """Run a command in this host (subprocess.run keywords pass through)."""
        kw.setdefault("check", False)
        return subprocess.run(self.cmd(argv), **kw)

    def popen(self, argv: list[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start a command in this host."""
        return subprocess.Popen(self.cmd(argv), **kw)


class LabNet:
    """A switch and hosts in network namespaces named ``<prefix><id>-<name>``.

    Use as a context manager; every namespace (and with it every veth) is
    deleted on exit.
    """

    def __init__(self, prefix: str = "swg-", prefixlen: int = 24) -> None:
        self.id = secrets.token_hex(3)
        self.prefix = prefix
        self.prefixlen = prefixlen
        self.switch = f"{prefix}{self.id}-sw"
        self.hosts: dict[str, LabHost] = {}
        self._namespaces: list[str] = []

    def __enter__(self) -> Self:
        netns.create(self.switch)
        self._namespaces.append(self.switch)
        with NetNS(self.switch) as ns:
            ns.link("add", ifname="br0", kind="bridge")
            ns.link("set", index=ns.link_lookup(ifname="br0")[0], state="up")
            ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
        return self

    def host(self, name: str, addr: str) -> LabHost:
        """Create a host plugged into the switch, with ``addr`` on its ``eth0``."""
        _check_lab_addr(addr)
        ns_name = f"{self.prefix}{self.id}-{name}"
        netns.create(ns_name)
        self._namespaces.append(ns_name)
        n = len(self.hosts)
        # Temporary names in the root netns are unique per lab and short (IFNAMSIZ 16).
        a, b = f"sw{self.id}h{n}", f"sw{self.id}p{n}"
        with IPRoute() as ipr:
            ipr.link("add", ifname=a, kind="veth", peer=b)
            ipr.link("set", index=ipr.link_lookup(ifname=a)[0], net_ns_fd=ns_name)
            ipr.link("set", index=ipr.link_lookup(ifname=b)[0], net_ns_fd=self.switch)
        with NetNS(ns_name) as ns:
            idx = ns.link_lookup(ifname=a)[0]
            ns.link("set", index=idx, ifname="eth0")
            ns.addr("add", index=idx, address=addr, prefixlen=self.prefixlen)
            ns.link("set", index=idx, state="up")
            ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
        with NetNS(self.switch) as ns:
            port = ns.link_lookup(ifname=b)[0]
            ns.link("set", index=port, master=ns.link_lookup(ifname="br0")[0])
            ns.link("set", index=port, state="up")
        h = LabHost(ns_name, addr)
        self.hosts[name] = h
        return h

    def __exit__(self, *exc: object) -> None:
        for ns_name in reversed(self._namespaces):
            with contextlib.suppress(Exception):
                netns.remove(ns_name)


@dataclass
class LabSshd:
    """Debian's sshd in ``host`` on ``port`` (2200-2299 for the guard), own PAM service."""

    host: LabHost
    port: int
    pam_service: str
    extra_config: str = ""
    tmp: Path = field(init=False)
    proc: subprocess.Popen[bytes] | None = field(init=False, default=None)
    log: list[str] = field(init=False, default_factory=list)

    @property
    def pam_file(self) -> Path:
        """The service's PAM file (a copy of Debian's /etc/pam.d/sshd)."""
        return Path("/etc/pam.d") / self.pam_service

    @property
    def addr(self) -> str:
        """The address sshd listens on."""
        return self.host.addr

    def __enter__(self) -> Self:
        if not self.pam_service.startswith("slotwarden-test-"):
            raise ValueError("lab PAM service names start with slotwarden-test-")
        self.tmp = Path(tempfile.mkdtemp(prefix="swg-sshd-"))
        os.chmod(self.tmp, 0o755)
        binary = self.tmp / self.pam_service
        shutil.copy2("/usr/sbin/sshd", binary)
        shutil.copyfile("/etc/pam.d/sshd", self.pam_file)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.tmp / "host_ed25519")],
                       check=True)
        # The privilege-separation directory sshd insists on; harmless if it exists.
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        cfg = self.tmp / "sshd_config"
        # sshd takes the first value of a keyword: the caller's extra lines come first.
        cfg.write_text(
            self.extra_config
            + f"Port {self.port}\nListenAddress {self.addr}\nHostKey {self.tmp}/host_ed25519\n"
            f"PidFile {self.tmp}/sshd.pid\nUsePAM yes\nPasswordAuthentication yes\n"
            "KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin no\n"
            "AuthorizedKeysFile .ssh/authorized_keys\nMaxStartups 200\nMaxSessions 50\nMaxAuthTries 20\n"
            "LoginGraceTime 60\nUseDNS no\nPrintMotd no\nLogLevel VERBOSE\n"
        )
        self.proc = self.host.popen([str(binary), "-D", "-e", "-f", str(cfg)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        ready = threading.Event()

        def pump() -> None:
            assert self.proc is not None and self.proc.stderr is not None
            for raw in self.proc.stderr:
                line = raw.decode("utf-8", "replace").rstrip()
                self.log.append(line)
                if "Server listening on" in line:
                    ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(15):
            self.__exit__(None, None, None)
            raise RuntimeError("lab sshd did not start:\n" + "\n".join(self.log))
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            stop_process(self.proc, 10)
        self.pam_file.unlink(missing_ok=True)
        shutil.rmtree(self.tmp, ignore_errors=True)


@dataclass
class LabUser:
    """A real local user made for a test."""

    name: str
    password: str
    home: Path
    key: Path  # private key file (public key is in authorized_keys)


@contextlib.contextmanager
def lab_user(name: str, password: str, keydir: Path | None = None) -> Iterator[LabUser]:
    """Create ``name`` with ``password`` (via chpasswd stdin) and an ed25519 key; remove both after."""
    subprocess.run(["useradd", "-m", "-s", "/bin/sh", name], check=True)
    kd = keydir or Path(tempfile.mkdtemp(prefix="swg-key-"))
    try:
        subprocess.run(["chpasswd"], input=f"{name}:{password}\n", text=True, check=True)
        home = Path(pwd.getpwnam(name).pw_dir)
        key = kd / f"id_{name}"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        ssh_dir = home / ".ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        shutil.copyfile(f"{key}.pub", ssh_dir / "authorized_keys")
        pw = pwd.getpwnam(name)
        for p in (ssh_dir, ssh_dir / "authorized_keys"):
            os.chown(p, pw.pw_uid, pw.pw_gid)
        yield LabUser(name, password, home, key)
    finally:
        remove_user(name)
        if keydir is None:
            shutil.rmtree(kd, ignore_errors=True)


def remove_user(name: str, attempts: int = 50) -> None:
    """Kill the user's processes and ``userdel -r`` it, retrying while another job holds the
    passwd lock or a killed process has not died yet (other helpers create users concurrently)."""
    for _ in range(attempts):
        subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True, check=False)
        subprocess.run(["userdel", "-r", name], capture_output=True, check=False)
        try:
            pwd.getpwnam(name)
        except KeyError:
            return
        time.sleep(0.2)
    raise RuntimeError(f"lab user {name} could not be removed")


_SSH_OPTS = ["-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
             "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR"]
# One password try per connection, never a key: a tenant's own SSH login in the lab tests.
PASSWORD_LOGIN_OPTS = [*_SSH_OPTS, "-o", "PreferredAuthentications=password", "-o", "PubkeyAuthentication=no",
                       "-o", "NumberOfPasswordPrompts=1"]


def ssh_password(client: LabHost, sshd: LabSshd, user: str, password: str, timeout: float = 60,
                 extra: list[str] | None = None) -> int:
    """One password try from ``client``; sshpass exit code (0 ok, 5 refused, 255 ssh error).

    ``extra`` ssh options win over the defaults, e.g. ``-o PreferredAuthentications=keyboard-interactive``.
    """
    r, w = os.pipe()
    try:
        os.write(w, password.encode() + b"\n")
        os.close(w)
        w = -1
        # ssh takes the first value of an option: the caller's come first.
        argv = ["sshpass", "-d", str(r), "ssh", *_SSH_OPTS, *(extra or []), "-o", "PreferredAuthentications=password",
                "-o", "PubkeyAuthentication=no", "-o", "NumberOfPasswordPrompts=1",
                "-p", str(sshd.port), f"{user}@{sshd.addr}", "true"]
        try:
            return client.run(argv, pass_fds=(r,), capture_output=True, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            return -1
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def ssh_key(client: LabHost, sshd: LabSshd, user: str, key: Path, timeout: float = 60) -> int:
    """One public-key login from ``client``; ssh's exit code (0 ok, 255 refused)."""
    argv = ["ssh", *_SSH_OPTS, "-o", "BatchMode=yes", "-o", "PreferredAuthentications=publickey",
            "-o", "IdentitiesOnly=yes", "-i", str(key), "-p", str(sshd.port), f"{user}@{sshd.addr}", "true"]
    try:
        return client.run(argv, capture_output=True, timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        return -1


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM, wait up to TIMEOUT seconds, then SIGKILL and reap: no daemon outlives its test."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_for(pred: Any, timeout: float = 10.0, step: float = 0.05) -> bool:
    """Poll ``pred()`` until true or ``timeout``; returns the last result (never asserts time)."""
    end = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() > end:
            return bool(pred())
        time.sleep(step)


class NetOnlyHost(LabHost):
    """A lab host entered with ``nsenter --net`` only. ``ip netns exec`` also remounts /sys, which
    hides /sys/fs/cgroup: an sshd whose PAM session places logins in cgroups (as a production
    sshd in the host's mount namespace does) must run this way."""

    def cmd(self, argv: list[str]) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.netns}", "--", *argv]
