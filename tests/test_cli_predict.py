"""The predict and kernel commands: JSON keys, errors as one line with a non-zero exit."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PREDICT_KEYS = {
    "ttft_s",
    "tpot_s",
    "e2e_latency_s",
    "output_tokens_per_s_per_gpu",
    "prefill_tokens_per_s_per_gpu",
    "weights_bytes_per_gpu",
    "kv_cache_bytes_per_gpu",
    "activation_bytes_per_gpu",
    "feasible",
    "reason",
    "usd_per_million_output_tokens",
}


def run(*args):
    return subprocess.run(
        [sys.executable, "-c", "from moesim.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_predict_json_keys_and_formula():
    p = run(
        "predict",
        "--model",
        "mixtral-8x7b",
        "--hardware",
        "h100-sxm",
        "--tp",
        "2",
        "--batch",
        "32",
        "--input-len",
        "1024",
        "--output-len",
        "256",
        "--json",
    )
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert PREDICT_KEYS <= set(r)
    assert r["output_tokens_per_s_per_gpu"] == pytest.approx(32 * 256 / r["e2e_latency_s"] / 2)
    assert r["feasible"] is True


def test_predict_table_and_breakdown():
    p = run(
        "predict",
        "--model",
        "llama-3.1-8b",
        "--hardware",
        "h100-sxm",
        "--batch",
        "4",
        "--breakdown",
    )
    assert p.returncode == 0, p.stderr
    assert "tpot_s" in p.stdout and "attn.qkv" in p.stdout


@pytest.mark.parametrize(
    "args, fragment",
    [
        (
            ["--model", "mixtral-8x7b", "--hardware", "h100-sxm", "--tp", "3", "--batch", "4"],
            "tp does not divide",
        ),
        (["--model", "nosuch", "--hardware", "h100-sxm", "--batch", "4"], "unknown model"),
        (["--model", "mixtral-8x7b", "--hardware", "h1OO", "--batch", "4"], "unknown hardware"),
        (["--model", "llama-2-70b", "--hardware", "l40s", "--batch", "4"], "GB per GPU"),
        (
            [
                "--model",
                "mixtral-8x7b",
                "--hardware",
                "h100-sxm",
                "--ep",
                "3",
                "--tp",
                "3",
                "--batch",
                "4",
            ],
            "does not divide",
        ),
    ],
)
def test_predict_errors_are_one_line(args, fragment):
    p = run("predict", *args)
    assert p.returncode != 0
    assert "Traceback" not in p.stderr
    assert fragment in (p.stderr + p.stdout)


def test_kernel_gemm_and_moe_json():
    p = run(
        "kernel",
        "gemm",
        "--m",
        "64",
        "--n",
        "4096",
        "--k",
        "7168",
        "--dtype",
        "bf16",
        "--hardware",
        "h100-sxm",
        "--json",
    )
    assert p.returncode == 0, p.stderr
    g = json.loads(p.stdout)
    assert {"latency_s", "flops", "hbm_bytes", "bound"} <= set(g) and g["bound"] == "memory"
    p = run(
        "kernel",
        "moe",
        "--tokens",
        "512",
        "--experts",
        "64",
        "--top-k",
        "8",
        "--hidden",
        "2048",
        "--intermediate",
        "1408",
        "--hardware",
        "h100-sxm",
        "--ep",
        "8",
        "--routing",
        "zipf:1.2",
        "--json",
    )
    assert p.returncode == 0, p.stderr
    m = json.loads(p.stdout)
    assert {
        "latency_s",
        "flops",
        "hbm_bytes",
        "bound",
        "max_load_ratio",
        "active_experts",
        "padding_waste",
        "drop_rate",
    } <= set(m)
    assert m["max_load_ratio"] > 1.0


def test_kernel_moe_rejects_topk_above_experts():
    p = run(
        "kernel",
        "moe",
        "--tokens",
        "8",
        "--experts",
        "4",
        "--top-k",
        "8",
        "--hidden",
        "64",
        "--intermediate",
        "64",
        "--hardware",
        "h100-sxm",
    )
    assert p.returncode == 2 and "exceeds" in p.stderr and "Traceback" not in p.stderr


INFLIGHT_KEYS = PREDICT_KEYS | {
    "concurrency",
    "token_budget",
    "max_concurrency",
    "output_tokens_per_s_per_user",
    "tpot_floor_s",
    "ttft_floor_s",
    "total_tokens_per_s_per_gpu",
    "requests_per_s",
    "running_seqs",
    "mixed_step_fraction",
    "kv_cache_occupancy",
    "engine",
}


def test_predict_concurrency_json_contract():
    p = run("predict", "--model", "llama-3.1-8b", "--hardware", "h100-sxm", "--concurrency",
            "32", "--input-len", "512", "--output-len", "128", "--json")  # fmt: skip
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert INFLIGHT_KEYS <= set(r), INFLIGHT_KEYS - set(r)
    assert r["concurrency"] == 32 and r["token_budget"] == 8192 and r["schedule"] == "concurrency"
    # output tokens over the whole run per GPU, as benchmark clients count them (one GPU here)
    assert r["output_tokens_per_s_per_gpu"] == pytest.approx(r["requests_per_s"] * 128)
    assert r["e2e_latency_s"] == pytest.approx(r["ttft_s"] + 127 * r["tpot_s"])
    assert r["tpot_s"] >= r["tpot_floor_s"] and r["ttft_s"] >= r["ttft_floor_s"]


def test_max_throughput_picks_values_and_honours_slos_and_max_batch():
    base = ["predict", "--model", "llama-3.1-8b", "--hardware", "h100-sxm", "--input-len",
            "1024", "--output-len", "256", "--max-throughput", "--json"]  # fmt: skip
    free = json.loads(run(*base).stdout)
    assert free["schedule"] == "max-throughput" and free["feasible"]
    assert free["concurrency"] <= free["max_concurrency"] and free["token_budget"] > 0
    capped = json.loads(run(*base, "--max-batch", "32").stdout)
    assert capped["running_seqs"] <= 32 and (
        capped["output_tokens_per_s_per_gpu"] <= free["output_tokens_per_s_per_gpu"] * (1 + 1e-9)
    )
    slo = json.loads(run(*base, "--tpot-slo", "0.012", "--ttft-slo", "0.5").stdout)
    assert slo["tpot_s"] <= 0.012 and slo["ttft_s"] <= 0.5
    assert slo["output_tokens_per_s_per_gpu"] <= free["output_tokens_per_s_per_gpu"] * (1 + 1e-9)
    tight = run(*base, "--tpot-slo", "0.0001")
    assert tight.returncode != 0 and "SLO" in tight.stderr and "Traceback" not in tight.stderr
    trt = json.loads(run(*base, "--engine", "trtllm", "--token-budget", "4096").stdout)
    assert trt["engine"] == "trtllm" and trt["token_budget"] == 4096


@pytest.mark.parametrize(
    "extra, fragment",
    [
        ([], "give --batch"),
        (["--batch", "4", "--concurrency", "4"], "--batch is the static mode"),
        (["--concurrency", "4", "--ttft-slo", "1"], "--max-throughput"),
        (["--concurrency", "4", "--engine", "tgi"], "unknown engine"),
        (["--concurrency", "4", "--input-len-dist", "uniform:9:3"], "lo <= hi"),
    ],
)
def test_inflight_errors_are_one_line(extra, fragment):
    p = run("predict", "--model", "llama-3.1-8b", "--hardware", "h100-sxm", *extra)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert fragment in p.stderr + p.stdout
