"""System-test fixtures: real btrfs loop filesystems, real host init, real slots — all torn down.

Every name a test makes starts with a per-run random prefix, so parallel runs on one machine
never collide, and teardown removes exactly what this run made, even when a test fails.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from provisioner.config import load_config
from provisioner.context import Context
from provisioner.host import host_init, parse_host_request, proc_hidepid
from tests.system.fixtures.postgres import pg_lab  # noqa: F401  (the lab PostgreSQL fixture)

REPO = Path(__file__).resolve().parents[2]
SLOTCTL = str(Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin" / "slotctl")


@pytest.fixture(scope="session", autouse=True)
def _must_be_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("system tests need root (they create real users, mounts and PAM stacks)", pytrace=False)


@pytest.fixture(scope="session", autouse=True)
def _default_hub_user() -> Iterator[None]:
    """Labs that run host init without a [hub] section make the default Hub user: remove it after."""
    from provisioner.hub import HubConfig

    name = HubConfig().user
    existed = subprocess.run(["id", "-u", name], capture_output=True).returncode == 0
    yield
    if not existed:
        subprocess.run(["userdel", name], check=False, capture_output=True)


@dataclass
class SlotHost:
    """A prepared slot host: its own config, state dir and btrfs slots root."""

    base: Path
    config_path: Path
    slots_root: Path
    prefix: str

    def ctx(self) -> Context:
        return Context(load_config(self.config_path))

    def name(self) -> str:
        return f"{self.prefix}{secrets.token_hex(3)}"

    def env(self) -> dict[str, str]:
        return {**os.environ, "SLOTWARDEN_CONFIG": str(self.config_path)}

    def slotctl(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([SLOTCTL, *args], env=self.env(), capture_output=True, text=True,
                              input=input, timeout=300)


def make_slot_host(base: Path, prefix: str, size: str = "1G", extra_config: str = "") -> SlotHost:
    """Make a btrfs loop filesystem under BASE and run host init on it (no fstab writes)."""
    base.mkdir(parents=True, exist_ok=True)
    cfg = base / "slotwarden.toml"
    # Everything host-wide goes under BASE: cgroups of our own parent, facts, slotwarden-me,
    # and a guard socket nobody else serves.
    # host init makes the Hub's system user: a per-run name, removed at teardown.
    hub = "" if "[hub]" in extra_config else f'[hub]\nuser = "{prefix}hub"\n'
    # App sockets (and the front door's links to them) per run: each lab's Hub group is its own.
    apps = "" if "[apps]" in extra_config else f'[apps]\nsocket_dir = "{base / "appsock"}"\n'
    cfg.write_text(
        f'state_dir = "{base / "state"}"\n{extra_config}\n{hub}{apps}'
        f'[metrics]\ncgroup_parent = "slotwarden-{prefix}"\nfacts_dir = "{base / "facts"}"\n'
        f'me_path = "{base / "bin" / "slotwarden-me"}"\n'
        + ("" if "[guard]" in extra_config else f'[guard]\nsocket = "{base / "guard.sock"}"\n')
    )
    ctx = Context(load_config(cfg))
    req = parse_host_request(ctx, str(base / "slots"), "btrfs", str(base / "slots.img"), size, True, False)
    host_init(ctx, req)
    ctx.close()
    return SlotHost(base, cfg, base / "slots", prefix)


def teardown_slot_host(host: SlotHost) -> None:
    """Remove every slot and account this host made, then unmount and delete the filesystem."""
    from provisioner import accounts
    from provisioner.operations import remove_slot

    ctx = host.ctx()
    errors = []
    for rec in ctx.store.list_slots():
        try:
            remove_slot(ctx, rec.username)
        except Exception as exc:  # keep tearing down; report at the end
            errors.append(f"{rec.username}: {exc}")
    from provisioner.hub import hub_config

    hub_user = hub_config(ctx.config).user
    ctx.close()
    hub_acct = accounts.lookup_user(hub_user)
    if hub_acct and hub_user.startswith(host.prefix):
        accounts.stop_processes(hub_acct.uid)  # a Hub web process or nginx worker still exiting
        subprocess.run(["userdel", hub_user], check=False, capture_output=True)
    for line in Path("/etc/passwd").read_text().splitlines():
        name = line.split(":", 1)[0]
        if name.startswith(host.prefix):
            acct = accounts.lookup_user(name)
            if acct:
                accounts.stop_processes(acct.uid)
            accounts.delete_user(name)
            errors.append(f"{name}: account left behind")
    subprocess.run(["umount", "-l", str(host.slots_root)], check=False, capture_output=True)
    subprocess.run(["rm", "-rf", str(host.base)], check=False)
    assert not errors, errors


@pytest.fixture(scope="session")
def _proc_options() -> Iterator[None]:
    """Put /proc back the way it was when the session started."""
    before = proc_hidepid()
    yield
    if before[0] in (None, "0", "off"):
        subprocess.run(["mount", "-o", "remount,hidepid=0", "/proc"], check=False)


def world_traversable_tmpdir(tag: str) -> Path:
    """A fresh directory tenants can traverse (pytest's tmp_path lives under a 0700 parent)."""
    base = Path(tempfile.mkdtemp(prefix=f"slotwarden-{tag}-", dir="/tmp"))
    base.chmod(0o755)
    return base


@pytest.fixture(scope="session")
def slot_host(_proc_options: None) -> Iterator[SlotHost]:
    """One btrfs slot host shared by the session's system tests."""
    base = world_traversable_tmpdir("slothost")
    host = make_slot_host(base, f"ts{secrets.token_hex(2)}")
    try:
        yield host
    finally:
        teardown_slot_host(host)


def as_user(user: str, script: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run SCRIPT with bash as USER (a real login-less switch, no root left)."""
    return subprocess.run(["runuser", "-u", user, "--", "/bin/bash", "-c", script], capture_output=True,
                          text=True, timeout=timeout, cwd="/")
