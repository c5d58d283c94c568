"""Predicted time of single kernels — the same formulas the step model uses, exposed per kernel
so that ``moesim kernel``, calibration and validation compare like with like.

Each function returns a dict of numpy arrays: ``latency_s``, ``flops``, ``hbm_bytes``,
``floor_s`` (datasheet roofline) and ``bound`` ('compute' | 'memory').
"""

from __future__ import annotations

import numpy as np

from moesim.cost.roofline import (
    RooflineParams,
    decode_attention_time_s,
    floor_s,
    mla_decode_grid,
    op_time_s,
)
from moesim.spec.dtypes import dtype_bytes


def _time(
    hw,
    kernel_class,
    dtype,
    flops,
    hbm_bytes,
    m=None,
    n=None,
    launches=1,
    efficiency=None,
    eager=False,
    k=None,
    fmt="",
    act_quant=False,
    gather_bytes=None,
):
    eff = (efficiency or hw.efficiency).for_class(kernel_class)
    peak = hw.peak(dtype)
    bw = hw.hbm_bandwidth_bytes_per_s
    params = RooflineParams.from_efficiency(eff, dtype, fmt)
    t = op_time_s(
        flops,
        hbm_bytes,
        peak_flops_per_s=peak,
        hbm_bytes_per_s=bw,
        params=params,
        num_sms=hw.num_sms,
        m=m,
        n=n,
        launches=launches,
        eager=eager,
        k=k,
        act_quant=act_quant,
        gather_bytes=gather_bytes,
    )
    return _result(t, flops, hbm_bytes, peak, bw)


def _result(t, flops, hbm_bytes, peak, bw) -> dict:
    """The dict every kernel function returns: time, work, the datasheet floor and the bound."""
    return {
        "latency_s": t,
        "flops": np.asarray(flops, dtype=float),
        "hbm_bytes": np.asarray(hbm_bytes, dtype=float),
        "floor_s": floor_s(flops, hbm_bytes, peak, bw),
        "bound": np.where(
            np.asarray(flops) / peak >= np.asarray(hbm_bytes) / bw, "compute", "memory"
        ),
    }


def gemm_cost(
    hw,
    m,
    n,
    k,
    dtype="bf16",
    out_dtype=None,
    efficiency=None,
    eager=False,
    fmt="",
    act_quant=False,
) -> dict:
    """[m, k] x [k, n] -> [m, n]: 2mnk FLOPs; A, B read once and C written once (ideal reuse).

    ``fmt`` picks the format's own kernel block (e.g. ``fp8-block``); ``act_quant`` adds the
    input quantisation a measured call included (see KernelEfficiency.act_quant_*)."""
    m, n, k = (np.asarray(x, dtype=float) for x in (m, n, k))
    ib = dtype_bytes(dtype)
    ob = dtype_bytes(out_dtype or ("bf16" if dtype in ("fp8", "fp4") else dtype))
    flops = 2.0 * m * n * k
    hbm = (m * k + k * n) * ib + m * n * ob
    return _time(
        hw, "gemm", dtype, flops, hbm, m=m, n=n, efficiency=efficiency, eager=eager, k=k,
        fmt=fmt, act_quant=act_quant,
    )  # fmt: skip


def copy_cost(hw, nbytes, efficiency=None, eager=False) -> dict:
    """Device-to-device copy of ``nbytes``: reads and writes them (2x traffic)."""
    nbytes = np.asarray(nbytes, dtype=float)
    return _time(
        hw, "memory", "bf16", 0.0 * nbytes, 2.0 * nbytes, efficiency=efficiency, eager=eager
    )


# Kernels one call of each measured MoE implementation launches (counted from moesim/kernels):
# (fixed, per active expert). The Triton path's alignment is ~32 small torch ops (sort, scatter,
# cumsums, searchsorted) plus its two kernels and the combine; grouped_mm sorts, gathers, runs
# two grouped GEMMs, the activation and an index_add; the loop runs ~11 ops per active expert;
# grouped_mm's non-Hopper fallback loops 2 GEMMs per expert. A serving engine's fused_moe
# (vLLM: align, gate-up, act, down, sum) takes 5, the default.
MOE_IMPL_KERNELS = {
    "triton": (37, 0),
    "triton_graph": (37, 0),
    "grouped_mm": (24, 0),
    "grouped_mm_fallback": (22, 2),
    "loop": (4, 11),
    "engine": (5, 0),
}


def moe_launches(impl: str, impl_path: str = "", n_active=0) -> np.ndarray:
    """Kernel launches of one MoE call of implementation ``impl`` (see MOE_IMPL_KERNELS)."""
    key = impl
    if impl == "grouped_mm" and "fallback" in str(impl_path):
        key = "grouped_mm_fallback"
    fixed, per_expert = MOE_IMPL_KERNELS.get(key, MOE_IMPL_KERNELS["engine"])
    return fixed + per_expert * np.asarray(n_active, dtype=float)


def moe_reduction_k(hidden, intermediate, n_mat):
    """The one K that gives a fused MoE layer's two grouped GEMMs their K-loop overhead.

    Gate/up runs (n_mat - 1) / n_mat of the FLOPs with K = hidden, down the other 1 / n_mat
    with K = intermediate; a per-tile overhead K0 costs each GEMM (K + K0) / K of its FLOPs,
    so the layer costs 1 + K0 x (f_up / hidden + f_down / intermediate), which is
    (K + K0) / K at K = 1 / (f_up / hidden + f_down / intermediate).
    """
    h = np.maximum(np.asarray(hidden, dtype=float), 1.0)
    i = np.maximum(np.asarray(intermediate, dtype=float), 1.0)
    n_mat = np.asarray(n_mat, dtype=float)
    return 1.0 / ((n_mat - 1.0) / n_mat / h + 1.0 / n_mat / i)


def _moe_block(hw, efficiency, dtype, fmt):
    eff = (efficiency or hw.efficiency).for_class("grouped_gemm")
    return eff.for_format(dtype, fmt) if hasattr(eff, "for_format") else eff


def moe_weight_reads(weight_bytes, padded, active, block_m, reread: float):
    """HBM bytes of a grouped GEMM's expert weights (``weight_bytes``: the active experts' once).

    Each expert's weights stream once per m-tile of ``block_m`` of its rows; the share
    ``reread`` of the repeats misses L2: weights x (1 + r (padded / block_m / active - 1)).
    """
    if not reread or not block_m:
        return weight_bytes
    active = np.asarray(active, dtype=float)
    per_expert = np.asarray(padded, dtype=float) / float(block_m) / np.maximum(active, 1e-30)
    return weight_bytes * (1.0 + reread * np.maximum(per_expert - 1.0, 0.0))


# Token tiles of the engines' fused-MoE GEMMs on Hopper: TensorRT-LLM's CUTLASS MoE GEMM puts
# each expert's tokens on the tile's N side (CutlassTileConfigSM90 CtaShape128x{16, 32, 64,
# 128, 256}, chosen per token count by its autotuner); vLLM's and SGLang's Triton fused_moe
# pick BLOCK_SIZE_M from the same range in their tuned configs.
ENGINE_TOKEN_TILES: tuple[int, ...] = (16, 32, 64, 128, 256)


def moe_token_tile(
    hw,
    dtype,
    fmt,
    efficiency,
    candidates,
    *,
    active,
    weight_bytes,
    streamed,
    serial,
    hidden,
    intermediate,
    n_mat,
    launches=1,
    eager=False,
) -> dict:
    """The token tile a fused MoE's autotuner picks: the fastest of ``candidates``.

    ``candidates``: (tile rows b, rows padded per expert to b) pairs, b None for no padding.
    Each is priced as the kernel would run it: FLOPs on its padded rows, weights streamed once
    per tile of an expert's rows (:func:`moe_weight_reads`), MMAs at 1 / (1 + a / b) of the
    fitted rate with a = the block's ``tile_operand_overhead`` when it lists ``token_tiles``
    (see KernelEfficiency.token_tiles), else at the full rate. Returns, per point, the chosen
    ``tile``, ``padded`` rows, ``flops``, ``weight_bytes``, ``mma_rate``.
    """
    block = _moe_block(hw, efficiency, dtype, fmt)
    params = RooflineParams.from_efficiency(block, dtype, fmt)
    ovh = block.tile_operand_overhead if block.token_tiles else 0.0
    k = moe_reduction_k(hidden, intermediate, n_mat)
    best = None
    for b, padded in candidates:
        padded = np.asarray(padded, dtype=float)
        flops = 2.0 * padded * hidden * intermediate * n_mat
        weights = moe_weight_reads(weight_bytes, padded, active, b, block.weight_reread)
        rate = 1.0 / (1.0 + ovh / b) if (b and ovh) else 1.0
        t = op_time_s(
            flops, weights + streamed + serial, peak_flops_per_s=hw.peak(dtype),
            hbm_bytes_per_s=hw.hbm_bandwidth_bytes_per_s, params=params, num_sms=hw.num_sms,
            m=padded, n=(n_mat - 1) * intermediate, launches=launches, eager=eager, k=k,
            gather_bytes=serial, mma_rate=rate,
        )  # fmt: skip
        cand = {
            "latency_s": t, "tile": np.full(np.shape(t), float(b or 0)), "padded": padded,
            "flops": flops, "weight_bytes": weights, "mma_rate": np.full(np.shape(t), rate),
        }  # fmt: skip
        if best is None:
            best = {name: np.asarray(v, dtype=float) for name, v in cand.items()}
            continue
        better = np.asarray(t < best["latency_s"])
        best = {name: np.where(better, v, best[name]) for name, v in cand.items()}
    return best


def moe_token_tile_candidates(block, block_m, stats, keep=1.0):
    """(b, padded rows) candidates of a fused MoE on the busiest rank: the block's
    ``token_tiles`` (``stats`` from routing_stats asked for those tiles), else the caller's
    ``block_m`` with the rows ``stats`` padded to it; ``keep``: the share not dropped."""
    by_tile = stats.padded_max_gpu_by_tile or {}
    tiles = [b for b in getattr(block, "token_tiles", []) if b in by_tile]
    if tiles:
        return [(b, keep * by_tile[b]) for b in tiles]
    return [(block_m, keep * stats.padded_assignments_max_gpu)]


def moe_activation_bytes(assignments, tokens_held, hidden, intermediate, n_mat, act_bytes):
    """HBM bytes of a fused MoE layer's token rows: (inside the GEMMs, in separate kernels).

    The pipeline of TensorRT-LLM's CUTLASS MoE (moe_kernels.cu, CutlassMoeFCRunner::runMoe,
    with the default finalize fusion), for A assignments of T held tokens:
    expandInputRows gathers each assignment's input row into expert order (reads and writes
    A x h); GEMM1 reads those rows and writes the gate/up output (A x (n_mat - 1) I); the
    activation kernel reads it and writes A x I; GEMM2 reads that and its epilogue
    scatter-adds A x h into the output, which is written once for every held token (T x h).
    The GEMMs' own row loads and stores, A (2h + n_mat I), stream alongside their MMAs (the
    roofline's memory term); the expand and activation passes, A (2h + n_mat I) again, and
    the output rows run as kernels of their own, after one another (``gather_bytes``).
    vLLM's and SGLang's Triton fused_moe gather rows inside GEMM1 and sum the k outputs in a
    moe_sum pass instead: one A x h pass fewer serial, absorbed by the fitted gather efficiency.
    """
    a = np.asarray(assignments, dtype=float)
    rows = a * (2.0 * hidden + n_mat * intermediate) * act_bytes
    return rows, rows + np.asarray(tokens_held, dtype=float) * hidden * act_bytes


def moe_cost(
    hw,
    tokens,
    experts: int,
    top_k: int,
    hidden: int,
    intermediate: int,
    dtype: str = "bf16",
    *,
    ep=1,
    routing=None,
    block_m: int | None = 64,
    capacity_factor: float | None = None,
    gated: bool = True,
    realised: dict | None = None,
    launches=None,
    efficiency=None,
    eager=False,
    fmt="",
    tokens_seen=None,
) -> dict:
    """One MoE layer's expert compute on the busiest EP rank: gate/up GEMM, activation, down GEMM.

    Weights read = active experts x expert bytes (DESIGN: only experts with n_e > 0 are read);
    FLOPs = 2 x padded assignments x h x I x (3 gated | 2 plain), padded per expert to the
    kernel's block M (vLLM moe_align_block_size), or, where the efficiency block lists
    ``token_tiles``, to the tile its autotuner finds fastest (:func:`moe_token_tile`).
    ``realised`` (measured rows) gives the actual ``n_active_experts`` and
    ``sum_padded_tokens`` (and ``sum_padded_by_tile``: {tile: rows padded to it}) instead of
    their expectations. The result's ``token_tile`` is the chosen tile (0: no padding).

    ``tokens_seen``: the token rows the rank's MoE call holds (default ``tokens``). Its final
    combine writes one h-wide output row for each of them, routed to the rank or not
    (TensorRT-LLM finalizeMoeRouting over num_rows, vLLM moe_sum, SGLang's combine), so an EP
    rank that receives every token pays for all of them.
    """
    from moesim.cost.routing import UNIFORM, routing_stats

    n_mat = 3 if gated else 2
    ab = dtype_bytes("bf16" if dtype in ("fp8", "fp4") else dtype)
    wb = dtype_bytes(dtype)
    tokens = np.asarray(tokens, dtype=float)
    block = _moe_block(hw, efficiency, dtype, fmt)

    if realised is not None:
        active = np.asarray(realised["n_active_experts"], dtype=float)
        padded = np.asarray(realised["sum_padded_tokens"], dtype=float)
        load = np.asarray(realised.get("assignments", tokens * top_k), dtype=float)
        by_tile = realised.get("sum_padded_by_tile") or {}
        stats = None
        # measured rows carry the rows padded to each token tile where their routing is known
        tiles = [b for b in block.token_tiles if b in by_tile]
        candidates = [(b, by_tile[b]) for b in tiles] or [(block_m, padded)]
    else:
        stats = routing_stats(
            tokens, top_k, experts, ep=ep, dist=routing or UNIFORM, block_m=block_m,
            capacity_factor=capacity_factor, tiles=tuple(block.token_tiles),
        )  # fmt: skip
        active = stats.active_experts_max_gpu
        load = stats.max_gpu_load
        candidates = moe_token_tile_candidates(block, block_m, stats)
    seen = tokens if tokens_seen is None else np.asarray(tokens_seen, dtype=float)
    streamed, serial = moe_activation_bytes(load, seen, hidden, intermediate, n_mat, ab)
    if launches is None:
        launches = MOE_IMPL_KERNELS["engine"][0]
    tile = moe_token_tile(
        hw, dtype, fmt, efficiency, candidates, active=active,
        weight_bytes=active * n_mat * hidden * intermediate * wb, streamed=streamed,
        serial=serial, hidden=hidden, intermediate=intermediate, n_mat=n_mat,
        launches=launches, eager=eager,
    )  # fmt: skip
    out = _result(
        tile["latency_s"], tile["flops"], tile["weight_bytes"] + streamed + serial,
        hw.peak(dtype), hw.hbm_bandwidth_bytes_per_s,
    )  # fmt: skip
    out["weight_bytes"] = tile["weight_bytes"]
    out["token_tile"] = tile["tile"]
    if stats is not None:
        out.update(
            max_load_ratio=stats.max_load_ratio,
            active_experts=stats.active_experts,
            padding_waste=stats.padding_waste,
            drop_rate=stats.drop_rate,
        )
    return out


def attention_cost(
    hw,
    phase: str,
    batch,
    seq_len,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    dtype="bf16",
    kv_dtype="bf16",
    causal=True,
    efficiency=None,
    eager=False,
) -> dict:
    """Attention core. Prefill: 4 x pairs x d FLOPs per head, Q/K/V read and O written once
    (FlashAttention, Dao et al. 2022). Decode (``seq_len`` = context): one query per sequence,
    the whole K/V cache read once."""
    b = np.asarray(batch, dtype=float)
    s = np.asarray(seq_len, dtype=float)
    ab, kvb = dtype_bytes(dtype), dtype_bytes(kv_dtype)
    if phase == "prefill":
        pairs = b * (s * (s + 1.0) / 2.0 if causal else s * s)
        flops = 4.0 * pairs * num_heads * head_dim
        io = b * s * head_dim * (2.0 * num_heads + 2.0 * num_kv_heads) * ab
        # CTAs: one per (sequence, head, query tile); each loops over its keys (FlashAttention-3,
        # arXiv 2407.08608): m = query rows per head, n = sequences x heads, k = keys per query.
        return _time(
            hw, "attention_prefill", dtype, flops, io, m=s, n=b * num_heads, k=s,
            efficiency=efficiency, eager=eager,
        )  # fmt: skip
    pairs = b * s
    flops = 4.0 * pairs * num_heads * head_dim
    io = 2.0 * pairs * num_kv_heads * head_dim * kvb + 2.0 * b * num_heads * head_dim * ab
    # The engine's decode kernel for the shape: grouped (one CTA per sequence, KV head and key
    # chunk) or per query head (roofline.decode_attention_time_s).
    # One block per KV-cache format: engines run a different decode kernel over an fp8 cache
    # (TensorRT-LLM XQA: the Hopper GMMA kernel for e4m3 K/V, the HMMA one for bf16).
    eff = (efficiency or hw.efficiency).for_class("attention_decode")
    params = RooflineParams.from_efficiency(eff, dtype, kv_dtype)
    peak, bw = hw.peak(dtype), hw.hbm_bandwidth_bytes_per_s
    hkv = np.asarray(num_kv_heads, dtype=float)
    t = decode_attention_time_s(
        flops, io, kv_bytes=2.0 * pairs * hkv * head_dim * kvb, seqs=b, kv_heads=hkv,
        q_per_kv=np.asarray(num_heads, dtype=float) / hkv, keys=s, kv_bytes_per_element=kvb,
        peak_flops_per_s=peak, hbm_bytes_per_s=bw, params=params, num_sms=hw.num_sms,
        eager=eager,
    )  # fmt: skip
    return _result(t, flops, io, peak, bw)


def mla_decode_cost(
    hw,
    batch,
    context_len,
    num_heads,
    kv_dtype="bf16",
    dtype="bf16",
    kv_lora_rank: int = 512,
    rope_dim: int = 64,
    efficiency=None,
    eager=False,
) -> dict:
    """Multi-head latent attention decode core (DeepSeek-V2/V3, FlashMLA), one new token per
    sequence: W_UK absorbed into the query, so each of the ``num_heads`` heads of a sequence
    scores the shared (r_kv + r_rope)-wide latent cache and sums r_kv-wide values over it —
    2 x keys x heads x (2 r_kv + r_rope) FLOPs; the cache read once, the query and output moved
    once (the same terms as the step model's MLA ``attn.core``). CTAs: one per sequence and
    64 heads (FlashMLA); the cache format picks its kernel's block."""
    b = np.asarray(batch, dtype=float)
    s = np.asarray(context_len, dtype=float)
    h = np.asarray(num_heads, dtype=float)
    ab, kvb = dtype_bytes(dtype), dtype_bytes(kv_dtype)
    width = kv_lora_rank + rope_dim
    flops = 2.0 * b * s * h * (width + kv_lora_rank)
    io = b * s * width * kvb + b * h * (2 * kv_lora_rank + rope_dim) * ab
    effs = efficiency or hw.efficiency
    params = RooflineParams.from_efficiency(effs.for_class("attention_decode_mla"), dtype, kv_dtype)
    calibrated = effs.attention_decode_mla is not None
    m, n = mla_decode_grid(calibrated, b, h, s, params, hw.num_sms)
    from moesim.cost.ops import KERNELS_PER_OP

    # the kernels the step model launches for it (FlashMLA's kernel and split-KV combine)
    launches = KERNELS_PER_OP[("attn.core", "decode", "mla")]
    return _time(
        hw, "attention_decode_mla", dtype, flops, io, m=m, n=n, launches=launches,
        efficiency=efficiency, eager=eager, fmt=kv_dtype,
    )  # fmt: skip


def permute_cost(
    hw, tokens, hidden: int, top_k: int, dtype="bf16", efficiency=None, eager=False
) -> dict:
    """Token permute (gather rows into expert order, k copies per token): reads T x h, writes
    T x k x h — a pure memory operation."""
    t = np.asarray(tokens, dtype=float)
    b = dtype_bytes(dtype)
    io = t * hidden * b * (1.0 + top_k)
    return _time(hw, "memory", dtype, 0.0 * t, io, efficiency=efficiency, eager=eager)
