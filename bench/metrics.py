"""Bench: one Prometheus scrape of a host with 500 slots, against the naive per-slot way.

Builds a throwaway host (btrfs loop image with a qgroup-limited subvolume per slot, a cgroup v1
directory per slot, one sleeping process per slot under the slot's UID), then times:

- ``collect + render`` as ``metrics serve`` runs it (batched: one process-table pass, one
  ``btrfs subvolume list`` + one ``qgroup show`` for every slot);
- the baseline: per slot, the quota backend's ``usage()`` (two btrfs commands) and a /proc scan
  for the slot's UID — timed on 50 slots and scaled to 500;
- ``slotctl metrics --all --format prometheus`` end to end (Python start-up included).

Run as root: ``.venv/bin/python bench/metrics.py [--slots 500]``. Everything is removed at the end.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from provisioner import accounts
from provisioner.config import load_config
from provisioner.context import Context
from provisioner.metrics import collect, load_backend, metrics_config
from provisioner.metrics.kernel import read_cgroup_v1
from provisioner.metrics.prometheus import render
from provisioner.store import SlotRecord

UID_BASE = 3_100_000  # far above any real account; the slots need no passwd entry to be measured


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slots", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/metrics.py needs root")
    root = Path(tempfile.mkdtemp(prefix="tmbench."))
    parent = "slotwarden-tmbench" + secrets.token_hex(3)
    cfg_path = root / "slotwarden.toml"
    cfg_path.write_text(f'state_dir = "{root}/state"\n[metrics]\ncgroup_parent = "{parent}"\n'
                        f'facts_dir = "{root}/facts"\nme_path = "{root}/bin/slotwarden-me"\n')
    env = {**os.environ, "SLOTWARDEN_CONFIG": str(cfg_path)}
    slotctl = str(Path(sys.executable).parent / "slotctl")
    procs: list[subprocess.Popen[bytes]] = []
    ctx = None
    try:
        subprocess.run([slotctl, "host", "init", "--loopback-image", str(root / "img"), "--loopback-size", "1G",
                        "--slots-root", str(root / "slots"), "--no-persist"], env=env, check=True,
                       capture_output=True)
        os.environ["SLOTWARDEN_CONFIG"] = str(cfg_path)
        ctx = Context(load_config(cfg_path))
        backend = load_backend(metrics_config(ctx))
        t0 = time.perf_counter()
        names = [f"tmb{i:03d}{secrets.token_hex(2)}" for i in range(args.slots)]
        with ctx.store.transaction():
            for i, name in enumerate(names):
                home = root / "slots" / name
                ctx.store.insert_slot(SlotRecord(name, UID_BASE + i, f"{name}@example.com", "DE", None, 100 << 20,
                                                 str(home), "active", time.time()))
        for i, name in enumerate(names):
            home = root / "slots" / name
            ctx.quota.make_home(home)
            ctx.quota.set_limit(name, home, 100 << 20)
            (home / "data").write_bytes(os.urandom(4096 * (1 + i % 8)))
            backend.create(name, 0)
            uid = UID_BASE + i

            def drop(uid: int = uid) -> None:
                os.setgid(uid)
                os.setuid(uid)

            procs.append(subprocess.Popen(["sleep", "3600"], preexec_fn=drop))
        print(f"setup: {args.slots} slots, {len(procs)} slot processes in {time.perf_counter() - t0:.1f}s")

        def scrape() -> tuple[float, str]:
            t = time.perf_counter()
            c = Context(load_config(cfg_path))
            try:
                text = render(collect(c))
            finally:
                c.close()
            return time.perf_counter() - t, text

        if os.environ.get("BENCH_PROFILE"):
            import cProfile
            import pstats
            scrape()
            prof = cProfile.Profile()
            prof.enable()
            scrape()
            prof.disable()
            pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
        first, text = scrape()  # adopts every process into its cgroup, writes the facts files
        times = [scrape()[0] for _ in range(args.repeat)]
        lines = sum(1 for ln in text.splitlines() if ln and not ln.startswith("#"))

        sample = names[:50]
        t = time.perf_counter()
        for i, name in enumerate(sample):
            home = root / "slots" / name
            ctx.quota.usage(name, home)
            accounts.pids_of(UID_BASE + i)
            read_cgroup_v1({c: f"/sys/fs/cgroup/{c}/{parent}/{name}" for c in ("cpuacct", "memory", "blkio")})
        naive = (time.perf_counter() - t) * args.slots / len(sample)

        t = time.perf_counter()
        cli = subprocess.run([slotctl, "metrics", "--all", "--format", "prometheus"], env=env,
                             capture_output=True, text=True, check=True)
        cli_s = time.perf_counter() - t
        assert cli.stdout.count("slotwarden_processes{") == args.slots

        med = statistics.median(times)
        print(f"scrape of {args.slots} slots ({lines} samples): first {first * 1000:.0f} ms (adopts processes), "
              f"then median {med * 1000:.0f} ms, max {max(times) * 1000:.0f} ms over {args.repeat}")
        print(f"baseline (per-slot quota usage() + /proc scan), scaled from {len(sample)}: {naive * 1000:.0f} ms "
              f"-> {naive / med:.1f}x slower")
        print(f"slotctl metrics --all --format prometheus end to end: {cli_s * 1000:.0f} ms")
        print(f"target < 1000 ms: {'met' if max(times) < 1.0 else 'MISSED'}")
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
        if ctx is not None:
            ctx.close()
        for c in ("cpuacct", "memory", "blkio"):
            base = Path("/sys/fs/cgroup") / c / parent
            if base.is_dir():
                for d in base.iterdir():
                    if d.is_dir():
                        d.rmdir()
                base.rmdir()
        subprocess.run(["umount", str(root / "slots")], check=False, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
