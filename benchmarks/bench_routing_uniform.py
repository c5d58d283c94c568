"""Speed of the routing fast path: ``routing_stats`` over a million (T, G) pairs, uniform routing.

This was a wall-time assertion in tests/test_routing.py (flaky on a loaded machine); it is a
benchmark now. The tables are built once (warm-up), then the lookup of 10**6 pairs is timed and
reported with a reference measured in the same run: ``np.interp`` of 10**6 points on a
1,000-node table, the primitive the lookup is made of. The ratio says how many such
interpolations one lookup costs, which holds across machines better than seconds do.

    python benchmarks/bench_routing_uniform.py [--out benchmarks/results/routing_uniform.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from _bench import best_of, report

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    from moesim.cost.routing import routing_stats

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    T = rng.integers(1, 65536, 10**6)
    G = rng.choice([1, 2, 8, 32, 64, 256], 10**6)
    t0 = time.perf_counter()
    routing_stats(T, 8, 256, G)  # builds the tables
    build_s = time.perf_counter() - t0
    lookup_s = best_of(lambda: routing_stats(T, 8, 256, G))
    x = rng.random(10**6)
    xp, fp = np.linspace(0, 1, 1000), rng.random(1000)
    interp_s = best_of(lambda: np.interp(x, xp, fp))
    result = {
        "what": "routing_stats(T, k=8, E=256, G) over 1e6 (T, G) pairs, uniform, tables warm",
        "lookup_s": round(lookup_s, 4),
        "pairs_per_s": round(10**6 / lookup_s),
        "table_build_s": round(build_s, 3),
        "np_interp_1e6_s": round(interp_s, 5),
        "lookup_over_interp": round(lookup_s / interp_s, 1),
        "cpus": os.cpu_count(),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "timing": "best of 5 runs each",
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    report(result, args.out)


if __name__ == "__main__":
    main()
