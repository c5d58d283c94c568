"""Computation/communication overlap of one MoE layer, stage by stage, for two micro-batches.

A two-stream timeline (Kahn-style list scheduling on a compute stream and one FIFO
communication stream) replays the per-layer operation order the engines publish:

- **prefill** — SGLang ``_compute_moe_deepseek_blog_prefill`` (``tbo_delta_stages = 0``),
  DeepSeek's prefill profile (github.com/deepseek-ai/profile-data, EP32): per micro-batch the
  stages [attention, send dispatch] [wait dispatch, routed experts, send combine]
  [shared experts, wait combine, output] run A0 B0 A1 B1 A2 B2 ..., so A's dispatch hides
  behind B's attention, B's dispatch behind A's experts, A's combine behind B's experts and
  B's combine behind the shared experts. DeepEP's normal kernels occupy SMs while they run
  (``Buffer.num_sms`` = 20 by default; DeepSeek-V3 report arXiv:2412.19437 section 3.2.2: 20 of
  the 132 SMs), so compute that overlaps them runs on the rest.
- **decode** — SGLang ``_compute_moe_deepseek_blog_decode`` (``tbo_delta_stages = 2``), DeepSeek's
  decode profile (EP128) and inference overview (attention split in two, a 5-stage pipeline):
  stages [output of the previous layer, attention prepare] [attention core, gate]
  [send dispatch, shared experts] [wait dispatch, experts, send combine] [wait combine], with B
  two stages behind A: A's dispatch hides behind its own shared experts and B's attention
  prepare, its combine behind B's attention core. DeepEP's low-latency kernels take no SMs
  while in flight ("after RDMA messages are issued, all GPU SMs are freed", profile-data).
- **single batch** (no overlap): every stage runs after the previous one; nothing is hidden.

A compute operation of duration w (all SMs) that runs while the communication stream is busy
progresses at rate r = w / w_slow (w_slow: the same work on the SMs the kernels leave), so it
finishes at t + w_slow if the communication outlasts it, else at t + w + (1 - r)·d where d is
the overlap. At any instant one of the streams is busy, so a layer never takes longer than
its compute plus its communication, nor less than either.

Everything broadcasts over numpy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# DeepEP normal (high-throughput) kernels: SMs taken while they run (deep_ep Buffer.num_sms
# default 20; DeepSeek-V3 report section 3.2.2). Low-latency kernels take none in flight.
DEEPEP_NORMAL_SMS = 20

STAGE_NAMES = ("attn_prep", "attn_core", "shared", "experts", "post")
COMM_NAMES = ("dispatch", "combine")


@dataclass
class LayerWork:
    """Per-layer durations (seconds, arrays) of one micro-batch.

    attn_prep : input norm, projections before attention, rotary, KV-cache write
    attn_core : attention core, output projection, post-attention norm, router (TP
        all-reduces included: they run on the compute stream)
    shared : shared experts; experts : routed experts (+ host fetches); post : what follows
        the combine (MoE output reduction, residual FFN)
    dispatch, combine : the EP all-to-alls
    slow : the compute stages timed on the SMs that communication kernels leave (defaults to
        the full-SM times: the kernels take no SMs)
    """

    attn_prep: np.ndarray
    attn_core: np.ndarray
    shared: np.ndarray
    experts: np.ndarray
    post: np.ndarray
    dispatch: np.ndarray
    combine: np.ndarray
    slow: dict = field(default_factory=dict)

    def compute_s(self) -> np.ndarray:
        return sum(np.asarray(getattr(self, n), dtype=float) for n in STAGE_NAMES)

    def comm_s(self) -> np.ndarray:
        return sum(np.asarray(getattr(self, n), dtype=float) for n in COMM_NAMES)

    def slow_time(self, name: str) -> np.ndarray:
        full = np.asarray(getattr(self, name), dtype=float)
        return np.maximum(np.asarray(self.slow.get(name, full), dtype=float), full)


# One layer of one micro-batch as stages of actions: ("c", stage) compute, ("send", comm)
# enqueue on the communication stream, ("wait", comm) block the compute stream until done.
PREFILL_STAGES = (
    (("c", "attn_prep"), ("c", "attn_core"), ("send", "dispatch")),
    (("wait", "dispatch"), ("c", "experts"), ("send", "combine")),
    (("c", "shared"), ("wait", "combine"), ("c", "post")),
)
PREFILL_DELTA = 0
DECODE_STAGES = (
    (("c", "attn_prep"),),
    (("c", "attn_core"),),
    (("send", "dispatch"), ("c", "shared")),
    (("wait", "dispatch"), ("c", "experts"), ("send", "combine")),
    (("wait", "combine"),),
    # the output runs in the next layer's first stage (no yield between them)
)
DECODE_DELTA = 2


def _stages(phase: str, layers: int) -> list[list[tuple]]:
    """All stages of one micro-batch over ``layers`` layers, tagged with their layer."""
    if phase == "prefill":
        out = []
        for li in range(layers):
            out += [[(a, n, li) for a, n in st] for st in PREFILL_STAGES]
        return out
    out: list[list[tuple]] = []
    for li in range(layers):
        for si, st in enumerate(DECODE_STAGES):
            acts = [(a, n, li) for a, n in st]
            if si == 0 and li > 0:
                acts = [("c", "post", li - 1)] + acts
            out.append(acts)
    out.append([("c", "post", layers - 1)])
    return out


def _order(phase: str, layers: int) -> list[tuple[int, list[tuple]]]:
    """Interleaving of the two micro-batches' stages (SGLang execute_overlapped_operations:
    A runs ``delta`` stages ahead, then A and B alternate, then B finishes)."""
    delta = PREFILL_DELTA if phase == "prefill" else DECODE_DELTA
    a = _stages(phase, layers)
    b = _stages(phase, layers)
    order = [(0, st) for st in a[:delta]]
    for i in range(len(a) - delta):
        order.append((0, a[delta + i]))
        order.append((1, b[i]))
    order += [(1, st) for st in b[len(a) - delta :]]
    return order


def _run_compute(t, work, slow, comm_free):
    """Finish time of a compute action of full-SM duration ``work`` started at ``t`` while the
    communication stream is busy until ``comm_free`` (SM-sharing rule in the module doc)."""
    d = np.maximum(comm_free - t, 0.0)
    r = np.where(slow > 0, work / np.where(slow > 0, slow, 1.0), 1.0)
    inside = work <= r * d
    return np.where(inside, t + slow, t + work + (1.0 - r) * d)


@dataclass
class OverlapResult:
    """Time of the MoE layers of one stage under two-batch overlap, and what it is made of."""

    time_s: np.ndarray  # all simulated-and-extrapolated MoE layers, both micro-batches
    period_s: np.ndarray  # steady-state time of one layer
    compute_per_layer_s: np.ndarray  # both micro-batches, all SMs
    comm_per_layer_s: np.ndarray  # both micro-batches
    exposed_comm_per_layer_s: np.ndarray  # period - compute: communication not hidden
    sm_slowdown_per_layer_s: np.ndarray  # part of the exposed time: compute slowed by comm SMs


def two_batch_layers(phase: str, a: LayerWork, b: LayerWork, layers, sim_layers: int = 3):
    """Time of ``layers`` MoE layers with micro-batches ``a`` and ``b`` overlapped.

    The timeline is simulated for ``min(layers, sim_layers)`` layers; the rest repeat the last
    simulated layer's period (a max-plus system settles into its period within a layer or two).
    """
    layers_arr = np.asarray(layers, dtype=float)
    n_sim = int(max(1, min(sim_layers, int(np.ceil(np.max(layers_arr))) or 1)))
    works = (a, b)
    t = np.asarray(0.0)
    comm_free = np.asarray(0.0)
    done: dict = {}
    layer_end = {}
    busy = np.asarray(0.0)
    for mb, stage in _order(phase, n_sim):
        w = works[mb]
        for action, name, li in stage:
            if action == "c":
                full = np.asarray(getattr(w, name), dtype=float)
                slow = w.slow_time(name)
                end = _run_compute(t, full, slow, comm_free)
                busy = busy + (end - t)
                t = end
            elif action == "send":
                start = np.maximum(t, comm_free)
                comm_free = start + np.asarray(getattr(w, name), dtype=float)
                done[(mb, name, li)] = comm_free
            else:
                t = np.maximum(t, done[(mb, name, li)])
            if mb == 1:
                layer_end[li] = t
    total_sim = t
    if n_sim >= 2:
        period = layer_end[n_sim - 1] - layer_end[n_sim - 2]
    else:
        period = total_sim
    compute = a.compute_s() + b.compute_s()
    comm = a.comm_s() + b.comm_s()
    # the period can only be estimated within the layer's bounds (module doc)
    period = np.clip(period, np.maximum(compute, comm), compute + comm)
    extra = np.maximum(layers_arr - n_sim, 0.0)
    time = np.where(layers_arr >= n_sim, total_sim + extra * period, layers_arr * period)
    time = np.where(layers_arr > 0, time, 0.0)
    slowdown = np.maximum(busy / n_sim - compute, 0.0)
    return OverlapResult(
        time_s=time,
        period_s=period,
        compute_per_layer_s=compute,
        comm_per_layer_s=comm,
        exposed_comm_per_layer_s=np.maximum(period - compute, 0.0),
        sm_slowdown_per_layer_s=np.minimum(slowdown, np.maximum(period - compute, 0.0)),
    )


def single_batch_layers(work: LayerWork, layers) -> OverlapResult:
    """No overlap: each layer is its compute plus its communication."""
    layers = np.asarray(layers, dtype=float)
    compute, comm = work.compute_s(), work.comm_s()
    return OverlapResult(
        time_s=layers * (compute + comm),
        period_s=compute + comm,
        compute_per_layer_s=compute,
        comm_per_layer_s=comm,
        exposed_comm_per_layer_s=comm,
        sm_slowdown_per_layer_s=np.zeros(np.shape(compute)),
    )
