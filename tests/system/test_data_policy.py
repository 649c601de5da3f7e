"""The data report answers every item of the policy, and retention covers every period, for real.

A real slot; auth logs written where ``[report] auth_logs`` points (plain and rotated .gz, with a
user whose name extends the slot's); an app's rows in the apps registry, its log files in the
home (and a planted link to /etc/shadow among them) and in the supervisor's log directory.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.apps import registry_of
from provisioner.supervisor import supervisor_for
from tests.system.fixtures.hosts import SlotHost
from tests.system.fixtures.policy import make_slot, policy_host
from tests.system.fixtures.processes import as_user

pytestmark = pytest.mark.root
POLICY_ITEMS = ["email", "username", "country", "client-area password", "slot password", "application passwords",
                "payment reference", "failed login attempts", "per-slot metrics", "sshd logs", "system logs",
                "app logs, installed app files", "user data, bash history", "support grants", "takedown notices",
                "audit entries"]


@pytest.fixture(scope="module")
def host() -> Iterator[SlotHost]:
    with policy_host("datapolicy", lambda base: f'[report]\nauth_logs = ["{base}/log/auth.log", '
                                                f'"{base}/log/auth.log.*"]\njournal = false\n') as h:
        yield h


def test_report_has_every_policy_item_with_values_or_not_held(host: SlotHost) -> None:
    name = make_slot(host)
    logs = host.base / "log"
    logs.mkdir()
    (logs / "auth.log").write_text(
        f"Dec  1 10:00:00 h sshd[10]: Failed password for {name} from 198.51.100.7 port 2 ssh2\n"
        f"Dec  1 10:00:01 h sshd[11]: Accepted password for {name}2 from 198.51.100.8 port 2 ssh2\n"
        f"Dec  1 10:00:02 h sudo: pam_unix(sudo:session): session opened for user {name}(uid=0)\n"
        f"Dec  1 10:00:03 h sshd[12]: pam_unix(sshd:session): session opened for user {name}(uid=1) by (uid=0)\n")
    with gzip.open(logs / "auth.log.2.gz", "wt") as f:
        f.write(f"Nov 20 10:00:00 h sshd[9]: Invalid user {name} from 198.51.100.9 port 3\n")

    ctx = host.ctx()
    try:
        reg = registry_of(ctx)
        reg.begin_install(name, "transmission", None)
        reg.set_state(name, "transmission", "installed")
        log_dir = getattr(supervisor_for(ctx), "log_dir", None)
    finally:
        ctx.close()
    as_user(name, "mkdir -p ~/apps/transmission/logs; echo err > ~/apps/transmission/logs/error.log; "
                  "ln -s /etc/shadow ~/apps/transmission/logs/shadow.log")
    assert isinstance(log_dir, Path)
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / f"slotwarden-transmission@{name}.log").write_text("started\n")
    orphan = log_dir / f"slotwarden-jupyterlab@{name}.log"
    orphan.write_text("left behind\n")

    out = host.slotctl("--json", "data", "report", name)
    assert out.returncode == 0, out.stderr
    items = {i["item"]: i for i in json.loads(out.stdout)["items"]}
    for item in POLICY_ITEMS:
        assert item in items, item
        assert items[item]["value"] not in (None, "", [], {}), item
        assert items[item]["stored"] and items[item]["kept"], item
    assert items["client-area password"]["value"].startswith("not held")
    sshd = items["sshd logs"]["value"]
    assert sshd["auth log lines (sshd) naming the user"] == 3  # not the sudo line, not NAME2's
    assert sshd["per file"] == {str(logs / "auth.log"): 2, str(logs / "auth.log.2.gz"): 1}
    assert "198.51.100.7" not in out.stdout  # counted, never copied
    assert items["system logs"]["value"].startswith("none per user")
    app = items["app logs, installed app files"]["value"][0]
    assert app["app"] == "transmission"
    assert app["log files in the app's directory"] == [{"file": "logs/error.log", "bytes": 4}]
    assert app["supervisor logs"] == [{"file": str(log_dir / f"slotwarden-transmission@{name}.log"), "bytes": 8}]
    assert items["support grants"]["value"].startswith("not held")
    assert items["takedown notices"]["value"].startswith("not held")
    assert "root:" not in out.stdout  # the planted link to /etc/shadow was never read

    dry = json.loads(host.slotctl("--json", "retention", "run", "--dry-run").stdout)
    rules = {r["rule"]: r for r in dry["rules"]}
    assert set(rules) >= {"attempts", "app-credentials", "kept-homes", "app-logs", "support-grants", "notices"}
    assert rules["app-logs"]["removed"] == [str(orphan)] and orphan.exists()
    run = json.loads(host.slotctl("--json", "retention", "run").stdout)
    assert {r["rule"]: r for r in run["rules"]}["app-logs"]["count"] == 1
    assert not orphan.exists() and (log_dir / f"slotwarden-transmission@{name}.log").exists()
