"""Plans as data (pyinfra style): one row a case — the facts, then the steps or the refusal.

Nothing here touches the system: the quota backend is a recorder and no step is applied,
except in the undo tests where every step is a pure function.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from provisioner.accounts import Account
from provisioner.errors import BadInput, SlotError, StepFailed
from provisioner.quota import Usage
from provisioner.slots import SlotFacts, SlotRequest, plan_create_slot, plan_remove_slot
from provisioner.steps import Plan, Step, apply
from provisioner.store import SlotRecord, Store

ROOT = Path("/srv/slots")


class RecordingQuota:
    def __init__(self, name: str = "btrfs") -> None:
        self.name = name

    def enable(self) -> None: ...
    def make_home(self, home: Path) -> None: ...
    def remove_home(self, home: Path) -> None: ...
    def set_limit(self, username: str, home: Path, limit_bytes: int) -> None: ...
    def clear_limit(self, username: str, home: Path) -> None: ...

    def usage(self, username: str, home: Path) -> Usage:
        return Usage(0, None)


def record(state: str) -> SlotRecord:
    return SlotRecord("alice", 1001, "a@example.com", "DE", None, 1 << 30, str(ROOT / "alice"), state, 0.0)


ACCOUNT = Account("alice", 1001, 1001, str(ROOT / "alice"), "/bin/bash", "slotwarden slot")
SYSTEM = Account("alice", 5, 5, "/", "/usr/sbin/nologin", "")
FULL_CREATE = ["reserve", "uid", "user", "home", "skeleton", "quota", "password", "activate"]

CREATE_CASES = [
    # id, facts (account, group, record, home), quota, backend, expected steps or exception
    ("fresh", (None, False, None, False), 1 << 30, "btrfs", FULL_CREATE),
    ("fresh-no-quota", (None, False, None, False), None, "none",
     ["reserve", "uid", "user", "home", "skeleton", "password", "activate"]),
    ("resume-after-reserve", (None, False, record("creating"), False), 1 << 30, "btrfs",
     ["uid", "user", "home", "skeleton", "quota", "password", "activate"]),
    ("resume-after-user", (ACCOUNT, True, record("creating"), False), 1 << 30, "btrfs",
     ["home", "skeleton", "quota", "password", "activate"]),
    ("resume-after-home", (ACCOUNT, True, record("creating"), True), 1 << 30, "btrfs",
     ["skeleton", "quota", "password", "activate"]),
    ("exists", (ACCOUNT, True, record("active"), True), 1 << 30, "btrfs", SlotError),
    ("suspended-exists", (ACCOUNT, True, record("suspended"), True), 1 << 30, "btrfs", SlotError),
    ("foreign-account", (ACCOUNT, True, None, False), 1 << 30, "btrfs", SlotError),
    ("foreign-group", (None, True, None, False), 1 << 30, "btrfs", SlotError),
    ("stray-home", (None, False, None, True), 1 << 30, "btrfs", SlotError),
    ("quota-on-none", (None, False, None, False), 1 << 30, "none", BadInput),
]


@pytest.mark.parametrize(("case", "facts", "quota", "backend", "expected"), CREATE_CASES,
                         ids=[c[0] for c in CREATE_CASES])
def test_plan_create(tmp_path: Path, case: str, facts: tuple, quota: int | None, backend: str,
                     expected: list[str] | type[Exception]) -> None:
    req = SlotRequest("alice", "a@example.com", "DE", quota)
    slot_facts = SlotFacts(facts[0], facts[1], facts[2], facts[3])
    kwargs = dict(slots_root=ROOT, quota=RecordingQuota(backend), store=Store(tmp_path / "s.db"),
                  shell="/bin/bash", skeleton=Path("/etc/skel"), password="S3cretPW-never-shown")
    if isinstance(expected, list):
        plan = plan_create_slot(req, slot_facts, **kwargs)  # type: ignore[arg-type]
        assert [s.name for s in plan.steps] == expected
        assert "S3cretPW" not in " ".join(s.detail for s in plan.steps), "the password is never described"
    else:
        with pytest.raises(expected):
            plan_create_slot(req, slot_facts, **kwargs)  # type: ignore[arg-type]


REMOVE_CASES = [
    ("full", (ACCOUNT, True, record("active"), True), False,
     ["mark", "lock", "processes", "sweep", "quota", "home", "user", "forget"]),
    ("keep-data", (ACCOUNT, True, record("active"), True), True,
     ["mark", "lock", "processes", "sweep", "quota", "keep-data", "user", "forget"]),
    # The account is gone but the store knows its uid: what that uid left is still swept.
    ("half-made-no-user", (None, False, record("creating"), False), False, ["mark", "sweep", "forget"]),
    ("half-made-no-uid", (None, False, replace(record("creating"), uid=None), False), False, ["mark", "forget"]),
    ("half-made-user-only", (ACCOUNT, True, record("creating"), False), False,
     ["mark", "lock", "processes", "sweep", "user", "forget"]),
    ("unknown", (None, False, None, False), False, SlotError),
    ("non-slot-account", (ACCOUNT, True, None, True), False, SlotError),
    ("system-uid", (SYSTEM, True, record("active"), True), False, SlotError),
]


@pytest.mark.parametrize(("case", "facts", "keep", "expected"), REMOVE_CASES, ids=[c[0] for c in REMOVE_CASES])
def test_plan_remove(tmp_path: Path, case: str, facts: tuple, keep: bool,
                     expected: list[str] | type[Exception]) -> None:
    slot_facts = SlotFacts(facts[0], facts[1], facts[2], facts[3])
    kwargs = dict(slots_root=ROOT, quota=RecordingQuota(), store=Store(tmp_path / "s.db"), keep_data=keep,
                  extensions=[], kept_dir=ROOT / ".kept")
    if isinstance(expected, list):
        plan = plan_remove_slot("alice", slot_facts, **kwargs)  # type: ignore[arg-type]
        assert [s.name for s in plan.steps] == expected
    else:
        with pytest.raises(expected):
            plan_remove_slot("alice", slot_facts, **kwargs)  # type: ignore[arg-type]


def test_remove_refuses_empty_name(tmp_path: Path) -> None:
    with pytest.raises(BadInput):
        plan_remove_slot("", SlotFacts(None, False, None, False), slots_root=ROOT, quota=RecordingQuota(),
                         store=Store(tmp_path / "s.db"), keep_data=False, extensions=[], kept_dir=ROOT)


def test_remove_refuses_home_outside_root(tmp_path: Path) -> None:
    rec = SlotRecord("alice", 1001, "a@example.com", "DE", None, None, "/etc", "active", 0.0)
    with pytest.raises(SlotError, match="outside"):
        plan_remove_slot("alice", SlotFacts(ACCOUNT, True, rec, True), slots_root=ROOT, quota=RecordingQuota(),
                         store=Store(tmp_path / "s.db"), keep_data=False, extensions=[], kept_dir=ROOT)


@pytest.mark.parametrize("failing", ["a", "b", "c"])
def test_apply_undoes_done_steps_in_reverse(failing: str) -> None:
    log: list[str] = []

    def step(name: str) -> Step:
        def do() -> None:
            if name == failing:
                raise RuntimeError("boom")
            log.append(f"do {name}")

        return Step(name, name, do, lambda: log.append(f"undo {name}"))

    with pytest.raises(StepFailed, match=f"step '{failing}' failed"):
        apply(Plan("t", [step("a"), step("b"), step("c")]))
    done = ["a", "b", "c"][: ["a", "b", "c"].index(failing)]
    assert log == [f"do {n}" for n in done] + [f"undo {n}" for n in reversed([*done, failing])]


def test_apply_reports_undo_failures_but_undoes_the_rest() -> None:
    log: list[str] = []

    def bad_undo() -> None:
        raise RuntimeError("stuck")

    plan = Plan("t", [Step("a", "a", lambda: None, lambda: log.append("undo a")),
                      Step("b", "b", lambda: None, bad_undo),
                      Step("c", "c", lambda: (_ for _ in ()).throw(RuntimeError("boom")))])
    with pytest.raises(StepFailed, match="undo incomplete: b: stuck"):
        apply(plan)
    assert log == ["undo a"]
