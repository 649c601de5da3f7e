"""`slotctl guard supervise`: the guard service under supervisord survives a crash."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from pam_hooks.client import request
from provisioner.supervisor.supervisord import Supervisord
from tests.system.fixtures.guard import GuardEnv
from tests.system.fixtures.processes import wait_for

pytestmark = pytest.mark.root


@pytest.fixture
def env() -> Iterator[GuardEnv]:
    e = GuardEnv({"pair_deny": 2})
    try:
        yield e
    finally:
        Supervisord(e.cfg.state_dir).shutdown()
        e.close()


def _pid(env: GuardEnv) -> int | None:
    try:
        return int(env.json("status")["service"].get("pid") or 0) or None
    except Exception:
        return None


def test_supervised_guard_restarts_after_kill(env: GuardEnv) -> None:
    dry = env.json("supervise", "--dry-run")
    assert dry["program"] == "slotwarden-guard@root" and dry["supervisor"] == "supervisord"
    out = env.json("supervise")
    assert out["status"]["running"] is True and out["changed"] is True
    wait_for(lambda: _pid(env) is not None)
    pid = _pid(env)
    assert pid is not None
    assert request(env.cfg.socket, 'JSON\t{"op": "ping"}').endswith('"pong"}')
    keeper = out["status"]["pid"]  # supervisord runs the socket keeper; it runs serve
    assert keeper != pid
    os.kill(pid, signal.SIGKILL)  # a crash of the service: the keeper starts it again
    wait_for(lambda: _pid(env) not in (None, pid), timeout=30)
    again = env.json("supervise")  # idempotent: the running program is kept
    assert again["status"]["pid"] == keeper and again["changed"] is False, again
    served = _pid(env)
    os.kill(keeper, signal.SIGKILL)  # a crash of the keeper itself: supervisord starts it again
    wait_for(lambda: _pid(env) not in (None, served), timeout=30)
    assert env.json("supervise")["status"]["pid"] != keeper
