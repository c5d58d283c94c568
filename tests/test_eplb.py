"""EPLB redundant-expert placement (DeepSeek EPLB's replicate + balanced packing)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from moesim.cost.routing import eplb_place, histogram, monte_carlo_stats, routing_stats, zipf
from moesim.errors import MoesimError


def test_eplb_lowers_max_mean_on_a_skewed_histogram_and_charges_memory():
    load = zipf(1.2, sorted=True).probs(64) * 1e6
    place = eplb_place(load, 8, redundant_slots=8, expert_bytes=2**20)
    assert place.max_mean_ratio < place.baseline_max_mean_ratio
    assert place.max_mean_ratio < 1.3 < place.baseline_max_mean_ratio
    assert place.extra_memory_bytes == 8 * 2**20
    assert place.extra_memory_bytes_per_gpu == 2**20
    assert place.replicas.sum() == 72 and place.replicas.min() >= 1
    assert np.all(np.bincount(place.gpu_of_slot, minlength=8) == 9)
    np.testing.assert_allclose(place.gpu_load.sum(), load.sum())
    np.testing.assert_allclose(place.gpu_load_fractions().sum(), 1.0)


@settings(max_examples=60, deadline=None)
@given(
    load=arrays(
        np.float64, st.sampled_from([8, 16, 32]), elements=st.floats(0, 1e4, allow_nan=False)
    ),
    G=st.sampled_from([1, 2, 4, 8]),
    per_gpu_extra=st.integers(0, 2),
)
def test_eplb_never_raises_the_ratio(load, G, per_gpu_extra):
    place = eplb_place(load, G, per_gpu_extra * G)
    assert place.max_mean_ratio <= place.baseline_max_mean_ratio + 1e-9


def test_per_layer_histogram_gives_per_layer_placements():
    counts = (
        np.stack([zipf(1.0, sorted=True).probs(16), zipf(1.0, sorted=True).probs(16)[::-1]]) * 1000
    )
    place = eplb_place(counts, 4, 4)
    assert place.num_layers == 2
    assert place.layer(1).gpu_load.shape == (4,)
    assert np.all(place.max_mean_ratio <= place.baseline_max_mean_ratio)


def test_redundant_experts_lower_the_straggler_in_routing_stats():
    dist = zipf(1.2, sorted=True)
    base = routing_stats(4096, 2, 64, 8, dist)
    eplb = routing_stats(4096, 2, 64, 8, dist, redundant_experts=8)
    assert float(eplb.max_gpu_load) < 0.8 * float(base.max_gpu_load)
    assert float(eplb.mean_gpu_load) == float(base.mean_gpu_load)


def test_placement_stats_match_monte_carlo():
    dist = histogram(zipf(1.2, sorted=True).probs(32) * 1e4)
    place = eplb_place(dist.probs(32), 4, 4)
    for T in (16, 1024):
        fast = routing_stats(T, 2, 32, 4, dist, placement=place)
        mc = monte_carlo_stats(T, 2, 32, 4, dist, samples=2000 if T < 100 else 200, placement=place)
        assert float(fast.max_gpu_load) == pytest.approx(float(mc.max_gpu_load), rel=0.03)


def test_eplb_errors():
    with pytest.raises(MoesimError, match="split evenly"):
        eplb_place(np.ones(10), 4, 1)
    with pytest.raises(MoesimError, match=">= 0"):
        eplb_place(np.array([1.0, -1.0]), 2, 0)


def test_uneven_redundant_spread_places_every_slot():
    """256 experts + 32 replicas on 72 GPUs: EPLB fills 4 slots per GPU although 32 % 72 != 0,
    and the routing statistics run on that placement (DeepSeek's EP72 decode layout)."""
    pi = np.full(256, 8 / 256)
    place = eplb_place(pi, 72, 32)
    per_gpu = np.bincount(place.gpu_of_slot, minlength=72)
    assert per_gpu.min() == per_gpu.max() == 4
    assert int(place.replicas.sum()) == 288 and place.replicas.min() >= 1
    # 32 experts have two replicas at half load each: the busiest GPU holds full-load ones
    assert place.max_mean_ratio >= 1.0


@pytest.mark.slow
def test_routing_stats_on_an_uneven_redundant_spread():
    """The routing statistics on 256 + 32 slots over EP72 (about 5 s: the EP72 load table)."""
    stats = routing_stats(64, 8, 256, 72, redundant_experts=32)
    assert stats.max_load_ratio >= 1.0 and stats.active_experts_max_gpu <= 4.0
    assert stats.remote_gpus_per_token <= 8.0
