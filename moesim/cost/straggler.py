"""Barriers: a collective waits for its slowest member, so a step runs at E[max] over GPUs.

Every EP dispatch/combine is a barrier across the EP group, and with DP attention the group's
attention ranks reach it after their own attention work: the layer waits for the busiest DP
rank. This module gives that rank's load — sequences and KV context — from how the engine
places requests on DP ranks:

- ``even``: round-robin / least-loaded placement of whole sequences (SGLang's DP controller
  default ``round_robin``; vLLM's DP engine core balancing): the busiest rank holds
  ceil(N / dp) of the N sequences.
- ``random``: independent uniform placement (requests arriving and finishing at random in
  continuous batching): counts are multinomial(N, 1/dp).

Per-sequence context may vary with coefficient of variation ``context_cv``; a rank's KV load
is then a sum of its sequences' contexts. The expected maximum over dp ranks of a load with
mean mu and standard deviation sigma uses Blom's order-statistics approximation for the
largest of n normal samples (G. Blom, "Statistical Estimates and Transformed Beta-Variables",
Wiley 1958; the plotting position (i - 3/8)/(n + 1/4) of David & Nagaraja, "Order Statistics",
3rd ed. 2003, section 4.5):

    E[max_n] ~= mu + sigma * Phi^-1((n - 0.375) / (n + 0.25))

which is exactly mu for n = 1 or sigma = 0, so E[max] >= mean with equality at zero variance.
Counts are clipped to what is possible: at least ceil(N/dp) (pigeonhole), at most N.

Symbols: N = sequences in one stage replica, dp = attention-DP ranks, c = context per sequence.
"""

from __future__ import annotations

from functools import lru_cache
from statistics import NormalDist

import numpy as np

from moesim.errors import MoesimError
from moesim.spec.deployment import DP_BALANCE_MODES


@lru_cache(maxsize=4096)
def _blom_z(n: int) -> float:
    if n <= 1:
        return 0.0
    return NormalDist().inv_cdf((n - 0.375) / (n + 0.25))  # Blom 1958


def blom_z(n) -> np.ndarray:
    """Phi^-1((n - 0.375)/(n + 0.25)): standard-normal E[max] of ``n`` samples (Blom 1958)."""
    n = np.asarray(n, dtype=float)
    flat = np.maximum(np.round(n), 1.0).astype(np.int64)
    values, inverse = np.unique(flat, return_inverse=True)
    z = np.array([_blom_z(int(v)) for v in values.tolist()], dtype=float)
    return z[inverse].reshape(n.shape)


def expected_max(mean, std, n) -> np.ndarray:
    """E[max] of ``n`` exchangeable loads of ``mean`` and ``std`` (Blom): never below the mean."""
    mean = np.asarray(mean, dtype=float)
    std = np.maximum(np.asarray(std, dtype=float), 0.0)
    return mean + std * blom_z(n)


def busiest_rank_sequences(total_seqs, dp, balance: str = "even") -> np.ndarray:
    """Expected sequences on the busiest of ``dp`` ranks holding ``total_seqs`` in all."""
    _check(balance, 0.0)
    n = np.asarray(total_seqs, dtype=float)
    dp = np.maximum(np.asarray(dp, dtype=float), 1.0)
    mean = n / dp
    whole = np.ceil(n - 1e-9)  # sequences are whole; a fractional mean means some rank has one
    floor = np.ceil(whole / dp - 1e-9)
    if balance == "even":
        return np.where(dp > 1, floor, n)
    # multinomial(N, 1/dp): each count is binomial, variance N/dp (1 - 1/dp)
    std = np.sqrt(np.maximum(n * (1.0 / dp) * (1.0 - 1.0 / dp), 0.0))
    est = np.clip(expected_max(mean, std, dp), floor, np.maximum(whole, floor))
    return np.where(dp > 1, est, n)


def busiest_rank_load(total_seqs, dp, context, balance: str = "even", context_cv=0.0):
    """(sequences, context per sequence) of the busiest DP rank.

    The rank's KV load is E[max over ranks of the sum of its sequences' contexts]; its context
    per sequence is that load over its sequence count, so attention pairs = the max load.
    """
    _check(balance, context_cv)
    n = np.asarray(total_seqs, dtype=float)
    dp = np.maximum(np.asarray(dp, dtype=float), 1.0)
    c = np.asarray(context, dtype=float)
    cv = np.asarray(context_cv, dtype=float)
    seqs = busiest_rank_sequences(n, dp, balance)
    if balance == "even":
        # fixed counts; only the contexts vary: Var(sum of s contexts) = s c^2 cv^2
        mean_load = seqs * c
        std_load = np.sqrt(seqs) * c * cv
    else:
        # random counts and contexts: Var(L) = E[n] Var(c) + Var(n) E[c]^2
        m = n / dp
        mean_load = m * c
        std_load = c * np.sqrt(np.maximum(m * cv**2 + m * (1.0 - 1.0 / dp), 0.0))
    load = np.maximum(expected_max(mean_load, std_load, dp), seqs * c)
    load = np.where(dp > 1, load, n * c)
    ctx = np.where(seqs > 0, load / np.where(seqs > 0, seqs, 1.0), c)
    return seqs, ctx


def micro_batch_split(total_seqs, dp, balance: str = "even"):
    """Two-batch overlap split of whole sequences, rank by rank (SGLang two-batch overlap splits
    each DP rank's batch in two; DeepSeek-V3 report section 3.4).

    Returns ((busiest-rank sequences, stage sequences) of micro-batch A, the same of B): the
    busiest rank's s sequences go ceil(s/2) and floor(s/2); stage totals sum the ranks' halves.
    """
    n = np.ceil(np.asarray(total_seqs, dtype=float) - 1e-9)
    dp = np.maximum(np.asarray(dp, dtype=float), 1.0)
    s = busiest_rank_sequences(n, dp, balance)
    s_a, s_b = np.ceil(s / 2.0), np.floor(s / 2.0)
    if balance == "even":
        q = np.floor(n / dp)
        hi = n - q * dp  # ranks holding q + 1
        a_total = hi * np.ceil((q + 1.0) / 2.0) + (dp - hi) * np.ceil(q / 2.0)
    else:
        # E[#ranks with an odd count] = dp (1 - (1 - 2/dp)^N)/2 (binomial parity)
        odd = dp * (1.0 - (1.0 - 2.0 / dp) ** n) / 2.0
        a_total = n / 2.0 + odd / 2.0
    a_total = np.clip(a_total, np.ceil(n / 2.0), n)
    return (s_a, a_total), (s_b, n - a_total)


def _check(balance: str, context_cv) -> None:
    if balance not in DP_BALANCE_MODES:
        raise MoesimError(f"dp balance {balance!r} must be one of {', '.join(DP_BALANCE_MODES)}")
    if np.any(np.asarray(context_cv, dtype=float) < 0):
        raise MoesimError("context_cv must be >= 0")
