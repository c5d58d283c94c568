"""The routing AIConfigurator's MoE tables were measured with, as realised-routing columns.

Each ``moe_perf`` row times one EP rank (rank 0, its ``num_experts / moe_ep_size`` local
experts) on one GPU, fed synthetic router outputs (aiconfigurator ``collector/*/collect_moe.py``):

- ``balanced``: token i's j-th choice is expert (i + j·s) mod E with s = ceil(E / k) when
  T >= s, else (floor(i·s / T) + j·s) mod E (``balanced_logits``).
- ``power_law_<a>``: per-expert counts drawn from a bounded power law x^-a on [1, 0.8·T] (on
  [0.01, 2] when T·k <= E), scaled to T·k assignments and rounded, the largest counts topped
  up or trimmed to the exact total; the EP group with the most assignments is swapped to rank
  0, so the timed rank is the busiest (``power_law_logits_v3``, ``sample_power_law``).

From the counts of rank 0's experts this module gives the columns the MoE kernel model reads
for a realised routing: ``n_active_experts`` (experts with tokens), ``assignments`` (token-
expert pairs computed) and ``sum_padded_tokens`` (each expert's rows padded to ``block_m``).
The power-law case is random; its expectation is averaged over a fixed set of draws.
"""

from __future__ import annotations

import math

import numpy as np

POWER_LAW_DRAWS = 32


def balanced_counts(tokens: int, experts: int, top_k: int) -> np.ndarray:
    """Tokens per expert of ``balanced_logits`` (exact)."""
    stride = math.ceil(experts / top_k)
    i = np.arange(tokens, dtype=np.int64)[:, None]
    j = np.arange(top_k, dtype=np.int64)[None, :]
    if tokens >= stride:
        chosen = (i + j * stride) % experts
    else:
        chosen = (np.floor(i * stride / tokens).astype(np.int64) + j * stride) % experts
    return np.bincount(chosen.ravel(), minlength=experts)


def power_law_counts(
    tokens: int, experts: int, top_k: int, ep: int, alpha: float, rng: np.random.Generator
) -> np.ndarray:
    """One draw of ``power_law_logits_v3``'s tokens per expert, busiest EP group first."""
    if tokens * top_k > experts:
        lo, hi = 1.0, tokens * 0.8
    else:
        lo, hi = 0.01, 2.0
    u = rng.random(experts)
    a1 = 1.0 - alpha
    x = ((hi**a1 - lo**a1) * u + lo**a1) ** (1.0 / a1)  # inverse CDF of x^-alpha on [lo, hi]
    target = tokens * top_k
    counts = np.round(x / x.sum() * target).astype(np.int64)
    delta = int(target - counts.sum())
    if delta:
        order = np.argsort(-counts, kind="stable")
        for t in range(abs(delta)):
            idx = order[t % experts] if delta > 0 else order[-(t % experts) - 1]
            counts[idx] += 1 if delta > 0 else -1
    if ep > 1:
        groups = counts.reshape(ep, experts // ep)
        busiest = int(np.argmax(groups.sum(axis=1)))
        groups[[0, busiest]] = groups[[busiest, 0]]
        counts = groups.ravel()
    return counts


def rank0_routing(
    tokens: int,
    experts: int,
    top_k: int,
    ep: int,
    distribution: str,
    block_m: int = 64,
    draws: int = POWER_LAW_DRAWS,
    seed: int = 0,
) -> dict[str, float]:
    """Expected ``n_active_experts``, ``assignments``, ``sum_padded_tokens`` of EP rank 0."""
    local = experts // max(ep, 1)
    dist = str(distribution)
    if dist == "balanced":
        samples = [balanced_counts(tokens, experts, top_k)]
    elif dist.startswith("power_law"):
        alpha = float(dist.rsplit("_", 1)[1])
        rng = np.random.default_rng(seed)
        samples = [power_law_counts(tokens, experts, top_k, ep, alpha, rng) for _ in range(draws)]
    else:
        raise ValueError(f"unknown aiconfigurator routing {distribution!r}")
    mine = np.array([s[:local] for s in samples], dtype=float)
    padded = np.ceil(mine / block_m) * block_m
    return {
        "n_active_experts": float(np.mean(np.sum(mine > 0, axis=1))),
        "assignments": float(np.mean(mine.sum(axis=1))),
        "sum_padded_tokens": float(np.mean(padded.sum(axis=1))),
    }
