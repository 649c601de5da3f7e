"""slotctl start-up with the configuration model against a baseline ref, side by side.

Runs ``slotctl plan list`` (imports the CLI, loads and validates a small configuration) from
this checkout and from BASELINE (a git ref, exported with ``git archive`` into a temp dir),
alternating, and prints the median of each and their ratio. Root not needed.

    .venv/bin/python bench/config_startup.py --runs 20 --baseline main
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SNIPPET = "import sys; from provisioner.cli import main; sys.argv = ['slotctl', 'plan', 'list']; main()"


def run_once(tree: Path, env: dict[str, str]) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", SNIPPET], cwd=tree, env={**env, "PYTHONPATH": str(tree)}, check=True,
                   capture_output=True)
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--baseline", default="main")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sw-bench-config-"))
    try:
        base = work / "baseline"
        base.mkdir()
        archive = subprocess.run(["git", "-C", str(REPO), "archive", args.baseline], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
        (work / "slotwarden.toml").write_text(f'state_dir = "{work}/state"\n[plans.small]\nquota = "5G"\n'
                                              '[guard]\nwindow = "15m"\n[hub]\nidle_timeout = "30m"\n')
        env = {**os.environ, "SLOTWARDEN_CONFIG": str(work / "slotwarden.toml")}
        times: dict[str, list[float]] = {"baseline": [], "model": []}
        for _ in range(args.runs):
            times["baseline"].append(run_once(base, env))
            times["model"].append(run_once(REPO, env))
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"runs {args.runs}: baseline {args.baseline} {med['baseline'] * 1000:.0f} ms, "
              f"model {med['model'] * 1000:.0f} ms, ratio {med['model'] / med['baseline']:.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
