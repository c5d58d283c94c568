"""M/G/1 queueing delay before the first token."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from moesim.engine.queueing import (
    UNSTABLE_REASON,
    add_queueing,
    max_utilization_for_wait,
    pk_wait_s,
)


@given(st.floats(0.001, 10.0), st.lists(st.floats(0.0, 200.0), min_size=2, max_size=20))
def test_delay_non_decreasing_in_rate(service, rates):
    rates = np.sort(np.asarray(rates))
    wait = pk_wait_s(rates, service)
    assert np.all(wait[1:] >= wait[:-1])  # inf >= inf where the queue is unstable
    assert pk_wait_s(0.0, service) == 0.0


def test_md1_value_and_instability():
    # M/D/1 at ρ = 0.5, S = 1: W = ρS/(2(1-ρ)) = 0.5.
    assert pk_wait_s(0.5, 1.0) == 0.5
    assert pk_wait_s(0.5, 1.0, service_cv2=1.0) == 1.0  # M/M/1: ρS/(1-ρ)
    assert np.isinf(pk_wait_s(1.0, 1.0))


@given(st.floats(0.01, 100.0), st.floats(0.001, 10.0))
def test_max_utilization_inverts_wait(wait, service):
    rho = max_utilization_for_wait(wait, service)
    assert 0 <= rho < 1
    assert pk_wait_s(rho / service, service) <= wait * (1 + 1e-9)


def test_add_queueing_marks_overload():
    res = {
        "ttft_s": np.array([0.5, 0.5]),
        "feasible": np.array([True, True]),
        "reason": np.array(["", ""], dtype=object),
    }
    out = add_queueing(res, rate=np.array([1.0, 100.0]), batch=4)
    assert list(out["stable"]) == [True, False]
    assert out["ttft_with_queue_s"][0] > 0.5 and out["queue_delay_s"][0] > 0
    assert list(out["feasible"]) == [True, False]
    assert out["reason"][1] == UNSTABLE_REASON
    assert out["utilization"][0] == 1.0 * 0.5 / 4
