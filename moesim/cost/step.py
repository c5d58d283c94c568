"""Time of one forward step: every operator of the busiest stage timed with the hardware
profile's calibrated roofline and collectives, then combined through the pipeline.

With ``pp`` stages the batch is split into ``pp`` micro-batches that keep every stage busy; a
token passes all stages, so a step's latency is pp x (slowest stage time) plus the sends
between stages (GPipe, Huang et al. 2019).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.cost import comm
from moesim.cost.ops import Op, step_ops
from moesim.cost.roofline import RooflineParams, floor_s, op_time_s
from moesim.spec.deployment import Layout


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
