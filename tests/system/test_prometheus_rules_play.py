"""site.yml's Prometheus play, run for real over the local connection: check mode changes
nothing, the first run installs the rules (promtool validates them), the second changes nothing,
and a broken rules file is refused without replacing the good one."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PLAYBOOK = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin" / "ansible-playbook"
RULES = REPO / "monitoring" / "slotwarden.rules.yml"

pytestmark = pytest.mark.root


def play(tmp_path: Path, *extra: str, src: Path = RULES) -> dict[str, int]:
    """Run site.yml's Prometheus play on localhost; the recap of localhost."""
    variables = {"slotwarden_hosts": "no_such_group", "slotwarden_prometheus_hosts": "localhost",
                 "slotwarden_prometheus_rules_dir": str(tmp_path / "rules"),
                 "slotwarden_prometheus_rules_src": str(src), "slotwarden_prometheus_reload": False,
                 "ansible_python_interpreter": "/usr/bin/python3"}
    env = {**os.environ, "ANSIBLE_LOCALHOST_WARNING": "false",
           "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false", "ANSIBLE_NOCOLOR": "1"}
    out = subprocess.run([str(PLAYBOOK), "-i", "localhost,", "-c", "local", str(REPO / "playbooks" / "site.yml"),
                          "-e", json.dumps(variables), *extra], capture_output=True, text=True, env=env, timeout=600)
    recap = re.search(r"^localhost\s*:\s*(.*)$", out.stdout, re.M)
    assert recap, out.stdout + out.stderr
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", recap.group(1))}


def test_prometheus_play_installs_validated_rules_idempotently(tmp_path: Path) -> None:
    target = tmp_path / "rules" / "slotwarden.rules.yml"
    checked = play(tmp_path, "--check")
    assert checked["failed"] == 0 and checked["changed"] >= 1 and not target.exists()
    first = play(tmp_path)
    assert first["failed"] == 0 and first["changed"] >= 1
    assert target.read_text() == RULES.read_text() and target.stat().st_mode & 0o777 == 0o644
    again = play(tmp_path)
    assert again["failed"] == 0 and again["changed"] == 0

    broken = tmp_path / "broken.yml"
    broken.write_text("groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: 'rate(('\n")
    refused = play(tmp_path, src=broken)
    assert refused["failed"] == 1
    assert target.read_text() == RULES.read_text()
