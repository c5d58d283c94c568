"""Speed of the request-level simulator: simulated requests per second on one core.

Llama-3.1-70B on one 8 x H100-SXM instance (TP8, bf16, vLLM defaults: 8192-token budget,
1024 sequences), Poisson arrivals, chat-like lengths (lognormal, mean 1000 prompt and 250
output tokens). Measures, in one process:

- the step-time table (one vectorised call of the cost model per part), built once;
- the simulation of 10k, 100k and 1M requests at one load (how it scales with requests);
- 1, 2, 4 and 8 replicas at the same load per replica (how it scales with replicas);
- the same 1M requests at lighter loads (fewer requests share a step, so more steps each).

Wall times include the event loop and the summary, not the traffic generation. Records
``benchmarks/results/simulate.json`` and a line of ``benchmarks/results/simulate_history.csv``.

    python benchmarks/bench_simulate.py [--quick] [--no-save]
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
INPUT, OUTPUT = "lognormal:1000:0.8", "lognormal:250:0.8"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=16.0, help="requests/s per replica")
    parser.add_argument("--quick", action="store_true", help="at most 100k requests")
    parser.add_argument("--no-save", action="store_true", help="print only")
    args = parser.parse_args()

    from moesim import __version__
    from moesim.engine.simulate import engine_defaults, simulate, step_table
    from moesim.engine.traffic import synthetic
    from moesim.spec import resolve
    from moesim.spec.deployment import Layout

    model, hw = resolve("llama-3.1-70b", "h100-sxm")
    layout = Layout(tp=8)
    engine = engine_defaults("vllm", hw)
    big = 100_000 if args.quick else 1_000_000

    t0 = time.perf_counter()
    table = step_table(model, hw, layout, None, max_tokens=engine.max_num_batched_tokens,
                       max_seqs=engine.max_num_seqs, max_context=100_000)  # fmt: skip
    table_s = time.perf_counter() - t0

    def timed(n, rate, replicas=1):
        traffic = synthetic(n, rate_per_s=rate, input_len=INPUT, output_len=OUTPUT, seed=1)
        lay = layout.with_(replicas=replicas)
        t0 = time.perf_counter()
        res = simulate(model, hw, lay, traffic, engine=engine, table=table)
        wall = time.perf_counter() - t0
        s = res.summary
        row = {
            "requests": n,
            "replicas": replicas,
            "rate_per_s": rate,
            "wall_s": round(wall, 3),
            "requests_per_s": round(n / wall),
            "steps": s["steps"],
            "steps_per_s": round(s["steps"] / wall),
            "steps_per_request": round(s["steps"] / n, 3),
            "mean_decode_batch": round(s["mean_decode_batch"], 1),
            "ttft_p99_s": round(s["ttft_p99_s"], 4),
            "tpot_p99_s": round(s["tpot_p99_s"], 5),
            "simulated_s": round(s["duration_s"], 1),
        }
        print(json.dumps(row))
        return row

    timed(5_000, args.rate)  # warm-up
    by_requests = [timed(n, args.rate) for n in (10_000, 100_000, big)]
    by_replicas = [timed(big // 8 * r, args.rate * r, r) for r in (1, 2, 4, 8)]
    by_load = [timed(big, rate) for rate in (args.rate / 2, args.rate / 4)]
    million = by_requests[-1]
    record = {
        "benchmark": "simulate",
        "setup": "llama-3.1-70b on h100-sxm, tp8 bf16, vLLM defaults, Poisson, "
        f"input {INPUT}, output {OUTPUT}",
        "step_table_s": round(table_s, 3),
        "requests": million["requests"],
        "wall_s": million["wall_s"],
        "requests_per_s_per_core": million["requests_per_s"],
        "by_requests": by_requests,
        "by_replicas": by_replicas,
        "by_load": by_load,
        "processes": 1,
        "machine": f"{platform.machine()} {platform.processor() or ''} ({os.cpu_count()} cpus), "
        f"{platform.system()} {platform.release()}".replace("  ", " "),
        "python": platform.python_version(),
        "moesim_version": __version__,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    print(
        f"{million['requests']:,} requests in {million['wall_s']:.1f} s: "
        f"{million['requests_per_s']:,} simulated requests/s on one core (table {table_s:.2f} s)"
    )
    if args.no_save:
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "simulate.json").write_text(json.dumps(record, indent=2) + "\n")
    history = RESULTS / "simulate_history.csv"
    new = not history.exists()
    with history.open("a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(["date", "moesim_version", "requests", "wall_s", "requests_per_s_per_core"])
        w.writerow(
            [
                record["date"],
                __version__,
                record["requests"],
                record["wall_s"],
                record["requests_per_s_per_core"],
            ]
        )


if __name__ == "__main__":
    main()
