"""The shipped Prometheus rules: valid, their unit tests pass (promtool), and every metric they
read is one slotwarden exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from provisioner.metrics import health
from provisioner.metrics.prometheus import render

RULES = Path(__file__).resolve().parents[3] / "monitoring" / "slotwarden.rules.yml"
TESTS = RULES.with_name("slotwarden.rules.test.yml")


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: `make deps` installs Debian's prometheus package", pytrace=False)
    return path


@pytest.mark.parametrize("argv", [["check", "rules", str(RULES)], ["test", "rules", str(TESTS)]])
def test_promtool(argv: list[str]) -> None:
    out = subprocess.run([promtool(), *argv], capture_output=True, text=True, timeout=120, cwd=RULES.parent)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout + out.stderr


def test_every_metric_a_rule_reads_is_exported() -> None:
    exported = set(re.findall(r"slotwarden_\w+", render([]))) | set(
        re.findall(r"slotwarden_\w+", Path(health.__file__).read_text()))
    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    used = {m for r in rules for m in re.findall(r"slotwarden_\w+", r["expr"])}
    assert used and used <= exported, used - exported


def test_every_alert_has_a_test_case() -> None:
    alerts = {r["alert"] for r in yaml.safe_load(RULES.read_text())["groups"][0]["rules"]}
    tested = {t["alertname"] for case in yaml.safe_load(TESTS.read_text())["tests"] for t in case["alert_rule_test"]}
    assert alerts == tested, alerts ^ tested


def test_the_server_error_rules_read_the_series_health_exports_for_the_hub_and_the_api() -> None:
    exported = {(s.name, s.labels["service"], s.labels["code"]) for s in health.ResponseCounter().samples()}
    assert {("slotwarden_http_responses_total", svc, "5xx") for svc in ("api", "hub")} <= exported
    cases = yaml.safe_load(TESTS.read_text())["tests"]
    series = {s["series"] for case in cases for s in case["input_series"]}
    hub_5xx = [s for s in series if s.startswith("slotwarden_http_responses_total{")
               and 'service="hub"' in s and 'code="5xx"' in s]
    fired = {t["alertname"] for case in cases for t in case["alert_rule_test"] for a in t.get("exp_alerts", [])
             if a["exp_labels"].get("service") == "hub"}
    assert hub_5xx and fired == {"SlotwardenServerErrors", "SlotwardenServerErrorSeen"}
