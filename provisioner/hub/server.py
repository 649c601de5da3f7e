"""``slotctl hub serve``: the privileged bridge in this (root) process, HTTP in a child that is not root.

Order matters: as root, bind the bridge socket (0600, owned by the Hub's user) and the HTTPS
port, and load the TLS key; then fork. The child drops to the Hub's system user (no
supplementary groups, no way back to root) and serves HTTP with the already-bound socket; the
parent only runs the bridge. If either side dies the other is stopped, and the supervisor
restarts the pair.

>>> parse_listen("0.0.0.0:8443")
('0.0.0.0', 8443)
"""

from __future__ import annotations

import ctypes
import logging
import os
import pwd
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from provisioner.api.server import parse_listen
from provisioner.config import Config
from provisioner.context import Context
from provisioner.errors import BadInput, SlotError
from provisioner.hub.config import HubConfig, hub_config

log = logging.getLogger("slotwarden.hub")
PR_SET_PDEATHSIG = 1

__all__ = ["drop_privileges", "parse_listen", "serve"]


def drop_privileges(user: str) -> None:
    """Become USER for good: its group only, then its UID; fail loudly if root stays reachable."""
    pw = pwd.getpwnam(user)
    if pw.pw_uid == 0:
        raise SlotError(f"hub.user {user!r} is root: the Hub's web process must not run as root")
    os.setgroups([])
    os.setgid(pw.pw_gid)
    os.setuid(pw.pw_uid)
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise SlotError("could not drop root")  # pragma: no cover


def _bind(listen: str) -> socket.socket:
    host, port = parse_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SlotError(f"hub.listen {listen}: {exc.strerror}") from None
    sock.listen(512)
    sock.set_inheritable(True)
    return sock


def _web_child(hub: HubConfig, sock: socket.socket) -> None:
    """In the child: TLS loaded as root, then drop privileges, then serve HTTP until told to stop."""
    import uvicorn

    from provisioner.hub.client import BridgeClient
    from provisioner.hub.web import create_app

    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    config = uvicorn.Config(create_app(BridgeClient(hub.bridge_socket)), ssl_certfile=str(hub.cert),
                            ssl_keyfile=str(hub.key), log_level="warning", access_log=False,
                            proxy_headers=False, server_header=False, date_header=True)
    config.load()  # reads the key while still root
    drop_privileges(hub.user)
    uvicorn.Server(config).run(sockets=[sock])


def check_ready(config: Config, hub: HubConfig) -> int:
    """The Hub user's UID; refuse to start without host init, its user or its TLS files."""
    ctx = Context(config)
    try:
        ctx.settings  # noqa: B018 - refuse on a host that is not initialised
    finally:
        ctx.close()
    try:
        uid = pwd.getpwnam(hub.user).pw_uid
    except KeyError:
        raise SlotError(f"no user {hub.user!r}: run 'slotctl host init' (it creates the Hub's user)") from None
    for what, path in (("hub.cert", hub.cert), ("hub.key", hub.key)):
        if not Path(path).is_file():
            raise BadInput(f"{what} {path}: no such file (host init makes a self-signed pair)")
    return uid


def _start_sampler(bridge: Any, every: int) -> None:
    """Sample every slot into the history now and every EVERY seconds (a failure is logged, not fatal)."""
    import threading
    import time

    def loop() -> None:
        while True:
            try:
                bridge.sample()
            except Exception as exc:  # the Hub keeps serving without its charts
                log.warning("history sample failed: %s", exc)
            time.sleep(every)

    threading.Thread(target=loop, name="hub-history", daemon=True).start()


def serve(config: Config) -> None:
    """Run the Hub until SIGTERM: bridge here, HTTPS in an unprivileged child."""
    if os.geteuid() != 0:
        raise SlotError("hub serve runs as root (it drops the web process to hub.user itself)")
    from provisioner.hub.bridge import Bridge, BridgeServer

    hub = hub_config(config)
    uid = check_ready(config, hub)
    sock = _bind(hub.listen)
    bridge_server = BridgeServer(hub.bridge_socket, Bridge(config, hub), uid)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the web process
        code = 0
        try:
            bridge_server.socket.close()
            _web_child(hub, sock)
        except BaseException as exc:  # a child never returns into the parent's code
            print(f"slotwarden-hub: web process: {exc}", file=sys.stderr)
            code = 1
        os._exit(code)
    sock.close()

    def stop(_sig: int, _frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    bridge_server.serve_in_thread()
    _start_sampler(bridge_server.bridge, hub.history_every)
    try:
        _, status = os.waitpid(pid, 0)
        raise SystemExit(1 if status else 0)
    finally:
        try:
            os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        bridge_server.shutdown()
        bridge_server.server_close()
        try:
            Path(hub.bridge_socket).unlink()
        except FileNotFoundError:
            pass
