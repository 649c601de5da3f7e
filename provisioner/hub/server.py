"""``slotctl hub serve``: the privileged bridge in this (root) process, HTTP in children that are not root.

As root: bind the bridge socket (0600, owned by the Hub's user), then fork the web process,
which drops to the Hub's system user (no supplementary groups, no way back to root) before it
opens its Unix socket, then start nginx — the front door (:mod:`provisioner.hub.frontdoor`):
its master binds ``[hub] listen`` and reads the TLS key, its workers run as the Hub's user.
This process then only runs the bridge and the history sampler. If a child dies the others
are stopped, and the supervisor restarts the whole.

>>> parse_listen("0.0.0.0:8443")
('0.0.0.0', 8443)
"""

from __future__ import annotations

import ctypes
import grp
import logging
import os
import pwd
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from provisioner.config import Config
from provisioner.context import Context
from provisioner.errors import BadInput, SlotError
from provisioner.hub.config import HubConfig, hub_config
from provisioner.listen import check_listener, parse_listen

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


def _web_child(hub: HubConfig) -> None:
    """In the child: drop privileges, then serve HTTP on the web socket (nginx's only upstream)."""
    import uvicorn

    from provisioner.hub.client import BridgeClient
    from provisioner.hub.responses import ResponseTally, counted, report_every
    from provisioner.hub.web import create_app

    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    drop_privileges(hub.user)
    try:
        hub.web_socket.unlink()
    except FileNotFoundError:
        pass
    os.umask(0o077)
    client, tally = BridgeClient(hub.bridge_socket), ResponseTally()
    report_every(client, tally, hub.responses_every)  # hub.responses rows for the 5xx alert
    config = uvicorn.Config(counted(create_app(client, behind_front_door=True), tally),
                            uds=str(hub.web_socket), log_level="warning", access_log=False, proxy_headers=False,
                            server_header=False, date_header=True)
    uvicorn.Server(config).run()


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
    # The listener rule: the front door always has TLS, and every page but the login is behind one.
    check_listener("hub serve", parse_listen(hub.listen)[0], tls=True, authenticated=True, names_customers=True)
    return uid


FENCE_EVERY = 3  # seconds between app fence checks (a reload only when the registry changed)


def _every(name: str, seconds: float, job: Callable[[], object]) -> None:
    """Run JOB now and every SECONDS in a daemon thread; a failure is logged, the Hub keeps serving."""
    import threading
    import time

    def loop() -> None:
        while True:
            try:
                job()
            except Exception as exc:
                log.warning("%s failed: %s", name, exc)
            time.sleep(seconds)

    threading.Thread(target=loop, name=f"hub-{name}", daemon=True).start()


def start_front_door(config: Config, hub: HubConfig, user: str, group: str) -> subprocess.Popen[bytes]:
    """nginx in the foreground with the front door's own configuration (see :mod:`frontdoor`)."""
    from provisioner.hub.frontdoor import write_conf

    run_dir = config.state_dir / "hub"
    conf = write_conf(hub, run_dir, user, group)
    check = subprocess.run(["nginx", "-t", "-q", "-c", str(conf), "-g", "daemon off;"], capture_output=True,
                           text=True)
    if check.returncode != 0:
        raise SlotError(f"nginx refused the front door's configuration: {check.stderr.strip()[-300:]}")
    def die_with_the_hub() -> None:  # a killed `hub serve` must not leave nginx holding the port
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

    return subprocess.Popen(["nginx", "-c", str(conf), "-g", "daemon off;"], stdin=subprocess.DEVNULL,
                            preexec_fn=die_with_the_hub)  # before the bridge threads start


def _wait_either(*pids: int) -> int:
    """Block until one of PIDS (children of this process) exits; returns it, not reaped (the caller's
    cleanup waits for each by pid)."""
    import select

    fds = {os.pidfd_open(p): p for p in pids}
    try:
        ready, _, _ = select.select(list(fds), [], [])
        return fds[ready[0]]
    finally:
        for fd in fds:
            os.close(fd)


def serve(config: Config) -> None:
    """Run the Hub until SIGTERM: bridge here, HTTPS in an unprivileged child."""
    if os.geteuid() != 0:
        raise SlotError("hub serve runs as root (it drops the web process to hub.user itself)")
    from provisioner.hub.bridge import Bridge, BridgeServer

    hub = hub_config(config)
    uid = check_ready(config, hub)
    pw = pwd.getpwuid(uid)
    web_dir = hub.web_socket.parent
    web_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chown(web_dir, uid, pw.pw_gid)
    os.chmod(web_dir, 0o700)
    bridge_server = BridgeServer(hub.bridge_socket, Bridge(config, hub), uid)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the web process
        code = 0
        try:
            bridge_server.socket.close()
            _web_child(hub)
        except BaseException as exc:  # a child never returns into the parent's code
            print(f"slotwarden-hub: web process: {exc}", file=sys.stderr)
            code = 1
        os._exit(code)
    nginx = start_front_door(config, hub, pw.pw_name, grp.getgrgid(pw.pw_gid).gr_name)

    def stop(_sig: int, _frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    bridge_server.serve_in_thread()
    _every("app fence", FENCE_EVERY, lambda: bridge_server.bridge.fence(uid))
    _every("history sample", hub.history_every, bridge_server.bridge.sample)
    try:
        # Either child ending ends the Hub (the supervisor restarts the pair). Wait for these two
        # only: the bridge's threads fork children of their own (the support grant's idmapped
        # mount helper, commands) and wait for them; waitpid(-1) here would reap those first.
        ended = _wait_either(pid, nginx.pid)
        log.error("%s exited", "web process" if ended == pid else "nginx")
        raise SystemExit(1)
    finally:
        for child in (pid, nginx.pid):
            try:
                os.kill(child, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for child in (pid, nginx.pid):
            try:
                os.waitpid(child, 0)
            except ChildProcessError:
                pass
        bridge_server.shutdown()
        bridge_server.server_close()
        try:
            Path(hub.bridge_socket).unlink()
        except FileNotFoundError:
            pass
