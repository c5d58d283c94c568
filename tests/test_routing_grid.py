"""The routing fast path against Monte Carlo on a representative subset of the full grid.

tests/test_routing.py::test_fast_path_within_3pct_of_monte_carlo (marked ``slow``) walks the
whole grid T x E x k x G for five distributions (~210 Monte-Carlo samplings, ~5 CPU-minutes).
This default-run subset takes ten of its points, chosen so that every value of every axis
(7 token counts, 6 expert counts, 5 top-k, 6 EP sizes) and every distribution appears at least
once, with the same samplers, sample counts and the same 3 % bound on the held statistics.
"""

from __future__ import annotations

import numpy as np
import pytest

from moesim.cost.routing import UNIFORM, dirichlet, zipf
from moesim.cost.routing.montecarlo import sample_topk, stats_from_picks
from moesim.cost.routing.stats import build_table, layer_routing

# (distribution, T, E, k, G): a cover of GRID_T, GRID_E, GRID_K, GRID_G of test_routing.py
POINTS = [
    (UNIFORM, 1, 8, 1, 2),
    (zipf(0.8), 2, 16, 2, 8),
    (zipf(1.2), 7, 64, 4, 32),
    (dirichlet(0.3), 64, 128, 6, 64),
    (dirichlet(1.0), 512, 256, 8, 256),
    (UNIFORM, 4096, 384, 8, 64),
    (zipf(1.2), 65536, 256, 2, 32),
    (dirichlet(0.3), 4096, 64, 1, 1),
    (zipf(0.8), 512, 384, 6, 8),
    (dirichlet(1.0), 64, 16, 4, 2),
]
GRID = {"T": {1, 2, 7, 64, 512, 4096, 65536}, "E": {8, 16, 64, 128, 256, 384},
        "k": {1, 2, 4, 6, 8}, "G": {1, 2, 8, 32, 64, 256}}  # fmt: skip


def test_the_subset_covers_every_grid_value():
    for i, axis in enumerate(("T", "E", "k", "G"), start=1):
        assert {p[i] for p in POINTS} == GRID[axis], axis
    assert len({p[0].name for p in POINTS}) == 5


@pytest.mark.parametrize(
    ("dist", "T", "E", "k", "G"), POINTS, ids=lambda v: str(getattr(v, "name", v))
)
def test_fast_path_within_3pct_of_monte_carlo_subset(dist, T, E, k, G):
    p = dist.probs(E)
    rng = np.random.default_rng([E, T])
    samples = int(np.clip(2**19 // T, 6, 4000))  # as in the full grid
    picks = sample_topk(T, k, p, samples, rng, method="sequential")
    mc = stats_from_picks(picks, E, G, block_m=16, capacity_factor=1.25)
    tab = build_table(layer_routing(p, k, G), np.array([T]), 16, 1.25)
    fast = {
        "active_experts": tab["active_frac"][0] * E,
        "max_gpu_load": tab["max_ratio"][0] * T * k / G,
    }
    for name in ("active_experts", "max_gpu_load"):
        err = 100 * (fast[name] - mc[name]) / mc[name]
        print(f"{dist.name} T={T} E={E} k={k} G={G} {name}: {err:+.2f}% vs Monte Carlo")
        assert abs(err) < 3.0, name
