"""What the guard checks share (tests/infra/test_guard*.py): ssh options, explain, the slot under attack.

The fixtures ``client`` (the second machine) and ``target`` (the slot under attack, with a
fresh password and a key the client holds) live in conftest.py and are built from these.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from typing import Any

SSH_OPTS = ("-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR "
            "-o ConnectTimeout=10 -o BatchMode=no")


def explain(host: Any, user: str, ip: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(host.check_output(f"slotctl guard explain --user {user} --ip {ip} --json"))
    return out


def hash_password(password: str) -> str:
    """A SHA-512 crypt hash made here, so the password itself never reaches a command line."""
    return subprocess.run(["openssl", "passwd", "-6", "-stdin"], input=password, text=True,
                          capture_output=True, check=True).stdout.strip()


def wrong_passwords(user: str, server: str, n: int) -> str:
    """A shell loop for the client: n connections at once, one wrong password try each.

    At once, as an attacker would, and because one login takes 15 to 20 s in an emulated guest;
    the guard counts exactly under concurrency (``tests/system/test_guard_shared_sshd.py``: 45
    wrong SSH passwords at once over 3 hosts)."""
    wrong = (f"SSHPASS=not-the-password sshpass -e ssh {SSH_OPTS} -o PubkeyAuthentication=no "
             f"-o PreferredAuthentications=password,keyboard-interactive -o NumberOfPasswordPrompts=1 "
             f"{shlex.quote(user)}@{server} true")
    return f"for i in $(seq {n}); do {wrong} & done; wait; true"


def client_address(client: Any, server: str) -> str:
    """The client's source address towards the server."""
    return str(client.check_output(f"ip -4 route get {server}")).split(" src ")[1].split()[0]
