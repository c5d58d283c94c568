"""From operator costs to serving metrics: step times, TTFT, TPOT, throughput, memory fit, $.

Continuous-batching steady state (Orca, Yu et al. OSDI'22; vLLM, Kwon et al. SOSP'23): a decode
step advances every running sequence by one token, so TPOT is the decode step time at the
batch's mean context, and tokens/s per GPU = batch / TPOT / GPUs. With ``pp`` stages the batch
is split into ``pp`` micro-batches that keep every stage busy; a token passes all stages, so
TPOT = pp x (slowest stage time) and throughput is still batch / TPOT (GPipe, Huang et al. 2019).
"""

from __future__ import annotations

import numpy as np

from moesim.cost.ops import RoutingOptions
from moesim.cost.speculative import speculative_decode
from moesim.cost.step import OpTiming, StepResult, evaluate_ops, step  # noqa: F401 (re-exported)
from moesim.engine import memory as mem
from moesim.engine.memory import memory_per_gpu  # noqa: F401 (re-exported)
from moesim.spec.deployment import Layout, check_layout

# Prefill is processed in chunks of at most this many tokens per GPU (vLLM's
# max_num_batched_tokens); it bounds activation memory, not the work.
DEFAULT_MAX_BATCHED_TOKENS = 16384


def prefill_micro_batches(layout: Layout, seqs) -> np.ndarray:
    """Micro-batches a static prefill of ``seqs`` sequences per DP group runs as: a prompt is
    never split, so at most one per sequence, at most one per stage."""
    whole = np.maximum(np.floor(np.asarray(seqs, dtype=float)), 1.0)
    return np.minimum(whole, layout.arr("pp"))


def pipeline_fill(
    result: StepResult, layout: Layout, micro_batches
) -> tuple[np.ndarray, np.ndarray]:
    """(time, floor) until the last of ``micro_batches`` micro-batches leaves the last stage:
    (pp + m - 1) x cycle + (pp - 1) x p2p (GPipe), from a step evaluated with m micro-batches,
    whose ``time_s`` is pp x cycle + (pp - 1) x p2p."""
    pp = layout.arr("pp")
    p2p = sum((t.time_s for t in result.ops if t.name == "pp.send"), np.asarray(0.0))
    cycle = (result.time_s - (pp - 1.0) * p2p) / pp
    extra = np.asarray(micro_batches, dtype=float) - 1.0
    return result.time_s + extra * cycle, result.floor_s + extra * result.floor_s / pp


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
    engine=None,
    speculation=None,
) -> dict:
    """Serve a static batch of ``batch`` requests (across the whole layout): prefill all prompts,
    then decode ``output_len`` tokens each. Returns a dict of numpy arrays (broadcast over every
    array input) with the keys documented in the README; ``breakdown=True`` adds per-op rows.

    ``prefix_cache_hit_rate`` is the share of each prompt found in the prefix cache (vLLM
    automatic prefix caching, SGLang RadixAttention): those tokens are not recomputed, but the
    new ones still attend to them, so prefill runs the rest with the hit as cached context.
    ``engine`` (a name or :class:`~moesim.engine.presets.EngineConfig`) sets how memory is
    accounted; default vLLM's, with the layout's ``memory_utilization``.
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
    mb = prefill_micro_batches(layout, seqs)
    prefill = step(model, hw, layout, "prefill", seqs, new, input_len - new, routing, mb)
    prefill.time_s, prefill.floor_s = pipeline_fill(prefill, layout, mb)
    # Static batch: decode steps see contexts input+1 .. input+output-1; KV reads are linear in
    # context, so the step at the mean context gives the mean step time.
    mean_ctx = input_len + output_len / 2.0
    decode = step(model, hw, layout, "decode", seqs, 1.0, mean_ctx, routing)
    # speculative decoding (moesim.cost.speculative): decode.time_s becomes time per accepted token
    spec_keys = {}
    if speculation is not None:
        decode, spec_keys = speculative_decode(
            model, hw, layout, speculation, seqs, mean_ctx, routing
        )
    out = _metrics(
        model, hw, layout, batch, seqs, input_len, output_len, prefill, decode,
        max_batched_tokens, engine,
    )  # fmt: skip
    out.update(spec_keys)
    if breakdown:
        out["breakdown"] = {"prefill": _rows(prefill), "decode": _rows(decode)}
        out["overlap"] = {"prefill": prefill.overlap_summary(), "decode": decode.overlap_summary()}
    return out


def memory_fit(model, hw, layout: Layout, seqs, context_len, max_tokens, engine=None) -> dict:
    """Weights, KV, activations and the runtime reserve of a batch, against what the engine's
    memory option leaves for them: ``usable_bytes_per_gpu`` is weights + activations + reserve +
    the KV budget, so the batch fits iff ``memory_bytes_per_gpu <= usable_bytes_per_gpu``."""
    from moesim.engine.presets import engine_preset

    eng = engine_preset(engine, hw) if engine is None or isinstance(engine, str) else engine
    weights, kv, act = memory_per_gpu(model, hw, layout, seqs, context_len, max_tokens)
    reserve = mem.runtime_reserve(model, hw, layout, eng)["in_budget_bytes"]
    budget = mem.kv_budget_bytes(model, hw, layout, weights, act, eng)
    return {
        "weights_bytes_per_gpu": weights,
        "kv_cache_bytes_per_gpu": kv,
        "activation_bytes_per_gpu": act,
        "runtime_reserve_bytes_per_gpu": reserve,
        "memory_bytes_per_gpu": weights + kv + act + reserve,
        "usable_bytes_per_gpu": weights + act + reserve + budget,
    }


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
    engine=None,
):
    gpus = layout.num_gpus
    ttft = prefill.time_s
    tpot = decode.time_s
    e2e = ttft + np.maximum(output_len - 1.0, 0.0) * tpot
    out_tps = batch * output_len / e2e
    price = hw.price_usd_per_hour * gpus / 3600.0  # USD per second for the whole layout

    possible, reason = check_layout(model, layout)
    max_tokens = np.minimum(seqs * input_len, max_batched_tokens)
    fit = memory_fit(model, hw, layout, seqs, input_len + output_len, max_tokens, engine)
    total, usable = fit["memory_bytes_per_gpu"], fit["usable_bytes_per_gpu"]
    max_conc = mem.max_concurrency(model, hw, layout, input_len, output_len, engine)
    shape = np.broadcast(total, possible, batch).shape
    feasible, reason = feasibility(reason, total, fit["weights_bytes_per_gpu"], usable, seqs, shape)

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
        "weights_bytes_per_gpu": fit["weights_bytes_per_gpu"],
        "kv_cache_bytes_per_gpu": fit["kv_cache_bytes_per_gpu"],
        "activation_bytes_per_gpu": fit["activation_bytes_per_gpu"],
        "runtime_reserve_bytes_per_gpu": fit["runtime_reserve_bytes_per_gpu"],
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


def feasibility(layout_reason, total, weights, usable, seqs, shape):
    """(feasible, reason) arrays of ``shape``: the layout's own reason first, then memory fit,
    then a batch too small to give every DP group a sequence. Memory reasons carry the numbers,
    formatted once per distinct (need, weights, usable) triple so a million points cost one sort."""
    layout_reason = np.asarray(layout_reason, dtype=object)
    bad_layout = np.broadcast_to(layout_reason != "", shape)
    no_fit = np.broadcast_to(np.asarray(total) > np.asarray(usable), shape) & ~bad_layout
    small = np.broadcast_to(np.asarray(seqs) < 1, shape) & ~bad_layout & ~no_fit
    reason = np.full(shape, "", dtype=object)
    if np.any(bad_layout):
        reason[bad_layout] = np.broadcast_to(layout_reason, shape)[bad_layout]
    if np.any(no_fit):
        need = np.round(np.broadcast_to(np.asarray(total) / 1e8, shape)[no_fit])
        held = np.round(np.broadcast_to(np.asarray(weights) / 1e8, shape)[no_fit])
        room = np.round(np.broadcast_to(np.maximum(np.asarray(usable), 0.0) / 1e8, shape)[no_fit])
        key = np.stack([need, held, room], axis=-1).astype(np.int64)
        keys, inverse = np.unique(key, axis=0, return_inverse=True)
        text = np.array(
            [
                f"needs {n / 10:.1f} GB per GPU ({w / 10:.1f} GB weights), {u / 10:.1f} GB usable"
                for n, w, u in keys.tolist()
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
    engine=None,
    speculation=None,
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
        # speculative decoding (moesim.cost.speculative): res.time_s becomes time per token
        spec_keys = {}
        if speculation is not None:
            res, spec_keys = speculative_decode(model, hw, layout, speculation, seqs, ctx, routing)
        tps = batch / res.time_s
        out = {
            "tpot_s": res.time_s,
            "tpot_floor_s": res.floor_s,
            "decode_tokens_per_s_per_gpu": tps / gpus,
            "output_tokens_per_s_per_user": 1.0 / res.time_s,
            "usd_per_million_output_tokens": price / tps * 1e6,
            "decode_comm_share": res.comm_share,
        } | spec_keys
        mem_ctx, max_tokens = ctx, seqs
    elif phase == "prefill":
        mb = prefill_micro_batches(layout, seqs)
        res = step(model, hw, layout, "prefill", seqs, input_len, 0.0, routing, mb)
        res.time_s, res.floor_s = pipeline_fill(res, layout, mb)
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
    fit = memory_fit(model, hw, layout, seqs, mem_ctx, max_tokens, engine)
    total = fit["memory_bytes_per_gpu"]
    shape = np.broadcast(total, possible, batch).shape
    feasible, reason = feasibility(
        reason, total, fit["weights_bytes_per_gpu"], fit["usable_bytes_per_gpu"], seqs, shape
    )
    out.update(
        num_gpus=gpus,
        weights_bytes_per_gpu=fit["weights_bytes_per_gpu"],
        kv_cache_bytes_per_gpu=fit["kv_cache_bytes_per_gpu"],
        activation_bytes_per_gpu=fit["activation_bytes_per_gpu"],
        runtime_reserve_bytes_per_gpu=fit["runtime_reserve_bytes_per_gpu"],
        memory_bytes_per_gpu=total,
        memory_capacity_bytes_per_gpu=np.asarray(hw.hbm_capacity_bytes),
        feasible=feasible,
        reason=reason,
        power_w=hw.tdp_w * gpus,
    )
    out.update(_routing_fields(res.routing))
    if breakdown:
        out["breakdown"] = {phase: _rows(res)}
        out["overlap"] = {phase: res.overlap_summary()}
    return out
