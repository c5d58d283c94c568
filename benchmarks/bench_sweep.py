"""Speed of the sweep itself: configurations evaluated per second on one core.

Runs ``scenarios/bench-1m.yaml`` (>= 1,000,000 points) in one process, times expansion and
evaluation into the tidy DataFrame (writing files excluded), and records the figure in
``benchmarks/results/sweep.json`` and a line of ``benchmarks/results/sweep_history.csv``.

    python benchmarks/bench_sweep.py [--limit N] [--repeat R]
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def git_rev() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default=str(ROOT / "scenarios" / "bench-1m.yaml"))
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N points")
    parser.add_argument(
        "--repeat", type=int, default=2, help="timed runs after one warm-up; the best counts"
    )
    parser.add_argument("--no-save", action="store_true", help="print only")
    args = parser.parse_args()

    from moesim import __version__
    from moesim.plan.scenario import build_plan, load_scenario
    from moesim.plan.sweep import run_plan

    plan = build_plan(load_scenario(args.scenario))
    points = plan.size if args.limit is None else min(args.limit, plan.size)
    run_plan(plan, limit=min(points, 20_000))  # warm-up: imports, routing tables
    times = []
    for _ in range(max(args.repeat, 1)):
        t0 = time.perf_counter()
        df = run_plan(plan, limit=points)
        times.append(time.perf_counter() - t0)
    wall = min(times)
    assert len(df) == points
    record = {
        "benchmark": "sweep",
        "scenario": Path(args.scenario).name,
        "points": points,
        "wall_s": round(wall, 3),
        "configs_per_s": round(points / wall),
        "configs_per_s_per_core": round(points / wall),  # one process, one core
        "feasible_share": round(float(df["feasible"].mean()), 4),
        "processes": 1,
        "machine": f"{platform.machine()} {platform.processor() or ''} ({os.cpu_count()} cpus), {platform.system()} {platform.release()}".replace(
            "  ", " "
        ),
        "python": platform.python_version(),
        "moesim_version": __version__,
        "git_rev": git_rev(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "runs_s": [round(t, 3) for t in times],
    }
    print(json.dumps(record, indent=2))
    if args.no_save:
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sweep.json").write_text(json.dumps(record, indent=2) + "\n")
    history = RESULTS / "sweep_history.csv"
    fields = [
        "date",
        "git_rev",
        "scenario",
        "points",
        "wall_s",
        "configs_per_s",
        "machine",
        "moesim_version",
    ]
    new = not history.exists()
    with history.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow(record)


if __name__ == "__main__":
    main()
