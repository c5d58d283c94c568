"""Two-batch overlap, layer by layer: bounds, a hand-timed timeline, an independent list-
scheduling reference, and the batch-parity saw-tooth (TPOT never falls as batch rises)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moesim.cost import overlap
from moesim.cost.ops import routing_or_default
from moesim.engine import static as serving
from moesim.spec.deployment import Layout
from moesim.spec.hardware import load_hardware
from moesim.spec.model import load_model

DUR = st.floats(0.0, 10.0, allow_nan=False)


def _work(attn_prep, attn_core, shared, experts, post, dispatch, combine, slow=1.0):
    w = overlap.LayerWork(
        *(np.asarray(float(x)) for x in (attn_prep, attn_core, shared, experts, post)),
        np.asarray(float(dispatch)),
        np.asarray(float(combine)),
    )
    if slow != 1.0:
        w.slow = {n: np.asarray(getattr(w, n)) * slow for n in overlap.STAGE_NAMES}
    return w


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["prefill", "decode"]),
    st.lists(DUR, min_size=7, max_size=7),
    st.lists(DUR, min_size=7, max_size=7),
    st.floats(1.0, 1.5),
    st.integers(1, 6),
)
def test_overlapped_layer_between_max_and_sum(phase, xa, xb, slow, layers):
    """Per layer: never faster than max(compute, comm), never slower than compute + comm, where
    compute is at full SM count (SM sharing only stretches compute while comm runs)."""
    a, b = _work(*xa, slow=slow), _work(*xb, slow=slow)
    r = overlap.two_batch_layers(phase, a, b, layers)
    compute = a.compute_s() + b.compute_s()
    comm = a.comm_s() + b.comm_s()
    tol = 1e-9 * (1.0 + compute + comm)
    assert r.period_s >= np.maximum(compute, comm) - tol
    assert r.period_s <= compute + comm + tol
    assert r.time_s >= layers * np.maximum(compute, comm) - layers * tol
    assert r.time_s <= layers * (compute + comm) + layers * tol
    assert 0.0 <= r.exposed_comm_per_layer_s <= comm + tol


def test_prefill_timeline_by_hand():
    """One prefill layer, both halves alike: attention 3, experts 2, shared 1, dispatch 1,
    combine 1 (us). Compute stream A.attn[0,3] B.attn[3,6] A.exp[6,8] B.exp[8,10] A.sh[10,11]
    B.sh[11,12]; comm stream A.disp[3,4] B.disp[6,7] A.comb[8,9] B.comb[10,11]: every all-to-all
    hides, the layer takes exactly its compute, 12."""
    w = _work(0.0, 3.0, 1.0, 2.0, 0.0, 1.0, 1.0)
    r = overlap.two_batch_layers("prefill", w, w, 1)
    assert float(r.time_s) == pytest.approx(12.0)
    assert float(r.exposed_comm_per_layer_s) == pytest.approx(0.0)
    # Long dispatches: A.disp[3,8] ends after B.attn[3,6], so A.exp waits to 8: A.exp[8,10];
    # the comm stream is FIFO: B.disp[8,13], A.comb[13,14]; B.exp[13,15], B.comb[15,16];
    # A.sh[15,16] (A.comb done at 14), B.sh[16,17]: 17.
    w = _work(0.0, 3.0, 1.0, 2.0, 0.0, 5.0, 1.0)
    r = overlap.two_batch_layers("prefill", w, w, 1)
    assert float(r.time_s) == pytest.approx(17.0)


def test_sm_sharing_slows_only_overlapped_compute():
    """With comm kernels holding SMs, compute that runs alongside is slower; the same layer with
    nothing to communicate runs at full speed."""
    slow = _work(0.0, 3.0, 1.0, 2.0, 0.0, 1.0, 1.0, slow=1.25)
    fast = _work(0.0, 3.0, 1.0, 2.0, 0.0, 0.0, 0.0, slow=1.25)
    r_slow = overlap.two_batch_layers("prefill", slow, slow, 1)
    r_fast = overlap.two_batch_layers("prefill", fast, fast, 1)
    assert float(r_fast.time_s) == pytest.approx(12.0)
    assert float(r_slow.time_s) > 12.0
    assert float(r_slow.sm_slowdown_per_layer_s) > 0


def _list_schedule(phase, a, b, layers):
    """Independent reference: build the task graph (compute-stream order, comm FIFO order and
    data dependencies as explicit edges) and take longest paths. Full-SM compute only."""
    tasks, deps = [], {}
    order = overlap._order(phase, layers)
    last_compute, last_comm = None, None
    sends = {}
    for mb, stage in order:
        w = (a, b)[mb]
        for action, name, li in stage:
            key = (action, mb, name, li)
            if action == "c":
                deps[key] = [last_compute] if last_compute else []
                tasks.append((key, float(getattr(w, name))))
                last_compute = key
            elif action == "send":
                deps[key] = [d for d in (last_compute, last_comm) if d]
                tasks.append((key, float(getattr(w, name))))
                last_comm = key
                sends[(mb, name, li)] = key
            else:
                deps[key] = [d for d in (last_compute, sends[(mb, name, li)]) if d]
                tasks.append((key, 0.0))
                last_compute = key
    finish = {}
    for key, dur in tasks:
        start = max((finish[d] for d in deps[key]), default=0.0)
        finish[key] = start + dur
    return max(finish.values())


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(["prefill", "decode"]), st.lists(DUR, min_size=7, max_size=7),
       st.lists(DUR, min_size=7, max_size=7), st.integers(1, 3))  # fmt: skip
def test_matches_an_independent_task_graph(phase, xa, xb, layers):
    a, b = _work(*xa), _work(*xb)
    r = overlap.two_batch_layers(phase, a, b, layers, sim_layers=layers)
    assert float(r.time_s) == pytest.approx(_list_schedule(phase, a, b, layers), rel=1e-9, abs=1e-9)


QWEN = load_model("qwen3-30b-a3b")
H100 = load_hardware("h100-sxm")
ROUTING = routing_or_default(None)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.integers(1, 400), grow=st.integers(1, 9), ctx=st.sampled_from([256, 2048]))
def test_more_batch_never_lowers_tpot_with_overlap(batch, grow, ctx):
    lay = Layout(tp=1, dp=4, ep=4, overlap="two-batch", weight_dtype="fp8", dispatch_dtype="fp8")
    b = np.array([batch, batch + grow], dtype=float)
    r = serving.predict_phase(
        QWEN, H100, lay, phase="decode", batch=b, context_len=ctx, routing=ROUTING
    )
    t = np.asarray(r["tpot_s"])
    assert t[1] >= t[0] * (1 - 1e-12), t


def test_dbrx_batch_parity_sawtooth_is_gone():
    """The reported case: dbrx on h200.measured, tp4 ep16 dp4, two-batch overlap gave 19.7 ms at
    batch 5 and 14.7 ms at batch 6 (fractional tokens per micro-batch met tile quantisation)."""
    m, hw = load_model("dbrx"), load_hardware("h200.measured")
    lay = Layout(tp=4, ep=16, dp=4, overlap="two-batch")
    b = np.arange(1, 33, dtype=float)
    t = serving.predict_phase(m, hw, lay, phase="decode", batch=b, context_len=1024,
                              routing=ROUTING)["tpot_s"]  # fmt: skip
    assert np.all(np.diff(t) >= -1e-12), np.round(t * 1e3, 2)


def test_overlap_reports_exposed_communication_per_layer():
    m = load_model("deepseek-v3")
    hw = load_hardware("h800.published")
    lay = Layout(tp=1, dp=16, ep=16, weight_dtype="fp8", dispatch_dtype="fp8", overlap="two-batch")
    r = serving.predict_phase(m, hw, lay, phase="decode", batch=16 * 64, context_len=2048,
                              routing=ROUTING, breakdown=True)  # fmt: skip
    o = r["overlap"]["decode"]
    assert float(o["layer_time_s"]) >= max(float(o["layer_compute_s"]), float(o["layer_comm_s"]))
    assert 0 <= float(o["layer_exposed_comm_s"]) <= float(o["layer_comm_s"]) + 1e-12
    one = serving.predict_phase(m, hw, lay.with_(overlap="none"), phase="decode", batch=16 * 64,
                                context_len=2048, routing=ROUTING, breakdown=True)  # fmt: skip
    o1 = one["overlap"]["decode"]
    # one batch hides nothing: exposed communication is all of it
    assert float(o1["layer_exposed_comm_s"]) == pytest.approx(float(o1["layer_comm_s"]))


def test_cli_breakdown_prints_the_overlap_table_and_json_carries_it():
    import json

    from typer.testing import CliRunner

    from moesim.cli import app

    args = ["predict", "-m", "qwen3-30b-a3b", "-H", "h100-sxm", "--dp", "4", "--ep", "4",
            "--batch", "64", "--phase", "decode", "--overlap", "two-batch", "--breakdown",
            "--framework", "sglang"]  # fmt: skip
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "exposed communication" in r.output
    j = json.loads(CliRunner().invoke(app, args + ["--json"]).output)
    assert j["layout"]["framework"] == "sglang"
    assert set(j["overlap"]["decode"]) >= {"layer_time_s", "layer_exposed_comm_s"}
    bad = CliRunner().invoke(app, args[:-2] + ["--framework", "tgi"])
    assert bad.exit_code != 0 and "Traceback" not in bad.output
