"""Lifecycle planning as data: facts in, step names out (pyinfra style), plus plan config parsing."""

from __future__ import annotations

import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provisioner import lifecycle_records, loginstate, planchange, slotlock, suspension
from provisioner.config import PlanConfig, load_config_text
from provisioner.errors import BadInput, ConfigError, SlotError
from provisioner.extensions import Extension, Extensions
from provisioner.lifecycle_facts import LifecycleFacts
from provisioner.lifecycle_records import LifecycleRecord
from provisioner.loginstate import LoginState
from provisioner.plans import allows_app, get_plan, list_plans, plan_as_dict
from provisioner.quota import Usage
from provisioner.store import SlotRecord, Store

FRESH = LoginState(expire="", locked=False)
SUSPENDED = LoginState(expire="1", locked=True)
SAVED_WEB = {"expire": "", "locked": False, "apps": {"fake": ["web"]}}


class FakeApps:
    name = "fake"

    def installed(self, ctx: Any, username: str) -> list[str]:
        return []

    def running(self, ctx: Any, username: str) -> list[str]:
        return []

    def stop(self, ctx: Any, username: str, app: str) -> None:
        pass

    def start(self, ctx: Any, username: str, app: str) -> None:
        pass


class FakeAppsExtension(Extension):
    """Passed through the Context: the fake app control, no module global touched."""

    name = "fake"

    def app_control(self) -> FakeApps:
        return FakeApps()


EXTENSIONS = Extensions((FakeAppsExtension(),))


def _facts(state: str = "active", login: LoginState = FRESH, life: LifecycleRecord | None = None,
           running: dict[str, list[str]] | None = None, installed: dict[str, list[str]] | None = None,
           procs: bool = False, quota: int | None = 64 << 20) -> LifecycleFacts:
    rec = SlotRecord("tlx", 1500, "a@example.com", "DE", None, quota, "/srv/slots/tlx", state, 0.0)
    return LifecycleFacts(rec, life, 1500, login, running or {}, installed or {}, procs)


CTX: Any = SimpleNamespace(store=None, quota=SimpleNamespace(name="btrfs"), extensions=EXTENSIONS)

SUSPEND_CASES = [
    # (id, facts, expected steps)
    ("fresh", _facts(procs=True), ["record", "expire", "lock", "processes", "mark"]),
    ("fresh-no-processes", _facts(), ["record", "expire", "lock", "processes", "mark"]),
    ("running-app", _facts(running={"fake": ["web"]}),
     ["record", "expire", "lock", "stop-app:web", "processes", "mark"]),
    ("operator-locked-already", _facts(login=LoginState("", True)), ["record", "expire", "processes", "mark"]),
    ("already-suspended", _facts("suspended", SUSPENDED, LifecycleRecord("tlx", None, 1.0, "r", "root", SAVED_WEB)),
     []),
    ("suspended-but-unlocked-by-hand",
     _facts("suspended", LoginState("1", False), LifecycleRecord("tlx", None, 1.0, "r", "root", SAVED_WEB)), ["lock"]),
    ("suspended-process-came-back",
     _facts("suspended", SUSPENDED, LifecycleRecord("tlx", None, 1.0, "r", "root", SAVED_WEB), procs=True),
     ["processes"]),
    ("suspended-without-record", _facts("suspended", SUSPENDED), ["record"]),
]


@pytest.mark.parametrize(("facts", "expected"), [c[1:] for c in SUSPEND_CASES], ids=[c[0] for c in SUSPEND_CASES])
def test_plan_suspend(facts: LifecycleFacts, expected: list[str]) -> None:
    plan = suspension.plan_suspend("tlx", "unpaid", facts, ctx=CTX, actor="root", now=5.0)
    assert [s.name for s in plan.steps] == expected


UNSUSPEND_CASES = [
    ("active", _facts(), None, []),
    ("suspended-with-app", _facts("suspended", SUSPENDED), SAVED_WEB, ["unlock", "expire", "start-app:web", "mark"]),
    ("app-already-running", _facts("suspended", SUSPENDED, running={"fake": ["web"]}), SAVED_WEB,
     ["unlock", "expire", "mark"]),
    ("operator-lock-kept", _facts("suspended", SUSPENDED), {"expire": "2999-01-01", "locked": True, "apps": {}},
     ["expire", "mark"]),
    ("nothing-saved", _facts("suspended", SUSPENDED), None, ["unlock", "expire", "mark"]),
    ("interrupted-unsuspend", _facts("active", FRESH), SAVED_WEB, ["start-app:web", "mark"]),
]


@pytest.mark.parametrize(("facts", "saved", "expected"), [c[1:] for c in UNSUSPEND_CASES],
                         ids=[c[0] for c in UNSUSPEND_CASES])
def test_plan_unsuspend(facts: LifecycleFacts, saved: dict[str, Any] | None, expected: list[str]) -> None:
    life = LifecycleRecord("tlx", "small", 1.0, "r", "root", saved) if saved is not None else None
    facts = LifecycleFacts(facts.record, life, facts.uid, facts.login, facts.running_apps, {}, False)
    plan = suspension.plan_unsuspend("tlx", facts, ctx=CTX, actor="root")
    assert [s.name for s in plan.steps] == expected


def test_unsuspend_refuses_apps_it_cannot_start() -> None:
    life = LifecycleRecord("tlx", None, 1.0, "r", "root", {"expire": "", "locked": False, "apps": {"gone": ["x"]}})
    with pytest.raises(SlotError, match="cannot start"):
        suspension.plan_unsuspend("tlx", _facts("suspended", SUSPENDED, life), ctx=CTX, actor="root")


SMALL = PlanConfig(name="small", quota=64 << 20)
LARGE = PlanConfig(name="large", quota=256 << 20)
WEB_ONLY = PlanConfig(name="web-only", quota=256 << 20, apps=("web",), max_apps=1)

CHANGE_CASES = [
    ("same", SMALL, _facts(life=LifecycleRecord("tlx", "small")), Usage(0, 64 << 20), []),
    ("bigger", LARGE, _facts(life=LifecycleRecord("tlx", "small")), Usage(10 << 20, 64 << 20), ["quota", "record"]),
    ("no-plan-before", LARGE, _facts(), None, ["quota", "record"]),
    ("same-quota-other-plan", PlanConfig(name="small2", quota=64 << 20), _facts(life=LifecycleRecord("tlx", "small")),
     None, ["record"]),
    ("allowed-app", WEB_ONLY, _facts(installed={"fake": ["web"]}), None, ["quota", "record"]),
]


@pytest.mark.parametrize(("new", "facts", "usage", "expected"), [c[1:] for c in CHANGE_CASES],
                         ids=[c[0] for c in CHANGE_CASES])
def test_plan_change_plan(new: PlanConfig, facts: LifecycleFacts, usage: Usage | None, expected: list[str]) -> None:
    plan = planchange.plan_change_plan("tlx", new, facts, usage, ctx=CTX, actor="root")
    assert [s.name for s in plan.steps] == expected


@pytest.mark.parametrize(("new", "facts", "usage", "message"), [
    (SMALL, _facts(quota=LARGE.quota), Usage(100 << 20, LARGE.quota),
     "stores 104857600 bytes (100.0M), more than the 67108864 bytes (64M) of plan small; free 36.0M first"),
    (WEB_ONLY, _facts(installed={"fake": ["db"]}), None, "does not allow the app(s) db"),
    (PlanConfig(name="one", quota=1 << 30, max_apps=1), _facts(installed={"fake": ["web", "db"]}), None,
     "allows 1 app(s)"),
], ids=["data-too-big", "app-not-allowed", "too-many-apps"])
def test_plan_change_plan_refusals(new: PlanConfig, facts: LifecycleFacts, usage: Usage | None, message: str) -> None:
    with pytest.raises(SlotError) as exc:
        planchange.plan_change_plan("tlx", new, facts, usage, ctx=CTX, actor="root")
    assert message in str(exc.value)


def test_lifecycle_record_round_trip_and_step_undo() -> None:
    store = Store(Path(tempfile.mkdtemp()) / "t.db")
    records = lifecycle_records.LifecycleRecords(store)
    assert records.get("tlx") is None
    rec = LifecycleRecord("tlx", "small", 3.0, "unpaid", "api:billing", SAVED_WEB)
    records.put(rec)
    assert records.get("tlx") == rec
    ctx: Any = SimpleNamespace(store=store, extensions=EXTENSIONS)
    plan = suspension.plan_suspend("tlx", "again", _facts("active", FRESH, LifecycleRecord("tlx", "small")),
                                  ctx=ctx, actor="root", now=9.0)
    record = plan.steps[0]
    record.do()
    got = records.get("tlx")
    assert got is not None and got.suspended_reason == "again" and got.saved == {
        "expire": "", "locked": False, "apps": {}}
    assert record.undo is not None
    record.undo()
    assert records.get("tlx") == LifecycleRecord("tlx", "small")


def test_login_state_reads_the_shadow_fields(tmp_path: Path) -> None:
    shadow = tmp_path / "shadow"
    shadow.write_text("tla:!$y$hash:20000:0:99999:7::1:\ntlb:$y$hash:20000:0:99999:7:::\n")
    assert loginstate.login_state("tla", shadow) == LoginState("1", True)
    assert loginstate.login_state("tlb", shadow) == LoginState("", False)
    assert loginstate.login_state("tla", shadow).suspended
    with pytest.raises(SlotError):
        loginstate.login_state("tlc", shadow)


@pytest.mark.parametrize("reason", ["", "   ", "a\nb", "x" * 501, 5])
def test_bad_reasons(reason: object) -> None:
    with pytest.raises(BadInput):
        suspension.validate_reason(reason)


# --- [plans.NAME] ------------------------------------------------------------------------------

PLANS = """
[plans.large]
quota = "10G"
description = "big"
[plans.small]
quota = "1G"
apps = ["gitea", "gitea", "wordpress"]
max_apps = 1
max_processes = 200
"""


def test_plans_parse_and_sort() -> None:
    cfg = load_config_text(PLANS)
    assert [p.name for p in list_plans(cfg)] == ["small", "large"]
    small = get_plan(cfg, "small")
    assert small == PlanConfig(name="small", quota=1 << 30, apps=("gitea", "wordpress"), max_apps=1, max_processes=200)
    assert plan_as_dict(small)["quota"] == "1G"
    assert allows_app(small, "gitea", installed=0) and not allows_app(small, "gitea", installed=1)
    assert not allows_app(small, "nextcloud", installed=0)
    assert allows_app(get_plan(cfg, "large"), "anything", installed=50)
    with pytest.raises(BadInput, match=r"plan 'gold' is not configured \(plans: large, small\)"):
        get_plan(cfg, "gold")


@pytest.mark.parametrize(("toml", "message"), [
    ("[plans.x]\n", "plans.x.quota: missing"),
    ('[plans.x]\nquota = "1Q"\n', "plans.x.quota: size '1Q' is invalid"),
    ('[plans.x]\nquota = "1G"\ncolour = "red"\n', "plans.x.colour: unknown key"),
    ('[plans.X]\nquota = "1G"\n', "plans.X: a plan name is"),
    ('[plans.x]\nquota = "1G"\napps = "gitea"\n', "plans.x.apps: expected a list"),
    ('[plans.x]\nquota = "1G"\nmax_apps = -1\n', "plans.x.max_apps: expected an integer 0..10000"),
    ('[plans.x]\nquota = "1G"\nmax_processes = true\n', "plans.x.max_processes: expected a number"),
    ('[plans.x]\nquota = "1G"\ndescription = 3\n', "plans.x.description: expected one line of text"),
    ("plans = 1\n", "plans: expected tables"),
    ("[plans]\nx = 1\n", "plans.x: expected a table"),
])
def test_bad_plans_name_the_key(toml: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config_text(toml)
    assert message in str(exc.value)


_toml_scalar = st.one_of(st.integers(-5, 1 << 52), st.booleans(), st.text(max_size=12),
                         st.lists(st.text(max_size=6), max_size=3))


@given(name=st.text(min_size=1, max_size=40).filter(lambda s: s.isprintable() and '"' not in s and "\\" not in s),
       table=st.dictionaries(st.sampled_from(["quota", "apps", "max_apps", "max_processes", "description", "x"]),
                             _toml_scalar, max_size=5))
def test_any_plan_table_parses_or_names_its_key(name: str, table: dict[str, object]) -> None:
    from provisioner.config import _plans

    try:
        plan = _plans({name: table})[name]
    except ConfigError as exc:
        assert str(exc).startswith(f"plans.{name}")
    else:
        assert plan.name == name and plan.quota > 0


@pytest.mark.parametrize(("plan", "apps", "installed", "message"), [
    (WEB_ONLY, ["web"], 0, None),
    (WEB_ONLY, ["db"], 0, "app 'db' is not part of plan web-only (it allows: web)"),
    (WEB_ONLY, ["web"], 1, "plan web-only allows 1 app(s) (1 installed)"),
    (PlanConfig(name="two", quota=1 << 30, max_apps=2), ["a", "b", "c"], 0, "plan two allows 2 app(s)"),
    (LARGE, ["anything", "else"], 9, None),
])
def test_check_apps_allowed(plan: PlanConfig, apps: list[str], installed: int, message: str | None) -> None:
    if message is None:
        planchange.check_apps_allowed(plan, apps, installed)
    else:
        with pytest.raises(BadInput) as exc:
            planchange.check_apps_allowed(plan, apps, installed)
        assert str(exc.value) == message


def test_slot_lock_serializes_and_survives_removal_of_its_file(tmp_path: Path) -> None:
    import threading

    ctx: Any = SimpleNamespace(config=SimpleNamespace(state_dir=tmp_path))
    inside: list[int] = []
    overlaps: list[int] = []

    def worker(i: int) -> None:
        for _ in range(20):
            with slotlock.slot_lock(ctx, "tlx"):
                inside.append(i)
                if len(inside) > 1:
                    overlaps.append(i)
                inside.remove(i)
                if i == 0:
                    # As terminate does: the last thing under the lock (the slot is gone by then),
                    # so a newcomer that locks the new file overlaps nothing of the work.
                    slotlock.drop_lock_file(ctx, "tlx")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps == []
    with pytest.raises(BadInput):
        with slotlock.slot_lock(ctx, "../etc"):
            pass


def test_slot_lock_is_reentrant_in_its_thread_and_exclusive_across_threads(tmp_path: Path) -> None:
    """An operation holding the lock may call another that takes it (a slot removal uninstalls
    its apps); another thread still waits."""
    import threading

    ctx: Any = SimpleNamespace(config=SimpleNamespace(state_dir=tmp_path))
    entered = threading.Event()
    with slotlock.slot_lock(ctx, "tlx"):
        with slotlock.slot_lock(ctx, "tlx"):  # no self-deadlock
            pass
        other = threading.Thread(target=lambda: (slotlock.slot_lock(ctx, "tlx").__enter__(), entered.set()))
        other.start()
        assert not entered.wait(0.3)  # blocked while this thread holds it
    assert entered.wait(10)
    other.join()
