"""A hostile tenant against the root operations that *read* its home: the data report.

The attack: while root walks the home (the report's "home size"), the tenant swaps a directory
for a symlink to ``/usr`` and back, as fast as it can. The old walk pushed a directory's *path*
and opened it later, so it followed the swapped-in link and counted (and walked) whatever the
tenant pointed it at; the walk by descriptor (``O_NOFOLLOW`` relative to the parent's
descriptor) never leaves the home. Name prefix ``th``.
"""

from __future__ import annotations

import subprocess
import textwrap

import pytest

from provisioner.datareport import data_report
from provisioner.metrics.kernel import tree_usage
from tests.system.fixtures.hosts import SlotHost

pytestmark = pytest.mark.root

SWAPPER = textwrap.dedent("""
    import os, sys
    os.chdir(os.path.expanduser("~"))
    os.makedirs("d/sub", exist_ok=True)
    with open("d/sub/f", "w") as f:
        f.write("x" * 5000)
    for i in range(3000):  # a long listing of the home before d is entered: a wide window
        with open(f"f{i}", "w") as f:
            f.write("y")
    print("ready", flush=True)
    while True:
        os.rename("d", "d.real"); os.symlink("/usr", "d"); os.unlink("d"); os.rename("d.real", "d")
""")


def test_home_walk_never_follows_a_directory_swapped_for_a_symlink(slot_host: SlotHost) -> None:
    name = slot_host.name()
    r = slot_host.slotctl("slot", "create", name, "--email", f"{name}@example.com", "--country", "DE",
                          "--quota", "200M")
    assert r.returncode == 0, r.stderr
    ctx = slot_host.ctx()
    swapper = subprocess.Popen(["runuser", "-u", name, "--", "/usr/bin/python3", "-c", SWAPPER], cwd="/",
                               stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert swapper.stdout is not None and swapper.stdout.readline().strip() == "ready"
        home = str(slot_host.slots_root / name)
        honest = tree_usage(home)
        usr = tree_usage("/usr")
        assert usr > 50 * honest  # the bait is big enough to see
        sizes = [tree_usage(home) for _ in range(40)]
        report = data_report(ctx, name)
        assert max(sizes) < 2 * honest + (1 << 20), (honest, max(sizes))
        item = next(i for i in report["items"] if i["item"].startswith("user data"))
        assert "home size" in item["value"]
    finally:
        swapper.kill()
        swapper.wait()
        ctx.close()
        slot_host.slotctl("slot", "remove", name)
