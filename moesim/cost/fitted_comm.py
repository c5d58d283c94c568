"""Collectives priced from α-β terms fitted per group size and per protocol regime.

A hardware profile's ``efficiency.collectives.fitted`` block
(:class:`moesim.spec.hardware.FittedCollectives`) holds, per collective and group size n, one
``[alpha_s, bandwidth]`` pair per regime, and a call takes the fastest regime — NCCL's tuner
picks, per call, the algorithm/protocol its cost model says is fastest (NCCL
``src/graph/tuning.cc``, ``ncclTopoTuneModel`` / ``getAlgoInfo``):

    t(op, n, S) = min_p  alpha_p(n) + S * f_p(n) / busBW_p(n)

with the bus factor f of each collective the bytes one GPU must move per byte of buffer
(Thakur, Rabenseifner & Gropp, "Optimization of collective communication operations in MPICH",
IJHPCA 2005; the busBW convention of nccl-tests ``doc/PERFORMANCE.md``):

- all_reduce (ring LL / LL128 / Simple): 2(n-1)/n — reduce-scatter then all-gather;
- all_reduce NVLS (NVLink SHARP, the switch reduces): 1 — each GPU sends its buffer into the
  switch and receives the result once (Klenk et al., "An in-network architecture for
  accelerating shared-memory multiprocessor collectives", ISCA 2020); it only wins above a size
  because its alpha is the largest;
- all_gather, reduce_scatter: (n-1)/n of the whole (output / input) buffer;
- alltoall: (n-1)/n of the send buffer leaves the GPU.

Regime names follow the order in which NCCL's tuner uses them as the message grows (LL, then
LL128, Simple, NVLS); the fit assigns them by that order, it does not observe the kernel.

Engines' own all-reduce (``custom_allreduce``): one-shot (every rank reads the n-1 peers'
buffers: f = n-1; vLLM ``custom_all_reduce.cuh``, TensorRT-LLM ``customAllReduceKernels``),
two-shot (reduce-scatter + all-gather through peer memory: f = 2(n-1)/n) and the NCCL call the
engine falls back to for large buffers: ring (``nccl``, f = 2(n-1)/n) or, on NVSwitch systems,
NVLS (``nvls``, f = 1; TensorRT-LLM's n = 8 fallback moves 1 GiB at a ring-equivalent 470 GB/s,
above the 450 GB/s NVLink line rate a ring could reach).

DeepEP (``deepep``): dispatch / combine t = t0 + B / BW, with B the bytes one GPU sends over its
slowest level (the NICs when the EP group spans nodes, NVLink otherwise): low-latency kernels
send one copy per (token, expert on another rank) pair (DeepEP ``internode_ll.cu``), normal
kernels one per distinct remote GPU within a node and one per distinct remote node across nodes
(DeepEP README; DeepSeek-V3 report arXiv:2412.19437 section 3.4).

Group sizes between two fitted ones: each regime's alpha and busBW are interpolated linearly in
log n (regimes fitted at both ends only). Outside the fitted sizes (n above the largest, e.g.
multi-node) every function here returns NaN and the caller keeps the two-level model of
:mod:`moesim.cost.comm` / :mod:`moesim.cost.collectives_ext`.
"""

from __future__ import annotations

from math import comb

import numpy as np

NCCL_OP_OF_CLASS = {
    "allreduce": "all_reduce",
    "allgather": "all_gather",
    "reducescatter": "reduce_scatter",
    "alltoall": "alltoall",
}
# DeepEP payload bytes per channel: bf16 2; fp8 1 plus one fp32 scale per 128 channels
# (DeepSeek-V3 report section 3.3); NVFP4 half a byte plus one fp8 scale per 16 (NVIDIA NVFP4).
PAYLOAD_BYTES_PER_CHANNEL = {
    "bf16": 2.0,
    "fp16": 2.0,
    "fp8": 1.0 + 4.0 / 128,
    "fp4": 0.5 + 1.0 / 16,
}


def bus_factor(kind: str, regime: str, group_size) -> np.ndarray:
    """Bytes one GPU moves per byte of buffer in ``regime`` of collective ``kind``
    (an NCCL op name, or ``custom`` for an engine all-reduce). See the module docstring."""
    n = np.asarray(group_size, dtype=float)
    ring = 2.0 * (n - 1.0) / np.maximum(n, 1.0)
    if kind == "all_reduce":
        return np.ones_like(n) if regime == "nvls" else ring
    if kind in ("all_gather", "reduce_scatter", "alltoall"):
        return (n - 1.0) / np.maximum(n, 1.0)
    if kind == "custom":
        if regime == "nvls":
            return np.ones_like(n)
        return n - 1.0 if regime == "oneshot" else ring
    raise ValueError(f"no bus factor for collective {kind!r}")


def terms_at(by_n: dict, n: float) -> dict[str, tuple[float, float]] | None:
    """The regimes' (alpha_s, bandwidth) at group size ``n``: the fitted ones, or interpolated
    linearly in log n between the two nearest fitted sizes (regimes fitted at both); None
    outside the fitted sizes."""
    if not by_n:
        return None
    sizes = sorted(int(k) for k in by_n)
    if n in sizes:
        return {p: (float(a), float(b)) for p, (a, b) in by_n[str(int(n))].items()}
    if n < sizes[0] or n > sizes[-1]:
        return None
    hi = next(s for s in sizes if s > n)
    lo = max(s for s in sizes if s < n)
    w = (np.log(n) - np.log(lo)) / (np.log(hi) - np.log(lo))
    a, b = by_n[str(lo)], by_n[str(hi)]
    common = [p for p in a if p in b]
    if not common:
        return None
    return {p: ((1 - w) * a[p][0] + w * b[p][0], (1 - w) * a[p][1] + w * b[p][1]) for p in common}


def regime_time_s(kind: str, terms: dict, message_bytes, group_size) -> np.ndarray:
    """min over the regimes of alpha + S * f / BW (0 for an empty buffer or one GPU)."""
    size = np.asarray(message_bytes, dtype=float)
    n = np.asarray(group_size, dtype=float)
    t = np.full(np.broadcast(size, n).shape, np.inf)
    for regime, (alpha, bw) in terms.items():
        t = np.minimum(t, alpha + size * bus_factor(kind, regime, n) / bw)
    return np.where((size > 0) & (n > 1), t, 0.0)


def table_time_s(kind: str, by_n: dict, message_bytes, group_size) -> np.ndarray:
    """:func:`regime_time_s` at each element's group size; NaN where ``by_n`` does not cover it."""
    size, n = np.broadcast_arrays(
        np.asarray(message_bytes, dtype=float), np.asarray(group_size, dtype=float)
    )
    out = np.full(size.shape, np.nan)
    out[n <= 1] = 0.0
    for g in sorted(set(n[n > 1].tolist())):  # not np.unique: it imports numpy.ma
        terms = terms_at(by_n or {}, float(g))
        if terms is None:
            continue
        sel = n == g
        out[sel] = regime_time_s(kind, terms, size[sel], g)
    return out


def nccl_time_s(fitted, op: str, message_bytes, group_size) -> np.ndarray:
    """NCCL ``op`` (all_reduce | all_gather | reduce_scatter | alltoall) from fitted terms; NaN
    where the profile has none for that group size."""
    by_n = (fitted.nccl or {}).get(op, {}) if fitted is not None else {}
    return table_time_s(op, by_n, message_bytes, group_size)


def custom_allreduce_time_s(fitted, impl: str, message_bytes, group_size) -> np.ndarray:
    """An engine's own all-reduce (its measured path, NCCL fallback included); NaN where absent."""
    by_n = (fitted.custom_allreduce or {}).get(impl, {}) if fitted is not None else {}
    return table_time_s("custom", by_n, message_bytes, group_size)


def engine_allreduce_time_s(
    fitted, message_bytes, group_size, framework: str | None = None, generic_custom=None
) -> np.ndarray:
    """All-reduce as an engine runs it: the engine's fitted curve where the profile has one for
    it, else the faster of fitted NCCL and ``generic_custom`` (the unfitted one-shot model of
    :func:`moesim.cost.collectives_ext.custom_allreduce_time_s`, if given). NaN where neither
    the engine's curve nor the NCCL terms cover the group size."""
    nccl = nccl_time_s(fitted, "all_reduce", message_bytes, group_size)
    if generic_custom is not None:
        gc = np.broadcast_to(np.asarray(generic_custom, dtype=float), nccl.shape)
        nccl = np.where(np.isfinite(nccl), np.minimum(nccl, gc), nccl)
    if framework and framework in (fitted.custom_allreduce or {}):
        own = custom_allreduce_time_s(fitted, framework, message_bytes, group_size)
        return np.where(np.isfinite(own), own, nccl)
    return nccl


# --- DeepEP ---------------------------------------------------------------------------------


def _p_hit(experts, top_k, groups) -> np.ndarray:
    """P(a token's top-k experts, drawn uniformly without replacement from E, include at least
    one of the E/G experts of a given group): 1 - C(E - E/G, k) / C(E, k)."""
    e, k, g = (
        a.astype(np.int64)
        for a in np.broadcast_arrays(
            np.asarray(experts, dtype=float), np.asarray(top_k, dtype=float),
            np.asarray(groups, dtype=float),
        )
    )  # fmt: skip
    out = np.zeros(e.shape)
    combos = np.unique(np.stack([e.ravel(), k.ravel(), g.ravel()], axis=1), axis=0)
    for ei, ki, gi in combos:
        per = ei // gi if gi > 1 else 0
        if per <= 0 or ki <= 0:
            continue
        p = 1.0 - comb(int(ei - per), int(ki)) / comb(int(ei), int(ki))
        out[(e == ei) & (k == ki) & (g == gi)] = p
    return out


def deepep_copies(impl: str, top_k, experts, ep, domain) -> tuple[np.ndarray, np.ndarray]:
    """Copies of one token a GPU sends (scale-up, scale-out) under uniform top-k routing, the
    counting of :func:`moesim.cost.ops._dispatch_destinations`: low-latency = k(ep-1)/ep
    (token, expert) pairs off the GPU, split by the share of peers outside the node
    (:func:`moesim.cost.comm.remote_domain_fraction`); normal = the distinct remote GPUs (one
    node), or the distinct remote nodes over the NICs plus the remaining distinct GPUs over
    NVLink."""
    ep = np.asarray(ep, dtype=float)
    domain = np.maximum(np.asarray(domain, dtype=float), 1.0)
    k = np.asarray(top_k, dtype=float)
    nodes = np.ceil(ep / domain)
    local_peers = np.minimum(ep, domain) - 1.0
    frac_out = np.where(ep > 1, np.clip(1.0 - local_peers / np.maximum(ep - 1.0, 1.0), 0, 1), 0)
    if impl == "deepep_ll":
        pairs = np.where(ep > 1, k * (ep - 1.0) / np.maximum(ep, 1.0), 0.0)
        return pairs * (1.0 - frac_out), pairs * frac_out
    remote_gpus = (ep - 1.0) * _p_hit(experts, top_k, ep)
    remote_nodes = (nodes - 1.0) * _p_hit(experts, top_k, nodes)
    multi = nodes > 1
    intra = np.where(multi, np.maximum(remote_gpus - remote_nodes, 0.0), remote_gpus)
    return intra, np.where(multi, remote_nodes, 0.0)


def deepep_payload_bytes(dtype: str, hidden) -> np.ndarray:
    """Bytes of one token's hidden vector on the wire in ``dtype`` (scales included)."""
    return np.asarray(hidden, dtype=float) * PAYLOAD_BYTES_PER_CHANNEL[dtype]


def deepep_phase_key(phase: str, dtype: str) -> str:
    """Key of a DeepEP phase in the profile: ``dispatch_fp8``, ``combine_bf16``, ..."""
    return f"{phase}_{dtype}"


def deepep_time_s(fitted, impl: str, key: str, intra_bytes, inter_bytes, ep) -> np.ndarray:
    """t0 + B / BW of a DeepEP dispatch or combine, B the bytes over the slowest level (the NICs
    if any cross them, else NVLink); 0 when nothing leaves the GPU; NaN where the profile has no
    fitted terms for this (impl, EP size, phase)."""
    intra = np.asarray(intra_bytes, dtype=float)
    inter = np.asarray(inter_bytes, dtype=float)
    ep = np.asarray(ep, dtype=float)
    intra, inter, ep = np.broadcast_arrays(intra, inter, ep)
    out = np.full(intra.shape, np.nan)
    by_ep = (fitted.deepep or {}).get(impl, {}) if fitted is not None else {}
    for g in np.unique(ep):
        terms = (by_ep.get(str(int(g))) or {}).get(key) if g > 1 else None
        sel = ep == g
        if terms is None:
            continue
        t0, bw = terms
        nbytes = np.where(inter[sel] > 0, inter[sel], intra[sel])
        out[sel] = t0 + nbytes / bw
    return np.where((intra + inter) > 0, out, 0.0)
