"""Decode attention on the engine's kernel for the shape, held against TensorRT-LLM's own rules
(decoderXQARunner::shouldUse, computeMultiBlockCount) worked by hand, and against hand arithmetic
for the time of each path."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moesim.calibrate.shape_fit import TRTLLM_DECODE_DISPATCH
from moesim.cost.roofline import (
    RooflineParams,
    decode_attention_time_s,
    decode_uses_grouped,
    floor_s,
    mmha_key_tiles,
    op_time_s,
    split_kv_chunks,
)

SMS = 132  # H100 / H200 SXM
BW = 3.35e12
PEAK = 989.4e12
TRT = RooflineParams(
    compute_efficiency=1.0, memory_efficiency=0.5, launch_overhead_s=0.0, ridge_sharpness=64.0,
    tile_candidates=((1, 1),), split_k=False, **TRTLLM_DECODE_DISPATCH,
    decode_ungrouped_wave_overhead_s=1e-6, decode_ungrouped_memory_efficiency=0.25,
    decode_ungrouped_kv_reread=0.5,
)  # fmt: skip


@pytest.mark.parametrize(
    "seqs,kv_heads,q_per_kv,keys,kv_bytes,grouped",
    [
        # 48 query heads per KV head: XQA has no kernel for groups above 32 -> masked MHA
        (1024, 4, 48, 4096, 2, False),
        (1024, 4, 48, 4096, 1, False),
        # batch 1, 1 KV head, 2048 keys, bf16: blocks 1 x 1 x 16 = 16; 16 x 4 = 64 < 132 -> MMHA
        (1, 1, 8, 2048, 2, False),
        # the same with an fp8 cache: MMHA cannot read it, XQA runs anyway
        (1, 1, 8, 2048, 1, True),
        # batch 3: 3 x 16 = 48; 48 x 4 = 192 >= 132 -> XQA
        (3, 1, 8, 2048, 2, True),
        # batch 2, 8 KV heads, 100 keys: max(1, 100 // 128) = 1 block each, 16 x 4 = 64 -> MMHA
        (2, 8, 4, 100, 2, False),
        # 32 heads per KV head is still XQA's
        (64, 1, 32, 1024, 2, True),
        # vanilla MHA (one query head per KV head) stays on masked MHA, whatever the cache format
        # and however many blocks (jit::supportConfigCommon)
        (1024, 32, 1, 4096, 2, False),
        (1024, 32, 1, 4096, 1, False),
        # two query heads per KV head is a group
        (1024, 16, 2, 4096, 2, True),
    ],
)
def test_trtllm_kernel_choice_by_hand(seqs, kv_heads, q_per_kv, keys, kv_bytes, grouped):
    got = decode_uses_grouped(seqs, kv_heads, q_per_kv, keys, kv_bytes, TRT, SMS)
    assert bool(got) is grouped


def test_split_kv_chunks_by_hand():
    # 1 sequence x 8 heads, 4096 keys: 4096 // 128 = 32 chunks, 8 x 32 / 132 = 1.9 waves <= 8
    assert split_kv_chunks(1, 8, 4096, TRT, SMS) == 32
    # 64 x 8 x 32 / 132 = 124.1 waves; 124.1 / 8 = 15.5 -> floor(32 / 15.5) = 2 chunks
    assert split_kv_chunks(64, 8, 4096, TRT, SMS) == 2
    # short contexts are one chunk; the chunk count never passes the SM count
    assert split_kv_chunks(1, 1, 100, TRT, SMS) == 1
    assert split_kv_chunks(1, 1, 10**7, TRT, SMS) == SMS
    off = RooflineParams(compute_efficiency=1.0, memory_efficiency=1.0, launch_overhead_s=0.0)
    assert split_kv_chunks(1, 1, 10**6, off, SMS) == 1


def test_ungrouped_time_by_hand():
    # batch 1, 1 KV head, 4 query heads, head dim 128, 1024 keys, bf16 cache: MMHA
    kv = 2 * 1024 * 1 * 128 * 2  # K and V of 1024 keys, 2 bytes
    qo = 2 * 1 * 4 * 128 * 2  # query in, output out
    flops = 4 * 1024 * 4 * 128
    t = decode_attention_time_s(
        flops, kv + qo, kv_bytes=kv, seqs=1, kv_heads=1, q_per_kv=4, keys=1024,
        kv_bytes_per_element=2, peak_flops_per_s=PEAK, hbm_bytes_per_s=BW, params=TRT,
        num_sms=SMS,
    )  # fmt: skip
    # 3 more query heads re-read the KV head, half of it from HBM; 25 % of the bandwidth
    hbm = kv + qo + 3 * kv * 0.5
    tiles = 3  # masked MHA: 1,024 threads, loops of 512 keys -> ceil(1025 / 512) key tiles
    waves = math.ceil(1 * 4 * tiles / SMS)
    # the wave cost is compute-side time (CTA prologue / epilogue): max(t_c + waves t_w, t_m)
    expect = max(flops / PEAK + waves * 1e-6, hbm / (BW * 0.25))
    assert t == pytest.approx(expect, rel=1e-6)


def test_grouped_time_by_hand():
    # batch 64, 8 KV heads, 4 query heads each, 4096 keys, bf16 cache: XQA, 2 chunks (above)
    seqs, hkv, g, keys, d = 64, 8, 4, 4096, 128
    kv = 2 * seqs * keys * hkv * d * 2
    qo = 2 * seqs * hkv * g * d * 2
    flops = 4 * seqs * keys * hkv * g * d
    params = RooflineParams(**{**TRT.__dict__, "wave_overhead_s": 1e-4})  # waves dominate
    t = decode_attention_time_s(
        flops, kv + qo, kv_bytes=kv, seqs=seqs, kv_heads=hkv, q_per_kv=g, keys=keys,
        kv_bytes_per_element=2, peak_flops_per_s=PEAK, hbm_bytes_per_s=BW, params=params,
        num_sms=SMS,
    )  # fmt: skip
    ctas = seqs * 2 * hkv  # 1,024 CTAs -> 8 waves of 132
    expect = max(flops / PEAK + math.ceil(ctas / SMS) * 1e-4, (kv + qo) / (BW * 0.5))
    assert t == pytest.approx(expect, rel=1e-6)


def test_no_dispatch_is_the_plain_roofline():
    """A profile without the engine's rules prices decode as before: one CTA per (seq, KV head)."""
    plain = RooflineParams(
        compute_efficiency=0.5, memory_efficiency=0.8, launch_overhead_s=3e-6,
        memory_parallelism_ctas=4.0, wave_overhead_s=1e-6, tile_candidates=((1, 1),),
    )  # fmt: skip
    b = np.array([1.0, 8.0, 256.0])
    kv = 2 * b * 2048 * 8 * 128 * 2
    a = decode_attention_time_s(
        4 * b * 2048 * 64 * 128, kv, kv_bytes=kv, seqs=b, kv_heads=8, q_per_kv=64, keys=2048,
        kv_bytes_per_element=2, peak_flops_per_s=PEAK, hbm_bytes_per_s=BW, params=plain,
        num_sms=SMS,
    )  # fmt: skip
    ref = op_time_s(
        4 * b * 2048 * 64 * 128, kv, peak_flops_per_s=PEAK, hbm_bytes_per_s=BW, params=plain,
        num_sms=SMS, m=b, n=8,
    )  # fmt: skip
    np.testing.assert_allclose(a, ref)


@settings(max_examples=200, deadline=None)
@given(
    seqs=st.integers(1, 4096),
    kv_heads=st.integers(1, 64),
    q_per_kv=st.sampled_from([1, 2, 4, 8, 16, 32, 48, 64, 128]),
    keys=st.integers(1, 200_000),
    kv_bytes=st.sampled_from([1, 2]),
)
def test_either_kernel_never_beats_the_datasheet_floor(seqs, kv_heads, q_per_kv, keys, kv_bytes):
    d = 128
    kv = 2.0 * seqs * keys * kv_heads * d * kv_bytes
    io = kv + 4.0 * seqs * kv_heads * q_per_kv * d
    flops = 4.0 * seqs * keys * kv_heads * q_per_kv * d
    t = decode_attention_time_s(
        flops, io, kv_bytes=kv, seqs=seqs, kv_heads=kv_heads, q_per_kv=q_per_kv, keys=keys,
        kv_bytes_per_element=kv_bytes, peak_flops_per_s=PEAK, hbm_bytes_per_s=BW, params=TRT,
        num_sms=SMS,
    )  # fmt: skip
    assert np.isfinite(t) and t >= floor_s(flops, io, PEAK, BW) * (1 - 1e-12)


def test_each_cache_format_prices_on_its_own_block():
    """attention_cost and the step model both take the decode block of the KV-cache format
    (TensorRT-LLM runs the Hopper GMMA XQA kernel over an fp8 cache, the HMMA one over bf16):
    two blocks that differ only in launch overhead price a launch-bound shape that much apart,
    and a format without a block of its own falls back to the compute dtype's."""
    from moesim.cost.kernel_cost import attention_cost
    from moesim.spec.hardware import load_hardware

    hw = load_hardware("h100-sxm")
    base = hw.efficiency.attention_decode
    blocks = {
        "bf16": base.model_copy(update={"launch_overhead_s": 50e-6, "by_format": {}}),
        "fp8": base.model_copy(update={"launch_overhead_s": 20e-6, "by_format": {}}),
    }
    split = base.model_copy(update={"by_format": blocks})
    eff = hw.efficiency.model_copy(update={"attention_decode": split})
    args = ("decode", 1, 16, 32, 8, 128)  # 1 sequence, 16 keys: the launch dominates
    t_bf16 = float(attention_cost(hw, *args, kv_dtype="bf16", efficiency=eff)["latency_s"])
    t_fp8 = float(attention_cost(hw, *args, kv_dtype="fp8", efficiency=eff)["latency_s"])
    # the same shape on either block differs by the launch overheads, 50 - 20 us, less the
    # (sub-microsecond) difference of reading 16 keys of fp8 rather than bf16
    assert t_bf16 - t_fp8 == pytest.approx(30e-6, abs=0.5e-6)
    only_bf16 = base.model_copy(update={"by_format": {"bf16": blocks["bf16"]}})
    eff1 = hw.efficiency.model_copy(update={"attention_decode": only_bf16})
    t_fallback = float(attention_cost(hw, *args, kv_dtype="fp8", efficiency=eff1)["latency_s"])
    assert t_fallback == pytest.approx(t_bf16, abs=0.5e-6)

    # the step model: a Llama decode step's attention core takes the block of the layout's cache
    from moesim.cost.ops import routing_or_default, step_ops
    from moesim.cost.step import evaluate_ops
    from moesim.spec.deployment import Layout
    from moesim.spec.model import load_model

    model = load_model("llama-3.1-8b")
    hw_split = hw.model_copy(update={"efficiency": eff})
    core = {}
    for kv in ("bf16", "fp8"):
        lay = Layout(tp=1, kv_dtype=kv, framework="trtllm")
        ops, _ = step_ops(model, hw_split, lay, "decode", 1, 1, 16, routing_or_default(None))
        timed = {o.name: o for o in evaluate_ops(ops, hw_split, lay)}
        core[kv] = float(np.sum(timed["attn.core"].time_s)) / model.num_hidden_layers
    assert core["bf16"] - core["fp8"] == pytest.approx(30e-6, abs=0.5e-6)


def test_query_heads_of_a_grouped_cta_add_to_its_wave_cost_by_hand():
    # batch 1024, 4 KV heads, 2 keys, fp8 cache: XQA, 1 chunk; 4,096 CTAs = 32 waves of 132.
    # Each wave costs 1.5 us + g x 0.1 us: 1.7 us at g = 2, 4.7 us at g = 32 (the tables' shape).
    seqs, hkv, keys, d = 1024, 4, 2, 128
    params = RooflineParams(**{**TRT.__dict__, "wave_overhead_s": 1.5e-6,
                               "decode_grouped_head_wave_s": 0.1e-6})  # fmt: skip
    for g, wave in ((2, 1.7e-6), (32, 4.7e-6)):
        kv = 2 * seqs * keys * hkv * d * 1
        qo = 2 * seqs * hkv * g * d * 2
        flops = 4 * seqs * keys * hkv * g * d
        t = decode_attention_time_s(
            flops, kv + qo, kv_bytes=kv, seqs=seqs, kv_heads=hkv, q_per_kv=g, keys=keys,
            kv_bytes_per_element=1, peak_flops_per_s=PEAK, hbm_bytes_per_s=BW, params=params,
            num_sms=SMS,
        )  # fmt: skip
        expect = max(flops / PEAK + 32 * wave, (kv + qo) / (BW * 0.5))
        assert t == pytest.approx(expect, rel=1e-6)


def test_the_fallback_kernel_pays_its_own_launch_by_hand():
    # vanilla MHA runs masked MHA: its launch is decode_ungrouped_launch_overhead_s, not the
    # grouped kernel's launch_overhead_s; 0 leaves it at the block's.
    seqs, heads, keys, d = 1, 8, 16, 128
    kv = 2 * seqs * keys * heads * d * 2
    qo = 2 * seqs * heads * d * 2
    flops = 4 * seqs * keys * heads * d
    args = dict(kv_bytes=kv, seqs=seqs, kv_heads=heads, q_per_kv=1, keys=keys,
                kv_bytes_per_element=2, peak_flops_per_s=PEAK, hbm_bytes_per_s=BW, num_sms=SMS)  # fmt: skip
    base = {**TRT.__dict__, "launch_overhead_s": 4e-6}
    own = RooflineParams(**{**base, "decode_ungrouped_launch_overhead_s": 9e-6})
    same = RooflineParams(**base)
    t_own = decode_attention_time_s(flops, kv + qo, params=own, **args)
    t_same = decode_attention_time_s(flops, kv + qo, params=same, **args)
    assert t_own - t_same == pytest.approx(5e-6, rel=1e-9)
    # 8 CTAs, one wave of 1 us (the fallback's wave cost); its memory side is far smaller
    assert t_own == pytest.approx(9e-6 + max(flops / PEAK + 1e-6, (kv + qo) / (BW * 0.25)))


@pytest.mark.parametrize(
    "seqs,heads,keys,head_dim,tiles",
    [
        # 1 CTA -> 1,024 threads; head dim 128: 16 threads per value, one K/V loop of
        # 1024 / 16 x 8 = 512 keys, so 511 keys (512 with the new one) fit one tile, 512 do not
        (1, 1, 511, 128, 1),
        (1, 1, 512, 128, 2),
        # head dim 64: 8 threads per value, loops of 1,024 keys; 8,192 keys -> ceil(8193/1024)
        (1, 1, 1023, 64, 1),
        (1, 1, 8192, 64, 9),
        # head dim 192 pads to 256: 32 threads per value, loops of 256 keys
        (1, 2, 256, 192, 2),
        # 600 CTAs >= 4 x 132: 256 threads, 4 per SM, ceil(528 / 600) = 1 tile whatever the keys
        (75, 8, 100_000, 128, 1),
        # 40 CTAs: 1,024 threads, 1 per SM, ceil(132 / 40) = 4 tiles at most
        (5, 8, 100_000, 128, 4),
        # 200 CTAs: 256 x ceil(528 / 200) = 768 -> 512 threads, 2 per SM, ceil(264 / 200) = 2
        (25, 8, 4096, 128, 2),
    ],
)
def test_masked_mha_key_tiles_follow_trtllm_launch_by_hand(seqs, heads, keys, head_dim, tiles):
    assert float(mmha_key_tiles(seqs, heads, keys, head_dim, SMS)) == tiles


def test_masked_mha_multi_block_pays_its_reduction_by_hand():
    # batch 1, vanilla MHA (1 query head per KV head), head dim 128: 511 keys are one tile,
    # 512 are two (above), and only then the reduction of the partial outputs is paid.
    d, cost = 128, 6e-6
    mb = RooflineParams(**{**TRT.__dict__, "decode_ungrouped_multi_block_s": cost})
    for keys, paid in ((511, 0.0), (512, cost)):
        kv = 2 * keys * d * 2
        qo = 2 * d * 2
        flops = 4 * keys * d
        args = dict(kv_bytes=kv, seqs=1, kv_heads=1, q_per_kv=1, keys=keys,
                    kv_bytes_per_element=2, peak_flops_per_s=PEAK, hbm_bytes_per_s=BW,
                    num_sms=SMS)  # fmt: skip
        with_mb = decode_attention_time_s(flops, kv + qo, params=mb, **args)
        without = decode_attention_time_s(flops, kv + qo, params=TRT, **args)
        assert with_mb - without == pytest.approx(paid, abs=1e-15)
        # one wave of 1 or 2 CTAs at 1 us, the fallback's 25 % of the bandwidth
        assert without == pytest.approx(max(flops / PEAK + 1e-6, (kv + qo) / (BW * 0.25)))
