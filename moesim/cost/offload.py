"""Expert offload: a share of each GPU's routed experts lives in host memory and crosses the host
link (PCIe) when a step activates it.

Policy. Each GPU keeps a *static cache of its hottest experts* (by routing popularity) resident
in HBM and fetches the others on demand. Under the independent reference model (every step draws
its experts independently from a fixed popularity), keeping the most popular items is the optimal
fixed-content cache (Coffman & Denning, *Operating Systems Theory*, 1973, section 6.2, policy A0);
LFU converges to it. ``policy="lru"`` gives instead the hit rate of an LRU cache of the same size
through Che's approximation (Che, Tung & Wang, IEEE JSAC 20(7), 2002): an item is a hit if it was
referenced within the cache's characteristic time ``t_C``, where ``t_C`` solves
``sum_e (1 - (1 - a_e)^t_C) = C``.

Symbols: E = routed experts, k = experts per token, T = tokens reaching the layer in one step,
π_e = probability a token's top-k contains expert e (:mod:`moesim.cost.routing.inclusion`),
a_e = 1 - (1 - π_e)^T = probability the step activates expert e, f = offloaded fraction.
Expected fetches per GPU per step = (1 / ep) * sum over non-resident experts of a_e. For uniform
routing every a_e is equal and the hit rate is the resident fraction 1 - f of the active
experts; prefill (T in the thousands) activates nearly every expert, so it fetches nearly every
non-resident expert on every MoE layer.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from moesim.errors import MoesimError
from moesim.spec.dtypes import dtype_bytes

POLICIES = ("lfu", "lru")


@lru_cache(maxsize=64)
def _inclusion_sorted(dist, num_experts: int, top_k: int) -> np.ndarray:
    if dist is None or getattr(dist, "kind", "uniform") == "uniform":
        return np.full(num_experts, top_k / num_experts)
    from moesim.cost.routing.inclusion import inclusion_probs

    p = np.asarray(dist.probs(num_experts), dtype=float)
    if p.ndim == 2:  # per-layer histogram: the mean popularity over layers
        p = p.mean(axis=0)
    return np.sort(inclusion_probs(p, top_k))[::-1]


def inclusion_sorted(dist, num_experts: int, top_k: int) -> np.ndarray:
    """π_e sorted hottest first, ``[E]`` (cached per distribution when it is hashable)."""
    try:
        hash(dist)
    except TypeError:
        return _inclusion_sorted.__wrapped__(dist, int(num_experts), int(top_k))
    return _inclusion_sorted(dist, int(num_experts), int(top_k))


def activation_probs(pi_sorted: np.ndarray, tokens) -> np.ndarray:
    """a_e = 1 - (1 - π_e)^T: probability a step of T tokens activates expert e, ``[..., E]``."""
    T = np.asarray(tokens, dtype=float)[..., None]
    return -np.expm1(T * np.log1p(-np.minimum(pi_sorted, 1.0 - 1e-15)))


def _lru_resident_weight(a: np.ndarray, cached: np.ndarray) -> np.ndarray:
    """Che approximation: hit probability per expert for an LRU cache of ``cached`` experts.

    References arrive once per step with probability a_e; t_C (in steps) solves
    sum_e 1 - (1 - a_e)^t_C = C by bisection on log t_C (vectorised over the leading axes).
    """
    E = a.shape[-1]
    cached = np.clip(np.asarray(cached, dtype=float), 0.0, E)
    log1m = np.log1p(-np.minimum(a, 1.0 - 1e-15))
    lo = np.full(np.broadcast(a[..., 0], cached).shape, -30.0)
    hi = np.full_like(lo, 30.0)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        filled = np.sum(-np.expm1(np.exp(mid)[..., None] * log1m), axis=-1)
        lo, hi = np.where(filled < cached, mid, lo), np.where(filled < cached, hi, mid)
    t_c = np.exp(0.5 * (lo + hi))[..., None]
    hit = -np.expm1(t_c * log1m)
    return np.where((cached >= E)[..., None], 1.0, np.where((cached <= 0)[..., None], 0.0, hit))


def expected_misses(
    stats=None,
    dist=None,
    *,
    num_experts: int,
    top_k: int,
    tokens=None,
    cache_fraction,
    ep=None,
    policy: str = "lfu",
) -> np.ndarray:
    """Expected expert fetches from host memory per step, per GPU, per MoE layer.

    stats : routing statistics of the step (supplies ``tokens`` and ``ep`` when they are not given)
    dist : routing distribution (``.probs(E)``); None is uniform
    tokens : tokens reaching the MoE layer in one step (the whole EP group), array
    cache_fraction : share of each GPU's experts resident in HBM (1 - offload fraction), array
    ep : GPUs the experts are spread over (misses divide evenly among them)
    """
    if policy not in POLICIES:
        raise MoesimError(f"offload policy {policy!r} must be one of {', '.join(POLICIES)}")
    if tokens is None:
        tokens = _tokens_of(stats, num_experts, top_k)
    if ep is None:
        ep = _ep_of(stats, tokens, top_k) if stats is not None else 1.0
    E = int(num_experts)
    pi = inclusion_sorted(dist, E, top_k)
    a = activation_probs(pi, tokens)  # [..., E], hottest first
    cached = np.clip(np.asarray(cache_fraction, dtype=float), 0.0, 1.0) * E
    if policy == "lfu":
        rank = np.arange(E, dtype=float)
        resident = np.clip(cached[..., None] - rank, 0.0, 1.0)  # fractional expert at the boundary
    else:
        resident = _lru_resident_weight(a, cached)
    return np.sum(a * (1.0 - resident), axis=-1) / np.asarray(ep, dtype=float)


def hit_rate(
    dist=None, *, num_experts: int, top_k: int, tokens, cache_fraction, policy: str = "lfu"
) -> np.ndarray:
    """Share of a step's activated experts that are already resident in HBM."""
    pi = inclusion_sorted(dist, int(num_experts), top_k)
    active = np.sum(activation_probs(pi, tokens), axis=-1)
    misses = expected_misses(
        dist=dist,
        num_experts=num_experts,
        top_k=top_k,
        tokens=tokens,
        cache_fraction=cache_fraction,
        ep=1.0,
        policy=policy,
    )
    return np.where(active > 0, 1.0 - misses / np.where(active > 0, active, 1.0), 1.0)


def _tokens_of(stats, num_experts, top_k):
    """T from routing statistics: tokens_per_expert = T k / E."""
    if stats is None:
        raise MoesimError("expected_misses needs tokens= or routing statistics")
    return np.asarray(stats.tokens_per_expert, dtype=float) * num_experts / top_k


def _ep_of(stats, tokens, top_k):
    """G from routing statistics: mean_gpu_load = T k / G."""
    load = np.asarray(stats.mean_gpu_load, dtype=float)
    assignments = np.asarray(tokens, dtype=float) * top_k
    return np.where(load > 0, assignments / np.where(load > 0, load, 1.0), 1.0)


def make_offload_misses(dist, num_experts: int, top_k: int, policy: str = "lfu"):
    """A ``RoutingOptions.offload_misses`` hook: ``hook(stats, offload_fraction) -> fetches``."""

    def hook(stats, offload_fraction):
        # Misses on the busiest GPU: its active experts times the miss ratio of the policy
        # (equals the default active x offload fraction for uniform routing).
        tokens = _tokens_of(stats, num_experts, top_k)
        miss_ratio = 1.0 - hit_rate(
            dist,
            num_experts=num_experts,
            top_k=top_k,
            tokens=tokens,
            cache_fraction=1.0 - np.asarray(offload_fraction, dtype=float),
            policy=policy,
        )
        return np.asarray(stats.active_experts_max_gpu, dtype=float) * miss_ratio

    return hook


def with_offload(routing, model, policy: str = "lfu"):
    """``routing`` (RoutingOptions or None) with the offload hook for ``model`` plugged in."""
    from dataclasses import replace

    from moesim.cost.ops import routing_or_default

    routing = routing_or_default(routing)
    if not model.is_moe:
        return routing
    return replace(
        routing,
        offload_misses=make_offload_misses(routing.dist, model.num_experts, model.top_k, policy),
    )


def offloaded_bytes_per_gpu(model, layout) -> np.ndarray:
    """Expert weights one GPU keeps in host memory: f x its experts' bytes on its stage's layers."""
    if not model.is_moe:
        return np.zeros(np.shape(layout.offload_fraction))
    slots = model.num_experts + np.asarray(layout.redundant_experts, dtype=float)
    pp = layout.arr("pp")
    moe_layers_stage = np.ceil(model.num_moe_layers / pp)
    per_gpu = slots / layout.arr("ep") * model.expert_params / layout.moe_tp
    return (
        np.asarray(layout.offload_fraction, dtype=float)
        * per_gpu
        * moe_layers_stage
        * dtype_bytes(layout.weight_dtype)
    )


def host_memory_check(model, hw, layout) -> tuple[np.ndarray, np.ndarray]:
    """(fits, reason): offloaded expert bytes must fit the GPU's share of host DRAM."""
    need = offloaded_bytes_per_gpu(model, layout)
    fits = need <= hw.host_memory_bytes
    reason = np.where(fits, "", "offloaded experts exceed host memory")
    return fits, reason
