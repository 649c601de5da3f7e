"""Executors without touching the system: change parsing, sealing, and runner events -> outcomes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provisioner.errors import BadInput, SlotError
from provisioner.executors import EXECUTORS, SlotChange, SlotOutcome, load_executor
from provisioner.executors.ansible import AnsibleExecutor, EventCollector, PlaybookRun, outcomes_from
from provisioner.executors.sealed import Opener, seal

# --- SlotChange.parse: one row a case -------------------------------------------------------

PARSE_OK = [
    ({"username": "alice", "email": "a@example.com", "country": "DE"},
     SlotChange("alice", "present", "a@example.com", "DE")),
    ({"username": "bob", "state": "absent", "keep_data": True}, SlotChange("bob", "absent", keep_data=True)),
    ({"username": "c", "email": "c@example.com", "country": "FR", "quota": "", "payment_ref": ""},
     SlotChange("c", "present", "c@example.com", "FR")),
    ({"username": "d", "quota": "5G", "apps": ["gitea"], "strict": True},
     SlotChange("d", quota="5G", apps=("gitea",), strict=True)),
]
PARSE_BAD = [
    ({}, "needs a username"),
    ({"username": ""}, "needs a username"),
    ({"username": "a", "state": "gone"}, "state must be present or absent"),
    ({"username": "a", "password": "x"}, "unknown key 'password'"),
    ({"username": "a", "apps": "gitea"}, "apps must be a list"),
]


@pytest.mark.parametrize(("data", "want"), PARSE_OK)
def test_parse_change(data: dict[str, Any], want: SlotChange) -> None:
    assert SlotChange.parse(data) == want


@pytest.mark.parametrize(("data", "message"), PARSE_BAD)
def test_parse_change_rejects(data: dict[str, Any], message: str) -> None:
    with pytest.raises(BadInput, match=message):
        SlotChange.parse(data)


def test_change_round_trips_through_its_dict() -> None:
    c = SlotChange("e", "present", "e@example.com", "NL", "1G", "PAY-1", False, ("a", "b"), True)
    assert SlotChange.parse(c.as_dict()) == c


def test_outcome_hides_the_password_unless_asked() -> None:
    o = SlotOutcome("h", "alice", "created", True, {"home": "/srv/slots/alice"}, password="pw-123")
    assert "password" not in o.as_dict() and "pw-123" not in repr(o)
    assert o.as_dict(with_password=True)["password"] == "pw-123"
    assert o.as_dict()["home"] == "/srv/slots/alice" and o.ok


def test_executors_registry() -> None:
    assert sorted(EXECUTORS) == ["ansible", "local"]
    with pytest.raises(BadInput, match="unknown executor"):
        load_executor("telnet")


# --- sealing --------------------------------------------------------------------------------

@given(st.text(min_size=0, max_size=200))
def test_seal_round_trip(secret: str) -> None:
    opener = Opener()
    sealed = seal(opener.recipient, secret)
    assert len(secret) < 16 or secret not in sealed
    assert opener.open(sealed) == secret


def test_seal_is_fresh_each_time_and_only_opens_for_its_key() -> None:
    a, b = Opener(), Opener()
    s1, s2 = seal(a.recipient, "same"), seal(a.recipient, "same")
    assert s1 != s2
    with pytest.raises(SlotError, match="could not be opened"):
        b.open(s1)
    with pytest.raises(SlotError):
        a.open(s1[:-8] + "AAAAAAA=")


@pytest.mark.parametrize("recipient", ["", "not base64!", "QUJD"])
def test_seal_rejects_bad_recipient(recipient: str) -> None:
    with pytest.raises(BadInput, match="X25519"):
        seal(recipient, "x")


# --- runner events -> per-host outcomes -----------------------------------------------------

def _event(kind: str, host: str, res: dict[str, Any], action: str = "slotwarden_slot") -> dict[str, Any]:
    return {"event": kind, "event_data": {"host": host, "task": "Slots", "task_action": action,
                                          "resolved_action": action, "res": res}}


def test_events_become_per_host_outcomes() -> None:
    opener = Opener()
    changes = [SlotChange("alice", email="a@example.com", country="DE"), SlotChange("bob", "absent")]
    lines: list[str] = []
    col = EventCollector(lines.append)
    col({"event": "playbook_on_task_start", "event_data": {"task": "Slots"}})
    col(_event("runner_on_ok", "web1", {"changed": True, "results": [
        {"host": "web1", "username": "alice", "ok": True, "action": "created", "changed": True,
         "home": "/srv/slots/alice", "quota_bytes": 1 << 30, "password_sealed": seal(opener.recipient, "pw-a")},
        {"host": "web1", "username": "bob", "ok": True, "action": "unchanged", "changed": False},
    ]}))
    col(_event("runner_on_unreachable", "web2", {"msg": "Failed to connect\n to the host"}))
    col(_event("runner_on_failed", "web3", {"msg": "slotwarden is not installed"}))
    col({"event": "playbook_on_stats", "event_data": {"ok": {"web1": 1}, "changed": {"web1": 1},
                                                      "dark": {"web2": 1}, "failures": {"web3": 1}}})
    run = PlaybookRun("failed", 2, col.hosts, None)
    got = outcomes_from(changes, run, ["web1", "web2", "web3", "web4", "db*"], opener)
    table = [(o.host, o.username, o.action, o.changed, o.ok) for o in got]
    assert table == [
        ("web1", "alice", "created", True, True),
        ("web1", "bob", "unchanged", False, True),
        ("web2", "alice", "failed", False, False),
        ("web2", "bob", "failed", False, False),
        ("web3", "alice", "failed", False, False),
        ("web3", "bob", "failed", False, False),
        ("web4", "alice", "failed", False, False),  # named but not in the inventory
        ("web4", "bob", "failed", False, False),  # (a pattern like db* is not reported)
    ]
    assert got[0].password == "pw-a" and got[0].record == {"home": "/srv/slots/alice", "quota_bytes": 1 << 30}
    assert got[2].error == "host web2 is unreachable: Failed to connect to the host"
    assert got[4].error == "on web3: slotwarden is not installed"
    assert got[6].error == "host web4 is not in the inventory"
    assert run.changed == 1
    assert lines[0] == "task: Slots" and "web1: Slots: ok (changed)" in lines


def test_other_tasks_do_not_count_as_the_slot_result() -> None:
    col = EventCollector()
    col(_event("runner_on_ok", "web1", {"changed": False}, action="ansible.builtin.setup"))
    assert col.hosts["web1"].module_result is None


def test_executor_refuses_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="does not exist"):
        AnsibleExecutor(tmp_path / "missing.ini", ["web1"])
    inv = tmp_path / "inv.ini"
    inv.write_text("web1\n")
    with pytest.raises(BadInput, match="not a host name"):
        AnsibleExecutor(inv, ["--check"])
    assert AnsibleExecutor(inv, ["web1", "web2"]).pattern == "web1,web2"
    assert AnsibleExecutor(inv).pattern == "all"


# --- the CLI's fleet options fail fast on bad input (exit 2), before touching anything -------

SLOTCTL = str(Path(sys.executable).parent / "slotctl")


@pytest.mark.parametrize(("argv", "message"), [
    (["slot", "remove", "alice", "--host", "web1"], "--host needs --inventory"),
    (["--inventory", "/nonexistent.ini", "slot", "remove", "alice", "--host", "web1"], "no such file"),
])
def test_cli_fleet_bad_input(argv: list[str], message: str) -> None:
    proc = subprocess.run([SLOTCTL, *argv], capture_output=True, text=True)
    assert proc.returncode == 2 and message in proc.stderr


@pytest.mark.parametrize("argv", [["slot", "passwd", "alice"], ["--json", "slot", "list"], ["doctor"]])
def test_cli_inventory_refused_where_there_is_no_fleet_path(argv: list[str], tmp_path: Path) -> None:
    inv = tmp_path / "inv.ini"
    inv.write_text("web1\n")
    proc = subprocess.run([SLOTCTL, "--inventory", str(inv), *argv], capture_output=True, text=True)
    assert proc.returncode == 2 and "--inventory does not apply to 'slotctl" in proc.stderr


def test_cli_inventory_needs_a_host(tmp_path: Path) -> None:
    inv = tmp_path / "inv.ini"
    inv.write_text("web1\n")
    proc = subprocess.run([SLOTCTL, "--inventory", str(inv), "slot", "remove", "alice"], capture_output=True, text=True)
    assert proc.returncode == 2 and "--inventory needs --host" in proc.stderr


# --- the playbooks and the module are well-formed -------------------------------------------

PLAYBOOKS = Path(__file__).resolve().parents[3] / "playbooks"
BIN = Path(sys.executable).parent


def test_module_documentation_parses() -> None:
    proc = subprocess.run([str(BIN / "ansible-doc"), "-M", str(PLAYBOOKS / "library"), "--json", "slotwarden_slot"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    import json

    doc = json.loads(proc.stdout)["slotwarden_slot"]
    assert set(doc["doc"]["options"]) >= {"slots", "username", "state", "quota", "apps", "recipient"}
    assert doc["examples"] and doc["return"]["results"]


@pytest.mark.parametrize("playbook", ["site.yml", "slot.yml", "postgres.yml"])
def test_playbook_syntax(playbook: str, tmp_path: Path) -> None:
    inventory = str(PLAYBOOKS / "inventory.example.ini")
    proc = subprocess.run([str(BIN / "ansible-playbook"), "--syntax-check", "-i", inventory, str(PLAYBOOKS / playbook)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout


def test_app_credentials_come_back_sealed_and_are_opened() -> None:
    import json

    opener = Opener()
    creds = [{"app": "vault", "username": "alice", "password": "app-secret", "url": "http://h:2001/"}]
    col = EventCollector()
    col(_event("runner_on_ok", "web1", {"changed": True, "results": [
        {"username": "alice", "ok": True, "action": "updated", "changed": True,
         "apps_sealed": seal(opener.recipient, json.dumps(creds))}]}))
    [o] = outcomes_from([SlotChange("alice", apps=("vault",))], PlaybookRun("successful", 0, col.hosts, None),
                        ["web1"], opener)
    assert o.apps == creds and "apps" not in o.as_dict() and o.as_dict(with_password=True)["apps"] == creds
    assert "app-secret" not in repr(o)


class _FakeStore:
    def __init__(self, existing: set[str]) -> None:
        self.existing = existing

    def get_slot(self, name: str) -> object | None:
        return object() if name in self.existing else None


class _FakeCtx:
    def __init__(self, existing: set[str]) -> None:
        self.store = _FakeStore(existing)


BATCHABLE = [
    # (changes, existing slots, indexes batched through create_many)
    ([SlotChange("a", email="a@x.org", country="DE"), SlotChange("b", email="b@x.org", country="DE")], set(), [0, 1]),
    ([SlotChange("a", email="a@x.org", country="DE"), SlotChange("b", email="b@x.org", country="DE")], {"a"}, [1]),
    ([SlotChange("a", email="a@x.org", country="DE", apps=("vault",)), SlotChange("b", email="b@x.org", country="DE")],
     set(), [1]),
    ([SlotChange("a", "absent"), SlotChange("b", email="b@x.org", country="DE")], set(), [1]),
    ([SlotChange("a", "absent"), SlotChange("a", email="a@x.org", country="DE")], set(), []),  # same name twice
    ([SlotChange("a")], set(), []),  # no email/country: not a create
]


@pytest.mark.parametrize(("changes", "existing", "want"), BATCHABLE)
def test_which_changes_are_batched(changes: list[SlotChange], existing: set[str], want: list[int]) -> None:
    from provisioner.executors.local import _batchable

    assert _batchable(_FakeCtx(existing), changes) == want  # type: ignore[arg-type]
