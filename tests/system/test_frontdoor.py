"""One front door, explicit hooks: proved from outside, with real users, a real API server and real apps.

- The creation (and removal, host) steps come in one order whatever module a process imported
  first: each ordering runs in its own interpreter, as a fresh ``slotctl`` or API process would.
- Every entry point takes the slot's lock: while another process holds it, a change through the
  CLI, the API, the local executor (the Ansible module's), ``slot create-many``, ``app rotate`` or
  ``app uninstall`` waits and changes nothing; released, they run one at a time and ``doctor``
  finds no drift.

Names: slots ``tf`` + random hex, API ports 2600-2649, app ports 2650-2669.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from provisioner import accounts
from provisioner.executors import SlotChange
from provisioner.executors.local import apply_changes
from tests.system.fixtures.api import ApiServer, api_server
from tests.system.fixtures.hosts import PLANS, SLOTCTL, SlotHost, app_ports, new_name, slot_host
from tests.system.fixtures.processes import wait_for

pytestmark = pytest.mark.root  # not root: the session fixture in conftest.py fails the run

PREFIX = "tf"

IMPORT_ORDERS = [
    [],
    ["provisioner.metrics"],
    ["provisioner.lifecycle"],
    ["provisioner.apps", "provisioner.support"],
    ["provisioner.hub.hostinit", "provisioner.notices", "provisioner.limits"],
    ["provisioner.cli", "provisioner.api.app"],
]

STEP_NAMES = """
import json, sys
for m in sys.argv[1:]:
    __import__(m)
from provisioner import Context, create_slot
from provisioner.host import parse_host_request, plan_host_init
ctx = Context()  # SLOTWARDEN_CONFIG names the lab's configuration
plan = create_slot(ctx, "tfnobody", "a@example.com", "DE", plan="small", dry_run=True)
req = parse_host_request(ctx, str(ctx.settings.slots_root), "btrfs", None, None, True, False)
print(json.dumps({"extensions": [e.name for e in ctx.extensions], "create": [s.name for s in plan.steps],
                  "host": [s.name for s in plan_host_init(ctx, req).steps]}))
"""


@pytest.fixture(scope="module")
def host() -> Iterator[SlotHost]:
    with slot_host("frontdoor", size="2G", plans=PLANS, apps=app_ports(2650, 2669)) as h:
        yield h


@pytest.fixture(scope="module")
def api(host: SlotHost) -> Iterator[ApiServer]:
    with api_server(host, ports=range(2600, 2650)) as server:
        yield server


def _order(host: SlotHost, modules: list[str]) -> dict[str, list[str]]:
    out = subprocess.run([sys.executable, "-c", STEP_NAMES, *modules],
                         env=host.env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_creation_steps_come_in_one_order_whatever_was_imported_first(host: SlotHost) -> None:
    """The bug: steps were added to module lists as packages were imported, so their order
    depended on which module a process happened to import first."""
    seen = [_order(host, modules) for modules in IMPORT_ORDERS]
    assert all(s == seen[0] for s in seen), seen
    first = seen[0]
    assert first["extensions"] == ["limits", "supervisor", "metrics", "apps", "lifecycle", "support",
                                   "notices", "hub"]
    create = first["create"]
    # The limits' cgroup before the accounting unit, the plan recorded last, before activation.
    assert create.index("limits") < create.index("metrics") < create.index("plan") < create.index("activate")


class LockHolder:
    """Another process holding the slot's lock (what a long change in progress looks like)."""

    def __init__(self, host: SlotHost, username: str) -> None:
        code = ("import sys\nfrom provisioner import Context\nfrom provisioner.slotlock import slot_lock\n"
                "with slot_lock(Context(), sys.argv[1]):\n    print('held', flush=True)\n    sys.stdin.read()\n")
        self.proc = subprocess.Popen([sys.executable, "-c", code, username], env=host.env(),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "held"

    def release(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


def _waiters(host: SlotHost, username: str) -> int:
    """How many processes wait in flock for USERNAME's lock file (its '->' lines in /proc/locks)."""
    inode = (host.config.state_dir / "locks" / f"{username}.lock").stat().st_ino
    count = 0
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" in fields and any(t.count(":") == 2 and t.rsplit(":", 1)[1] == str(inode) for t in fields):
            count += 1
    return count


def _slotctl(host: SlotHost, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([SLOTCTL, "--json", *args], env=host.env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _audit(host: SlotHost, name: str) -> list[str]:
    """The slot's changes in the audit (``slot.*``, ``app.*``; the API's own request rows left out)."""
    ctx = host.ctx()
    try:
        return [e["action"] for e in ctx.store.audit_entries(name) if e["action"].startswith(("slot.", "app."))]
    finally:
        ctx.close()


def _doctor_clean(host: SlotHost) -> None:
    out = host.slotctl("--json", "doctor")
    drift = json.loads(out.stdout)["drift"] if out.stdout else out.stderr
    assert out.returncode == 0, drift


def _remove(host: SlotHost, name: str) -> None:
    ctx = host.ctx()
    try:
        if ctx.store.get_slot(name) is not None:
            host.slotctl("slot", "remove", name)
    finally:
        ctx.close()


def test_every_entry_point_waits_for_the_slot_lock_then_changes_run_one_at_a_time(
        host: SlotHost, api: ApiServer, tmp_path: Path) -> None:
    """CLI, API, the local executor (the Ansible module's code) and create-many, started while
    another process holds the lock: nothing changes until it is released, then all of them run."""
    name, fresh = new_name(PREFIX), new_name(PREFIX)
    created = host.slotctl("--json", "slot", "create", name, "--email", "a@example.com", "--country", "DE",
                           "--plan", "small")
    assert created.returncode == 0, created.stderr
    csv = tmp_path / "many.csv"
    csv.write_text(f"username,email,country\n{fresh},b@example.com,FR\n", encoding="utf-8")
    holders = [LockHolder(host, name), LockHolder(host, fresh)]
    pool = ThreadPoolExecutor(max_workers=3)
    try:
        before = _audit(host, name)
        cli = _slotctl(host, "slot", "passwd", name)
        many = _slotctl(host, "slot", "create-many", str(csv))

        def through_api() -> int:
            with api.client() as c:
                return c.post(f"/v1/slots/{name}/suspend", json={"reason": "unpaid"}).status_code

        def through_module() -> str:
            ctx = host.ctx()
            try:
                return apply_changes(ctx, [SlotChange(name, email="new@example.com")])[0].action
            finally:
                ctx.close()

        futures: list[Future[object]] = [pool.submit(through_api), pool.submit(through_module)]  # type: ignore[list-item]
        # Every entry point is waiting for the lock (seen in /proc/locks, never by timing): the
        # CLI, the API server and the executor for NAME, create-many for FRESH; nothing ran.
        wait_for(lambda: _waiters(host, name) == 3 and _waiters(host, fresh) == 1, timeout=120)
        assert cli.poll() is None and many.poll() is None and not any(f.done() for f in futures)
        assert _audit(host, name) == before
        assert accounts.lookup_user(fresh) is None
        for h in holders:
            h.release()
        assert cli.wait(timeout=300) == 0, cli.stderr.read() if cli.stderr else ""
        assert many.wait(timeout=300) == 0, many.stderr.read() if many.stderr else ""
        assert futures[0].result(timeout=300) == 200
        assert futures[1].result(timeout=300) == "updated"
        after = _audit(host, name)[len(before):]
        assert sorted(after) == ["slot.passwd", "slot.suspend", "slot.update"], after
        assert accounts.lookup_user(fresh) is not None
        shown = json.loads(host.slotctl("--json", "slot", "show", name, check=True).stdout)
        assert shown["state"] == "suspended" and shown["email"] == "new@example.com"
        _doctor_clean(host)
    finally:
        for h in holders:
            h.release()
        pool.shutdown(wait=True)
        _remove(host, name)
        _remove(host, fresh)
    _doctor_clean(host)


def test_app_rotate_against_app_uninstall_serialize_and_leave_no_drift(host: SlotHost) -> None:
    """The bug: ``app rotate`` and ``app uninstall`` ran without the lock; now, started together
    while the lock is held, they wait, then run one after the other and leave nothing half done."""
    name = new_name(PREFIX)
    created = host.slotctl("--json", "slot", "create", name, "--email", "a@example.com", "--country", "DE",
                           "--app", "transmission")
    assert created.returncode == 0, created.stderr
    holder = LockHolder(host, name)
    try:
        rotate = _slotctl(host, "app", "rotate", name, "transmission")
        uninstall = _slotctl(host, "app", "uninstall", name, "transmission")
        wait_for(lambda: _waiters(host, name) == 2, timeout=120)  # both wait for the lock
        assert rotate.poll() is None and uninstall.poll() is None
        assert _audit(host, name).count("app.rotate") == 0
        holder.release()
        rotate.wait(timeout=300)
        uninstall.wait(timeout=300)
        assert uninstall.returncode == 0, uninstall.stderr.read() if uninstall.stderr else ""
        actions = [a for a in _audit(host, name) if a in {"app.rotate", "app.uninstall"}]
        if rotate.returncode == 0:  # rotate went first
            assert actions == ["app.rotate", "app.uninstall"]
        else:  # uninstall went first: rotate found nothing to rotate, and said so in one line
            err = rotate.stderr.read() if rotate.stderr else ""
            assert actions == ["app.uninstall"] and "not installed" in err, err
        listed = json.loads(host.slotctl("--json", "app", "status", name, check=True).stdout)
        assert listed == [] or listed == {"apps": []}, listed
        wait_for(lambda: not accounts.pids_of(accounts.lookup_user(name).uid))  # type: ignore[union-attr]
        _doctor_clean(host)
    finally:
        holder.release()
        _remove(host, name)
    _doctor_clean(host)
