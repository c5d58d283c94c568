"""Per-token inclusion probabilities of top-k routing without replacement.

A token keeps the k experts with the largest ``log p_e + Gumbel_e`` (Gumbel-top-k; Vieira 2014;
Kool, van Hoof & Welling, ICML 2019, arXiv:1903.06059), the same law as drawing k experts one
after another, each proportionally to ``p`` among those not yet drawn (Plackett–Luce). In the
exponential-race view ``U_e = exp(-(log p_e + Gumbel_e)) ~ Exp(p_e)`` and the picks are the k
smallest ``U_e``, so expert e is picked with probability

    π_e = ∫_0^∞ p_e e^{-p_e u} · P(#{j ≠ e : U_j < u} ≤ k − 1) du,          (race integral)

where the count is Poisson-binomial with success probabilities ``1 − e^{-p_j u}``. A whole GPU g
(a set of experts) is touched by the token unless its "super-expert" (weight Σ_{e∈g} p_e, by the
max-stability of Gumbels) loses the race, which is the same integral with g's members removed
from the count. The integral is taken on a log-u grid by the trapezoid rule, which converges
geometrically for this smooth, doubly-exponentially decaying integrand (Trefethen & Weideman,
SIAM Review 56, 2014); leave-one-out counts come from prefix and suffix count distributions
truncated at k.

Shapes: E = experts, Q = quadrature nodes, K = top-k.
"""

from __future__ import annotations

import numpy as np

from moesim.errors import MoesimError

_STEP = 0.2  # log-u trapezoid step; error ~ exp(-2π·(π/2)/step), far below 1e-12


class ExponentialRace:
    """Quadrature state for one weight vector ``p [E]`` and top-k; reused by several queries."""

    def __init__(self, p: np.ndarray, top_k: int):
        p = np.asarray(p, dtype=float)
        E, K = p.size, int(top_k)
        nonzero = int(np.count_nonzero(p > 0))
        if K > nonzero:
            raise MoesimError(
                f"top_k={K} distinct experts but only {nonzero} of {E} experts have nonzero routing probability"
            )
        self.p, self.k = p / p.sum(), K
        p_desc = np.sort(self.p)[::-1]
        self.degenerate = K == nonzero  # every nonzero expert is always picked
        if self.degenerate:
            return
        u_lo = 1e-9  # the integrand below u_lo adds at most p_e·u_lo ≤ 1e-9·π_e
        u_hi = 60.0 / p_desc[K]  # by then the k hottest others have all fired (e^-60)
        t = np.arange(np.log(u_lo), np.log(u_hi) + _STEP, _STEP)
        self.u = np.exp(t)  # [Q]
        fire = -np.expm1(-np.outer(self.p, self.u))  # [E, Q] P(U_j < u)
        self.prefix = _count_dists(fire, K)  # [E+1, Q, K] counts among experts < e
        self.suffix = _count_dists(fire[::-1], K)[::-1]  # [E+1, Q, K] counts among experts ≥ e
        self.suffix_cdf = np.cumsum(self.suffix, axis=-1)

    def _race(self, weight: np.ndarray, below: np.ndarray) -> np.ndarray:
        """∫ w e^{-w u} P(count ≤ k−1) du for rows of weights ``w [N]`` and P(count ≤ k−1) ``[N, Q]``."""
        wu = np.outer(weight, self.u)
        return np.sum(wu * np.exp(-wu) * below, axis=-1) * _STEP

    def _fewer_than_k(self, start: np.ndarray, stop: np.ndarray) -> np.ndarray:
        """P(fewer than k of the experts outside ``[start, stop)`` fired by u): ``[N, Q]``."""
        pre = self.prefix[start]  # [N, Q, K]
        post = self.suffix_cdf[stop][..., ::-1]  # [N, Q, K] P(count ≤ k−1−a)
        return np.einsum("nqa,nqa->nq", pre, post)

    def inclusion(self) -> np.ndarray:
        """π_e: probability that a token's top-k contains expert e, ``[E]`` (sums to k)."""
        if self.degenerate:
            return (self.p > 0).astype(float)
        idx = np.arange(self.p.size)
        pi = self._race(self.p, self._fewer_than_k(idx, idx + 1))
        return np.clip(pi, 0.0, 1.0)

    def group_hit(self, starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
        """P(a token's top-k touches at least one expert in ``[start, stop)``), per group ``[G]``."""
        starts, stops = np.asarray(starts), np.asarray(stops)
        weight = np.array([self.p[a:b].sum() for a, b in zip(starts, stops, strict=True)])
        if self.degenerate:
            return (weight > 0).astype(float)
        return np.clip(self._race(weight, self._fewer_than_k(starts, stops)), 0.0, 1.0)


def _count_dists(fire: np.ndarray, K: int) -> np.ndarray:
    """Prefix distributions of the number of fired experts, truncated at K−1: ``[E+1, Q, K]``."""
    E, Q = fire.shape
    out = np.zeros((E + 1, Q, K))
    out[0, :, 0] = 1.0
    for j in range(E):
        q = fire[j][:, None]
        out[j + 1] = out[j] * (1.0 - q)
        out[j + 1, :, 1:] += out[j, :, :-1] * q
    return out


def inclusion_probs(p: np.ndarray, top_k: int) -> np.ndarray:
    """Per-token inclusion probabilities π ``[E]`` of k distinct picks ∝ p (see module docstring).

    Uniform ``p`` gives ``k/E``; in general π_e > min(1, k·p_e) is *not* what you get: hot experts
    saturate at 1 and the remaining picks spill onto cooler experts.
    """
    return ExponentialRace(p, top_k).inclusion()
