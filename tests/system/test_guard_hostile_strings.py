"""Attacker-chosen usernames and rhosts are data everywhere: real PAM module -> guard -> CLI, JSON and syslog.

Hypothesis picks usernames and PAM_RHOST values (control bytes, escape sequences,
Rich markup such as ``[/x]`` and ``[link=...]``, invalid UTF-8, 300 bytes). Each
goes through this checkout's pam_slotwarden.so in a real PAM stack, twice
(``pair_deny = 1``, so the second try is refused and the module logs it). Then:
``guard list`` (table and ``--json``) and ``guard explain`` must not crash, must
show the recorded (escaped) value verbatim and contain no escape byte; every
syslog line of the module and of the service must be printable ASCII.

The module's syslog(3) goes to /dev/log: the tries run in a private mount
namespace whose /dev is an overlay with /dev/log pointing at the test's own
socket (this machine's /dev is never touched). The service is pointed at
another test socket with ``guard.syslog_socket``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pam_hooks.policy import local_origin
from pam_hooks.protocol import escape
from tests.system.fixtures.guard import GuardEnv, SyslogSink
from tests.system.fixtures.hosts import REPO
from tests.system.fixtures.processes import wait_for

pytestmark = [pytest.mark.root]

INSIDE = r"""
import json, os, subprocess, sys
t, sink = sys.argv[1:3]
subprocess.run(["mount", "-t", "tmpfs", "tmpfs", t], check=True)
os.makedirs(f"{t}/up"), os.makedirs(f"{t}/work")
subprocess.run(["mount", "-t", "overlay", "overlay", "-o", f"lowerdir=/dev,upperdir={t}/up,workdir={t}/work",
                "/dev"], check=True)
os.symlink(sink, "/dev/log")
from tests.system.pamclient import PamHandle
service = sys.argv[3]
for user, rhost in json.load(sys.stdin):
    for _ in range(2):
        with PamHandle(service, bytes.fromhex(user), bytes.fromhex(rhost), "wrong", no_delay=True) as h:
            h.authenticate()
"""

MARKUP = [b"[/x]", b"[link=https://evil.example]click me[/link]", b"[bold red]root[/]", b"\x1b[31mred\x1b[0m",
          b"\x1b]8;;https://evil.example\x1b\\x\x1b]8;;\x1b\\", b":skull:", b"%0A%1B[2J", b"a\nb\rc\td\x7f",
          "\u00fcn\u00ef\u202ecode".encode(), b"\xff\xfe(bad utf-8", b"-x", b"--json", b"a" * 300]
HOSTILE = st.one_of(st.sampled_from(MARKUP), st.binary(min_size=1, max_size=300).filter(lambda b: b"\x00" not in b))


@pytest.fixture(scope="module")
def lab() -> Iterator[SimpleNamespace]:
    env = GuardEnv({"pair_deny": 1, "ip_deny": 10**6, "user_deny": 10**6})
    tmp = Path(tempfile.mkdtemp(prefix="swg-hs-"))
    module_log = SyslogSink(tmp / "module-log.sock")
    service_log = SyslogSink(tmp / "service-log.sock")
    try:
        env.config.write_text(env.config.read_text() + f'syslog_socket = "{service_log.path}"\n')
        env.start()
        service = env.pam_service()
        yield SimpleNamespace(env=env, service=service, module_log=module_log, service_log=service_log, tmp=tmp)
    finally:
        env.close()
        module_log.close()
        service_log.close()
        subprocess.run(["rm", "-rf", str(tmp)], check=False)


def _tries(lab: Any, pairs: list[tuple[bytes, bytes]]) -> None:
    mnt = Path(tempfile.mkdtemp(dir=lab.tmp))
    r = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, "-c", INSIDE, str(mnt),
                        str(lab.module_log.path), lab.service],
                       cwd=REPO, input=json.dumps([[u.hex(), h.hex()] for u, h in pairs]), capture_output=True,
                       text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr


def _shown(lab: Any, *args: str) -> str:
    r = lab.env.slotctl(*args, check=False)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stdout + r.stderr
    assert "\x1b" not in r.stdout and "\x1b" not in r.stderr  # no escape sequence reaches the terminal
    return r.stdout


def _ours(lines: list[bytes]) -> list[bytes]:
    return [ln.rstrip(b"\x00") for ln in lines if b"pam_slotwarden" in ln or b"slotwarden-guard" in ln]


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pairs=st.lists(st.tuples(HOSTILE, HOSTILE), min_size=1, max_size=3))
def test_hostile_usernames_and_rhosts_are_data_everywhere(lab: Any, pairs: list[tuple[bytes, bytes]]) -> None:
    env = lab.env
    env.columns = 5000  # no cell is folded: every value must appear verbatim
    _tries(lab, pairs)
    table = _shown(lab, "list")
    for raw_user, raw_rhost in pairs:
        user, ip = escape(raw_user), local_origin(escape(raw_rhost), None)
        rows = json.loads(_shown(lab, "list", f"--user={user}", "--json"))
        mine = [r for r in rows if r["ip"] == ip]
        assert len(mine) == 1 and mine[0]["username"] == user and mine[0]["locked_until"] is not None
        assert user in table and ip in table  # shown verbatim: nothing parsed as markup
        text = _shown(lab, "list", f"--user={user}")
        assert user in text and ip in text
        explained = _shown(lab, "explain", f"--user={user}", "--ip=198.51.100.9")
        assert f"allowed: {user} from 198.51.100.9" in explained
        # the module logged the refusal with the escaped values
        logged = f"user={user} rhost={escape(raw_rhost)} ".encode()
        wait_for(lambda w=logged: any(w in ln for ln in _ours(lab.module_log.lines)))
    for ln in _ours(lab.module_log.lines) + _ours(lab.service_log.lines):
        assert all(0x20 <= b <= 0x7E for b in ln), ln  # one printable line each: no forged line, no escape
