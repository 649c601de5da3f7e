"""NetBlock for real: blackhole routes (IPv4 /32, IPv6 /64) in a lab namespace, added and removed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pam_hooks.netblock import routes_in
from tests.system.fixtures.hosts import REPO
from tests.system.fixtures.netns import LabNet

pytestmark = pytest.mark.root

SNIPPET = """
import sys
from pam_hooks.netblock import NetBlock
nb = NetBlock()
for op, net in zip(sys.argv[1::2], sys.argv[2::2]):
    getattr(nb, op)(net)
print(sorted(nb.ours()))
"""


def in_ns(ns: str, *ops: str) -> str:
    r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", SNIPPET, *ops], cwd=REPO,
                       capture_output=True, text=True, check=True)
    return r.stdout.strip()


def test_blackhole_routes_v4_and_v6() -> None:
    with LabNet("swg-") as net:
        h = net.host("srv", "198.51.100.1")
        out = in_ns(h.netns, "block", "198.51.100.9", "block", "2001:db8:1:2::/64", "block", "198.51.100.9")
        assert out == "['198.51.100.9/32', '2001:db8:1:2::/64']"
        assert sorted(routes_in(h.netns)) == ["198.51.100.9/32", "2001:db8:1:2::/64"]
        shown = subprocess.run(["ip", "-n", h.netns, "-6", "route", "show", "type", "blackhole"],
                               capture_output=True, text=True, check=True).stdout
        assert "2001:db8:1:2::/64" in shown
        in_ns(h.netns, "unblock", "198.51.100.9", "unblock", "2001:db8:1:2::/64", "unblock", "198.51.100.9")
        assert routes_in(h.netns) == []
