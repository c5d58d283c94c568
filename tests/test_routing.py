"""moesim.cost.routing: the fast path against the Monte-Carlo reference, invariants, inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moesim.cost.routing import (
    UNIFORM,
    dirichlet,
    inclusion_probs,
    load_histogram,
    monte_carlo_stats,
    parse_routing,
    routing_stats,
    shared_expert_tokens,
    zipf,
)
from moesim.cost.routing.montecarlo import sample_topk, stats_from_picks
from moesim.cost.routing.stats import build_table, layer_routing
from moesim.errors import MoesimError

GRID_T = [1, 2, 7, 64, 512, 4096, 65536]
GRID_E = [8, 16, 64, 128, 256, 384]
GRID_K = [1, 2, 4, 6, 8]
GRID_G = [1, 2, 8, 32, 64, 256]
GRID_DISTS = [UNIFORM, zipf(0.8), zipf(1.2), dirichlet(0.3), dirichlet(1.0)]
HELD = ("active_experts", "max_gpu_load")  # held to 3%
REPORTED = (
    "active_experts_max_gpu",
    "padded_assignments",
    "dropped_assignments",
    "remote_gpus_per_token",
)
TABLE_TO_STAT = {"active_experts": "active_frac", "max_gpu_load": "max_ratio"}


def _samples(T: int) -> int:
    return int(np.clip(2**19 // T, 6, 4000))


def _fast_from_table(tab, i, T, k, E, G):
    A = T * k
    max_load = tab["max_ratio"][i] * A / G
    return {
        "active_experts": tab["active_frac"][i] * E,
        "max_gpu_load": max_load,
        "active_experts_max_gpu": tab["active_max_gpu"][i] if G > 1 else tab["slot_active_frac"][i],
        "padded_assignments": tab["padded_ratio"][i] * A,
        "dropped_assignments": tab["drop_rate"][i] * A,
    }


@pytest.mark.slow
@pytest.mark.parametrize("dist", GRID_DISTS, ids=lambda d: d.name)
def test_fast_path_within_3pct_of_monte_carlo(dist):
    """The accurate path (the tables behind routing_stats, evaluated at the grid T, which are
    table nodes) against Monte Carlo over T × E × k × G; prints the max % error per statistic."""
    worst = {name: (0.0, None) for name in HELD + REPORTED}
    for E in GRID_E:
        p = dist.probs(E)
        for T in GRID_T:
            rng = np.random.default_rng([E, T])
            picks = sample_topk(T, max(GRID_K), p, _samples(T), rng, method="sequential")
            for k in GRID_K:
                for G in [g for g in GRID_G if g <= E and E % g == 0]:
                    mc = stats_from_picks(picks[:, :, :k], E, G, block_m=16, capacity_factor=1.25)
                    model = layer_routing(p, k, G)
                    fast = _fast_from_table(
                        build_table(model, np.array([T]), 16, 1.25), 0, T, k, E, G
                    )
                    fast["remote_gpus_per_token"] = model.remote
                    for name in HELD + REPORTED:
                        ref = mc[name]
                        if name == "dropped_assignments":  # drops as % of assignments
                            err = 100 * (fast[name] - ref) / (T * k)
                        else:
                            err = 100 * (fast[name] - ref) / ref if ref > 0 else 0.0
                        if abs(err) > abs(worst[name][0]):
                            worst[name] = (err, (T, E, k, G))
    print(f"\n{dist.name}: max % error vs Monte Carlo (T, E, k, G):")
    for name, (err, where) in worst.items():
        print(f"  {name:28s} {err:+7.2f}%  at {where}")
    for name in HELD:
        assert abs(worst[name][0]) < 3.0, (name, worst[name])


def test_small_grid_against_monte_carlo():
    """A fast subset of the grid through the public API (routing_stats and monte_carlo_stats)."""
    for dist in (UNIFORM, zipf(1.2)):
        for T, E, k, G in [(7, 64, 2, 8), (64, 16, 4, 2), (512, 128, 6, 32)]:
            fast = routing_stats(T, k, E, G, dist)
            mc = monte_carlo_stats(T, k, E, G, dist, samples=3000 if T < 100 else 400, seed=1)
            for name in HELD:
                assert float(getattr(fast, name)) == pytest.approx(
                    float(getattr(mc, name)), rel=0.03
                )


def test_interpolation_between_table_nodes_is_accurate():
    for dist in (UNIFORM, dirichlet(0.3)):
        model = layer_routing(dist.probs(64), 4, 8)
        t_off = np.array([70, 100, 333, 1000, 3000, 12345, 50000])
        exact = build_table(model, t_off, 16, 1.0)
        fast = routing_stats(t_off, 4, 64, 8, dist, block_m=16, capacity_factor=1.0)
        A = t_off * 4
        np.testing.assert_allclose(fast.max_gpu_load, exact["max_ratio"] * A / 8, rtol=0.003)
        np.testing.assert_allclose(fast.active_experts, exact["active_frac"] * 64, rtol=0.003)
        np.testing.assert_allclose(fast.padded_assignments, exact["padded_ratio"] * A, rtol=0.003)


def test_inclusion_probabilities_match_sampling():
    for dist in (zipf(1.2), dirichlet(0.3)):
        p = dist.probs(16)
        pi = inclusion_probs(p, 4)
        assert pi.sum() == pytest.approx(4, abs=1e-6)
        picks = sample_topk(100_000, 4, p, 1, np.random.default_rng(3))
        emp = np.bincount(picks.ravel(), minlength=16) / 100_000
        np.testing.assert_allclose(pi, emp, atol=0.005)
        assert np.all(pi <= 1) and np.all(pi >= p - 1e-12)


def test_gumbel_and_sequential_samplers_agree():
    p = dirichlet(0.3).probs(8)
    a = sample_topk(50_000, 6, p, 1, np.random.default_rng(0), "gumbel")
    b = sample_topk(50_000, 6, p, 1, np.random.default_rng(1), "sequential")
    for j in range(6):
        np.testing.assert_allclose(
            np.bincount(a[0, :, j], minlength=8) / 5e4,
            np.bincount(b[0, :, j], minlength=8) / 5e4,
            atol=0.01,
        )
    assert all(len(set(row)) == 6 for row in b[0, :500].tolist())


def test_uniform_closed_form_active_experts():
    T = np.array([0, 1, 5, 100, 10_000])
    s = routing_stats(T, 2, 64)
    np.testing.assert_allclose(s.active_experts, 64 * (1 - (1 - 2 / 64) ** T))


# ---------------------------------------------------------------- capacity factor


@pytest.mark.parametrize("dist", [UNIFORM, zipf(1.2), dirichlet(0.3)], ids=lambda d: d.name)
def test_drops_fall_with_capacity_and_vanish_at_e_over_k(dist):
    E, k, T = 64, 2, 4096
    rates = [
        float(routing_stats(T, k, E, 8, dist, capacity_factor=c).drop_rate)
        for c in (0.5, 1.0, 1.25, 2.0, 4.0)
    ]
    assert all(a >= b - 1e-12 for a, b in zip(rates, rates[1:], strict=False))
    assert float(routing_stats(T, k, E, 8, dist, capacity_factor=E / k).drop_rate) == pytest.approx(
        0, abs=1e-12
    )


def test_uniform_capacity_one_drops_a_few_percent():
    rate = float(routing_stats(4096, 2, 64, 8, capacity_factor=1.0).drop_rate)
    assert 0.01 < rate < 0.1
    mc = monte_carlo_stats(4096, 2, 64, 8, capacity_factor=1.0, samples=100)
    assert rate == pytest.approx(float(mc.drop_rate), rel=0.05)


# ---------------------------------------------------------------- invariants


@settings(max_examples=15, deadline=None)
@given(
    E_G=st.sampled_from([(8, 2), (16, 8), (64, 8), (64, 64), (128, 32)]),
    k=st.integers(1, 8),
    spec=st.sampled_from(["uniform", "zipf:0.8", "zipf:1.2:sorted", "dirichlet:0.3"]),
)
def test_invariants(E_G, k, spec):
    E, G = E_G
    k = min(k, E)
    T = np.array([0, 1, 2, 3, 10, 50, 200, 1000, 3000])
    s = routing_stats(T, k, E, G, spec, block_m=8)
    assert np.all(s.active_experts <= np.minimum(E, T * k) + 1e-9)
    assert np.all(np.diff(s.active_experts) >= -1e-9)
    assert np.all(s.max_gpu_load >= s.mean_gpu_load - 1e-9)
    assert np.all(s.padded_assignments >= T * k - 1e-6)
    assert np.all(s.remote_gpus_per_token <= min(k, G - 1) + 1e-9)
    if G == 1:
        assert np.all(s.remote_gpus_per_token == 0)


def test_g1_has_no_remote_and_no_straggler():
    s = routing_stats([1, 100], 4, 16, 1, "zipf:1.2")
    assert np.all(s.remote_gpus_per_token == 0)
    np.testing.assert_allclose(s.max_gpu_load, s.mean_gpu_load)


def test_broadcasts_over_t_g_k_e():
    s = routing_stats(np.array([[1], [100]]), np.array([1, 2, 8]), 64, np.array([[1], [8]]))
    assert s.max_gpu_load.shape == (2, 3)


def test_sorted_zipf_is_the_adversarial_placement():
    a = float(routing_stats(4096, 2, 64, 8, zipf(1.2)).max_load_ratio)
    b = float(routing_stats(4096, 2, 64, 8, zipf(1.2, sorted=True)).max_load_ratio)
    assert b > a


def test_shared_expert_tokens_is_every_token():
    np.testing.assert_array_equal(shared_expert_tokens([0, 7, 100]), [0, 7, 100])


# ---------------------------------------------------------------- inputs and histograms


@pytest.mark.parametrize(
    "spec", ["", "zipf", "zipf:x", "dirichlet:0", "dirichlet:-1", "pareto:1", "uniform:2", "hist:"]
)
def test_bad_routing_specs(spec):
    with pytest.raises(MoesimError, match="routing"):
        parse_routing(spec)


def test_parse_routing_kinds():
    assert parse_routing("uniform") == UNIFORM
    assert parse_routing("zipf:1.2").name == "zipf:1.2"
    assert parse_routing("zipf:1.2:sorted").sorted
    assert parse_routing("dirichlet:0.3").kind == "dirichlet"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tokens": 10, "top_k": 9, "num_experts": 8}, "exceeds"),
        ({"tokens": 10, "top_k": 2, "num_experts": 64, "ep": 3}, "split evenly"),
        ({"tokens": -1, "top_k": 2, "num_experts": 64}, ">= 0"),
        (
            {"tokens": 10, "top_k": 2, "num_experts": 64, "ep": 3, "redundant_experts": 4},
            "split evenly",
        ),
    ],
)
def test_input_errors(kwargs, match):
    with pytest.raises(MoesimError, match=match):
        routing_stats(**kwargs)


def test_redundant_slots_make_uneven_ep_fit():
    s = routing_stats(1000, 2, 64, 3, "zipf:1.2", redundant_experts=2)
    assert float(s.max_gpu_load) >= float(s.mean_gpu_load)


def test_histogram_formats(tmp_path):
    (tmp_path / "one.csv").write_text("5,1,1,1\n")
    (tmp_path / "layers.csv").write_text("e0,e1,e2,e3\n5,1,1,1\n1,1,1,5\n")
    (tmp_path / "long.csv").write_text("layer,expert,count\n0,0,5\n0,1,1\n0,2,1\n0,3,1\n1,3,2\n")
    (tmp_path / "list.json").write_text("[5, 1, 1, 1]")
    (tmp_path / "nested.json").write_text(json.dumps({"layers": [[5, 1, 1, 1], [1, 1, 1, 5]]}))
    assert load_histogram(tmp_path / "one.csv").shape == (4,)
    assert load_histogram(tmp_path / "layers.csv").shape == (2, 4)
    assert load_histogram(tmp_path / "long.csv").shape == (2, 4)
    assert load_histogram(tmp_path / "list.json", num_experts=4).shape == (4,)
    dist = parse_routing(f"hist:{tmp_path / 'nested.json'}")
    assert dist.probs(4).shape == (2, 4)
    both = routing_stats(100, 1, 4, 2, dist)
    one = routing_stats(100, 1, 4, 2, dist, layer=0)
    assert float(both.max_gpu_load) == pytest.approx(float(one.max_gpu_load))  # mirrored layers


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        ("short.csv", "1,2,3\n", "3 experts, but the model has 4"),
        ("neg.csv", "1,-2,3,4\n", "negative count"),
        ("zero.json", "[0, 0, 0, 0]", "all counts are zero"),
        ("word.csv", "1,2\n3,x\n", "line 2"),
        ("empty.csv", "", "empty"),
        ("ragged.json", "[[1,2,3,4],[1,2]]", "layer 1"),
        ("bad.json", "[1, 2,", "invalid JSON"),
    ],
)
def test_malformed_histograms(tmp_path, name, text, match):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(MoesimError, match=match) as info:
        load_histogram(path, num_experts=4)
    assert name in str(info.value) and "\n" not in str(info.value)


# ---------------------------------------------------------------- CLI


def test_cli_routing_json_and_errors(tmp_path):
    from typer.testing import CliRunner

    from moesim.cli import app

    runner = CliRunner()
    args = [
        "routing",
        "--tokens",
        "7,512",
        "--experts",
        "64",
        "--top-k",
        "2",
        "--ep",
        "8",
        "--routing",
        "zipf:1.2",
    ]
    res = runner.invoke(app, [*args, "--block-m", "16", "--capacity-factor", "1.25", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    assert len(rows) == 2 and set(rows[0]) >= {
        "tokens",
        "max_gpu_load",
        "remote_gpus_per_token",
        "drop_rate",
    }
    res = runner.invoke(
        app, ["routing", "--tokens", "64", "-e", "16", "-k", "2", "--monte-carlo", "50", "--json"]
    )
    assert "mc" in json.loads(res.output) and "error_pct" in json.loads(res.output)
    res = runner.invoke(
        app, [*args[:5], "--top-k", "2", "--ep", "8", "--chart", str(tmp_path / "load")]
    )
    assert res.exit_code == 0 and (tmp_path / "load.png").exists()
    bad = runner.invoke(app, ["routing", "--tokens", "10", "-e", "64", "-k", "2", "--ep", "3"])
    assert isinstance(bad.exception, MoesimError)


@pytest.mark.parametrize("dist,ep", [("uniform", 1), ("uniform", 8), ("zipf:1.2", 8)])
def test_token_tiles_in_one_pass_pad_as_a_call_per_tile_does(dist, ep):
    # the fused MoE's token tile candidates share one interpolation: the same straggler rows
    # as a routing_stats call per block size
    T = np.array([1.0, 7.0, 64.0, 500.0, 4096.0])
    both = routing_stats(T, 8, 256, ep=ep, dist=dist, block_m=64, tiles=(16, 64, 256))
    for b in (16, 64, 256):
        one = routing_stats(T, 8, 256, ep=ep, dist=dist, block_m=b)
        np.testing.assert_allclose(
            both.padded_max_gpu_by_tile[b], one.padded_assignments_max_gpu, rtol=1e-12
        )
    # by hand: one token, top-8 of 256 on one GPU, is 8 experts with one row each, padded to
    # 8 x 16 rows at tiles of 16 and 8 x 64 at 64
    one_token = routing_stats(1.0, 8, 256, tiles=(16, 64))
    assert float(one_token.padded_max_gpu_by_tile[16]) == pytest.approx(128.0)
    assert float(one_token.padded_max_gpu_by_tile[64]) == pytest.approx(512.0)
    assert routing_stats(T, 8, 256).padded_max_gpu_by_tile is None
