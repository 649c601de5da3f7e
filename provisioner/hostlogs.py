"""What the host's logs and an app's directory hold about a user — counted, never copied.

The data report says how many sshd lines of the auth logs (and the journal, where there is
one) name the user, and which log files each installed app keeps: the policy keeps sshd logs
for the host's rotation and app logs until the app is uninstalled, and the report answers
"what do you hold about me" without ever handing out a copy of a log line.

A line is about USER when it names USER as a whole word: ``alice`` does not count
``alice2``'s lines.

>>> count_lines(["sshd[1]: Failed password for alice from 198.51.100.7", "sshd[2]: Accepted key for alice2"], "alice")
1
"""

from __future__ import annotations

import contextlib
import glob
import gzip
import os
import re
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from provisioner.config import ReportConfig
from provisioner.errors import SlotError
from provisioner.runner import run

SSHD = re.compile(r"\bsshd(?:-session)?(?:\[\d+\])?:")
MAX_LOG_FILES = 200


def word_pattern(username: str) -> re.Pattern[str]:
    """USERNAME as a whole word (not a part of a longer name)."""
    return re.compile(rf"(?<![\w.-]){re.escape(username)}(?![\w.-])")


def count_lines(lines: Iterable[str], username: str, sshd_only: bool = True) -> int:
    """How many LINES name USERNAME (only sshd's lines when SSHD_ONLY)."""
    pat = word_pattern(username)
    return sum(1 for line in lines if (not sshd_only or SSHD.search(line)) and pat.search(line))


def _lines(path: str) -> Iterator[str]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        yield from f


def auth_log_counts(cfg: ReportConfig, username: str) -> dict[str, int]:
    """{auth log file: sshd lines naming USERNAME} over the configured files (absent ones skipped)."""
    out: dict[str, int] = {}
    for pattern in cfg.auth_logs:
        for path in sorted(glob.glob(pattern)):
            with contextlib.suppress(OSError, EOFError, gzip.BadGzipFile):
                out[path] = count_lines(_lines(path), username)
    return out


def journal_count(cfg: ReportConfig, username: str) -> int | str:
    """sshd lines in the journal naming USERNAME, or why there is no figure."""
    if not cfg.journal:
        return "not asked (report.journal = false)"
    if not Path("/run/systemd/journal").exists() and not Path("/var/log/journal").exists():
        return "no journal on this host"
    try:
        proc = run(["journalctl", "--no-pager", "-q", "-o", "cat", "_COMM=sshd", "_COMM=sshd-session"],
                   timeout=120, check=False)
    except SlotError as exc:
        return f"journal unreadable: {exc}"
    pat = word_pattern(username)
    return sum(1 for line in proc.stdout.splitlines() if pat.search(line))


def app_log_files(app_dir: Path) -> list[dict[str, Any]]:
    """Log files under APP_DIR (``*.log*`` or inside a ``logs`` directory): name and size.

    Walked by descriptor (``os.fwalk``, links never followed): the tree belongs to the tenant.
    """
    found: list[dict[str, Any]] = []
    try:
        st = os.stat(app_dir, follow_symlinks=False)
    except OSError:
        return found
    if not stat.S_ISDIR(st.st_mode):
        return found
    for root, _dirs, files, dfd in os.fwalk(app_dir, follow_symlinks=False):
        in_logs = Path(root).name == "logs"
        for name in files:
            if not (in_logs or ".log" in name):
                continue
            with contextlib.suppress(OSError):
                fst = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                if stat.S_ISREG(fst.st_mode):
                    found.append({"file": str(Path(root, name).relative_to(app_dir)), "bytes": fst.st_size})
            if len(found) >= MAX_LOG_FILES:
                return found
    return found


def supervisor_logs(log_dir: Path | None, app: str, username: str) -> list[dict[str, Any]]:
    """The supervisor's captured output of APP's programs for USERNAME (root-owned files)."""
    if log_dir is None:
        return []
    out = []
    a, u = glob.escape(app), glob.escape(username)
    paths = {*log_dir.glob(f"slotwarden-{a}@{u}.log*"), *log_dir.glob(f"slotwarden-{a}-*@{u}.log*")}
    for path in sorted(paths):
        with contextlib.suppress(OSError):
            out.append({"file": str(path), "bytes": path.stat().st_size})
    return out
