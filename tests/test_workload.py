"""Workload: validation, prefix-cache reuse in prefill, queueing under an arrival rate."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.engine import static as serving
from moesim.errors import MoesimError
from moesim.spec.hardware import load_hardware
from moesim.spec.model import load_model
from moesim.spec.workload import Workload

H100 = load_hardware("h100-sxm")


def test_prefix_cache_hit_shortens_prefill_only():
    m = load_model("llama-3.1-8b")
    hits = np.array([0.0, 0.25, 0.5, 0.9, 1.0])
    r = serving.predict(
        m, H100, batch=8, input_len=4096, output_len=128, prefix_cache_hit_rate=hits
    )
    assert np.all(np.diff(r["ttft_s"]) < 0)
    assert np.ndim(r["tpot_s"]) == 0  # decode reads the same KV cache whatever the hit rate
    base = serving.predict(m, H100, batch=8, input_len=4096, output_len=128)
    assert r["ttft_s"][0] == pytest.approx(base["ttft_s"], rel=1e-12)
    assert np.all(r["ttft_s"] >= r["ttft_floor_s"])  # a full hit still computes the last token


def test_workload_predict_with_rate_adds_queueing():
    w = Workload(batch=16, input_len=1024, output_len=128, rate_per_s=2.0)
    r = w.predict(load_model("mixtral-8x7b"), H100, None)
    assert r["queue_delay_s"] >= 0 and r["ttft_with_queue_s"] >= r["ttft_s"]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(batch=0),
        dict(input_len=-1),
        dict(prefix_cache_hit_rate=1.5),
        dict(rate_per_s=-1),
        dict(capacity_factor=0),
    ],
)
def test_workload_rejects_bad_values(kwargs):
    with pytest.raises(MoesimError):
        Workload(**kwargs)
