"""A backend is one file: a fake backend added to a map (handed in, never patched into a module)
is offered by the CLI, detected, planned for by host init, read by the metrics, and the fleet
path goes through the executors' map."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
from click.testing import CliRunner

from provisioner.cli import cli
from provisioner.errors import BadInput
from provisioner.executors import EXECUTORS, FLEET_EXECUTOR, SlotChange, SlotOutcome
from provisioner.metrics.disk import usage_all
from provisioner.quota import BACKENDS, Usage, detect_backend, loopback_backends
from provisioner.steps import Step
from provisioner.store import SlotRecord

HERE = __name__
PREPARED: list[str] = []


class FakeQuota:
    """A quota backend that suits every filesystem and accounts 7 bytes per slot."""

    name = "fake"
    requirement = "on a fake filesystem"
    loopback_fstype = None
    usage_source = "the fake's own figures"

    def __init__(self, slots_root: Path, **_options: object) -> None:
        self.slots_root = slots_root

    def suits(self) -> bool:
        return True

    def host_steps(self) -> list[Step]:
        return [Step("fake-quota", f"prepare the fake accounting of {self.slots_root}",
                     lambda: PREPARED.append(str(self.slots_root)))]

    def bulk_usage(self, records: Sequence[SlotRecord], fresh: bool) -> dict[str, tuple[Usage | None, str]]:
        return {r.username: (Usage(7, None), "one fake pass") for r in records if r.username == "alice"}

    def usage(self, username: str, home: Path) -> Usage:
        return Usage(1, None)


class NeverQuota(FakeQuota):
    """A quota backend no filesystem suits."""

    name = "never"
    requirement = "on a filesystem that does not exist"

    def suits(self) -> bool:
        return False


FAKE = {"fake": f"{HERE}:FakeQuota", **BACKENDS}


def _config(tmp_path: Path) -> dict[str, str]:
    cfg = tmp_path / "slotwarden.toml"
    cfg.write_text(f'state_dir = "{tmp_path / "state"}"\n')
    return {"SLOTWARDEN_CONFIG": str(cfg)}


def test_the_cli_offers_a_backend_added_to_the_map_it_is_handed() -> None:
    offered = CliRunner().invoke(cli, ["host", "init", "--help"], obj={"quota_backends": FAKE})
    assert offered.exit_code == 0, offered.output
    assert "[auto|fake|btrfs|usrquota|none]" in offered.output
    plain = CliRunner().invoke(cli, ["host", "init", "--help"])
    assert "[auto|btrfs|usrquota|none]" in plain.output
    assert "fake" not in BACKENDS  # nothing was patched into the module


def test_host_init_plans_the_steps_the_fake_backend_owns(tmp_path: Path) -> None:
    root = tmp_path / "slots"
    out = CliRunner().invoke(cli, ["host", "init", "--quota-backend", "fake", "--slots-root", str(root),
                                   "--no-hidepid", "--no-persist", "--dry-run", "--json"],
                             obj={"quota_backends": FAKE}, env=_config(tmp_path))
    assert out.exit_code == 0, out.output
    steps = {s["step"]: s["detail"] for s in json.loads(out.output)["steps"]}
    assert steps["fake-quota"] == f"prepare the fake accounting of {root}"
    assert "quota" not in steps  # no other backend's step
    assert PREPARED == [] and not root.exists()  # a dry run changes nothing


def test_the_cli_refuses_a_backend_missing_from_the_map(tmp_path: Path) -> None:
    out = CliRunner().invoke(cli, ["host", "init", "--quota-backend", "fake", "--dry-run"], env=_config(tmp_path))
    assert out.exit_code == 2 and "'fake' is not one of 'auto', 'btrfs', 'usrquota', 'none'" in out.output


def test_host_init_refuses_a_filesystem_the_backend_does_not_suit(tmp_path: Path) -> None:
    out = CliRunner().invoke(cli, ["host", "init", "--quota-backend", "never", "--slots-root", str(tmp_path / "s"),
                                   "--no-hidepid", "--no-persist", "--dry-run"],
                             obj={"quota_backends": {"never": f"{HERE}:NeverQuota", **BACKENDS}}, env=_config(tmp_path))
    assert out.exit_code == 1
    assert f"{tmp_path / 's'} is not on a filesystem that does not exist" in out.output


DETECT = [
    ({"fake": f"{HERE}:FakeQuota", "none": BACKENDS["none"]}, "fake"),
    ({"never": f"{HERE}:NeverQuota", "none": BACKENDS["none"]}, "none"),
    ({"never": f"{HERE}:NeverQuota", "fake": f"{HERE}:FakeQuota"}, "fake"),
]


@pytest.mark.parametrize(("backends", "expected"), DETECT)
def test_detection_asks_the_backends_in_map_order(tmp_path: Path, backends: dict[str, str], expected: str) -> None:
    assert detect_backend(tmp_path, backends) == expected


def test_detection_without_a_suitable_backend_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="no quota backend suits"):
        detect_backend(tmp_path, {"never": f"{HERE}:NeverQuota"})


def test_only_backends_that_make_a_filesystem_offer_a_loopback_image() -> None:
    assert loopback_backends(FAKE) == ["btrfs"]
    assert loopback_backends({"fake": f"{HERE}:FakeQuota"}) == []


class _Ctx:
    """What usage_all reads of a Context."""

    quota = FakeQuota(Path("/nonexistent"))


def test_metrics_take_the_backends_bulk_pass_and_ask_it_for_the_rest(tmp_path: Path) -> None:
    (tmp_path / "missed").mkdir()
    recs = [SlotRecord(n, 70000, f"{n}@example.com", "DE", None, None, str(tmp_path / n), "active", 0.0)
            for n in ("alice", "missed", "gone")]
    got = usage_all(_Ctx(), recs)  # type: ignore[arg-type]
    assert got == {"alice": (Usage(7, None), "one fake pass"),
                   "missed": (Usage(1, None), "the fake's own figures"),
                   "gone": (None, "unavailable")}


APPLIED: list[tuple[str, list[str], list[SlotChange]]] = []


class FakeFleet:
    """An executor that records what it was asked to apply."""

    name = "fake-fleet"

    def __init__(self, inventory: str, hosts: list[str], progress: object = None) -> None:
        self.inventory, self.hosts = inventory, hosts

    def apply(self, changes: list[SlotChange], *, check: bool = False) -> list[SlotOutcome]:
        APPLIED.append((self.inventory, self.hosts, changes))
        return [SlotOutcome(h, c.username, "created", True, {"home": f"/srv/slots/{c.username}"}, password="pw")
                for h in self.hosts for c in changes]


def test_the_fleet_path_goes_through_the_executors_map(tmp_path: Path) -> None:
    inventory = tmp_path / "fleet.ini"
    inventory.write_text("[slotwarden]\nweb1\n")
    out = CliRunner().invoke(cli, ["--inventory", str(inventory), "slot", "create", "alice", "--host", "web1",
                                   "--email", "a@example.com", "--country", "DE", "--json"],
                             obj={"executors": {**EXECUTORS, FLEET_EXECUTOR: f"{HERE}:FakeFleet"}},
                             env=_config(tmp_path))
    assert out.exit_code == 0, out.output
    [result] = json.loads(out.output)["results"]
    assert (result["host"], result["username"], result["action"]) == ("web1", "alice", "created")
    [(inv, hosts, [change])] = APPLIED
    assert (inv, hosts, change.username, change.email) == (str(inventory), ["web1"], "alice", "a@example.com")
    assert EXECUTORS[FLEET_EXECUTOR] == "provisioner.executors.ansible:AnsibleExecutor"
