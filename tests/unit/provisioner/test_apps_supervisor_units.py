"""The supervisor backends' rendering and parsing, as data (no supervisor is started here)."""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provisioner.errors import BadInput
from provisioner.supervisor import Program, load_supervisor
from provisioner.supervisor.confine import INSTALLED
from provisioner.supervisor.supervisord import Supervisord, render_program
from provisioner.supervisor.systemd import parse_status, render_dropin, render_template

CONFINE = str(INSTALLED)


def _prog(**kw: object) -> Program:
    base: dict[str, object] = {"app": "transmission", "user": "alice", "argv": ["/usr/bin/x", "-f", "a b"],
                               "cwd": "/home/alice/apps/transmission"}
    base.update(kw)
    return Program(**base)  # type: ignore[arg-type]


def test_program_name_is_the_systemd_instance_name() -> None:
    assert _prog().name == "slotwarden-transmission@alice"


@pytest.mark.parametrize(("field", "value"), [
    ("app", "Bad"), ("app", ""), ("user", "a/b"), ("user", "x y"), ("argv", ["relative"]), ("argv", []),
    ("environment", {"lower": "x"}), ("environment", {"A": "multi\nline"}),
])
def test_program_rejects(field: str, value: object) -> None:
    with pytest.raises(BadInput):
        _prog(**{field: value})


def test_supervisord_section_parses_back() -> None:
    text = render_program(_prog(environment={"PORT": "20001", "PCT": "50%"}), Path("/s/logs"))
    cp = configparser.RawConfigParser()
    cp.read_string(text)
    sec = cp["program:slotwarden-transmission@alice"]
    # Started as root through the seccomp wrapper, which drops to alice after the filter.
    assert "user" not in sec
    assert shlex.split(sec["command"]) == [CONFINE, "--user", "alice", "--", "/usr/bin/x", "-f", "a b"]
    assert 'USER="alice"' in sec["environment"] and 'LOGNAME="alice"' in sec["environment"]
    assert sec["autorestart"] == "true"
    assert 'PCT="50%%"' in sec["environment"]  # supervisord would expand a bare %
    assert sec["stdout_logfile"] == "/s/logs/slotwarden-transmission@alice.log"


def test_supervisord_env_file_is_read_by_a_wrapper_not_put_on_the_command_line() -> None:
    text = render_program(_prog(env_file="/home/alice/.env"), Path("/l"))
    command = next(line for line in text.splitlines() if line.startswith("command="))
    # The env file is read by a shell that runs as alice (after the wrapper's drop), never by root.
    assert "/home/alice/.env" in command
    assert command.startswith(f"command={CONFINE} --user alice -- /bin/sh -c")


@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\n\r"),
                        max_size=12), min_size=0, max_size=4))
def test_supervisord_command_round_trips(args: list[str]) -> None:
    text = render_program(_prog(argv=["/bin/echo", *args]), Path("/l"))
    cp = configparser.RawConfigParser()
    cp.read_string(text)
    command = cp["program:slotwarden-transmission@alice"]["command"].replace("%%", "%")
    assert shlex.split(command) == [CONFINE, "--user", "alice", "--", "/bin/echo", *args]


def test_long_state_dir_gets_a_short_socket() -> None:
    s = Supervisord(Path("/tmp/" + "d" * 120))
    assert len(str(s.socket)) <= 100 and str(s.socket).startswith("/run/")
    assert Supervisord(Path("/var/lib/slotwarden")).socket == Path("/var/lib/slotwarden/supervisor/supervisor.sock")


def test_systemd_units() -> None:
    tmpl = render_template("jupyterlab")
    assert "User=%i" in tmpl and "Restart=always" in tmpl and "WantedBy=multi-user.target" in tmpl
    assert "After=network.target slotwarden-slot-tmp.service" in tmpl  # the slots' tmpfs are back first
    drop = render_dropin(_prog(argv=["/opt/x", "100%"], environment={"A": 'q"uote'}))
    # As root ("!": the template's sandboxing holds), the wrapper binds the slot's /tmp and drops to it.
    assert f'ExecStart=!"{CONFINE}" "--user" "alice" "--" "/opt/x" "100%%"' in drop
    assert 'Environment="A=q\\"uote"' in drop
    assert "ExecStart=\n" in drop  # resets the template's (empty) ExecStart
    # ExecStart= expands $NAME itself: a shell's "$0"/"$@" must reach the shell as written;
    # Environment= expands nothing, so its $ stays single.
    drop = render_dropin(_prog(argv=["/bin/sh", "-c", 'exec "$@"', "$HOME"], environment={"B": "a$b"}))
    assert f'ExecStart=!"{CONFINE}" "--user" "alice" "--" "/bin/sh" "-c" "exec \\"$$@\\"" "$$HOME"' in drop
    assert 'Environment="B=a$b"' in drop


def test_systemd_dropin_names_the_tmpfs_root_and_never_changes_with_the_plan() -> None:
    """A plan's tmp_size is the wrapper's to find at each start: nothing of it is in the unit (no reload)."""
    prog = _prog(tmpfs_root="/srv/state/slot-tmp")
    drop = render_dropin(prog)
    assert f'ExecStart=!"{CONFINE}" "--user" "alice" "--tmpfs-root" "/srv/state/slot-tmp" "--"' in drop
    assert "PrivateTmp" not in drop and "BindPaths" not in drop


def test_systemd_root_programs_keep_the_wrapper_without_a_user() -> None:
    drop = render_dropin(_prog(user="root", argv=["/usr/bin/python3", "-m", "x"]))
    assert f'ExecStart="{CONFINE}" "--" "/usr/bin/python3" "-m" "x"' in drop and "--user" not in drop


@pytest.mark.parametrize(("props", "running", "pid", "since", "state"), [
    ({"LoadState": "loaded", "ActiveState": "active", "MainPID": "42", "ExecMainStartTimestamp": "@1700000000"},
     True, 42, 1700000000.0, "active"),
    ({"LoadState": "loaded", "ActiveState": "failed", "MainPID": "0", "ExecMainStartTimestamp": ""},
     False, None, None, "failed"),
    ({"LoadState": "not-found", "ActiveState": "inactive", "MainPID": "0"}, False, None, None, "absent"),
])
def test_systemd_status(props: dict[str, str], running: bool, pid: int | None, since: float | None,
                        state: str) -> None:
    st_ = parse_status("slotwarden-x@a", props)
    assert (st_.running, st_.pid, st_.since, st_.state) == (running, pid, since, state)


def test_unknown_backend_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BadInput):
        load_supervisor("runit", tmp_path)


def test_root_programs_start_without_the_wrapper() -> None:
    text = render_program(_prog(user="root", argv=["/usr/bin/python3", "-m", "x"]), Path("/l"))
    cp = configparser.RawConfigParser()
    cp.read_string(text)
    sec = cp["program:slotwarden-transmission@root"]
    assert sec["user"] == "root" and shlex.split(sec["command"]) == ["/usr/bin/python3", "-m", "x"]
