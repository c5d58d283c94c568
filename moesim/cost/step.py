"""Time of one forward step: every operator of the busiest stage timed with the hardware
profile's calibrated roofline and collectives, then combined through the pipeline.

With ``pp`` stages the batch is split into ``pp`` micro-batches that keep every stage busy; a
token passes all stages, so a step's latency is pp x (slowest stage time) plus the sends
between stages (GPipe, Huang et al. 2019).

Within a stage:

- the busiest attention-DP rank sets the pace (every EP collective is a barrier;
  :mod:`moesim.cost.straggler`), and the MoE layers see all ranks' tokens;
- with ``overlap='two-batch'`` (where there is an EP all-to-all to hide: MoE, ep > 1, DP
  attention, every DP rank holding two sequences or more) each rank's sequences are split into
  two micro-batches of whole sequences (ceil / floor; prefill splits tokens evenly, as DeepSeek
  balances prefill attention across them), and the MoE layers run the per-layer schedule of
  :mod:`moesim.cost.overlap`; dense layers run both halves back to back;
- a step an engine does not capture in a CUDA graph takes at least the host time to launch
  its kernels (:func:`moesim.cost.ops.graph_captured`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.cost import collectives_ext, comm, fitted_comm, overlap, straggler
from moesim.cost.ops import EAGER_HOST_LAUNCH_S, Op, graph_captured, step_ops
from moesim.cost.roofline import (
    RooflineParams,
    decode_attention_time_s,
    floor_s,
    mla_decode_grid,
    op_time_s,
)
from moesim.spec.deployment import Layout
from moesim.spec.hardware import normalize_dtype


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
    launches: np.ndarray = 0.0  # kernels launched over the step (all its layers)


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
    params_cache: dict[tuple[str, str, str], RooflineParams] = {}
    out = []
    for op in ops:
        count = op.count
        if op.is_comm:
            t = _comm_time(op, net, framework=layout.framework)
            f = _comm_time(op, line, floor=True)
            b = np.asarray("comm")
            flops = np.asarray(0.0)
            hbm = np.asarray(0.0)
        else:
            key = (op.kernel_class, op.dtype, op.fmt)
            if key not in params_cache:
                eff = hw.efficiency.for_class(op.kernel_class)
                params_cache[key] = RooflineParams.from_efficiency(eff, op.dtype, op.fmt)
            peak = hw.peak(op.dtype)
            if op.q_per_kv is not None:
                t = decode_attention_time_s(
                    op.flops, op.hbm_bytes, kv_bytes=op.kv_bytes, seqs=op.m, kv_heads=op.n,
                    q_per_kv=op.q_per_kv, keys=op.k, kv_bytes_per_element=op.kv_bytes_per_element,
                    peak_flops_per_s=peak, hbm_bytes_per_s=bw, params=params_cache[key],
                    num_sms=hw.num_sms, launches=op.launches,
                )  # fmt: skip
            else:
                m, n = op.m, op.n
                if op.kernel_class == "attention_decode_mla":
                    m, n = mla_decode_grid(
                        hw.efficiency.attention_decode_mla is not None, m, n, op.k,
                        params_cache[key], hw.num_sms,
                    )  # fmt: skip
                t = op_time_s(
                    op.flops,
                    op.hbm_bytes,
                    peak_flops_per_s=peak,
                    hbm_bytes_per_s=bw,
                    params=params_cache[key],
                    num_sms=hw.num_sms,
                    m=m,
                    n=n,
                    launches=op.launches,
                    k=op.k,
                    gather_bytes=op.gather_bytes,
                    mma_rate=op.mma_rate,
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
                np.asarray(0.0 if op.is_comm else op.launches, dtype=float) * count,
            )
        )
    return out


def _comm_time(
    op: Op, net: comm.Network, floor: bool = False, framework: str | None = None
) -> np.ndarray:
    """Time of one communication op. With fitted per-group-size terms in the profile
    (``net.fitted``, :mod:`moesim.cost.fitted_comm`) the all-reduce and the DeepEP all-to-all
    use them where they cover the group size (EP size, phase, payload dtype); everywhere else,
    and always without them, the two-level model."""
    fitted = None if floor else net.fitted
    if op.kernel_class == "allreduce":
        if floor:  # line rate, no latency: the datasheet floor
            return comm.allreduce_time_s(op.message_bytes, op.group_size, net)
        # NCCL's protocol choice per message size, or the engine's one-shot kernel
        t = collectives_ext.allreduce_time_s(op.message_bytes, op.group_size, net)
        if fitted is not None:
            generic = collectives_ext.custom_allreduce_time_s(op.message_bytes, op.group_size, net)
            f = fitted_comm.engine_allreduce_time_s(
                fitted, op.message_bytes, op.group_size, framework, generic_custom=generic
            )
            t = np.where(np.isfinite(f), f, t)
        return t
    if op.kernel_class == "alltoall":
        t = comm.alltoall_time_s(op.intra_bytes, op.inter_bytes, net)
        if fitted is not None and op.impl:
            phase = op.name.rsplit(".", 1)[-1]  # moe.dispatch | moe.combine
            key = fitted_comm.deepep_phase_key(phase, normalize_dtype(op.dtype))
            f = fitted_comm.deepep_time_s(
                fitted, op.impl, key, op.intra_bytes, op.inter_bytes, op.group_size
            )
            t = np.where(np.isfinite(f), f, t)
        return t
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
    overlap: object = None  # overlap.OverlapResult of the stage's MoE layers (per layer)
    exposed_comm_s: object = 0.0  # per stage: stage time - compute time (comm not hidden)
    eager: object = False  # the step is launched from the host (not graph-captured)

    @property
    def comm_share(self) -> np.ndarray:
        total = self.compute_s + self.comm_s
        return np.where(total > 0, self.comm_s / np.where(total > 0, total, 1.0), 0.0)

    def overlap_summary(self) -> dict:
        """Per-MoE-layer overlap figures (seconds) for breakdowns and JSON."""
        o = self.overlap
        if o is None:
            return {}
        return {
            "layer_time_s": o.period_s,
            "layer_compute_s": o.compute_per_layer_s,
            "layer_comm_s": o.comm_per_layer_s,
            "layer_exposed_comm_s": o.exposed_comm_per_layer_s,
            "layer_sm_slowdown_s": o.sm_slowdown_per_layer_s,
            "step_exposed_comm_s": self.exposed_comm_s,
            "eager_launch": self.eager,
        }


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
    """Time of one step. ``seqs_per_group`` sequences per DP group (mean) are split into ``pp``
    micro-batches (or ``micro_batches``); the busiest DP rank sets the pace; overlap='two-batch'
    splits each rank's sequences once more and overlaps the halves layer by layer (module doc)."""
    pp = layout.arr("pp")
    mb = pp if micro_batches is None else np.asarray(micro_batches, dtype=float)
    seqs_mb = np.asarray(seqs_per_group, dtype=float) / mb
    dp = layout.arr("dp")
    total = seqs_mb * dp  # sequences of one stage of one replica
    rank_seqs, rank_ctx = straggler.busiest_rank_load(
        total, dp, context, layout.dp_balance, layout.context_cv
    )
    full_ops, stats = step_ops(
        model, hw, layout, phase, rank_seqs, new_tokens, rank_ctx, routing, stage_seqs=total
    )
    full = evaluate_ops(full_ops, hw, layout)
    shape = np.broadcast(seqs_mb, pp, layout.arr("tp"), layout.arr("ep")).shape
    zero = np.zeros(shape)
    once_s, floor_once, p2p_s = _once_terms(full, zero)

    compute_s, comm_s, floor_stage = _stage_sums(full, zero)
    stage = compute_s + comm_s
    launches = _launches(full)
    overlap_report = None
    if model.is_moe:
        overlap_report = overlap.single_batch_layers(
            _layer_work(model, layout, full, None), model.num_moe_layers / pp
        )
    # Engines overlap only where there is an EP all-to-all to hide (SGLang's two-batch overlap
    # runs with DeepEP, i.e. MoE with DP attention) and every DP rank can split its batch in two
    # (its TBO preparer agrees across DP ranks); elsewhere the step runs as one batch.
    use = False
    if layout.overlap == "two-batch" and model.is_moe:
        use = _can_split(phase, total, dp, layout.dp_balance, rank_seqs) & (
            (layout.arr("ep") > 1) & (dp > 1)
        )
    if np.any(use):
        two = _two_batch_stage(model, hw, layout, phase, total, dp, rank_seqs, rank_ctx,
                               new_tokens, routing, zero)  # fmt: skip
        stage = np.where(use, two["stage"], stage)
        compute_s = np.where(use, two["compute_s"], compute_s)
        comm_s = np.where(use, two["comm_s"], comm_s)
        floor_stage = np.where(use, two["floor_s"], floor_stage)
        launches = np.where(use, two["launches"], launches)
        overlap_report = _where_overlap(use, two["moe"], overlap_report)
    stage, eager = _host_bound(
        stage, launches + _launches(full, once=True), layout, phase, rank_seqs, new_tokens
    )
    cycle = stage + once_s  # the last stage also runs the LM head
    time_s = pp * cycle + (pp - 1.0) * p2p_s
    floor_total = pp * (floor_stage + floor_once)
    exposed = np.maximum(stage - np.minimum(compute_s, stage), 0.0)
    return StepResult(
        time_s, floor_total, compute_s, comm_s, full, stats, overlap_report, exposed, eager
    )


# ---------------------------------------------------------------- helpers of step()


def _two_batch_stage(model, hw, layout, phase, total, dp, rank_seqs, rank_ctx, new_tokens,
                     routing, zero) -> dict:  # fmt: skip
    """Stage time with two micro-batches: MoE layers through the overlap schedule, dense layers
    both halves back to back."""
    pp = layout.arr("pp")
    halves = _two_batch_halves(phase, total, dp, rank_seqs, layout.dp_balance)
    slow_hw = _comm_sm_hw(hw, layout, phase)
    timed, works = [], []
    for h_seqs, h_stage in halves:
        ops_h, _ = step_ops(
            model, hw, layout, phase, h_seqs, new_tokens, rank_ctx, routing, stage_seqs=h_stage
        )
        t_h = evaluate_ops(ops_h, hw, layout)
        slow = None if slow_hw is None else evaluate_ops(ops_h, slow_hw, layout)
        timed.append(t_h)
        works.append(_layer_work(model, layout, t_h, slow))
    n_moe = (model.num_moe_layers if model.is_moe else 0) / pp
    n_dense = model.num_hidden_layers / pp - n_moe
    moe = overlap.two_batch_layers(phase, works[0], works[1], n_moe)
    dense = n_dense * sum(w.attn_prep + w.attn_core + w.dense_ffn + w.residual for w in works)
    sums = [_stage_sums(t, zero) for t in timed]
    return {
        "stage": moe.time_s + dense,
        "compute_s": sums[0][0] + sums[1][0],
        "comm_s": sums[0][1] + sums[1][1],
        "floor_s": sums[0][2] + sums[1][2],
        "launches": _launches(timed[0]) + _launches(timed[1]),
        "moe": moe,
    }


def _can_split(phase, total, dp, balance, rank_seqs):
    """Every DP rank holds at least two sequences (decode) or two tokens (prefill)."""
    if phase == "prefill":
        return np.ones(np.shape(rank_seqs), dtype=bool)
    n = np.ceil(np.asarray(total, dtype=float) - 1e-9)
    if balance == "even":
        fewest = np.floor(n / np.maximum(dp, 1.0))
    else:
        m = n / np.maximum(dp, 1.0)
        fewest = m - np.sqrt(m * (1.0 - 1.0 / np.maximum(dp, 1.0))) * straggler.blom_z(dp)
    return fewest >= 2.0


def _where_overlap(use, two: overlap.OverlapResult, one: overlap.OverlapResult):
    fields = ("time_s", "period_s", "compute_per_layer_s", "comm_per_layer_s",
              "exposed_comm_per_layer_s", "sm_slowdown_per_layer_s")  # fmt: skip
    return overlap.OverlapResult(
        **{f: np.where(use, getattr(two, f), getattr(one, f)) for f in fields}
    )


_COMM_CLASSES = ("allreduce", "alltoall", "p2p", "host")


def _once_terms(timings: list[OpTiming], zero):
    once_s, floor_once, p2p_s = zero.copy(), zero.copy(), zero.copy()
    for t in timings:
        if t.name == "pp.send":
            p2p_s = p2p_s + t.time_s
        elif not t.per_stage:
            once_s = once_s + t.time_s
            floor_once = floor_once + t.floor_s
    return once_s, floor_once, p2p_s


def _stage_sums(timings: list[OpTiming], zero):
    """(compute, communication, floor) of the per-stage operators."""
    compute_s, comm_s, floor_stage = zero.copy(), zero.copy(), zero.copy()
    for t in timings:
        if not t.per_stage:
            continue
        if t.kernel_class in _COMM_CLASSES:
            comm_s = comm_s + t.time_s
        else:
            compute_s = compute_s + t.time_s
            floor_stage = floor_stage + t.floor_s
    return compute_s, comm_s, floor_stage


def _launches(timings: list[OpTiming], once: bool = False):
    return sum(
        np.asarray(t.launches, dtype=float)
        for t in timings
        if (t.per_stage != once) and t.name != "pp.send"
    )


def _two_batch_halves(phase, total, dp, rank_seqs, balance):
    """(busiest-rank sequences, stage sequences) of the two micro-batches. Decode splits whole
    sequences rank by rank (ceil / floor); prefill splits each rank's tokens in halves
    (DeepSeek profile-data: prefill balances attention across the micro-batches, splitting a
    prompt if need be)."""
    if phase == "prefill":
        half = (rank_seqs / 2.0, total / 2.0)
        return [half, half]
    a, b = straggler.micro_batch_split(total, dp, balance)
    return [a, b]


def _comm_sm_hw(hw, layout: Layout, phase: str):
    """The profile as compute sees it while DeepEP's normal kernels hold their SMs (prefill
    with EP): fewer SMs, peak FLOP/s in proportion, HBM bandwidth kept (the remaining SMs
    still saturate it). None where communication takes no SMs (decode low-latency kernels)."""
    if phase != "prefill" or not np.any(layout.arr("ep") > 1):
        return None
    sms = hw.num_sms
    left = max(sms - overlap.DEEPEP_NORMAL_SMS, 1)
    scale = left / sms
    peaks = {k: v * scale for k, v in hw.peak_flops_per_s.items()}
    return hw.model_copy(update={"num_sms": left, "peak_flops_per_s": peaks})


# Which per-layer stage of moesim.cost.overlap each operator belongs to.
_PREP = {
    "attn.q_a_kv_a", "attn.q_b", "attn.kv_a", "attn.q", "attn.qkv", "attn.kv_b", "attn.rope",
    "attn.kv_write", "attn.quant", "attn.absorb",
}  # fmt: skip
_CORE = {"attn.core", "attn.core_sliding", "attn.o", "attn.allreduce", "moe.router"}
_EXPERTS = {"moe.experts", "moe.offload_fetch", "moe.quant"}
_POST = {"moe.allreduce"}


def _stage_of(name: str) -> str | None:
    if name in _PREP:
        return "attn_prep"
    if name in _CORE:
        return "attn_core"
    if name.startswith("moe.shared."):
        return "shared"
    if name in _EXPERTS:
        return "experts"
    if name in _POST:
        return "post"
    if name.startswith("residual_ffn."):
        return "residual"
    if name == "moe.dispatch":
        return "dispatch"
    if name == "moe.combine":
        return "combine"
    if name.startswith("ffn."):
        return "dense_ffn"
    if name == "norms":
        return "norms"
    return None


def _layer_work(model, layout: Layout, timings: list[OpTiming], slow_timings):
    """Per-layer stage durations of one micro-batch from its operator timings (an operator's
    step time over the layers it runs on; attention and norms average over all layers)."""
    pp = layout.arr("pp")
    n_layers = model.num_hidden_layers / pp
    moe_layers = (model.num_moe_layers if model.is_moe else 0) / pp
    n_moe = np.maximum(moe_layers, 1e-30)
    n_dense = np.maximum(n_layers - moe_layers, 1e-30)

    def collect(ts):
        acc: dict[str, np.ndarray] = {}
        for t in ts or []:
            if not t.per_stage:
                continue
            where = _stage_of(t.name)
            if where is None:
                continue
            if where in ("attn_prep", "attn_core", "norms", "residual"):
                per = t.time_s / n_layers
            elif where == "dense_ffn":
                per = t.time_s / n_dense
            else:
                per = t.time_s / n_moe
            if where == "norms":  # input norm before attention, post-attention norm after it
                acc["attn_prep"] = acc.get("attn_prep", 0.0) + per / 2.0
                acc["attn_core"] = acc.get("attn_core", 0.0) + per / 2.0
                continue
            acc[where] = acc.get(where, 0.0) + per
        return acc

    zero = np.asarray(0.0)

    def moe_stages(acc):
        # a residual FFN (Arctic) runs on every layer after the MoE output
        out = {n: np.asarray(acc.get(n, zero)) for n in overlap.STAGE_NAMES + overlap.COMM_NAMES}
        out["post"] = out["post"] + np.asarray(acc.get("residual", zero))
        return out

    acc = collect(timings)
    work = _LayerWork(
        **moe_stages(acc),
        dense_ffn=np.asarray(acc.get("dense_ffn", zero)),
        residual=np.asarray(acc.get("residual", zero)),
    )
    if slow_timings is not None:
        slow = moe_stages(collect(slow_timings))
        work.slow = {n: slow[n] for n in overlap.STAGE_NAMES}
    return work


@dataclass
class _LayerWork(overlap.LayerWork):
    dense_ffn: np.ndarray = 0.0  # the FFN of a dense layer (runs instead of the MoE stages)
    residual: np.ndarray = 0.0  # a dense FFN beside the MoE on every layer (Arctic)


def _host_bound(stage, launches, layout: Layout, phase, rank_seqs, new_tokens):
    """An engine launching a step eagerly (no CUDA graph) enqueues its kernels from the host
    ahead of the device; the step then takes max(device time, kernels x host launch cost)."""
    tokens = np.asarray(rank_seqs, dtype=float) * np.asarray(new_tokens, dtype=float)
    graphed = graph_captured(layout.framework, phase, rank_seqs, tokens, layout.arr("tp"))
    host_s = np.asarray(launches, dtype=float) * EAGER_HOST_LAUNCH_S
    return np.where(graphed, stage, np.maximum(stage, host_s)), ~graphed
