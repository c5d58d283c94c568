"""Speed of writing sweep results: Parquet vs CSV (Arrow, in chunks) vs the old pandas CSV.

Evaluates ``scenarios/bench-1m.yaml`` (1,056,768 points) once, then times, in the same run,
``write_results`` with Parquet only, with CSV only (Arrow's writer, 131,072-row batches), and
pandas' ``DataFrame.to_csv`` (the writer used before; timed on the first 100,000 rows and scaled,
it is linear in rows). Reported as seconds and as ratios to Parquet.

    python benchmarks/bench_sweep_output.py [--out benchmarks/results/sweep_output.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from _bench import report

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    from moesim.plan.scenario import build_plan, load_scenario
    from moesim.plan.sweep import run_plan, write_results

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    loaded = load_scenario(ROOT / "scenarios" / "bench-1m.yaml")
    t0 = time.perf_counter()
    df = run_plan(build_plan(loaded))
    eval_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        times = {}
        for fmt in ("parquet", "csv"):
            t0 = time.perf_counter()
            write_results(df, out / fmt, loaded, formats=(fmt,))
            times[fmt] = time.perf_counter() - t0
        head = df.iloc[:100_000]
        t0 = time.perf_counter()
        head.to_csv(out / "pandas.csv", index=False)
        times["pandas_csv_scaled"] = (time.perf_counter() - t0) * len(df) / len(head)
    result = {
        "points": len(df),
        "evaluation_s": round(eval_s, 2),
        "parquet_s": round(times["parquet"], 2),
        "csv_arrow_s": round(times["csv"], 2),
        "csv_pandas_s_scaled": round(times["pandas_csv_scaled"], 1),
        "csv_arrow_over_parquet": round(times["csv"] / times["parquet"], 1),
        "csv_pandas_over_parquet": round(times["pandas_csv_scaled"] / times["parquet"], 1),
        "cpus": os.cpu_count(),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    report(result, args.out)


if __name__ == "__main__":
    main()
