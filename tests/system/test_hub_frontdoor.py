"""The front door for apps: nginx + auth_request to the Hub, per-slot sessions, listener ownership.

Attacks from the other side: another slot's app URL with my session, a squatted app port
(refused by the front door and by `wait_listening`, which used to accept whoever answered),
and the Hub's cookie never reaching an app.
"""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.supervisor import program_name, supervisor_for
from tests.system.fixtures.hub import HubLab, close_hub_lab, make_hub_lab
from tests.system.fixtures.processes import as_user, wait_for

pytestmark = [pytest.mark.root]

FAKE = textwrap.dedent("""\
    import http.server, sys
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            with open(sys.argv[2], "a") as log:
                log.write(repr(self.headers.get("Cookie")) + "\\n")
            body = b"<form>fake login: give me your password</form>"
            self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
            self.wfile.write(body)
        def log_message(self, *a):
            pass
    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
""")


@pytest.fixture(scope="module")
def hub() -> Iterator[HubLab]:
    lab = make_hub_lab("hubfd")
    try:
        yield lab
    finally:
        close_hub_lab(lab)


@pytest.fixture(scope="module")
def owner(hub: HubLab) -> tuple[str, int]:
    """A slot with transmission installed, and the app's port."""
    name = hub.create_slot()
    out = hub.slotctl_json("app", "install", name, "transmission")
    port = next(a["port"] for a in hub.slotctl_json("app", "status", name) if a["app"] == "transmission")
    assert out["app"] == "transmission"
    return name, port


def stop_group(p: subprocess.Popen[bytes]) -> None:
    """Kill the process group we started (runuser and the server under it) and reap runuser."""
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait()


def serve_fake(hub: HubLab, user: str, port: int) -> tuple[subprocess.Popen[bytes], Path]:
    script, log = hub.host.base / "fake.py", hub.host.base / f"fake-{user}.log"
    script.write_text(FAKE)
    script.chmod(0o644)
    log.write_text("")
    log.chmod(0o666)
    p = subprocess.Popen(["runuser", "-u", user, "--", "/usr/bin/python3", str(script), str(port), str(log)],
                         start_new_session=True)
    wait_for(lambda: subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True,
                                    text=True).stdout.strip() != "", timeout=20)
    return p, log


def test_my_app_through_the_front_door_shows_its_own_login(hub: HubLab, owner: tuple[str, int]) -> None:
    name, _port = owner
    with hub.client() as anonymous:
        r = anonymous.get(f"/apps/{name}/transmission/")
        assert r.status_code == 303 and r.headers["location"].endswith("/login")
    with hub.logged_in(name) as c:
        r = c.get(f"/apps/{name}/transmission/")
        # transmission's own login (HTTP basic auth) is the second layer
        assert r.status_code == 401 and 'realm="Transmission"' in r.headers.get("www-authenticate", "")
        creds = hub.slotctl_json("app", "creds", name, "transmission")
        assert creds["frontdoor_url"].endswith(f"/apps/{name}/transmission/")
        r = c.get(f"/apps/{name}/transmission/transmission/web/", auth=(creds["username"], creds["password"]))
        assert r.status_code in (200, 301, 302, 409), r.status_code


def test_another_slots_app_url_with_my_session_is_refused(hub: HubLab, owner: tuple[str, int]) -> None:
    name, _port = owner
    other = hub.create_slot()
    with hub.logged_in(other) as c:
        r = c.get(f"/apps/{name}/transmission/")
        assert r.status_code == 403
        assert c.get(f"/apps/{other}/transmission/").status_code == 403  # not installed


def test_a_squatted_port_is_refused_and_reported_and_rotate_will_not_trust_it(hub: HubLab,
                                                                             owner: tuple[str, int]) -> None:
    name, port = owner
    squatter = hub.create_slot()
    ctx = hub.host.ctx()
    sup = supervisor_for(ctx)
    prog = program_name("transmission", name)
    sup.stop(prog)
    fake, log = serve_fake(hub, squatter, port)
    try:
        with hub.logged_in(name) as c:
            r = c.get(f"/apps/{name}/transmission/")
            assert r.status_code == 403 and "fake login" not in r.text
        assert log.read_text() == ""  # not one request reached the squatter
        actions = [e["action"] for e in hub.host.ctx().store.audit_entries(name)]
        assert "hub.frontdoor-refused" in actions
        # the rotate path restarts the app and waits for it: a stranger's listener is not the app
        r = hub.host.slotctl("app", "rotate", name, "transmission")
        assert r.returncode == 1 and "squatted" in r.stderr, r.stderr
    finally:
        stop_group(fake)
        sup.start(prog)
        sup.wait_running(prog)


def test_the_hub_cookie_never_reaches_an_app(hub: HubLab, owner: tuple[str, int]) -> None:
    name, port = owner
    ctx = hub.host.ctx()
    sup = supervisor_for(ctx)
    prog = program_name("transmission", name)
    sup.stop(prog)
    own, log = serve_fake(hub, name, port)  # the slot's own process on its own port: admitted
    try:
        with hub.logged_in(name) as c:
            c.cookies.set("app_pref", "dark", domain="127.0.0.1")
            r = c.get(f"/apps/{name}/transmission/")
            assert r.status_code == 200 and "fake login" in r.text, (
                hub.host.ctx().store.audit_entries(name)[-3:], subprocess.run(
                    ["ss", "-Hltnpe", f"sport = :{port}"], capture_output=True, text=True).stdout)
        seen = log.read_text()
        assert "app_pref=dark" in seen and "__Host-sw" not in seen, seen
    finally:
        stop_group(own)
        sup.start(prog)
        sup.wait_running(prog)


def test_the_front_door_runs_nginx_workers_as_the_hub_user(hub: HubLab) -> None:
    master = hub.children()["nginx"]
    workers = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True).stdout.split()
    uid = int(subprocess.run(["id", "-u", hub.hub_user], capture_output=True, text=True).stdout)
    assert workers and all(
        f"Uid:\t{uid}\t{uid}" in Path(f"/proc/{w}/status").read_text() for w in workers)
    web_sock = hub.host.base / "hub-web" / "hub.sock"
    assert oct(web_sock.parent.stat().st_mode & 0o777) == "0o700" and web_sock.parent.stat().st_uid == uid


def test_another_tenant_cannot_connect_to_my_apps_port(hub: HubLab, owner: tuple[str, int]) -> None:
    name, port = owner
    stranger = hub.create_slot()
    probe = ("import socket, sys\ntry:\n    socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=5)"
             ".close()\nexcept OSError as e:\n    print('refused', e.errno)\nelse:\n    print('connected')\n")
    script = hub.host.base / "probe.py"
    script.write_text(probe)
    script.chmod(0o644)

    def attempt(user: str) -> str:
        return as_user(user, f"/usr/bin/python3 {script} {port}").stdout.strip()

    wait_for(lambda: attempt(stranger).startswith("refused"), timeout=30, what=attempt(stranger))  # the fence
    assert attempt(name) == "connected"  # the slot itself still reaches its app
    with hub.logged_in(name) as c:  # and so does the front door (the Hub's user)
        assert c.get(f"/apps/{name}/transmission/").status_code == 401
