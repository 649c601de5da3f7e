"""The guard store's read queries retention and the data report use (``attempts_since``,
``expired_groups``), against a plain model of the rows (hypothesis)."""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from pam_hooks import store

ROW = st.tuples(st.floats(0, 100, allow_nan=False), st.sampled_from(["bob", "b%FFob", "al ice", "root"]),
                st.sampled_from(["198.51.100.7", "198.51.100.8", "2001:db8::1", "local"]),
                st.sampled_from(["pending", "failed", "cleared", "succeeded", "refused"]))


@settings(max_examples=60, deadline=None)
@given(st.lists(ROW, max_size=25), st.floats(0, 100, allow_nan=False))
def test_queries_match_a_model(rows: list[tuple[float, str, str, str]], cut: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        conn = store.open_store(Path(tmp) / "guard.db")
        conn.executemany("INSERT INTO attempts (ts, username, ip, ipkey, service, state) "
                         "VALUES (?, ?, ?, ?, 'sshd', ?)", [(ts, u, ip, ip, state) for ts, u, ip, state in rows])
        expected_old = Counter((u, ip) for ts, u, ip, _ in rows if ts < cut)
        assert {(g["username"], g["ip"]): g["n"] for g in store.expired_groups(conn, cut)} == expected_old
        since = store.attempts_since(conn, "bob", cut)
        mine = [(ts, ip) for ts, u, ip, _ in rows if u == "bob" and ts >= cut]
        assert {g["ip"]: g["count"] for g in since} == Counter(ip for _, ip in mine)
        assert [g["last"] for g in since] == sorted((g["last"] for g in since), reverse=True)
        for g in since:
            assert g["first"] == min(ts for ts, ip in mine if ip == g["ip"])
        conn.close()
