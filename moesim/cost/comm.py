"""Collectives on a two-level network: a scale-up domain (NVLink / xGMI, ``D`` GPUs sharing a
switch, per-GPU bandwidth ``B_up``) and a scale-out network (one NIC per GPU, ``B_out``).

Every time is alpha-beta (Hockney, "The communication challenge for MPP", Parallel Computing
1994): t = alpha + bytes / bandwidth, with achievable bandwidths and latencies taken from the
hardware profile's calibration block (``efficiency.collectives``), never raw line rates. Group
members are packed into as few domains as possible (ranks 0..D-1 share a domain), as launchers
place TP/EP ranks. Bytes are per GPU, per direction; everything broadcasts over numpy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Network:
    """Achievable network parameters of one GPU, derived once from a hardware profile."""

    domain_size: int
    scaleup_bytes_per_s: float
    scaleup_latency_s: float
    scaleout_bytes_per_s: float
    scaleout_latency_s: float
    host_bytes_per_s: float
    in_switch_reduction: bool
    in_switch_speedup: float
    # efficiency.collectives.fitted (per-group-size terms, moesim.cost.fitted_comm); None = none
    fitted: object = field(default=None, compare=False)

    @classmethod
    def from_hardware(cls, hw) -> Network:
        c = hw.efficiency.collectives
        return cls(
            domain_size=int(hw.scaleup_domain_size),
            scaleup_bytes_per_s=hw.scaleup_bandwidth_bytes_per_s * c.scaleup_bandwidth_efficiency,
            scaleup_latency_s=c.scaleup_latency_s,
            scaleout_bytes_per_s=hw.scaleout_bandwidth_bytes_per_s
            * c.scaleout_bandwidth_efficiency,
            scaleout_latency_s=c.scaleout_latency_s,
            host_bytes_per_s=hw.host_link_bandwidth_bytes_per_s * c.host_link_efficiency,
            in_switch_reduction=bool(hw.scaleup_in_switch_reduction),
            in_switch_speedup=float(getattr(c, "allreduce_in_switch_speedup", 1.0)),
            fitted=getattr(c, "fitted", None),
        )


def domains_spanned(group_size, domain_size: int) -> np.ndarray:
    """Number of scale-up domains a packed group of ``group_size`` GPUs occupies."""
    return np.ceil(np.asarray(group_size, dtype=float) / domain_size)


def allreduce_time_s(message_bytes, group_size, net: Network) -> np.ndarray:
    """All-reduce of ``message_bytes`` (each GPU's full buffer) over ``group_size`` GPUs.

    Within one domain: ring, each GPU sends 2(n-1)/n of the buffer (Patarasuk & Yuan, "Bandwidth
    optimal all-reduce algorithms", JPDC 2009); with in-switch reduction (NVLink SHARP) each GPU
    sends and receives the buffer about once, faster by the profile's measured speed-up.
    Across domains: hierarchical — reduce-scatter inside the domain, all-reduce of the 1/D shard
    across the m domains over the NICs, all-gather inside (as NCCL's tree/ring over rails does):
    t = intra(2(D-1)/D * S) + inter(2(m-1)/m * S/D), both alpha-beta.
    """
    size = np.asarray(message_bytes, dtype=float)
    n = np.asarray(group_size, dtype=float)
    if not np.any((n > 1) & (size > 0)):
        return np.zeros(np.broadcast(size, n).shape)
    d = np.minimum(n, net.domain_size)
    m = domains_spanned(n, net.domain_size)
    intra_bytes = 2.0 * (d - 1.0) / np.maximum(d, 1.0) * size
    if net.in_switch_reduction:
        intra_bytes = intra_bytes / max(net.in_switch_speedup, 1.0)
    intra = np.where(d > 1, net.scaleup_latency_s + intra_bytes / net.scaleup_bytes_per_s, 0.0)
    inter_bytes = 2.0 * (m - 1.0) / np.maximum(m, 1.0) * size / np.maximum(d, 1.0)
    inter = np.where(m > 1, net.scaleout_latency_s + inter_bytes / net.scaleout_bytes_per_s, 0.0)
    return np.where((n > 1) & (size > 0), intra + inter, 0.0)


def allgather_time_s(message_bytes, group_size, net: Network) -> np.ndarray:
    """All-gather (or reduce-scatter) of a ``message_bytes`` whole buffer over ``group_size``
    GPUs: one half of the ring all-reduce, (n-1)/n of the buffer per GPU (Thakur, Rabenseifner &
    Gropp, IJHPCA 2005); across domains hierarchical as :func:`allreduce_time_s`:
    t = intra((D-1)/D * S) + inter((m-1)/m * S/D), both alpha-beta."""
    size = np.asarray(message_bytes, dtype=float)
    n = np.asarray(group_size, dtype=float)
    d = np.minimum(n, net.domain_size)
    m = domains_spanned(n, net.domain_size)
    intra_bytes = (d - 1.0) / np.maximum(d, 1.0) * size
    intra = np.where(d > 1, net.scaleup_latency_s + intra_bytes / net.scaleup_bytes_per_s, 0.0)
    inter_bytes = (m - 1.0) / np.maximum(m, 1.0) * size / np.maximum(d, 1.0)
    inter = np.where(m > 1, net.scaleout_latency_s + inter_bytes / net.scaleout_bytes_per_s, 0.0)
    return np.where((n > 1) & (size > 0), intra + inter, 0.0)


def remote_domain_fraction(group_size, domain_size: int) -> np.ndarray:
    """Fraction of a GPU's peers in a packed group that sit outside its own scale-up domain."""
    n = np.asarray(group_size, dtype=float)
    local_peers = np.minimum(n, domain_size) - 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(n > 1, 1.0 - local_peers / np.maximum(n - 1.0, 1.0), 0.0)
    return np.clip(frac, 0.0, 1.0)


def alltoall_bytes(
    token_count, remote_gpus_per_token, bytes_per_token, group_size, domain_size: int
):
    """Bytes one GPU sends in an EP dispatch (or combine): split into scale-up and scale-out parts.

    Each token goes once to each distinct remote GPU holding one of its experts (DeepEP / DeepSeek-V3
    report, arXiv:2412.19437 section 3.4); destinations are spread over the group, so the share that
    leaves the domain is :func:`remote_domain_fraction`.
    """
    total = (
        np.asarray(token_count, dtype=float)
        * np.asarray(remote_gpus_per_token, dtype=float)
        * np.asarray(bytes_per_token, dtype=float)
    )
    frac_out = remote_domain_fraction(group_size, domain_size)
    return total * (1.0 - frac_out), total * frac_out


def alltoall_time_s(intra_bytes, inter_bytes, net: Network) -> np.ndarray:
    """The two levels move their bytes concurrently; the slower one bounds the collective."""
    intra_bytes = np.asarray(intra_bytes, dtype=float)
    inter_bytes = np.asarray(inter_bytes, dtype=float)
    intra = np.where(
        intra_bytes > 0, net.scaleup_latency_s + intra_bytes / net.scaleup_bytes_per_s, 0.0
    )
    inter = np.where(
        inter_bytes > 0, net.scaleout_latency_s + inter_bytes / net.scaleout_bytes_per_s, 0.0
    )
    return np.maximum(intra, inter)


def p2p_time_s(message_bytes, crosses_domain, net: Network) -> np.ndarray:
    """Point-to-point send between pipeline stages (over NVLink, or the NIC across domains)."""
    size = np.asarray(message_bytes, dtype=float)
    up = net.scaleup_latency_s + size / net.scaleup_bytes_per_s
    out = net.scaleout_latency_s + size / net.scaleout_bytes_per_s
    return np.where(size > 0, np.where(crosses_domain, out, up), 0.0)


def host_transfer_time_s(message_bytes, net: Network) -> np.ndarray:
    """Host-to-device copy over the host link (PCIe), e.g. an offloaded expert fetched on a miss."""
    size = np.asarray(message_bytes, dtype=float)
    return np.where(size > 0, size / net.host_bytes_per_s, 0.0)
