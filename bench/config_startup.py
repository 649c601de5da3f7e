"""slotctl start-up against baseline refs, side by side.

Runs each COMMAND (default ``plan list``: imports the CLI, loads and validates a small
configuration) from this checkout and from every BASELINE (a git ref, exported with
``git archive`` into a temp dir), alternating, and prints the median of each and the ratio of
this checkout to each baseline. Every tree gets its own state dir (a baseline may have an older
schema); one warm-up run per tree and command (the first creates the store) is not counted.
Root not needed.

    .venv/bin/python bench/config_startup.py --runs 20 --baseline main
    .venv/bin/python bench/config_startup.py --runs 15 --baseline main --baseline 5d4827e \\
        --command=--help --command "slot list" --command "plan list"
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SNIPPET = "import sys; from provisioner.cli import main; sys.argv = ['slotctl', *sys.argv[1:]]; main()"
CONFIG = '[plans.small]\nquota = "5G"\n[guard]\nwindow = "15m"\n[hub]\nidle_timeout = "30m"\n'


def run_once(tree: Path, config: Path, argv: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree), "SLOTWARDEN_CONFIG": str(config)}
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", SNIPPET, *argv], cwd=tree, env=env, check=True, capture_output=True)
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--baseline", action="append", help="git ref (repeatable; default main)")
    ap.add_argument("--command", action="append", help="slotctl arguments, e.g. 'slot list' (repeatable)")
    args = ap.parse_args()
    baselines: list[str] = args.baseline or ["main"]
    commands = [shlex.split(c) for c in (args.command or ["plan list"])]
    work = Path(tempfile.mkdtemp(prefix="sw-bench-config-"))
    try:
        trees: dict[str, Path] = {"this": REPO}
        for ref in baselines:
            tree = work / f"tree-{len(trees)}"
            tree.mkdir()
            archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
            trees[ref] = tree
        configs = {}
        for i, name in enumerate(trees):
            configs[name] = work / f"slotwarden-{i}.toml"
            configs[name].write_text(f'state_dir = "{work}/state-{i}"\n' + CONFIG)
        for argv in commands:
            times: dict[str, list[float]] = {name: [] for name in trees}
            for name, tree in trees.items():
                run_once(tree, configs[name], argv)  # warm-up: creates the store, fills the page cache
            for _ in range(args.runs):
                for name, tree in trees.items():
                    times[name].append(run_once(tree, configs[name], argv))
            med = {k: statistics.median(v) for k, v in times.items()}
            ratios = ", ".join(f"{med['this'] / med[ref]:.2f}x vs {ref}" for ref in baselines)
            figures = ", ".join(f"{name} {m * 1000:.0f} ms" for name, m in med.items())
            print(f"slotctl {shlex.join(argv)} ({args.runs} runs, medians): {figures}; {ratios}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
