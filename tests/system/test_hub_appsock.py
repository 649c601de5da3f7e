"""Socket apps behind the front door: JupyterLab and WordPress on the slot's private Unix sockets.

In a real browser (Debian's chromium through Playwright): each app opened at
``https://HOST/apps/<slot>/<app>/`` shows its own login and lets its owner in with the generated
credentials. Attacks from the other side: another tenant connecting to the socket (and to the
front door's link) directly, another slot's app URL with my session, a squatted socket, a
symlink swapped in for the socket, and one planted where the install makes the app's socket
directory.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from provisioner.supervisor import program_name, supervisor_for
from tests.system.fixtures.apps import MariaDB
from tests.system.fixtures.hub import HubLab, close_hub_lab, make_hub_lab
from tests.system.fixtures.processes import as_user, wait_for

pytestmark = [pytest.mark.root]

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
SHOTS = Path(os.environ.get("SLOTWARDEN_SCREENSHOTS", "/tmp/slotwarden-hub-screens"))

# A server on a Unix socket that logs every request it gets (the squatter's, the victim's).
FAKE = textwrap.dedent("""\
    import http.server, os, socketserver, sys
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            with open(sys.argv[2], "a") as log:
                log.write(self.path + "\\n")
            body = b"<form>fake login: give me your password</form>"
            self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
            self.wfile.write(body)
        def log_message(self, *a):
            pass
        def address_string(self):
            return "unix"
    class S(socketserver.UnixStreamServer):
        pass
    try:
        os.unlink(sys.argv[1])
    except FileNotFoundError:
        pass
    srv = S(sys.argv[1], H)
    os.chmod(sys.argv[1], 0o666)
    srv.serve_forever()
""")
PROBE = ("import socket, sys\ntry:\n    socket.socket(socket.AF_UNIX).connect(sys.argv[1])\n"
         "except OSError as e:\n    print(type(e).__name__)\nelse:\n    print('connected')\n")


@pytest.fixture(scope="module")
def mariadb() -> Iterator[MariaDB]:
    root = Path(tempfile.mkdtemp(prefix="slotwarden-hubsock-db-", dir="/tmp"))
    os.chmod(root, 0o711)
    db = MariaDB(root / "mariadb")
    try:
        db.start()
        yield db
    finally:
        db.stop()
        subprocess.run(["rm", "-rf", str(root)], check=False)


@pytest.fixture(scope="module")
def hub(mariadb: MariaDB) -> Iterator[HubLab]:
    lab = make_hub_lab("hubsock", extra=f'[apps.wordpress]\nmysql_socket = "{mariadb.socket}"\n')
    try:
        yield lab
    finally:
        close_hub_lab(lab)


@pytest.fixture(scope="module")
def owner(hub: HubLab) -> str:
    """A slot with JupyterLab and WordPress installed (both on sockets, no TCP port)."""
    name = hub.create_slot()
    for app in ("wordpress", "jupyterlab"):
        out = hub.slotctl_json("app", "install", name, app)
        assert out["frontdoor_url"] == f"{hub.url}/apps/{name}/{app}/", out
        assert out["url"].startswith(out["frontdoor_url"])
    status = hub.slotctl_json("app", "status", name)
    assert all(r["ports"] == {} and r["running"] for r in status), status
    return name


def sock_dir(hub: HubLab, name: str, app: str) -> Path:
    return hub.host.base / "appsock" / name / app


def creds(hub: HubLab, name: str, app: str) -> dict[str, str]:
    return hub.slotctl_json("app", "creds", name, app)  # type: ignore[no-any-return]


def serve_fake(hub: HubLab, user: str, path: Path, tag: str) -> tuple[subprocess.Popen[bytes], Path]:
    script, log = hub.host.base / "fake_unix.py", hub.host.base / f"fake-{tag}.log"
    script.write_text(FAKE)
    script.chmod(0o644)
    log.write_text("")
    log.chmod(0o666)
    p = subprocess.Popen(["runuser", "-u", user, "--", "/usr/bin/python3", str(script), str(path), str(log)],
                         start_new_session=True)
    wait_for(lambda: as_user(user, f"/usr/bin/python3 -c {shq(PROBE)} {path}").stdout.strip() == "connected",
             timeout=20)
    return p, log


def shq(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


def stop_group(p: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait()


def refusals(hub: HubLab, name: str) -> list[str]:
    return [e["detail"].get("reason", "") for e in hub.host.ctx().store.audit_entries(name)
            if e["action"] == "hub.frontdoor-refused"]


# --- through the front door, over HTTP -----------------------------------------------------


def test_jupyterlab_through_the_front_door_keeps_its_own_login(hub: HubLab, owner: str) -> None:
    base = f"/apps/{owner}/jupyterlab"
    with hub.client() as anonymous:
        r = anonymous.get(f"{base}/lab")
        assert r.status_code == 303 and r.headers["location"].endswith("/login")
    with hub.logged_in(owner) as c:
        r = c.get(f"{base}/lab")  # JupyterLab's own login, at its own prefix
        assert r.status_code == 302 and r.headers["location"].startswith(f"{base}/login"), r.headers
        page = c.get(f"{base}/login")
        assert page.status_code == 200 and "password" in page.text
        assert c.get(f"{base}/api/status").status_code == 403
        xsrf = c.cookies.get("_xsrf", path=f"{base}/") or c.cookies.get("_xsrf")
        r = c.post(f"{base}/login?next={base}/lab", data={"password": creds(hub, owner, "jupyterlab")["password"],
                                                          "_xsrf": xsrf})
        assert r.status_code == 302 and r.headers["location"] == f"{base}/lab", (r.status_code, r.text[:300])
        assert c.get(f"{base}/api/status").status_code == 200


def test_wordpress_through_the_front_door_keeps_its_own_login(hub: HubLab, owner: str) -> None:
    base = f"/apps/{owner}/wordpress"
    with hub.logged_in(owner) as c:
        r = c.get(f"{base}/wp-admin/")
        assert r.status_code == 302 and f"{hub.url}{base}/wp-login.php" in r.headers["location"], r.headers
        page = c.get(f"{base}/wp-login.php")
        assert page.status_code == 200 and 'id="user_login"' in page.text
        assert f"{hub.url}{base}/" in page.text  # its links carry the front-door URL
        r = c.post(f"{base}/wp-login.php", data={"log": owner, "pwd": creds(hub, owner, "wordpress")["password"],
                                                  "wp-submit": "Log In", "testcookie": "1",
                                                  "redirect_to": f"{hub.url}{base}/wp-admin/"})
        assert r.status_code == 302 and r.headers["location"] == f"{hub.url}{base}/wp-admin/", r.status_code
        dash = c.get(f"{base}/wp-admin/")
        assert dash.status_code == 200 and "Dashboard" in dash.text


# --- attacks -------------------------------------------------------------------------------


def test_another_tenant_cannot_connect_to_my_apps_socket_or_its_front_door_link(hub: HubLab, owner: str) -> None:
    stranger = hub.create_slot()
    with hub.logged_in(owner) as c:  # the link exists once the front door has used it
        assert c.get(f"/apps/{owner}/jupyterlab/login").status_code == 200
    link = hub.host.base / "appsock" / ".frontdoor" / f"{owner}.jupyterlab.sock"
    assert link.exists()
    for target in (sock_dir(hub, owner, "jupyterlab") / "http.sock", link,
                   sock_dir(hub, owner, "wordpress") / "http.sock"):
        assert as_user(stranger, f"/usr/bin/python3 -c {shq(PROBE)} {target}").stdout.strip() == "PermissionError"
    assert as_user(owner, f"/usr/bin/python3 -c {shq(PROBE)} {sock_dir(hub, owner, 'jupyterlab')}/http.sock"
                   ).stdout.strip() == "connected"
    # and no TCP listener of theirs exists to reach instead
    uid = int(as_user(owner, "id -u").stdout)
    listeners = subprocess.run(["ss", "-Hltne"], capture_output=True, text=True).stdout
    assert f"uid:{uid} " not in listeners


def test_another_slots_app_url_with_my_session_is_refused(hub: HubLab, owner: str) -> None:
    other = hub.create_slot()
    with hub.logged_in(other) as c:
        for app in ("jupyterlab", "wordpress"):
            r = c.get(f"/apps/{owner}/{app}/login")
            assert r.status_code == 403 and "password" not in r.text
        assert c.get(f"/apps/{other}/jupyterlab/").status_code == 403  # not installed


def test_a_squatted_socket_is_refused_and_reported_and_rotate_will_not_trust_it(hub: HubLab, owner: str) -> None:
    squatter = hub.create_slot()
    sup = supervisor_for(hub.host.ctx())
    prog = program_name("jupyterlab", owner)
    d = sock_dir(hub, owner, "jupyterlab")
    sup.stop(prog)
    seen = len(refusals(hub, owner))
    with hub.logged_in(owner) as c:  # an app that is down: not answered, and not reported as an attack
        # 502: the link still names its (dead) socket, nobody can bind that inode again; 403: gone
        assert c.get(f"/apps/{owner}/jupyterlab/login").status_code in (403, 502)
    assert len(refusals(hub, owner)) == seen
    # the owner opened its directories to everyone (its own choice); another tenant binds the path
    d.parent.chmod(0o777)
    d.chmod(0o2777)
    fake, log = serve_fake(hub, squatter, d / "http.sock", "squat")
    try:
        with hub.logged_in(owner) as c:
            r = c.get(f"/apps/{owner}/jupyterlab/login")
            assert r.status_code == 403 and "fake login" not in r.text
        assert log.read_text() == ""  # not one request reached the squatter
        assert any("squatted socket" in reason for reason in refusals(hub, owner)), refusals(hub, owner)
        r = hub.host.slotctl("app", "rotate", owner, "jupyterlab")
        assert r.returncode == 1 and "squatted socket" in r.stderr, r.stderr
    finally:
        stop_group(fake)
        d.parent.chmod(0o700)
        d.chmod(0o2700)
        (d / "http.sock").unlink(missing_ok=True)
        sup.stop(prog)
        sup.start(prog)
        sup.wait_running(prog)
    uid = int(as_user(owner, "id -u").stdout)
    wait_for(lambda: (d / "http.sock").exists() and (d / "http.sock").stat().st_uid == uid, timeout=60)
    with hub.logged_in(owner) as c:
        wait_for(lambda: c.get(f"/apps/{owner}/jupyterlab/login").status_code == 200, timeout=60)


def test_a_symlink_swapped_in_for_the_socket_is_refused_and_never_followed(hub: HubLab, owner: str) -> None:
    victim = hub.create_slot()
    victim_dir = hub.host.base / f"victim-{victim}"
    victim_dir.mkdir(mode=0o755)
    os.chown(victim_dir, int(as_user(victim, "id -u").stdout), -1)
    victim_sock = victim_dir / "http.sock"  # a listener the front door's user could reach
    fake, log = serve_fake(hub, victim, victim_sock, "victim")
    d = sock_dir(hub, owner, "wordpress")
    sup = supervisor_for(hub.host.ctx())
    prog = program_name("wordpress", owner)
    try:
        with hub.logged_in(owner) as c:
            assert c.get(f"/apps/{owner}/wordpress/wp-login.php").status_code == 200
            # the tenant points its socket's name at another tenant's listener
            as_user(owner, f"ln -sfn {victim_sock} {d}/http.sock.new && mv -T {d}/http.sock.new {d}/http.sock")
            assert (d / "http.sock").is_symlink()
            r = c.get(f"/apps/{owner}/wordpress/wp-login.php")
            assert r.status_code == 403 and "fake login" not in r.text
        assert log.read_text() == ""
        assert any("symlink" in reason for reason in refusals(hub, owner)), refusals(hub, owner)
    finally:
        stop_group(fake)
        sup.stop(prog)  # nginx's start removes whatever is at its socket's name, then binds
        sup.start(prog)
        sup.wait_running(prog)
    with hub.logged_in(owner) as c:
        wait_for(lambda: c.get(f"/apps/{owner}/wordpress/wp-login.php").status_code == 200, timeout=60)


def test_a_symlink_planted_where_the_install_makes_the_socket_dir_is_not_followed(hub: HubLab) -> None:
    name = hub.create_slot()
    hub.slotctl_json("app", "install", name, "jupyterlab")  # the slot's socket directory is there now
    front = hub.host.base / "appsock" / ".frontdoor"
    front.mkdir(mode=0o750, exist_ok=True)  # root's (made by the Hub's first use)
    before = front.stat()
    # where wordpress's socket directory will be made, the tenant plants a link to root's directory
    r = as_user(name, f"ln -s {front} {hub.host.base}/appsock/{name}/wordpress")
    assert r.returncode == 0, r.stderr
    out = hub.slotctl_json("app", "install", name, "wordpress")
    assert out["app"] == "wordpress"
    after = front.stat()
    assert (after.st_uid, after.st_gid, after.st_mode) == (before.st_uid, before.st_gid, before.st_mode)
    assert after.st_uid == 0 and not (front / "http.sock").exists()
    d = sock_dir(hub, name, "wordpress")
    assert d.is_dir() and not d.is_symlink() and (d / "http.sock").exists()
    with hub.logged_in(name) as c:
        assert c.get(f"/apps/{name}/wordpress/wp-login.php").status_code == 200
    hub.slotctl_json("app", "uninstall", name, "jupyterlab")
    hub.slotctl_json("app", "uninstall", name, "wordpress")
    assert not (hub.host.base / "appsock" / name).exists()


# --- in a real browser ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Debian's chromium is needed (make deps installs it)"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    ctx = browser.new_context(ignore_https_errors=True, viewport={"width": 1100, "height": 800})
    try:
        yield ctx.new_page()
    finally:
        ctx.close()


def shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"hub-{name}.png"), full_page=True)


def hub_login(page: Any, hub: HubLab, username: str) -> None:
    page.goto(f"{hub.url}/login")
    page.fill("#username", username)
    page.fill("#password", hub.passwords[username])
    page.click("#login")
    page.wait_for_url(re.compile(r".*/overview$"))


def test_jupyterlab_in_the_browser_its_login_then_the_lab(hub: HubLab, owner: str, page: Any) -> None:
    page.goto(f"{hub.url}/apps/{owner}/jupyterlab/lab")
    assert page.url.endswith("/login")  # no Hub session: the Hub's login first
    hub_login(page, hub, owner)
    page.goto(f"{hub.url}/apps/{owner}/jupyterlab/lab")
    page.wait_for_selector("input[type=password]")
    assert f"/apps/{owner}/jupyterlab/login" in page.url
    shot(page, "jupyterlab-login")
    page.fill("input[type=password]", creds(hub, owner, "jupyterlab")["password"])
    page.click("#login_submit")
    page.wait_for_selector("#jp-main-dock-panel", timeout=90000)
    page.wait_for_selector(".jp-Launcher", timeout=90000)
    assert page.url.startswith(f"{hub.url}/apps/{owner}/jupyterlab/lab")
    shot(page, "jupyterlab-through-front-door")
    # a notebook's kernel talks over a WebSocket through the front door too
    page.click('.jp-LauncherCard[data-category="Notebook"]')
    page.wait_for_selector(".jp-Notebook .jp-Cell .cm-content", timeout=90000)
    page.wait_for_selector("text=Python 3 (ipykernel) | Idle", timeout=120000)  # connected over its WebSocket
    page.click(".jp-Notebook .jp-Cell .cm-content")
    page.keyboard.type("print(6 * 7)")
    page.keyboard.press("Shift+Enter")
    page.wait_for_selector(".jp-OutputArea-output >> text=42", timeout=120000)
    shot(page, "jupyterlab-notebook-through-front-door")


def test_wordpress_in_the_browser_its_login_then_the_dashboard(hub: HubLab, owner: str, page: Any) -> None:
    hub_login(page, hub, owner)
    page.goto(f"{hub.url}/apps/{owner}/wordpress/wp-admin/")
    page.wait_for_selector("#user_login")
    assert f"/apps/{owner}/wordpress/wp-login.php" in page.url
    shot(page, "wordpress-login")
    page.fill("#user_login", owner)
    page.fill("#user_pass", creds(hub, owner, "wordpress")["password"])
    page.click("#wp-submit")
    page.wait_for_selector("#wpadminbar")
    assert page.url.startswith(f"{hub.url}/apps/{owner}/wordpress/wp-admin/")
    assert "Dashboard" in page.content()
    shot(page, "wordpress-through-front-door")


def test_the_apps_page_shows_the_front_door_urls(hub: HubLab, owner: str, page: Any) -> None:
    hub_login(page, hub, owner)
    page.goto(f"{hub.url}/apps")
    text = page.content()
    for app in ("jupyterlab", "wordpress"):
        assert f"{hub.url}/apps/{owner}/{app}/" in text
    shot(page, "apps-sockets")

