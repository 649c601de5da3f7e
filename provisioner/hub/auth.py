"""The Hub's password check: python-pam against the Hub's PAM service, with the client as rhost.

The PAM service (``slotwarden-hub``) has the guard in its stack like sshd's, so a Hub failure is
recorded and locked exactly like an SSH one. libpam's own random failure delay is switched off
(a no-op ``PAM_FAIL_DELAY`` callback) because the bridge answers every refusal at one fixed
floor instead: wrong password, unknown name, locked or suspended look alike from outside.

>>> pam_service_text()
'@include common-auth\\n@include common-account\\n'
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass

from pam.__internals import PAM_RHOST, PamAuthenticator  # type: ignore[import-untyped]

PAM_SUCCESS = 0
PAM_ACCT_EXPIRED = 13
PAM_FAIL_DELAY = 10
MAX_PASSWORD = 1024
MAX_TYPED_NAME = 256

_DELAY = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p)


def _ignore_delay(_status: int, _usec: int, _appdata: int) -> None:
    return None


_no_delay = _DELAY(_ignore_delay)  # kept alive for the process's lifetime
_NO_DELAY_PTR = ctypes.cast(_no_delay, ctypes.c_void_p)
_pam_lock = threading.Lock()  # libpam modules (pam_unix's helper) are not all thread-safe


@dataclass(frozen=True)
class PamAnswer:
    """What the PAM stack said: ``ok``, and the libpam code when not."""

    ok: bool
    code: int

    @property
    def expired(self) -> bool:
        """The password was right but the account phase refused it (a suspended slot)."""
        return self.code == PAM_ACCT_EXPIRED


def pam_service_text() -> str:
    """The Hub's PAM service file before ``slotctl guard install`` adds the guard's lines."""
    return "@include common-auth\n@include common-account\n"


def check_password(service: str, username: str, password: str, rhost: str) -> PamAnswer:
    """Authenticate USERNAME with PASSWORD through SERVICE (auth + account phase), PAM_RHOST set."""
    if ("\x00" in username or "\x00" in password or len(password) > MAX_PASSWORD
            or len(username.encode("utf-8", "surrogateescape")) > MAX_TYPED_NAME):
        return PamAnswer(False, 7)
    p = PamAuthenticator()
    real = p.pam_authenticate

    def with_rhost(handle: object, flags: int) -> int:
        p.pam_set_item(handle, PAM_RHOST, ctypes.c_char_p(rhost.encode()))
        p.pam_set_item(handle, PAM_FAIL_DELAY, _NO_DELAY_PTR)
        return int(real(handle, flags))

    p.pam_authenticate = with_rhost
    with _pam_lock:
        ok = p.authenticate(username, password, service=service, resetcreds=False,
                            encoding="utf-8")
    return PamAnswer(bool(ok), 0 if ok else int(p.code or 7))

