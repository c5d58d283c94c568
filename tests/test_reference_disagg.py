"""Disaggregated serving against a small discrete-event simulation written here (complements
test_disagg.py). The step times (prefill of one prompt, decode TPOT, KV transfer) come from the
model; what is held to the simulation is how the model turns them into service under load: the
queueing wait before prefill, the decode pool it sizes, and the throughput it reports.

The simulated system: requests arrive as a Poisson process of rate λ; each goes to one of the
n_p prefill instances at random and waits there in FIFO order (Lindley's recursion); its prefill
takes S; its KV cache then crosses to the decode pool, where it holds one of n_d x batch slots
for (output_len - 1) TPOT.
"""

from __future__ import annotations

import numpy as np
import pytest

from moesim.engine.disagg import predict_disaggregated
from moesim.spec.hardware import load_hardware
from moesim.spec.model import load_model

SPEC = "prefill=tp2,batch1;decode=tp2"  # one prompt per prefill step: service time = prefill_s
IN, OUT, BATCH = 2048, 256, 64


def _model(rate: float) -> dict:
    return predict_disaggregated(
        load_model("mixtral-8x7b"), load_hardware("h100-sxm"), SPEC, batch=BATCH, input_len=IN,
        output_len=OUT, rate=rate,
    )  # fmt: skip


def simulate(rate, n_prefill, service_s, kv_s, hold_s, requests=150_000, seed=0) -> dict:
    """Event-by-event: returns mean TTFT, mean decode occupancy, served requests/s."""
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / rate, requests))
    server = rng.integers(0, int(n_prefill), requests)
    free_at = np.zeros(int(n_prefill))  # when each prefill instance finishes its queue
    done = np.empty(requests)
    for i in range(requests):  # Lindley: start = max(arrival, server free), FIFO per server
        s = server[i]
        start = max(arrivals[i], free_at[s])
        free_at[s] = start + service_s
        done[i] = free_at[s]
    ttft = done + kv_s - arrivals
    enter, leave = done + kv_s, done + kv_s + hold_s
    warm = requests // 10  # drop the start-up transient
    t0, t1 = enter[warm], enter[-1] - hold_s
    # time-average number of sequences in the decode pool over [t0, t1]
    occupied = np.clip(np.minimum(leave, t1) - np.maximum(enter, t0), 0, None).sum() / (t1 - t0)
    served = np.sum((leave >= t0) & (leave <= t1)) / (t1 - t0)
    return {"ttft_s": ttft[warm:].mean(), "occupancy": occupied, "served_per_s": served}


@pytest.mark.parametrize("rate", [12.0, 30.0])
def test_ttft_under_load_matches_the_simulation(rate):
    r = _model(rate)
    n_p, n_d = float(r["prefill_instances"]), float(r["decode_instances"])
    S, kv, tpot = float(r["prefill_s"]), float(r["kv_transfer_s"]), float(r["tpot_s"])
    hold = (OUT - 1) * tpot
    sim = simulate(rate, n_p, S, kv, hold)
    rho = rate * S / n_p
    print(f"rate {rate}/s: {n_p:.0f} prefill (rho {rho:.2f}), {n_d:.0f} decode instances; TTFT "
          f"model {r['ttft_s'] * 1e3:.2f} ms, simulated {sim['ttft_s'] * 1e3:.2f} ms")  # fmt: skip
    assert rho <= 0.8 + 1e-9  # the sizing rule the model states (max_utilization)
    assert float(r["ttft_s"]) == pytest.approx(sim["ttft_s"], rel=0.04)


@pytest.mark.parametrize("rate", [12.0, 30.0])
def test_decode_pool_and_throughput_match_the_simulation(rate):
    r = _model(rate)
    n_p, n_d = float(r["prefill_instances"]), float(r["decode_instances"])
    hold = (OUT - 1) * float(r["tpot_s"])
    sim = simulate(rate, n_p, float(r["prefill_s"]), float(r["kv_transfer_s"]), hold)
    # Little's law as the simulation measures it: the pool the model sized holds the load, and
    # one instance fewer would not
    assert sim["occupancy"] <= n_d * BATCH
    assert sim["occupancy"] > (n_d - 1) * BATCH * 0.97
    served_tokens = sim["served_per_s"] * OUT
    assert float(r["output_tokens_per_s_per_gpu"]) == pytest.approx(
        served_tokens / float(r["num_gpus"]), rel=0.03
    )
