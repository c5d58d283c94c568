"""Invariants of the cost model: dense == MoE(E=1, k=1), monotonicity, the roofline floor, and the
batching-fragmentation shape (MoE amortises weights worse than a dense model of equal active size)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moesim.cost.kernel_cost import gemm_cost, moe_cost
from moesim.cost.roofline import RooflineParams, floor_s, op_time_s, smoothmax
from moesim.engine import static as serving
from moesim.spec.deployment import Layout
from moesim.spec.hardware import load_hardware
from moesim.spec.model import load_model

H100 = load_hardware("h100-sxm")
MODELS = ["llama-3.1-8b", "mixtral-8x7b", "qwen3-30b-a3b", "deepseek-v2-lite", "gpt-oss-20b"]
TIME_KEYS = ("ttft_s", "tpot_s", "e2e_latency_s")


def _predict(model, batch=8, input_len=512, output_len=128, **layout):
    return serving.predict(
        model, H100, Layout(**layout), batch=batch, input_len=input_len, output_len=output_len
    )


def test_dense_equals_moe_with_one_expert_top1():
    dense = load_model("llama-3.1-8b")
    one = dense.with_overrides(
        num_local_experts=1, num_experts_per_tok=1, moe_intermediate_size=dense.intermediate_size
    )
    assert one.total_params == dense.total_params
    for batch in (1, 7, 64):
        a, b = _predict(dense, batch=batch), _predict(one, batch=batch)
        for key in TIME_KEYS + ("memory_bytes_per_gpu", "usd_per_million_output_tokens"):
            np.testing.assert_allclose(a[key], b[key], rtol=1e-12, err_msg=key)


@pytest.mark.parametrize("name", MODELS)
def test_never_below_roofline_floor(name):
    m = load_model(name)
    batch = np.array([1, 4, 32, 256])
    r = serving.predict(
        m, H100, Layout(tp=np.array([[1], [2]])), batch=batch, input_len=1024, output_len=128
    )
    assert np.all(r["ttft_s"] >= r["ttft_floor_s"])
    assert np.all(r["tpot_s"] >= r["tpot_floor_s"])
    rb = serving.predict(
        m, H100, Layout(), batch=16, input_len=1024, output_len=128, breakdown=True
    )
    for phase, rows in rb["breakdown"].items():
        for row in rows:
            assert np.all(row["time_s"] >= row["floor_s"] * (1 - 1e-12)), (phase, row["op"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(MODELS),
    batch=st.integers(1, 512),
    input_len=st.integers(1, 8192),
    output_len=st.integers(1, 2048),
    tp=st.sampled_from([1, 2, 4]),
)
def test_more_work_never_takes_less_time(name, batch, input_len, output_len, tp):
    m = load_model(name)
    base = _predict(m, batch, input_len, output_len, tp=tp)
    for grown in (
        _predict(m, batch + 1 + batch // 3, input_len, output_len, tp=tp),
        _predict(m, batch, input_len + 1 + input_len // 3, output_len, tp=tp),
    ):
        for key in ("ttft_s", "tpot_s"):
            assert grown[key] >= base[key] * (1 - 1e-9), key
    longer = _predict(m, batch, input_len, output_len + 1 + output_len // 3, tp=tp)
    assert longer["e2e_latency_s"] >= base["e2e_latency_s"]
    assert longer["tpot_s"] >= base["tpot_s"] * (1 - 1e-9)


@settings(max_examples=25, deadline=None)
@given(layers=st.integers(1, 8), scale=st.sampled_from([1, 2]), batch=st.integers(1, 128))
def test_bigger_model_never_faster(layers, scale, batch):
    m = load_model("llama-3.1-8b")
    small = m.with_overrides(num_hidden_layers=8)
    big = m.with_overrides(
        num_hidden_layers=8 + layers, intermediate_size=m.intermediate_size * scale
    )
    a, b = _predict(small, batch), _predict(big, batch)
    for key in TIME_KEYS:
        assert b[key] >= a[key]


def test_moe_amortises_weights_worse_than_dense_equivalent():
    """Decode cost per token vs batch: a dense model reads its FFN once for the whole batch, an MoE
    reads every *active* expert, so its per-token cost falls much more slowly (DESIGN: batching
    fragmentation)."""
    moe = load_model("qwen3-30b-a3b")
    dense = moe.dense_equivalent()
    batches = np.array([1, 4, 16, 64, 256])
    lay = Layout()
    t_moe = (
        serving.predict_phase(moe, H100, lay, phase="decode", batch=batches, context_len=512)[
            "tpot_s"
        ]
        / batches
    )
    t_dense = (
        serving.predict_phase(dense, H100, lay, phase="decode", batch=batches, context_len=512)[
            "tpot_s"
        ]
        / batches
    )
    ratio = t_moe / t_dense
    print(
        "per-token decode cost MoE/dense by batch",
        dict(zip(batches.tolist(), np.round(ratio, 2).tolist(), strict=True)),
    )
    assert np.all(np.diff(t_moe) < 0) and np.all(np.diff(t_dense) < 0)  # both still amortise
    assert ratio[0] < 2.5  # batch 1: both read about their active weights
    assert ratio[3] > 2.0 * ratio[0]  # by batch 64 the MoE is far worse per token
    assert np.all(np.diff(ratio[:4]) > 0)


def test_gemm_crosses_from_memory_to_compute_bound():
    m = np.array([1, 16, 256, 4096, 16384])
    r = gemm_cost(H100, m, 8192, 8192, "bf16")
    assert list(r["bound"][[0, -1]]) == ["memory", "compute"]
    assert np.all(np.diff(r["latency_s"]) >= 0)
    assert np.all(r["latency_s"] >= r["floor_s"])
    # a big bf16 GEMM runs near the calibrated fraction of peak, never above peak
    tflops = r["flops"][-1] / r["latency_s"][-1] / 1e12
    assert 0.5 * 989 < tflops < 989


def test_moe_kernel_reads_only_active_experts():
    one_token = moe_cost(H100, 1, 256, 8, 7168, 2048, "bf16")
    many = moe_cost(H100, 4096, 256, 8, 7168, 2048, "bf16")
    expert_bytes = 3 * 7168 * 2048 * 2
    np.testing.assert_allclose(one_token["weight_bytes"], 8 * expert_bytes)
    assert many["weight_bytes"] == pytest.approx(256 * expert_bytes, rel=1e-3)
    assert one_token["latency_s"] >= one_token["floor_s"]


@given(a=st.floats(0, 1e3), b=st.floats(0, 1e3), p=st.floats(1.0, 100.0))
def test_smoothmax_never_below_max(a, b, p):
    assert smoothmax(a, b, p) >= max(a, b) * (1 - 1e-12)
    assert smoothmax(a, b, p) <= (a + b) * (1 + 1e-12) + 1e-300


@given(flops=st.floats(0, 1e15), nbytes=st.floats(0, 1e12), eta=st.floats(0.05, 1.0))
def test_op_time_respects_floor(flops, nbytes, eta):
    params = RooflineParams(eta, eta, 3e-6, 64, 128, 4.0)
    t = op_time_s(
        flops,
        nbytes,
        peak_flops_per_s=989e12,
        hbm_bytes_per_s=3.35e12,
        params=params,
        num_sms=132,
        m=100,
        n=1000,
    )
    assert t >= floor_s(flops, nbytes, 989e12, 3.35e12) * (1 - 1e-12)


def test_tp_shrinks_weights_and_kv_per_gpu():
    m = load_model("llama-3.1-70b")
    tp = np.array([1, 2, 4, 8])
    r = serving.predict(m, H100, Layout(tp=tp), batch=32, input_len=2048, output_len=256)
    assert np.all(np.diff(r["weights_bytes_per_gpu"]) < 0)
    assert np.all(np.diff(r["kv_cache_bytes_per_gpu"]) <= 0)
    assert not r["feasible"][0] and r["feasible"][-1]
    assert "GB per GPU" in r["reason"][0]


def test_sliding_window_caps_decode_attention():
    m = load_model("gpt-oss-20b")
    short = serving.predict_phase(
        m, H100, Layout(), phase="decode", batch=8, context_len=2000, breakdown=True
    )
    long = serving.predict_phase(
        m, H100, Layout(), phase="decode", batch=8, context_len=64000, breakdown=True
    )

    def op(res, name):
        return next(r for r in res["breakdown"]["decode"] if r["op"] == name)

    assert op(long, "attn.core_sliding")["hbm_bytes"] == pytest.approx(
        op(short, "attn.core_sliding")["hbm_bytes"]
    )
    assert op(long, "attn.core")["hbm_bytes"] > 20 * op(short, "attn.core")["hbm_bytes"]


def test_mla_decode_reads_latent_cache():
    m = load_model("deepseek-v2-lite")
    r = serving.predict_phase(
        m, H100, Layout(), phase="decode", batch=4, context_len=4096, breakdown=True
    )
    core = next(x for x in r["breakdown"]["decode"] if x["op"] == "attn.core")
    latent = (m.kv_lora_rank + m.qk_rope_head_dim) * 2  # bf16 bytes per token per layer
    per_layer = core["hbm_bytes"] / m.num_hidden_layers
    assert per_layer == pytest.approx(4 * 4097 * latent, rel=0.05)


def test_fp8_weights_halve_weight_bytes_and_fall_back_on_a100():
    m = load_model("llama-3.1-8b")
    bf = _predict(m, 4)
    f8 = serving.predict(
        m, H100, Layout(weight_dtype="fp8"), batch=4, input_len=512, output_len=128
    )
    # fp8 checkpoints keep the (untied) embedding and LM head, and the two RMSNorm weights of each
    # layer, in bf16: half of every other byte.
    tables_bf16 = 2 * m.vocab_size * m.hidden_size * 2
    norms_bf16 = m.num_hidden_layers * 2 * m.hidden_size * 2
    half_rest = (bf["weights_bytes_per_gpu"] - tables_bf16 - norms_bf16) / 2
    assert f8["weights_bytes_per_gpu"] == pytest.approx(
        half_rest + tables_bf16 + norms_bf16, rel=1e-9
    )
    assert f8["tpot_s"] < bf["tpot_s"]
    a100 = load_hardware("a100-sxm-80gb")
    r = serving.predict(m, a100, Layout(weight_dtype="fp8"), batch=4, input_len=512, output_len=128)
    assert np.isfinite(r["tpot_s"])  # weight-only fp8: bf16 compute, fp8 bytes


# ---- small kernels, DeepEP low-latency bytes, host launches, fused all-reduce + RMSNorm --------


def _ops(model, phase="decode", seqs=8, new=1, ctx=1024, **layout):
    from moesim.cost.ops import step_ops

    ops, stats = step_ops(load_model(model) if isinstance(model, str) else model, H100,
                          Layout(**layout), phase, seqs, new, ctx)  # fmt: skip
    return {o.name: o for o in ops}, stats


def test_small_kernels_engines_launch_are_priced():
    """RoPE, KV-cache write, fused add+RMSNorm (8·T·h bytes each in bf16, two per layer) and,
    with fp8 weights, activation quantisation; 1x128 block scales for DeepSeek-V3."""
    m = load_model("llama-3.1-8b")
    ops, _ = _ops(m, seqs=8)
    T, h = 8, m.hidden_size
    assert float(ops["norms"].hbm_bytes) == 2 * 8.0 * T * h
    d, H, Hkv = m.attn_head_dim, m.num_attention_heads, m.num_key_value_heads
    assert float(ops["attn.rope"].hbm_bytes) == 2.0 * T * (H + Hkv) * d * 2
    assert float(ops["attn.kv_write"].hbm_bytes) == 2.0 * T * Hkv * d * (2 + 2)
    assert "attn.quant" not in ops  # bf16 GEMMs need no quantisation
    fp8, _ = _ops(m, seqs=8, weight_dtype="fp8")
    assert float(fp8["attn.quant"].hbm_bytes) == T * (h + H * d) * (2 + 1)
    assert "attn.quant" not in _ops(m, seqs=8, weight_dtype="fp8", framework="trtllm")[0]
    ds, _ = _ops("deepseek-v3", seqs=8, weight_dtype="fp8")
    per_elem = float(ds["attn.quant"].hbm_bytes) / (T * (7168 + 1536 + 128 * 128))
    assert per_elem == pytest.approx(3 + 4 / 128)  # bf16 in, fp8 out, fp32 scale per 128


def test_sampler_reads_the_logits():
    m = load_model("llama-3.1-8b")
    ops, _ = _ops(m, seqs=4)
    assert float(ops["sampler"].hbm_bytes) == 4 * m.vocab_size * (2 + 4 + 8 + 4)


def test_low_latency_dispatch_sends_one_copy_per_token_expert_pair():
    """DeepEP low-latency kernels: k (ep-1)/ep copies leave a GPU per token, one per (token,
    expert) pair on another GPU, not one per distinct remote GPU. For DeepSeek-V3 (E=256, k=8)
    distinct-GPU counting is short by 1 - (ep-1)(1 - C(E-E/ep, k)/C(E, k)) / (k (ep-1)/ep):
    19 % at EP16, 10 % at EP32 (12 % of all eight pairs, the local one included)."""
    from math import comb

    m = load_model("deepseek-v3")
    for ep, fewer in ((16, 0.19), (32, 0.10)):
        ops, stats = _ops(m, seqs=64, tp=1, dp=ep, ep=ep, weight_dtype="fp8", dispatch_dtype="fp8")
        d = ops["moe.dispatch"]
        total = float(d.intra_bytes + d.inter_bytes)
        per_token = 7168 + 7168 * 4 / 128
        src = 64 * max(1.0, float(stats.max_load_ratio))
        pairs = 8 * (ep - 1) / ep
        assert total == pytest.approx(src * pairs * per_token)
        distinct = (ep - 1) * (1 - comb(256 - 256 // ep, 8) / comb(256, 8))
        assert 1 - distinct / pairs == pytest.approx(fewer, abs=0.01)
        pre, _ = _ops(m, "prefill", seqs=4, new=1024, ctx=0, tp=1, dp=ep, ep=ep,
                      weight_dtype="fp8", dispatch_dtype="fp8")  # fmt: skip
        # normal kernels (prefill): once per remote node over RDMA, NVLink forwarding inside
        assert float(pre["moe.dispatch"].inter_bytes) < float(pre["moe.dispatch"].intra_bytes)


def test_eager_steps_pay_host_launches_beyond_the_graph_capture_size():
    from moesim.cost.ops import CUDA_GRAPH_MAX_BATCH, EAGER_HOST_LAUNCH_S

    m = load_model("llama-3.1-8b")
    cap = CUDA_GRAPH_MAX_BATCH["trtllm"]
    lay = Layout(framework="trtllm")
    r = serving.predict_phase(m, H100, lay, phase="decode", batch=np.array([cap, cap + 1]),
                              context_len=128)  # fmt: skip
    t = np.asarray(r["tpot_s"])
    launches = 32 * 14  # at least ~14 kernels per Llama layer
    assert t[1] >= t[0] and t[1] >= launches * EAGER_HOST_LAUNCH_S


def test_prefill_graphs_follow_each_engine():
    """vLLM V1 replays prefill / mixed batches of up to 512 tokens from piecewise CUDA graphs;
    TensorRT-LLM (graphs for generation-only batches) and SGLang (decode graphs) launch prefill
    from the host, so a short prompt there pays at least its kernels x the host launch cost."""
    from moesim.cost.ops import EAGER_HOST_LAUNCH_S, graph_captured

    tokens = np.array([128.0, 4096.0])
    assert list(graph_captured("vllm", "prefill", 1, tokens, 1)) == [True, False]
    assert list(graph_captured(None, "prefill", 1, tokens, 1)) == [True, False]
    for fw in ("trtllm", "sglang"):
        assert not graph_captured(fw, "prefill", 1, tokens, 1).any()
    m = load_model("llama-3.1-8b")
    r = serving.predict_phase(m, H100, Layout(framework="sglang"), phase="prefill", batch=1,
                              input_len=16)  # fmt: skip
    assert float(r["ttft_s"]) >= 32 * 14 * EAGER_HOST_LAUNCH_S  # >= ~14 kernels per layer


def test_fused_allreduce_rmsnorm_where_engines_fuse_it():
    m = load_model("llama-3.1-70b")
    kw = dict(phase="decode", batch=8, context_len=1024)
    plain = serving.predict_phase(m, H100, Layout(tp=8, framework="vllm"), **kw)["tpot_s"]
    fused = serving.predict_phase(m, H100, Layout(tp=8, framework="sglang"), **kw)["tpot_s"]
    assert fused < plain
    ops, _ = _ops(m, seqs=8, tp=8, framework="trtllm")
    assert float(ops["norms"].launches) == 0
    assert _ops(m, seqs=8, tp=1, framework="trtllm")[0]["norms"].launches == 2
