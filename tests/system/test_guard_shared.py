"""The guard's shared store, from the attacker's side (root): K lab hosts, each with its own guard
service in its own network namespace, sharing one real PostgreSQL 15 in another.

Requests go to each guard's socket exactly as the PAM module sends them; the sshd variant (real
SSH password attempts, counted password checks) is test_guard_shared_sshd.py.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from pam_hooks.protocol import escape
from tests.system.fixtures.guard import GuardEnv
from tests.system.fixtures.guard_fleet import GuardFleet, guard_fleet
from tests.system.fixtures.processes import wait_for

pytestmark = pytest.mark.root

PAIR_DENY = 3
SETTINGS = {"pair_deny": PAIR_DENY, "ip_deny": 1000, "user_deny": 1000}


@pytest.fixture(scope="module")
def fleet() -> Iterator[GuardFleet]:
    with guard_fleet(3, SETTINGS) as f:
        yield f


def _addr(fleet: GuardFleet) -> str:
    fleet._n += 1
    return f"198.51.100.{fleet._n}"


def test_lock_on_one_host_refused_on_every_other(fleet: GuardFleet) -> None:
    ip = _addr(fleet)
    for _ in range(PAIR_DENY):
        assert fleet.fail(0, "alice", ip).startswith("ALLOW ")
    assert fleet.auth(0, "alice", ip).startswith("DENY pair ")
    # Hosts 2 and 3 never saw alice fail: the shared lock refuses her there, at the first try,
    # and a key login (account phase) too.
    for i in (1, 2):
        assert fleet.auth(i, "alice", ip).startswith("DENY pair ")
        assert fleet.send(i, f"ACCT\tsshd\talice\t{ip}").startswith("DENY pair ")
    # Another address for alice is not locked anywhere.
    assert fleet.auth(2, "alice", _addr(fleet)).startswith("ALLOW ")
    # Every host's operator view is the fleet's.
    rows = fleet.guards[2].json("list", "--user", "alice", "--ip", ip)
    assert [(r["count"], r["refused"], r["rule"]) for r in rows] == [(PAIR_DENY, 3, "pair")]
    # The lock reaches the other hosts' own stores too (pulled every tick): their fallback knows it.
    wait_for(lambda: all(any(lk["key"] == f"alice {ip}" for lk in _local_locks(g)) for g in fleet.guards[1:]))
    # A lift on host 3 frees the pair on host 1 (whose own copy of the lock, which refuses without
    # asking the store, follows the store's at its next tick).
    fleet.guards[2].json("lift", "--user", "alice", "--ip", ip)
    wait_for(lambda: not _local_locks(fleet.guards[0]))
    assert fleet.auth(0, "alice", ip).startswith("ALLOW ")


def test_success_clears_the_pair_fleet_wide(fleet: GuardFleet) -> None:
    ip = _addr(fleet)
    for _ in range(PAIR_DENY - 1):
        assert fleet.fail(0, "gina", ip).startswith("ALLOW ")
    r = fleet.auth(0, "gina", ip)  # the right password at last: this reservation reaches the limit
    assert r.startswith("ALLOW ")
    assert fleet.send(0, f"SUCC\t{r.split()[1]}") == "OK"
    assert fleet.send(0, f"ACCT\tsshd\tgina\t{ip}") == "ALLOW"  # the lock it set is undone
    # Here at once (the success is written before this pair's next reservation) ...
    assert fleet.fail(0, "gina", ip).startswith("ALLOW ")
    # ... and on every host: the earlier failures are cleared there, not counted again. (Another
    # host may have pulled the lock this try set before the success undid it: its copy follows
    # at its next tick; until then it errs towards refusing.)
    wait_for(lambda: fleet.pg_rows("SELECT state FROM guard.attempts WHERE username = 'gina'"
                                   " AND state = 'succeeded'") == [("succeeded",)])
    wait_for(lambda: not [lk for lk in _local_locks(fleet.guards[1]) if str(lk["key"]).startswith("gina ")])
    assert [fleet.fail(1, "gina", ip).split()[0] for _ in range(PAIR_DENY)] == ["ALLOW", "ALLOW", "DENY"]
    assert fleet.auth(2, "gina", ip).startswith("DENY pair ")


def _local_rows(g: GuardEnv, user: str) -> list[tuple[object, ...]]:
    """A host's own copy of USER's attempts."""
    conn = sqlite3.connect(f"file:{g.cfg.db_path}?mode=ro", uri=True)
    try:
        return list(conn.execute("SELECT id FROM attempts WHERE username = ?", (user,)))
    finally:
        conn.close()


def _local_locks(g: GuardEnv) -> list[dict[str, object]]:
    """The locks holding now in a host's own SQLite store."""
    conn = sqlite3.connect(f"file:{g.cfg.db_path}?mode=ro", uri=True)
    try:
        return [{"key": r[0].replace("\t", " ")}
                for r in conn.execute("SELECT key FROM locks WHERE locked_until > ?", (time.time(),))]
    finally:
        conn.close()


def test_concurrent_tries_over_three_hosts_check_at_most_pair_deny(fleet: GuardFleet) -> None:
    ip = _addr(fleet)
    n = 60
    start = threading.Barrier(n)

    def one(i: int) -> str:
        start.wait()
        return fleet.fail(i % 3, "bob", ip)

    with ThreadPoolExecutor(n) as pool:
        answers = list(pool.map(one, range(n)))
    allowed = [a for a in answers if a.startswith("ALLOW ")]
    assert len(allowed) == PAIR_DENY, answers
    assert all(a.startswith(("ALLOW ", "DENY pair ")) for a in answers), answers
    hosts = fleet.pg_rows("SELECT state, count(*) FROM guard.attempts WHERE username = 'bob' AND ip = %s"
                          " GROUP BY state ORDER BY state", ip)
    assert dict(hosts) == {"failed": PAIR_DENY, "refused": n - PAIR_DENY} or \
        wait_for(lambda: dict(fleet.pg_rows("SELECT state, count(*) FROM guard.attempts WHERE username = 'bob'"
                                            " AND ip = %s GROUP BY state", ip)) == {"failed": PAIR_DENY,
                                                                                  "refused": n - PAIR_DENY})
    # Spread over the three hosts, every row names the host that decided it.
    by_host = dict(fleet.pg_rows("SELECT host, count(*) FROM guard.attempts WHERE ip = %s GROUP BY host", ip))
    assert set(by_host) == {"h1", "h2", "h3"} and sum(by_host.values()) == n


HOSTILE = [b"o'brien'; DROP TABLE guard.attempts; --", b"%00\\x", b"$$; SELECT 1; $$", b"\xff\xfe\tname",
           "\u202eadmin".encode(), b"a" * 300]


@pytest.mark.parametrize("raw", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_values_stay_data(fleet: GuardFleet, raw: bytes) -> None:
    user, rhost = escape(raw), escape(b"198.51.100.250' OR '1'='1")
    for _ in range(PAIR_DENY):
        assert fleet.fail(1, user, rhost).startswith("ALLOW ")
    assert fleet.auth(2, user, rhost).startswith("DENY pair ")
    # (a refusal from a host's copy of the lock reaches the store with that host's next tick)
    wait_for(lambda: fleet.pg_rows("SELECT username, ip, count(*) FROM guard.attempts WHERE username = %s"
                                   " GROUP BY 1, 2", user) == [(user, rhost, PAIR_DENY + 1)])
    assert fleet.pg_rows("SELECT count(*) FROM guard.schema_version") == [(1,)]
    fleet.guards[0].json("forget", "--user", user)
    assert fleet.pg_rows("SELECT count(*) FROM guard.attempts WHERE username = %s", user) == [(0,)]
    # The forget reaches the other hosts' copies (the events table), and a purge keeps recent events.
    wait_for(lambda: not _local_rows(fleet.guards[1], user) and not _local_rows(fleet.guards[2], user))
    fleet.guards[1].json("purge")
    assert fleet.pg_rows("SELECT count(*) FROM guard.events WHERE username = %s", user) == [(1,)]
    assert fleet.pg_rows("SELECT count(*) FROM guard.locks WHERE key LIKE %s", user.replace("%", "\\%") + "%") \
        == [(0,)]


def test_password_never_in_logs_or_argv(fleet: GuardFleet) -> None:
    pw = fleet.pg.db.password
    for g in fleet.guards:
        assert pw not in g.log.read_text(errors="replace")
        assert pw not in g.config.read_text()
        assert g.proc is not None
        for pid in [g.proc.pid, *_children(g.proc.pid)]:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                assert pw.encode() not in f.read()
    assert pw not in fleet.pg.server.log.read_text(errors="replace")


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = [int(x) for x in f.read().split()]
    except OSError:
        return []
    return kids + [c for k in kids for c in _children(k)]


def test_outage_decides_locally_then_reconciles() -> None:
    with guard_fleet(2, SETTINGS) as fleet:
        ip = "198.51.100.77"
        assert fleet.fail(0, "carol", ip).startswith("ALLOW ")  # one failure while the store is up
        fleet.pg.server.stop()
        # Each host goes on deciding alone, exactly: host 1 knew one failure, so two more checks;
        # host 2 knew none, so three. No fail_mode: every answer is a decision.
        first = [fleet.fail(0, "carol", ip) for _ in range(PAIR_DENY)]
        second = [fleet.fail(1, "carol", ip) for _ in range(PAIR_DENY + 1)]
        assert [a.split()[0] for a in first] == ["ALLOW", "ALLOW", "DENY"], first
        assert [a.split()[0] for a in second] == ["ALLOW", "ALLOW", "ALLOW", "DENY"], second
        st = fleet.status(0)
        assert st["store"]["reachable"] is False and st["store"]["unsynced"] >= 3
        # An operator's lift meanwhile waits for the store.
        fleet.guards[1].json("lift", "--user", "carol", "--ip", ip)
        fleet.pg.server.start()
        wait_for(lambda: all(fleet.status(i)["store"]["reachable"] and fleet.status(i)["store"]["unsynced"] == 0
                             for i in range(2)), timeout=30)
        # Nothing lost: every try of the outage is in the shared store, from the host that decided it.
        rows = dict(fleet.pg_rows("SELECT host || ' ' || state, count(*) FROM guard.attempts WHERE username = 'carol'"
                                  " GROUP BY 1"))
        assert rows == {"h1 failed": 3, "h1 refused": 1, "h2 failed": 3, "h2 refused": 1}, rows
        lifted = fleet.pg_rows("SELECT reset_at > 0 FROM guard.locks WHERE kind = 'pair' AND key = %s",
                               f"carol\t{ip}")
        assert lifted == [(True,)]
        # After the lift (replayed) the count starts again; the next failures lock it fleet-wide.
        for _ in range(PAIR_DENY):
            assert fleet.fail(1, "carol", ip).startswith("ALLOW ")
        assert fleet.auth(0, "carol", ip).startswith("DENY pair ")


def test_outage_locks_made_alone_reach_the_fleet() -> None:
    with guard_fleet(2, SETTINGS) as fleet:
        ip = "198.51.100.78"
        fleet.pg.server.stop()
        for _ in range(PAIR_DENY):
            assert fleet.fail(0, "dave", ip).startswith("ALLOW ")
        assert fleet.auth(0, "dave", ip).startswith("DENY pair ")
        fleet.pg.server.start()
        wait_for(lambda: fleet.status(0)["store"]["unsynced"] == 0 and fleet.status(0)["store"]["reachable"],
                 timeout=30)
        # Host 2 was never told: it refuses dave from the lock host 1 set alone.
        wait_for(lambda: fleet.status(1)["store"]["reachable"], timeout=30)
        assert fleet.auth(1, "dave", ip).startswith("DENY pair ")


def test_newer_shared_schema_refused_local_decisions_go_on() -> None:
    with guard_fleet(1, SETTINGS) as fleet:
        fleet.guards[0].stop()
        with fleet.pg.server.admin(fleet.pg.db.name) as c:
            c.execute("UPDATE guard.schema_version SET version = 99")
        fleet.guards[0].start()
        st = fleet.status(0)
        assert st["store"]["reachable"] is False and "newer" in st["store"]["error"]
        assert fleet.fail(0, "erin", "198.51.100.79").startswith("ALLOW ")
        assert fleet.pg_rows("SELECT count(*) FROM guard.attempts") == [(0,)]


def test_password_file_must_be_root_only() -> None:
    with guard_fleet(1, SETTINGS) as fleet:
        fleet.guards[0].stop()
        os.chmod(fleet.pg.password_file, 0o644)
        fleet.guards[0].start()
        st = fleet.status(0)
        assert st["store"]["reachable"] is False and "mode 0600" in st["store"]["error"]
        assert fleet.pg.db.password not in fleet.guards[0].log.read_text(errors="replace")
        assert fleet.fail(0, "frank", "198.51.100.80").startswith("ALLOW ")
        os.chmod(fleet.pg.password_file, 0o600)
