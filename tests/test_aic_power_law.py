"""AIConfigurator's power-law router fix-up (collector/helper.py, 2026-04-19 on), reproduced.

The reference below is a literal transcription of the collector's loops
(``_generate_power_law_distribution`` and ``_round_robin_adjust_per_rank``: clamp at
num_tokens, overflow and residue one unit per rank per round to argmin / from argmax, first
index on ties; busiest rank swapped to rank 0). moesim's version takes whole rounds and water-
fills; both read the same sampled counts, so they must agree exactly.
"""

from __future__ import annotations

import numpy as np
import pytest

from moesim.calibrate import aic_routing
from moesim.calibrate.aic_routing import _sample_counts, power_law_counts, rank0_routing


def collector_reference(counts, tokens, top_k, ep):
    c = counts.copy()
    E = len(c)
    per = E // ep
    overflow = int(np.maximum(c - tokens, 0).sum())
    c = np.minimum(c, tokens)

    def round_robin(c, remaining, valid, pick, step):
        g = c.reshape(ep, per)
        while remaining > 0:
            progressed = False
            for r in range(ep):
                ok = np.flatnonzero(valid(g[r]))
                if ok.size == 0:
                    continue
                g[r, ok[pick(g[r][ok])]] += step
                remaining -= 1
                progressed = True
                if remaining == 0:
                    break
            if not progressed:
                break
        return g.ravel()

    if overflow > 0:
        c = round_robin(c, overflow, lambda x: x < tokens, np.argmin, 1)
    delta = tokens * top_k - int(c.sum())
    if delta > 0:
        c = round_robin(c, delta, lambda x: x < tokens, np.argmin, 1)
    elif delta < 0:
        c = round_robin(c, -delta, lambda x: x > 0, np.argmax, -1)
    g = c.reshape(ep, per)
    b = int(np.argmax(g.sum(axis=1)))
    g[[0, b]] = g[[b, 0]]
    return g.ravel()


CASES = [(1, 256, 8, 32), (2, 256, 8, 8), (4, 128, 8, 4), (8, 64, 6, 1), (1, 8, 2, 1),
         (3, 160, 8, 20), (64, 256, 8, 32), (512, 128, 8, 8), (16, 8, 2, 2), (4096, 512, 10, 16),
         (2, 16, 4, 4), (32, 384, 8, 64)]  # fmt: skip


@pytest.mark.parametrize("alpha", [1.01, 1.2])
@pytest.mark.parametrize("case", CASES)
def test_fix_up_matches_the_collector_loop(case, alpha):
    T, E, k, ep = case
    for seed in range(6):
        sampled = _sample_counts(T, E, k, alpha, np.random.default_rng(seed))
        want = collector_reference(sampled, T, k, ep)
        got = power_law_counts(T, E, k, ep, alpha, np.random.default_rng(seed))
        np.testing.assert_array_equal(got, want)
        assert got.sum() == T * k and got.max() <= T and got.min() >= 0


def test_one_token_spreads_over_ranks():
    """By hand: 1 token, top-8 of 256 experts on 32 ranks. The sampled shares (x in [0.01, 2],
    about 100 in all) round to 0 everywhere, so the 8 units go one per rank to ranks 0..7: rank
    0 computes 1 assignment on 1 expert (the 2025 fix-up put all 8 on rank 0)."""
    r = rank0_routing(1, 256, 8, 32, "power_law_1.01")
    assert (r["assignments"], r["n_active_experts"]) == (1.0, 1.0)
    old = rank0_routing(1, 256, 8, 32, "power_law_1.01", generation=1)
    assert (old["assignments"], old["n_active_experts"]) == (8.0, 8.0)


def test_generation_of_a_table():
    assert aic_routing.collector_generation("trtllm", "1.0.0") == 1
    assert aic_routing.collector_generation("trtllm", "1.3.0rc20") == 3
    assert aic_routing.collector_generation("sglang", "0.5.14") == 3
    assert aic_routing.collector_generation("vllm", "0.24.0") == 3
