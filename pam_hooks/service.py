"""GuardService: the long-running guard process behind ``slotctl guard serve``.

One thread, one ``selectors`` loop: every request from the PAM module (and from
the operator CLI) is decided in arrival order against the store, which is what
makes the counts exact under any concurrency. The socket is root-only (0600 and
an SO_PEERCRED check), so a tenant can neither read records nor reset a count.

Run it in the foreground under a supervisor::

    python3 -m pam_hooks serve           # or: slotctl guard serve
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import selectors
import signal
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pam_hooks.config import GuardConfig
from pam_hooks.policy import LockoutPolicy
from pam_hooks.protocol import MAX_LINE, is_clean_field
from pam_hooks.store import open_store

log = logging.getLogger("slotwarden.guard")

TICK_SECONDS = 1.0
PURGE_SECONDS = 60.0


def setup_logging(verbose: bool = False) -> None:
    """Log to syslog (authpriv) when there is one, and always to stderr for the supervisor."""
    root = logging.getLogger("slotwarden")
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    if root.handlers:
        return
    err = logging.StreamHandler()
    err.setFormatter(logging.Formatter("%(asctime)s guard %(levelname)s %(message)s"))
    root.addHandler(err)
    if os.path.exists("/dev/log"):
        try:
            sys_h = logging.handlers.SysLogHandler(
                "/dev/log", facility=logging.handlers.SysLogHandler.LOG_AUTHPRIV)
            sys_h.setFormatter(logging.Formatter("slotwarden-guard: %(message)s"))
            root.addHandler(sys_h)
        except OSError:
            pass


class _Conn:
    __slots__ = ("inbuf", "outbuf", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbuf = b""
        self.outbuf = b""


def inherited_listener() -> socket.socket | None:
    """The listening socket systemd passed as fd 3 (sd_listen_fds protocol), or None.

    Only when LISTEN_PID names this process; the variables are removed so no child inherits them.
    """
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    try:
        count = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        count = 0
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(var, None)
    if count < 1:
        return None
    sock = socket.socket(fileno=3)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise RuntimeError("the socket passed by systemd is not a Unix stream socket")
    return sock


class GuardService:
    """Owns the socket, the store connection and the policy; ``run()`` blocks."""

    def __init__(self, cfg: GuardConfig, clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.clock = clock
        self.conn = open_store(cfg.db_path)
        blocker = None
        if cfg.network_block:
            from pam_hooks.netblock import NetBlock

            blocker = NetBlock()
        self.policy = LockoutPolicy(cfg, self.conn, blocker, clock)
        self.sel = selectors.DefaultSelector()
        self.listener: socket.socket | None = None
        self.inherited = False  # systemd owns the socket file then: never unlink it
        self.running = False
        self.started = clock()
        self.handled = 0

    # -- socket --------------------------------------------------------------

    def bind(self) -> None:
        """Create the root-only socket; refuse if another guard already answers on it.

        Started by ``slotwarden-guard.socket`` (systemd's LISTEN_FDS), it takes that socket
        instead: it exists before sshd and survives a restart of the service.
        """
        inherited = inherited_listener()
        if inherited is not None:
            inherited.setblocking(False)
            self.sel.register(inherited, selectors.EVENT_READ, None)
            self.listener = inherited
            self.inherited = True
            return
        path = self.cfg.socket
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        if path.exists():
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(path))
                raise RuntimeError(f"another guard service is listening on {path}")
            except (ConnectionRefusedError, FileNotFoundError):
                path.unlink(missing_ok=True)
            finally:
                probe.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(str(path))
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        sock.listen(512)
        sock.setblocking(False)
        self.sel.register(sock, selectors.EVENT_READ, None)
        self.listener = sock

    def _accept(self) -> None:
        assert self.listener is not None
        while True:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            _pid, uid, _gid = struct.unpack("3i", creds)
            if uid != 0:
                log.warning("refused a guard connection from uid %d", uid)
                sock.close()
                continue
            sock.setblocking(False)
            self.sel.register(sock, selectors.EVENT_READ, _Conn(sock))

    def _close(self, c: _Conn) -> None:
        self.sel.unregister(c.sock)
        c.sock.close()

    def _read(self, c: _Conn) -> None:
        try:
            data = c.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(c)
            return
        if not data:
            self._close(c)
            return
        c.inbuf += data
        while b"\n" in c.inbuf:
            line, c.inbuf = c.inbuf.split(b"\n", 1)
            c.outbuf += self.handle_line(line).encode() + b"\n"
        if len(c.inbuf) > MAX_LINE:
            log.warning("dropped an over-long request line")
            self._close(c)
            return
        self._flush(c)

    def _flush(self, c: _Conn) -> None:
        if c.outbuf:
            try:
                sent = c.sock.send(c.outbuf)
                c.outbuf = c.outbuf[sent:]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self._close(c)
                return
        self.sel.modify(c.sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if c.outbuf else 0), c)

    # -- requests ------------------------------------------------------------

    def handle_line(self, raw: bytes) -> str:
        """Decide one request line; never raises."""
        self.handled += 1
        try:
            line = raw.decode("ascii")
        except UnicodeDecodeError:
            return "ERR request is not ASCII"
        verb, _, rest = line.partition("\t")
        try:
            if verb == "JSON":
                return json.dumps(self.admin(json.loads(rest)))
            fields = rest.split("\t") if rest else []
            if verb in ("AUTH", "ACCT"):
                return self._hook(verb, fields)
            if verb in ("SUCC", "FAIL") and len(fields) == 1 and fields[0].isdigit():
                token = int(fields[0])
                if verb == "SUCC":
                    self.policy.succeed(token)
                else:
                    self.policy.fail(token)
                return "OK"
            return "ERR unknown request"
        except Exception as exc:  # one bad request must not stop the guard
            log.exception("request failed")
            return f"ERR {type(exc).__name__}"

    def _hook(self, verb: str, fields: list[str]) -> str:
        if len(fields) not in (3, 4) or not all(is_clean_field(f) for f in fields[:3]):
            return "ERR malformed request"
        service, user, rhost = fields[:3]
        if verb == "ACCT":
            d = self.policy.account(service, user, rhost)
        else:
            prev = int(fields[3]) if len(fields) == 4 and fields[3].isdigit() else None
            d = self.policy.reserve(service, user, rhost, prev)
        if d.allowed:
            return f"ALLOW {d.token}" if d.token is not None else "ALLOW"
        log.warning("%s refused: service=%s user=%s rhost=%s rule=%s until=%d",
                    "login" if verb == "AUTH" else "account", service, user, rhost, d.rule, d.until or 0)
        return f"DENY {d.rule} {int(d.until or 0)}"

    def admin(self, req: dict[str, Any]) -> dict[str, Any]:
        """Operator requests (status, list, explain, lift, forget, purge)."""
        op = req.get("op")
        p = self.policy
        result: Any
        if op == "ping":
            result = "pong"
        elif op == "status":
            result = p.status()
            result["service"] = {"running": True, "pid": os.getpid(), "uptime": round(self.clock() - self.started, 1),
                                 "socket": str(self.cfg.socket), "requests": self.handled}
        elif op == "list":
            result = p.records(req.get("user"), req.get("ip"), bool(req.get("locked")))
        elif op == "explain":
            result = p.explain(req["user"], req["ip"])
        elif op == "lift":
            result = {"lifted": p.lift(req.get("user"), req.get("ip"))}
        elif op == "forget":
            result = {"deleted": p.forget(req.get("user"), req.get("ip"))}
        elif op == "purge":
            result = {"deleted": p.purge()}
        else:
            return {"ok": False, "error": f"unknown operation {op!r}"}
        return {"ok": True, "result": result}

    # -- loop ----------------------------------------------------------------

    def run(self, ready: Callable[[], None] | None = None) -> None:
        """Serve until SIGTERM/SIGINT; purges and expires on a timer."""
        if self.listener is None:
            self.bind()
        self.policy.restore_blocks()
        self.policy.purge()
        self.running = True

        def stop(_sig: int, _frame: object) -> None:
            self.running = False

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        log.info("guard service listening on %s (store %s)", self.cfg.socket, self.cfg.db_path)
        if ready is not None:
            ready()
        next_tick = self.clock() + TICK_SECONDS
        next_purge = self.clock() + PURGE_SECONDS
        try:
            while self.running:
                timeout = max(0.0, next_tick - self.clock())
                for key, mask in self.sel.select(timeout):
                    if key.data is None:
                        self._accept()
                    elif mask & selectors.EVENT_READ:
                        self._read(key.data)
                    elif mask & selectors.EVENT_WRITE:
                        self._flush(key.data)
                now = self.clock()
                if now >= next_tick:
                    self.policy.tick(now)
                    next_tick = now + TICK_SECONDS
                if now >= next_purge:
                    removed = self.policy.purge(now)
                    if removed:
                        log.info("purged %d attempt records older than the retention", removed)
                    next_purge = now + PURGE_SECONDS
        finally:
            self.close()

    def close(self) -> None:
        """Close every socket, remove the socket file, close the store."""
        for key in list(self.sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self.sel.close()
        if self.listener is not None:
            if not self.inherited:
                Path(self.cfg.socket).unlink(missing_ok=True)
            self.listener = None
        self.conn.close()
