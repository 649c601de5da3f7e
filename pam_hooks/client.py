"""Talk to the guard service; fall back to the store when the service is down.

The operator commands (``slotctl guard list|explain|lift|forget|purge|status``)
go through the service when it runs, so a lift is serialized with the logins
it affects and blackhole routes are removed by the process that owns them.
When nothing listens, the same LockoutPolicy is run directly on the store.

For example (with a guard configuration ``cfg``; not a doctest: it needs a guard or its store)::

    admin(cfg, "explain", user="bob", ip="198.51.100.7")
    # {'username': 'bob', 'ip': '198.51.100.7', 'allowed': True, ...}
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from pam_hooks.config import GuardConfig


class GuardUnavailable(ConnectionError):
    """Nothing answers on the guard socket."""


class GuardRequestError(RuntimeError):
    """The service answered with an error."""


def request(path: Path, line: str, timeout: float = 5.0) -> str:
    """Send one request line and return the reply line (without newline)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise GuardUnavailable(f"guard service not reachable on {path}: {exc.strerror}") from None
        s.sendall(line.encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            buf += chunk
        return buf.decode().rstrip("\n")
    finally:
        s.close()


def admin(cfg: GuardConfig, op: str, direct_ok: bool = True, **args: Any) -> Any:
    """Run an operator request; ``direct_ok`` allows the store fallback."""
    req = {"op": op, **{k: v for k, v in args.items() if v is not None}}
    try:
        reply = json.loads(request(cfg.socket, "JSON\t" + json.dumps(req)))
    except GuardUnavailable:
        if not direct_ok:
            raise
        return _direct(cfg, req)
    if not reply.get("ok"):
        raise GuardRequestError(reply.get("error", "guard service error"))
    return reply["result"]


def _direct(cfg: GuardConfig, req: dict[str, Any]) -> Any:
    from pam_hooks.policy import LockoutPolicy
    from pam_hooks.store import open_store

    conn = open_store(cfg.db_path)
    blocker = None
    try:
        if cfg.network_block and req["op"] in ("lift", "forget", "purge"):
            from pam_hooks.netblock import NetBlock

            blocker = NetBlock()
        p = LockoutPolicy(cfg, conn, blocker)
        op = req["op"]
        if op == "status":
            out = p.status()
            out["service"] = {"running": False, "socket": str(cfg.socket)}
            return out
        if op == "list":
            return p.records(req.get("user"), req.get("ip"), bool(req.get("locked")))
        if op == "explain":
            return p.explain(req["user"], req["ip"])
        if op == "lift":
            return {"lifted": p.lift(req.get("user"), req.get("ip"))}
        if op == "forget":
            return {"deleted": p.forget(req.get("user"), req.get("ip"))}
        if op == "purge":
            return {"deleted": p.purge()}
        raise GuardRequestError(f"unknown operation {op!r}")
    finally:
        if blocker is not None:
            blocker.close()
        conn.close()
