"""The special functions the routing statistics need, without importing SciPy on the common path.

``scipy.special`` costs ~0.3 s to import (it pulls in its array-API layer and numpy.f2py), more
than a whole ``moesim predict`` computes. The functions below are plain numpy where that is
exact and cheap, and hand over to SciPy (imported then, not before) where it is not:

- :func:`gammaln` — Stirling's series after shifting the argument to >= 10 by the recurrence
  Γ(x+1) = xΓ(x) (Abramowitz & Stegun 6.1.40 and 6.1.15); absolute error < 1e-13;
- :func:`bdtrc` — P(Binomial(n, p) > k) by summing the pmf over ±14 standard deviations of the
  mean (the mass beyond is below 1e-40, Chernoff), each distinct (n, p) once; SciPy's ``bdtrc``
  when that table would be large (wide distributions, many distinct p);
- :func:`comb` — C(n, k) as exp(ln Γ(n+1) − ln Γ(k+1) − ln Γ(n−k+1));
- :func:`gammaincc`, :func:`betainc` — SciPy's, imported on first call (the large-load E[max]
  of :mod:`moesim.cost.routing.loads`, expert parallel with more than 512 assignments).

``tests/test_routing_special.py`` holds every function to SciPy's values.
"""

from __future__ import annotations

import math

import numpy as np

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
# Stirling's series: ln Γ(x) ≈ (x − ½)ln x − x + ½ln 2π + Σ B_2n / (2n(2n−1) x^(2n−1))
_STIRLING = (1 / 12, -1 / 360, 1 / 1260, -1 / 1680, 1 / 1188, -691 / 360360, 1 / 156)
_SHIFT_TO = 10.0
_TAIL_SD = 14.0  # sd beyond the mean where a binomial's remaining mass is < 1e-40
_MAX_TABLE_CELLS = 4_000_000  # pmf cells summed in numpy before SciPy is the faster choice


def gammaln(x) -> np.ndarray:
    """ln Γ(x) for x > 0 (numpy array in, array out)."""
    x = np.asarray(x, dtype=float)
    y = x.copy()
    shift = np.zeros_like(y)
    small = y < _SHIFT_TO
    while np.any(small):  # Γ(y) = Γ(y + 1) / y
        shift[small] += np.log(y[small])
        y[small] += 1.0
        small = y < _SHIFT_TO
    z = 1.0 / (y * y)
    series = np.zeros_like(y)
    for c in reversed(_STIRLING):
        series = series * z + c
    return (y - 0.5) * np.log(y) - y + _HALF_LOG_2PI + series / y - shift


def comb(n, k) -> np.ndarray:
    """Binomial coefficient C(n, k) as a float (0 where k < 0 or k > n)."""
    n, k = np.broadcast_arrays(np.asarray(n, dtype=float), np.asarray(k, dtype=float))
    ok = (k >= 0) & (k <= n)
    nn, kk = np.where(ok, n, 1.0), np.where(ok, k, 0.0)
    out = np.exp(gammaln(nn + 1) - gammaln(kk + 1) - gammaln(nn - kk + 1))
    return np.where(ok, out, 0.0)


def bdtrc(k, n, p) -> np.ndarray:
    """P(X > k) for X ~ Binomial(n, p), k and n integers (SciPy's ``bdtrc`` convention)."""
    k, n, p = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in (k, n, p)))
    shape = k.shape
    k, n, p = k.ravel(), n.ravel(), p.ravel()
    out = np.empty(k.size)
    rows, inverse = np.unique(np.stack([n, p]), axis=1, return_inverse=True)
    inverse = inverse.ravel()
    mean = rows[0] * rows[1]
    sd = np.sqrt(rows[0] * rows[1] * (1 - rows[1]))
    lo = np.maximum(np.floor(mean - _TAIL_SD * sd - 10), 0.0)
    hi = np.minimum(np.ceil(mean + _TAIL_SD * sd + 10), rows[0])
    width = (hi - lo + 1).astype(np.int64)
    if float(np.sum(width)) > _MAX_TABLE_CELLS:
        from scipy import special

        return special.bdtrc(k, n.astype(np.int64), p).reshape(shape)
    # One right-cumulative pmf table per distinct (n, p), in groups of similar width.
    bucket = np.ceil(np.log2(np.maximum(width, 1))).astype(np.int64)
    for b in np.unique(bucket):
        sel = np.flatnonzero(bucket == b)
        W = 1 << int(b)
        j = lo[sel, None] + np.arange(W)[None, :]  # [rows, W]
        nr, pr = rows[0, sel, None], rows[1, sel, None]
        inside = j <= hi[sel, None]
        # ln pmf(j) − ln pmf(lo) = Σ_{i=lo}^{j−1} ln((n − i)/(i + 1)) + (j − lo)·logit p, then the
        # window is normalised: its mass is 1 to < 1e-40, and ln Γ of large n never enters.
        with np.errstate(divide="ignore", invalid="ignore"):
            step = np.log(np.maximum(nr - j, 1e-300)) - np.log(j + 1) + np.log(pr) - np.log1p(-pr)
            log_rel = np.concatenate(
                [np.zeros((sel.size, 1)), np.cumsum(step[:, :-1], axis=1)], axis=1
            )
        log_rel = np.where(inside & np.isfinite(log_rel), log_rel, -np.inf)
        degenerate = (pr <= 0) | (pr >= 1)  # all the mass at 0 (p = 0) or at n (p = 1)
        point = np.where(pr <= 0, 0.0, nr)
        log_rel = np.where(degenerate, np.where(j == point, 0.0, -np.inf), log_rel)
        peak = np.max(log_rel, axis=1, keepdims=True)
        pmf = np.exp(log_rel - peak)
        pmf /= pmf.sum(axis=1, keepdims=True)
        # sf_table[:, i] = P(X > lo + i) = Σ_{m > i} pmf[:, m]
        sf_table = np.cumsum(pmf[:, ::-1], axis=1)[:, ::-1]
        sf_table = np.concatenate([sf_table[:, 1:], np.zeros((sel.size, 1))], axis=1)
        mine = np.isin(inverse, sel)
        idx = np.flatnonzero(mine)
        r_local = np.searchsorted(sel, inverse[idx])
        offset = k[idx] - lo[inverse[idx]]
        col = np.clip(offset, 0, W - 1).astype(np.int64)
        val = sf_table[r_local, col]
        val = np.where(offset < 0, 1.0, val)  # k below the window: all the mass is above k
        val = np.where(k[idx] >= hi[inverse[idx]], 0.0, val)
        out[idx] = np.clip(val, 0.0, 1.0)
    invalid = (k < 0) | (k >= n) | ~np.isfinite(p)
    out[invalid & (k < 0)] = 1.0
    out[invalid & (k >= n)] = 0.0
    return out.reshape(shape)


def gammaincc(a, x):
    """Regularised upper incomplete gamma Q(a, x) (SciPy's, imported on first use)."""
    from scipy import special

    return special.gammaincc(a, x)


def betainc(a, b, x):
    """Regularised incomplete beta I_x(a, b) (SciPy's, imported on first use)."""
    from scipy import special

    return special.betainc(a, b, x)
