"""Per-group-size, per-protocol collective terms fitted to NVIDIA's measured tables.

Data: tests/data/aic_comm/<system>.csv.gz (aiconfigurator-core 0.12.0 comm tables as moesim rows,
see the README there). Bounds on held-out shapes (fixed hash split of shape_key, 20 %, seed 0):
NCCL classes median |error| <= 10 %, DeepEP dispatch / combine <= 12 %.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moesim.calibrate.collectives import CollectiveCalibrator
from moesim.calibrate.measurements import heldout_shapes, usable_rows
from moesim.calibrate.predict import deepep_row_bytes, predict_collective_rows, predict_rows
from moesim.cost import collectives_ext, comm
from moesim.cost import fitted_comm as fc
from moesim.errors import MoesimError
from moesim.spec.hardware import FittedCollectives, load_hardware

DATA = Path(__file__).parent / "data" / "aic_comm"
BASE = {"h100_sxm": "h100-sxm", "h200_sxm": "h200"}
NCCL_CLASSES = ("allreduce", "allgather", "reducescatter", "alltoall")
EP_CLASSES = ("ep_dispatch", "ep_combine")
LINE = 450e9  # NVLink 4, per GPU per direction (H100 / H200 datasheets)


def _rows(system: str, framework: str) -> pd.DataFrame:
    df = pd.read_csv(DATA / f"{system}.csv.gz", low_memory=False)
    keep = df["source"].str.contains("/nccl/") | df["source"].str.contains(f"/{framework}/")
    return usable_rows(df[keep].reset_index(drop=True))


@pytest.fixture(scope="module")
def fits() -> dict:
    out = {}
    for system in BASE:
        for framework in ("trtllm", "sglang"):
            rows = _rows(system, framework)
            out[(system, framework)] = (CollectiveCalibrator(base=BASE[system]).fit(rows), rows)
    return out


# --- (a) held-out error on NVIDIA's tables ----------------------------------------------------


@pytest.mark.parametrize("system", list(BASE))
@pytest.mark.parametrize("framework", ["trtllm", "sglang"])
def test_heldout_error_per_class(fits, system, framework):
    cal, rows = fits[(system, framework)]
    held = set(heldout_shapes(rows["shape_key"], 0.2, 0))
    assert set(cal.heldout_shapes_) == held  # the documented split, recomputed here
    test = rows[rows["shape_key"].isin(held)].reset_index(drop=True)
    pred = predict_rows(load_hardware(BASE[system]).with_efficiency(
        load_hardware(BASE[system]).efficiency.model_copy(update={"collectives": cal.collectives_})
    ), test)  # fmt: skip
    err = np.abs(pred / test["median_s"].to_numpy() - 1.0)
    for cls in (*NCCL_CLASSES, *EP_CLASSES):
        sel = (test["kernel_class"] == cls).to_numpy()
        bound = 0.10 if cls in NCCL_CLASSES else 0.12
        med = float(np.median(err[sel]))
        print(f"{system} {framework} {cls}: held-out median |err| {med:.1%} (n={sel.sum()})")
        assert sel.sum() >= 20, cls
        assert med <= bound, (cls, med)
    # the report carries the same numbers
    for cls, stats in cal.report()["heldout_by_class"].items():
        sel = (test["kernel_class"] == cls).to_numpy()
        assert stats["n"] == sel.sum()
        assert stats["median_abs_error"] == pytest.approx(float(np.median(err[sel])), abs=1e-6)


def test_fitted_terms_are_physical(fits):
    """Every written bandwidth within the NVLink line rate (NIC's beyond a node), every alpha
    between 0.1 us and 1 ms; regimes ordered as NCCL's tuner uses them: alpha grows from LL to
    Simple and the bandwidth with it."""
    for (system, _), (cal, _) in fits.items():
        f = cal.collectives_.fitted
        for block in (f.nccl, f.custom_allreduce):
            for by_n in block.values():
                for terms in by_n.values():
                    for alpha, bw in terms.values():
                        assert 1e-7 <= alpha <= 1e-3 and 1e8 <= bw <= LINE * (1 + 1e-9)
        ar8 = f.nccl["all_reduce"]["8"]
        assert ar8["ll"][0] < ar8["simple"][0] and ar8["ll"][1] < ar8["simple"][1]
        for by_ep in f.deepep.values():
            for ep, terms in by_ep.items():
                for t0, bw in terms.values():
                    line = LINE if int(ep) <= 8 else 50e9
                    assert 1e-7 <= t0 <= 1e-3 and bw <= line * (1 + 1e-9), (system, ep)


def test_line_rate_clamps_are_marked(fits):
    """TensorRT-LLM's low-latency dispatch sits at ~70 us up to ~100 tokens, then rises faster
    than t0 + B / 450 GB/s allows: the fit is clamped to the line rate and says so."""
    cal, _ = fits[("h100_sxm", "trtllm")]
    marked = cal.collectives_.fitted.at_line_rate
    assert "deepep.deepep_ll.8.dispatch_fp8" in marked
    assert set(marked) == set(cal.report()["at_line_rate"])
    t0, bw = cal.collectives_.fitted.deepep["deepep_ll"]["8"]["dispatch_fp8"]
    assert bw == pytest.approx(LINE, rel=1e-3)


# --- (b) the model by hand -------------------------------------------------------------------


def test_bus_factors():
    """Thakur, Rabenseifner & Gropp 2005 / nccl-tests busBW: all-reduce 2(n-1)/n, all-gather,
    reduce-scatter and all-to-all (n-1)/n, NVLS 1, one-shot engine all-reduce n-1."""
    assert fc.bus_factor("all_reduce", "simple", 8) == pytest.approx(1.75)
    assert fc.bus_factor("all_reduce", "ll", 2) == pytest.approx(1.0)
    assert fc.bus_factor("all_reduce", "nvls", 8) == pytest.approx(1.0)
    assert fc.bus_factor("all_gather", "simple", 4) == pytest.approx(0.75)
    assert fc.bus_factor("reduce_scatter", "ll128", 8) == pytest.approx(0.875)
    assert fc.bus_factor("alltoall", "simple", 2) == pytest.approx(0.5)
    assert fc.bus_factor("custom", "oneshot", 8) == pytest.approx(7.0)
    assert fc.bus_factor("custom", "twoshot", 4) == pytest.approx(1.5)


def _profile(**blocks) -> FittedCollectives:
    return FittedCollectives(**blocks)


def test_two_protocol_minimum():
    f = _profile(nccl={"all_reduce": {"8": {"ll": [10e-6, 50e9], "simple": [30e-6, 400e9]}}})
    # 1 MB: LL 10 + 1.75e6 / 50e9 s = 45 us; Simple 30 + 1.75e6 / 400e9 = 34.375 us -> Simple
    assert fc.nccl_time_s(f, "all_reduce", 1e6, 8) == pytest.approx(34.375e-6, rel=1e-12)
    # 1 kB: LL 10.035 us; Simple 30.004 us -> LL
    assert fc.nccl_time_s(f, "all_reduce", 1e3, 8) == pytest.approx(10.035e-6, rel=1e-12)
    assert fc.nccl_time_s(f, "all_reduce", 0.0, 8) == 0.0
    assert fc.nccl_time_s(f, "all_reduce", 1e6, 1) == 0.0
    assert np.isnan(fc.nccl_time_s(f, "all_reduce", 1e6, 16))  # not fitted: caller falls back
    assert np.isnan(fc.nccl_time_s(f, "all_gather", 1e6, 8))


def test_interpolation_in_log_n():
    f = _profile(nccl={"all_reduce": {"4": {"simple": [10e-6, 100e9]},
                                      "8": {"simple": [20e-6, 200e9]}}})  # fmt: skip
    w = math.log(6 / 4) / math.log(8 / 4)  # 0.58496
    alpha, bw = 10e-6 + w * 10e-6, 100e9 + w * 100e9
    expected = alpha + 1e6 * (2 * 5 / 6) / bw  # 15.85 + 10.52 us
    assert fc.nccl_time_s(f, "all_reduce", 1e6, 6) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(26.365e-6, rel=1e-3)
    assert fc.nccl_time_s(f, "all_reduce", 1e6, 4) == pytest.approx(10e-6 + 1.5e6 / 100e9)
    assert np.isnan(fc.nccl_time_s(f, "all_reduce", 1e6, 2))  # below the fitted sizes


def test_engine_curve_wins_for_its_engine_only():
    f = _profile(
        nccl={"all_reduce": {"8": {"simple": [20e-6, 300e9]}}},
        custom_allreduce={"trtllm": {"8": {"oneshot": [3e-6, 300e9]}}},
    )
    s = 64e3
    own = 3e-6 + 7 * s / 300e9  # 4.49 us
    nccl = 20e-6 + 1.75 * s / 300e9
    assert fc.engine_allreduce_time_s(f, s, 8, "trtllm") == pytest.approx(own)
    assert fc.engine_allreduce_time_s(f, s, 8, "vllm") == pytest.approx(nccl)
    assert fc.engine_allreduce_time_s(f, s, 8, "vllm", generic_custom=5e-6) == pytest.approx(5e-6)


def test_deepep_copies_by_hand():
    # low latency: k (ep-1)/ep (token, expert) pairs leave the GPU
    intra, inter = fc.deepep_copies("deepep_ll", 8, 256, 8, 8)
    assert intra == pytest.approx(7.0) and inter == 0
    intra, inter = fc.deepep_copies("deepep_ll", 8, 256, 16, 8)
    assert intra + inter == pytest.approx(7.5) and inter == pytest.approx(7.5 * 8 / 15)
    # normal, one node: 7 peers x P(one of 8 experts among the peer's 32), the product form of
    # 1 - C(224, 8) / C(256, 8)
    miss = np.prod([(224 - i) / (256 - i) for i in range(8)])
    intra, inter = fc.deepep_copies("deepep_normal", 8, 256, 8, 8)
    assert intra == pytest.approx(7 * (1 - miss), rel=1e-12) and inter == 0
    # the routing model's own count agrees (moesim.cost.routing, an independent code path)
    from moesim.cost.routing import UNIFORM, routing_stats

    ref = routing_stats(np.array([64.0]), 8, 256, ep=8, dist=UNIFORM).remote_gpus_per_token
    assert intra == pytest.approx(float(ref[0]), rel=1e-9)
    # normal, two nodes of 8: one copy to the other node, the rest inside the node
    node_miss = np.prod([(128 - i) / (256 - i) for i in range(8)])
    gpu_miss = np.prod([(240 - i) / (256 - i) for i in range(8)])
    intra, inter = fc.deepep_copies("deepep_normal", 8, 256, 16, 8)
    assert inter == pytest.approx(1 - node_miss, rel=1e-12)
    assert intra == pytest.approx(15 * (1 - gpu_miss) - (1 - node_miss), rel=1e-12)


def test_deepep_time_by_hand():
    f = _profile(deepep={"deepep_ll": {"8": {"dispatch_fp8": [12e-6, 250e9]}}})
    row = pd.DataFrame([{"kernel_class": "ep_dispatch", "impl": "deepep_ll", "tokens": 128,
                         "hidden": 7168, "top_k": 8, "global_experts": 256, "ep_size": 8,
                         "nodes": 1, "comm_dtype": "fp8", "world_size": 8}])  # fmt: skip
    intra, inter = deepep_row_bytes(row, 8)
    nbytes = 128 * 7 * 7168 * (1 + 4 / 128)  # 6,623,232 B
    assert intra[0] == pytest.approx(nbytes) and inter[0] == 0
    hw = load_hardware("h100-sxm")
    coll = hw.efficiency.collectives.model_copy(update={"fitted": f})
    assert predict_collective_rows(hw, row, coll)[0] == pytest.approx(12e-6 + nbytes / 250e9)
    assert fc.deepep_time_s(f, "deepep_ll", "dispatch_bf16", nbytes, 0.0, 8) != pytest.approx(0)


# --- (c) the line-rate floor, (d) monotone in bytes ------------------------------------------

OPS = st.sampled_from(["allreduce", "allgather", "reducescatter", "alltoall"])


def _coll_rows(kind: str, impl: str, sizes, n: int) -> pd.DataFrame:
    return pd.DataFrame({"kernel_class": kind, "impl": impl, "message_bytes": sizes,
                         "world_size": n, "shape_key": [f"s{i}" for i in range(len(sizes))]})  # fmt: skip


@pytest.fixture(scope="module")
def fitted_h100(fits):
    cal, _ = fits[("h100_sxm", "sglang")]
    hw = load_hardware("h100-sxm")
    return hw.with_efficiency(hw.efficiency.model_copy(update={"collectives": cal.collectives_}))


@settings(max_examples=60, deadline=None)
@given(OPS, st.sampled_from(["nccl", "sglang"]), st.integers(2, 8),
       st.lists(st.floats(1.0, 4e9), min_size=1, max_size=8))  # fmt: skip
def test_never_below_the_line_rate_floor(fitted_h100, kind, impl, n, sizes):
    """t >= S * f_min / 450 GB/s, f_min the least a GPU must move: (n-1)/n of the buffer for
    all-gather / reduce-scatter / all-to-all; for all-reduce 1x the buffer (in-switch reduction
    on NVSwitch: send it once, receive it once; a ring needs 2(n-1)/n >= 1)."""
    if impl == "sglang" and kind != "allreduce":
        impl = "nccl"
    s = np.asarray(sizes)
    t = predict_collective_rows(fitted_h100, _coll_rows(kind, impl, s, n))
    f_min = 1.0 if kind == "allreduce" else (n - 1) / n
    assert np.all(t >= s * f_min / LINE * (1 - 1e-12))


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(["deepep_ll", "deepep_normal"]), st.sampled_from(["ep_dispatch", "ep_combine"]),
       st.lists(st.integers(1, 200_000), min_size=1, max_size=6))  # fmt: skip
def test_deepep_never_below_the_line_rate_floor(fitted_h100, impl, kind, tokens):
    rows = pd.DataFrame({"kernel_class": kind, "impl": impl, "tokens": tokens, "hidden": 7168,
                         "top_k": 8, "global_experts": 256, "ep_size": 8, "nodes": 1,
                         "comm_dtype": "fp8", "world_size": 8})  # fmt: skip
    t = predict_collective_rows(fitted_h100, rows)
    per = 7168 * (1 + 4 / 128 if kind == "ep_dispatch" else 2.0)
    copies = (
        7.0 if impl == "deepep_ll" else 7 * (1 - np.prod([(224 - i) / (256 - i) for i in range(8)]))
    )
    assert np.all(t >= np.asarray(tokens) * copies * per / LINE * (1 - 1e-12))


@settings(max_examples=60, deadline=None)
@given(OPS, st.sampled_from(["nccl", "sglang"]), st.integers(2, 24),
       st.lists(st.floats(0.0, 4e9), min_size=2, max_size=12))  # fmt: skip
def test_more_bytes_never_less_time(fitted_h100, kind, impl, n, sizes):
    if impl == "sglang" and kind != "allreduce":
        impl = "nccl"
    s = np.sort(sizes)
    t = predict_collective_rows(fitted_h100, _coll_rows(kind, impl, s, n))
    assert np.all(np.diff(t) >= 0)
    net = comm.Network.from_hardware(fitted_h100)
    for fw in ("sglang", "trtllm", None):  # the step model's all-reduce
        generic = collectives_ext.custom_allreduce_time_s(s, n, net)
        e = fc.engine_allreduce_time_s(net.fitted, s, n, fw, generic_custom=generic)
        e = np.where(np.isfinite(e), e, collectives_ext.allreduce_time_s(s, n, net))
        assert np.all(np.diff(e) >= 0)


# --- (e) no fitted block: today's numbers -----------------------------------------------------


def test_profile_without_block_gives_todays_numbers():
    hw = load_hardware("h100-sxm")
    assert hw.efficiency.collectives.fitted is None
    net = comm.Network.from_hardware(hw)
    s = np.geomspace(1e3, 1e9, 13)
    for n in (2, 8, 16):
        ar = predict_collective_rows(hw, _coll_rows("allreduce", "nccl", s, n))
        assert np.array_equal(ar, comm.allreduce_time_s(s, n, net))
        a2a = predict_collective_rows(hw, _coll_rows("alltoall", "nccl", s, n))
        sent = s * (n - 1) / n
        frac = comm.remote_domain_fraction(n, 8)
        assert np.array_equal(a2a, comm.alltoall_time_s(sent * (1 - frac), sent * frac, net))
    assert "fitted" not in str(hw.to_yaml_dict()["efficiency"]["collectives"])


def test_step_comm_ops_without_block_are_todays():
    from moesim.cost.ops import routing_or_default, step_ops
    from moesim.cost.step import evaluate_ops
    from moesim.spec.deployment import Layout
    from moesim.spec.model import load_model

    m, hw = load_model("deepseek-v3"), load_hardware("h100-sxm")
    net = comm.Network.from_hardware(hw)
    for lay, phase, seqs, new in (
        (Layout(tp=1, dp=8, ep=8, weight_dtype="fp8", dispatch_dtype="fp8", framework="sglang"),
         "decode", 64, 1),
        (Layout(tp=8, dp=1, ep=8, weight_dtype="fp8", framework="trtllm"), "decode", 16, 1),
    ):  # fmt: skip
        ops, _ = step_ops(m, hw, lay, phase, seqs, new, 0, routing_or_default(None))
        timed = {o.name: o for o in evaluate_ops(ops, hw, lay)}
        for op in ops:
            if op.kernel_class == "allreduce":
                want = collectives_ext.allreduce_time_s(op.message_bytes, op.group_size, net)
            elif op.kernel_class == "alltoall":
                want = comm.alltoall_time_s(op.intra_bytes, op.inter_bytes, net)
            else:
                continue
            assert np.array_equal(timed[op.name].time_s, want * op.count), op.name


def test_fitted_block_reaches_the_step_model_and_falls_back_beyond_it(fitted_h100):
    from moesim.cost.ops import routing_or_default, step_ops
    from moesim.cost.step import evaluate_ops
    from moesim.spec.deployment import Layout
    from moesim.spec.model import load_model

    m = load_model("deepseek-v3")
    f = fitted_h100.efficiency.collectives.fitted
    net = comm.Network.from_hardware(fitted_h100)
    lay = Layout(tp=1, dp=8, ep=8, weight_dtype="fp8", dispatch_dtype="fp8", framework="sglang")
    ops, _ = step_ops(m, fitted_h100, lay, "decode", 64, 1, 0, routing_or_default(None))
    op = next(o for o in ops if o.name == "moe.dispatch")
    t0, bw = f.deepep["deepep_ll"]["8"]["dispatch_fp8"]
    timed = {o.name: o for o in evaluate_ops(ops, fitted_h100, lay)}
    assert float(timed["moe.dispatch"].time_s) == pytest.approx(
        float((t0 + op.intra_bytes / bw) * op.count)
    )
    # EP 32 spans 4 nodes (measured on H100: SGLang 0.5.6.post2 tables): the NIC bytes price it
    lay32 = Layout(tp=1, dp=32, ep=32, weight_dtype="fp8", dispatch_dtype="fp8",
                   framework="sglang")  # fmt: skip
    ops, _ = step_ops(m, fitted_h100, lay32, "decode", 64, 1, 0, routing_or_default(None))
    op = next(o for o in ops if o.name == "moe.dispatch")
    t0, bw = f.deepep["deepep_ll"]["32"]["dispatch_fp8"]
    timed = {o.name: o for o in evaluate_ops(ops, fitted_h100, lay32)}
    assert float(op.inter_bytes) > 0
    assert float(timed["moe.dispatch"].time_s) == pytest.approx(
        float((t0 + op.inter_bytes / bw) * op.count)
    )
    # EP 128 was not measured: today's two-level model prices it
    lay128 = Layout(tp=1, dp=128, ep=128, weight_dtype="fp8", dispatch_dtype="fp8",
                    framework="sglang")  # fmt: skip
    ops, _ = step_ops(m, fitted_h100, lay128, "decode", 64, 1, 0, routing_or_default(None))
    op = next(o for o in ops if o.name == "moe.dispatch")
    timed = {o.name: o for o in evaluate_ops(ops, fitted_h100, lay128)}
    want = comm.alltoall_time_s(op.intra_bytes, op.inter_bytes, net) * op.count
    assert np.array_equal(timed["moe.dispatch"].time_s, want)
    # the TP all-reduce: the engine's fitted curve where it covers the group, today's beyond
    for tp in (8, 16):
        lay_tp = Layout(tp=tp, dp=1, ep=tp, weight_dtype="fp8", framework="sglang")
        ops, _ = step_ops(m, fitted_h100, lay_tp, "decode", 16, 1, 0, routing_or_default(None))
        op = next(o for o in ops if o.name == "attn.allreduce")
        timed = {o.name: o for o in evaluate_ops(ops, fitted_h100, lay_tp)}
        if tp == 8:
            want = fc.custom_allreduce_time_s(f, "sglang", op.message_bytes, 8)
        else:
            want = collectives_ext.allreduce_time_s(op.message_bytes, tp, net)
        assert np.array_equal(timed["attn.allreduce"].time_s, want * op.count), tp


# --- degenerate fits, profile validation, the reader -------------------------------------------


def _synthetic_allgather(alpha_s: float, bw: float) -> pd.DataFrame:
    sizes = 2.0 ** np.arange(10, 31)
    t = alpha_s + sizes * 7 / 8 / bw
    return usable_rows(pd.DataFrame({
        "kernel_class": "allgather", "impl": "nccl", "dtype": "fp16", "message_bytes": sizes,
        "world_size": 8, "median_s": t, "shape_key": [f"ag_{int(s)}" for s in sizes],
    }))  # fmt: skip


def test_bandwidth_above_the_line_rate_is_clamped_and_marked():
    rows = _synthetic_allgather(8e-6, 600e9)  # faster than NVLink can carry
    cal = CollectiveCalibrator(base="h100-sxm").fit(rows)
    assert cal.collectives_.fitted.at_line_rate == ["nccl.all_gather.8"]
    assert "nccl.all_gather.8" in cal.report()["at_line_rate"]
    dropped = CollectiveCalibrator(base="h100-sxm", on_degenerate="drop").fit(rows)
    assert dropped.collectives_.fitted is None
    assert "nccl.all_gather.8" in dropped.report()["degenerate_left_out"]
    with pytest.raises(MoesimError, match="all_gather.8"):
        CollectiveCalibrator(base="h100-sxm", on_degenerate="raise").fit(rows)


def test_alpha_on_its_bound_is_left_out():
    rows = _synthetic_allgather(0.0, 200e9)  # no latency at all: alpha has nothing to fit
    cal = CollectiveCalibrator(base="h100-sxm").fit(rows)
    assert cal.collectives_.fitted is None
    assert any("alpha" in r for r in cal.report()["degenerate_left_out"]["nccl.all_gather.8"])


def test_recovers_known_terms():
    rows = _synthetic_allgather(8e-6, 300e9)
    cal = CollectiveCalibrator(base="h100-sxm").fit(rows)
    terms = cal.collectives_.fitted.nccl["all_gather"]["8"]
    ((alpha, bw),) = [v for v in terms.values()]  # one regime explains a line
    assert alpha == pytest.approx(8e-6, rel=1e-3) and bw == pytest.approx(300e9, rel=1e-3)


def test_profile_block_validation(tmp_path):
    good = {"nccl": {"all_reduce": {8: {"ll": [1e-5, 2e10]}}}}
    assert FittedCollectives.model_validate(good).nccl["all_reduce"]["8"]["ll"] == [1e-5, 2e10]
    for bad in (
        {"nccl": {"all_reduce": {"8": {"nvls": [1e-5, 5e16]}}}},  # bandwidth out of range
        {"nccl": {"all_gather": {"8": {"nvls": [1e-5, 2e10]}}}},  # NVLS is all-reduce only
        {"nccl": {"broadcast": {"8": {"ll": [1e-5, 2e10]}}}},
        {"nccl": {"all_reduce": {"1": {"ll": [1e-5, 2e10]}}}},
        {"deepep": {"deepep_ll": {"8": {"dispatch_fp8": [1.0, 2e10]}}}},  # t0 of a second
        {"nccl": {}, "extra": 1},
    ):
        with pytest.raises(ValueError):
            FittedCollectives.model_validate(bad)
    hw = load_hardware("h100-sxm")
    coll = hw.efficiency.collectives.model_copy(update={"fitted": FittedCollectives(**good)})
    path = hw.with_efficiency(hw.efficiency.model_copy(update={"collectives": coll})).save_yaml(
        tmp_path / "x.yaml"
    )
    assert load_hardware(path).efficiency.collectives.fitted.nccl == {
        "all_reduce": {"8": {"ll": [1e-5, 2e10]}}
    }
    text = path.read_text().replace("all_reduce:", "all_reduse:")
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(MoesimError, match="unknown name 'all_reduse'"):
        load_hardware(tmp_path / "bad.yaml")


def test_reader_units_and_relabelled_copy():
    pytest.importorskip("pyarrow")
    try:
        import aiconfigurator_core  # noqa: F401
    except ModuleNotFoundError:
        pytest.skip("aiconfigurator-core not installed")
    from moesim.calibrate.aic_comm import comm_rows

    rows, prov = comm_rows("h200_sxm", "sglang")
    nccl = rows[rows["impl"] == "nccl"]
    # message_size is in elements: half x 2 bytes, int8 x 1; latency ms -> s
    half = nccl[nccl["format"] == "half"]
    assert half["message_bytes"].min() == 512 and half["message_bytes"].max() == 2**29
    assert nccl["median_s"].between(1e-6, 1e-1).all()
    assert (rows["timing_method"] == "cuda_graph").all()
    assert not rows["impl"].str.contains("eager").any()
    assert any("relabelled copy of h100_sxm" in k for k in prov["drops"])
    assert set(rows.loc[rows["kernel_class"].str.startswith("ep_"), "nodes"]) == {1}
    assert prov["versions"]["nccl_perf"] == "2.26.2"  # the system's misc.nccl_version
    with pytest.raises(MoesimError, match="framework"):
        comm_rows("h200_sxm", "tensorrt")


def test_deepep_rows_of_two_engines_are_refused():
    df = pd.read_csv(DATA / "h200_sxm.csv.gz", low_memory=False)
    rows = usable_rows(df[df["kernel_class"].str.startswith("ep_")].reset_index(drop=True))
    with pytest.raises(MoesimError, match="several engines"):
        CollectiveCalibrator(base="h200").fit(rows)


def test_reader_refuses_a_table_without_its_columns(tmp_path):
    pytest.importorskip("pyarrow")
    from moesim.calibrate.aic_comm import comm_rows

    folder = tmp_path / "x_sxm" / "comm" / "nccl" / "2.0"
    folder.mkdir(parents=True)
    pd.DataFrame({"op_name": ["all_reduce"], "num_gpus": [8]}).to_parquet(
        folder / "nccl_perf.parquet"
    )
    with pytest.raises(MoesimError, match="missing column"):
        comm_rows("x_sxm", "trtllm", root=tmp_path)
    with pytest.raises(MoesimError, match="unknown aiconfigurator system"):
        comm_rows("y_sxm", "trtllm", root=tmp_path)
