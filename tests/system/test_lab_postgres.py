"""The lab PostgreSQL fixture itself: reachable from another lab host with the password file, nothing
else; refused with a wrong password; dropped and stopped by pid afterwards (root)."""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import sys

import pytest

from tests.system.fixtures.postgres import PgLab, pg_lab_context

pytestmark = pytest.mark.root

# Runs inside a lab host: connect over TCP with the URL and the password read from the file.
CLIENT = """
import sys, psycopg
url, pw_file = sys.argv[1], sys.argv[2]
pw = open(pw_file).read().strip() if pw_file else "not-the-password"
try:
    with psycopg.connect(url, password=pw, connect_timeout=5) as c:
        print(c.execute("SELECT current_user || ' ' || current_database()").fetchone()[0])
except psycopg.OperationalError as e:
    print("refused", type(e).__name__)
    sys.exit(3)
"""


def _client(lab: PgLab, host_name: str, pw_file: str) -> subprocess.CompletedProcess[str]:
    host = lab.net.hosts.get(host_name) or lab.net.host(host_name, "198.51.100.61")
    return host.run([sys.executable, "-c", CLIENT, lab.url, pw_file], capture_output=True, text=True, timeout=60)


def test_reachable_from_another_lab_host_with_the_password_file(pg_lab: PgLab) -> None:
    st = os.stat(pg_lab.password_file)
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0
    assert stat.S_IMODE(os.stat(pg_lab.password_file.parent).st_mode) == 0o700
    assert pg_lab.db.password not in pg_lab.url
    r = _client(pg_lab, "c1", str(pg_lab.password_file))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.split() == [pg_lab.db.role, pg_lab.db.name]
    # The password never lands in the server's log or its command line.
    assert pg_lab.db.password not in pg_lab.server.log.read_text(errors="replace")
    assert pg_lab.server.proc is not None
    cmdline = open(f"/proc/{pg_lab.server.proc.pid}/cmdline", "rb").read().decode()
    assert pg_lab.db.password not in cmdline and "postgres" in cmdline


def test_wrong_password_refused_and_root_netns_not_listening(pg_lab: PgLab) -> None:
    assert _client(pg_lab, "c1", "").returncode == 3
    # The root namespace has no route to the lab: the server is only in its netns.
    import psycopg

    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg_lab.url, password=pg_lab.db.password, connect_timeout=2)


def test_runs_as_postgres_and_restarts_on_the_same_data() -> None:
    with pg_lab_context() as lab:
        assert lab.server.proc is not None
        pid = lab.server.proc.pid
        assert os.stat(f"/proc/{pid}").st_uid == pwd.getpwnam("postgres").pw_uid
        with lab.server.admin(lab.db.name) as c:
            c.execute("CREATE TABLE t (v int)")
            c.execute("INSERT INTO t VALUES (42)")
        lab.server.stop()
        assert not os.path.exists(f"/proc/{pid}")
        assert _client(lab, "c1", str(lab.password_file)).returncode == 3
        lab.server.start()
        assert _client(lab, "c1", str(lab.password_file)).returncode == 0
        with lab.server.admin(lab.db.name) as c:
            assert c.execute("SELECT v FROM t").fetchone() == (42,)
        pid, tmp = lab.server.proc.pid, lab.server.tmp
        lab.server.stop()  # left stopped: teardown restarts it to drop the database, then stops it
        assert lab.db in lab.server.databases
    assert lab.server.databases == []
    assert not os.path.exists(f"/proc/{pid}") and not tmp.exists()
    assert lab.server.proc is None
