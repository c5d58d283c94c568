"""The capacity planner against references outside it (complements test_planner.py, which
compares the planner with its own table): hand arithmetic from config.json and datasheets, and a
small discrete-event simulation of the plans it recommends."""

from __future__ import annotations

import math

import numpy as np
import pytest

from moesim.plan.planner import plan
from moesim.spec.hardware import load_hardware

H100 = load_hardware("h100-sxm")
RATE, IN, OUT, TTFT_SLO, TPOT_SLO = 5.0, 1024, 256, 1.0, 0.05
PARAMS = {"llama-3.1-8b": 8_030_261_248, "mixtral-8x7b": 46_702_792_704}  # safetensors indexes


@pytest.fixture(scope="module", params=["llama-3.1-8b", "mixtral-8x7b"])
def result(request):
    return request.param, plan(
        request.param, ["h100-sxm"], ttft_slo=TTFT_SLO, tpot_slo=TPOT_SLO, rate=RATE,
        input_len=IN, output_len=OUT, max_gpus=8, modes=("aggregated", "disaggregated"),
    )  # fmt: skip


def test_every_plan_respects_the_datasheet_decode_floor(result):
    """A decode step of a replica reads every weight it uses at least once, and its slowest GPU
    takes at least the average: TPOT >= bytes read / (GPUs of the replica x 3.35 TB/s, the H100
    datasheet). For Mixtral a step reads the 1.6 B non-expert parameters and the experts its
    tokens pick: 8(1 - (1 - 2/8)^T) of 8 for T tokens (uniform routing)."""
    name, res = result
    assert res.best
    for p in res.best:
        if name == "mixtral-8x7b":
            expert = 3 * 4096 * 14336 * 32  # one expert's gate, up, down over 32 layers
            tokens = p["batch"]
            read = (PARAMS[name] - 8 * expert) + 8 * (1 - 0.75**tokens) * expert
        else:
            read = PARAMS[name]
        gpus = p["gpus_per_replica"] if p["mode"] == "aggregated" else p["decode_gpus"]
        floor = read * 2 / (gpus * H100.hbm_bandwidth_bytes_per_s)
        assert p["tpot_s"] >= floor, (p, floor)


def test_cost_is_price_times_gpus_over_the_requested_token_rate(result):
    _, res = result
    for p in res.best:
        hand = H100.price_usd_per_hour * p["gpus"] / 3600 / (RATE * OUT) * 1e6  # $/Mtok out
        assert p["usd_per_million_output_tokens"] == pytest.approx(hand, rel=1e-9)


def test_weights_fit_the_gpus_of_a_replica(result):
    """90 % of 80 GB per GPU usable: Mixtral's 93.4 GB of bf16 weights need >= 2 GPUs."""
    name, res = result
    for p in res.best:
        need = math.ceil(PARAMS[name] * 2 / (0.9 * 80e9))
        gpus = p["gpus_per_replica"] if p["mode"] == "aggregated" else p["decode_gpus"]
        assert gpus >= need, p


def _simulate_slots(rate, slots, ttft_s, hold_s, requests=60_000, seed=0) -> dict:
    """Continuous batching as a loss-free queue: ``slots`` sequences at a time, each holding its
    slot for ``hold_s``; an arrival that finds every slot taken waits for the first to free."""
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / rate, requests))
    free = np.zeros(int(slots))  # when each slot frees (a heap would do; slots are few)
    waits = np.empty(requests)
    for i, t in enumerate(arrivals):
        j = int(np.argmin(free))
        start = max(t, free[j])
        waits[i] = start - t
        free[j] = start + hold_s
    warm = requests // 10
    return {
        "ttft_s": float(np.mean(waits[warm:]) + ttft_s),
        "p_wait": float(np.mean(waits[warm:] > 0)),
    }


def test_recommended_plans_meet_the_slo_in_a_simulation(result):
    """The planner's TTFT includes its estimate of the wait for a free slot (``slot_wait_s``);
    the simulation makes its own, so it starts from the time a request spends in its slot."""
    _, res = result
    for p in res.best:
        if p["mode"] != "aggregated":
            continue
        slots = p["batch"] * p["replicas"]
        wait = p.get("slot_wait_s") or 0.0
        sim = _simulate_slots(RATE, slots, p["ttft_s"] - wait, p["e2e_latency_s"] - wait)
        print(f"{p['topology']} tp{p['tp']} x{p['replicas']} batch {p['batch']}: simulated mean "
              f"TTFT {sim['ttft_s'] * 1e3:.1f} ms, P(wait for a slot) {sim['p_wait']:.3f}")  # fmt: skip
        assert RATE * p["e2e_latency_s"] <= slots  # Little's law: the slots hold the load
        assert sim["ttft_s"] <= TTFT_SLO
        assert p["tpot_s"] <= TPOT_SLO


def test_erlang_c_slot_wait_by_hand_and_by_simulation():
    """M/M/1 (c = 1): W = ρ H / (1 - ρ); M/M/2 at a = 1: C = 1/3, W = C H / (c - a) = H / 3;
    and an exponential-hold M/M/4 against the discrete-event queue above."""
    from moesim.engine.queueing import erlang_c_wait_s

    assert float(erlang_c_wait_s(0.5, 1, 1.0)) == pytest.approx(0.5 * 1.0 / 0.5)
    assert float(erlang_c_wait_s(1.0, 2, 1.0)) == pytest.approx(1.0 / 3.0)
    assert float(erlang_c_wait_s(3.0, 2, 1.0)) == float("inf")  # a >= c: no steady state
    assert float(erlang_c_wait_s(0.0, 2, 1.0)) == 0.0
    rng = np.random.default_rng(1)
    lam, hold, c, n = 3.0, 1.0, 4, 200_000
    arrivals = np.cumsum(rng.exponential(1.0 / lam, n))
    holds = rng.exponential(hold, n)
    free = np.zeros(c)
    waits = np.empty(n)
    for i, t in enumerate(arrivals):
        j = int(np.argmin(free))
        start = max(t, free[j])
        waits[i] = start - t
        free[j] = start + holds[i]
    assert float(np.mean(waits[n // 10 :])) == pytest.approx(
        float(erlang_c_wait_s(lam, c, hold)), rel=0.05
    )
