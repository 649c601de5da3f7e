"""``python -m provisioner.hub serve --config FILE``: what the supervisor runs."""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) == 3 and args[0] == "serve" and args[1] == "--config":
        os.environ["SLOTWARDEN_CONFIG"] = args[2]
    elif args != ["serve"]:
        sys.exit("usage: python -m provisioner.hub serve [--config FILE]")
    from provisioner.cli import main

    sys.argv = ["slotctl", "hub", "serve"]
    main()
