"""A minimal libpam client over ctypes, for what python-pam cannot do.

python-pam opens a fresh handle per call and cannot set PAM_RHOST. Tests and
the benchmark need one handle for several tries (as sshd does), PAM_RHOST,
an aborting conversation, and optionally no failure delay.

For example (not a doctest: it needs a PAM service and a user)::

    with PamHandle("slotwarden-test-x", "bob", rhost="198.51.100.7", password="pw") as h:
        h.authenticate()   # 7 (PAM_AUTH_ERR)
"""

from __future__ import annotations

import ctypes
import ctypes.util
from ctypes import CFUNCTYPE, POINTER, Structure, byref, c_char_p, c_int, c_void_p, cast, sizeof
from typing import Self

PAM_SUCCESS = 0
PAM_AUTH_ERR = 7
PAM_PERM_DENIED = 6
PAM_CONV_ERR = 19
PAM_RHOST = 4
PAM_RUSER = 8
PAM_TTY = 3
PAM_FAIL_DELAY = 10
PAM_PROMPT_ECHO_OFF = 1
PAM_PROMPT_ECHO_ON = 2

_libpam = ctypes.CDLL(ctypes.util.find_library("pam") or "libpam.so.0")
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
_libc.calloc.restype = c_void_p
_libc.calloc.argtypes = [ctypes.c_size_t, ctypes.c_size_t]
_libc.strdup.restype = c_void_p
_libc.strdup.argtypes = [c_char_p]


class PamMessage(Structure):
    _fields_ = [("msg_style", c_int), ("msg", c_char_p)]


class PamResponse(Structure):
    _fields_ = [("resp", c_void_p), ("resp_retcode", c_int)]


CONV = CFUNCTYPE(c_int, c_int, POINTER(POINTER(PamMessage)), POINTER(POINTER(PamResponse)), c_void_p)
DELAY = CFUNCTYPE(None, c_int, ctypes.c_uint, c_void_p)


class PamConv(Structure):
    _fields_ = [("conv", CONV), ("appdata_ptr", c_void_p)]


_libpam.pam_start.argtypes = [c_char_p, c_char_p, POINTER(PamConv), POINTER(c_void_p)]
_libpam.pam_set_item.argtypes = [c_void_p, c_int, c_void_p]
_libpam.pam_authenticate.argtypes = [c_void_p, c_int]
_libpam.pam_acct_mgmt.argtypes = [c_void_p, c_int]
_libpam.pam_end.argtypes = [c_void_p, c_int]


@DELAY
def _no_delay(_status: int, _usec: int, _appdata: int) -> None:
    return None


class PamHandle:
    """One PAM handle; ``password`` answers echo-off prompts, ``abort`` fails the conversation."""

    def __init__(self, service: str, user: bytes | str, rhost: str | bytes | None = None, password: str = "",
                 abort: bool = False, no_delay: bool = False, ruser: str | None = None,
                 tty: str | None = None) -> None:
        self.password = password.encode()
        self.abort = abort
        self.prompts = 0
        self._conv = CONV(self._converse)  # kept alive as long as the handle
        self._convs = PamConv(self._conv, None)
        self.handle = c_void_p()
        u = user.encode() if isinstance(user, str) else user
        rc = _libpam.pam_start(service.encode(), u, byref(self._convs), byref(self.handle))
        if rc != PAM_SUCCESS:
            raise OSError(f"pam_start failed: {rc}")
        if rhost is not None:
            self._rhost = c_char_p(rhost.encode() if isinstance(rhost, str) else rhost)
            _libpam.pam_set_item(self.handle, PAM_RHOST, cast(self._rhost, c_void_p))
        if tty is not None:  # what login (and su) set: the terminal
            self._tty = c_char_p(tty.encode())
            _libpam.pam_set_item(self.handle, PAM_TTY, cast(self._tty, c_void_p))
        if ruser is not None:  # what su and sudo set: the user who asks
            self._ruser = c_char_p(ruser.encode())
            _libpam.pam_set_item(self.handle, PAM_RUSER, cast(self._ruser, c_void_p))
        if no_delay:
            _libpam.pam_set_item(self.handle, PAM_FAIL_DELAY, cast(_no_delay, c_void_p))
        self.last = PAM_SUCCESS

    def _converse(self, n: int, msgs: object, resp: object, _app: int) -> int:
        if self.abort:
            return PAM_CONV_ERR
        arr = _libc.calloc(n, sizeof(PamResponse))
        out = cast(arr, POINTER(PamResponse))
        for i in range(n):
            m = msgs[i].contents  # type: ignore[index]
            if m.msg_style in (PAM_PROMPT_ECHO_OFF, PAM_PROMPT_ECHO_ON):
                self.prompts += 1
                out[i].resp = _libc.strdup(self.password)
                out[i].resp_retcode = 0
        resp[0] = out  # type: ignore[index]
        return PAM_SUCCESS

    def set_password(self, password: str) -> None:
        """Answer later prompts with ``password`` (sshd sets a new token per try)."""
        self.password = password.encode()

    def authenticate(self) -> int:
        """pam_authenticate; returns the PAM status."""
        self.last = int(_libpam.pam_authenticate(self.handle, 0))
        return self.last

    def acct_mgmt(self) -> int:
        """pam_acct_mgmt; returns the PAM status."""
        self.last = int(_libpam.pam_acct_mgmt(self.handle, 0))
        return self.last

    def end(self, status: int | None = None) -> None:
        """pam_end with the last status (what the cleanup callbacks see)."""
        if self.handle:
            _libpam.pam_end(self.handle, self.last if status is None else status)
            self.handle = c_void_p()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.end()


_RACE = r"""
import json, os, sys
from tests.system.pamclient import PAM_SUCCESS, PamHandle
service, rhost, no_delay = sys.argv[1:]
tries = json.load(sys.stdin)
gate_r, gate_w = os.pipe()
out_r, out_w = os.pipe()
for user, password in tries:
    if os.fork() == 0:
        os.close(gate_w)
        os.read(gate_r, 1)  # every child starts when the gate closes
        with PamHandle(service, user, rhost, password, no_delay=no_delay == "1") as h:
            rc = h.authenticate()
        os.write(out_w, f"{rc}\n".encode())
        os._exit(0)
os.close(gate_r)
os.close(out_w)
os.close(gate_w)
data = b""
while chunk := os.read(out_r, 4096):
    data += chunk
print(json.dumps([int(x) for x in data.split()]))
"""


def concurrent_attempts(service: str, rhost: str, tries: list[tuple[str, str]], no_delay: bool = False) -> list[int]:
    """Run all ``tries`` (user, password) at once, each in its own process; their PAM statuses.

    The processes are forked from a fresh single-threaded interpreter (forking the test
    runner itself, which may hold threads, can deadlock a child). The tries, passwords
    included, reach it on stdin.
    """
    import json
    import subprocess
    import sys
    from pathlib import Path

    argv = [sys.executable, "-c", _RACE, service, rhost, "1" if no_delay else "0"]
    repo = Path(__file__).resolve().parents[2]
    r = subprocess.run(argv, cwd=repo, input=json.dumps(tries), capture_output=True, text=True, timeout=300,
                       check=True)
    return [int(x) for x in json.loads(r.stdout)]
