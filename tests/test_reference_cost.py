"""The cost model against references that do not come from it (complements test_cost_model.py).

- FLOPs and HBM bytes of Llama-2-70B and Mixtral-8x7B layers, with the arithmetic written out
  from the numbers of their Hugging Face config.json (GEMM [M, K] x [K, N] = 2MNK FLOPs);
- parameter counts against the totals their publishers state;
- the expected number of distinct experts a decode batch reads, in closed form;
- DeepGEMM's published FP8 GEMM timings on H800 (published_points.csv R011-R028) against the
  datasheet H800 profile, at a stated tolerance, and the datasheet floor below every one.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from moesim.cost.kernel_cost import gemm_cost
from moesim.cost.ops import routing_options
from moesim.engine import static as serving
from moesim.spec.deployment import Layout
from moesim.spec.hardware import load_hardware
from moesim.spec.model import load_model

H100 = load_hardware("h100-sxm")
PUBLISHED = Path("/work/shared/reference/published_points.csv")

# Llama-2-70B config.json: hidden_size 8192, num_hidden_layers 80, num_attention_heads 64,
# num_key_value_heads 8 (head_dim 8192/64 = 128), intermediate_size 28672, vocab_size 32000.
L2_H, L2_L, L2_HEADS, L2_KV, L2_D, L2_I, L2_V = 8192, 80, 64, 8, 128, 28672, 32000


def _ops(result: dict, phase: str) -> dict[str, dict]:
    return {row["op"]: row for row in result["breakdown"][phase]}


def test_llama2_70b_prefill_gemm_flops_by_hand():
    P = 1000  # one prompt of 1000 tokens, TP = 1
    r = serving.predict(
        load_model("llama-2-70b"), H100, Layout(), batch=1, input_len=P, output_len=2,
        breakdown=True,
    )  # fmt: skip
    ops = _ops(r, "prefill")
    qkv = 2 * P * L2_H * (L2_HEADS + 2 * L2_KV) * L2_D * L2_L  # q, k, v projections
    o = 2 * P * (L2_HEADS * L2_D) * L2_H * L2_L
    up = 2 * P * L2_H * (2 * L2_I) * L2_L  # gate and up (SwiGLU)
    down = 2 * P * L2_I * L2_H * L2_L
    # causal attention: QK^T and PV over P(P+1)/2 query-key pairs per head, 2 FLOPs each
    core = 2 * 2 * (P * (P + 1) // 2) * L2_HEADS * L2_D * L2_L
    lm_head = 2 * 1 * L2_H * L2_V  # logits of the last position only
    assert qkv == 13_421_772_800_000  # 1.34e13: written out so a reader can check it
    for name, hand in (("attn.qkv", qkv), ("attn.o", o), ("ffn.up", up), ("ffn.down", down),
                       ("attn.core", core), ("lm_head", lm_head)):  # fmt: skip
        assert float(ops[name]["flops"]) == pytest.approx(hand, rel=1e-12), name


def test_llama2_70b_tp2_halves_the_per_gpu_flops():
    P = 512
    r = serving.predict(
        load_model("llama-2-70b"), H100, Layout(tp=2), batch=1, input_len=P, output_len=2,
        breakdown=True,
    )  # fmt: skip
    ops = _ops(r, "prefill")
    per_gpu_qkv = 2 * P * L2_H * (L2_HEADS + 2 * L2_KV) * L2_D * L2_L / 2
    per_gpu_down = 2 * P * L2_I * L2_H * L2_L / 2
    assert float(ops["attn.qkv"]["flops"]) == pytest.approx(per_gpu_qkv, rel=1e-12)
    assert float(ops["ffn.down"]["flops"]) == pytest.approx(per_gpu_down, rel=1e-12)


def test_llama2_70b_decode_reads_every_weight_and_the_kv_cache_once():
    ctx = 4000  # input 4000, output 2: the decode step sees 4000 + 2/2 = 4001 cached tokens
    r = serving.predict(
        load_model("llama-2-70b"), H100, Layout(), batch=1, input_len=4000, output_len=2,
        breakdown=True,
    )  # fmt: skip
    ops = _ops(r, "decode")
    ffn_weights = 3 * L2_H * L2_I * 2 * L2_L  # gate, up, down in bf16, all layers
    got = float(ops["ffn.up"]["hbm_bytes"]) + float(ops["ffn.down"]["hbm_bytes"])
    assert got == pytest.approx(ffn_weights, rel=1e-3)  # + a few kB of activations
    kv_read = 2 * (ctx + 1 + 1) * L2_KV * L2_D * 2 * L2_L  # K and V of every cached token + new
    assert float(ops["attn.core"]["hbm_bytes"]) == pytest.approx(kv_read, rel=2e-3)


def test_parameter_counts_match_the_publishers():
    # Llama-2-70B: model.safetensors.index.json total_size 137,953,296,384 bytes (bf16)
    # = 68,976,648,192 parameters; by hand from config.json:
    per_layer = (
        L2_H * L2_H + 2 * L2_H * L2_KV * L2_D + L2_H * L2_H + 3 * L2_H * L2_I + 2 * L2_H
    )  # q, k+v, o, gate+up+down, two RMSNorms
    hand = L2_L * per_layer + 2 * L2_V * L2_H + L2_H  # + untied embedding, LM head, final norm
    assert hand == 68_976_648_192
    assert load_model("llama-2-70b").total_params == hand
    # Mixtral-8x7B: 46.7 B total, 12.9 B active (mistral.ai, "Mixtral of experts", 2023-12-11)
    h, L, kv, inter, E, k, V = 4096, 32, 8, 14336, 8, 2, 32000
    attn = 2 * h * h + 2 * h * kv * 128
    total = L * (attn + E * 3 * h * inter + h * E + 2 * h) + 2 * V * h + h
    active = L * (attn + k * 3 * h * inter + h * E + 2 * h) + 2 * V * h + h
    m = load_model("mixtral-8x7b")
    assert m.total_params == total and round(total / 1e9, 1) == 46.7
    assert m.active_params == active and round(active / 1e9, 1) == 12.9


def test_kv_cache_bytes_per_token_by_hand():
    assert load_model("llama-2-70b").kv_cache_bytes_per_token(2) == 2 * L2_L * L2_KV * L2_D * 2
    assert load_model("mixtral-8x7b").kv_cache_bytes_per_token(2) == 2 * 32 * 8 * 128 * 2
    # DeepSeek-V3 MLA caches the 512-wide latent and the 64-wide RoPE key per layer (61 layers;
    # DeepSeek-V2 paper, arXiv:2405.04434 Table 1: (d_c + d_h^R) x l elements per token)
    assert load_model("deepseek-v3").kv_cache_bytes_per_token(2) == 61 * (512 + 64) * 2


@pytest.mark.parametrize("T", [1, 4, 32])
def test_mixtral_decode_experts_by_hand(T):
    """Uniform top-2 of 8 experts: an expert is missed by a token with probability 1 - k/E, so
    T tokens read E(1 - (1 - k/E)^T) distinct experts (exact for independent tokens); FLOPs are
    2 x T k assignments x h x I x 3 matrices, no padding with a tile of one row."""
    h, inter, E, k, L = 4096, 14336, 8, 2, 32
    r = serving.predict(
        load_model("mixtral-8x7b"), H100, Layout(), batch=T, input_len=256, output_len=2,
        routing=routing_options("uniform", None, block_m=1), breakdown=True,
    )  # fmt: skip
    experts = _ops(r, "decode")["moe.experts"]
    active = E * (1 - (1 - k / E) ** T)
    assert float(experts["flops"]) == pytest.approx(2 * T * k * h * inter * 3 * L, rel=1e-9)
    weights = active * 3 * h * inter * 2 * L  # bf16
    # token traffic per assignment, pass by pass (TensorRT-LLM CUTLASS MoE): expand reads the
    # token's row and writes it in expert order (h + h); GEMM1 reads it (h) and writes the
    # gate-up output (2I); the activation reads that (2I) and writes I; GEMM2 reads it (I) and
    # scatter-adds its h-wide output (h)
    per_assignment = (h + h) + (h + 2 * inter) + (2 * inter + inter) + (inter + h)
    rows = T * k * per_assignment * 2 * L
    # the output holds one h-wide bf16 row for each of the T tokens the call holds, however
    # many experts each was sent to
    rows += T * h * 2 * L
    assert float(experts["hbm_bytes"]) == pytest.approx(weights + rows, rel=1e-9)
    assert rows < 0.01 * weights  # decode reads weights; the rows are noise
    assert float(r["active_experts"]) == pytest.approx(active, rel=1e-9)


def _deepgemm_rows() -> list[tuple[str, int, int, int, float]]:
    if not PUBLISHED.is_file():
        pytest.skip("published_points.csv not available")
    pts = pd.read_csv(PUBLISHED)
    rows = []
    for _, r in pts[pts["category"] == "kernel_dense_gemm"].iterrows():
        shape = re.search(r"M=(\d+) N=(\d+) K=(\d+)", str(r["model_or_shape"]))
        if shape and r["unit"] == "TFLOPS" and str(r["gpu"]).startswith("H800"):
            m, n, k = map(int, shape.groups())
            rows.append((r["id"], m, n, k, 2 * m * n * k / (float(r["value"]) * 1e12)))
    return rows


def test_datasheet_h800_against_published_deepgemm_fp8_timings():
    """Tolerance (stated, not fitted): a datasheet roofline with published best-case
    efficiencies lands within 25 % at the median and within a factor of two on every shape of
    DeepGEMM's table (decode-sized M = 64, 128 and prefill-sized M = 4096)."""
    hw = load_hardware("h800")
    rows = _deepgemm_rows()
    assert len(rows) == 18  # R011-R028
    errors = []
    for rid, m, n, k, measured_s in rows:
        predicted = float(gemm_cost(hw, m, n, k, "fp8")["latency_s"])
        errors.append((predicted - measured_s) / measured_s)
        print(f"{rid} M={m} N={n} K={k}: {measured_s * 1e6:.1f} us published, "
              f"{predicted * 1e6:.1f} us predicted, {errors[-1]:+.0%}")  # fmt: skip
        # and physics: no published time beats the datasheet floor of its own shape
        floor = max(2 * m * n * k / hw.peak("fp8"), (m * k + k * n + 2 * m * n) / 3.35e12)
        assert measured_s >= floor, rid
    err = np.abs(errors)
    print(f"DeepGEMM fp8 vs datasheet h800: median {np.median(err):.0%}, max {err.max():.0%}")
    assert np.median(err) < 0.25
    assert err.max() < 1.0
