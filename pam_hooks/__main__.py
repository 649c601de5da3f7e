"""``python3 -m pam_hooks serve|keep``: run the guard service without the provisioner CLI.

``serve`` is the service itself (it takes a socket from systemd when given one);
``keep`` holds the socket and runs ``serve`` behind it, restarting it (what
supervisord runs: pam_hooks.keeper).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pam_hooks.config import GuardConfigError, load_guard_config
from pam_hooks.service import GuardService, setup_logging


def main(argv: list[str] | None = None) -> int:
    """Parse ``serve|keep [--config FILE] [-v]`` and run it in the foreground."""
    ap = argparse.ArgumentParser(prog="python3 -m pam_hooks")
    ap.add_argument("command", choices=["serve", "keep"])
    ap.add_argument("--config", type=Path, default=None)
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    try:
        cfg = load_guard_config(args.config)
    except GuardConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    setup_logging(args.verbose, cfg.syslog_socket)
    try:
        if args.command == "keep":
            from pam_hooks.keeper import SocketKeeper

            return SocketKeeper(cfg, args.config).run()
        GuardService(cfg).run()
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
