"""The DP-rank straggler: E[max] over ranks is never below the mean, equals it at zero variance,
and agrees with Monte Carlo placement of sequences."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moesim.cost import straggler
from moesim.cost.ops import routing_or_default
from moesim.engine import static as serving
from moesim.errors import MoesimError
from moesim.spec.deployment import Layout
from moesim.spec.hardware import load_hardware
from moesim.spec.model import load_model


@settings(max_examples=200, deadline=None)
@given(
    st.floats(0.0, 1e6),
    st.floats(0.0, 1e4),
    st.integers(1, 4096),
)
def test_expected_max_never_below_mean(mean, std, n):
    assert straggler.expected_max(mean, std, n) >= mean
    assert straggler.expected_max(mean, 0.0, n) == mean


def test_blom_against_the_exact_expected_maximum_of_normals():
    """E[max of n standard normals] = integral of x n phi(x) Phi(x)^(n-1), by quadrature (1/sqrt(pi)
    at n = 2); Blom's approximation is within 5 % (worst at n = 2)."""
    from math import erf

    x = np.linspace(-9.0, 9.0, 200001)
    phi = np.exp(-(x**2) / 2) / np.sqrt(2 * np.pi)
    cdf = 0.5 * (1 + np.vectorize(erf)(x / np.sqrt(2)))
    for n in (2, 4, 8, 16, 32, 128, 1024):
        exact = np.trapezoid(x * n * phi * cdf ** (n - 1), x)
        if n == 2:
            assert exact == pytest.approx(1 / np.sqrt(np.pi), rel=1e-6)
        assert float(straggler.blom_z(n)) == pytest.approx(exact, rel=0.05), n


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 5000), st.sampled_from([1, 2, 3, 4, 8, 16, 32, 72, 128]))
def test_even_placement_is_ceil_and_splits_whole_sequences(n, dp):
    s = straggler.busiest_rank_sequences(n, dp, "even")
    assert s == (np.ceil(n / dp) if dp > 1 else n)
    (sa, ta), (sb, tb) = straggler.micro_batch_split(n, dp, "even")
    assert sa == np.ceil(s / 2) and sb == np.floor(s / 2)
    assert ta + tb == n and ta >= tb
    # exact by enumeration of round-robin ranks
    counts = np.bincount(np.arange(n) % dp, minlength=dp)
    assert ta == np.sum(np.ceil(counts / 2))


def test_zero_variance_load_equals_the_mean():
    seqs, ctx = straggler.busiest_rank_load(1024, 8, 3000.0, "even", 0.0)
    assert seqs == 128 and ctx == pytest.approx(3000.0)


@pytest.mark.parametrize("n,dp", [(512, 32), (2048, 16), (4096, 128)])
def test_random_placement_against_monte_carlo(n, dp):
    rng = np.random.default_rng(0)
    draws = rng.integers(0, dp, size=(4000, n))
    counts = np.stack([np.bincount(d, minlength=dp) for d in draws])
    mc = counts.max(axis=1).mean()
    est = float(straggler.busiest_rank_sequences(n, dp, "random"))
    assert est >= n / dp
    assert est == pytest.approx(mc, rel=0.05), (est, mc)


def test_random_context_load_against_monte_carlo():
    rng = np.random.default_rng(1)
    n, dp, c, cv = 1024, 16, 2000.0, 0.5
    sd = np.sqrt(np.log1p(cv**2))
    loads = []
    for _ in range(2000):
        rank = rng.integers(0, dp, size=n)
        ctx = c * rng.lognormal(-(sd**2) / 2, sd, size=n)
        loads.append(np.bincount(rank, weights=ctx, minlength=dp).max())
    seqs, per = straggler.busiest_rank_load(n, dp, c, "random", cv)
    assert float(seqs * per) == pytest.approx(np.mean(loads), rel=0.05)


def test_dp_straggler_slows_decode_and_bad_input_is_refused():
    m, hw = load_model("deepseek-v2-lite"), load_hardware("h100-sxm")
    routing = routing_or_default(None)
    base = Layout(tp=1, dp=8, ep=8)
    kw = dict(phase="decode", batch=256, context_len=4096, routing=routing)
    even = serving.predict_phase(m, hw, base, **kw)["tpot_s"]
    rand = serving.predict_phase(m, hw, base.with_(dp_balance="random"), **kw)["tpot_s"]
    spread = serving.predict_phase(m, hw, base.with_(context_cv=0.8), **kw)["tpot_s"]
    assert rand > even and spread > even
    with pytest.raises(MoesimError):
        Layout(dp_balance="sorted")
    with pytest.raises(MoesimError):
        Layout(context_cv=-1.0)
