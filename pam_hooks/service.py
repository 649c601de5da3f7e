"""GuardService: the long-running guard process behind ``slotctl guard serve``.

One thread, one ``selectors`` loop: every request from the PAM module (and from
the operator CLI) is decided in arrival order against the store, which is what
makes the counts exact under any concurrency. The socket is root-only (0600 and
an SO_PEERCRED check), so a tenant can neither read records nor reset a count.

Run it in the foreground under a supervisor::

    python3 -m pam_hooks serve           # or: slotctl guard serve

Under systemd the socket comes from ``slotwarden-guard.socket`` (socket
activation, ``LISTEN_FDS``), so it exists before ``ssh.service`` starts and
across restarts: a login in between waits in the socket's backlog instead of
finding nothing. Running out of descriptors (EMFILE) or a flood of idle
connections never stops the service: it drops the longest-idle connection that
has no request in progress and goes on deciding. A damaged store is set aside
(kept) and a fresh one started; ``status`` says so.
"""

from __future__ import annotations

import errno
import json
import logging
import logging.handlers
import os
import resource
import selectors
import signal
import socket
import sqlite3
import stat
import struct
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pam_hooks.config import GuardConfig
from pam_hooks.policy import LockoutPolicy, local_origin
from pam_hooks.protocol import MAX_LINE, is_clean_field
from pam_hooks.store import SCHEMA, is_corruption, open_checked, set_aside

if TYPE_CHECKING:
    from pam_hooks.shared import SharedPolicy

SD_LISTEN_FDS_START = 3
# accept() errors that mean "no descriptor or memory right now", not "the socket is broken".
_RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
# A connection silent this long is closed (the PAM module's timeout is at most 60 s).
IDLE_SECONDS = 65.0
PAUSE_SECONDS = 0.05
ACCEPTS_PER_ROUND = 256
EVICT_GRACE = 0.05

log = logging.getLogger("slotwarden.guard")

TICK_SECONDS = 1.0
# With a shared store the tick also pulls the fleet's locks: twice a second, so a lock set on
# another host reaches this host's copy (which answers the account phase) well within 1 s.
SHARED_TICK_SECONDS = 0.5
SLOW_SECONDS = 0.1
PURGE_SECONDS = 60.0


class _PrintableFormatter(logging.Formatter):
    """Every byte outside printable ASCII (a newline in a traceback, an ESC) becomes %XX."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return "".join(c if " " <= c <= "~" else "".join(f"%{b:02X}" for b in c.encode("utf-8", "surrogateescape"))
                       for c in text)


def setup_logging(verbose: bool = False, syslog_socket: Path = Path("/dev/log")) -> None:
    """Log to syslog (authpriv) when there is one, and always to stderr for the supervisor.

    Lines are printable ASCII only: an attacker's username cannot start a new
    log line or send an escape sequence to whoever reads the log.
    """
    root = logging.getLogger("slotwarden")
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    if root.handlers:
        return
    err = logging.StreamHandler()
    err.setFormatter(_PrintableFormatter("%(asctime)s guard %(levelname)s %(message)s"))
    root.addHandler(err)
    if os.path.exists(syslog_socket):
        try:
            sys_h = logging.handlers.SysLogHandler(
                str(syslog_socket), facility=logging.handlers.SysLogHandler.LOG_AUTHPRIV)
            sys_h.setFormatter(_PrintableFormatter("slotwarden-guard: %(message)s"))
            root.addHandler(sys_h)
        except OSError:
            pass


def listen_fds() -> list[int]:
    """Descriptors handed over by systemd socket activation (``LISTEN_PID``/``LISTEN_FDS``), then unset."""
    pid, n = os.environ.get("LISTEN_PID", ""), os.environ.get("LISTEN_FDS", "")
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(var, None)
    if not pid.isdigit() or int(pid) != os.getpid() or not n.isdigit():
        return []
    return list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(n)))


def notify_ready() -> None:
    """Tell systemd (``Type=notify``) that the service decides now; nothing without NOTIFY_SOCKET."""
    addr = os.environ.pop("NOTIFY_SOCKET", "")
    if not addr or addr[0] not in "@/":
        return
    target = "\0" + addr[1:] if addr[0] == "@" else addr
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.connect(target)
            s.sendall(b"READY=1")
        except OSError:
            pass


class _Conn:
    __slots__ = ("closed", "inbuf", "last", "outbuf", "sock")

    def __init__(self, sock: socket.socket, now: float) -> None:
        self.sock = sock
        self.inbuf = b""
        self.outbuf = b""
        self.last = now
        self.closed = False

    @property
    def busy(self) -> bool:
        """A request half read or a reply not yet sent: closing it would lose a decision."""
        return bool(self.inbuf or self.outbuf)


class GuardService:
    """Owns the socket, the store connection and the policy; ``run()`` blocks."""

    def __init__(self, cfg: GuardConfig, clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.clock = clock
        self.recoveries: list[dict[str, Any]] = []
        self.conn, note = self._open()
        if note is not None:
            self._degraded(note)
        blocker = None
        if cfg.network_block:
            from pam_hooks.netblock import NetBlock

            blocker = NetBlock()
        self.policy: LockoutPolicy | SharedPolicy
        if cfg.store is not None:
            # The fleet's shared store: psycopg is imported here and only here.
            from pam_hooks.shared import SharedPolicy

            self.policy = SharedPolicy(cfg, self.conn, blocker, clock)
            self.policy.start()
        else:
            self.policy = LockoutPolicy(cfg, self.conn, blocker, clock)
        self.sel = selectors.DefaultSelector()
        self.listener: socket.socket | None = None
        self.activated = False
        self.paused_until = 0.0
        self.conns: set[_Conn] = set()
        self.now = clock()  # the loop's time, read once per round (connection idle times)
        self.running = False
        self.started = clock()
        self.handled = 0
        self.stats: dict[str, int] = {"allowed": 0, "refused": 0, "accept_errors": 0, "evicted": 0,
                                      "idle_closed": 0, "store_recoveries": len(self.recoveries), "slow": 0}
        self._last_accept_log = 0.0

    def _degraded(self, note: str) -> None:
        self.recoveries.append({"at": round(self.clock(), 3), "note": note})
        log.critical("GUARD STORE DAMAGED: %s", note)

    def _open(self) -> tuple[sqlite3.Connection, str | None]:
        """The store on disk, or (unusable: unwritable, full disk) one in memory, so the guard still decides.

        A supervisor restarting a service that cannot open its store would
        leave logins to fail_mode meanwhile; deciding from memory keeps the
        limits, only not across a restart.
        """
        try:
            return open_checked(self.cfg.db_path)
        except (sqlite3.Error, OSError) as exc:
            conn = sqlite3.connect(":memory:", isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.executescript(SCHEMA)
            return conn, (f"store {self.cfg.db_path} cannot be used ({exc}); deciding from a store in memory, "
                          "records and locks are lost at the next restart")

    def recover_store(self, exc: BaseException) -> None:
        """The store broke while serving: set it aside, start a fresh one, keep deciding."""
        try:
            self.conn.close()
        except sqlite3.Error:
            pass
        try:
            kept = str(set_aside(self.cfg.db_path))
        except OSError as err:
            kept = f"nowhere ({err})"
        self.conn, note = self._open()
        self.policy.conn = self.conn
        self._degraded(f"store {self.cfg.db_path} was damaged while serving ({exc}); set aside as {kept}, "
                       "started a fresh store" + (f"; {note}" if note else ""))
        self.stats["store_recoveries"] = len(self.recoveries)

    # -- socket --------------------------------------------------------------

    def bind(self) -> None:
        """Take the socket from systemd, or create the root-only socket (refused if a guard answers)."""
        fds = listen_fds()
        if fds:
            sock = socket.socket(fileno=fds[0])
            if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
                raise RuntimeError("the socket systemd passed is not a unix stream socket")
            for extra in fds[1:]:
                os.close(extra)
            self.activated = True
        else:
            sock = self._create_socket()
        sock.set_inheritable(False)
        sock.setblocking(False)
        self.sel.register(sock, selectors.EVENT_READ, None)
        self.listener = sock

    def _create_socket(self) -> socket.socket:
        return bind_socket(self.cfg.socket)

    def _accept(self) -> None:
        assert self.listener is not None
        # Bounded per round, so the requests of those accepted are read before more come in.
        for _ in range(ACCEPTS_PER_ROUND):
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno not in _RESOURCE_ERRNOS and exc.errno != errno.ECONNABORTED:
                    raise
                if exc.errno == errno.ECONNABORTED:
                    continue
                self.stats["accept_errors"] += 1
                now = self.clock()
                if now - self._last_accept_log > 10:
                    log.error("accept() failed: %s (%d connections open); dropping idle ones", exc.strerror,
                              len(self.conns))
                    self._last_accept_log = now
                if self._evict_idle():
                    continue
                # Nothing to drop: wait a moment; the clients stay queued in the backlog.
                self._pause()
                return
            self._admit(sock)

    def _admit(self, sock: socket.socket) -> None:
        try:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        except OSError:
            sock.close()
            return
        _pid, uid, _gid = struct.unpack("3i", creds)
        if uid != 0:
            log.warning("refused a guard connection from uid %d", uid)
            sock.close()
            return
        sock.setblocking(False)
        c = _Conn(sock, self.now)
        self.conns.add(c)
        self.sel.register(sock, selectors.EVENT_READ, c)

    def _evict_idle(self) -> bool:
        """Close the longest-idle connection with nothing sent and nothing to answer; False if there is none.

        Connections younger than ``EVICT_GRACE`` are kept.

        A connection whose request has arrived but is not read yet is not idle
        (peeked without reading): closing it would lose a decision.
        """
        # Oldest first, and not in its first moments: a PAM client between its connect() and its
        # send() is rarely the one dropped (and if it is, the module sends its request again).
        for c in sorted((c for c in self.conns if not c.busy and self.now - c.last >= EVICT_GRACE),
                        key=lambda c: c.last):
            try:
                pending = c.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                pending = None
            except OSError:
                pending = b""
            if pending:
                continue
            self.stats["evicted"] += 1
            self._close(c)
            return True
        return False

    def _pause(self) -> None:
        if self.listener is not None and self.paused_until == 0.0:
            self.sel.unregister(self.listener)
        self.paused_until = self.clock() + PAUSE_SECONDS

    def _resume(self) -> None:
        if self.listener is not None and self.paused_until:
            self.paused_until = 0.0
            self.sel.register(self.listener, selectors.EVENT_READ, None)

    def _close(self, c: _Conn) -> None:
        if c.closed:
            return
        c.closed = True
        self.conns.discard(c)
        self.sel.unregister(c.sock)
        c.sock.close()
        if self.paused_until:
            self._resume()

    def _close_idle(self, now: float) -> None:
        for c in [c for c in self.conns if now - c.last > IDLE_SECONDS]:
            self.stats["idle_closed"] += 1
            self._close(c)

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
        c.last = self.now
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
        if c.closed:
            return
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
        """Decide one request line; never raises. A damaged store is replaced and the request retried once."""
        self.handled += 1
        t0 = time.monotonic()
        try:
            return self._decide(raw)
        except sqlite3.DatabaseError as exc:
            if not is_corruption(exc):
                log.exception("request failed")
                return f"ERR {type(exc).__name__}"
            try:
                self.recover_store(exc)
                return self._decide(raw)
            except Exception as again:
                log.exception("request failed after the store was replaced")
                return f"ERR {type(again).__name__}"
        except Exception as exc:  # one bad request must not stop the guard
            log.exception("request failed")
            return f"ERR {type(exc).__name__}"
        finally:
            took = time.monotonic() - t0
            if took > SLOW_SECONDS:
                # A decision this slow risks the PAM module's timeout (then fail_mode decides).
                self.stats["slow"] += 1
                log.warning("slow decision: %.0f ms (the PAM module waits %d ms)", took * 1000, self.cfg.timeout_ms)

    def _decide(self, raw: bytes) -> str:
        try:
            line = raw.decode("ascii")
        except UnicodeDecodeError:
            return "ERR request is not ASCII"
        verb, _, rest = line.partition("\t")
        if verb == "JSON":
            try:
                req = json.loads(rest)
            except ValueError:
                return "ERR request is not JSON"
            if not isinstance(req, dict):
                return "ERR request is not a JSON object"
            try:
                return json.dumps(self.admin(req))
            except (KeyError, TypeError, ValueError) as exc:
                return json.dumps({"ok": False, "error": f"bad request: {type(exc).__name__} {exc}"})
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

    def _hook(self, verb: str, fields: list[str]) -> str:
        # AUTH service user rhost [prev [caller]]; ACCT service user rhost [caller]
        most = 5 if verb == "AUTH" else 4
        if not 3 <= len(fields) <= most or not all(is_clean_field(f) for f in fields):
            return "ERR malformed request"
        service, user, rhost = fields[:3]
        origin = rhost
        if not rhost or rhost.startswith("local:"):
            origin = local_origin(rhost, fields[most - 1] if len(fields) == most else None)
        if verb == "ACCT":
            d = self.policy.account(service, user, origin)
        else:
            prev = int(fields[3]) if len(fields) >= 4 and fields[3].isdigit() and int(fields[3]) > 0 else None
            d = self.policy.reserve(service, user, origin, prev)
        self.stats["allowed" if d.allowed else "refused"] += 1
        if d.allowed:
            return f"ALLOW {d.token}" if d.token is not None else "ALLOW"
        log.warning("%s refused: service=%s user=%s origin=%s rule=%s until=%d",
                    "login" if verb == "AUTH" else "account", service, user, origin, d.rule, d.until or 0)
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
                                 "socket": str(self.cfg.socket), "requests": self.handled,
                                 "socket_activated": self.activated, "connections": len(self.conns),
                                 "degraded": [r["note"] for r in self.recoveries]}
        elif op == "stats":
            result = {**self.stats, "requests": self.handled, "connections": len(self.conns),
                      "active_locks": p.active_lock_count()}
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
        _raise_nofile()
        self.policy.restore_blocks()
        self.policy.purge()
        self.running = True

        def stop(_sig: int, _frame: object) -> None:
            self.running = False

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        log.info("guard service listening on %s%s (store %s%s)", self.cfg.socket,
                 " (socket activated)" if self.activated else "", self.cfg.db_path,
                 f", shared store {self.cfg.store} as {self.cfg.store_host}" if self.cfg.store else "")
        notify_ready()
        if ready is not None:
            ready()
        tick_seconds = SHARED_TICK_SECONDS if self.cfg.store is not None else TICK_SECONDS
        next_tick = self.clock() + tick_seconds
        next_purge = self.clock() + PURGE_SECONDS
        try:
            while self.running:
                timeout = max(0.0, next_tick - self.clock())
                if self.paused_until:
                    timeout = min(timeout, max(0.0, self.paused_until - self.clock()))
                events = self.sel.select(timeout)
                now = self.now = self.clock()
                for key, mask in events:
                    c = key.data
                    try:
                        if c is None:
                            if not self.paused_until:
                                self._accept()
                        elif c.closed:  # dropped earlier in this round
                            continue
                        elif mask & selectors.EVENT_READ:
                            self._read(c)
                        elif mask & selectors.EVENT_WRITE:
                            self._flush(c)
                    except Exception:  # one connection must not stop the guard
                        log.exception("connection handling failed")
                        if c is not None:
                            self._close(c)
                if self.paused_until and now >= self.paused_until:
                    self._resume()
                if now >= next_tick:
                    self._upkeep(partial(self.policy.tick, now))
                    self._close_idle(now)
                    next_tick = now + tick_seconds
                if now >= next_purge:
                    self._upkeep(partial(self._purge, now))
                    next_purge = now + PURGE_SECONDS
        finally:
            self.close()

    def _purge(self, now: float) -> None:
        removed = self.policy.purge(now)
        if removed:
            log.info("purged %d attempt records older than the retention", removed)

    def _upkeep(self, job: Callable[[], None]) -> None:
        """Timer work: a damaged store is replaced, any other error logged; the loop goes on."""
        try:
            job()
        except sqlite3.DatabaseError as exc:
            if is_corruption(exc):
                self.recover_store(exc)
            else:
                log.exception("upkeep failed")
        except Exception:
            log.exception("upkeep failed")

    def close(self) -> None:
        """Close every socket, remove the socket file (unless systemd owns it), close the store."""
        for key in list(self.sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self.sel.close()
        if self.listener is not None:
            if not self.activated:
                _unlink_socket(Path(self.cfg.socket))
            self.listener.close()
            self.listener = None
        self.conns.clear()
        if hasattr(self.policy, "close"):
            self.policy.close()
        self.conn.close()


def bind_socket(path: Path) -> socket.socket:
    """The root-only (0600) listening socket at PATH; RuntimeError if a guard already answers there."""
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
    sock.listen(4096)
    return sock


def _unlink_socket(path: Path) -> None:
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            path.unlink()
    except FileNotFoundError:
        pass


def _raise_nofile() -> None:
    """Soft descriptor limit up to the hard one: more room before EMFILE."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
