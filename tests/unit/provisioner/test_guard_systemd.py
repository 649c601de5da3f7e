"""`guard supervise` under systemd: the socket and service units written once, enabled, restarted on change."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pam_hooks.config import GuardConfig
from provisioner import guard, runner


def test_units_written_enabled_and_left_alone_when_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def fake_run(argv: list[str], **_kw: object) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, "active\n", "")

    monkeypatch.setattr(runner, "run", fake_run)
    cfg_file = tmp_path / "slotwarden.toml"
    cfg_file.write_text("")
    out = guard.supervise_guard_systemd(GuardConfig(), cfg_file, unit_dir=tmp_path)
    sock = (tmp_path / "slotwarden-guard.socket").read_text()
    svc = (tmp_path / "slotwarden-guard.service").read_text()
    assert "ListenStream=/run/slotwarden/guard.sock" in sock and "Before=ssh.service" in sock
    assert f"--config {cfg_file}" in svc and "@" not in svc.replace("@-placeholders", "")
    assert out["changed"] is True and out["status"]["running"] is True
    assert calls == [["systemctl", "daemon-reload"],
                     ["systemctl", "enable", "--now", "slotwarden-guard.socket", "slotwarden-guard.service"],
                     ["systemctl", "restart", "slotwarden-guard.service"],
                     ["systemctl", "is-active", "slotwarden-guard.service"]]
    calls.clear()
    again = guard.supervise_guard_systemd(GuardConfig(), cfg_file, unit_dir=tmp_path)
    assert again["changed"] is False and ["systemctl", "daemon-reload"] not in calls
    assert ["systemctl", "restart", "slotwarden-guard.service"] not in calls
    dry = guard.supervise_guard_systemd(GuardConfig(socket=Path("/run/other.sock")), cfg_file, unit_dir=tmp_path,
                                        dry_run=True)
    assert dry["changed"] is True and "/run/other.sock" not in (tmp_path / "slotwarden-guard.socket").read_text()


@pytest.mark.parametrize("bad", ["relative/python", "/path with space/python", "/p%h/python"])
def test_unit_paths_refused(tmp_path: Path, bad: str) -> None:
    from pam_hooks.install import InstallError, systemd_units

    with pytest.raises(InstallError):
        systemd_units(GuardConfig(), bad, "/opt/sw", "/etc/x.toml")
