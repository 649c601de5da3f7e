"""usrquota usage: the user stays a user (never a filesystem), the figures come from its row."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provisioner.errors import SlotError
from provisioner.quota import usrquota

OUT = """Disk quotas for user alice (uid 1001):
     Filesystem  blocks   quota   limit   grace   files   quota   limit   grace
           /srv  104860*      0  102400       0      12       0       0       0
"""


def test_usage_asks_for_the_user_on_the_one_filesystem(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    def fake_run(argv: list[str], **_kw: object) -> subprocess.CompletedProcess[str]:
        seen.append(argv)
        return subprocess.CompletedProcess(argv, 0, OUT, "")

    monkeypatch.setattr(usrquota, "run", fake_run)
    monkeypatch.setattr(usrquota, "mount_of", lambda _p: ("/srv", "ext4", {"usrquota"}))
    usage = usrquota.UserQuota(Path("/srv")).usage("alice", Path("/srv/alice"))
    assert (usage.used_bytes, usage.limit_bytes) == (104860 * 1024, 102400 * 1024)
    argv = seen[0]
    assert argv[-1] == "alice" and "--filesystem=/srv" in argv and "-f" not in argv


def test_no_row_for_the_filesystem_is_an_error_not_zero() -> None:
    with pytest.raises(SlotError, match="quota reported no usage for /srv"):
        usrquota.parse_quota_output("Disk quotas for user alice (uid 1001): none\n", "/srv")


@given(st.text(max_size=300))
def test_any_quota_output_parses_or_fails_in_one_line(text: str) -> None:
    try:
        u = usrquota.parse_quota_output(text, "/srv")
    except SlotError as exc:
        assert "\n" not in str(exc)
    else:
        assert u.used_bytes >= 0
