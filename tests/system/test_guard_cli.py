"""slotctl guard: exit codes, one-line errors, --json shapes (the service down: direct store)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.system.fixtures.guard import GuardEnv

pytestmark = pytest.mark.root


@pytest.fixture
def env() -> Iterator[GuardEnv]:
    e = GuardEnv({"pair_deny": 2})
    try:
        yield e
    finally:
        e.close()


@pytest.mark.parametrize(("args", "code", "message"), [
    (["lift"], 2, "give --user, --ip or both"),
    (["forget", "--user", "a", "--ip", "198.51.100.1"], 2, "exactly one of"),
    (["explain", "--user", "bob", "--ip", "not-an-ip"], 2, "--ip"),
    (["list", "--user", "x" * 800], 2, "--user"),
    (["uninstall", "--service", "slotwarden-test-none"], 1, "does not exist"),
    (["install", "--service", "../etc/passwd", "--no-supervise"], 1, "invalid PAM service name"),
])
def test_errors_are_one_line_with_exit_code(env: GuardEnv, args: list[str], code: int, message: str) -> None:
    r = env.slotctl(*args, check=False)
    assert r.returncode == code
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.stderr


def test_bad_config_names_the_key(env: GuardEnv) -> None:
    env.config.write_text(env.config.read_text().replace("pair_deny = 2", "pair_deny = 0"))
    r = env.slotctl("status", check=False)
    assert r.returncode == 2 and "guard.pair_deny" in r.stderr


def test_status_says_down_in_one_line(env: GuardEnv) -> None:
    """Nothing decides logins: status must not look healthy (it printed the store and exited 0)."""
    r = env.slotctl("status", check=False)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stdout == "" and len(r.stderr.strip().splitlines()) == 1 and "guard: down" in r.stderr
    r = env.slotctl("status", "--json", check=False)
    assert r.returncode == 1 and json.loads(r.stdout)["ok"] is False
    env.start()
    r = env.slotctl("status")
    assert r.stdout.splitlines()[0].startswith("guard: up (pid ")
    assert env.json("status")["state"] == "up"


def test_json_everywhere_with_service_down(env: GuardEnv) -> None:
    assert env.json("list") == []
    ex = env.json("explain", "--user", "bob", "--ip", "198.51.100.5")
    assert ex["allowed"] is True and ex["counts"]["pair"]["limit"] == 2
    assert env.json("lift", "--ip", "198.51.100.5") == {"lifted": 0}
    assert env.json("forget", "--user", "bob") == {"deleted": 0}
    assert env.json("purge") == {"deleted": 0}
    # explain takes a local origin (the caller behind su/sudo/login)
    r = env.slotctl("explain", "--user", "bob", "--ip", "local:alice", "--json")
    assert json.loads(r.stdout)["ip"] == "local:alice"
