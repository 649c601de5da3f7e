"""``slotwarden-me support | notices | login-message``: the tenant's side of consent and notices.

Standard library only: ``host init`` appends this file to kernel.py's text to make the installed
``slotwarden-me`` (the lines between the two ``installed copy`` markers are dropped there), and
replaces INBOX_DIR with the configured ``[inbox] dir``. It runs as the tenant: it reads the
inbox root published (``<dir>/<me>/inbox.json``) and answers by creating a file in
``~/.slotwarden/answers/``, which root trusts only because the kernel made the tenant its owner
in a home only the tenant can write.

>>> answer_line("approve", 3, True)
'approve 3 read-only\\n'
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import sys
from typing import Any

# --- not in the installed copy: there kernel.py's text comes first ---
from provisioner.metrics.kernel import me_main

# --- end of what the installed copy drops ---

INBOX_DIR = "/var/spool/slotwarden"


def _me() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


def read_inbox(user: str | None = None) -> dict[str, Any]:
    """The tenant's inbox; empty when root has published nothing yet."""
    path = os.path.join(INBOX_DIR, user or _me(), "inbox.json")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return {"support": [], "notices": []}
    except (OSError, ValueError) as exc:
        raise SystemExit(f"slotwarden-me: cannot read your inbox: {exc}") from None
    return data if isinstance(data, dict) else {"support": [], "notices": []}


def answer_line(verb: str, grant: int, read_only: bool = False) -> str:
    """The one line an answer file holds (what root's parser accepts)."""
    return f"{verb} {grant}{' read-only' if read_only else ''}\n"


def send_answer(verb: str, grant: int, read_only: bool = False) -> None:
    """Drop an answer file in ``~/.slotwarden/answers/`` (created O_EXCL, 0600)."""
    d = os.path.join(pwd.getpwuid(os.getuid()).pw_dir, ".slotwarden", "answers")
    name = os.path.join(d, f"{verb}-{grant}-{os.urandom(6).hex()}")
    try:
        os.makedirs(d, mode=0o700, exist_ok=True)
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise SystemExit(f"slotwarden-me: cannot answer: {exc.strerror}") from None
    with os.fdopen(fd, "w") as f:
        f.write(answer_line(verb, grant, read_only))


def _show(s: object) -> str:
    """Text the staff or root wrote, made safe for a terminal (no escape sequences)."""
    return "".join(ch if ch.isprintable() else "?" for ch in str(s))


def _support_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for r in rows:
        access = "read-write" if r.get("write") else "read-only"
        if r.get("state") == "requested":
            lines.append(f"  request {r.get('id')}: {_show(r.get('staff'))} asks {access} access to your home for "
                         f"{_show(r.get('for_seconds'))}s: {_show(r.get('reason'))}")
            if r.get("write"):
                lines.append("    (write access lets them change any file of yours, ~/.bashrc included; "
                             f"'slotwarden-me support approve {r.get('id')} --read-only' gives read access only)")
        else:
            lines.append(f"  grant {r.get('id')}: {_show(r.get('staff'))} has {access} access until "
                         f"{_show(r.get('expires'))}: {_show(r.get('reason'))}")
    return lines


def _notice_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for n in rows:
        if n.get("state") == "open":
            lines.append(f"  notice {n.get('id')} ({_show(n.get('ref'))}): remove ~/{_show(n.get('path'))} before "
                         f"{_show(n.get('deadline'))}, or it is quarantined")
        else:
            lines.append(f"  notice {n.get('id')} ({_show(n.get('ref'))}): ~/{_show(n.get('path'))} "
                         f"{_show(n.get('state'))}")
    return lines


def tenant_main(argv: list[str] | None = None) -> None:
    """``slotwarden-me``: your metrics, and ``support`` / ``notices`` / ``login-message``."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["-h"], ["--help"]):
        print("slotwarden-me support list|approve ID [--read-only]|refuse ID|revoke ID: support access requests\n"
              "slotwarden-me notices: takedown notices about your files\n"
              "slotwarden-me [--json] [--sample S]: your slot's metrics, as below\n")
    if not argv or argv[0] not in ("support", "notices", "login-message"):
        me_main(argv)
        return
    parser = argparse.ArgumentParser(prog="slotwarden-me", description="Support requests and notices about your slot.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("support", help="support access requests: list, approve, refuse, revoke")
    ssub = sp.add_subparsers(dest="action", required=True)
    ssub.add_parser("list", help="requests waiting for your answer and grants in force")
    ap = ssub.add_parser("approve", help="let the staff in for the time asked")
    ap.add_argument("id", type=int)
    ap.add_argument("--read-only", action="store_true", help="approve read access only")
    for verb in ("refuse", "revoke"):
        p = ssub.add_parser(verb, help=f"{verb} a request or grant")
        p.add_argument("id", type=int)
    sub.add_parser("notices", help="takedown notices about your files")
    sub.add_parser("login-message", help="what the login shell shows (nothing when nothing is open)")
    args = parser.parse_args(argv)
    box = read_inbox()
    support, notices = box.get("support") or [], box.get("notices") or []
    if args.cmd == "login-message":
        lines = _support_lines(support) + _notice_lines(notices)
        if lines:
            print("slotwarden: about your slot (see 'slotwarden-me support list', 'slotwarden-me notices'):")
            print("\n".join(lines))
        return
    if args.cmd == "notices":
        print("\n".join(_notice_lines(notices)) or "no notices")
        return
    if args.action == "list":
        print("\n".join(_support_lines(support)) or "no support requests")
        return
    if args.id <= 0 or not any(r.get("id") == args.id for r in support):
        raise SystemExit(f"slotwarden-me: no open support request {args.id} (slotwarden-me support list)")
    send_answer(args.action, args.id, getattr(args, "read_only", False))
    print(f"{args.action} {args.id}: sent; it takes effect at the next support check (within minutes)")


if __name__ == "__main__":
    tenant_main()
