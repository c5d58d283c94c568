"""Protocol-aware collectives on top of :mod:`moesim.cost.comm`: what NCCL and the engines'
own all-reduce kernels actually do at each message size.

:mod:`moesim.cost.comm` prices a collective with one latency and one bandwidth per network
level. Real all-reduces switch protocol with the message size (NCCL's cost model picks the
fastest of Ring-LL, Ring-LL128, Ring-Simple and NVLS per call; NCCL ``src/graph/tuning.cc``):

    t(p) = baseLat[p] + nsteps * hwLat[p] + S / algBw(p),   nsteps = 2 (n - 1) for a ring
    algBw(p) = busBw(p) * n / nsteps                        (Thakur, Rabenseifner & Gropp,
                                                              IJHPCA 2005: 2(p-1)a + 2(p-1)/p nb)

with, per protocol, the bus bandwidth a fraction of the link's: LL moves 8-byte words with a
4-byte flag (x 0.5, capped at NCCL's ``llMaxBws``), LL128 120 of 128 bytes (x 0.92), Simple all
of it; NVLS (NVLink SHARP) sends and receives the buffer once through the switch but starts
only after a 25 us setup, so it wins only above a size threshold. The latencies below are
NCCL's own tuning constants (``baseLat``, ``hwLat``; NCCL 2.2x, Hopper); the bandwidths are the
hardware profile's achievable ones (:class:`moesim.cost.comm.Network`), so a fitted profile
(scale-up / scale-out efficiency, NVLS speed-up) moves them. When a profile's calibration
block gains per-protocol α-β (NCCL tables), those should replace the constants here.

Engines also ship their own small-message all-reduce (TensorRT-LLM ``customAllReduceKernels``,
vLLM ``custom_all_reduce.cuh``, SGLang's port of it): in one-shot form every rank reads the
peers' buffers over NVLink, (n-1)·S per GPU, after a barrier of a few microseconds. TensorRT-LLM and SGLang
can fuse the residual add + RMSNorm that follows into that kernel (TensorRT-LLM
``AllReduceFusionOp.RESIDUAL_RMS_NORM``; SGLang ``--enable-flashinfer-allreduce-fusion``):
:func:`fuses_allreduce_norm` says where, and :mod:`moesim.cost.ops` drops the norm kernel.

Everything broadcasts over numpy arrays; bytes are each GPU's whole buffer.
"""

from __future__ import annotations

import numpy as np

from moesim.cost import comm
from moesim.spec.deployment import FRAMEWORKS  # noqa: F401 (the engines named here)

# NCCL src/graph/tuning.cc (2.2x): latencies in microseconds.
NCCL_BASE_LAT_US = {"LL": 6.6, "LL128": 14.0, "Simple": 8.4}  # Ring
NCCL_HW_LAT_NVLINK_US = {"LL": 0.6, "LL128": 1.9, "Simple": 3.4}  # Ring, per step
NCCL_HW_LAT_NET_US = {"LL": 2.7, "LL128": 4.0, "Simple": 14.0}  # Ring, per network step
NCCL_NVLS_LAT_US = 25.0  # hwLat[NVLINK][NVLS][Simple]
NCCL_NVLS_NET_LAT_US = 18.0  # hwLat[NET][NVLS][Simple]
# Fraction of the bus bandwidth each protocol delivers (tuning.cc: LL x .5, LL128 x .92).
NCCL_PROTOCOL_BW = {"LL": 0.5, "LL128": 0.92, "Simple": 1.0}
# llMaxBws, Hopper: one node 141 GB/s, two nodes 45, more 35 (bus bandwidth caps for LL).
NCCL_LL_MAX_BUSBW = (141e9, 45e9, 35e9)

# Engines' custom all-reduce: barrier latency of the smallest message, measured on H100 SXM
# (TensorRT-LLM 1.3.0rc20 custom all-reduce, 128 bf16 elements: 2.66 us at 2 GPUs, 2.80 at 4,
# 3.23 at 8; aiconfigurator-core 0.12.0 systems/data/h100_sxm/comm/trtllm/1.3.0rc20
# custom_allreduce_perf). a + b (n - 1) through those points.
CUSTOM_AR_LAT_US = (2.55, 0.095)
# Largest buffer the engines send through their own kernel before falling back to NCCL
# (vLLM CustomAllreduce max_size default 8 MiB; TensorRT-LLM and SGLang use the same order).
CUSTOM_AR_MAX_BYTES = 8 * 2**20


def _ll_cap(domains) -> np.ndarray:
    m = np.asarray(domains, dtype=float)
    return np.where(m <= 1, NCCL_LL_MAX_BUSBW[0], np.where(m <= 2, NCCL_LL_MAX_BUSBW[1],
                    NCCL_LL_MAX_BUSBW[2]))  # fmt: skip


def nccl_allreduce_times_s(message_bytes, group_size, net: comm.Network) -> dict:
    """Time of an all-reduce under each NCCL algorithm/protocol: {'LL', 'LL128', 'Simple',
    'NVLS'} -> seconds (inf where unavailable). Packed groups span ceil(n/D) domains.

    Within a domain the ring runs over NVLink; across domains the ring's 2(m-1) network steps
    pay the network latency and the hierarchical shard 2(m-1)/m·S/D crosses the NICs, as
    :func:`moesim.cost.comm.allreduce_time_s` prices it.
    """
    size = np.asarray(message_bytes, dtype=float)
    n = np.asarray(group_size, dtype=float)
    d = np.minimum(n, net.domain_size)
    m = comm.domains_spanned(n, net.domain_size)
    steps = 2.0 * (n - 1.0)
    inter_steps = 2.0 * (m - 1.0)
    intra_bytes = 2.0 * (d - 1.0) / np.maximum(d, 1.0) * size
    inter_bytes = 2.0 * (m - 1.0) / np.maximum(m, 1.0) * size / np.maximum(d, 1.0)
    out = {}
    for p, factor in NCCL_PROTOCOL_BW.items():
        lat_us = (
            NCCL_BASE_LAT_US[p]
            + (steps - inter_steps) * NCCL_HW_LAT_NVLINK_US[p]
            + inter_steps * NCCL_HW_LAT_NET_US[p]
        )
        up_bw = net.scaleup_bytes_per_s * factor
        out_bw = net.scaleout_bytes_per_s * factor
        if p == "LL":
            up_bw = np.minimum(up_bw, _ll_cap(m))
            out_bw = np.minimum(out_bw, _ll_cap(m))
        t = lat_us * 1e-6 + intra_bytes / up_bw + inter_bytes / out_bw
        out[p] = np.where((n > 1) & (size > 0), t, 0.0)
    if net.in_switch_reduction:
        # NVLS: the switch reduces; a GPU's traffic is the ring's divided by the profile's
        # measured NVLS speed-up (the same rule as comm.allreduce_time_s). One domain only:
        # NCCL disables NVLS across nodes without CollNet.
        speedup = max(net.in_switch_speedup, 1.0)
        t = NCCL_NVLS_LAT_US * 1e-6 + intra_bytes / speedup / net.scaleup_bytes_per_s
        out["NVLS"] = np.where((n > 1) & (size > 0), np.where(m <= 1, t, np.inf), 0.0)
    else:
        out["NVLS"] = np.where((n > 1) & (size > 0), np.inf, 0.0)
    return out


def custom_allreduce_time_s(message_bytes, group_size, net: comm.Network) -> np.ndarray:
    """An engine's own one-shot NVLink all-reduce (one node, buffers up to CUSTOM_AR_MAX_BYTES):
    every rank reads the n - 1 peers' buffers after one barrier, (n-1)·S per GPU; inf where
    it does not apply. (Two-shot variants exist; measured, they are no faster than NCCL at
    the sizes where one-shot stops paying, so NCCL covers that range here.)"""
    size = np.asarray(message_bytes, dtype=float)
    n = np.asarray(group_size, dtype=float)
    lat = (CUSTOM_AR_LAT_US[0] + CUSTOM_AR_LAT_US[1] * (n - 1.0)) * 1e-6
    t = lat + (n - 1.0) * size / net.scaleup_bytes_per_s
    ok = (n <= net.domain_size) & (size <= CUSTOM_AR_MAX_BYTES)
    return np.where((n > 1) & (size > 0), np.where(ok, t, np.inf), 0.0)


def allreduce_time_s(message_bytes, group_size, net: comm.Network, custom: bool = True):
    """All-reduce as an engine runs it: the fastest NCCL protocol (NCCL's tuner takes the
    minimum of its cost model) or, with ``custom``, the engine's own one-shot kernel, which
    TensorRT-LLM, vLLM and SGLang all use for small buffers on one node."""
    times = nccl_allreduce_times_s(message_bytes, group_size, net)
    t = np.minimum.reduce([np.asarray(v, dtype=float) for v in times.values()])
    if custom:
        t = np.minimum(t, custom_allreduce_time_s(message_bytes, group_size, net))
    return t


def allreduce_protocol(message_bytes, group_size, net: comm.Network, custom: bool = True):
    """Name of the protocol :func:`allreduce_time_s` uses: LL, LL128, Simple, NVLS or custom."""
    times = nccl_allreduce_times_s(message_bytes, group_size, net)
    if custom:
        times["custom"] = custom_allreduce_time_s(message_bytes, group_size, net)
    names = np.asarray(list(times), dtype=object)
    stack = np.stack(np.broadcast_arrays(*[np.asarray(v, dtype=float) for v in times.values()]))
    return names[np.argmin(stack, axis=0)]


def fuses_allreduce_norm(framework) -> bool:
    """Engines that fuse the TP all-reduce with the following residual add + RMSNorm:
    TensorRT-LLM (AllReduceFusionOp.RESIDUAL_RMS_NORM) and SGLang (FlashInfer all-reduce
    fusion). vLLM runs them as two kernels."""
    return framework in ("trtllm", "sglang")


def deepep_ll_messages(token_count, top_k) -> np.ndarray:
    """Messages one GPU sends in a DeepEP low-latency dispatch: one per (token, expert) pair
    (DeepEP ``internode_ll.cu``: each pair is its own RDMA write into the expert's slot)."""
    return np.asarray(token_count, dtype=float) * np.asarray(top_k, dtype=float)
