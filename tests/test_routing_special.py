"""moesim.cost.routing._special (numpy, no SciPy import) against SciPy and exact sums."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import special

from moesim.cost.routing import _special


def test_gammaln_matches_scipy():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(1e-6, 20, 4000), np.exp(rng.uniform(3, 40, 4000))])
    ref = special.gammaln(x)
    err = np.abs(_special.gammaln(x) - ref) / np.maximum(1.0, np.abs(ref))
    assert err.max() < 1e-13


def test_comb_matches_scipy():
    n = np.arange(0, 400)[:, None]
    k = np.arange(0, 12)[None, :]
    ref = special.comb(n, k)
    np.testing.assert_allclose(_special.comb(n, k), ref, rtol=1e-11, atol=0)


def _exact_sf(k: int, n: int, p: float) -> float:
    """P(Binomial(n, p) > k) as an exact rational sum of the pmf below k (no floating point)."""
    P = Fraction(p)
    cdf = sum(math.comb(n, j) * P**j * (1 - P) ** (n - j) for j in range(k + 1))
    return float(1 - cdf)


@pytest.mark.parametrize(
    ("k", "n", "p"), [(3, 10, 0.25), (40, 200, 0.2), (8, 64, 0.125), (0, 7, 0.5), (150, 300, 0.5)]
)
def test_bdtrc_equals_the_exact_sum(k, n, p):
    assert float(_special.bdtrc(k, n, p)) == pytest.approx(_exact_sf(k, n, p), abs=1e-14)


def test_bdtrc_matches_scipy_on_the_table_grids():
    """The arguments padded_counts and dropped_counts pass: tails at multiples of the tile."""
    rng = np.random.default_rng(1)
    n = rng.integers(1, 100_000, 400).astype(float)
    p = np.concatenate([rng.uniform(0, 1, 396) ** 3, [0.0, 1.0, 1e-9, 1 - 1e-9]])
    mean, sd = n * p, np.sqrt(n * p * (1 - p))
    k = np.floor(mean + rng.normal(0, 3, n.size) * sd)
    inside = (k >= 0) & (k < n)
    ours = _special.bdtrc(k, n, p)
    ref = special.bdtrc(k, n.astype(np.int64), p)
    # SciPy's own error on large n is ~1e-11 (checked against exact sums above); ours is ~1e-15.
    np.testing.assert_allclose(ours[inside], ref[inside], rtol=0, atol=1e-9)
    assert np.all((ours >= 0) & (ours <= 1))
    assert np.all(ours[k < 0] == 1.0) and np.all(ours[k >= n] == 0.0)


def test_bdtrc_broadcasts_like_scipy():
    T = np.array([1, 7, 64, 512.0])[:, None, None]
    q = np.array([0.25, 0.01])[None, :, None]
    j = (np.arange(20) * 16.0)[None, None, :]
    n = np.broadcast_to(T, (4, 2, 20))
    ours = _special.bdtrc(j, n, q)
    ref = special.bdtrc(j, n.astype(np.int64), q)
    inside = j < n
    assert ours.shape == (4, 2, 20)
    np.testing.assert_allclose(ours[inside], np.broadcast_to(ref, ours.shape)[inside], atol=1e-12)
