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
    x0 = np.asarray(x, dtype=float)
    x = np.atleast_1d(x0)
    small = x < _SHIFT_TO
    y = np.where(small, x + _SHIFT_TO, x)
    shift = None
    if np.any(small):  # Γ(x) = Γ(x + 10) / (x (x + 1) ... (x + 9)), each factor < 20
        xs = x[small]
        prod = xs.copy()
        for i in range(1, int(_SHIFT_TO)):
            prod *= xs + i
        shift = np.log(prod)
    z = 1.0 / (y * y)
    series = _STIRLING[-1] * z + _STIRLING[-2]
    for c in reversed(_STIRLING[:-2]):
        series = series * z + c
    out = (y - 0.5) * np.log(y) - y + _HALF_LOG_2PI + series / y
    if shift is not None:
        out[small] -= shift
    return out.reshape(x0.shape)


def comb(n, k) -> np.ndarray:
    """Binomial coefficient C(n, k) as a float (0 where k < 0 or k > n)."""
    n, k = np.broadcast_arrays(np.asarray(n, dtype=float), np.asarray(k, dtype=float))
    ok = (k >= 0) & (k <= n)
    nn, kk = np.where(ok, n, 1.0), np.where(ok, k, 0.0)
    out = np.exp(gammaln(nn + 1) - gammaln(kk + 1) - gammaln(nn - kk + 1))
    return np.where(ok, out, 0.0)


def bdtrc(k, n, p) -> np.ndarray:
    """P(X > k) for X ~ Binomial(n, p), k and n integers (SciPy's ``bdtrc`` convention)."""
    k = np.asarray(k, dtype=float)
    n_pair, p_pair = np.broadcast_arrays(np.asarray(n, dtype=float), np.asarray(p, dtype=float))
    shape = np.broadcast_shapes(k.shape, n_pair.shape)
    # distinct (n, p) pairs, found on the pairs' own (un-broadcast) shape: a table per pair
    rows, inverse = np.unique(n_pair.ravel() + 1j * p_pair.ravel(), return_inverse=True)
    row_of = np.broadcast_to(inverse.reshape(n_pair.shape), shape).ravel()
    kk = np.broadcast_to(k, shape).ravel()
    nr, pr = rows.real, rows.imag
    mean, sd = nr * pr, np.sqrt(nr * pr * (1 - pr))
    lo = np.maximum(np.floor(mean - _TAIL_SD * sd - 10), 0.0)
    hi = np.minimum(np.ceil(mean + _TAIL_SD * sd + 10), nr)
    width = (hi - lo + 1).astype(np.int64)
    if float(np.sum(width)) > _MAX_TABLE_CELLS:
        from scipy import special

        n_full = np.broadcast_to(n_pair, shape).astype(np.int64)
        return special.bdtrc(np.broadcast_to(k, shape), n_full, np.broadcast_to(p_pair, shape))
    out = np.empty(kk.size)
    bucket = np.ceil(np.log2(np.maximum(width, 1))).astype(np.int64)  # similar widths together
    local = np.zeros(rows.size, dtype=np.int64)
    element_bucket = bucket[row_of]
    for b in np.unique(bucket):
        sel = np.flatnonzero(bucket == b)
        local[sel] = np.arange(sel.size)
        sf_table = _sf_table(nr[sel], pr[sel], lo[sel], hi[sel], 1 << int(b))
        idx = np.flatnonzero(element_bucket == b)
        r = row_of[idx]
        offset = kk[idx] - lo[r]
        val = sf_table[local[r], np.clip(offset, 0, sf_table.shape[1] - 1).astype(np.int64)]
        val = np.where(offset < 0, 1.0, val)  # k below the window: all the mass is above k
        out[idx] = np.where(kk[idx] >= hi[r], 0.0, val)
    nn = nr[row_of]
    out[kk < 0] = 1.0
    out[kk >= nn] = 0.0
    return np.clip(out, 0.0, 1.0).reshape(shape)


def _sf_table(n, p, lo, hi, W: int) -> np.ndarray:
    """``[rows, W]``: P(X > lo + i) for X ~ Binomial(n, p), i = 0 .. W-1, per row."""
    j = lo[:, None] + np.arange(W)[None, :]
    nr, pr = n[:, None], p[:, None]
    inside = j <= hi[:, None]
    # ln pmf(j) − ln pmf(lo) = Σ_{i=lo}^{j−1} ln((n − i)/(i + 1)) + (j − lo)·logit p, then the
    # window is normalised: its mass is 1 to < 1e-40, and ln Γ of large n never enters.
    with np.errstate(divide="ignore", invalid="ignore"):
        step = np.log(np.maximum(nr - j, 1e-300)) - np.log(j + 1) + np.log(pr) - np.log1p(-pr)
        log_rel = np.zeros_like(step)
        np.cumsum(step[:, :-1], axis=1, out=log_rel[:, 1:])
    log_rel = np.where(inside & np.isfinite(log_rel), log_rel, -np.inf)
    degenerate = (pr <= 0) | (pr >= 1)  # all the mass at 0 (p = 0) or at n (p = 1)
    if np.any(degenerate):
        point = np.where(pr <= 0, 0.0, nr)
        log_rel = np.where(degenerate, np.where(j == point, 0.0, -np.inf), log_rel)
    pmf = np.exp(log_rel - np.max(log_rel, axis=1, keepdims=True))
    pmf /= pmf.sum(axis=1, keepdims=True)
    # P(X > lo + i) = Σ_{m > i} pmf[:, m]: a reversed cumulative sum, shifted by one
    tail = np.cumsum(pmf[:, ::-1], axis=1)[:, ::-1]
    return np.concatenate([tail[:, 1:], np.zeros((n.size, 1))], axis=1)


def gammaincc(a, x):
    """Regularised upper incomplete gamma Q(a, x) (SciPy's, imported on first use)."""
    from scipy import special

    return special.gammaincc(a, x)


def betainc(a, b, x):
    """Regularised incomplete beta I_x(a, b) (SciPy's, imported on first use)."""
    from scipy import special

    return special.betainc(a, b, x)
