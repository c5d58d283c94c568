"""Layout invariants: memory per GPU never grows with more GPUs; a layout that fits is feasible."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from moesim.cost.ops import routing_or_default
from moesim.engine import static as serving
from moesim.spec.deployment import Layout, check_layout
from moesim.spec.hardware import load_hardware
from moesim.spec.model import load_model

MODELS = {
    n: load_model(n) for n in ("mixtral-8x7b", "deepseek-v3", "llama-3.1-70b", "qwen3-30b-a3b")
}
HW = load_hardware("h200")
POW = st.sampled_from([1, 2, 4, 8])
ROUTING = routing_or_default(None)


def _mem(m, lay, seqs=8, ctx=2048, tokens=8):
    w, kv, act = serving.memory_per_gpu(m, HW, lay, seqs, ctx, tokens)
    return np.asarray(w + kv + act)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(sorted(MODELS)), POW, POW, POW, st.sampled_from(["tp", "ep", "pp"]))
def test_more_gpus_never_increase_memory_per_gpu(name, tp, ep, pp, grow):
    """For a fixed number of sequences per DP group (each holding the same context) and fixed
    tokens per step, doubling tp, ep or pp — where the layout stays valid — never raises weights +
    KV + activation bytes on the fullest GPU."""
    m = MODELS[name]
    ep = ep if m.is_moe else 1
    base = Layout(tp=tp, ep=min(ep, tp), pp=pp)
    bigger = base.with_(**{grow: getattr(base, grow) * 2})
    if grow == "ep" and bigger.ep > bigger.tp:
        bigger = bigger.with_(tp=bigger.ep)
    if not (check_layout(m, base)[0] and check_layout(m, bigger)[0]):
        return
    assert _mem(m, bigger) <= _mem(m, base) * (1 + 1e-12)


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from(sorted(MODELS)),
    POW,
    st.sampled_from([1, 2, 4]),
    st.integers(1, 512),
    st.integers(16, 8192),
)
def test_a_layout_that_fits_is_never_infeasible(name, tp, pp, batch, ctx):
    m = MODELS[name]
    lay = Layout(tp=tp, pp=pp, ep=tp if m.is_moe else 1, weight_dtype="fp8")
    res = serving.predict_phase(
        m, HW, lay, phase="decode", batch=batch, context_len=ctx, routing=ROUTING
    )
    ok, _ = check_layout(m, lay)
    fits = res["memory_bytes_per_gpu"] <= HW.hbm_capacity_bytes * lay.memory_utilization
    if ok and fits:
        assert bool(res["feasible"]), res["reason"]
    else:
        assert not bool(res["feasible"])


def test_ep_alltoall_bytes_zero_at_ep1_and_grow_with_remote_share():
    from moesim.cost.ops import step_ops

    m = MODELS["deepseek-v3"]

    def a2a(ep, dp, gpn=None):
        lay = Layout(tp=1, ep=ep, dp=dp, weight_dtype="fp8", gpus_per_node=gpn)
        ops, _ = step_ops(m, HW, lay, "decode", 32, 1, 2048, ROUTING)
        d = [o for o in ops if o.name == "moe.dispatch"]
        return (0.0, 0.0) if not d else (float(d[0].intra_bytes), float(d[0].inter_bytes))

    assert a2a(1, 8) == (0.0, 0.0)
    intra8, inter8 = a2a(8, 8)
    assert intra8 > 0 and inter8 == 0  # one node: all NVLink
    intra32, inter32 = a2a(32, 32)
    assert inter32 > 0 and inter32 / (intra32 + inter32) > 0.5


def test_redundant_experts_need_only_the_slot_count_to_divide():
    """(E + R) % ep == 0 is the only rule: DeepSeek's production layouts put 256 + 32 = 288
    slots on EP72 (4 per GPU) and EP144 (2 per GPU) although 32 redundant experts do not spread
    evenly over 72 or 144 GPUs."""
    m = MODELS["deepseek-v3"]
    for ep in (72, 144, 32, 288):
        lay = Layout(tp=1, dp=ep, ep=ep, redundant_experts=32)
        ok, reason = check_layout(m, lay)
        assert bool(ok), reason
    ok, reason = check_layout(m, Layout(tp=1, dp=72, ep=72, redundant_experts=30))
    assert not bool(ok) and "redundant slots" in str(reason)
    ok, _ = check_layout(m, Layout(tp=1, dp=72, ep=72))  # 256 % 72 != 0 without replicas
    assert not bool(ok)
