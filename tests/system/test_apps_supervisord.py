"""supervisord for real: start it, run a program as a user, see it restarted after a kill."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.supervisor import Program
from provisioner.supervisor.supervisord import Supervisord

pytestmark = pytest.mark.root


@pytest.fixture
def supervisord(tmp_path: Path) -> Iterator[Supervisord]:
    if os.geteuid() != 0:
        pytest.fail("system tests run as root")
    sd = Supervisord(tmp_path / "state")
    try:
        yield sd
    finally:
        sd.shutdown()


def _wait_new_pid(sd: Supervisord, name: str, old: int) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        st = sd.status(name)
        if st.running and st.pid not in (None, old):
            assert st.pid is not None
            return st.pid
        time.sleep(0.1)
    raise AssertionError(f"{name} was not restarted")


def test_program_lifecycle(supervisord: Supervisord) -> None:
    sd = supervisord
    sd.ensure_running()
    sd.ensure_running()  # idempotent: still one supervisord
    assert sd.is_running()
    assert oct(sd.config_dir.stat().st_mode & 0o777) == "0o700"
    prog = Program(app="tasleep", user="nobody", argv=["/bin/sleep", "1000"], cwd="/",
                   environment={"MARK": "slotwarden-test"})
    sd.ensure_program(prog)
    st = sd.status(prog.name)
    assert st.running and st.pid and st.since
    assert os.stat(f"/proc/{st.pid}").st_uid == 65534  # runs as the user, not root
    environ = Path(f"/proc/{st.pid}/environ").read_bytes().split(b"\0")
    assert b"MARK=slotwarden-test" in environ

    os.kill(st.pid, signal.SIGKILL)
    new_pid = _wait_new_pid(sd, prog.name, st.pid)

    sd.ensure_program(prog)  # unchanged definition: not restarted
    assert sd.status(prog.name).pid == new_pid
    sd.ensure_program(Program(app="tasleep", user="nobody", argv=["/bin/sleep", "1001"], cwd="/"))
    assert sd.status(prog.name).pid != new_pid  # changed definition: restarted

    sd.stop(prog.name)
    assert not sd.status(prog.name).running
    sd.start(prog.name)
    assert sd.status(prog.name).running
    assert sd.programs() == [prog.name]

    last = sd.status(prog.name).pid
    sd.remove_program(prog.name)
    sd.remove_program(prog.name)  # absent is fine
    assert not sd.status(prog.name).known
    assert last is not None and not Path(f"/proc/{last}").exists()
    assert sd.programs() == []


def test_programs_come_back_when_supervisord_restarts(supervisord: Supervisord) -> None:
    sd = supervisord
    prog = Program(app="tasleep", user="nobody", argv=["/bin/sleep", "1000"], cwd="/")
    sd.ensure_program(prog)  # starts supervisord itself when needed
    sd.shutdown()
    assert not sd.is_running()
    sd.ensure_running()  # what host init does after a reboot
    assert sd.wait_running(prog.name).running


def test_supervisord_exits_when_its_state_dir_is_removed(tmp_path: Path) -> None:
    import shutil

    sd = Supervisord(tmp_path / "gone" / "state")
    try:
        prog = Program(app="tasleep", user="nobody", argv=["/bin/sleep", "1000"], cwd="/")
        sd.ensure_program(prog)
        pid = int((sd.config_dir / "supervisord.pid").read_text())
        child = sd.status(prog.name).pid
        shutil.rmtree(tmp_path / "gone")
        deadline = time.monotonic() + 60
        while Path(f"/proc/{pid}").exists() or Path(f"/proc/{child}").exists():
            assert time.monotonic() < deadline, "supervisord outlived its state dir"
            time.sleep(0.2)
    finally:
        sd.shutdown()


@pytest.mark.parametrize("argv", [
    ["/usr/bin/transmission-daemon", "--foreground", "--config-dir", "/tmp/a b"],
    # WordPress's nginx: a shell removes a stale socket first ($0, $@ must stay the shell's)
    ["/bin/sh", "-c", '/bin/rm -f -- "$0" && exec "$@"', "/var/lib/slotwarden-apps/a/wordpress/http.sock",
     "/usr/sbin/nginx", "-c", "/tmp/nginx.conf"],
])
def test_systemd_units_pass_systemd_analyze_verify(tmp_path: Path, argv: list[str]) -> None:
    """The template and drop-in as systemd itself parses them (no systemd PID 1 needed)."""
    import subprocess

    from provisioner.supervisor.confine import confine_wrapper
    from provisioner.supervisor.systemd import render_dropin, render_template

    prog = Program(app="transmission", user="daemon", cwd="/tmp", environment={"PCT": "100%"}, argv=argv)
    (tmp_path / "slotwarden-transmission@.service").write_text(render_template("transmission"))
    (tmp_path / f"{prog.name}.service.d").mkdir()
    (tmp_path / f"{prog.name}.service.d" / "slotwarden.conf").write_text(render_dropin(prog, confine_wrapper()))
    out = subprocess.run(["systemd-analyze", "verify", f"{prog.name}.service"], capture_output=True, text=True,
                         env={**os.environ, "SYSTEMD_UNIT_PATH": f"{tmp_path}:"}, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "Unknown" not in out.stderr and "bad" not in out.stderr.lower()
