"""The Hub's privileged bridge: a root-owned Unix socket that acts for one logged-in slot at a time.

The process that parses HTTP runs as the Hub's own system user and can do nothing privileged
itself. It asks this bridge, one JSON line per request, and the bridge:

- accepts a connection only from the Hub's UID (``SO_PEERCRED``; the socket is also 0600);
- authenticates through PAM (``login``) and holds the sessions itself: the web process gets a
  random token, and every later request carries that token, from which the bridge derives the
  slot — a request can never name another slot, and a web process that is taken over can act
  only for slots whose users are logged in right now;
- validates every argument, answers refusals with one-line errors, audits what it reveals.

Like Cockpit's split between cockpit-ws (unprivileged HTTP) and its session helper, the only
thing crossing the boundary is a small, closed set of operations (:data:`OPERATIONS`).

>>> sorted(OPERATIONS)[:4]
['activity', 'data_report', 'login', 'logout']
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from provisioner.config import Config
from provisioner.context import Context
from provisioner.errors import SlotError
from provisioner.hub.auth import MAX_PASSWORD, MAX_TYPED_NAME, check_password
from provisioner.hub.config import HubConfig
from provisioner.hub.sessions import Session, SessionStore

log = logging.getLogger("slotwarden.hub.bridge")
MAX_REQUEST = 64 * 1024


class BridgeRefused(SlotError):
    """A request the bridge will not carry out (bad argument, no session)."""


def parse_address(value: object) -> str:
    """The client's IP address as the web process saw it (validated, normalised)."""
    if not isinstance(value, str) or len(value) > 64:
        raise BridgeRefused("address: expected an IP address")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise BridgeRefused("address: expected an IP address") from None


def _text(req: dict[str, Any], key: str, limit: int) -> str:
    v = req.get(key)
    if not isinstance(v, str) or len(v) > limit:
        raise BridgeRefused(f"{key}: expected a string of at most {limit} characters")
    return v


class Bridge:
    """The operations, each run with a fresh store connection (one per request thread)."""

    def __init__(self, config: Config, hub: HubConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.hub = hub
        self.clock = clock

    def _sessions(self, ctx: Context) -> SessionStore:
        return SessionStore(ctx.store, self.hub.idle_timeout, self.hub.absolute_timeout)

    def _session(self, ctx: Context, req: dict[str, Any]) -> Session:
        sessions = self._sessions(ctx)
        s = sessions.resolve(req.get("token"))
        if s is None:
            raise BridgeRefused("no session")
        rec = ctx.store.get_slot(s.username)
        if rec is None or rec.state != "active" or _suspended(ctx, s.username):
            sessions.end_all(s.username)  # removed or suspended since login: no session survives
            raise BridgeRefused("no session")
        return s

    def handle(self, req: object) -> dict[str, Any]:
        """One request -> one reply (``ok`` false with ``error`` for a refusal)."""
        if not isinstance(req, dict) or not isinstance(req.get("op"), str):
            return {"ok": False, "error": "expected {\"op\": ...}"}
        op = OPERATIONS.get(req["op"])
        if op is None:
            return {"ok": False, "error": "unknown operation"}
        ctx = Context(self.config)
        try:
            return {"ok": True, **op(self, ctx, req)}
        except BridgeRefused as exc:
            return {"ok": False, "error": str(exc)}
        except SlotError as exc:
            log.warning("%s failed: %s", req["op"], exc)
            return {"ok": False, "error": " ".join(str(exc).split())}
        finally:
            ctx.close()

    # --- login ---------------------------------------------------------------------------

    def login(self, ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
        """PAM check; a session for an active slot, or one refusal answered at the fixed floor."""
        started = time.monotonic()
        username = _text(req, "username", MAX_TYPED_NAME)
        password = _text(req, "password", MAX_PASSWORD)
        address = parse_address(req.get("address"))
        agent = req.get("agent") if isinstance(req.get("agent"), str) else ""
        answer = check_password(self.hub.pam_service, username, password, address)
        rec = ctx.store.get_slot(username)
        sessions = self._sessions(ctx)
        if answer.ok and rec is not None and rec.state == "active" and not _suspended(ctx, username):
            token, s = sessions.create(username, address, str(agent))
            sessions.record_login(username, address, True, "password")
            ctx.store.audit(f"hub:{username}", "hub.login", username, {"address": address})
            return {"login": "ok", "token": token, "username": username, "csrf": s.csrf}
        if rec is not None:
            sessions.record_login(username, address, False, "suspended" if answer.expired else "password")
        result: dict[str, Any] = {"login": "refused"}
        if answer.expired and rec is not None:
            result = {"login": "suspended"}
        else:
            until = self._locked_until(username, address)
            if until is not None:
                result = {"login": "locked", "until": until}
        floor = self.hub.fail_floor_ms / 1000
        time.sleep(max(0.0, floor - (time.monotonic() - started)))
        return result

    def _locked_until(self, username: str, address: str) -> str | None:
        """When the guard lets USERNAME try again from ADDRESS, if it is locked now."""
        from provisioner.guard import guard_config, guard_request

        try:
            verdict = guard_request(guard_config(self.config.path), "explain", user=username, ip=address)
        except SlotError as exc:
            log.warning("guard not asked about a lock: %s", exc)
            return None
        if verdict.get("allowed", True):
            return None
        until = verdict.get("until")
        return str(until) if until else "later"

    # --- the session's own slot --------------------------------------------------------------

    def whoami(self, ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
        s = self._session(ctx, req)
        return {"username": s.username, "role": s.role, "csrf": s.csrf, "session": s.public(True)}

    def logout(self, ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
        token = req.get("token")
        if isinstance(token, str):
            self._sessions(ctx).end(token)
        return {}

    def logout_all(self, ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
        s = self._session(ctx, req)
        n = self._sessions(ctx).end_all(s.username)
        ctx.store.audit(f"hub:{s.username}", "hub.logout-everywhere", s.username, {"sessions": n})
        return {"ended": n}

    def sessions(self, ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
        s = self._session(ctx, req)
        return {"sessions": [x.public(x.id == s.id) for x in self._sessions(ctx).of_user(s.username)]}

    def activity(self, ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
        s = self._session(ctx, req)
        return {"logins": self._sessions(ctx).logins(s.username)}

    def overview(self, ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
        s = self._session(ctx, req)
        from provisioner.metrics import collect

        m = collect(ctx, [s.username], sample=0.25)[0].as_dict()
        procs = m.pop("processes")
        return {"metrics": m, "processes": procs}

    def data_report(self, ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
        s = self._session(ctx, req)
        from provisioner.datareport import data_report

        ctx.store.audit(f"hub:{s.username}", "hub.data-report", s.username, {})
        return {"report": data_report(ctx, s.username)}


def _suspended(ctx: Context, username: str) -> bool:
    from provisioner.lifecycle import get_lifecycle

    rec = get_lifecycle(ctx.store, username)
    return rec is not None and rec.suspended_at is not None


OPERATIONS: dict[str, Callable[[Bridge, Context, dict[str, Any]], dict[str, Any]]] = {
    "login": Bridge.login,
    "whoami": Bridge.whoami,
    "logout": Bridge.logout,
    "logout_all": Bridge.logout_all,
    "sessions": Bridge.sessions,
    "activity": Bridge.activity,
    "overview": Bridge.overview,
    "data_report": Bridge.data_report,
}


def peer_uid(conn: socket.socket) -> int:
    """The UID of the process on the other end of a Unix socket (SO_PEERCRED)."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


class _Handler(socketserver.StreamRequestHandler):
    server: BridgeServer

    def handle(self) -> None:
        conn: socket.socket = self.request
        conn.settimeout(30)
        uid = peer_uid(conn)
        if uid != self.server.allowed_uid:
            log.warning("bridge: connection from uid %d refused (only the hub's uid %d)", uid,
                        self.server.allowed_uid)
            self.wfile.write(b'{"ok": false, "error": "not the hub"}\n')
            return
        line = self.rfile.readline(MAX_REQUEST + 1)
        if len(line) > MAX_REQUEST or not line.endswith(b"\n"):
            self.wfile.write(b'{"ok": false, "error": "request too long"}\n')
            return
        try:
            req = json.loads(line)
        except ValueError:
            reply: dict[str, Any] = {"ok": False, "error": "not JSON"}
        else:
            reply = self.server.bridge.handle(req)
        self.wfile.write(json.dumps(reply, default=str).encode() + b"\n")


class BridgeServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """The bridge's socket: 0600, owned by the Hub's user, one thread per connection."""

    daemon_threads = True

    def __init__(self, path: Path, bridge: Bridge, allowed_uid: int) -> None:
        self.bridge = bridge
        self.allowed_uid = allowed_uid
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        old = os.umask(0o177)
        try:
            super().__init__(str(path), _Handler)
        finally:
            os.umask(old)
        os.chown(path, allowed_uid, -1)
        os.chmod(path, 0o600)

    def serve_in_thread(self) -> threading.Thread:
        t = threading.Thread(target=self.serve_forever, name="hub-bridge", daemon=True)
        t.start()
        return t
