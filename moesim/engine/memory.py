"""Memory as a serving engine accounts it, on one GPU of the fullest pipeline stage.

Capacity is what the CUDA runtime reports (``cudaMemGetInfo`` total, in the profiles as GiB),
not the datasheet's decimal GB. From it the engine takes weights, the activations of its largest
step, a runtime reserve (CUDA context, CUDA-graph pool, NCCL / NVLS buffers, DeepEP buffers,
GEMM workspace) and gives the rest, in the share its memory option says, to a paged KV cache.
A request is admitted only when its KV cache at full length (prompt + output) fits, in whole
blocks (TensorRT-LLM's ``GUARANTEED_NO_EVICT``; vLLM reserves blocks as a sequence grows, so this
is the occupancy it reaches at the end of every request).

Functions are vectorised over layout arrays; a request-level simulator can call
:func:`kv_capacity` for blocks and tokens per instance and :func:`runtime_reserve` for the rest.
"""

from __future__ import annotations

import numpy as np

from moesim.spec.deployment import Layout
from moesim.spec.dtypes import dtype_bytes

MiB, GiB = 2**20, 2**30

# --- runtime reserve, per GPU, with sources --------------------------------------------------
# CUDA context with lazy module loading (CUDA >= 11.7 default): about half a GiB on Hopper;
# vLLM's profiler logs 'non_torch_memory takes 0.11 GiB' (TP2) to '1.39 GiB' (one GPU), which also
# holds NCCL and workspaces. Order of magnitude from those logs, not a measurement of ours.
CUDA_CONTEXT_BYTES = 0.5 * GiB
# CUDA-graph pool of the decode graphs: vLLM >= 0.21 logs 'Estimated CUDA graph memory: 0.36 GiB'
# and '0.58 GiB total' for its default capture sizes (vllm-project/vllm issues, 2026 logs).
CUDA_GRAPH_POOL_BYTES = 0.5 * GiB
# NCCL: NCCL_BUFFSIZE 4 MiB per peer connection per channel (NCCL environment docs); a ring over
# NVLink opens a send and a receive connection on up to 32 channels: 2 x 32 x 4 MiB per communicator.
NCCL_BUFFSIZE_BYTES = 4 * MiB
NCCL_CHANNELS = 32
# NVLS (NVLink SHARP) buffers, allocated for communicators of more than 2 GPUs on NVSwitch:
# 'NCCL INFO NVLS ... nvlsPerRankSize 301989888' on 8x H200 (vllm-project/vllm#9699).
NVLS_PER_RANK_BYTES = 301_989_888
# cuBLAS workspace: 32 MiB recommended on Hopper (cuBLAS docs, cublasSetWorkspace), one for
# cuBLAS and one for cuBLASLt.
GEMM_WORKSPACE_BYTES = 2 * 32 * MiB
# DeepEP low-latency buffer, sized for this many dispatched tokens per rank (SGLang's default
# SGLANG_DEEPEP_NUM_MAX_DISPATCH_TOKENS_PER_RANK = 128).
DEEPEP_MAX_DISPATCH_TOKENS_PER_RANK = 128


def _tables_bytes(model, layout: Layout) -> np.ndarray:
    """Embedding and LM head on the stage that holds them, split over TP. Quantised checkpoints
    keep both in bf16 (vLLM/TRT-LLM fp8 and NVFP4 checkpoints leave embed_tokens and lm_head
    unquantised; DeepSeek-V3's fp8 release lists them bf16), so they never take < 2 bytes."""
    tp, pp = layout.arr("tp"), layout.arr("pp")
    vocab = model.vocab_size * model.hidden_size / tp
    tables = np.where(pp > 1, 1.0, 1.0 if model.tie_word_embeddings else 2.0)
    return tables * vocab * max(dtype_bytes(layout.weight_dtype), dtype_bytes("bf16"))


def weights_bytes_per_gpu(model, layout: Layout) -> np.ndarray:
    """Weight bytes on one GPU of the fullest stage, each part in the format the checkpoint
    stores it (:func:`moesim.spec.dtypes.weight_bytes_per_param`: e.g. gpt-oss keeps attention
    in bf16 beside MXFP4 experts)."""
    from moesim.spec.dtypes import weight_bytes_per_param

    def wb(part: str) -> float:
        return weight_bytes_per_param(model, layout, part)

    tp, ep, pp = layout.arr("tp"), layout.arr("ep"), layout.arr("pp")
    h, L = model.hidden_size, model.num_hidden_layers
    frac = np.ceil(L / pp) / L
    if model.is_mla:
        down = h * ((model.q_lora_rank or 0) + model.kv_lora_rank + model.qk_rope_head_dim)
        attn = down + (model.attention_params_per_layer - down) / tp  # vLLM replicates q_a / kv_a
    else:
        d, Hkv = model.attn_head_dim, model.num_key_value_heads
        kv = 2 * h * Hkv * d
        attn = (model.attention_params_per_layer - kv) / tp + kv * np.maximum(1.0 / tp, 1.0 / Hkv)
    n_moe = model.num_moe_layers if model.is_moe else 0
    # Norm weights stay in the activation dtype in every checkpoint format.
    norm_bytes = dtype_bytes(layout.act_dtype)
    per_gpu = attn * L * wb("attention") + model.norm_params_per_layer * L * norm_bytes
    if model.is_moe:
        slots = model.num_experts + np.asarray(layout.redundant_experts, dtype=float)
        resident = 1.0 - np.asarray(layout.offload_fraction, dtype=float)
        experts = slots / ep * model.expert_params / layout.moe_tp * resident
        per_gpu = per_gpu + n_moe * (
            experts * wb("experts")
            + model.router_params_per_layer * wb("router")
            + model.shared_expert_params_per_layer / tp * wb("shared_experts")
        )
        per_gpu = per_gpu + (L - n_moe) * model.dense_ffn_params_per_layer / tp * wb("dense_ffn")
    else:
        per_gpu = per_gpu + L * model.dense_ffn_params_per_layer / tp * wb("dense_ffn")
    per_gpu = per_gpu + L * model.dense_residual_params_per_layer / tp * wb("dense_ffn")
    return per_gpu * frac + _tables_bytes(model, layout)


def kv_bytes_per_seq(model, layout: Layout, context_len) -> np.ndarray:
    """KV-cache bytes one sequence of ``context_len`` tokens holds on one GPU of the fullest stage:
    every layer of the stage; sliding-window layers keep at most ``window`` tokens; GQA heads split
    over TP (replicated when tp > H_kv); MLA's latent cache is whole on every TP rank."""
    tp, pp = layout.arr("tp"), layout.arr("pp")
    L = model.num_hidden_layers
    frac = np.ceil(L / pp) / L
    if model.is_mla:
        per_tok_layer = model.kv_cache_elements_per_token_per_layer
    else:
        per_tok_layer = 2.0 * np.maximum(model.num_key_value_heads / tp, 1.0) * model.attn_head_dim
    ctx = np.asarray(context_len, dtype=float)
    n_sliding = model.num_sliding_layers
    full_tokens = (L - n_sliding) * ctx
    sliding = n_sliding * np.minimum(ctx, model.sliding_window or np.inf) if n_sliding else 0.0
    return (full_tokens + sliding) * frac * per_tok_layer * dtype_bytes(layout.kv_dtype)


def activation_bytes_per_gpu(model, layout: Layout, tokens_per_step, seqs_per_step) -> np.ndarray:
    """Activations of the largest step: a few hidden-size buffers per token plus the local FFN
    intermediate (gate and up), and fp32 logits of the sampled positions (the peak vLLM's
    profile run measures)."""
    tp = layout.arr("tp")
    h = model.hidden_size
    width = max(
        model.intermediate_size
        if not model.is_moe
        else model.expert_intermediate_size * model.top_k,
        model.shared_intermediate_size,
        1,
    )
    tokens = np.asarray(tokens_per_step, dtype=float)
    return (
        tokens * (4.0 * h + 2.0 * width / tp) * dtype_bytes(layout.act_dtype)
        + np.asarray(seqs_per_step, dtype=float) * model.vocab_size / tp * 4.0
    )


def memory_per_gpu(model, hw, layout: Layout, seqs_per_group, context_len, max_tokens_per_step):
    """(weights, kv_cache, activations) bytes on one GPU of the fullest stage."""
    weights = weights_bytes_per_gpu(model, layout)
    kv = np.asarray(seqs_per_group, dtype=float) * kv_bytes_per_seq(model, layout, context_len)
    act = activation_bytes_per_gpu(model, layout, max_tokens_per_step, seqs_per_group)
    return weights, kv, act


def deepep_low_latency_bytes(model, ep, max_tokens_per_rank=DEEPEP_MAX_DISPATCH_TOKENS_PER_RANK):
    """DeepEP's low-latency RDMA buffer (``get_low_latency_rdma_size_hint``, csrc/config.hpp
    LowLatencyLayout): two (odd/even) sets of send, receive and signalling buffers; a dispatch
    message is an int4 header + max(bf16 hidden, fp8 hidden + one fp32 scale per 128 channels),
    a combine message bf16 hidden; receive buffers hold every expert's tokens."""
    h, E = float(model.hidden_size), float(model.num_experts)
    n = float(max_tokens_per_rank)
    dispatch_msg = 16.0 + max(2.0 * h, h + h / 128.0 * 4.0)
    combine_msg = 2.0 * h
    send = max(n * dispatch_msg, E * n * combine_msg)
    recv = max(E * n * dispatch_msg, E * n * combine_msg)
    signal = E * 4.0
    per_set = send + recv + signal
    return np.where(np.asarray(ep, dtype=float) > 1, 2.0 * per_set, 0.0)


def runtime_reserve(model, hw, layout: Layout, engine=None) -> dict[str, np.ndarray]:
    """Bytes per GPU the runtime holds besides weights, KV and activations, by component (keys
    end in ``_bytes``) plus ``total_bytes`` and ``in_budget_bytes`` (what counts against the memory
    fraction: everything but the CUDA-graph pool under vLLM's gpu_memory_utilization)."""
    tp, ep, pp, dp = (layout.arr(n) for n in ("tp", "ep", "pp", "dp"))
    comms = (tp > 1).astype(float) + (ep > 1).astype(float) + (pp > 1).astype(float)
    comms = comms + ((layout.moe_tp > 1) & (layout.moe_tp != tp)).astype(float)
    nccl = comms * 2.0 * NCCL_CHANNELS * NCCL_BUFFSIZE_BYTES
    nvls_on = bool(getattr(engine, "nvls", True)) and bool(hw.scaleup_in_switch_reduction)
    nvls = np.where(
        nvls_on & (np.maximum(tp, tp * dp / np.maximum(ep, 1)) > 2), NVLS_PER_RANK_BYTES, 0.0
    )
    deepep = deepep_low_latency_bytes(model, ep) if model.is_moe else np.zeros_like(ep)
    shape = np.broadcast(tp, ep, pp, dp).shape
    out = {
        "cuda_context_bytes": np.full(shape, CUDA_CONTEXT_BYTES),
        "cuda_graph_pool_bytes": np.full(shape, CUDA_GRAPH_POOL_BYTES),
        "nccl_bytes": np.broadcast_to(nccl, shape).astype(float),
        "nvls_bytes": np.broadcast_to(nvls, shape).astype(float),
        "deepep_bytes": np.broadcast_to(deepep, shape).astype(float),
        "gemm_workspace_bytes": np.full(shape, float(GEMM_WORKSPACE_BYTES)),
    }
    out["total_bytes"] = sum(out.values())
    mode = memory_mode(layout, engine)[0]
    graphs_outside = mode == "gpu_memory_utilization"
    out["in_budget_bytes"] = out["total_bytes"] - (
        out["cuda_graph_pool_bytes"] if graphs_outside else 0.0
    )
    return out


def memory_mode(layout: Layout, engine=None) -> tuple[str, float]:
    """(mode, fraction) of the KV sizing: the layout's ``kv_cache_free_gpu_memory_fraction`` when set
    (TensorRT-LLM), else the engine's mode, else vLLM's ``gpu_memory_utilization`` = the layout's
    ``memory_utilization``."""
    free_frac = getattr(layout, "kv_cache_free_gpu_memory_fraction", None)
    if free_frac is not None:
        return "kv_cache_free_gpu_memory_fraction", float(free_frac)
    if engine is None or engine.memory_mode == "gpu_memory_utilization":
        frac = (
            layout.memory_utilization
            if engine is None or engine.memory_fraction is None
            else engine.memory_fraction
        )
        return "gpu_memory_utilization", float(frac)
    return engine.memory_mode, float(engine.memory_fraction)


def kv_budget_bytes(model, hw, layout: Layout, weights, activations, engine=None) -> np.ndarray:
    """Bytes per GPU the engine gives the KV cache (may be negative: nothing fits).

    gpu_memory_utilization f (vLLM): f x total - weights - activation peak - non-torch buffers;
        the CUDA-graph pool is captured after, in the (1 - f) x total left (vllm/v1/worker).
    kv_cache_free_gpu_memory_fraction f (TensorRT-LLM): f x (memory free after weights,
        activations and runtime buffers).
    mem_fraction_static f (SGLang): f x total holds weights and the KV pool; activations, graphs
        and buffers live in the rest (and take from the pool when they do not fit there).
    """
    cap = hw.hbm_capacity_bytes
    reserve = runtime_reserve(model, hw, layout, engine)
    mode, f = memory_mode(layout, engine)
    if mode == "gpu_memory_utilization":
        excess = np.maximum(reserve["cuda_graph_pool_bytes"] - (1.0 - f) * cap, 0.0)
        return f * cap - weights - activations - reserve["in_budget_bytes"] - excess
    if mode == "kv_cache_free_gpu_memory_fraction":
        return f * (cap - weights - activations - reserve["total_bytes"])
    rest = (1.0 - f) * cap - activations - reserve["total_bytes"]
    return f * cap - weights + np.minimum(rest, 0.0)


def kv_capacity(
    model,
    hw,
    layout: Layout,
    *,
    input_len,
    output_len,
    engine=None,
    max_tokens_per_step=None,
    max_seqs_per_step=None,
) -> dict[str, np.ndarray]:
    """KV cache of one scheduler instance (one DP group of one replica; every GPU of the group
    holds its share of every sequence's KV):

    ``kv_budget_bytes_per_gpu``, ``kv_block_bytes_per_gpu``, ``kv_blocks`` (per instance),
    ``kv_tokens`` (per instance), ``blocks_per_request`` (prompt + output, whole blocks),
    ``max_seqs`` (requests admitted at full length per instance), ``max_concurrency`` (over
    the whole layout), ``weights_bytes_per_gpu``, ``activation_bytes_per_gpu`` and the reserve.
    """
    from moesim.engine.presets import engine_preset

    eng = engine_preset(engine, hw) if engine is None or isinstance(engine, str) else engine
    tokens = eng.token_budget if max_tokens_per_step is None else max_tokens_per_step
    if max_seqs_per_step is not None:
        seqs = max_seqs_per_step
    else:
        seqs = eng.max_batch if eng.max_batch is not None else np.minimum(tokens, 2048)
    weights = weights_bytes_per_gpu(model, layout)
    act = activation_bytes_per_gpu(model, layout, tokens, np.minimum(seqs, tokens))
    budget = kv_budget_bytes(model, hw, layout, weights, act, eng)
    block = float(eng.kv_block_tokens)
    # Sliding-window layers make KV bytes sub-linear in tokens; a block is costed at full length.
    length = np.asarray(input_len, dtype=float) + np.asarray(output_len, dtype=float)
    blocks_per_req = np.ceil(length / block)
    block_bytes = kv_bytes_per_seq(model, layout, length) / length * block
    with np.errstate(divide="ignore", invalid="ignore"):
        blocks = np.where(block_bytes > 0, np.floor(np.maximum(budget, 0.0) / block_bytes), 0.0)
    max_seqs = np.floor(blocks / blocks_per_req)
    groups = layout.arr("dp") * layout.arr("replicas")
    reserve = runtime_reserve(model, hw, layout, eng)
    return {
        "kv_budget_bytes_per_gpu": budget,
        "kv_block_bytes_per_gpu": block_bytes,
        "kv_blocks": blocks,
        "kv_tokens": blocks * block,
        "blocks_per_request": blocks_per_req,
        "max_seqs": max_seqs,
        "max_concurrency": max_seqs * groups,
        "weights_bytes_per_gpu": weights,
        "activation_bytes_per_gpu": act,
        "runtime_reserve_bytes_per_gpu": reserve["total_bytes"],
        "reserve_in_budget_bytes_per_gpu": reserve["in_budget_bytes"],
    }


def max_concurrency(model, hw, layout: Layout, input_len, output_len, engine=None) -> np.ndarray:
    """Requests the whole layout admits at once, each with its KV at full length — the one number
    ``moesim predict``, ``plan`` and ``sweep`` all report as ``max_concurrency``."""
    return kv_capacity(
        model, hw, layout, input_len=input_len, output_len=output_len, engine=engine
    )["max_concurrency"]
