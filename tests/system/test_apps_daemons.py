"""Each catalog app for real: install into a fresh slot, log in over HTTP, isolation, crash
recovery, rotation, and an uninstall that leaves nothing behind."""

from __future__ import annotations

import base64
import json
import os
import signal
import sqlite3
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any

import pytest

from provisioner.accounts import pids_of
from provisioner.apps import CREDENTIALS_FILE, AppCredentials, app_credentials, app_status, get_app
from provisioner.apps.registry import listening_ports
from provisioner.operations import install_app, rotate_app, uninstall_app
from tests.system.fixtures.apps import AppLab, http, make_lab
from tests.system.fixtures.processes import all_cmdlines, run_as, wait_for

pytestmark = pytest.mark.root


@dataclass(frozen=True)
class Target:
    """Where an app answers: BASE (its URL without the trailing slash) and, for a socket app, UDS."""

    base: str
    uds: str | None = None

    def get(self, path: str, **kw: Any) -> tuple[int, dict[str, str], str]:
        return http(self.base + path, uds=self.uds, **kw)


@dataclass(frozen=True)
class Probe:
    """How to log in to one app over HTTP, and which of its files hold a secret."""

    login: Callable[[Target, str, str], bool]
    anonymous_refused: Callable[[Target], bool]
    secret_files: tuple[str, ...]
    # What the app keeps outside its directory (a database...), to prove uninstall removes it.
    leftovers: Callable[[AppLab, str], list[str]] = lambda _lab, _user: []


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def transmission_login(t: Target, user: str, password: str) -> bool:
    status, _h, _b = t.get("/transmission/rpc", headers=_basic(user, password))
    return status == 409 or status == 200  # 409 = authenticated, asks for the session id


def transmission_anonymous(t: Target) -> bool:
    return t.get("/transmission/rpc")[0] == 401


def jupyter_login(t: Target, _user: str, password: str) -> bool:
    jar = CookieJar()
    t.get("/login", jar=jar)
    xsrf = next(c.value for c in jar if c.name == "_xsrf")
    nxt = urllib.parse.quote(urllib.parse.urlsplit(t.base).path + "/lab", safe="")
    status, _h, _ = t.get(f"/login?next={nxt}", data={"password": password, "_xsrf": xsrf}, jar=jar)
    if status != 302:
        return False
    return t.get("/api/status", jar=jar)[0] == 200


def jupyter_anonymous(t: Target) -> bool:
    return t.get("/api/status")[0] == 403


def wordpress_login(t: Target, user: str, password: str) -> bool:
    jar = CookieJar()
    t.get("/wp-login.php", jar=jar)  # sets the test cookie
    status, headers, _ = t.get("/wp-login.php", jar=jar, data={
        "log": user, "pwd": password, "wp-submit": "Log In", "redirect_to": f"{t.base}/wp-admin/",
        "testcookie": "1"})
    if status != 302 or "/wp-admin" not in headers.get("Location", ""):
        return False
    status, _h, body = t.get("/wp-admin/", jar=jar)
    return status == 200 and "Dashboard" in body


def wordpress_anonymous(t: Target) -> bool:
    status, headers, _ = t.get("/wp-admin/")
    return status == 302 and "wp-login.php" in headers.get("Location", "")


def wordpress_leftovers(lab: AppLab, user: str) -> list[str]:
    assert lab.mariadb is not None
    out = lab.mariadb.query(f"SELECT schema_name FROM information_schema.schemata WHERE schema_name = 'wp_{user}';"
                            f"SELECT user FROM mysql.user WHERE user = 'wp_{user}';")
    links = [str(p) for p in Path("/etc/wordpress").glob(f"config-sw-{user.encode().hex()}.php")]
    return out.split() + links


PROBES = {
    "wordpress": Probe(wordpress_login, wordpress_anonymous, ("wp-config.php",), wordpress_leftovers),
    "transmission": Probe(transmission_login, transmission_anonymous, ("config/settings.json",)),
    "jupyterlab": Probe(jupyter_login, jupyter_anonymous, ("config/jupyter_server_config.json",)),
}


@pytest.fixture(scope="module")
def lab() -> Iterator[AppLab]:
    if os.geteuid() != 0:
        pytest.fail("system tests run as root")
    yield from make_lab(20100, 20199, mariadb=True)


def _rows(lab: AppLab, username: str) -> dict[str, int]:
    db = sqlite3.connect(lab.root / "state" / "slotwarden.db")
    try:
        return {t: db.execute(f"SELECT count(*) FROM {t} WHERE username = ?", (username,)).fetchone()[0]
                for t in ("app_installs", "app_ports", "app_credentials")}
    finally:
        db.close()


def _pid(lab: AppLab, username: str, app: str) -> int:
    [row] = [r for r in app_status(lab.context(), username) if r["app"] == app]
    assert row["running"], row
    return int(row["pid"])


@pytest.mark.parametrize("app", sorted(PROBES))
def test_app_lifecycle(lab: AppLab, app: str) -> None:
    probe = PROBES[app]
    owner, other = lab.new_slot(), lab.new_slot()
    ctx = lab.context()
    creds = install_app(ctx, owner, app)
    assert isinstance(creds, AppCredentials)
    assert len(creds.password) >= 22 and creds.username == owner
    app_dir = Path(lab.host.slots_root / owner / "apps" / app)
    sock_dir = lab.root / "appsock" / owner / app
    if get_app(app).unix_socket:  # no TCP port at all: its private socket, its front-door URL
        port = None
        assert creds.frontdoor_url.endswith(f"/apps/{owner}/{app}/") and creds.url.startswith(creds.frontdoor_url)
        assert _rows(lab, owner)["app_ports"] == 0
        target = Target(creds.frontdoor_url.rstrip("/"), str(sock_dir / "http.sock"))
    else:
        port = int(creds.url.split(":")[2].split("/")[0])
        assert lab.port_min <= port <= lab.port_max
        target = Target(f"http://127.0.0.1:{port}")
    assert probe.leftovers(lab, owner) or app != "wordpress"

    # Log in with the generated credentials; wrong or none are refused.
    assert probe.login(target, owner, creds.password)
    assert not probe.login(target, owner, creds.password[:-1] + ("x" if creds.password[-1] != "x" else "y"))
    assert probe.anonymous_refused(target)

    # The CLI reveals the same credentials (audited), with url/username/password.
    out = lab.slotctl("app", "creds", owner, app, "--json")
    assert out.returncode == 0, out.stderr
    revealed = json.loads(out.stdout)
    assert {revealed[k] for k in ("app", "username", "password", "url")} == {app, owner, creds.password, creds.url}
    assert any(e["action"] == "app.creds.reveal" for e in ctx.store.audit_entries(owner))

    # The owner's copy and the app's secret-bearing config: 0600, the slot user's; no other
    # tenant can read them.
    owner_uid = (lab.host.slots_root / owner).stat().st_uid
    for rel in (CREDENTIALS_FILE, *probe.secret_files):
        st = (app_dir / rel).stat()
        assert (st.st_mode & 0o777, st.st_uid) == (0o600, owner_uid), rel
        assert run_as(owner, "cat", str(app_dir / rel)).returncode == 0
        denied = run_as(other, "cat", str(app_dir / rel))
        assert denied.returncode != 0 and "Permission denied" in denied.stderr
    assert json.loads((app_dir / CREDENTIALS_FILE).read_text())["password"] == creds.password

    # Runs as the slot user, bound to loopback.
    pid = _pid(lab, owner, app)
    assert os.stat(f"/proc/{pid}").st_uid == owner_uid
    if port is None:  # its socket's directory: the slot's alone; another tenant cannot connect
        st = sock_dir.stat()
        assert (st.st_uid, oct(st.st_mode & 0o7777)) == (owner_uid, "0o2700")
        probe_py = ("import socket, sys\ntry:\n    socket.socket(socket.AF_UNIX).connect(sys.argv[1])\n"
                    "except OSError as e:\n    print(type(e).__name__)\nelse:\n    print('connected')\n")
        assert run_as(other, "/usr/bin/python3", "-c", probe_py, str(sock_dir / "http.sock")
                       ).stdout.strip() == "PermissionError"
        assert run_as(owner, "/usr/bin/python3", "-c", probe_py, str(sock_dir / "http.sock")
                       ).stdout.strip() == "connected"

    # Never a secret on a command line, in the supervisor's logs, or in the audit log.
    cmdlines = all_cmdlines()
    audit = json.dumps(ctx.store.audit_entries())
    logs = [p.read_bytes() for p in (lab.root / "state" / "supervisor").rglob("*.log")]
    for value in creds.secrets.values():  # the login password and e.g. WordPress's database password
        secret = value.encode()
        assert not any(secret in c for c in cmdlines)
        assert not any(secret in log for log in logs)
        assert value not in audit

    # Kill it: the supervisor brings it back, and it still lets the owner in.
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: any(r["running"] and r["pid"] not in (None, pid) for r in app_status(lab.context(), owner)),
             what=f"{app} to be restarted")
    wait_for(lambda: probe.login(target, owner, creds.password), what=f"{app} to accept logins again")

    # Rotate: old credentials refused, new ones accepted, the owner's copy follows.
    new = rotate_app(lab.context(), owner, app)
    assert new.password != creds.password
    wait_for(lambda: probe.login(target, owner, new.password), what="the new password to work")
    assert not probe.login(target, owner, creds.password)
    assert json.loads((app_dir / CREDENTIALS_FILE).read_text())["password"] == new.password
    assert app_credentials(lab.context(), owner, app).password == new.password

    # Uninstall: no process, no file, no port, no credential row.
    prog_conf = lab.root / "state" / "supervisor" / "programs" / f"slotwarden-{app}@{owner}.conf"
    assert prog_conf.exists()
    app_logs = f"slotwarden-{app}*@{owner}.log*"
    assert list((lab.root / "state" / "supervisor").rglob(app_logs))
    pid = _pid(lab, owner, app)
    uninstall_app(lab.context(), owner, app)
    assert not Path(f"/proc/{pid}").exists()
    assert pids_of(owner_uid) == []  # no worker, kernel or orphan of the app either
    assert not app_dir.exists() and not (app_dir.parent).exists()
    assert not prog_conf.exists()
    # The app's logs go too, wherever it wrote them: its directory (above) and the supervisor's.
    assert not list((lab.root / "state" / "supervisor").rglob(app_logs))
    assert _rows(lab, owner) == {"app_installs": 0, "app_ports": 0, "app_credentials": 0}
    assert port not in listening_ports() and not sock_dir.parent.exists()
    assert app_status(lab.context(), owner) == []
    assert probe.leftovers(lab, owner) == []
