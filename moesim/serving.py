"""From operator costs to serving metrics: step times, TTFT, TPOT, throughput, memory fit, $.

Continuous-batching steady state (Orca, Yu et al. OSDI'22; vLLM, Kwon et al. SOSP'23): a decode
step advances every running sequence by one token, so TPOT is the decode step time at the
batch's mean context, and tokens/s per GPU = batch / TPOT / GPUs. With ``pp`` stages the batch
is split into ``pp`` micro-batches that keep every stage busy; a token passes all stages, so
TPOT = pp x (slowest stage time) and throughput is still batch / TPOT (GPipe, Huang et al. 2019).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim import comm
from moesim.deployment import Layout, check_layout
from moesim.dtypes import dtype_bytes
from moesim.ops import Op, RoutingOptions, step_ops
from moesim.roofline import RooflineParams, floor_s, op_time_s

# Prefill is processed in chunks of at most this many tokens per GPU (vLLM's
# max_num_batched_tokens); it bounds activation memory, not the work.
DEFAULT_MAX_BATCHED_TOKENS = 16384


@dataclass
class OpTiming:
    """Cost of one operator over a whole step (all its layers on the stage)."""

    name: str
    kind: str
    kernel_class: str
    per_stage: bool
    time_s: np.ndarray
    floor_s: np.ndarray
    flops: np.ndarray
    hbm_bytes: np.ndarray
    comm_bytes: np.ndarray
    bound: np.ndarray


def evaluate_ops(ops: list[Op], hw, layout: Layout) -> list[OpTiming]:
    """Time every operator with the hardware profile's calibrated roofline and collectives."""
    net = comm.Network.from_hardware(hw)
    line = comm.Network(
        domain_size=net.domain_size,
        scaleup_bytes_per_s=hw.scaleup_bandwidth_bytes_per_s,
        scaleup_latency_s=0.0,
        scaleout_bytes_per_s=hw.scaleout_bandwidth_bytes_per_s,
        scaleout_latency_s=0.0,
        host_bytes_per_s=hw.host_link_bandwidth_bytes_per_s,
        in_switch_reduction=net.in_switch_reduction,
        in_switch_speedup=net.in_switch_speedup,
    )
    bw = hw.hbm_bandwidth_bytes_per_s
    params_cache: dict[tuple[str, str], RooflineParams] = {}
    out = []
    for op in ops:
        count = op.count
        if op.is_comm:
            t, f = _comm_time(op, net), _comm_time(op, line)
            b = np.asarray("comm")
            flops = np.asarray(0.0)
            hbm = np.asarray(0.0)
        else:
            key = (op.kernel_class, op.dtype)
            if key not in params_cache:
                eff = hw.efficiency.for_class(op.kernel_class)
                params_cache[key] = RooflineParams.from_efficiency(eff, op.dtype)
            peak = hw.peak(op.dtype)
            t = op_time_s(
                op.flops,
                op.hbm_bytes,
                peak_flops_per_s=peak,
                hbm_bytes_per_s=bw,
                params=params_cache[key],
                num_sms=hw.num_sms,
                m=op.m,
                n=op.n,
                launches=op.launches,
            )
            f = floor_s(op.flops, op.hbm_bytes, peak, bw)
            b = np.where(op.flops / peak >= op.hbm_bytes / bw, "compute", "memory")
            flops, hbm = op.flops * count, op.hbm_bytes * count
        out.append(
            OpTiming(
                op.name,
                op.kind,
                op.kernel_class,
                op.per_stage,
                t * count,
                f * count,
                flops,
                hbm,
                op.comm_bytes * count,
                b,
            )
        )
    return out


def _comm_time(op: Op, net: comm.Network) -> np.ndarray:
    if op.kernel_class == "allreduce":
        return comm.allreduce_time_s(op.message_bytes, op.group_size, net)
    if op.kernel_class == "alltoall":
        return comm.alltoall_time_s(op.intra_bytes, op.inter_bytes, net)
    if op.kernel_class == "p2p":
        return comm.p2p_time_s(op.message_bytes, op.crosses_domain, net)
    return comm.host_transfer_time_s(op.message_bytes, net)


@dataclass
class StepResult:
    """One step of one phase: its latency through the pipeline and what it is made of."""

    time_s: np.ndarray  # latency of one step for a token (TPOT for decode)
    floor_s: np.ndarray
    compute_s: np.ndarray  # per stage, non-communication operators
    comm_s: np.ndarray  # per stage, communication (before overlap)
    ops: list[OpTiming]
    routing: object

    @property
    def comm_share(self) -> np.ndarray:
        total = self.compute_s + self.comm_s
        return np.where(total > 0, self.comm_s / np.where(total > 0, total, 1.0), 0.0)


def step(
    model,
    hw,
    layout: Layout,
    phase: str,
    seqs_per_group,
    new_tokens,
    context,
    routing=None,
    micro_batches=None,
) -> StepResult:
    """Time of one step. ``seqs_per_group`` sequences per DP group are split into ``pp``
    micro-batches (or ``micro_batches``); overlap='two-batch' splits each once more and hides
    one half's communication under the other's compute (DeepSeek-V3 report section 3.4; SGLang
    two-batch overlap), at the price of reading the weights twice."""
    pp = layout.arr("pp")
    mb = pp if micro_batches is None else np.asarray(micro_batches, dtype=float)
    seqs_mb = np.asarray(seqs_per_group, dtype=float) / mb
    split = 2.0 if layout.overlap == "two-batch" else 1.0
    ops, stats = step_ops(model, hw, layout, phase, seqs_mb / split, new_tokens, context, routing)
    timings = evaluate_ops(ops, hw, layout)
    zero = np.zeros(np.broadcast(seqs_mb, pp, layout.arr("tp"), layout.arr("ep")).shape)
    compute_s, comm_s, once_s, floor_stage, floor_once, p2p_s = (zero.copy() for _ in range(6))
    for t in timings:
        is_comm = t.kernel_class in ("allreduce", "alltoall", "p2p", "host")
        if t.name == "pp.send":
            p2p_s = p2p_s + t.time_s
        elif not t.per_stage:
            once_s = once_s + t.time_s
            floor_once = floor_once + t.floor_s
        elif is_comm:
            comm_s = comm_s + t.time_s
            floor_stage = floor_stage + 0.0
        else:
            compute_s = compute_s + t.time_s
            floor_stage = floor_stage + t.floor_s
    if split == 2.0:
        stage = 2.0 * np.maximum(compute_s, comm_s)
        once_s, floor_once = 2.0 * once_s, 2.0 * floor_once
        floor_stage = 2.0 * floor_stage
    else:
        stage = compute_s + comm_s
    cycle = stage + once_s  # the last stage also runs the LM head
    time_s = pp * cycle + (pp - 1.0) * p2p_s
    floor_total = pp * (floor_stage + floor_once)
    return StepResult(time_s, floor_total, compute_s * split, comm_s * split, timings, stats)


def memory_per_gpu(model, hw, layout: Layout, seqs_per_group, context_len, max_tokens_per_step):
    """(weights, kv_cache, activations) bytes on one GPU of the fullest stage."""
    tp, ep, pp = layout.arr("tp"), layout.arr("ep"), layout.arr("pp")
    wb = dtype_bytes(layout.weight_dtype)
    kvb = dtype_bytes(layout.kv_dtype)
    ab = dtype_bytes(layout.act_dtype)
    h, L = model.hidden_size, model.num_hidden_layers
    layers_stage = np.ceil(L / pp)
    frac = layers_stage / L
    if model.is_mla:
        down = h * ((model.q_lora_rank or 0) + model.kv_lora_rank + model.qk_rope_head_dim)
        attn = down + (model.attention_params_per_layer - down) / tp  # vLLM replicates q_a / kv_a
    else:
        d, Hkv = model.attn_head_dim, model.num_key_value_heads
        kv = 2 * h * Hkv * d
        attn = (model.attention_params_per_layer - kv) / tp + kv * np.maximum(1.0 / tp, 1.0 / Hkv)
    n_moe = model.num_moe_layers if model.is_moe else 0
    per_gpu = attn * L + model.norm_params_per_layer * L
    if model.is_moe:
        slots = model.num_experts + np.asarray(layout.redundant_experts, dtype=float)
        resident = 1.0 - np.asarray(layout.offload_fraction, dtype=float)
        experts = slots / ep * model.expert_params / layout.moe_tp * resident
        per_gpu = per_gpu + n_moe * (
            experts + model.router_params_per_layer + model.shared_expert_params_per_layer / tp
        )
        per_gpu = per_gpu + (L - n_moe) * model.dense_ffn_params_per_layer / tp
    else:
        per_gpu = per_gpu + L * model.dense_ffn_params_per_layer / tp
    per_gpu = per_gpu + L * model.dense_residual_params_per_layer / tp
    vocab = model.vocab_size * h / tp
    tables = np.where(pp > 1, 1.0, 1.0 if model.tie_word_embeddings else 2.0)
    weights = (per_gpu * frac + tables * vocab) * wb

    # KV cache: every sequence of this DP group, every layer of the stage; sliding-window layers
    # keep at most `window` tokens; GQA heads split over TP (replicated when tp > H_kv); MLA's
    # latent cache is whole on every TP rank.
    if model.is_mla:
        per_tok_layer = model.kv_cache_elements_per_token_per_layer
    else:
        per_tok_layer = 2.0 * np.maximum(model.num_key_value_heads / tp, 1.0) * model.attn_head_dim
    ctx = np.asarray(context_len, dtype=float)
    n_sliding = model.num_sliding_layers
    full_tokens = (L - n_sliding) * ctx
    sliding_tokens = (
        n_sliding * np.minimum(ctx, model.sliding_window or np.inf) if n_sliding else 0.0
    )
    kv = (
        np.asarray(seqs_per_group, dtype=float)
        * (full_tokens + sliding_tokens)
        * frac
        * per_tok_layer
        * kvb
    )

    # Activations of the largest step: a few hidden-size buffers per token plus the local FFN
    # intermediate (gate and up), and fp32 logits of the last positions (vLLM's profile run
    # measures the same peak).
    tokens = np.asarray(max_tokens_per_step, dtype=float)
    width = max(
        model.intermediate_size
        if not model.is_moe
        else model.expert_intermediate_size * model.top_k,
        model.shared_intermediate_size,
        1,
    )
    act = (
        tokens * (4.0 * h + 2.0 * width / tp) * ab
        + np.asarray(seqs_per_group, dtype=float) * model.vocab_size / tp * 4.0
    )
    return weights, kv, act


def predict(
    model,
    hw,
    layout: Layout | None = None,
    *,
    batch,
    input_len,
    output_len,
    routing: RoutingOptions | None = None,
    max_batched_tokens: int = DEFAULT_MAX_BATCHED_TOKENS,
    breakdown: bool = False,
    prefix_cache_hit_rate=0.0,
) -> dict:
    """Serve a static batch of ``batch`` requests (across the whole layout): prefill all prompts,
    then decode ``output_len`` tokens each. Returns a dict of numpy arrays (broadcast over every
    array input) with the keys documented in the README; ``breakdown=True`` adds per-op rows.

    ``prefix_cache_hit_rate`` is the share of each prompt found in the prefix cache (vLLM
    automatic prefix caching, SGLang RadixAttention): those tokens are not recomputed, but the
    new ones still attend to them, so prefill runs the rest with the hit as cached context.
    """
    layout = layout or Layout()
    batch = np.asarray(batch, dtype=float)
    input_len = np.asarray(input_len, dtype=float)
    output_len = np.asarray(output_len, dtype=float)
    groups = layout.arr("dp") * layout.arr("replicas")
    seqs = batch / groups  # sequences per DP group

    hit = np.clip(np.asarray(prefix_cache_hit_rate, dtype=float), 0.0, 1.0)
    cached = np.floor(input_len * hit)
    new = np.maximum(input_len - cached, 1.0)  # the last prompt token is always computed
    prefill = step(model, hw, layout, "prefill", seqs, new, input_len - new, routing)
    # Static batch: decode steps see contexts input+1 .. input+output-1; KV reads are linear in
    # context, so the step at the mean context gives the mean step time.
    mean_ctx = input_len + output_len / 2.0
    decode = step(model, hw, layout, "decode", seqs, 1.0, mean_ctx, routing)
    out = _metrics(
        model, hw, layout, batch, seqs, input_len, output_len, prefill, decode, max_batched_tokens
    )
    if breakdown:
        out["breakdown"] = {"prefill": _rows(prefill), "decode": _rows(decode)}
    return out


def _metrics(
    model,
    hw,
    layout,
    batch,
    seqs,
    input_len,
    output_len,
    prefill: StepResult,
    decode: StepResult,
    max_batched_tokens,
):
    gpus = layout.num_gpus
    ttft = prefill.time_s
    tpot = decode.time_s
    e2e = ttft + np.maximum(output_len - 1.0, 0.0) * tpot
    out_tps = batch * output_len / e2e
    price = hw.price_usd_per_hour * gpus / 3600.0  # USD per second for the whole layout

    possible, reason = check_layout(model, layout)
    max_tokens = np.minimum(seqs * input_len, max_batched_tokens)
    weights, kv, act = memory_per_gpu(model, hw, layout, seqs, input_len + output_len, max_tokens)
    usable = hw.hbm_capacity_bytes * layout.memory_utilization
    total = weights + kv + act
    kv_per_seq = np.where(seqs > 0, kv / np.where(seqs > 0, seqs, 1.0), 0.0)
    free = usable - weights - act
    with np.errstate(divide="ignore", invalid="ignore"):
        max_conc = (
            np.where(kv_per_seq > 0, np.floor(np.maximum(free, 0) / kv_per_seq), 0.0)
            * layout.arr("dp")
            * layout.arr("replicas")
        )
    shape = np.broadcast(total, possible, batch).shape
    feasible, reason = feasibility(reason, total, weights, usable, seqs, shape)

    stats = decode.routing
    res = {
        "ttft_s": ttft,
        "tpot_s": tpot,
        "e2e_latency_s": e2e,
        "output_tokens_per_s_per_gpu": out_tps / gpus,
        "output_tokens_per_s_per_user": 1.0 / tpot,
        "prefill_tokens_per_s_per_gpu": batch * input_len / ttft / gpus,
        "decode_tokens_per_s_per_gpu": batch / tpot / gpus,
        "num_gpus": gpus,
        "weights_bytes_per_gpu": weights,
        "kv_cache_bytes_per_gpu": kv,
        "activation_bytes_per_gpu": act,
        "memory_bytes_per_gpu": total,
        "memory_capacity_bytes_per_gpu": np.asarray(hw.hbm_capacity_bytes),
        "max_concurrency": max_conc,
        "feasible": feasible,
        "reason": reason,
        "usd_per_million_output_tokens": price / out_tps * 1e6,
        "usd_per_million_input_tokens": price * ttft / (batch * input_len) * 1e6,
        "power_w": hw.tdp_w * gpus,
        "ttft_floor_s": prefill.floor_s,
        "tpot_floor_s": decode.floor_s,
        "prefill_comm_share": prefill.comm_share,
        "decode_comm_share": decode.comm_share,
    }
    res.update(_routing_fields(stats))
    return res


def feasibility(layout_reason, total, weights, usable: float, seqs, shape):
    """(feasible, reason) arrays of ``shape``: the layout's own reason first, then memory fit,
    then a batch too small to give every DP group a sequence. Memory reasons carry the numbers,
    formatted once per distinct (need, weights) pair so a million points cost one sort."""
    layout_reason = np.asarray(layout_reason, dtype=object)
    bad_layout = np.broadcast_to(layout_reason != "", shape)
    no_fit = np.broadcast_to(np.asarray(total) > usable, shape) & ~bad_layout
    small = np.broadcast_to(np.asarray(seqs) < 1, shape) & ~bad_layout & ~no_fit
    reason = np.full(shape, "", dtype=object)
    if np.any(bad_layout):
        reason[bad_layout] = np.broadcast_to(layout_reason, shape)[bad_layout]
    if np.any(no_fit):
        need = np.round(np.broadcast_to(np.asarray(total) / 1e8, shape)[no_fit])
        held = np.round(np.broadcast_to(np.asarray(weights) / 1e8, shape)[no_fit])
        key = need.astype(np.int64) * (1 << 32) + held.astype(np.int64)
        keys, inverse = np.unique(key, return_inverse=True)
        text = np.array(
            [
                f"needs {(k >> 32) / 10:.1f} GB per GPU ({(k & 0xFFFFFFFF) / 10:.1f} GB weights), "
                f"{usable / 1e9:.1f} GB usable"
                for k in keys.tolist()
            ],
            dtype=object,
        )
        reason[no_fit] = text[inverse.ravel()]
    if np.any(small):
        reason[small] = "batch smaller than the number of DP groups x replicas"
    return ~(bad_layout | no_fit | small), reason


def _routing_fields(stats) -> dict:
    if stats is None:
        return {
            "max_load_ratio": 1.0,
            "active_experts": 1.0,
            "padding_waste": 0.0,
            "drop_rate": 0.0,
        }
    return {
        "max_load_ratio": stats.max_load_ratio,
        "active_experts": stats.active_experts,
        "padding_waste": stats.padding_waste,
        "drop_rate": stats.drop_rate,
    }


def _rows(result: StepResult) -> list[dict]:
    rows = []
    for t in result.ops:
        rows.append(
            {
                "op": t.name,
                "kind": t.kind,
                "kernel_class": t.kernel_class,
                "time_s": t.time_s,
                "floor_s": t.floor_s,
                "flops": t.flops,
                "hbm_bytes": t.hbm_bytes,
                "comm_bytes": t.comm_bytes,
                "bound": t.bound,
            }
        )
    return rows


def predict_phase(
    model,
    hw,
    layout: Layout | None = None,
    *,
    phase: str,
    batch,
    input_len=1024,
    context_len=None,
    routing: RoutingOptions | None = None,
    max_batched_tokens: int = DEFAULT_MAX_BATCHED_TOKENS,
    breakdown: bool = False,
) -> dict:
    """One pool's steady state. ``phase='decode'``: ``batch`` sequences (whole layout) each at
    ``context_len`` tokens of context -> ``tpot_s``, ``decode_tokens_per_s_per_gpu``.
    ``phase='prefill'``: ``batch`` prompts of ``input_len`` -> ``ttft_s``,
    ``prefill_tokens_per_s_per_gpu``."""
    layout = layout or Layout()
    batch = np.asarray(batch, dtype=float)
    input_len = np.asarray(input_len, dtype=float)
    seqs = batch / (layout.arr("dp") * layout.arr("replicas"))
    gpus = layout.num_gpus
    price = hw.price_usd_per_hour * gpus / 3600.0
    possible, reason = check_layout(model, layout)
    if phase == "decode":
        ctx = input_len if context_len is None else np.asarray(context_len, dtype=float)
        res = step(model, hw, layout, "decode", seqs, 1.0, ctx, routing)
        tps = batch / res.time_s
        out = {
            "tpot_s": res.time_s,
            "tpot_floor_s": res.floor_s,
            "decode_tokens_per_s_per_gpu": tps / gpus,
            "output_tokens_per_s_per_user": 1.0 / res.time_s,
            "usd_per_million_output_tokens": price / tps * 1e6,
            "decode_comm_share": res.comm_share,
        }
        mem_ctx, max_tokens = ctx, seqs
    elif phase == "prefill":
        res = step(model, hw, layout, "prefill", seqs, input_len, 0.0, routing)
        tps = batch * input_len / res.time_s
        out = {
            "ttft_s": res.time_s,
            "ttft_floor_s": res.floor_s,
            "prefill_tokens_per_s_per_gpu": tps / gpus,
            "usd_per_million_input_tokens": price / tps * 1e6,
            "prefill_comm_share": res.comm_share,
        }
        mem_ctx, max_tokens = input_len, np.minimum(seqs * input_len, max_batched_tokens)
    else:
        raise ValueError(f"phase must be 'prefill' or 'decode', not {phase!r}")
    weights, kv, act = memory_per_gpu(model, hw, layout, seqs, mem_ctx, max_tokens)
    usable = hw.hbm_capacity_bytes * layout.memory_utilization
    total = weights + kv + act
    shape = np.broadcast(total, possible, batch).shape
    feasible, reason = feasibility(reason, total, weights, usable, seqs, shape)
    out.update(
        num_gpus=gpus,
        weights_bytes_per_gpu=weights,
        kv_cache_bytes_per_gpu=kv,
        activation_bytes_per_gpu=act,
        memory_bytes_per_gpu=total,
        memory_capacity_bytes_per_gpu=np.asarray(hw.hbm_capacity_bytes),
        feasible=feasible,
        reason=reason,
        power_w=hw.tdp_w * gpus,
    )
    out.update(_routing_fields(res.routing))
    if breakdown:
        out["breakdown"] = {phase: _rows(res)}
    return out
