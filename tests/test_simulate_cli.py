"""``moesim simulate``: JSON keys, files written, one-line errors; scenario sweeps of the
simulator give the same frame in one process and on Dask."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from moesim.plan.scenario import load_scenario
from moesim.plan.sweep import run_simulations, simulation_points

SUMMARY_KEYS = {
    *(f"{m}_{s}_s" for m in ("ttft", "tpot", "itl", "e2e_latency") for s in ("mean", "p50", "p90", "p99")),
    "requests", "completed", "rejected", "preemptions", "duration_s", "request_throughput_per_s",
    "output_tokens_per_s", "output_tokens_per_s_per_gpu", "total_tokens_per_s_per_gpu",
    "goodput_requests_per_s", "slo_attainment", "ttft_slo_s", "tpot_slo_s", "kv_occupancy_mean",
    "kv_occupancy_max", "kv_cache_tokens", "kv_blocks", "mean_decode_batch", "steps", "num_gpus",
    "engine", "max_num_batched_tokens", "max_num_seqs", "block_size", "admission", "schedule",
    "model", "hardware", "layout", "seed", "notes", "files",
}  # fmt: skip


def run(*args):
    return subprocess.run(
        [sys.executable, "-c", "from moesim.cli import main; main()", "simulate", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_json_files_and_charts(tmp_path):
    out = tmp_path / "run"
    p = run(
        "-m", "mixtral-8x7b", "-H", "h100-sxm", "--tp", "2", "--rate", "8", "-n", "300",
        "--input-len", "lognormal:700:0.6", "--output-len", "uniform:20:200", "--seed", "3",
        "--ttft-slo", "0.5", "--tpot-slo", "0.05", "--out", str(out), "--json",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert SUMMARY_KEYS <= set(r), SUMMARY_KEYS - set(r)
    assert r["requests"] == r["completed"] == 300 and r["num_gpus"] == 2
    assert r["ttft_p50_s"] <= r["ttft_p90_s"] <= r["ttft_p99_s"]
    assert r["percentiles"]["itl_s"]["p99"] == r["itl_p99_s"]
    assert 0 <= r["slo_attainment"] <= 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ttft_p99_s"] == r["ttft_p99_s"]
    req = pd.read_parquet(out / "requests.parquet")
    assert len(req) == 300
    assert {"arrival_s", "first_token_s", "finish_s", "input_tokens", "output_tokens", "preemptions",
            "ttft_s", "tpot_s", "e2e_latency_s"} <= set(req.columns)  # fmt: skip
    assert np.quantile(req["ttft_s"], 0.99) == pytest.approx(r["ttft_p99_s"])
    steps = pd.read_parquet(out / "steps.parquet")
    assert len(steps) == r["steps"] and steps["kv_occupancy"].max() == pytest.approx(
        r["kv_occupancy_max"]
    )
    for name in ("latency_cdf", "kv_occupancy"):
        assert (out / "charts" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert (out / "charts" / f"{name}.svg").read_text().lstrip().startswith("<svg")
    assert not list(out.rglob(".*tmp*")) and not list(
        out.rglob(".charts-*")
    )  # nothing half-written
    # The same seed from the Python API gives the same numbers.
    again = run("-m", "mixtral-8x7b", "-H", "h100-sxm", "--tp", "2", "--rate", "8", "-n", "300",
                "--input-len", "lognormal:700:0.6", "--output-len", "uniform:20:200", "--seed", "3",
                "--ttft-slo", "0.5", "--tpot-slo", "0.05", "--json")  # fmt: skip
    assert json.loads(again.stdout) | {"files": []} == r | {"files": []}


def test_trace_and_table_output(tmp_path):
    trace = tmp_path / "azure.csv"
    trace.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        + "".join(f"2024-05-10 10:00:{i // 10:02d}.{i % 10}00,{100 + 37 * i % 900},{5 + 13 * i % 120}\n" for i in range(300))
    )  # fmt: skip
    p = run("-m", "llama-3.1-8b", "-H", "h100-sxm", "--trace", str(trace), "--engine", "trtllm")
    assert p.returncode == 0, p.stderr
    assert "TTFT" in p.stdout and "p99" in p.stdout and "trace azure.csv" in p.stdout
    # vllm bench serve's spellings: the trace's lengths at a rate, capped in flight.
    p = run("-m", "llama-3.1-8b", "-H", "h100-sxm", "--trace", str(trace), "--request-rate", "50",
            "--max-concurrency", "8", "--num-prompts", "200", "--json")  # fmt: skip
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["requests"] == 200 and r["concurrency"] == 8 and "at most 8 in flight" in r["traffic"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--rate", "1"], "--model and --hardware"),
        (["-m", "llama-3.1-8b", "-H", "h100-sxm"], "give --rate"),
        (["-m", "llama-3.1-8b", "-H", "h100-sxm", "--rate", "1", "--input-len", "zipf:2"], "unknown input length"),
        (["-m", "llama-3.1-70b", "-H", "h100-sxm", "--rate", "1"], "no memory for a KV cache"),
        (["-m", "llama-3.1-8b", "-H", "h100-sxm", "--trace", "BAD"], "bad.csv: ContextTokens"),
        (["-m", "llama-3.1-8b", "-H", "h100-sxm", "--rate", "1", "--max-num-batched-tokens", "64",
          "--max-num-seqs", "128"], "must be >= max_num_seqs"),
    ],
)  # fmt: skip
def test_errors_are_one_line(tmp_path, args, message):
    bad = tmp_path / "bad.csv"
    bad.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n0,10,5\n1,-4,5\n")
    p = run(*[str(bad) if a == "BAD" else a for a in args])
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    assert p.stderr.startswith("error:") and message in p.stderr and p.stderr.count("\n") == 1


SCENARIO = """\
name: sim-sweep
models: [llama-3.1-8b]
hardware: [h100-sxm]
layouts:
  - tp: [1, 2]
workloads:
  - input_len: 512
    output_len: 64
    batch: [1, 8]          # not a simulation input: one simulation per layout
slo: {ttft_s: 0.2, tpot_s: 0.01}
simulate:
  rate_per_s: [4, 16]
  num_requests: 150
  output_len: "uniform:16:128"
  max_num_batched_tokens: [2048, 8192]
"""


def test_scenario_sweep_same_frame_on_dask(tmp_path):
    path = tmp_path / "sim.yaml"
    path.write_text(SCENARIO)
    loaded = load_scenario(path)
    points = simulation_points(loaded)
    assert len(points) == 2 * 2 * 2  # layouts x rates x budgets (batch does not multiply)
    local = run_simulations(loaded)
    assert len(local) == 8 and local["feasible"].all()
    assert (local.groupby("layout", observed=True)["rate_per_s"].nunique() == 2).all()
    assert set(local["max_num_batched_tokens"]) == {2048, 8192}
    # More load, more tokens per GPU; the SLO columns come from the scenario's slo block.
    by = local.sort_values("rate_per_s")
    assert (
        by.groupby(["layout", "max_num_batched_tokens"], observed=True)[
            "output_tokens_per_s_per_gpu"
        ]
        .diff()
        .dropna()
        > 0
    ).all()
    assert local["slo_attainment"].between(0, 1).all()
    dask = run_simulations(loaded, scheduler="local", workers=2)
    pd.testing.assert_frame_equal(dask, local)


def test_shipped_simulation_scenarios_run():
    """Every shipped scenario with a simulate: section expands, and its first point runs."""
    from pathlib import Path

    from moesim.plan.sweep import simulate_point

    root = Path(__file__).resolve().parents[1] / "scenarios"
    found = 0
    for path in sorted(root.glob("*.yaml")):
        loaded = load_scenario(path)
        if loaded.scenario.simulate is None:
            continue
        found += 1
        points = simulation_points(loaded)
        row = simulate_point(loaded, points[0])
        assert row["feasible"], row["reason"]
        assert row["completed"] == loaded.scenario.simulate.num_requests
    assert found >= 1
