"""Expert offload: hit rates from cache size and routing skew, and their cost in the step."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.cost.offload import expected_misses, hit_rate, host_memory_check, with_offload
from moesim.cost.routing import zipf
from moesim.errors import MoesimError
from moesim.spec.deployment import Layout
from moesim.spec.hardware import load_hardware
from moesim.spec.model import load_model

E, K = 64, 6


@pytest.mark.parametrize("policy", ["lfu", "lru"])
def test_uniform_hit_rate_is_cache_fraction(policy):
    for c in (0.0, 0.25, 0.5, 0.9, 1.0):
        h = hit_rate(None, num_experts=E, top_k=K, tokens=16, cache_fraction=c, policy=policy)
        assert float(h) == pytest.approx(c, abs=1e-6)


@pytest.mark.parametrize("policy", ["lfu", "lru"])
def test_hit_rate_rises_with_cache_and_skew(policy):
    caches = np.linspace(0.0, 1.0, 11)
    for s in (0.0, 0.8, 1.5):
        h = hit_rate(
            zipf(s), num_experts=E, top_k=K, tokens=8, cache_fraction=caches, policy=policy
        )
        assert np.all(np.diff(h) >= -1e-9)
    skews = [
        float(
            hit_rate(zipf(s), num_experts=E, top_k=K, tokens=8, cache_fraction=0.25, policy=policy)
        )
        for s in (0.0, 0.5, 1.0, 1.5)
    ]
    assert skews == sorted(skews) and skews[-1] > skews[0] + 0.1


def test_lfu_static_cache_beats_lru():
    d = zipf(1.2)
    lfu = hit_rate(d, num_experts=E, top_k=K, tokens=4, cache_fraction=0.3, policy="lfu")
    lru = hit_rate(d, num_experts=E, top_k=K, tokens=4, cache_fraction=0.3, policy="lru")
    assert lfu >= lru


def test_prefill_fetches_nearly_every_uncached_expert():
    m = expected_misses(
        num_experts=E, top_k=K, tokens=np.array([1, 4096]), cache_fraction=0.5, ep=1
    )
    assert m[0] == pytest.approx(K * 0.5)
    assert m[1] == pytest.approx(E * 0.5, rel=1e-6)


def test_bad_policy_is_a_user_error():
    with pytest.raises(MoesimError):
        expected_misses(num_experts=E, top_k=K, tokens=1, cache_fraction=0.5, policy="fifo")


def test_decode_time_rises_with_offload_fraction():
    from moesim.engine import static as serving

    m, hw = load_model("mixtral-8x7b"), load_hardware("h100-sxm")
    frac = np.array([0.0, 0.25, 0.5, 0.75])
    lay = Layout(tp=2, offload_fraction=frac)
    routing = with_offload(None, m)
    res = serving.predict_phase(
        m, hw, lay, phase="decode", batch=16, context_len=1024, routing=routing
    )
    assert np.all(np.diff(res["tpot_s"]) > 0)
    assert np.all(np.diff(res["weights_bytes_per_gpu"]) < 0)


def test_host_memory_check():
    m, hw = load_model("deepseek-v3"), load_hardware("h800")
    fits, reason = host_memory_check(
        m, hw, Layout(tp=8, weight_dtype="fp8", offload_fraction=np.array([0.5, 1.0]))
    )
    assert fits[0]
    fits, reason = host_memory_check(m, hw, Layout(tp=1, weight_dtype="bf16", offload_fraction=0.9))
    assert not fits and "host memory" in str(reason)
