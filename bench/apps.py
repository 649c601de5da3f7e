"""Benchmark: install and uninstall each catalog app for N slots; seconds per op and idle memory.

Run as root from a checkout (after ``make venv apps-shared``)::

    .venv/bin/python bench/apps.py --slots 20

It sets up a private lab (state dir, slots root, supervisord, a private MariaDB) exactly like
the system tests, creates N slots, then for each app: installs it in every slot (timed, one
after the other), lets the instances sit idle, measures the memory of each instance (RSS and
PSS of every process of the slot user, i.e. the app and its helpers), then uninstalls them all
(timed). The baseline in the same run is the framework floor: the same supervisor path with a
``/bin/sleep`` program (write config, start, wait running; stop, remove), so an app's figure
reads as "N times the cost of just supervising a process".
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from provisioner.accounts import pids_of
from provisioner.operations import install_app, uninstall_app
from provisioner.supervisor import Program
from tests.system.fixtures.apps import make_lab


def memory_kib(uid: int) -> tuple[int, int]:
    """(RSS, PSS) in KiB summed over every process of UID."""
    rss = pss = 0
    for pid in pids_of(uid):
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            continue
    return rss, pss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slots", type=int, default=20)
    ap.add_argument("--apps", default="transmission,jupyterlab,wordpress")
    ap.add_argument("--idle", type=float, default=15.0, help="seconds to let instances idle before measuring")
    ap.add_argument("--json", type=Path, help="also write the figures to this file")
    args = ap.parse_args()
    apps = args.apps.split(",")
    results: dict[str, dict[str, float]] = {}
    lab_iter = make_lab(20500, 20999, mariadb="wordpress" in apps)
    lab = next(lab_iter)
    try:
        ctx = lab.context()
        slots = [lab.new_slot(ctx) for _ in range(args.slots)]
        uids = {s: __import__("pwd").getpwnam(s).pw_uid for s in slots}

        # Baseline: the supervisor path alone, one sleep program per slot.
        sd = lab.supervisord
        t_in, t_out = [], []
        for s in slots:
            prog = Program(app="bench", user=s, argv=["/bin/sleep", "100000"], cwd="/")
            t0 = time.perf_counter()
            sd.ensure_program(prog)
            t_in.append(time.perf_counter() - t0)
        for s in slots:
            t0 = time.perf_counter()
            sd.remove_program(f"slotwarden-bench@{s}")
            t_out.append(time.perf_counter() - t0)
        results["baseline (supervised sleep)"] = {"install_s": statistics.median(t_in),
                                                  "uninstall_s": statistics.median(t_out), "rss_mib": 0, "pss_mib": 0}

        for app in apps:
            t_in, t_out = [], []
            for s in slots:
                t0 = time.perf_counter()
                install_app(ctx, s, app)
                t_in.append(time.perf_counter() - t0)
            time.sleep(args.idle)
            mem = [memory_kib(uids[s]) for s in slots]
            for s in slots:
                t0 = time.perf_counter()
                uninstall_app(ctx, s, app)
                t_out.append(time.perf_counter() - t0)
            results[app] = {
                "install_s": statistics.median(t_in), "install_max_s": max(t_in),
                "uninstall_s": statistics.median(t_out), "uninstall_max_s": max(t_out),
                "rss_mib": statistics.median(m[0] for m in mem) / 1024,
                "pss_mib": statistics.median(m[1] for m in mem) / 1024,
                "total_rss_mib": sum(m[0] for m in mem) / 1024,
            }
            print(f"{app}: {results[app]}", file=sys.stderr)
    finally:
        for _ in lab_iter:
            pass

    base = results["baseline (supervised sleep)"]
    print(f"\n{args.slots} slots, median per operation (max in brackets); memory per idle instance, median\n")
    print("| app | install s | uninstall s | install vs baseline | idle RSS MiB | idle PSS MiB |")
    print("|---|---|---|---|---|---|")
    for app, r in results.items():
        ratio = r["install_s"] / base["install_s"] if base["install_s"] else 0
        mx_in = f" ({r['install_max_s']:.2f})" if "install_max_s" in r else ""
        mx_out = f" ({r['uninstall_max_s']:.2f})" if "uninstall_max_s" in r else ""
        print(f"| {app} | {r['install_s']:.2f}{mx_in} | {r['uninstall_s']:.2f}{mx_out} | {ratio:.0f}x "
              f"| {r['rss_mib']:.1f} | {r['pss_mib']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
