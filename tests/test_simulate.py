"""Request-level simulation: the scheduler against hand-worked schedules, the queueing results it
must reproduce with a toy step cost (M/D/1, M/D/inf), the step-time table against the cost
model, agreement with the steady-state formulas, and determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest

from moesim.cost.ops import routing_options
from moesim.cost.step import step
from moesim.engine.sim.engines import EngineConfig, engine_config
from moesim.engine.sim.loop import run_instance
from moesim.engine.sim.steptable import StepTable, build_step_table
from moesim.engine.simulate import simulate, simulate_disaggregated
from moesim.engine.static import predict_phase
from moesim.engine.traffic import Traffic, synthetic
from moesim.errors import MoesimError
from moesim.spec import resolve
from moesim.spec.deployment import Layout


def _run(arrival, inp, out, *, step_s=1.0, budget=8, seqs=8, block=16, blocks=1000, **kw):
    table = StepTable.constant(step_s, max(budget, seqs), seqs, int(max(np.add(inp, out))))
    return run_instance(
        np.asarray(arrival, dtype=float), np.asarray(inp), np.asarray(out), table,
        max_num_batched_tokens=budget, max_num_seqs=seqs, block_size=block, kv_blocks=blocks, **kw,
    )  # fmt: skip


# ---------------------------------------------------------------------------- hand-worked
def test_chunked_prefill_schedule_by_hand():
    """Budget 4, one-second steps. A (10 prompt tokens, 3 out) arrives at 0, B (2, 2) at 0.5.
    Steps 1-2 prefill A in chunks of 4 (B waits: the budget is spent), step 3 ends A's prompt
    (2 tokens) and takes all of B's (2): both first tokens at t=3; step 4 decodes both (B
    done at 4), step 5 decodes A (done at 5)."""
    r = _run([0.0, 0.5], [10, 2], [3, 2], budget=4, seqs=4)
    assert r.first_token_s.tolist() == [3.0, 3.0]
    assert r.finish_s.tolist() == [5.0, 4.0]
    assert r.step_prefill_tokens.tolist() == [4, 4, 4, 0, 0]
    assert r.step_decode_seqs.tolist() == [0, 0, 0, 2, 1]


def test_sequence_cap_queues_requests():
    """max_num_seqs=1: B starts only when A has finished (FCFS)."""
    r = _run([0.0, 0.0], [3, 3], [4, 2], budget=8, seqs=1)
    assert r.first_token_s.tolist() == [1.0, 5.0]
    assert r.finish_s.tolist() == [4.0, 6.0]


def test_preemption_by_recompute_by_hand():
    """One-token blocks, 10 of them. A and B (4 prompt tokens, 5 out each) both prefill in step 1
    (8 blocks). Step 2 grows both (10 blocks). Step 3 has no block for both: B, the newer, is
    preempted (its 5 blocks freed; it has made 2 tokens) and only A decodes. A finishes at t=5
    and frees its 8 blocks; B recomputes its 4 + 2 tokens in step 6 (third token at 6, a gap of
    4 s after its second) and finishes at 8."""
    r = _run([0.0, 0.0], [4, 4], [5, 5], budget=8, seqs=8, block=1, blocks=10)
    assert r.first_token_s.tolist() == [1.0, 1.0]
    assert r.finish_s.tolist() == [5.0, 8.0]
    assert r.preemptions.tolist() == [0, 1]
    assert r.step_kv_blocks.tolist() == [8, 10, 6, 7, 8, 6, 7, 8]
    assert r.resume_gaps_s.tolist() == [4.0]
    # Per-token gaps: 2 + 1 + 1 + 1 decode tokens of A, 2 of B before, 2 after, + one resume gap.
    assert int(r.step_decode_seqs.sum()) + r.resume_gaps_s.size == (5 - 1) + (5 - 1)


def test_reserve_admission_never_preempts():
    """Reserving prompt + output (TRT-LLM GUARANTEED_NO_EVICT): B waits for A's blocks."""
    r = _run([0.0, 0.0], [4, 4], [5, 5], budget=8, seqs=8, block=1, blocks=10, admission="reserve")
    assert r.preemptions.tolist() == [0, 0]
    assert r.first_token_s.tolist() == [1.0, 6.0]
    assert r.finish_s.tolist() == [5.0, 10.0]


def test_prefill_first_schedule_stalls_decodes():
    """SGLang's order: B's prefill step runs alone, so A's decoding pauses for it."""
    mixed = _run([0.0, 1.5], [2, 2], [4, 2], budget=8, seqs=8)
    first = _run([0.0, 1.5], [2, 2], [4, 2], budget=8, seqs=8, schedule="prefill-first")
    assert mixed.finish_s.tolist() == [4.0, 4.0]
    assert first.finish_s.tolist() == [5.0, 4.0]
    assert first.step_decode_seqs.tolist() == [0, 1, 0, 2, 1]


def test_requests_that_never_fit_are_rejected():
    r = _run([0.0, 1.0], [4, 40], [4, 40], block=4, blocks=10)
    assert r.rejected.tolist() == [False, True]
    assert np.isnan(r.finish_s[1]) and r.finish_s[0] == 4.0


def test_closed_loop_by_hand():
    """Two clients, three requests of (2 in, 2 out): the third starts when the first ends."""
    r = _run([np.nan] * 3, [2, 2, 2], [2, 2, 2], concurrency=2)
    assert r.arrival_s.tolist() == [0.0, 0.0, 2.0]
    assert r.finish_s.tolist() == [2.0, 2.0, 4.0]


def test_rate_capped_by_concurrency_by_hand():
    """Arrivals at 0, 0.1 and 5 s with at most one in flight (vllm bench serve --request-rate
    with --max-concurrency 1): the second is sent when the first finishes, the third on time."""
    r = _run([0.0, 0.1, 5.0], [2, 2, 2], [2, 2, 2], concurrency=1)
    assert r.arrival_s.tolist() == [0.0, 2.0, 5.0]
    assert r.finish_s.tolist() == [2.0, 4.0, 7.0]


# ---------------------------------------------------------------------------- queueing references
def _md1_wait_cdf(t: float, lam: float, service: float) -> float:
    """M/D/1 FCFS waiting-time distribution (Erlang 1909; e.g. Iversen, Teletraffic Engineering
    and Network Planning, 2015, eq. 13.32): P(W <= t) = (1 - rho) sum_{k=0}^{floor(t/S)}
    (lam (k S - t))^k / k! exp(-lam (k S - t))."""
    rho = lam * service
    total = 0.0
    for k in range(int(math.floor(t / service)) + 1):
        x = lam * (k * service - t)
        total += x**k / math.factorial(k) * math.exp(-x)
    return (1.0 - rho) * total


def _md1_wait_quantile(q: float, lam: float, service: float) -> float:
    lo, hi = 0.0, 20.0 * service
    for _ in range(80):
        mid = (lo + hi) / 2.0
        lo, hi = (mid, hi) if _md1_wait_cdf(mid, lam, service) < q else (lo, mid)
    return hi


def test_one_sequence_at_a_time_is_md1():
    """max_num_seqs=1 and a constant step time tau: each request holds the engine for exactly
    its n steps (prefill + n-1 decodes), so the wait for the first token is M/D/1 with
    service n tau: mean by Pollaczek-Khinchine, percentiles by Erlang's formula."""
    tau, n, rho = 0.01, 4, 0.7
    service = n * tau
    lam = rho / service
    t = synthetic(100_000, rate_per_s=lam, input_len=8, output_len=n, seed=3)
    r = _run(t.arrival_s, t.input_tokens, t.output_tokens, step_s=tau, budget=64, seqs=1)
    wait = r.first_token_s - t.arrival_s - tau
    assert np.allclose(r.finish_s - r.first_token_s, (n - 1) * tau)
    pk = rho * service / (2.0 * (1.0 - rho))
    assert wait.mean() == pytest.approx(pk, rel=0.03)
    for q in (0.5, 0.9, 0.99):
        exact = _md1_wait_quantile(q, lam, service)
        print(
            f"M/D/1 p{int(q * 100)} wait: simulated {np.quantile(wait, q):.5f} s, exact {exact:.5f} s"
        )
        assert np.quantile(wait, q) == pytest.approx(exact, rel=0.04)


def test_unbounded_batch_is_md_inf():
    """No cap on sequences and a constant step tau: every running request advances one token per
    step, so TPOT is exactly tau, TTFT = (residual of the step in progress, uniform on [0, tau))
    + tau when the engine never idles, and the decode batch is M/D/inf: mean lam (n - 1) tau."""
    tau, n, lam = 0.02, 50, 40.0  # lam n tau = 40 requests in flight: idle with prob e^-40
    t = synthetic(20_000, rate_per_s=lam, input_len=16, output_len=n, seed=5)
    r = _run(t.arrival_s, t.input_tokens, t.output_tokens, step_s=tau, budget=4096, seqs=4096)
    ttft = r.first_token_s - t.arrival_s
    tpot = (r.finish_s - r.first_token_s) / (n - 1)
    assert np.allclose(tpot, tau)
    for q in (0.5, 0.9, 0.99):
        assert np.quantile(ttft, q) == pytest.approx(tau * (1.0 + q), rel=0.02)
    busy = r.step_end_s > r.step_end_s[-1] * 0.1  # past the ramp-up
    assert r.step_decode_seqs[busy].mean() == pytest.approx(lam * (n - 1) * tau, rel=0.03)


# ---------------------------------------------------------------------------- the step-time table
CONFIGS = {
    "llama-8b tp1": ("llama-3.1-8b", "h100-sxm", Layout(tp=1), "uniform"),
    "mixtral tp2 ep2 zipf": ("mixtral-8x7b", "h100-sxm", Layout(tp=2, ep=2), "zipf:1.2"),
    "llama-8b tp2 pp2": ("llama-3.1-8b", "h100-sxm", Layout(tp=2, pp=2), "uniform"),
    "mixtral tp4 ep4 two-batch": (
        "mixtral-8x7b",
        "h200",
        Layout(tp=4, ep=4, overlap="two-batch"),
        "uniform",
    ),
}


@pytest.fixture(scope="module")
def tables():
    out = {}
    for name, (model, hw_name, layout, routing) in CONFIGS.items():
        m, hw = resolve(model, hw_name)
        ro = routing_options(routing)
        out[name] = (
            m,
            hw,
            layout,
            ro,
            build_step_table(m, hw, layout, ro, max_tokens=8192, max_seqs=512, max_context=6000),
        )
    return out


@pytest.mark.parametrize("name", list(CONFIGS))
def test_table_reproduces_the_step_cost(tables, name):
    """Decode-only and single-prompt steps from the table equal moesim.cost.step.step."""
    m, hw, layout, ro, table = tables[name]
    d = np.array([1, 9, 64, 333, 512])
    ctx = np.array([17.0, 900.0, 2500.0, 4321.0, 5999.0])
    ref = step(m, hw, layout, "decode", d, 1.0, ctx, ro).time_s
    assert np.allclose(table.time_s(d, d * ctx), ref, rtol=1e-3)
    p = np.array([1, 77, 1000, 4096, 8192])
    ref = step(m, hw, layout, "prefill", 1.0, p, 0.0, ro).time_s
    assert np.allclose(table.time_s(0, 0, p, table.prefill_attention_s(p, 0.0)), ref, rtol=1e-3)
    c = np.array([0.0, 1234.0, 5000.0])
    ref = step(m, hw, layout, "prefill", 1.0, 512, c, ro).time_s
    assert np.allclose(table.time_s(0, 0, 512, table.prefill_attention_s(512, c)), ref, rtol=1e-3)


def test_table_is_monotone(tables):
    """More work never takes less time: along tokens, sequences and context."""
    for _, _, _, _, t in tables.values():
        assert np.all(np.diff(t.tok_inner_s, axis=1) >= 0) and np.all(np.diff(t.head_s) >= 0)
        assert np.all(np.diff(t.dec_s, axis=0) >= 0) and np.all(np.diff(t.dec_s, axis=1) >= 0)
        assert np.all(np.diff(t.pref_s, axis=0) >= 0) and np.all(np.diff(t.pref_s, axis=1) >= 0)
        mixed = t.time_s(np.full(4, 100), np.full(4, 100 * 1000), np.array([0, 10, 100, 1000]),
                         t.prefill_attention_s(np.array([0, 10, 100, 1000]), 0.0))  # fmt: skip
        assert np.all(np.diff(mixed) > 0)


def test_routing_skew_reaches_the_steps():
    """The table carries the routing statistics: skewed routing activates fewer distinct
    experts at small batches (fewer weights read) and overloads one EP rank at large ones."""
    m, hw = resolve("mixtral-8x7b", "h100-sxm")
    lay = Layout(tp=2, ep=2)
    kw = dict(max_tokens=1024, max_seqs=256, max_context=2000)
    uni = build_step_table(m, hw, lay, routing_options("uniform"), **kw).tok_inner_s[0]
    skew = build_step_table(m, hw, lay, routing_options("zipf:1.5"), **kw).tok_inner_s[0]
    assert np.all(skew[1:33] < uni[1:33])
    assert np.all(skew[256:513] > uni[256:513]) and skew[-1] > uni[-1]


# ---------------------------------------------------------------------------- agreement
def _closed_loop_steady_state(table, conc, inp, out, gpus):
    """Closed loop, fixed lengths, C <= O clients staggered so that each step carries at most one
    prompt: a client's cycle is exactly O steps (one mixed step holding its whole prompt beside
    the other C-1 decodes, then O-1 decode steps of C), so per cycle there are C mixed steps
    and O-C decode-only ones; a request's O-1 decode steps hold the other C-1 clients' prompts.
    Decoders' cached context averages I + (O-2)/2."""
    ctx = inp + (out - 2) / 2.0
    t_mix = float(
        table.time_s(conc - 1, (conc - 1) * ctx, inp, table.prefill_attention_s(inp, 0.0))
    )
    t_dec = float(table.time_s(conc, conc * ctx))
    cycle = conc * t_mix + (out - conc) * t_dec
    return {
        "ttft_s": t_mix,
        "tpot_s": ((conc - 1) * t_mix + (out - conc) * t_dec) / (out - 1),
        "output_tokens_per_s_per_gpu": conc * out / cycle / gpus,
    }


def _simulated_steady_state(result, skip_s, until_s):
    """Means over requests that arrive after ``skip_s`` and finish before ``until_s``; output
    tokens made in that window (decode tokens of its steps plus first tokens) per second."""
    req = result.requests
    mid = (req["arrival_s"] > skip_s) & (req["finish_s"] < until_s)
    made = np.sum((req["first_token_s"] > skip_s) & (req["first_token_s"] <= until_s))
    for s in result.steps:
        window = (s["step_end_s"] > skip_s) & (s["step_end_s"] <= until_s)
        made += int(s["step_decode_seqs"][window].sum())
    return {
        "ttft_s": float(np.mean(req["ttft_s"][mid])),
        "tpot_s": float(np.mean(req["tpot_s"][mid])),
        "output_tokens_per_s_per_gpu": made / (until_s - skip_s) / result.summary["num_gpus"],
    }


AGREEMENT = {
    "llama-8b tp1": (32, 512, 256),
    "mixtral tp2 ep2 zipf": (48, 256, 384),
    "llama-8b tp2 pp2": (32, 1024, 256),
    "mixtral tp4 ep4 two-batch": (24, 2048, 200),
}


@pytest.mark.parametrize("name", list(AGREEMENT))
def test_simulation_agrees_with_the_steady_state(tables, name):
    """Constant load (closed loop), fixed lengths: the simulated mean TTFT, TPOT and throughput
    equal the steady state derived from the same step costs, within 5 %. The clients start
    one by one, a step or more apart, and all before the first finishes (its O steps take at
    least O single-sequence decode steps), so no step ever holds two prompts."""
    m, hw, layout, ro, table = tables[name]
    conc, inp, out = AGREEMENT[name]
    gpus = float(np.max(layout.num_gpus))
    ref = _closed_loop_steady_state(table, conc, inp, out, gpus)
    ramp_s = 0.8 * out * float(table.time_s(1, inp))
    t_mix = ref["ttft_s"]
    assert ramp_s / conc > t_mix  # the start times fall in different steps
    cycle_s = conc * out / ref["output_tokens_per_s_per_gpu"] / gpus
    t = synthetic(conc * 30, concurrency=conc, input_len=inp, output_len=out, ramp_up_s=ramp_s)
    res = simulate(m, hw, layout, t, engine=EngineConfig(max_num_seqs=512), routing=ro, table=table)
    assert max(int(s["step_prefill_tokens"].max()) for s in res.steps) == inp
    got = _simulated_steady_state(res, 3 * cycle_s, res.summary["duration_s"] - 3 * cycle_s)
    for key, want in ref.items():
        print(
            f"{name}: {key} simulated {got[key]:.6g}, steady state {want:.6g} ({got[key] / want - 1:+.2%})"
        )
        assert got[key] == pytest.approx(want, rel=0.05)


def test_decode_dominated_simulation_agrees_with_predict_phase():
    """Tiny prompts, long outputs: TPOT is the decode step of moesim.engine.static.predict_phase
    at the batch and the mean context."""
    m, hw = resolve("llama-3.1-8b", "h100-sxm")
    layout = Layout(tp=1)
    conc, inp, out = 64, 8, 1024
    t = synthetic(conc * 12, concurrency=conc, input_len=inp, output_len=out, ramp_up_s=8.0)
    res = simulate(m, hw, layout, t)
    ref = float(
        predict_phase(m, hw, layout, phase="decode", batch=conc, context_len=inp + out / 2)[
            "tpot_s"
        ]
    )
    got = _simulated_steady_state(res, 30.0, res.summary["duration_s"] - 30.0)["tpot_s"]
    print(
        f"decode-dominated TPOT: simulated {got:.6g} s, predict_phase {ref:.6g} s ({got / ref - 1:+.2%})"
    )
    assert got == pytest.approx(ref, rel=0.05)


@pytest.mark.parametrize(
    "ramp_up_s,arrivals",
    [(2.0, "spread"), (0.0, "bunched")],
    ids=["clients-spread", "clients-started-together"],
)
def test_agrees_with_the_inflight_steady_state(ramp_up_s, arrivals):
    """The engine's in-flight steady state (moesim.engine.inflight, closed loop) and this
    simulation are two implementations of the same schedule: clients ramped up over 2 s stay
    desynchronised ('spread'); clients started together stay in step ('bunched')."""
    from moesim.engine.inflight import predict_inflight

    m, hw = resolve("llama-3.1-8b", "h100-sxm")
    layout = Layout(tp=1)
    conc, inp, out = 32, 512, 256
    ref = predict_inflight(
        m, hw, layout, concurrency=conc, input_len=inp, output_len=out,
        token_budget=8192, max_batch=512, arrivals=arrivals,
    )  # fmt: skip
    t = synthetic(conc * 30, concurrency=conc, input_len=inp, output_len=out, ramp_up_s=ramp_up_s)
    res = simulate(m, hw, layout, t, engine=EngineConfig(max_num_seqs=512))
    got = _simulated_steady_state(res, 10.0, res.summary["duration_s"] - 10.0)
    for key in ("ttft_s", "tpot_s", "output_tokens_per_s_per_gpu"):
        want = float(np.asarray(ref[key]))
        print(f"inflight {key}: simulated {got[key]:.6g}, steady state {want:.6g}")
        assert got[key] == pytest.approx(want, rel=0.05)


# ---------------------------------------------------------------------------- determinism and API
def test_same_seed_same_result_bit_for_bit():
    m, hw = resolve("mixtral-8x7b", "h100-sxm")
    layout = Layout(tp=2, replicas=2)
    kw = dict(
        rate_per_s=30.0,
        input_len="lognormal:600:0.8",
        output_len="lognormal:120:0.8",
        arrival="gamma",
        cv=2.0,
    )
    a = simulate(
        m,
        hw,
        layout,
        synthetic(1500, seed=11, **kw),
        engine=engine_config("vllm", hw, kv_cache_tokens=20_000),
    )
    b = simulate(
        m,
        hw,
        layout,
        synthetic(1500, seed=11, **kw),
        engine=engine_config("vllm", hw, kv_cache_tokens=20_000),
    )
    c = simulate(
        m,
        hw,
        layout,
        synthetic(1500, seed=12, **kw),
        engine=engine_config("vllm", hw, kv_cache_tokens=20_000),
    )
    assert a.summary["preemptions"] > 0  # the small cache exercises preemption
    for key, col in a.requests.items():
        assert col.tobytes() == b.requests[key].tobytes(), key
    assert a.requests_frame().equals(b.requests_frame()) and a.steps_frame().equals(b.steps_frame())
    assert a.summary == b.summary and a.summary != c.summary


def test_conservation_and_bounds():
    """Every accepted request finishes after it arrives, its first token between; all output
    tokens are accounted for by decode steps, first tokens and resume gaps; throughput is
    output tokens over the run; no step is faster than the table allows."""
    m, hw = resolve("llama-3.1-8b", "h100-sxm")
    t = synthetic(
        3000, rate_per_s=60.0, input_len="uniform:10:3000", output_len="uniform:1:500", seed=4
    )
    res = simulate(
        m, hw, Layout(tp=1), t, engine=engine_config("vllm", hw, kv_cache_tokens=200_000)
    )
    r = res.requests
    assert np.all(r["arrival_s"] <= r["first_token_s"]) and np.all(
        r["first_token_s"] <= r["finish_s"]
    )
    decode_tokens = sum(
        int(s["step_decode_seqs"].sum()) + s["resume_gaps_s"].size for s in res.steps
    )
    assert decode_tokens == int((t.output_tokens - 1).sum())
    s = res.summary
    assert s["output_tokens_per_s"] == pytest.approx(t.output_tokens.sum() / s["duration_s"])
    assert 0 < s["kv_occupancy_mean"] <= s["kv_occupancy_max"] <= 1
    assert s["ttft_p50_s"] <= s["ttft_p90_s"] <= s["ttft_p99_s"]


def test_goodput_counts_requests_within_both_slos():
    m, hw = resolve("llama-3.1-8b", "h100-sxm")
    t = synthetic(500, rate_per_s=20.0, input_len=1000, output_len=100, seed=1)
    res = simulate(m, hw, Layout(tp=1), t, ttft_slo_s=0.05, tpot_slo_s=0.0085)
    r, s = res.requests, res.summary
    good = (r["ttft_s"] <= 0.05) & (r["tpot_s"] <= 0.0085)
    assert 0 < good.sum() < len(good)
    assert s["slo_attainment"] == pytest.approx(good.mean())
    assert s["goodput_requests_per_s"] == pytest.approx(good.sum() / s["duration_s"])


def test_replicas_split_the_load():
    """Two replicas at twice the rate give about the latency of one at the rate."""
    m, hw = resolve("llama-3.1-8b", "h100-sxm")
    one = simulate(
        m, hw, Layout(tp=1), synthetic(2000, rate_per_s=10.0, input_len=512, output_len=128, seed=2)
    )
    two = simulate(
        m,
        hw,
        Layout(tp=1, replicas=2),
        synthetic(4000, rate_per_s=20.0, input_len=512, output_len=128, seed=2),
    )
    assert two.summary["num_gpus"] == 2 and set(np.unique(two.requests["instance"])) == {0, 1}
    assert two.summary["tpot_mean_s"] == pytest.approx(one.summary["tpot_mean_s"], rel=0.03)
    assert two.summary["output_tokens_per_s_per_gpu"] == pytest.approx(
        one.summary["output_tokens_per_s_per_gpu"], rel=0.05
    )


def test_disaggregated_pools():
    """Prefill and decode pools: TTFT is the prefill pool's first token; the KV transfer shows in
    the second token; the decode pool never prefills (no preemption here)."""
    m, hw = resolve("llama-3.1-8b", "h100-sxm")
    t = synthetic(800, rate_per_s=20.0, input_len=2000, output_len=64, seed=9)
    res = simulate_disaggregated(m, hw, "prefill=tp1;decode=tp1,x2", t)
    r, s = res.requests, res.summary
    assert s["num_gpus"] == 3 and s["prefill_instances"] == 1 and s["decode_instances"] == 2
    pre = [x for x in res.steps if x["pool"] == "prefill"]
    dec = [x for x in res.steps if x["pool"] == "decode"]
    assert all(x["step_decode_seqs"].sum() == 0 for x in pre)
    assert all(x["step_prefill_tokens"].sum() == 0 for x in dec)
    assert np.all(r["kv_transfer_s"] > 0)
    second_gap_floor = r["kv_transfer_s"] / (t.output_tokens - 1)
    assert np.all(r["tpot_s"] >= second_gap_floor)
    assert np.all(r["finish_s"] > r["first_token_s"])
    # The prefill pool alone is an engine whose requests leave with their first token.
    alone = Traffic(t.arrival_s, t.input_tokens, np.ones_like(t.output_tokens))
    pre_only = simulate(m, hw, Layout(tp=1), alone)
    assert np.allclose(pre_only.requests["ttft_s"], r["ttft_s"], rtol=1e-9)  # same up to rounding
    with pytest.raises(MoesimError, match="not a concurrency"):
        simulate_disaggregated(m, hw, "prefill=tp1;decode=tp1", synthetic(10, concurrency=2))


def test_clear_errors():
    m, hw = resolve("llama-3.1-70b", "h100-sxm")
    t = synthetic(10, rate_per_s=1.0)
    with pytest.raises(MoesimError, match="no memory for a KV cache"):
        simulate(m, hw, Layout(tp=1), t)
    with pytest.raises(MoesimError, match="tp does not divide"):
        simulate(m, hw, Layout(tp=3), t)
    with pytest.raises(MoesimError, match="max_num_seqs"):
        EngineConfig(max_num_batched_tokens=64, max_num_seqs=128)
    with pytest.raises(MoesimError, match="unknown engine"):
        engine_config("tgi")
    assert engine_config("vllm", hw).max_num_batched_tokens == 8192
    assert engine_config("vllm", hw, max_num_batched_tokens=512).max_num_seqs == 512
    a100 = resolve("llama-3.1-8b", "a100-sxm-80gb")[1]
    assert (
        engine_config("vllm", a100).max_num_batched_tokens,
        engine_config("vllm", a100).max_num_seqs,
    ) == (2048, 256)
    assert engine_config("trtllm", hw).admission == "reserve"
    assert engine_config("sglang", hw).schedule == "prefill-first"
    empty = Traffic(np.array([0.0]), np.array([10**6]), np.array([10]))
    res = simulate(resolve("llama-3.1-8b", "h100-sxm")[0], resolve("llama-3.1-8b", "h100-sxm")[1], Layout(), empty,
                   engine=EngineConfig(kv_cache_tokens=1000))  # fmt: skip
    assert res.summary["rejected"] == 1 and res.notes


# ---------------------------------------------------------------------------- invariants
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 40),
    budget=st.integers(1, 64),
    seqs=st.integers(1, 16),
    block=st.sampled_from([1, 2, 16]),
    blocks=st.integers(4, 200),
    admission=st.sampled_from(["prompt", "reserve"]),
    schedule=st.sampled_from(["mixed", "prefill-first"]),
    closed=st.booleans(),
    kv_ready=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_scheduler_invariants(
    n, budget, seqs, block, blocks, admission, schedule, closed, kv_ready, seed
):
    """Any engine settings and traffic: every request that can fit finishes once, after its
    first token; no step holds more blocks than the cache or more tokens than the budget;
    every block comes back; every output token is accounted for."""
    seqs = min(seqs, budget) if schedule == "mixed" else seqs
    rng = np.random.default_rng(seed)
    arrival = np.cumsum(rng.exponential(0.7, n))
    inp = rng.integers(1, 60, n)
    out = rng.integers(2 if kv_ready else 1, 30, n)  # a decode pool gets requests with more to say
    r = _run(arrival, inp, out, budget=budget, seqs=seqs, block=block, blocks=blocks,
             admission=admission, schedule=schedule, concurrency=3 if closed else None,
             kv_ready=kv_ready)  # fmt: skip
    ok = ~r.rejected
    assert np.array_equal(r.rejected, -(-(inp + out) // block) > blocks)
    assert np.all(np.isfinite(r.finish_s[ok])) and np.all(r.first_token_s[ok] <= r.finish_s[ok])
    assert np.all(r.arrival_s[ok] < r.first_token_s[ok])
    assert r.free_blocks_at_end == r.kv_blocks
    assert np.all(r.step_kv_blocks <= blocks)
    assert np.all(
        r.step_prefill_tokens + (r.step_decode_seqs if schedule == "mixed" else 0) <= budget
    )
    tokens = int(r.step_decode_seqs.sum()) + r.resume_gaps_s.size
    if kv_ready:  # the first token came from elsewhere; the second is timed apart
        assert tokens + int(ok.sum()) == int((out[ok] - 1).sum())
    else:
        assert tokens == int((out[ok] - 1).sum())
    if admission == "reserve":
        assert r.preemptions.sum() == 0
    assert np.all(np.diff(r.step_end_s) > 0)
