"""The operator inventory of one forward step, per GPU.

For a model, a layout and one micro-batch (``seqs`` sequences per DP group, each adding
``new_tokens`` tokens on top of ``context`` cached ones), :func:`step_ops` lists every operator a
GPU of the busiest pipeline stage runs, with its FLOPs, HBM bytes and communication bytes *per
GPU*, and how many times it runs per step (``count``: layers of that kind on the stage).

Symbols: T = tokens, h = hidden size, H / H_kv = attention / KV heads, d = head dim, I = FFN
width, E = routed experts, k = experts per token, tp / ep / dp / pp as in :mod:`moesim.spec.deployment`.
A GEMM of [M, K] x [K, N] costs 2MNK FLOPs and reads K*N weights + M*K inputs, writes M*N
outputs (Megatron-LM, Narayanan et al. SC'21, section 5.1). Everything broadcasts over arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from moesim.cost.comm import remote_domain_fraction
from moesim.cost.kernel_cost import (
    _moe_block,
    moe_activation_bytes,
    moe_reduction_k,
    moe_token_tile,
    moe_token_tile_candidates,
)
from moesim.spec.deployment import Layout
from moesim.spec.dtypes import (
    WEIGHT_COMPONENTS,
    compute_dtype,
    dtype_bytes,
    weight_bytes_per_param,
    weight_dtype_of,
)

# DeepEP sends fp8 activations with one fp32 scale per 128 channels (DeepSeek-V3 report,
# arXiv:2412.19437 section 3.3: fine-grained 1x128 activation quantisation).
FP8_SCALE_BYTES_PER_CHANNEL = 4.0 / 128


@dataclass
class Op:
    """One operator, per GPU. ``kernel_class`` picks its calibration; comm ops carry comm fields."""

    name: str
    kind: str  # attention | moe | ffn | lm_head | norm | comm | offload
    kernel_class: str  # gemm | grouped_gemm | attention_prefill | attention_decode | memory | allreduce | alltoall | p2p | host
    count: np.ndarray
    flops: np.ndarray = field(default_factory=lambda: np.asarray(0.0))
    hbm_bytes: np.ndarray = field(default_factory=lambda: np.asarray(0.0))
    dtype: str = "bf16"
    m: np.ndarray | None = None
    n: np.ndarray | None = None
    k: np.ndarray | None = None  # reduction length per output tile (GEMM K, attention keys)
    fmt: str = ""  # weight format of a GEMM's weights (picks the format's own kernel block)
    gather_bytes: np.ndarray | None = None  # of hbm_bytes: an MoE's token permute / combine
    mma_rate: np.ndarray | None = None  # MMA rate of a fused MoE's token tile (None = 1)
    # decode attention (roofline.decode_attention_time_s): m = sequences, n = KV heads, k = keys
    # per sequence; the K/V-cache part of hbm_bytes, query heads per KV head, KV element bytes
    kv_bytes: np.ndarray | None = None
    q_per_kv: np.ndarray | None = None
    kv_bytes_per_element: float | np.ndarray = 2.0
    # communication
    message_bytes: np.ndarray = field(default_factory=lambda: np.asarray(0.0))
    group_size: np.ndarray = field(default_factory=lambda: np.asarray(1.0))
    intra_bytes: np.ndarray = field(default_factory=lambda: np.asarray(0.0))
    inter_bytes: np.ndarray = field(default_factory=lambda: np.asarray(0.0))
    crosses_domain: np.ndarray = field(default_factory=lambda: np.asarray(False))
    impl: str = ""  # the kernel a collective runs (EP all-to-all: deepep_ll | deepep_normal)
    per_stage: bool = True  # False: runs once per step (embedding, LM head), not on every stage
    launches: float = (
        1.0  # kernels the operator takes in a serving engine (each pays the launch cost)
    )

    @property
    def is_comm(self) -> bool:
        return self.kernel_class in ("allreduce", "alltoall", "p2p", "host")

    @property
    def comm_bytes(self) -> np.ndarray:
        if self.kernel_class == "alltoall":
            return np.asarray(self.intra_bytes) + np.asarray(self.inter_bytes)
        return np.asarray(self.message_bytes, dtype=float)


def gemm_op(name, kind, m, n, k, weight_bytes, act_bytes, dtype, count) -> Op:
    """A GEMM [m, k] x [k, n]: 2mnk FLOPs; weights k*n, inputs m*k, outputs m*n in HBM."""
    m = np.asarray(m, dtype=float)
    n = np.asarray(n, dtype=float)
    k = np.asarray(k, dtype=float)
    flops = 2.0 * m * n * k
    hbm = k * n * weight_bytes + (m * k + m * n) * act_bytes
    return Op(name, kind, "gemm", np.asarray(count, dtype=float), flops, hbm, dtype, m, n, k)


def memory_op(name, kind, hbm_bytes, count) -> Op:
    return Op(
        name,
        kind,
        "memory",
        np.asarray(count, dtype=float),
        np.asarray(0.0),
        np.asarray(hbm_bytes, dtype=float),
    )


def causal_pairs(new_tokens, context, window=None) -> np.ndarray:
    """Query-key pairs one sequence's attention scores: new token i (1..L) sees context + i keys,
    capped at the sliding window w: sum_i min(P + i, w)."""
    n = np.asarray(new_tokens, dtype=float)
    p = np.asarray(context, dtype=float)
    if window is None:
        return n * p + n * (n + 1.0) / 2.0
    w = float(window)
    n1 = np.clip(w - p, 0.0, n)  # tokens whose whole history fits in the window
    return n1 * p + n1 * (n1 + 1.0) / 2.0 + (n - n1) * w


# Kernels each operator takes in a serving engine; every kernel pays the profile's launch cost
# (with CUDA graphs, the minimum duration of a kernel). Counted from vLLM's model code:
# LlamaDecoderLayer (fused add+RMSNorm x2; qkv GEMM; rotary, reshape_and_cache, flash-attn;
# o_proj), FusedMoE / fused_moe.py (topk_softmax; moe_align_block_size, gate-up GEMM,
# silu_and_mul, down GEMM, moe_sum), DeepseekV2MLAAttention (q_a GEMM fused with kv_a, two
# LoRA RMSNorms; q_b; W_UK / W_UV bmm; rotary, concat_and_cache_mla, FlashMLA metadata, kernel,
# split-KV combine), and the sampler (logits to fp32, softmax, top-k/top-p, sample). Rotary
# and the KV-cache write are their own operators (attn.rope, attn.kv_write).
KERNELS_PER_OP = {
    "norms": 2,
    "attn.q_a_kv_a": 3,
    "attn.kv_a": 2,
    ("attn.core", "prefill"): 1,
    ("attn.core", "decode"): 1,
    ("attn.core", "decode", "mla"): 2,
    ("attn.core_sliding", "prefill"): 1,
    ("attn.core_sliding", "decode"): 1,
    "attn.absorb": 2,
    "moe.router": 2,
    "moe.experts": 5,
    "sampler": 4,
}


def _kernel_count(name: str, phase: str, mla: bool) -> float | None:
    """Kernels of operator ``name`` from KERNELS_PER_OP; None when the table has no entry (the
    operator keeps the count it was built with, 1 unless set)."""
    if mla and (name, phase, "mla") in KERNELS_PER_OP:
        return KERNELS_PER_OP[(name, phase, "mla")]
    return KERNELS_PER_OP.get((name, phase), KERNELS_PER_OP.get(name))


# ---- CUDA graphs and host launch cost
# Engines replay decode steps from CUDA graphs captured up to a batch size and launch every
# kernel from the host beyond it. Defaults: vLLM V1 max_cudagraph_capture_size 512
# (min(2 x max_num_seqs, 512)); SGLang cuda_graph_max_bs 256 (tp < 4) / 512 on H100/H200-class
# GPUs (server_args.py); TensorRT-LLM CudaGraphConfig max_batch_size 128.
CUDA_GRAPH_MAX_BATCH = {"vllm": 512, "sglang": (256, 512), "trtllm": 128}
# Host time per eagerly launched kernel: an eager 24-kernel MoE call (torch grouped_mm path)
# took 303 us at one token on an H200 host (hwprofiles/measurements/h200/moe.csv), 12.6 us
# per launch, the device idle meanwhile.
EAGER_HOST_LAUNCH_S = 12.6e-6


def graph_captured(framework, phase: str, seqs, tokens, tp) -> np.ndarray:
    """Whether an engine replays this step from a CUDA graph (True) or launches it eagerly.

    Decode: up to the engine's capture size (a generic engine: vLLM's). Prefill: vLLM V1
    replays batches of up to its capture size in tokens from piecewise CUDA graphs (the default
    FULL_AND_PIECEWISE cudagraph mode; attention runs between the pieces); TensorRT-LLM's
    PyTorch backend captures generation-only batches (CudaGraphConfig) and SGLang decode only
    (piecewise prefill graphs are opt-in), so their prefill steps are launched from the host and
    a short prompt is host-bound."""
    if phase != "decode":
        if framework in ("trtllm", "sglang"):
            return np.zeros(np.shape(tokens), dtype=bool)
        return np.asarray(tokens, dtype=float) <= CUDA_GRAPH_MAX_BATCH["vllm"]
    limit = CUDA_GRAPH_MAX_BATCH[framework or "vllm"]
    if isinstance(limit, tuple):
        limit = np.where(np.asarray(tp) < 4, limit[0], limit[1])
    return np.asarray(seqs, dtype=float) <= limit


@dataclass(frozen=True)
class StepShape:
    """Per-GPU token counts of one micro-batch, derived once."""

    seqs: np.ndarray  # sequences per DP group
    new_tokens: np.ndarray  # new tokens per sequence
    context: np.ndarray  # cached tokens per sequence before this step
    tokens_dp: np.ndarray  # tokens per DP group (each TP rank of the group sees all of them)
    tokens_stage: np.ndarray  # tokens entering the MoE section of a stage (all DP groups)


def step_shape(layout: Layout, seqs, new_tokens, context, stage_seqs=None) -> StepShape:
    """``seqs`` per DP group (the busiest group when ranks differ); ``stage_seqs``, the
    sequences of all DP groups of the stage together (default ``seqs * dp``)."""
    seqs = np.asarray(seqs, dtype=float)
    new_tokens = np.asarray(new_tokens, dtype=float)
    context = np.asarray(context, dtype=float)
    tokens_dp = seqs * new_tokens
    if stage_seqs is None:
        tokens_stage = tokens_dp * layout.arr("dp")
    else:
        tokens_stage = np.asarray(stage_seqs, dtype=float) * new_tokens
    return StepShape(seqs, new_tokens, context, tokens_dp, tokens_stage)


def _attention_ops(model, hw, layout, s: StepShape, phase: str, wdt: str, cdt: str) -> list[Op]:
    """Projections and attention core of one layer (full and sliding layers counted apart)."""
    tp = layout.arr("tp")
    pp = layout.arr("pp")
    h = model.hidden_size
    H = model.num_attention_heads / tp  # heads per GPU
    wb = weight_bytes_per_param(model, layout, "attention")
    ab = dtype_bytes(layout.act_dtype)
    kvb = dtype_bytes(layout.kv_dtype)
    T = s.tokens_dp
    L = model.num_hidden_layers
    ops: list[Op] = []
    per_layer = 1.0 / pp * L  # all layers; split by window below

    if model.is_mla:
        # DeepSeek-V2/V3 MLA (arXiv:2405.04434 section 2.1). vLLM keeps the down-projections
        # (q_a, kv_a) replicated and splits the up-projections and o_proj over TP.
        d_qk, d_v = model.attn_head_dim, model.v_head_dim_eff
        r_kv, r_rope = model.kv_lora_rank, model.qk_rope_head_dim
        nope = model.qk_nope_head_dim
        if model.q_lora_rank:
            ops.append(
                gemm_op(
                    "attn.q_a_kv_a",
                    "attention",
                    T,
                    model.q_lora_rank + r_kv + r_rope,
                    h,
                    wb,
                    ab,
                    cdt,
                    per_layer,
                )
            )
            ops.append(
                gemm_op(
                    "attn.q_b", "attention", T, H * d_qk, model.q_lora_rank, wb, ab, cdt, per_layer
                )
            )
        else:
            ops.append(
                gemm_op("attn.kv_a", "attention", T, r_kv + r_rope, h, wb, ab, cdt, per_layer)
            )
            ops.append(gemm_op("attn.q", "attention", T, H * d_qk, h, wb, ab, cdt, per_layer))
        if phase == "prefill":
            # Prefill expands the latent into per-head K and V (no absorption): kv_b on all keys.
            keys = s.seqs * (s.new_tokens + s.context)
            ops.append(
                gemm_op(
                    "attn.kv_b", "attention", keys, H * (nope + d_v), r_kv, wb, ab, cdt, per_layer
                )
            )
            pairs = s.seqs * causal_pairs(s.new_tokens, s.context)
            flops = 2.0 * pairs * H * (d_qk + d_v)
            io = (T * H * (d_qk + d_v) + keys * H * (d_qk + d_v)) * ab
            ops.append(
                Op(
                    "attn.core",
                    "attention",
                    "attention_prefill",
                    np.asarray(per_layer),
                    flops,
                    io,
                    "bf16",
                )
            )
        else:
            # Decode absorbs W_UK into the query and W_UV into the output (FlashMLA): attention is
            # multi-query over the (r_kv + r_rope)-wide latent cache, which every TP rank holds whole.
            absorb_flops = 2.0 * T * H * (nope * r_kv + r_kv * d_v)
            absorb_bytes = r_kv * H * (nope + d_v) * wb + T * H * (nope + r_kv + d_v) * ab
            ops.append(
                Op(
                    "attn.absorb",
                    "attention",
                    "gemm",
                    np.asarray(per_layer),
                    absorb_flops,
                    absorb_bytes,
                    cdt,
                    T,
                    H * r_kv,
                )
            )
            # Each of a sequence's new tokens (one, or 1 + N when verifying N draft tokens)
            # sees the cache and the new tokens before it; the cache is read once per sequence.
            pairs = s.seqs * causal_pairs(s.new_tokens, s.context)
            keys = s.seqs * (s.context + s.new_tokens)
            flops = 2.0 * pairs * H * ((r_kv + r_rope) + r_kv)
            io = keys * (r_kv + r_rope) * kvb + T * H * (2 * r_kv + r_rope) * ab
            # MLA's own decode kernel (FlashMLA: one CTA per sequence and 64 query heads),
            # one block per cache format (kernel_cost.mla_decode_cost)
            ops.append(
                Op("attn.core", "attention", "attention_decode_mla", np.asarray(per_layer), flops,
                   io, "bf16", s.seqs, np.asarray(H, dtype=float),
                   keys / np.maximum(s.seqs, 1e-30), fmt=str(layout.kv_dtype))
            )  # fmt: skip
        ops.append(gemm_op("attn.o", "attention", T, h, H * d_v, wb, ab, cdt, per_layer))
        # Rotary on the decoupled rope parts of q (H heads) and k (one shared head), in place;
        # concat_and_cache_mla writes the latent and k_pe of the new tokens to the cache.
        ops.append(
            memory_op("attn.rope", "attention", 2.0 * T * (H + 1.0) * r_rope * ab, per_layer)
        )
        ops.append(
            memory_op("attn.kv_write", "attention", T * (r_kv + r_rope) * (ab + kvb), per_layer)
        )
        quant_width = h + (model.q_lora_rank or 0) + H * d_v
        if phase == "prefill":
            quant_width = quant_width + (keys / np.maximum(T, 1e-30)) * r_kv
        ops += _act_quant_ops("attn.quant", "attention", model, layout, cdt, T, quant_width, 3,
                              per_layer)  # fmt: skip
        return ops

    d = model.attn_head_dim
    Hkv = np.maximum(model.num_key_value_heads / tp, 1.0)  # KV heads replicate when tp > H_kv
    ops.append(gemm_op("attn.qkv", "attention", T, (H + 2 * Hkv) * d, h, wb, ab, cdt, per_layer))
    ops.append(gemm_op("attn.o", "attention", T, h, H * d, wb, ab, cdt, per_layer))
    n_sliding = model.num_sliding_layers
    kinds = [("full", None, L - n_sliding)]
    if n_sliding:
        kinds.append(("sliding", model.sliding_window, n_sliding))
    for label, window, n_layers in kinds:
        if n_layers == 0:
            continue
        count = np.asarray(n_layers / pp)
        name = "attn.core" if label == "full" else "attn.core_sliding"
        if phase == "prefill":
            # FlashAttention: 4 * pairs * d FLOPs per head (QK^T and PV; Dao et al. 2022), reads
            # Q, K, V once and writes O (IO-aware), and appends the new K, V to the cache.
            pairs = s.seqs * causal_pairs(s.new_tokens, s.context, window)
            flops = 4.0 * pairs * H * d
            keys = s.seqs * (s.new_tokens + np.minimum(s.context, window or np.inf))
            io = 2.0 * T * H * d * ab + 2.0 * keys * Hkv * d * ab
            # CTAs per (sequence, head, query tile), each over its keys (kernel_cost.attention_cost)
            ops.append(
                Op(name, "attention", "attention_prefill", count, flops, io, "bf16",
                   s.new_tokens, s.seqs * H, s.new_tokens + np.minimum(s.context, window or np.inf))
            )  # fmt: skip
        else:
            # Decode reads the whole (windowed) K and V cache of every sequence once; each new
            # token (1, or 1 + N when verifying drafts) attends to the cache and those before it.
            keys = s.seqs * np.minimum(s.context + s.new_tokens, window or np.inf)
            pairs = s.seqs * causal_pairs(s.new_tokens, s.context, window)
            flops = 4.0 * pairs * H * d
            io = 2.0 * keys * Hkv * d * kvb + 2.0 * T * H * d * ab
            # The engine's decode kernel: CTAs per (sequence, KV head) or per query head, one
            # block per cache format (kernel_cost.attention_cost, roofline.decode_attention_time_s)
            ops.append(
                Op(name, "attention", "attention_decode", count, flops, io, "bf16", s.seqs, Hkv,
                   k=keys / np.maximum(s.seqs, 1e-30), kv_bytes=2.0 * keys * Hkv * d * kvb,
                   q_per_kv=H / Hkv, kv_bytes_per_element=kvb, fmt=str(layout.kv_dtype))
            )  # fmt: skip
    # Rotary embedding reads and writes q and k in place (vLLM rotary_embedding kernel);
    # reshape_and_cache reads the new K and V and writes them into the paged cache.
    ops.append(memory_op("attn.rope", "attention", 2.0 * T * (H + Hkv) * d * ab, per_layer))
    ops.append(memory_op("attn.kv_write", "attention", 2.0 * T * Hkv * d * (ab + kvb), per_layer))
    ops += _act_quant_ops("attn.quant", "attention", model, layout, cdt, T, h + H * d, 2,
                          per_layer)  # fmt: skip
    return ops


# Activation quantisation in front of fp8 GEMMs. Per-tensor (static scale, as fp8 checkpoints
# for vLLM / TensorRT-LLM ship it): one kernel reads bf16 and writes fp8. 1x128 block scales
# (DeepSeek-V3 report arXiv:2412.19437 section 3.3; DeepGEMM's input format; vLLM
# per_token_group_quant_fp8, SGLang sglang_per_token_group_quant_fp8): one kernel that also
# writes an fp32 scale per 128 channels. For per-tensor scales TensorRT-LLM fuses the
# quantisation into the RMSNorm and gated-activation kernels that produce the GEMM input
# (RmsnormQuantizationPlugin), so it launches nothing of its own there; its 1x128 block path
# (DeepSeek on Hopper) runs fp8_quantize_1x128 before each GEMM like the other engines.
def act_quant_mode(model) -> str:
    """'block' for checkpoints quantised with 1x128 activation blocks (DeepSeek-V3/R1), else
    'tensor'."""
    return "block" if str(getattr(model, "model_type", "")).startswith("deepseek_v3") else "tensor"


def _act_quant_ops(name, kind, model, layout, cdt, rows, width, launches, count) -> list[Op]:
    """``launches`` quantisation kernels over ``rows`` x ``width`` activations in total."""
    mode = act_quant_mode(model)
    if cdt != "fp8" or (layout.framework == "trtllm" and mode == "tensor"):
        return []
    ab = dtype_bytes(layout.act_dtype)
    elems = np.asarray(rows, dtype=float) * np.asarray(width, dtype=float)
    per_elem = ab + 1.0  # read bf16, write fp8
    if mode == "block":
        per_elem = per_elem + FP8_SCALE_BYTES_PER_CHANNEL
    op = memory_op(name, kind, elems * per_elem, count)
    op.launches = float(launches)
    return [op]


def _ffn_gemms(
    prefix, kind, T, width_per_gpu, model, layout, cdt, count, part="dense_ffn"
) -> list[Op]:
    """Dense (or shared-expert) FFN: up (and gate) GEMM, activation, down GEMM."""
    h = model.hidden_size
    wb = weight_bytes_per_param(model, layout, part)
    ab = dtype_bytes(layout.act_dtype)
    up_width = width_per_gpu * (model.ffn_matrices - 1)
    return [
        gemm_op(f"{prefix}.up", kind, T, up_width, h, wb, ab, cdt, count),
        # SiLU(gate) * up reads both halves and writes one (SwiGLU, Shazeer 2020).
        memory_op(f"{prefix}.act", kind, T * (up_width + width_per_gpu) * ab, count),
        gemm_op(f"{prefix}.down", kind, T, h, width_per_gpu, wb, ab, cdt, count),
    ] + _act_quant_ops(f"{prefix}.quant", kind, model, layout, cdt, T, h + width_per_gpu, 2, count)


def _moe_ops(
    model, hw, layout, s: StepShape, cdt, routing, count, phase="decode"
) -> tuple[list[Op], object]:
    """Router, routed experts (grouped GEMM on the busiest EP rank) and their dispatch/combine."""
    from moesim.cost.routing import UNIFORM, routing_stats

    h = model.hidden_size
    E, k, inter = model.num_experts, model.top_k, model.expert_intermediate_size
    ep = layout.arr("ep")
    moe_tp = layout.moe_tp
    wb = weight_bytes_per_param(model, layout, "experts")
    ab = dtype_bytes(layout.act_dtype)
    redundant = _scalar_int(layout.redundant_experts, "redundant_experts")
    # Points whose EP size cannot hold the experts are infeasible (check_layout says why); they
    # are evaluated at ep=1 so that one bad point does not stop a vectorised sweep.
    ep_ok = ((E + redundant) % ep == 0) & (ep <= E + redundant)
    fmt = weight_dtype_of(model, layout, "experts")
    block = _moe_block(hw, None, cdt, fmt)
    stats = routing_stats(
        s.tokens_stage,
        k,
        E,
        ep=np.where(ep_ok, ep, 1.0),
        dist=routing.dist or UNIFORM,
        block_m=routing.block_m,
        capacity_factor=routing.capacity_factor,
        redundant_experts=redundant,
        tiles=tuple(block.token_tiles),
    )
    load = stats.max_gpu_load
    keep = 1.0
    if routing.capacity_factor is not None and routing.drop_tokens:
        # Dropped tokens skip the experts (Switch Transformer, arXiv:2101.03961 section 2.2).
        keep = 1.0 - stats.drop_rate
        load = load * keep
    I_gpu = inter / moe_tp
    n_mat = model.ffn_matrices
    expert_bytes = n_mat * h * I_gpu * wb  # one expert's slice on this GPU
    active = stats.active_experts_max_gpu
    offload = np.asarray(layout.offload_fraction, dtype=float)
    # Fused MoE token rows (kernel_cost.moe_activation_bytes): those the GEMMs stream, and the
    # expand / activation passes and output rows run as kernels of their own. The output has
    # one row per token the rank holds: the tokens it received with DP attention and an
    # all-to-all (at most one per assignment), else every token of the stage (TP attention:
    # each GPU holds them all).
    received = (ep > 1) & (layout.arr("dp") > 1)
    held = np.where(received, np.minimum(load, s.tokens_stage), s.tokens_stage)
    streamed, serial = moe_activation_bytes(load, held, h, I_gpu, n_mat, ab)
    # The token tile the engine's autotuner picks (kernel_cost.moe_token_tile): rows padded
    # per expert to it, weights streamed once per tile, its MMA rate.
    candidates = moe_token_tile_candidates(block, routing.block_m, stats, keep)
    tile = moe_token_tile(
        hw, cdt, fmt, None, candidates, active=active, weight_bytes=active * expert_bytes,
        streamed=streamed, serial=serial, hidden=h, intermediate=I_gpu, n_mat=n_mat,
    )  # fmt: skip
    padded = tile["padded"]
    ops = [
        gemm_op("moe.router", "moe", s.tokens_dp, E, h, ab, ab, "bf16", count),
        Op(
            "moe.experts",
            "moe",
            "grouped_gemm",
            np.asarray(count, dtype=float),
            tile["flops"],
            tile["weight_bytes"] + streamed + serial,
            cdt,
            padded,
            (n_mat - 1) * I_gpu,
            moe_reduction_k(h, I_gpu, n_mat),
            gather_bytes=serial,
            mma_rate=tile["mma_rate"],
        ),
    ]
    if np.any(offload > 0):
        # Experts kept in host memory cross the host link when a step activates them. With a
        # static cache of the hottest experts, misses are the active experts outside it.
        misses = (
            stats.active_experts_max_gpu * offload
            if routing.offload_misses is None
            else routing.offload_misses(stats, offload)
        )
        ops.append(
            Op(
                "moe.offload_fetch",
                "offload",
                "host",
                np.asarray(count, dtype=float),
                message_bytes=misses * expert_bytes,
            )
        )
    # fp8 experts: the down-projection input is quantised (fused with SiLU in SGLang's DeepGEMM
    # path, a separate kernel in vLLM's fused_moe), the input too unless the dispatch already
    # carries fp8 (DeepEP casts while sending).
    tp, dp = layout.arr("tp"), layout.arr("dp")
    # Tokens cross the EP group by all-to-all only with DP attention: under plain TP attention
    # every GPU already holds all tokens, computes its experts' share and the MoE all-reduce
    # sums it (vLLM uses all2all kernels only with DP + EP; TensorRT-LLM TP8 EP4).
    a2a = (ep > 1) & (dp > 1)
    quant_in = 0.0 if (layout.dispatch_dtype == "fp8" and np.all(a2a)) else 1.0
    ops += _act_quant_ops("moe.quant", "moe", model, layout, cdt, 1.0,
                          quant_in * load / k * h + load * I_gpu, 1.0 + quant_in, count)  # fmt: skip
    if np.any(a2a):
        # Every dispatch/combine is a barrier: it ends when the busiest GPU has sent its tokens
        # (the busiest DP rank's) and received its share (the most loaded EP rank's, E[max]
        # assignments over the group from the routing statistics).
        src_mean = s.tokens_stage / (tp * dp)
        src_tokens = np.maximum(s.tokens_dp / tp, src_mean * np.maximum(stats.max_load_ratio, 1.0))
        per_token_dispatch = h * dtype_bytes(layout.dispatch_dtype)
        if layout.dispatch_dtype == "fp8":
            per_token_dispatch = per_token_dispatch + h * FP8_SCALE_BYTES_PER_CHANNEL
        dom = layout.gpus_per_node or hw.scaleup_domain_size
        remote = np.where(ep_ok & a2a, stats.remote_gpus_per_token, 0.0)
        intra_per_token, inter_per_token = _dispatch_destinations(
            s.tokens_stage, k, E, np.where(ep_ok, ep, 1.0), remote, dom, routing, redundant, phase
        )
        # decode runs DeepEP's low-latency kernels, prefill the normal ones (as counted above)
        impl = "deepep_normal" if phase == "prefill" else "deepep_ll"
        for name, per_token, wire in (
            ("moe.dispatch", per_token_dispatch, layout.dispatch_dtype),
            ("moe.combine", h * ab, layout.act_dtype),
        ):
            ops.append(
                Op(
                    name,
                    "comm",
                    "alltoall",
                    np.asarray(count, dtype=float),
                    dtype=wire,
                    intra_bytes=src_tokens * intra_per_token * per_token,
                    inter_bytes=src_tokens * inter_per_token * per_token,
                    group_size=ep,
                    impl=impl,
                )
            )
    return ops, stats


def _scalar_int(value, name: str) -> int:
    arr = np.asarray(value)
    # a comparison with the first element, not np.unique: that pulls numpy.ma into every predict
    if arr.size == 0 or np.any(arr != arr.flat[0]):
        raise ValueError(f"{name} must be one value per evaluation (group sweeps by it)")
    return int(arr.flat[0])


def _dispatch_destinations(tokens, k, E, ep, remote_gpus, domain: int, routing, redundant, phase):
    """Copies of a token one GPU sends over the scale-up and the scale-out network per step.

    Decode runs DeepEP's low-latency kernels, which write one copy per (token, expert) pair into
    the expert's receive slot (DeepEP ``internode_ll.cu``; its README benchmark moves 128 tokens
    x top-8 x 7168 fp8 channels per call): k·(ep-1)/ep copies leave the GPU, however many
    distinct GPUs they land on, RDMA for GPUs in other domains. Prefill runs the normal kernels,
    which cross the network once per distinct remote *node* and forward over NVLink inside it
    (DeepEP README; DeepSeek-V3 report arXiv:2412.19437 section 3.4: node-limited routing and
    NVLink forwarding), and send once per distinct remote GPU within a node.
    """
    from moesim.cost.routing import UNIFORM, routing_stats

    ep = np.asarray(ep, dtype=float)
    nodes = np.ceil(ep / domain)
    frac_out = remote_domain_fraction(ep, domain)
    if phase != "prefill":
        pairs = np.where(remote_gpus > 0, k * (ep - 1.0) / np.maximum(ep, 1.0), 0.0)
        return pairs * (1.0 - frac_out), pairs * frac_out
    direct_intra, direct_inter = remote_gpus * (1.0 - frac_out), remote_gpus * frac_out
    if not np.any(nodes > 1):
        return direct_intra, direct_inter
    ok = (E + redundant) % nodes == 0
    remote_nodes = routing_stats(
        tokens, k, E, ep=np.where(ok, nodes, 1.0), dist=routing.dist or UNIFORM,
        redundant_experts=redundant,
    ).remote_gpus_per_token  # distinct other nodes a token's experts live on  # fmt: skip
    hier_inter = remote_nodes
    hier_intra = np.maximum(remote_gpus - remote_nodes, 0.0)
    multi = (nodes > 1) & ok & (remote_gpus > 0)
    return np.where(multi, hier_intra, direct_intra), np.where(multi, hier_inter, direct_inter)


@dataclass(frozen=True)
class RoutingOptions:
    """How tokens pick experts, and what the expert kernel pads to."""

    dist: object = None  # a moesim.cost.routing distribution; None = uniform
    block_m: int | None = (
        64  # grouped-GEMM block M (vLLM fused_moe default for decode-size batches)
    )
    capacity_factor: float | None = None
    drop_tokens: bool = True
    offload_misses: object = None  # optional callable(stats, offload_fraction) -> expected misses


def routing_options(routing="uniform", capacity_factor=None, block_m=64, drop_tokens=True):
    """RoutingOptions from a routing spec (``uniform | zipf:S | dirichlet:A | hist:PATH``) or a distribution."""
    from moesim.cost.routing import parse_routing

    dist = parse_routing(routing) if isinstance(routing, str) else routing
    return RoutingOptions(
        dist=dist, block_m=block_m, capacity_factor=capacity_factor, drop_tokens=drop_tokens
    )


def routing_or_default(routing):
    """RoutingOptions with a distribution set (uniform when none was given)."""
    from dataclasses import replace

    from moesim.cost.routing import UNIFORM

    routing = routing or RoutingOptions()
    return routing if routing.dist is not None else replace(routing, dist=UNIFORM)


def step_ops(
    model,
    hw,
    layout: Layout,
    phase: str,
    seqs,
    new_tokens,
    context,
    routing: RoutingOptions | None = None,
    stage_seqs=None,
):
    """All operators one GPU of the busiest stage runs in one step. Returns (ops, routing stats).

    ``seqs`` are the sequences of the busiest DP group; ``stage_seqs`` those of all DP groups of
    the stage together (default ``seqs * dp``), which the MoE layers see."""
    if phase not in ("prefill", "decode"):
        raise ValueError(f"phase must be 'prefill' or 'decode', not {phase!r}")
    routing = routing or RoutingOptions()
    s = step_shape(layout, seqs, new_tokens, context, stage_seqs)
    tp, pp = layout.arr("tp"), layout.arr("pp")
    # Each part's GEMMs run at its own stored format (parts a checkpoint keeps unquantised run
    # in the activation dtype); moesim.spec.dtypes.compute_choice says where each format runs.
    cdt_of = {
        part: compute_dtype(weight_dtype_of(model, layout, part), hw.peak_flops_per_s)
        for part in WEIGHT_COMPONENTS
    }
    ab = dtype_bytes(layout.act_dtype)
    wb = weight_bytes_per_param(model, layout, "lm_head")
    h = model.hidden_size
    T = s.tokens_dp
    L = model.num_hidden_layers
    ops = _attention_ops(model, hw, layout, s, phase, layout.weight_dtype, cdt_of["attention"])
    # Two fused add + RMSNorms per layer (vLLM fused_add_rms_norm): each reads the input and the
    # residual and writes the new residual and the normed output, 4·T·h elements (8·T·h bytes
    # in bf16).
    ops.append(memory_op("norms", "norm", 2.0 * 4.0 * T * h * ab, L / pp))
    # TP all-reduce after attention (Megatron: one per attention block).
    ops.append(
        Op(
            "attn.allreduce",
            "comm",
            "allreduce",
            np.asarray(L / pp),
            message_bytes=T * h * ab * (tp > 1),
            group_size=tp,
        )
    )

    n_moe = model.num_moe_layers if model.is_moe else 0
    n_dense = L - n_moe
    stats = None
    if n_dense:
        # MoE models' dense layers (DeepSeek first_k_dense_replace) use intermediate_size; a dense
        # model's FFN width is expert_intermediate_size (= intermediate_size, or the single expert's).
        width = model.intermediate_size if model.is_moe else model.expert_intermediate_size
        ops += _ffn_gemms(
            "ffn", "ffn", T, width / tp, model, layout, cdt_of["dense_ffn"], n_dense / pp
        )
        ops.append(
            Op(
                "ffn.allreduce",
                "comm",
                "allreduce",
                np.asarray(n_dense / pp),
                message_bytes=T * h * ab * (tp > 1),
                group_size=tp,
            )
        )
    if n_moe:
        count = n_moe / pp
        moe, stats = _moe_ops(model, hw, layout, s, cdt_of["experts"], routing, count, phase)
        ops += moe
        if model.shared_intermediate_size:
            ops += _ffn_gemms(
                "moe.shared",
                "moe",
                T,
                model.shared_intermediate_size / tp,
                model,
                layout,
                cdt_of["shared_experts"],
                count,
                part="shared_experts",
            )
        ep = layout.arr("ep")
        # Expert outputs are reduced over the GPUs that split each expert: the whole stage's tokens
        # over moe_tp when experts are only tensor-parallel (all-gather + reduce-scatter with DP
        # attention, an all-reduce without), else the post-FFN TP all-reduce of each DP group.
        msg = np.where(ep > 1, T * h * ab * (tp > 1), s.tokens_stage * h * ab * (layout.moe_tp > 1))
        group = np.where(ep > 1, tp, layout.moe_tp)
        ops.append(
            Op(
                "moe.allreduce",
                "comm",
                "allreduce",
                np.asarray(count),
                message_bytes=msg,
                group_size=group,
            )
        )
    if model.dense_residual_intermediate_size:
        # Arctic: a dense MLP beside the MoE on every layer (Snowflake Arctic, HF ArcticMLP residual).
        ops += _ffn_gemms(
            "residual_ffn",
            "ffn",
            T,
            model.dense_residual_intermediate_size / tp,
            model,
            layout,
            cdt_of["dense_ffn"],
            L / pp,
        )

    # Embedding lookup on the first stage, LM head on the last; vocabulary split over TP. Logits
    # are computed for the last position of each sequence only (vLLM / SGLang prefill).
    # These run once per step, not once per stage (per_stage=False).
    once = [
        memory_op("embedding", "lm_head", 2.0 * T * h * ab, 1.0),
        # Sampling on the logits of each sequence (vLLM Sampler with FlashInfer top-k/top-p):
        # logits to fp32 (read bf16, write fp32), softmax (read, write fp32), top-k/top-p
        # sampling from the probabilities (one read; rejection rounds stay in L2), the sample.
        memory_op("sampler", "lm_head", s.seqs * model.vocab_size * (ab + 4.0 + 8.0 + 4.0), 1.0),
        gemm_op(
            "lm_head", "lm_head", s.seqs, model.vocab_size / tp, h, wb, ab, cdt_of["lm_head"], 1.0
        ),
        # Logit shards are gathered to one rank (an all-gather: half an all-reduce's traffic).
        Op(
            "lm_head.gather",
            "comm",
            "allreduce",
            np.asarray(1.0),
            message_bytes=s.seqs * model.vocab_size * ab / 2.0 * (tp > 1),
            group_size=tp,
        ),
    ]
    for op in once:
        op.per_stage = False
    ops += once
    if np.any(pp > 1):
        # Activations cross each stage boundary once per micro-batch (GPipe / Megatron PP).
        dom = layout.gpus_per_node or hw.scaleup_domain_size
        crosses = layout.gpus_per_stage >= dom
        send = Op(
            "pp.send",
            "comm",
            "p2p",
            np.asarray(1.0),
            message_bytes=T * h * ab * (pp > 1),
            crosses_domain=crosses,
        )
        send.per_stage = False  # (pp - 1) sends per micro-batch: counted by the pipeline
        ops.append(send)
    for op in ops:
        launches = _kernel_count(op.name, phase, model.is_mla)
        if launches is not None:
            op.launches = launches
        if op.kernel_class in ("gemm", "grouped_gemm"):
            op.fmt = weight_dtype_of(model, layout, _weight_part(op))
    _fuse_allreduce_norms(ops, layout, T, h, ab)
    return ops, stats


def _weight_part(op: Op) -> str:
    """The checkpoint part (WEIGHT_COMPONENTS) whose weights a GEMM operator multiplies."""
    if op.name.startswith("moe.shared"):
        return "shared_experts"
    return {"attention": "attention", "moe": "experts", "lm_head": "lm_head"}.get(
        op.kind, "dense_ffn"
    )


def _fused_norms(layout) -> bool:
    from moesim.cost.collectives_ext import fuses_allreduce_norm

    return fuses_allreduce_norm(layout.framework)


def _fuse_allreduce_norms(ops: list[Op], layout, T, h, ab) -> None:
    """TensorRT-LLM and SGLang run the residual add + RMSNorm after each TP all-reduce inside
    the all-reduce kernel (collectives_ext.fuses_allreduce_norm): with tp > 1 both norms of a
    layer follow an all-reduce, so the norm kernels vanish and their traffic shrinks to the
    residual read and the residual and normed writes (the reduced sum stays on chip)."""
    if not _fused_norms(layout):
        return
    tp = layout.arr("tp")
    for op in ops:
        if op.name == "norms":
            fused = tp > 1
            op.hbm_bytes = np.where(fused, 2.0 * 3.0 * T * h * ab, op.hbm_bytes)
            op.launches = np.where(fused, 0.0, op.launches)
