"""The pam-auth-update profiles, enabled for real - inside a private mount namespace.

/etc/pam.d, /usr/share/pam-configs and /var/lib/pam are bind-mounted copies in a
namespace of the test's own (``unshare -m``), so Debian's pam-auth-update really
rewrites common-auth/common-account there while the machine's own files stay untouched.
Then logins through a service that only includes common-auth are guarded.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pam_hooks.config import GuardConfig
from pam_hooks.install import TOLERANT, pam_auth_update_profiles
from tests.system.fixtures.guard import GuardEnv
from tests.system.fixtures.hosts import SLOTCTL
from tests.system.fixtures.sshd import lab_user

pytestmark = pytest.mark.root

INSIDE = r'''
import json, subprocess, sys, ctypes
t, slotctl, service, user, pw = sys.argv[1:6]
for src, dst in (("pam.d", "/etc/pam.d"), ("pam-configs", "/usr/share/pam-configs"), ("varlibpam", "/var/lib/pam")):
    subprocess.run(["mount", "--bind", f"{t}/{src}", dst], check=True)
r = subprocess.run([slotctl, "guard", "pam-auth-update", "--enable", "--json"], capture_output=True, text=True)
assert r.returncode == 0, r.stderr
open(f"/etc/pam.d/{service}", "w").write("@include common-auth\n@include common-account\n")
import pam
def login(password):
    p = pam.PamAuthenticator()
    real = p.pam_authenticate
    def with_rhost(h, f):
        p.pam_set_item(h, 4, ctypes.c_char_p(b"198.51.100.44"))
        return real(h, f)
    p.pam_authenticate = with_rhost
    return bool(p.authenticate(user, password, service=service, resetcreds=False))
results = [login(pw), login("wrong"), login("wrong"), login(pw)]
enabled = {"common_auth": open("/etc/pam.d/common-auth").read(),
           "common_account": open("/etc/pam.d/common-account").read()}
# the module removed by hand (in this namespace only: an empty file over it): logins still work
from pam_hooks.install import module_dir
subprocess.run(["mount", "--bind", "/dev/null", f"{module_dir()}/pam_slotwarden.so"], check=True)
import tests.system.pamclient as pc
missing = [pc.concurrent_attempts(service, "198.51.100.45", [(user, pw)])[0] == 0,
           pc.concurrent_attempts(service, "198.51.100.45", [(user, "wrong")])[0] == 0]
subprocess.run(["umount", f"{module_dir()}/pam_slotwarden.so"], check=True)
r = subprocess.run([slotctl, "guard", "pam-auth-update", "--disable", "--json"], capture_output=True, text=True)
assert r.returncode == 0, r.stderr
print(json.dumps({"logins": results, "missing_module": missing, **enabled,
                  "disabled_auth": open("/etc/pam.d/common-auth").read(),
                  "disabled_account": open("/etc/pam.d/common-account").read(),
                  "disabled_json": json.loads(r.stdout)}))
'''


@pytest.fixture
def env() -> Iterator[GuardEnv]:
    e = GuardEnv({"pair_deny": 2})
    try:
        e.start()
        yield e
    finally:
        e.close()


def _lines(text: str) -> list[str]:
    return [" ".join(ln.split()) for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


def _find(lines: list[str], prefix: str) -> int:
    return next(i for i, ln in enumerate(lines) if ln.startswith(prefix))


def test_profiles_text() -> None:
    p = pam_auth_update_profiles(GuardConfig())
    assert "Auth-Type: Primary" in p["slotwarden"] and "Priority: 1024" in p["slotwarden"]
    assert "Account-Type: Additional" in p["slotwarden"]
    assert "\toptional\tpam_slotwarden.so authsucc" in p["slotwarden-authsucc"]


def test_enabled_host_wide_in_a_private_mount_namespace(env: GuardEnv) -> None:
    before = {f: Path(f"/etc/pam.d/{f}").read_bytes() for f in ("common-auth", "common-account")}
    t = Path(tempfile.mkdtemp(prefix="swg-pau-"))
    try:
        shutil.copytree("/etc/pam.d", t / "pam.d", symlinks=True)
        shutil.copytree("/usr/share/pam-configs", t / "pam-configs", symlinks=True)
        shutil.copytree("/var/lib/pam", t / "varlibpam", symlinks=True)
        name, pw = f"tg{secrets.token_hex(3)}", f"Pw-{secrets.token_hex(8)}"
        with lab_user(name, pw):
            r = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, "-c", INSIDE, str(t),
                                SLOTCTL, f"slotwarden-test-{secrets.token_hex(3)}", name, pw],
                               env=env.env, capture_output=True, text=True, timeout=120, check=False)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout.splitlines()[-1])
    finally:
        shutil.rmtree(t, ignore_errors=True)
    auth = _lines(out["common_auth"])
    pre = _find(auth, f"auth {TOLERANT['requisite']} pam_slotwarden.so")
    assert auth[pre + 1].startswith("auth [success=") and "pam_unix.so" in auth[pre + 1]
    assert _find(auth, "auth optional pam_slotwarden.so authsucc") > _find(auth, "auth requisite pam_deny.so")
    _find(_lines(out["common_account"]), f"account {TOLERANT['required']} pam_slotwarden.so")
    # right password, two wrong ones (pair_deny = 2), then the right one refused
    assert out["logins"] == [True, False, False, False]
    assert env.json("list", "--user", name)[0]["count"] == 2
    # removed by hand: the right password still logs in, the wrong one never
    assert out["missing_module"] == [True, False]
    # --disable takes the guard out of the host-wide stack again
    assert "pam_slotwarden" not in out["disabled_auth"] and "pam_slotwarden" not in out["disabled_account"]
    assert out["disabled_json"]["disabled"] is True
    # the machine's own files were never touched
    assert {f: Path(f"/etc/pam.d/{f}").read_bytes() for f in before} == before
