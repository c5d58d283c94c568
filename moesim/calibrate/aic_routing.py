"""The routing AIConfigurator's MoE tables were measured with, as realised-routing columns.

Each ``moe_perf`` row times one EP rank (rank 0, its ``num_experts / moe_ep_size`` local
experts) on one GPU, fed synthetic router outputs (aiconfigurator ``collector/*/collect_moe.py``):

- ``balanced``: token i's j-th choice is expert (i + j·s) mod E with s = ceil(E / k) when
  T >= s, else (floor(i·s / T) + j·s) mod E (``balanced_logits``).
- ``power_law_<a>``: per-expert counts drawn from a bounded power law x^-a on [1, 0.8·T] (on
  [0.01, 2] when T·k <= E), scaled to T·k assignments and rounded; the rounding residue fixed
  up (collections from 2026-04-19: each expert clamped at T, overflow and residue handed out
  one unit per EP rank per round to that rank's least-loaded expert; 2025 collections: the
  largest counts topped up); the EP group with the most assignments is swapped to rank 0, so
  the timed rank is the busiest (``power_law_logits_v3``, ``sample_power_law``,
  ``_round_robin_adjust_per_rank``). Each row's latency is the mean over 5 draws.

From the counts of rank 0's experts this module gives the columns the MoE kernel model reads
for a realised routing: ``n_active_experts`` (experts with tokens), ``assignments`` (token-
expert pairs computed) and ``sum_padded_tokens`` (each expert's rows padded to ``block_m``).
The power-law case is random; its expectation is averaged over a fixed set of draws.
"""

from __future__ import annotations

import math

import numpy as np

POWER_LAW_DRAWS = 32
# Tables collected before the collector's 2026 fix-up changes (generation 1): TensorRT-LLM
# 1.0.0, the A100 (2025-10) and L40S (2025-11) collections. Everything newer is generation 3.
GENERATION_1_TABLES = {("trtllm", "1.0.0")}


def collector_generation(framework: str, version: str) -> int:
    """The power-law fix-up a table's rows were generated with (see :func:`power_law_counts`)."""
    return 1 if (str(framework), str(version)) in GENERATION_1_TABLES else 3


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


def _sample_counts(tokens, experts, top_k, alpha, rng) -> np.ndarray:
    """``sample_power_law`` scaled to tokens x top_k assignments and rounded (half to even, as
    torch.round)."""
    if tokens * top_k > experts:
        lo, hi = 1.0, tokens * 0.8
    else:
        lo, hi = 0.01, 2.0
    u = rng.random(experts)
    a1 = 1.0 - alpha
    x = ((hi**a1 - lo**a1) * u + lo**a1) ** (1.0 / a1)  # inverse CDF of x^-alpha on [lo, hi]
    return np.round(x / x.sum() * (tokens * top_k)).astype(np.int64)


def _fill_up(local: np.ndarray, units: int, cap: int) -> None:
    """Add ``units`` one at a time to the first smallest count below ``cap`` (in place): water-
    filling to a level, the remainder to the first experts (by index) at that level."""
    if units <= 0:
        return
    c = local
    levels = np.sort(c)
    # smallest level L with sum(max(0, L - c)) > units; the fill reaches L - 1 in full
    lo, hi = int(levels[0]), cap
    while lo < hi:  # largest L <= cap with need(L) <= units
        mid = (lo + hi + 1) // 2
        if int(np.maximum(mid - c, 0).sum()) <= units:
            lo = mid
        else:
            hi = mid - 1
    level = lo
    rest = units - int(np.maximum(level - c, 0).sum())
    np.maximum(c, level, out=c)
    if rest:
        at = np.flatnonzero(c == level)[:rest]
        c[at] += 1


def _drain(local: np.ndarray, units: int) -> None:
    """Take ``units`` one at a time from the first largest positive count (in place)."""
    if units <= 0:
        return
    c = local
    lo, hi = 0, int(c.max())
    while lo < hi:  # smallest L >= 0 with sum(max(0, c - L)) <= units
        mid = (lo + hi) // 2
        if int(np.maximum(c - mid, 0).sum()) <= units:
            hi = mid
        else:
            lo = mid + 1
    level = lo
    rest = units - int(np.maximum(c - level, 0).sum())
    np.minimum(c, level, out=c)
    if rest:
        at = np.flatnonzero(c == level)[:rest]
        c[at] -= 1


def _round_robin(groups: np.ndarray, units: int, cap: int, add: bool) -> None:
    """``_round_robin_adjust_per_rank``: one unit per rank per round, ranks in order, each to its
    first least (add) / most (remove) loaded valid expert, until ``units`` are placed (in place).
    Every active rank gets the same count per full round, so full rounds are taken at once."""
    room = (cap - groups).sum(axis=1) if add else groups.sum(axis=1)
    quota = np.zeros(len(groups), np.int64)
    while units > 0:
        act = np.flatnonzero(room > quota)
        if act.size == 0:
            break
        full = min(units // act.size, int((room[act] - quota[act]).min()))
        if full > 0:
            quota[act] += full
            units -= full * act.size
        else:
            quota[act[:units]] += 1
            units = 0
    for r in np.flatnonzero(quota):
        (_fill_up(groups[r], int(quota[r]), cap) if add else _drain(groups[r], int(quota[r])))


def power_law_counts(
    tokens: int,
    experts: int,
    top_k: int,
    ep: int,
    alpha: float,
    rng: np.random.Generator,
    generation: int = 3,
) -> np.ndarray:
    """One draw of ``power_law_logits_v3``'s tokens per expert, busiest EP group first.

    ``generation`` is the collector's rounding fix-up (aiconfigurator ``collector/helper.py``):
    3 (2026-04-19 on, ``_round_robin_adjust_per_rank``) clamps each expert at ``tokens`` and
    hands the overflow and the rounding residue out one unit per EP rank per round, to each
    rank's least-loaded expert (taken back from its most-loaded one when rounding overshot);
    1 (2025 collections) tops up the largest counts and has no clamp.
    """
    counts = _sample_counts(tokens, experts, top_k, alpha, rng)
    target = tokens * top_k
    per_rank = experts // max(ep, 1)
    if generation >= 3:
        groups = counts.reshape(max(ep, 1), per_rank)
        overflow = int(np.maximum(groups - tokens, 0).sum())
        np.minimum(groups, tokens, out=groups)
        _round_robin(groups, overflow, tokens, add=True)
        delta = int(target - groups.sum())
        if delta:
            _round_robin(groups, abs(delta), tokens, add=delta > 0)
        counts = groups.ravel()
    else:
        delta = int(target - counts.sum())
        if delta:
            order = np.argsort(-counts, kind="stable")
            for t in range(abs(delta)):
                idx = order[t % experts] if delta > 0 else order[-(t % experts) - 1]
                counts[idx] += 1 if delta > 0 else -1
    if ep > 1:
        groups = counts.reshape(ep, per_rank)
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
    generation: int = 3,
    tiles: tuple[int, ...] = (),
) -> dict[str, float]:
    """Expected ``n_active_experts``, ``assignments``, ``sum_padded_tokens`` of EP rank 0,
    and ``sum_padded_tokens_t<b>`` (rows padded per expert to b) for each of ``tiles``."""
    local = experts // max(ep, 1)
    dist = str(distribution)
    if dist == "balanced":
        samples = [balanced_counts(tokens, experts, top_k)]
    elif dist.startswith("power_law"):
        alpha = float(dist.rsplit("_", 1)[1])
        rng = np.random.default_rng(seed)
        samples = [
            power_law_counts(tokens, experts, top_k, ep, alpha, rng, generation)
            for _ in range(draws)
        ]
    else:
        raise ValueError(f"unknown aiconfigurator routing {distribution!r}")
    mine = np.array([s[:local] for s in samples], dtype=float)

    def padded(b: int) -> float:
        return float(np.mean((np.ceil(mine / b) * b).sum(axis=1)))

    return {
        "n_active_experts": float(np.mean(np.sum(mine > 0, axis=1))),
        "assignments": float(np.mean(mine.sum(axis=1))),
        "sum_padded_tokens": padded(block_m),
    } | {f"sum_padded_tokens_t{b}": padded(b) for b in tiles}
