"""Time of one operator on one GPU: a roofline with calibrated efficiencies.

    t = smoothmax_p(t_compute, t_memory) + launches * t_launch
    t_compute = FLOPs / (peak[dtype] * eta_c * q(m, n)) * (K + K0) / K   (Williams et al.,
    t_memory  = bytes / (bandwidth * eta_m)                    "Roofline", CACM 2009)

Shape terms (fitted per kernel class and format from measured kernel tables): ``q`` is the
useful fraction of the work a tiled kernel issues — output tiles from a small candidate set,
the one issuing least work chosen as a library heuristic would, partial tiles padded and the
last wave idling SMs unless split-K / stream-K fills them (NVIDIA "Matrix Multiplication
Background User's Guide", tile and wave quantisation; Osama et al., PPoPP'23, Stream-K). K0 is
each tile's K-loop prologue and epilogue (pipeline fill, accumulator write-out) in elements of
the reduction dimension: a GEMM with K = K0 runs at half its large-K rate.

``eta_c``, ``eta_m``, ``t_launch``, the tile sizes behind the quantisation ``q`` and the ridge
sharpness ``p`` are the few physical parameters a hardware profile's calibration block holds
(datasheet defaults until ``moesim calibrate`` measures them). smoothmax_p(a, b) = (a^p + b^p)^(1/p)
models the ridge region, where neither unit is saturated and the two overlap imperfectly; it
is >= max(a, b), so together with eta <= 1 and q <= 1 no prediction beats the datasheet floor
max(FLOPs / peak, bytes / bandwidth), which :func:`floor_s` returns.

Everything broadcasts over numpy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

_DECODE_FIELDS = (
    "decode_grouped_max_heads", "decode_grouped_min_blocks_per_sm",
    "decode_ungrouped_min_kv_bytes", "decode_split_kv_tokens", "decode_split_kv_target_waves",
    "decode_ungrouped_wave_overhead_s", "decode_ungrouped_memory_efficiency",
    "decode_ungrouped_kv_reread", "decode_grouped_head_wave_s",
    "decode_ungrouped_launch_overhead_s", "decode_ungrouped_multi_block_s",
)  # fmt: skip


@dataclass(frozen=True)
class RooflineParams:
    """The calibrated parameters of one kernel class, as plain numbers (see hardware.KernelEfficiency)."""

    compute_efficiency: float
    memory_efficiency: float
    launch_overhead_s: float
    tile_m: int = 1
    tile_n: int = 1
    ridge_sharpness: float = 8.0
    host_launch_s: float = 0.0
    k_overhead: float = 0.0
    memory_parallelism_ctas: float = 0.0
    tile_operand_overhead: float = 0.0
    wave_overhead_s: float = 0.0
    gather_efficiency: float = 0.0
    tile_candidates: tuple[tuple[int, int], ...] = ()
    split_k: bool = True
    act_quant_bytes_per_element: float = 0.0
    act_quant_launch_s: float = 0.0
    decode_grouped_max_heads: int = 0
    decode_grouped_min_blocks_per_sm: float = 0.0
    decode_ungrouped_min_kv_bytes: float = 0.0
    decode_split_kv_tokens: int = 0
    decode_split_kv_target_waves: float = 0.0
    decode_ungrouped_wave_overhead_s: float = 0.0
    decode_ungrouped_memory_efficiency: float = 0.0
    decode_ungrouped_kv_reread: float = 1.0
    decode_grouped_head_wave_s: float = 0.0
    decode_ungrouped_launch_overhead_s: float = 0.0
    decode_ungrouped_multi_block_s: float = 0.0
    split_k_min_k: float = 0.0
    split_k_overhead_s: float = 0.0

    @classmethod
    def from_efficiency(cls, eff, dtype: str, fmt: str = "") -> RooflineParams:
        """Parameters of a ``KernelEfficiency`` block for compute dtype ``dtype`` and weight
        format ``fmt`` (the block's ``by_format`` entry when it has one)."""
        block = eff.for_format(dtype, fmt) if hasattr(eff, "for_format") else eff
        return cls(
            compute_efficiency=block.compute_eff(dtype),
            memory_efficiency=block.memory_efficiency,
            launch_overhead_s=block.launch_overhead_s,
            tile_m=block.tile_m,
            tile_n=block.tile_n,
            ridge_sharpness=block.ridge_sharpness,
            host_launch_s=getattr(block, "host_launch_s", 0.0),
            k_overhead=getattr(block, "k_overhead", 0.0),
            memory_parallelism_ctas=getattr(block, "memory_parallelism_ctas", 0.0),
            tile_operand_overhead=getattr(block, "tile_operand_overhead", 0.0),
            wave_overhead_s=getattr(block, "wave_overhead_s", 0.0),
            gather_efficiency=getattr(block, "gather_efficiency", 0.0),
            tile_candidates=tuple(tuple(t) for t in getattr(block, "tile_candidates", ())),
            split_k=getattr(block, "split_k", True),
            act_quant_bytes_per_element=getattr(block, "act_quant_bytes_per_element", 0.0),
            act_quant_launch_s=getattr(block, "act_quant_launch_s", 0.0),
            split_k_min_k=getattr(block, "split_k_min_k", 0.0),
            split_k_overhead_s=getattr(block, "split_k_overhead_s", 0.0),
            **{f: getattr(block, f) for f in _DECODE_FIELDS if hasattr(block, f)},
        )


def smoothmax(a: np.ndarray, b: np.ndarray, p: float) -> np.ndarray:
    """(a^p + b^p)^(1/p), computed stably; equals max(a, b) as p -> inf and is never below it."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    hi = np.maximum(a, b)
    if not np.isfinite(p) or p >= 64:
        return hi
    lo = np.minimum(a, b)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = lo / hi
    ratio = np.nan_to_num(ratio, nan=0.0, posinf=0.0)
    if float(p).is_integer() and 1 <= p <= 16:
        term = _int_power(ratio, int(p))  # repeated squaring: far cheaper than a float power
    else:
        term = ratio**p
    return hi * (1.0 + term) ** (1.0 / p)


def _int_power(x: np.ndarray, n: int) -> np.ndarray:
    result = None
    base = x
    while n:
        if n & 1:
            result = base if result is None else result * base
        n >>= 1
        if n:
            base = base * base
    return result


def quantisation_efficiency(
    m,
    n,
    tile_m: int,
    tile_n: int,
    num_sms: int,
    split_k: bool = True,
    candidates=(),
    operand_overhead: float = 0.0,
    k=None,
    split_k_min_k: float = 0.0,
) -> np.ndarray:
    """Useful fraction of the tensor-core work a tiled GEMM issues.

    Output tiles are tile_m x tile_n; partial tiles pad (tile quantisation) and the last wave
    of tiles leaves SMs idle (wave quantisation) — NVIDIA, "Matrix Multiplication Background
    User's Guide", sections on tile and wave quantisation. Returns 1 where m or n is None or
    the tiles are 1 x 1 (quantisation off). With ``candidates`` the best of those tiles counts
    (a heuristic picks the tile issuing the least work for the shape), each at its own MMA
    rate 1 / (1 + operand_overhead (1/m_t + 1/n_t)) (see KernelEfficiency.tile_operand_overhead).
    With ``split_k_min_k`` > 0 and ``k`` given, a split-K grid cuts K in at most
    k / split_k_min_k slices (:func:`split_k_slices`), so few tiles of a short K leave SMs idle.
    """
    if candidates:
        if m is None or n is None:
            return np.asarray(1.0)
        return np.max(
            [
                quantisation_efficiency(
                    m, n, a, b, num_sms, split_k, k=k, split_k_min_k=split_k_min_k
                )
                / (1.0 + operand_overhead * (1.0 / a + 1.0 / b))
                for a, b in candidates
            ],
            axis=0,
        )
    if m is None or n is None or (tile_m <= 1 and tile_n <= 1):
        return np.asarray(1.0)
    m = np.maximum(np.asarray(m, dtype=float), 1.0)
    n = np.maximum(np.asarray(n, dtype=float), 1.0)
    tiles_m = np.ceil(m / tile_m)
    tiles_n = np.ceil(n / tile_n)
    tiles = tiles_m * tiles_n
    waves = np.ceil(tiles / num_sms)
    useful = m * n
    issued = waves * num_sms * tile_m * tile_n
    # A GEMM with fewer tiles than SMs is not charged for idle SMs: libraries split K across them
    # (split-K / stream-K), so quantisation there is only the tile padding.
    issued_single = tiles * tile_m * tile_n
    if split_k and split_k_min_k > 0 and k is not None:
        # s slices of K per tile: each SM holding one runs 1 / s of a tile's K-loop
        issued_single = num_sms * tile_m * tile_n / split_k_slices(tiles, k, split_k_min_k, num_sms)
    if split_k:
        issued = np.where(tiles < num_sms, issued_single, issued)
    return np.clip(useful / issued, 1e-6, 1.0)


def split_k_slices(tiles, k, split_k_min_k: float, num_sms: int) -> np.ndarray:
    """K slices per output tile of a split-K GEMM with fewer tiles than SMs: enough to fill the
    SMs (num_sms / tiles) but none shorter than ``split_k_min_k`` elements of K, at least 1.

    cuBLAS / CUTLASS split K only while each slice keeps a K-loop long enough to pipeline its
    loads (a continuous stand-in for the library's integer split factor); 1 = no split."""
    tiles = np.maximum(np.asarray(tiles, dtype=float), 1.0)
    kk = np.maximum(np.asarray(k, dtype=float), 1.0)
    return np.clip(np.minimum(kk / split_k_min_k, num_sms / tiles), 1.0, None)


def op_time_s(
    flops,
    hbm_bytes,
    *,
    peak_flops_per_s,
    hbm_bytes_per_s: float,
    params: RooflineParams,
    num_sms: int = 1,
    m=None,
    n=None,
    launches=1,
    eager=False,
    k=None,
    act_quant=False,
    gather_bytes=None,
    mma_rate=None,
) -> np.ndarray:
    """Predicted time of an operator (seconds), broadcast over all array inputs.

    ``eager`` marks calls issued without CUDA graphs and timed back to back: the host then
    enqueues ahead of the device and a call takes max(device time, launches x host launch cost).
    ``k`` is the reduction length each output tile loops over (GEMM K, attention keys) for the
    K0 term; ``act_quant`` marks a measured call that also quantised its m x k input.
    ``mma_rate`` scales the MMA rate of the tile shape the kernel runs (a fused MoE's token
    tile, :func:`moesim.cost.kernel_cost.moe_token_tile`); None = 1.
    """
    flops = np.asarray(flops, dtype=float)
    hbm_bytes = np.asarray(hbm_bytes, dtype=float)
    t_gather = 0.0
    if gather_bytes is not None and params.gather_efficiency > 0:
        # separate permute / combine kernels (see KernelEfficiency.gather_efficiency)
        gather = np.minimum(np.asarray(gather_bytes, dtype=float), hbm_bytes)
        hbm_bytes = hbm_bytes - gather
        t_gather = gather / (hbm_bytes_per_s * min(params.gather_efficiency, 1.0))
    q = quantisation_efficiency(
        m, n, params.tile_m, params.tile_n, num_sms, params.split_k, params.tile_candidates,
        params.tile_operand_overhead, k=k, split_k_min_k=params.split_k_min_k,
    )  # fmt: skip
    eta_c = min(params.compute_efficiency, 1.0)
    eta_m = min(params.memory_efficiency, 1.0)
    t_compute = flops / (np.asarray(peak_flops_per_s, dtype=float) * eta_c * q)
    if mma_rate is not None:
        t_compute = t_compute / np.asarray(mma_rate, dtype=float)
    if k is not None and params.k_overhead > 0:
        kk = np.maximum(np.asarray(k, dtype=float), 1.0)
        t_compute = t_compute * (kk + params.k_overhead) / kk
    t_memory = hbm_bytes / (hbm_bytes_per_s * eta_m)
    waved = np.any(np.asarray(params.wave_overhead_s) > 0)  # an array: per-shape wave costs
    split = params.split_k and params.split_k_min_k > 0 and k is not None
    t_split = 0.0
    if (params.memory_parallelism_ctas > 0 or waved or split) and m is not None:
        tm, tn = (
            min(params.tile_candidates)
            if params.tile_candidates
            else (params.tile_m, params.tile_n)
        )
        ctas = np.ceil(np.maximum(np.asarray(m, dtype=float), 1.0) / tm) * np.ceil(
            np.maximum(np.asarray(n if n is not None else 1.0, dtype=float), 1.0) / tn
        )
        slices = split_k_slices(ctas, k, params.split_k_min_k, num_sms) if split else 1.0
        # Little's law: few output tiles keep few bytes in flight (see KernelEfficiency); each
        # split-K slice is a CTA of its own, with its own loads in flight
        t_memory = t_memory * (1.0 + params.memory_parallelism_ctas / (ctas * slices))
        t_compute = t_compute + params.wave_overhead_s * np.ceil(ctas / num_sms)
        if split:
            # the partial sums of the slices are reduced after the K-loops (a second pass or
            # serialised semaphores); its cost grows from 0 (no split) to split_k_overhead_s
            t_split = params.split_k_overhead_s * (1.0 - 1.0 / slices)
    # A launched kernel costs its launch even when it has no work (an EP rank with no tokens).
    launch = np.asarray(launches, dtype=float) * params.launch_overhead_s
    t = smoothmax(t_compute, t_memory, params.ridge_sharpness) + launch + t_gather + t_split
    if np.any(act_quant) and m is not None and k is not None:
        quant = params.act_quant_launch_s + params.act_quant_bytes_per_element * np.asarray(
            m, dtype=float
        ) * np.asarray(k, dtype=float) / (hbm_bytes_per_s * eta_m)
        t = t + np.where(act_quant, quant, 0.0)
    if params.host_launch_s > 0 and np.any(eager):
        host = np.asarray(launches, dtype=float) * params.host_launch_s
        t = np.where(eager, np.maximum(t, host), t)
    return t


def split_kv_chunks(seqs, ctas_per_seq, keys, params: RooflineParams, num_sms: int) -> np.ndarray:
    """Chunks each sequence's keys are cut into by a split-KV ("multi-block") decode kernel.

    TensorRT-LLM computeMultiBlockCount: keys // split_kv_tokens chunks (at least 1), shrunk by
    the factor the CTAs exceed split_kv_target_waves waves, at most one per SM. 1 when off.
    """
    keys = np.asarray(keys, dtype=float)
    if params.decode_split_kv_tokens <= 0:
        return np.ones_like(keys)
    chunks = np.maximum(np.floor(keys / params.decode_split_kv_tokens), 1.0)
    if params.decode_split_kv_target_waves > 0:
        waves = np.asarray(seqs, dtype=float) * np.asarray(ctas_per_seq, dtype=float) * chunks
        over = waves / num_sms / params.decode_split_kv_target_waves
        chunks = np.where(over > 1.0, np.floor(chunks / np.maximum(over, 1.0)), chunks)
    return np.clip(chunks, 1.0, float(num_sms))


MLA_HEADS_PER_CTA = 64  # FlashMLA / TensorRT-LLM XQA-MLA: one CTA per 64 query heads


def mla_decode_rows(seqs, heads, keys, params: RooflineParams, num_sms: int) -> np.ndarray:
    """The ``m`` of an MLA decode call for :func:`op_time_s` (``n`` = heads, tile 1 x 64):
    sequences x the split-KV chunks each sequence's keys are cut into."""
    seqs = np.asarray(seqs, dtype=float)
    per_seq = np.ceil(np.asarray(heads, dtype=float) / MLA_HEADS_PER_CTA)
    return seqs * split_kv_chunks(seqs, per_seq, keys, params, num_sms)


def mla_decode_grid(calibrated: bool, seqs, heads, keys, params: RooflineParams, num_sms: int):
    """(m, n) of an MLA decode call: the CTA grid when the profile calibrates the class, else
    (None, None), the grid-free pricing of the ``attention_decode`` block it falls back to."""
    if not calibrated or seqs is None or keys is None:
        return None, None
    return mla_decode_rows(seqs, heads, keys, params, num_sms), heads


# TensorRT-LLM masked MHA launch (decoderMaskedMultiheadAttentionLaunch.h, mmha_launch_kernel_ex
# and multi_block_grid_setup): 256 threads per CTA, register-limited to 32 warps per SM.
MMHA_THREADS = 256
MMHA_THREADS_PER_SM = 1024


def mmha_key_tiles(seqs, q_heads, keys, head_dim, num_sms: int) -> np.ndarray:
    """Key tiles ("seq_len_tile") per (sequence, query head) of TensorRT-LLM's masked MHA.

    With batch x heads CTAs the launcher grows the CTA to 256 x min(ceil(4 SMs / CTAs), 4)
    threads (256, 512 or 1024), then cuts each sequence's keys into
    ceil(SMs x CTAs-per-SM / CTAs) tiles, but none shorter than one unrolled K/V loop of
    ceil(threads / threads_per_value) x 8 keys (threads_per_value = padded head_dim x 2 bytes
    / 16). More than one tile is multi-block mode: partial outputs reduced at the end.
    """
    total = np.maximum(np.asarray(seqs, dtype=float) * np.asarray(q_heads, dtype=float), 1.0)
    per_sm = MMHA_THREADS_PER_SM // MMHA_THREADS
    factor = np.minimum(np.ceil(per_sm * num_sms / total), per_sm)
    threads = np.minimum(MMHA_THREADS * factor, MMHA_THREADS_PER_SM)
    threads = np.where(threads < 512, 256.0, np.where(threads < 1024, 512.0, 1024.0))
    d = np.maximum(np.asarray(head_dim, dtype=float), 1.0)
    d_max = 2.0 ** np.ceil(np.log2(d))  # mmha::dh_max: head_dim padded to a power of two
    per_value = np.maximum(d_max * 2.0 / 16.0, 1.0)
    loop = np.ceil(threads / per_value) * 8.0
    balanced = np.ceil(num_sms * (MMHA_THREADS_PER_SM / threads) / total)
    most = np.ceil((np.asarray(keys, dtype=float) + 1.0) / loop)
    return np.clip(np.minimum(balanced, most), 1.0, None)


def decode_uses_grouped(seqs, kv_heads, q_per_kv, keys, kv_bytes_per_element, params, num_sms):
    """Whether the engine runs its grouped decode kernel (else the per-query-head fallback).

    TensorRT-LLM DecoderXQARunner::shouldUse: XQA supports 2 to 32 query heads per KV head
    (jit::supportConfigCommon keeps vanilla MHA, one query head per KV head, on masked MHA;
    supportConfigQGMMA / supportConfigHMMA cap the group at 32) and is chosen when sequences x
    KV heads x max(1, keys // 128) x 4 >= SMs, or when the KV cache is fp8 (masked MHA, the
    fallback, cannot read bf16 queries over an e4m3 cache). All grouped when
    ``decode_grouped_max_heads`` is 0 (FlashInfer / FlashAttention decode).
    """
    g = np.asarray(q_per_kv, dtype=float)
    if params.decode_grouped_max_heads <= 0:
        return np.ones(np.shape(g), bool)
    supported = (g > 1.0) & (g <= params.decode_grouped_max_heads)
    tokens = params.decode_split_kv_tokens or 1
    blocks = (
        np.asarray(seqs, dtype=float)
        * np.asarray(kv_heads, dtype=float)
        * np.maximum(np.floor(np.asarray(keys, dtype=float) / tokens), 1.0)
    )
    fills = blocks >= params.decode_grouped_min_blocks_per_sm * num_sms
    fallback_reads = np.asarray(kv_bytes_per_element, dtype=float) >= (
        params.decode_ungrouped_min_kv_bytes
    )
    return supported & (fills | ~fallback_reads)


def decode_attention_time_s(
    flops,
    hbm_bytes,
    *,
    kv_bytes,
    seqs,
    kv_heads,
    q_per_kv,
    keys,
    kv_bytes_per_element,
    peak_flops_per_s,
    hbm_bytes_per_s: float,
    params: RooflineParams,
    num_sms: int,
    launches=1,
    eager=False,
) -> np.ndarray:
    """Decode attention (one query per sequence and head) on the engine's kernel for the shape.

    Grouped (FlashInfer, FlashAttention decode, TensorRT-LLM XQA): one CTA per (sequence, KV
    head, key chunk) serves every query head of its KV head, so K/V are read once. Ungrouped
    (TensorRT-LLM masked MHA): one CTA per (sequence, query head, key chunk), each streaming its
    KV head again; ``decode_ungrouped_kv_reread`` of those repeats reach HBM (the rest hit L2).
    ``kv_bytes`` is the K/V-cache part of ``hbm_bytes``. Both paths are
    :func:`op_time_s` with m = sequences x chunks and n = heads per sequence (the CTA grid).
    """
    seqs = np.asarray(seqs, dtype=float)
    kv_heads = np.asarray(kv_heads, dtype=float)
    g = np.asarray(q_per_kv, dtype=float)
    grouped = decode_uses_grouped(seqs, kv_heads, g, keys, kv_bytes_per_element, params, num_sms)
    common = dict(
        peak_flops_per_s=peak_flops_per_s, hbm_bytes_per_s=hbm_bytes_per_s, num_sms=num_sms,
        launches=launches, eager=eager,
    )  # fmt: skip
    chunks = split_kv_chunks(seqs, kv_heads, keys, params, num_sms)
    grouped_params = params
    if params.decode_grouped_head_wave_s > 0:  # each CTA's g query heads add to its wave cost
        grouped_params = replace(
            params, wave_overhead_s=params.wave_overhead_s + params.decode_grouped_head_wave_s * g
        )
    t = op_time_s(flops, hbm_bytes, params=grouped_params, m=seqs * chunks, n=kv_heads, **common)
    if np.all(grouped):
        return t
    q_heads = kv_heads * g
    with np.errstate(divide="ignore", invalid="ignore"):
        head_dim = np.asarray(kv_bytes, dtype=float) / (
            2.0 * seqs * np.asarray(keys, dtype=float) * kv_heads * kv_bytes_per_element
        )
    head_dim = np.nan_to_num(head_dim, nan=128.0, posinf=128.0)
    chunks_u = mmha_key_tiles(seqs, q_heads, keys, head_dim, num_sms)
    extra = np.asarray(kv_bytes, dtype=float) * np.maximum(g - 1.0, 0.0)
    ungrouped = replace(
        params,
        wave_overhead_s=params.decode_ungrouped_wave_overhead_s,
        memory_efficiency=params.decode_ungrouped_memory_efficiency or params.memory_efficiency,
        launch_overhead_s=params.decode_ungrouped_launch_overhead_s or params.launch_overhead_s,
    )
    t_u = op_time_s(
        flops, np.asarray(hbm_bytes, dtype=float) + extra * params.decode_ungrouped_kv_reread,
        params=ungrouped, m=seqs * chunks_u, n=q_heads, **common,
    )  # fmt: skip
    # multi-block mode: the CTAs' partial softmax sums and outputs are reduced at the end
    t_u = t_u + np.where(chunks_u > 1.0, params.decode_ungrouped_multi_block_s, 0.0)
    return np.where(grouped, t, t_u)


def floor_s(flops, hbm_bytes, peak_flops_per_s, hbm_bytes_per_s: float) -> np.ndarray:
    """Datasheet roofline floor: no real kernel runs faster than this."""
    return np.maximum(
        np.asarray(flops, dtype=float) / np.asarray(peak_flops_per_s, dtype=float),
        np.asarray(hbm_bytes, dtype=float) / hbm_bytes_per_s,
    )


def bound(flops, hbm_bytes, peak_flops_per_s, hbm_bytes_per_s: float) -> np.ndarray:
    """'compute' or 'memory': which roof is higher for this operator."""
    t_c = np.asarray(flops, dtype=float) / np.asarray(peak_flops_per_s, dtype=float)
    t_m = np.asarray(hbm_bytes, dtype=float) / hbm_bytes_per_s
    return np.where(t_c >= t_m, "compute", "memory")


def ridge_intensity(peak_flops_per_s: float, hbm_bytes_per_s: float) -> float:
    """FLOP per byte at which an operator turns compute-bound."""
    return peak_flops_per_s / hbm_bytes_per_s
