"""The shape-aware kernel terms against hand arithmetic, the floor and monotonicity, and the
shape fit on data of known terms (including a degenerate one it must catch)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moesim.calibrate.shape_fit import ShapeCalibrator, heldout_by_hash
from moesim.cost.kernel_cost import gemm_cost, moe_cost, moe_reduction_k, moe_weight_reads
from moesim.cost.roofline import (
    RooflineParams,
    op_time_s,
    quantisation_efficiency,
    split_k_slices,
)
from moesim.spec.hardware import KernelEfficiency, load_hardware

H100 = load_hardware("h100-sxm")
PEAK, BW, SMS = 989.4e12, 3.35e12, 132


def _t(flops, nbytes, **kw):
    base = dict(compute_efficiency=1.0, memory_efficiency=1.0, launch_overhead_s=0.0,
                ridge_sharpness=64.0)  # fmt: skip
    extra = {k: kw.pop(k) for k in list(kw) if k in RooflineParams.__dataclass_fields__}
    params = RooflineParams(**(base | extra))
    return float(
        op_time_s(flops, nbytes, peak_flops_per_s=PEAK, hbm_bytes_per_s=BW, params=params,
                  num_sms=SMS, **kw)
    )  # fmt: skip


def test_k_loop_overhead_scales_compute_by_k_plus_k0_over_k():
    m = n = 8192
    for k, k0 in ((512, 512.0), (4096, 300.0)):
        flops = 2.0 * m * n * k
        t = _t(flops, 1.0, k_overhead=k0, m=m, n=n, k=k)  # tiles off: K0 alone
        assert t == pytest.approx(flops / PEAK * (k + k0) / k, rel=1e-12)
    # K = K0: half the large-K rate
    assert _t(2.0 * m * n * 512, 1.0, k_overhead=512.0, m=m, n=n, k=512) == pytest.approx(
        2 * 2.0 * m * n * 512 / PEAK
    )


def test_a_fused_moe_charges_each_grouped_gemm_its_own_k():
    # Gated, h = 4096, I = 1536: gate/up is 2/3 of the FLOPs at K = 4096, down 1/3 at K = 1536.
    # K0 = 400 costs 2/3 x (1 + 400/4096) + 1/3 x (1 + 400/1536) = 1.15191 of the FLOPs; the one
    # K that gives the same factor is 400 / 0.15191 = 2633.1.
    h, i, k0 = 4096, 1536, 400.0
    factor = 2 / 3 * (1 + k0 / h) + 1 / 3 * (1 + k0 / i)
    k_eff = float(moe_reduction_k(h, i, 3))
    assert factor == pytest.approx(1.151910, rel=1e-6)
    assert k_eff == pytest.approx(2633.14, rel=1e-5)
    assert (k_eff + k0) / k_eff == pytest.approx(factor, rel=1e-12)
    # plain (non-gated) MLP: half the FLOPs each; K = I = h leaves K unchanged
    assert float(moe_reduction_k(h, i, 2)) == pytest.approx(2 / (1 / h + 1 / i))
    assert float(moe_reduction_k(h, h, 3)) == pytest.approx(h)


def test_the_candidate_tile_issuing_least_work_wins():
    # 192 x 192 output: 128-tiles issue 256 x 256 (q = 0.5625), 64-tiles exactly 192 x 192.
    q128 = quantisation_efficiency(192, 192, 128, 128, SMS)
    q64 = quantisation_efficiency(192, 192, 64, 64, SMS)
    assert float(q128) == pytest.approx(192 * 192 / (256 * 256))
    assert float(q64) == 1.0
    both = quantisation_efficiency(192, 192, 1, 1, SMS, candidates=((128, 128), (64, 64)))
    assert float(both) == 1.0
    # small tiles pay their operand traffic: 1 / (1 + a (1/64 + 1/64)) with a = 16 -> 2/3
    slow = quantisation_efficiency(
        192, 192, 1, 1, SMS, candidates=((64, 64),), operand_overhead=16.0
    )
    assert float(slow) == pytest.approx(1.0 / 1.5)


def test_without_split_k_a_partial_wave_idles_sms():
    # 64 tiles of 128 x 128 on 132 SMs: split-K fills them (q = 1), else 64 / 132 busy.
    m, n = 8 * 128, 8 * 128
    assert float(quantisation_efficiency(m, n, 128, 128, SMS, split_k=True)) == 1.0
    assert float(quantisation_efficiency(m, n, 128, 128, SMS, split_k=False)) == pytest.approx(
        64 / 132
    )


def test_split_k_slices_stop_at_the_shortest_k_loop_by_hand():
    # m = 1, n = 128, K = 4096 on 64 x 64 tiles: 2 tiles. Unlimited split-K fills the SMs
    # (issued = the 2 tiles alone); with slices of at least 1024 keys, 4 slices per tile keep
    # 8 of 132 SMs busy, so the issued work is 132 x 64 x 64 / 4.
    m, n, k = 1, 128, 4096
    free = quantisation_efficiency(m, n, 1, 1, SMS, candidates=((64, 64),))
    assert float(free) == pytest.approx(m * n / (2 * 64 * 64))
    short = quantisation_efficiency(
        m, n, 1, 1, SMS, candidates=((64, 64),), k=k, split_k_min_k=1024.0
    )
    assert float(short) == pytest.approx(m * n / (132 * 64 * 64 / 4))
    assert float(split_k_slices(2, k, 1024.0, SMS)) == 4.0
    # never more slices than fill the SMs, never fewer than one
    assert float(split_k_slices(2, 10**6, 1.0, SMS)) == 66.0
    assert float(split_k_slices(2, 512, 1024.0, SMS)) == 1.0
    # as the shortest slice goes to 0 the limit vanishes (continuous into the unlimited case)
    tiny = quantisation_efficiency(m, n, 1, 1, SMS, candidates=((64, 64),), k=k, split_k_min_k=1e-9)
    assert float(tiny) == pytest.approx(float(free))


def test_split_k_reduction_cost_by_hand():
    # The same 2 tiles in 4 slices: the reduction costs (1 - 1/4) of split_k_overhead_s, added
    # after the roofline; a grid that fills the SMs never splits and pays nothing.
    kw = dict(tile_candidates=((64, 64),), split_k_min_k=1024.0, split_k_overhead_s=2e-6)
    nbytes = 128 * 4096 * 2.0
    t = _t(2.0 * 128 * 4096, nbytes, m=1, n=128, k=4096, **kw)
    flops_t = 2.0 * 128 * 4096 / (PEAK * 128 / (132 * 64 * 64 / 4))
    assert t == pytest.approx(max(flops_t, nbytes / BW) + 0.75 * 2e-6, rel=1e-9)
    big = 4096 * 4096 * 2.0
    full = _t(2.0 * 4096**3, big, m=4096, n=4096, k=4096, **kw)  # 4,096 tiles: 32 waves
    assert full == pytest.approx(2.0 * 4096**3 / (PEAK * 4096 / (32 * 132)), rel=1e-9)
    # without split-K the limit and its reduction mean nothing
    kw_off = kw | {"split_k": False}
    assert _t(2.0 * 128 * 4096, nbytes, m=1, n=128, k=4096, **kw_off) == pytest.approx(
        _t(2.0 * 128 * 4096, nbytes, m=1, n=128, k=4096, tile_candidates=((64, 64),), split_k=False)
    )


def test_memory_parallelism_and_wave_cost_by_hand():
    # m = 1, n = 256 -> 4 tiles of 64 x 64; C = 12: t_memory x (1 + 12 / 4) = 4x
    nbytes = 256 * 8192 * 2.0
    t = _t(0.0, nbytes, memory_parallelism_ctas=12.0, m=1, n=256, tile_candidates=((64, 64),))
    assert t == pytest.approx(4.0 * nbytes / BW)
    # 300 CTAs of (128, 1) -> 3 waves of 132 (300 of 396 slots busy): + 3 x 2 us of CTA cost
    flops = 1e9
    t = _t(flops, 1.0, wave_overhead_s=2e-6, m=128 * 300, n=1, tile_candidates=((128, 1),))
    assert t == pytest.approx(flops / (PEAK * 300 / 396) + 3 * 2e-6, rel=1e-9)


def test_gather_bytes_run_as_their_own_kernels():
    flops, nbytes, gather = 1e12, 4e9, 1e9
    t = _t(flops, nbytes, gather_efficiency=0.25, gather_bytes=gather)
    assert t == pytest.approx(max(flops / PEAK, (nbytes - gather) / BW) + gather / (0.25 * BW))


def test_expert_weights_stream_again_per_m_tile_at_the_l2_miss_share_by_hand():
    # 2 active experts, 320 padded rows at block 64: 2.5 m-tiles each, so each expert's weights
    # are streamed 1.5 more times; a quarter of those repeats reach HBM: x (1 + 0.25 x 1.5)
    w = 2 * 3 * 4096 * 1536 * 1.0
    assert float(moe_weight_reads(w, 320.0, 2.0, 64, 0.25)) == pytest.approx(w * 1.375)
    # one m-tile per expert (or fewer rows) reads them once; r = 0 is the plain model
    assert float(moe_weight_reads(w, 100.0, 2.0, 64, 0.25)) == pytest.approx(w)
    assert float(moe_weight_reads(w, 320.0, 2.0, 64, 0.0)) == pytest.approx(w)
    eff = H100.efficiency.model_copy(
        update={"grouped_gemm": KernelEfficiency(weight_reread=0.25, memory_efficiency=0.5)}
    )
    realised = {"n_active_experts": 2.0, "sum_padded_tokens": 320.0, "assignments": 300.0}
    args = (H100, 300.0, 2, 1, 4096, 1536, "fp8")
    with_r = moe_cost(*args, realised=realised, efficiency=eff)
    plain = moe_cost(*args, realised=realised, efficiency=H100.efficiency)
    assert float(with_r["hbm_bytes"] - plain["hbm_bytes"]) == pytest.approx(w * 0.375)


def test_the_moe_combine_writes_a_row_for_every_token_the_rank_holds():
    # One EP rank of a 64-way group: 48 assignments of 4,096 tokens reach its 4 experts, but
    # the combine (finalizeMoeRouting) writes all 4,096 output rows, h = 7168 bf16 each.
    h, inter = 7168, 2048
    realised = {"n_active_experts": 4.0, "sum_padded_tokens": 256.0, "assignments": 48.0}
    kw = dict(realised=realised, efficiency=H100.efficiency)
    local = moe_cost(H100, 6.0, 256, 8, h, inter, "fp8", tokens_seen=6.0, **kw)
    held = moe_cost(H100, 6.0, 256, 8, h, inter, "fp8", tokens_seen=4096.0, **kw)
    assert float(held["hbm_bytes"] - local["hbm_bytes"]) == pytest.approx((4096 - 6) * h * 2)
    assert float(held["latency_s"]) > float(local["latency_s"])
    # by default the call holds the tokens it is given
    same = moe_cost(H100, 4096.0, 256, 8, h, inter, "fp8", realised=realised)
    given = moe_cost(H100, 4096.0, 256, 8, h, inter, "fp8", realised=realised, tokens_seen=4096.0)
    assert float(same["hbm_bytes"]) == float(given["hbm_bytes"])


def test_input_quantisation_only_where_the_row_timed_it():
    eff = H100.efficiency.model_copy(
        update={"gemm": KernelEfficiency(act_quant_bytes_per_element=6.0, act_quant_launch_s=5e-6)}
    )
    plain = gemm_cost(H100, 1024, 4096, 4096, "fp8", efficiency=eff)["latency_s"]
    timed = gemm_cost(H100, 1024, 4096, 4096, "fp8", efficiency=eff, act_quant=True)["latency_s"]
    eta_m = eff.gemm.memory_efficiency
    extra = 5e-6 + 6.0 * 1024 * 4096 / (H100.hbm_bandwidth_bytes_per_s * eta_m)
    assert float(timed - plain) == pytest.approx(extra, rel=1e-9)


def test_a_datasheet_block_prices_as_the_plain_roofline():
    blk = KernelEfficiency()
    assert blk.k_overhead == 0 and not blk.tile_candidates and blk.gather_efficiency == 0
    params = RooflineParams.from_efficiency(blk, "bf16")
    flops, nbytes = 2.0 * 64 * 4096 * 4096, 4096 * 4096 * 2.0
    t = op_time_s(flops, nbytes, peak_flops_per_s=PEAK, hbm_bytes_per_s=BW, params=params,
                  num_sms=SMS, m=64, n=4096, k=4096)  # fmt: skip
    hi = max(flops / (PEAK * 0.8), nbytes / (BW * 0.85))
    lo = min(flops / (PEAK * 0.8), nbytes / (BW * 0.85))
    assert float(t) == pytest.approx(hi * (1 + (lo / hi) ** 8) ** (1 / 8) + 4e-6)


def test_by_format_picks_the_formats_own_block():
    eff = KernelEfficiency(
        compute_efficiency=0.8,
        by_format={"fp8_block": KernelEfficiency(compute_efficiency=0.5)},
    )
    assert RooflineParams.from_efficiency(eff, "fp8", "fp8-block").compute_efficiency == 0.5
    assert RooflineParams.from_efficiency(eff, "fp8").compute_efficiency == 0.8
    with pytest.raises(ValueError):
        KernelEfficiency(by_format={"bf16": eff})  # blocks do not nest


_SHAPE = KernelEfficiency(
    compute_efficiency=0.7, memory_efficiency=0.8, k_overhead=300.0, tile_candidates=[[64, 128]],
    split_k=False, memory_parallelism_ctas=8.0, wave_overhead_s=1e-6, gather_efficiency=0.3,
    launch_overhead_s=3e-6,
)  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(
    m=st.integers(1, 20000), n=st.integers(16, 65536), k=st.integers(16, 65536),
    dtype=st.sampled_from(["bf16", "fp8"]),
)  # fmt: skip
def test_shape_terms_never_beat_the_datasheet_floor(m, n, k, dtype):
    eff = H100.efficiency.model_copy(update={"gemm": _SHAPE})
    res = gemm_cost(H100, m, n, k, dtype, efficiency=eff)
    assert float(res["latency_s"]) >= float(res["floor_s"]) * (1 - 1e-12)


@settings(max_examples=40, deadline=None)
@given(tokens=st.integers(1, 8192), extra=st.integers(1, 4096))
def test_more_tokens_never_take_less_time_in_a_shaped_moe(tokens, extra):
    eff = H100.efficiency.model_copy(update={"grouped_gemm": _SHAPE})
    args = dict(experts=64, top_k=6, hidden=2048, intermediate=1408, dtype="bf16")
    t0 = float(moe_cost(H100, tokens, **args, efficiency=eff)["latency_s"])
    t1 = float(moe_cost(H100, tokens + extra, **args, efficiency=eff)["latency_s"])
    assert t1 >= t0 * (1 - 1e-9)


def _synthetic_gemm_rows(block: KernelEfficiency, noise: float, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    m = rng.choice([1, 8, 32, 128, 512, 2048, 8192], 400)
    n = rng.choice([256, 1024, 4096, 12288], 400)
    k = rng.choice([256, 1024, 4096, 8192], 400)
    eff = H100.efficiency.model_copy(update={"gemm": block})
    t = gemm_cost(H100, m, n, k, "bf16", efficiency=eff)["latency_s"]
    df = pd.DataFrame({"kernel_class": "gemm", "fit_class": "gemm", "dtype": "bf16", "m": m,
                       "n": n, "k": k, "median_s": t * np.exp(noise * rng.standard_normal(400)),
                       "status": "ok", "impl": "x"})  # fmt: skip
    df["shape_key"] = [f"m{a}_n{b}_k{c}" for a, b, c in zip(m, n, k, strict=True)]
    return df.drop_duplicates("shape_key").reset_index(drop=True)


def test_the_fit_recovers_known_terms_and_predicts_held_out_shapes():
    truth = KernelEfficiency(
        compute_efficiency=0.75, memory_efficiency=0.82, launch_overhead_s=2.5e-6,
        k_overhead=250.0, tile_candidates=[[64, 64], [64, 128], [128, 128], [128, 256]],
        split_k=False, ridge_sharpness=4.0,
    )  # fmt: skip
    rows = _synthetic_gemm_rows(truth, noise=0.02)
    cal = ShapeCalibrator("gemm", H100, max_train_rows=None).fit(rows)
    # 2 % log-normal noise has a median |error| of 1.35 %: held out, within 2.5 noise medians
    assert cal.heldout_errors_["median_abs_error"] < 2.5 * 0.0135
    assert not cal.degenerate_
    # eta_c and the tile operand overhead trade against each other; what the data identifies
    # is the large-tile rate eta_c / (1 + a (1/128 + 1/256))
    got = cal.efficiency_.by_format["bf16"]
    rate = got.compute_efficiency / (1 + got.tile_operand_overhead * (1 / 128 + 1 / 256))
    assert rate == pytest.approx(0.75, rel=0.06)
    assert got.memory_efficiency == pytest.approx(0.82, rel=0.06)
    # the fitted terms time shapes outside the sweep as the true ones do (a few of the terms
    # trade against each other; their predictions may not)
    fitted = H100.efficiency.model_copy(update={"gemm": cal.efficiency_})
    true = H100.efficiency.model_copy(update={"gemm": truth})
    for m, n, k in ((16384, 16384, 16384), (4, 28672, 8192), (3000, 5000, 700)):
        t_fit = float(gemm_cost(H100, m, n, k, efficiency=fitted)["latency_s"])
        t_true = float(gemm_cost(H100, m, n, k, efficiency=true)["latency_s"])
        assert t_fit == pytest.approx(t_true, rel=0.08), (m, n, k)


def test_a_fit_driven_past_the_hbm_roof_is_caught_not_written():
    # "measurements" 1.3x faster than the datasheet bandwidth on the memory-bound side
    fast = KernelEfficiency(compute_efficiency=0.8, memory_efficiency=1.0, launch_overhead_s=2e-6)
    rows = _synthetic_gemm_rows(fast, noise=0.0)
    memory_bound = rows["m"] <= 32
    rows.loc[memory_bound, "median_s"] /= 1.3
    cal = ShapeCalibrator("gemm", H100, max_train_rows=None).fit(rows)
    assert "memory_efficiency" in cal.degenerate_.get("bf16", {})
    assert cal.efficiency_.by_format["bf16"].memory_efficiency < 1.0
    assert "degenerate" in cal.report() and cal.report()["degenerate"]


def test_heldout_by_hash_is_key_local_and_a_fifth():
    keys = [f"shape{i}" for i in range(20000)]
    held = heldout_by_hash(keys)
    assert abs(held.mean() - 0.2) < 0.01
    assert (heldout_by_hash(keys[::-1])[::-1] == held).all()  # order does not matter


def test_the_step_model_combines_the_tokens_each_layout_holds_by_hand():
    # DeepSeek-V3 decode, 64 sequences per DP rank. DP8 + EP8 (all-to-all): a rank holds the
    # tokens it received, at most its assignments and at most the 512 of the stage. TP8 + EP8:
    # every GPU holds the 64 tokens. The serial kernels write h = 7168 bf16 per held token on
    # top of the expand (read + write h) and activation (read 2I, write I) passes of each
    # assignment, (2h + 3I) x 2 bytes with I = 2048; the GEMMs stream the same again.
    from moesim.cost.ops import routing_or_default, step_ops
    from moesim.spec.deployment import Layout
    from moesim.spec.model import load_model

    model = load_model("deepseek-v3")
    h, per_assignment = 7168, (2 * 7168 + 3 * 2048) * 2
    for layout, stage_tokens in ((Layout(tp=1, ep=8, dp=8), 512), (Layout(tp=8, ep=8), 64)):
        ops, stats = step_ops(model, H100, layout, "decode", 64, 1, 1024, routing_or_default(None))
        experts = next(o for o in ops if o.name == "moe.experts")
        load = float(stats.max_gpu_load)
        held = min(load, stage_tokens) if layout.dp > 1 else stage_tokens
        assert float(experts.gather_bytes) == pytest.approx(load * per_assignment + held * h * 2)


# A fused-MoE block as the engine fits give it: token tiles, their operand overhead, L2 misses
# of the per-tile weight re-reads, serial token passes.
_TILED = KernelEfficiency(
    compute_efficiency=0.7, memory_efficiency=0.8, k_overhead=300.0, gather_efficiency=0.3,
    launch_overhead_s=3e-6, ridge_sharpness=3.0, token_tiles=[16, 32, 64, 128, 256],
    tile_operand_overhead=40.0, weight_reread=0.2,
)  # fmt: skip


def _tiled(block: KernelEfficiency):
    return H100.efficiency.model_copy(update={"grouped_gemm": block})


def test_a_fused_moe_runs_the_token_tile_its_autotuner_finds_fastest_by_hand():
    # Two active experts, compute-bound (eta_c = 0.01), no launch, hard max, tiles of 16 and
    # 64 token rows: a b-wide tile runs its MMAs at 1 / (1 + 16 / b) = 1/2 (16) or 4/5 (64).
    block = KernelEfficiency(
        compute_efficiency=0.01, memory_efficiency=1.0, launch_overhead_s=0.0,
        ridge_sharpness=64.0, tile_operand_overhead=16.0, token_tiles=[64, 16],
    )  # fmt: skip
    h, inter = 1024, 512
    peak = H100.peak("bf16")
    for rows, tile, padded, rate in ((17, 16, 2 * 32, 0.5), (60, 64, 2 * 64, 0.8)):
        # 17 rows: 32 padded rows at 1/2 (64 issued) beat 64 at 4/5 (80); 60 rows: both pad to
        # 64, and the wide tile's rate wins
        by_tile = {16: 2 * 16 * -(-rows // 16), 64: 2 * 64 * -(-rows // 64)}
        realised = {"n_active_experts": 2.0, "sum_padded_tokens": by_tile[64],
                    "sum_padded_by_tile": by_tile}  # fmt: skip
        res = moe_cost(H100, 2 * rows, 8, 1, h, inter, "bf16", realised=realised, launches=0,
                       efficiency=_tiled(block))  # fmt: skip
        flops = 2.0 * padded * h * inter * 3
        assert float(res["token_tile"]) == tile
        assert float(res["flops"]) == pytest.approx(flops)
        assert float(res["latency_s"]) == pytest.approx(flops / (peak * 0.01 * rate), rel=1e-9)
    # without token tiles the rows pad to the caller's block at the full rate
    plain = block.model_copy(update={"token_tiles": []})
    res = moe_cost(H100, 34, 8, 1, h, inter, "bf16", launches=0, efficiency=_tiled(plain),
                   realised={"n_active_experts": 2.0, "sum_padded_tokens": 128.0,
                             "sum_padded_by_tile": {16: 64.0, 64: 128.0}})  # fmt: skip
    assert float(res["latency_s"]) == pytest.approx(2.0 * 128 * h * inter * 3 / (peak * 0.01))


def test_token_tiles_stream_each_experts_weights_once_per_tile():
    # Memory-bound: one expert with 40 rows, weight re-read share 1 (every repeat from HBM).
    # A 16-row tile streams the weights 3 times, a 64-row one once: the wide tile wins.
    block = KernelEfficiency(
        compute_efficiency=1.0, memory_efficiency=1.0, launch_overhead_s=0.0,
        ridge_sharpness=64.0, tile_operand_overhead=0.0, token_tiles=[16, 64],
        weight_reread=1.0,
    )  # fmt: skip
    h, inter = 4096, 2048
    realised = {"n_active_experts": 1.0, "sum_padded_tokens": 64.0,
                "sum_padded_by_tile": {16: 48.0, 64: 64.0}}  # fmt: skip
    res = moe_cost(H100, 40, 8, 1, h, inter, "bf16", realised=realised, launches=0,
                   efficiency=_tiled(block))  # fmt: skip
    assert float(res["token_tile"]) == 64
    assert float(res["weight_bytes"]) == pytest.approx(3 * h * inter * 2)


@settings(max_examples=40, deadline=None)
@given(tokens=st.integers(1, 8192), extra=st.integers(1, 4096))
def test_more_tokens_never_take_less_time_with_token_tiles(tokens, extra):
    block = _TILED
    args = dict(experts=64, top_k=6, hidden=2048, intermediate=1408, dtype="bf16")
    t0 = moe_cost(H100, tokens, **args, efficiency=_tiled(block))
    t1 = moe_cost(H100, tokens + extra, **args, efficiency=_tiled(block))
    assert float(t1["latency_s"]) >= float(t0["latency_s"]) * (1 - 1e-9)
    assert float(t0["latency_s"]) >= float(t0["floor_s"]) * (1 - 1e-12)


def test_the_step_model_prices_the_token_tile_the_kernel_model_picks():
    from moesim.cost.ops import routing_or_default, step_ops
    from moesim.spec.deployment import Layout
    from moesim.spec.model import load_model

    block = _TILED
    hw = H100.model_copy(update={"efficiency": _tiled(block)})
    model = load_model("deepseek-v3")
    tiles = set()
    for batch in (1, 16, 256, 4096):
        ops, _ = step_ops(model, hw, Layout(tp=8, ep=8), "decode", batch, 1, 1024,
                          routing_or_default(None))  # fmt: skip
        experts = next(o for o in ops if o.name == "moe.experts")
        ref = moe_cost(hw, batch, 256, 8, 7168, 2048, experts.dtype, ep=8, fmt=experts.fmt)
        assert float(experts.flops) == pytest.approx(float(ref["flops"]), rel=1e-12)
        assert float(experts.hbm_bytes) == pytest.approx(float(ref["hbm_bytes"]), rel=1e-12)
        tile = float(ref["token_tile"])
        assert float(experts.mma_rate) == pytest.approx(1 / (1 + 40.0 / tile))
        tiles.add(tile)
    assert len(tiles) > 1  # small batches take narrow tiles, large ones wide


def test_token_tiles_must_be_distinct_widths_in_range():
    from pydantic import ValidationError

    for bad in ([0, 16], [16, 16], [2048]):
        with pytest.raises(ValidationError, match="token_tiles"):
            KernelEfficiency(token_tiles=bad)
    assert KernelEfficiency(token_tiles=[64, 16]).token_tiles == [16, 64]
