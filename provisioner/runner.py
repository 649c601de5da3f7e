"""The one place the provisioner runs a system command.

Argument lists only (never a shell), secrets only on stdin, the command logged without its
input, a non-zero exit raised as :class:`CommandFailed`. Commands start in ``/``, never in the
operator's working directory (which may be a tenant's home or ``/tmp``), with a clean
environment and no descriptor but the three standard ones. What runs as a tenant goes through
:func:`provisioner.as_tenant.run_as_tenant` instead.

>>> run(["true"]).returncode
0
"""

from __future__ import annotations

import logging
import subprocess

from provisioner.errors import CommandFailed

log = logging.getLogger("slotwarden.run")

# A clean, predictable environment: no locale surprises in parsed output, no inherited secrets.
_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}


def run(
    argv: list[str],
    *,
    stdin: str | None = None,
    check: bool = True,
    timeout: float = 300,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ARGV; STDIN (which may hold a secret) is fed on standard input and never logged.

    ENV: variables set over the clean environment (e.g. a UTF-8 locale a tool insists on).
    """
    log.debug("run %s%s", argv, " (with input on stdin)" if stdin is not None else "")
    try:
        proc = subprocess.run(
            argv,
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env={**_ENV, **env} if env else _ENV,
            cwd="/",
            close_fds=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError:
        raise CommandFailed(argv, 127, f"{argv[0]}: command not found") from None
    except subprocess.TimeoutExpired:
        raise CommandFailed(argv, -1, f"timed out after {timeout:g}s") from None
    if check and proc.returncode != 0:
        raise CommandFailed(argv, proc.returncode, proc.stderr)
    return proc
