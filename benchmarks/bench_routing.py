"""Wall time of ``moesim routing`` cold (empty routing cache) and warm, Zipf beside uniform.

Each figure is one fresh ``python -m moesim routing ...`` process (imports included, as a user
sees it); cold runs get an empty ``MOESIM_CACHE_DIR``, warm runs reuse the folder the cold run
filled. The median of ``--repeat`` runs is reported, all in one session on one machine, so the
ratios between rows are the result (absolute seconds depend on the machine and its load).
``--baseline DIR`` also times another checkout (e.g. the revision before the cache) the same way.

    python benchmarks/bench_routing.py [--repeat 5] [--baseline /path/to/old/checkout]

Writes ``benchmarks/results/routing.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
QUESTION = ["--tokens", "4096", "--experts", "256", "--top-k", "8", "--ep", "32"]
ROUTINGS = ("uniform", "zipf:1.2")


def one_run(checkout: Path, routing: str, cache: str) -> float:
    env = dict(os.environ, PYTHONPATH=str(checkout), MOESIM_CACHE_DIR=cache)
    cmd = [sys.executable, "-m", "moesim", "routing", *QUESTION, "--routing", routing]
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True, cwd=checkout)
    return time.perf_counter() - start


def time_checkout(checkout: Path, routing: str, repeat: int) -> dict:
    cold, warm = [], []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as cache:
            cold.append(one_run(checkout, routing, cache))
            warm.append(one_run(checkout, routing, cache))
    return {"cold_s": statistics.median(cold), "warm_s": statistics.median(warm)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--baseline", type=Path, default=None, help="another checkout to time")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    rows = []
    targets = [("this checkout", ROOT)] + ([("baseline", args.baseline)] if args.baseline else [])
    for label, checkout in targets:
        for routing in ROUTINGS:
            rows.append(
                {"code": label, "routing": routing, **time_checkout(checkout, routing, args.repeat)}
            )
    print("| code | routing | cold (s) | warm (s) |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['code']} | {r['routing']} | {r['cold_s']:.2f} | {r['warm_s']:.2f} |")
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        record = {
            "command": "moesim routing " + " ".join(QUESTION) + " --routing R",
            "repeat": args.repeat,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d"),
            "rows": rows,
        }
        (RESULTS / "routing.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
