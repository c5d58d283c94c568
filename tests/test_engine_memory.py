"""Memory as engines account it: runtime-reported capacity, runtime reserve, the engines' KV
sizing options, paged KV admitted at full length — and one max_concurrency everywhere."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from moesim.engine import memory as mem
from moesim.engine.presets import engine_preset
from moesim.spec.deployment import Layout
from moesim.spec.hardware import load_hardware
from moesim.spec.model import load_model

GiB = 2**30
H100, H200 = load_hardware("h100-sxm"), load_hardware("h200")


def test_capacity_is_what_the_runtime_reports():
    assert H100.hbm_capacity_bytes == pytest.approx(79.11 * GiB)  # not the datasheet's 80e9
    assert H200.hbm_capacity_bytes == pytest.approx(139.80 * GiB)


def test_vllm_and_trtllm_kv_budgets_by_hand():
    m, lay = load_model("llama-3.1-70b"), Layout(tp=4, weight_dtype="fp8")
    w = mem.weights_bytes_per_gpu(m, lay)
    act = mem.activation_bytes_per_gpu(m, lay, 8192, 1024)
    res = mem.runtime_reserve(m, H100, lay, engine_preset("vllm", H100))
    cap = H100.hbm_capacity_bytes
    vllm = mem.kv_budget_bytes(m, H100, lay, w, act, engine_preset("vllm", H100))
    # gpu_memory_utilization: 0.9 of the total holds weights, activations and non-graph buffers
    assert vllm == pytest.approx(
        0.9 * cap - w - act - (res["total_bytes"] - res["cuda_graph_pool_bytes"])
    )
    trt = mem.kv_budget_bytes(m, H100, lay, w, act, engine_preset("trtllm", H100))
    res_t = mem.runtime_reserve(m, H100, lay, engine_preset("trtllm", H100))
    assert trt == pytest.approx(0.9 * (cap - w - act - res_t["total_bytes"]))
    free = mem.kv_budget_bytes(m, H100, lay.with_(kv_cache_free_gpu_memory_fraction=0.5), w, act)
    assert free == pytest.approx(0.5 * (cap - w - act - res["total_bytes"]))


def test_reserve_components():
    ds = load_model("deepseek-v3")
    ep = mem.runtime_reserve(ds, H200, Layout(tp=1, dp=8, ep=8, weight_dtype="fp8"))
    # DeepEP low-latency buffer for 128 tokens/rank, hidden 7168, 256 experts (csrc/config.hpp):
    h, E, n = 7168, 256, 128
    dispatch, combine = 16 + 2 * h, 2 * h
    want = 2 * (E * n * combine + E * n * dispatch + 4 * E)
    assert float(ep["deepep_bytes"]) == pytest.approx(want)
    tp8 = mem.runtime_reserve(ds, H200, Layout(tp=8, weight_dtype="fp8"))
    assert float(tp8["deepep_bytes"]) == 0 and float(tp8["nvls_bytes"]) == mem.NVLS_PER_RANK_BYTES
    one = mem.runtime_reserve(load_model("llama-3.1-8b"), H200, Layout())
    assert float(one["nccl_bytes"]) == 0 and float(one["nvls_bytes"]) == 0
    sg = mem.runtime_reserve(ds, H200, Layout(tp=8), engine_preset("sglang", H200))
    assert float(sg["nvls_bytes"]) == 0  # SGLang turns NCCL NVLS off


def test_quantised_checkpoints_keep_tables_in_bf16():
    m = load_model("deepseek-v3")
    tables = 2 * m.vocab_size * m.hidden_size / 8 * 2  # embedding + LM head over TP8, bf16
    # The two RMSNorm weights of each layer stay bf16 too, whole on each GPU (MLA's small q_a /
    # kv_a norms are counted with the attention weights).
    norms = m.num_hidden_layers * 2 * m.hidden_size * 2
    f8 = mem.weights_bytes_per_gpu(m, Layout(tp=8, weight_dtype="fp8"))
    bf = mem.weights_bytes_per_gpu(m, Layout(tp=8, weight_dtype="bf16"))
    assert float(f8) == pytest.approx((float(bf) - tables - norms) / 2 + tables + norms, rel=1e-9)


def test_admission_at_full_length_in_blocks():
    m, lay = load_model("llama-3.1-8b"), Layout()
    kv = mem.kv_capacity(m, H100, lay, input_len=1000, output_len=1000, engine="vllm")
    block_bytes = mem.kv_bytes_per_seq(m, lay, 16.0)  # vLLM blocks of 16 tokens
    assert float(kv["kv_block_bytes_per_gpu"]) == pytest.approx(float(block_bytes))
    assert float(kv["kv_blocks"]) == np.floor(
        float(kv["kv_budget_bytes_per_gpu"]) / float(block_bytes)
    )
    assert float(kv["max_seqs"]) == np.floor(float(kv["kv_blocks"]) / np.ceil(2000 / 16))
    longer = mem.max_concurrency(m, H100, lay, 1000, 3000)
    assert float(longer) < float(kv["max_concurrency"])


def _cli(*args):
    p = subprocess.run([sys.executable, "-c", "from moesim.cli import main; main()", *args],
                       capture_output=True, text=True, timeout=180)  # fmt: skip
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_plan_predict_and_sweep_report_the_same_max_concurrency(tmp_path):
    from moesim.plan.planner import plan
    from moesim.plan.sweep import run_scenario

    base = ["-m", "llama-3.1-70b", "-H", "h100-sxm", "--tp", "4", "--input-len", "2048",
            "--output-len", "512", "--json"]  # fmt: skip
    static = _cli("predict", *base, "--batch", "16")["max_concurrency"]
    inflight = _cli("predict", *base, "--concurrency", "16")["max_concurrency"]
    r = plan("llama-3.1-70b", ["h100-sxm"], ttft_slo=5, tpot_slo=0.2, rate=1, input_len=2048,
             output_len=512, max_gpus=4, modes=("aggregated",))  # fmt: skip
    t = r.table
    row = t[(t["tp"] == 4) & (t["pp"] == 1) & (t["dp"] == 1) & (t["mode"] == "aggregated")]
    planned = set(row["max_concurrency"].astype(float))
    sc = tmp_path / "s.yaml"
    sc.write_text(
        "name: s\nmodels: [llama-3.1-70b]\nhardware: [h100-sxm]\nlayouts: [{tp: 4}]\n"
        "workloads: [{batch: 16, input_len: 2048, output_len: 512},"
        " {concurrency: 16, input_len: 2048, output_len: 512}]\n"
    )
    df, _ = run_scenario(sc)
    swept = set(df["max_concurrency"].astype(float))
    assert static == inflight and planned == {static} and swept == {static}, (
        static, inflight, planned, swept)  # fmt: skip


def test_memory_options_on_the_cli():
    base = ["predict", "-m", "llama-3.1-8b", "-H", "h100-sxm", "--concurrency", "8", "--json"]
    default = _cli(*base)["max_concurrency"]
    less = _cli(*base, "--gpu-memory-utilization", "0.5")["max_concurrency"]
    trt = _cli(*base, "--kv-cache-free-gpu-memory-fraction", "0.9")["max_concurrency"]
    assert less < default and trt > less
