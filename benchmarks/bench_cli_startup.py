"""Cold start of the command line: ``moesim predict`` in a new process, beside ``python -c pass``.

Both are run alternately in the same loop, so a busy machine slows both alike; the report is the
median wall time of each and their ratio (predict / bare interpreter), plus the imports a cold
``moesim predict`` pays for. Run from the repository root::

    python benchmarks/bench_cli_startup.py [--runs 15] [--out benchmarks/results/cli_startup.json]

The target (issue 13) is a cold ``moesim predict`` within 0.5 s of wall time on the 2-core
development machine. This is a benchmark, not a test: no test asserts a wall time.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _bench import report

ROOT = Path(__file__).resolve().parents[1]
PREDICT = [
    "predict", "--model", "mixtral-8x7b", "--hardware", "h100-sxm", "--tp", "2",
    "--batch", "32", "--input-len", "1024", "--output-len", "256",
]  # fmt: skip
HEAVY = ("scipy", "pandas", "altair", "pyarrow", "torch")


def _wall(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def _heavy_imports(env: dict) -> list[str]:
    code = (
        "import io, contextlib, sys; from moesim.cli import run\n"
        f"with contextlib.redirect_stdout(io.StringIO()): rc = run({PREDICT!r})\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True
    )
    return [m for m in out.stdout.strip().split(",") if m]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    bare = [sys.executable, "-c", "pass"]
    # the libraries a table-printing predict cannot do without, imported and nothing else
    deps = [
        sys.executable,
        "-c",
        "import numpy, pydantic, typer, typer._adapters, rich.table, ruamel.yaml",
    ]
    predict = [sys.executable, "-m", "moesim", *PREDICT]
    _wall(predict, env)  # warm the OS file cache, not Python: each run is a new interpreter
    t_bare, t_deps, t_predict = [], [], []
    for _ in range(args.runs):
        t_bare.append(_wall(bare, env))
        t_deps.append(_wall(deps, env))
        t_predict.append(_wall(predict, env))
    result = {
        "command": "moesim " + " ".join(PREDICT),
        "runs": args.runs,
        "python_c_pass_median_s": round(statistics.median(t_bare), 4),
        "predict_median_s": round(statistics.median(t_predict), 4),
        "predict_min_s": round(min(t_predict), 4),
        "dependencies_import_median_s": round(statistics.median(t_deps), 4),
        "moesim_own_median_s": round(statistics.median(t_predict) - statistics.median(t_deps), 4),
        "ratio_predict_over_python": round(
            statistics.median(t_predict) / statistics.median(t_bare), 2
        ),
        "heavy_modules_imported": _heavy_imports(env),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_avg_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    report(result, args.out)


if __name__ == "__main__":
    main()
