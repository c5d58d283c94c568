"""Seeded Monte-Carlo reference for :func:`moesim.cost.routing.routing_stats` (used by the tests).

Each token takes its top-k as the k largest ``log p_e + Gumbel_e`` (Gumbel-top-k: Vieira 2014;
Kool, van Hoof & Welling, ICML 2019, arXiv:1903.06059), i.e. k distinct experts drawn without
replacement proportionally to p. ``method="sequential"`` draws the same law faster for large
T·E: each pick is drawn ∝ p and redrawn while it repeats an earlier pick, which is exactly a draw
∝ p over the experts not yet picked (rejection sampling); tokens still repeating after a few
rounds draw from the renormalised remainder directly.

S = samples, T = tokens, E = experts, K = top-k, G = GPUs.
"""

from __future__ import annotations

import numpy as np

from moesim.cost.routing.distributions import UNIFORM, RoutingDistribution, parse_routing
from moesim.cost.routing.stats import STAT_NAMES, RoutingStats
from moesim.errors import MoesimError

_CHUNK = 1 << 21  # Gumbel scores per chunk


def sample_topk(
    tokens: int, top_k: int, p: np.ndarray, samples: int, rng, method: str = "gumbel"
) -> np.ndarray:
    """Picks ``[S, T, K]`` (int32), each row ordered as drawn (so its first k' are a top-k')."""
    S, T, K, E = int(samples), int(tokens), int(top_k), p.size
    if method == "gumbel":
        logp = np.log(np.maximum(p, 1e-300))
        flat = np.empty((S * T, K), dtype=np.int32)
        rows = max(1, _CHUNK // E)
        for a in range(0, S * T, rows):
            b = min(S * T, a + rows)
            score = logp[None, :] + rng.gumbel(size=(b - a, E))  # [chunk, E]
            top = (
                np.argpartition(-score, K - 1, axis=1)[:, :K]
                if K < E
                else np.tile(np.arange(E), (b - a, 1))
            )
            order = np.argsort(-np.take_along_axis(score, top, axis=1), axis=1)
            flat[a:b] = np.take_along_axis(top, order, axis=1)
        return flat.reshape(S, T, K)
    if method == "sequential":
        return _sequential(S * T, K, p, rng).reshape(S, T, K)
    raise MoesimError(f"unknown sampling method {method!r}; use gumbel or sequential")


def _sequential(n: int, K: int, p: np.ndarray, rng) -> np.ndarray:
    cdf = np.cumsum(p)
    cdf /= cdf[-1]
    picks = np.empty((n, K), dtype=np.int32)
    for j in range(K):
        cand = np.minimum(np.searchsorted(cdf, rng.random(n), side="right"), p.size - 1)
        for _ in range(16):
            clash = np.any(picks[:, :j] == cand[:, None], axis=1) if j else np.zeros(n, bool)
            idx = np.flatnonzero(clash)
            if idx.size == 0:
                break
            cand[idx] = np.minimum(
                np.searchsorted(cdf, rng.random(idx.size), side="right"), p.size - 1
            )
        else:
            idx = np.flatnonzero(np.any(picks[:, :j] == cand[:, None], axis=1))
            w = np.tile(p, (idx.size, 1))
            np.put_along_axis(w, picks[idx, :j].astype(np.int64), 0.0, axis=1)
            c = np.cumsum(w, axis=1)
            u = rng.random(idx.size) * c[:, -1]
            cand[idx] = np.minimum((c < u[:, None]).sum(axis=1), p.size - 1)
        picks[:, j] = cand
    return picks


def stats_from_picks(
    picks: np.ndarray,
    num_experts: int,
    ep: int,
    block_m=None,
    capacity_factor=None,
    placement=None,
    rng=None,
) -> dict[str, float]:
    """Sample means of every :class:`RoutingStats` field from picks ``[S, T, K]``."""
    S, T, K = picks.shape
    E, G = int(num_experts), int(ep)
    A = T * K
    counts = _per_sample_bincount(picks.reshape(S, -1), E)  # [S, E]
    if placement is None:
        slot_gpu = np.repeat(np.arange(G), E // G)
        slot_counts = counts
        slot_of_pick = picks
    else:
        rng = rng or np.random.default_rng(0)
        replicas = np.asarray(placement.replicas)
        order = np.argsort(np.asarray(placement.slot_expert), kind="stable")
        first = np.concatenate([[0], np.cumsum(replicas)[:-1]])
        r = np.floor(rng.random(picks.shape) * replicas[picks]).astype(np.int64)
        slot_of_pick = order[first[picks] + r]
        slot_gpu = np.asarray(placement.gpu_of_slot)
        slot_counts = _per_sample_bincount(slot_of_pick.reshape(S, -1), slot_gpu.size)
    onehot = np.zeros((slot_gpu.size, G))
    onehot[np.arange(slot_gpu.size), slot_gpu] = 1.0
    gpu_load = slot_counts @ onehot  # [S, G]
    gpu_active = (slot_counts > 0) @ onehot
    max_load = gpu_load.max(axis=1)
    is_max = gpu_load == max_load[:, None]
    active_max = np.where(is_max, gpu_active, -1).max(axis=1)
    active = (counts > 0).sum(axis=1)
    out = {
        "active_experts": active,
        "active_experts_per_gpu": gpu_active.mean(axis=1),
        "active_experts_max_gpu": active_max,
        "tokens_per_expert": np.full(S, A / E),
        "tokens_per_active_expert": np.where(active > 0, A / np.maximum(active, 1), 0.0),
        "mean_gpu_load": np.full(S, A / G),
        "max_gpu_load": max_load,
        "max_load_ratio": max_load / (A / G) if A else np.ones(S),
    }
    if block_m is None:
        padded, padded_max = np.full(S, float(A)), max_load
    else:
        pad = np.ceil(slot_counts / block_m) * block_m
        padded = pad.sum(axis=1)
        pad_gpu = pad @ onehot
        padded_max = np.where(is_max, pad_gpu, -1).max(axis=1)
    out["padded_assignments"] = padded
    out["padded_assignments_max_gpu"] = padded_max
    out["padding_waste"] = padded / A - 1 if A else np.zeros(S)
    if capacity_factor is None:
        dropped = np.zeros(S)
    else:
        cap = np.ceil(capacity_factor * A / E)  # Switch Transformer, arXiv:2101.03961 §2.2
        dropped = np.maximum(counts - cap, 0).sum(axis=1)
    out["dropped_assignments"] = dropped
    out["drop_rate"] = dropped / A if A else np.zeros(S)
    # distinct destination GPUs per token; the home GPU is uniform and independent, so
    # E|D \ {home}| = E|D|·(1 − 1/G)
    gpus = np.sort(slot_gpu[slot_of_pick[:, : min(T, 4096)]], axis=-1)
    distinct = 1 + np.sum(np.diff(gpus, axis=-1) != 0, axis=-1)
    out["remote_gpus_per_token"] = distinct.mean(axis=1) * (1 - 1 / G)
    return {name: float(np.mean(out[name])) for name in STAT_NAMES}


def _per_sample_bincount(idx: np.ndarray, n: int) -> np.ndarray:
    """Counts ``[S, n]`` of the values in each row of ``idx [S, M]``."""
    S = idx.shape[0]
    offset = (np.arange(S, dtype=np.int64) * n)[:, None]
    return np.bincount((idx + offset).ravel(), minlength=S * n).reshape(S, n).astype(float)


def monte_carlo_stats(
    tokens: int,
    top_k: int,
    num_experts: int,
    ep: int = 1,
    dist: RoutingDistribution | str = UNIFORM,
    block_m: int | None = None,
    capacity_factor: float | None = None,
    samples: int = 200,
    seed: int = 0,
    placement=None,
    layer: int = 0,
    method: str = "gumbel",
) -> RoutingStats:
    """Monte-Carlo estimate of :class:`RoutingStats` (0-d arrays) for scalar inputs."""
    dist = parse_routing(dist) if isinstance(dist, str) else dist
    T, K, E, G = int(tokens), int(top_k), int(num_experts), int(ep)
    if K > E:
        raise MoesimError(f"top_k={K} exceeds num_experts={E}")
    if placement is None and E % G:
        raise MoesimError(f"{E} experts do not split evenly over ep={G} GPUs")
    p = dist.probs(E)
    p = p[layer] if p.ndim == 2 else p
    rng = np.random.default_rng(seed)
    if T == 0:
        return RoutingStats(**{n: np.asarray(0.0) for n in STAT_NAMES})
    if placement is not None and placement.num_layers > 1:
        placement = placement.layer(layer)
    picks = sample_topk(T, K, p, samples, rng, method)
    res = stats_from_picks(picks, E, G, block_m, capacity_factor, placement, rng)
    return RoutingStats(**{n: np.asarray(v) for n, v in res.items()})
