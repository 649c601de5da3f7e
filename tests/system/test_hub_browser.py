"""The Hub in a real browser: Debian's chromium, headless, driven by Playwright (never `playwright install`).

Every page the tests visit is saved as a screenshot under ``$SLOTWARDEN_SCREENSHOTS`` (default
``/tmp/slotwarden-hub-screens``); ``docs/hub-*.png`` in the README were made this way.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyotp
import pytest

from tests.system.fixtures.hosts import SLOTCTL
from tests.system.fixtures.hub import PAIR_DENY, POLICY, HubLab, close_hub_lab, make_hub_lab
from tests.system.fixtures.processes import as_user, wait_for

pytestmark = [pytest.mark.root]

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
SHOTS = Path(os.environ.get("SLOTWARDEN_SCREENSHOTS", "/tmp/slotwarden-hub-screens"))


@pytest.fixture(scope="module")
def hub() -> Iterator[HubLab]:
    lab = make_hub_lab("hubweb", extra=POLICY)
    try:
        yield lab
    finally:
        close_hub_lab(lab)


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
    # The Hub's certificate is the self-signed one host init made for this lab.
    ctx = browser.new_context(ignore_https_errors=True, viewport={"width": 1100, "height": 800})
    try:
        yield ctx.new_page()
    finally:
        ctx.close()


def shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"hub-{name}.png"), full_page=True)


def log_in(page: Any, hub: HubLab, username: str, password: str) -> None:
    page.goto(f"{hub.url}/login")
    page.fill("#username", username)
    page.fill("#password", password)
    page.click("#login")


def test_login_overview_processes_and_logout_everywhere(hub: HubLab, page: Any, browser: Any) -> None:
    name = hub.create_slot()
    as_user(name, "head -c 2000000 /dev/urandom > ~/blob && sync")
    page.goto(f"{hub.url}/")
    assert page.url.endswith("/login")
    shot(page, "login")
    log_in(page, hub, name, hub.passwords[name])
    assert page.url.endswith("/overview")
    assert page.text_content("#slot-name") == name
    me = json.loads(as_user(name, f"{hub.host.base}/bin/slotwarden-me --json --sample 0").stdout)
    assert int(page.get_attribute("#m-quota", "data-bytes")) == me["quota_bytes"]
    assert abs(int(page.get_attribute("#m-disk", "data-bytes")) - me["disk_used_bytes"]) <= 256 * 1024
    holder = subprocess.Popen(["runuser", "-u", name, "--", "/usr/bin/python3", "-c",
                               "import time; b = bytearray(30 << 20); time.sleep(300)"], start_new_session=True)
    try:
        def points() -> int:
            page.goto(f"{hub.url}/overview")
            return int(page.get_attribute(".chart:has(strong:text-is('RAM'))", "data-points"))

        wait_for(lambda: points() >= 1, timeout=60)  # the bridge's sampler fills the history
        assert page.locator(".chart circle").count() >= 3  # RAM, processes, disk at least
        shot(page, "overview")
        page.click("text=Processes")
        assert page.locator("#processes td:text-is('python3')").count() == 1
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
    assert page.url.endswith("/processes")
    shot(page, "processes")
    cookies = {c["name"]: c for c in page.context.cookies()}
    assert cookies["__Host-sw_session"]["httpOnly"] and cookies["__Host-sw_session"]["secure"]
    other = browser.new_context(ignore_https_errors=True)
    try:
        second = other.new_page()
        log_in(second, hub, name, hub.passwords[name])
        assert second.url.endswith("/overview")
        page.goto(f"{hub.url}/sessions")
        assert page.locator("#sessions tr").count() == 3  # header + two sessions
        shot(page, "sessions")
        page.click("#logout-all")
        assert page.url.endswith("/login")
        second.goto(f"{hub.url}/overview")
        assert second.url.endswith("/login")
    finally:
        other.close()


def test_wrong_passwords_lock_page_is_the_same_for_an_unknown_name(hub: HubLab, page: Any) -> None:
    name = hub.create_slot()
    texts = []
    for who in (name, hub.host.name()):
        for _ in range(PAIR_DENY - 1):
            log_in(page, hub, who, "wrong-password")
            assert page.text_content("#login-error") == "Wrong username or password."
        log_in(page, hub, who, "wrong-password")
        assert page.is_visible("#locked")
        until = page.text_content("#locked-until")
        texts.append(page.text_content("main").replace(until, "UNTIL"))
        if who == name:
            shot(page, "locked")
    assert texts[0] == texts[1]
    hub.slotctl_json("guard", "lift", "--ip", "127.0.0.1")


def test_hostile_username_typed_in_the_browser_stays_text(hub: HubLab, page: Any) -> None:
    fired = []
    page.on("dialog", lambda d: (fired.append(d.message), d.dismiss()))
    evil = '"><img src=x onerror=alert(1)><script>alert(2)</script>'
    log_in(page, hub, evil, "x")
    assert page.input_value("#username") == evil
    assert page.locator("img").count() == 0 and page.locator("main script").count() == 0
    assert fired == []
    hub.slotctl_json("guard", "lift", "--ip", "127.0.0.1")


def test_totp_enrolment_and_login(hub: HubLab, page: Any) -> None:
    name = hub.create_slot()
    log_in(page, hub, name, hub.passwords[name])
    page.click("text=Security")
    page.click("#totp-begin")
    assert page.locator("#totp-qr").evaluate("img => img.naturalWidth") > 0  # the QR image renders
    shot(page, "totp-enrol")
    secret = page.text_content("#totp-secret")
    page.fill("#code", pyotp.TOTP(secret).now())
    page.click("#totp-confirm")
    assert page.locator(".recovery-code").count() == 10
    page.click("button:has-text('Log out')")
    log_in(page, hub, name, hub.passwords[name])
    assert page.url.endswith("/login/second-factor")
    shot(page, "second-factor")
    page.fill("#code", pyotp.TOTP(secret).at(time.time() + 30))
    page.click("#verify")
    assert page.url.endswith("/overview")


def test_apps_reveal_rotate_and_password_change(hub: HubLab, page: Any) -> None:
    import pam

    name = hub.create_slot()
    log_in(page, hub, name, hub.passwords[name])
    page.click("text=Apps")
    page.select_option("#app", "transmission")
    page.click("#install")
    first = page.text_content("#creds-password")
    page.click(".app-creds[data-app=transmission]")
    assert page.text_content("#creds-password") == first
    shot(page, "apps")
    # the app through the front door asks for its own login (transmission's basic auth) ...
    from playwright.sync_api import Error as PlaywrightError

    with pytest.raises(PlaywrightError, match="AUTH_CREDENTIALS"):
        page.goto(f"{hub.url}/apps/{name}/transmission/transmission/web/")
    # ... and opens with the credentials the Hub revealed, in a browser that has the Hub session
    user = page.context.browser.new_context(ignore_https_errors=True, http_credentials={
        "username": name, "password": first})
    try:
        user.add_cookies(page.context.cookies())
        app_page = user.new_page()
        resp = app_page.goto(f"{hub.url}/apps/{name}/transmission/transmission/web/")
        assert resp.status == 200 and "Transmission" in app_page.title()
        shot(app_page, "app-through-front-door")
    finally:
        user.close()
    page.goto(f"{hub.url}/apps")
    page.click(".app-creds[data-app=transmission]")
    page.click(".app-rotate[data-app=transmission]")
    assert page.text_content("#creds-password") != first
    page.click(".app-uninstall[data-app=transmission]")
    assert page.is_visible("text=No app installed.")
    new = f"Browser-{secrets.token_hex(5)}-pw"
    page.click("text=Password")
    page.fill("#current", hub.passwords[name])
    page.fill("#new", new)
    page.fill("#repeat", new)
    page.click("#change")
    assert page.is_visible("#password-done")
    assert pam.authenticate(name, new, service="sshd", resetcreds=False)
    assert not pam.authenticate(name, hub.passwords[name], service="sshd", resetcreds=False)


def test_support_request_approved_in_the_browser(hub: HubLab, page: Any) -> None:
    slot = hub.create_slot()
    as_user(slot, "umask 077; echo for-support > ~/notes.txt")
    staff = f"{hub.host.prefix}sb{secrets.token_hex(2)}"
    subprocess.run(["useradd", "-M", "-s", "/bin/sh", "-G", "slotwarden-admin", staff], check=True)
    try:
        out = hub.host.slotctl("--json", "support", "request", slot, "--by", staff, "--reason",
                               "<i>ticket</i> 4711", "--for", "1h")
        assert out.returncode == 0, out.stderr
        gid = json.loads(out.stdout)["id"]
        log_in(page, hub, slot, hub.passwords[slot])
        page.click("text=Support & notices")
        assert page.text_content(f"#grant-{gid} .reason") == "<i>ticket</i> 4711"
        shot(page, "support")
        page.click(f"#grant-{gid} .approve")
        assert page.text_content("#notice") == f"request {gid}: active"
        grant = json.loads(hub.host.slotctl("--json", "support", "show", str(gid)).stdout)
        read = as_user(staff, f"cat {grant['mountpoint']}/notes.txt")
        assert read.returncode == 0 and read.stdout == "for-support\n"
        page.click(f"#grant-{gid} .revoke")
        assert page.text_content("#notice") == f"request {gid}: revoked"
        assert as_user(staff, f"cat {grant['mountpoint']}/notes.txt").returncode != 0
    finally:
        subprocess.run(["userdel", staff], check=False)


def test_staff_view_with_its_second_factor(hub: HubLab, page: Any) -> None:
    slot = hub.create_slot()
    staff, password = f"{hub.host.prefix}st{secrets.token_hex(2)}", f"St-{secrets.token_hex(10)}"
    subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", "-G", "slotwarden-admin", staff], check=True)
    try:
        subprocess.run(["chpasswd"], input=f"{staff}:{password}\n", text=True, check=True)
        enrol = subprocess.Popen([SLOTCTL, "hub", "totp-enrol", staff, "--json"], env=hub.host.env(), text=True,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        secret = re.search(r"key for \S+: ([A-Z2-7]+)", enrol.stderr.readline()).group(1)
        enrol.communicate(pyotp.TOTP(secret).now() + "\n", timeout=60)
        assert enrol.returncode == 0
        log_in(page, hub, staff, password)
        assert page.url.endswith("/login/second-factor")
        page.fill("#code", pyotp.TOTP(secret).at(time.time() + 30))
        page.click("#verify")
        assert page.url.endswith("/admin")
        assert page.locator(f"#slots td:text-is('{slot}')").count() == 1
        shot(page, "staff")
    finally:
        subprocess.run(["userdel", staff], check=False)
