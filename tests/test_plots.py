"""Charts render to valid, non-empty PNG (and SVG/HTML) files."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.api import resolve
from moesim.plan.sweep import run_scenario
from moesim.plots import charts, save_chart

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

SCENARIO = """\
name: charts
models: [mixtral-8x7b]
hardware: [h100-sxm, h200]
layouts:
  - tp: [1, 2, 4]
workloads:
  - batch: [1, 16, 128]
outputs:
  charts: [pareto, roofline, latency_breakdown, memory_breakdown, dense_vs_moe]
  chart_formats: [png, svg]
"""


def _is_png(path):
    data = path.read_bytes()
    return len(data) > 1000 and data.startswith(PNG_MAGIC)


def test_sweep_writes_requested_charts(tmp_path):
    path = tmp_path / "charts.yaml"
    path.write_text(SCENARIO)
    _, manifest = run_scenario(path, tmp_path / "out")
    pngs = sorted((tmp_path / "out" / "charts").glob("*.png"))
    assert {p.stem for p in pngs} == {
        "pareto",
        "roofline",
        "latency_breakdown",
        "memory_breakdown",
        "dense_vs_moe",
    }
    assert all(_is_png(p) for p in pngs)
    assert len(manifest["charts"]) == 10


def test_fragmentation_curve_shape():
    model, hw = resolve("qwen3-30b-a3b", "h100-sxm")
    curve = charts.fragmentation_curve(
        model, hw, [1, 8, 64, 512, 4096], routings=("uniform", "zipf:1.2")
    )
    assert set(curve["kind"]) == {"moe", "dense"} and len(curve) == 15
    moe = curve[(curve["kind"] == "moe") & (curve["routing"] == "uniform")].set_index("batch")
    dense = curve[curve["kind"] == "dense"].set_index("batch")
    # Fragmentation: at small batch the MoE reads more weight bytes per token than its dense twin.
    assert moe.loc[8, "weight_bytes_per_token"] > dense.loc[8, "weight_bytes_per_token"]
    assert np.all(np.diff(dense["weight_bytes_per_token"].to_numpy()) < 0)
    ridge = hw.peak("bf16") / hw.hbm_bandwidth_bytes_per_s
    assert moe["compute_bound_batch"].iloc[0] == pytest.approx(
        ridge * 2 / 2 * model.num_experts / model.top_k
    )


def test_pareto_front_mask():
    per_user = np.array([10.0, 20.0, 30.0, 15.0])
    per_gpu = np.array([100.0, 50.0, 10.0, 40.0])
    assert charts.pareto_front(per_user, per_gpu).tolist() == [True, True, True, False]


def test_roofline_with_measured_points(tmp_path):
    from moesim.api import predict

    res = predict("llama-3.1-8b", "h100-sxm", batch=8, breakdown=True)
    _, hw = resolve("llama-3.1-8b", "h100-sxm")
    import pandas as pd

    measured = pd.DataFrame(
        {
            "kernel_class": ["gemm"] * 3,
            "flops": [1e9, 1e11, 1e12],
            "hbm_bytes": [1e8, 1e8, 1e8],
            "median_s": [1e-4, 3e-4, 2e-3],
        }
    )
    measured["intensity_flop_per_byte"] = measured["flops"] / measured["hbm_bytes"]
    measured["flops_per_s"] = measured["flops"] / measured["median_s"]
    written = save_chart(
        charts.roofline_chart(res, hw, measured=measured), tmp_path / "roof", formats=("png",)
    )
    assert _is_png(written[0])


# ---------------------------------------------------------------- what the charts must show
def _routing_skew_frame():
    from pathlib import Path

    from moesim.plan.scenario import build_plan, load_scenario
    from moesim.plan.sweep import run_plan

    root = Path(__file__).resolve().parents[1]
    return run_plan(build_plan(load_scenario(root / "scenarios" / "routing-skew.yaml")))


def _walk(spec, key):
    """Every mapping under ``key`` anywhere in a Vega-Lite spec."""
    if isinstance(spec, dict):
        for k, v in spec.items():
            if k == key and isinstance(v, dict):
                yield v
            yield from _walk(v, key)
    elif isinstance(spec, list):
        for v in spec:
            yield from _walk(v, key)


def test_pareto_never_merges_conditions():
    df = _routing_skew_frame()
    pts = charts.pareto_frame(df, color="layout")
    # routing (4) x capacity factor (2) vary: one panel each, a frontier per layout in each
    assert pts.attrs["panel_axes"] == ["routing", "capacity_factor"]
    assert pts["panel"].nunique() == 8
    front = pts[pts["frontier"]]
    assert front.groupby("panel")["series"].nunique().eq(2).all()
    # a frontier point is labelled with its layout, weight format and batch
    assert front["point_label"].str.fullmatch(r"tp\d+(ep\d+)?(dp\d+)? bf16 B\d+").all()
    spec = charts.pareto_chart(df, color="layout").to_dict()
    assert any(f.get("field") == "panel" for f in _walk(spec, "facet"))


def test_operator_kind_colours_are_fixed_across_charts():
    from moesim.api import predict
    from moesim.plots.style import KIND_COLORS, KIND_ORDER

    res = predict("mixtral-8x7b", "h100-sxm", tp=2, batch=8, breakdown=True)
    _, hw = resolve("mixtral-8x7b", "h100-sxm")
    for chart in (charts.roofline_chart(res, hw), charts.latency_breakdown_chart(res)):
        scales = [c["scale"] for c in _walk(chart.to_dict(), "color") if c.get("field") == "kind"]
        assert scales and all(s == {"domain": KIND_ORDER, "range": KIND_COLORS} for s in scales)


def test_memory_chart_draws_the_usable_limit_per_hardware():
    from moesim.plan.sweep import run_scenario

    df, _ = run_scenario(
        __import__("pathlib").Path(__file__).resolve().parents[1]
        / "scenarios"
        / "mixtral-h100-vs-h200.yaml",
        None,
        charts=False,
    )
    chart = charts.memory_breakdown_chart(df, memory_utilization=0.8)
    data = chart.data
    assert set(data["panel"]) == {"mixtral-8x7b on h100-sxm", "mixtral-8x7b on h200"}
    usable = data.groupby("panel")["usable_GB"].first()
    from moesim.spec.hardware import load_hardware

    for hw in ("h100-sxm", "h200"):  # capacity as the runtime reports it, x the utilisation
        cap_gb = load_hardware(hw).hbm_capacity_bytes / 1e9
        assert usable[f"mixtral-8x7b on {hw}"] == pytest.approx(cap_gb * 0.8)
    # bf16 and fp8 of the same layout are separate bars
    labels = set(data["label"])
    assert any(x.startswith("tp2 bf16,") for x in labels)
    assert any(x.startswith("tp2 fp8,") for x in labels)


def test_log_ticks_are_few_and_inside_the_range():
    from moesim.plots.style import decades

    for lo, hi in ((38, 70), (80, 600), (1e-6, 1.0), (1, 16384), (2e-6, 3e-3)):
        ticks = decades(lo, hi)
        assert 3 <= len(ticks) <= 8 or (hi / lo > 1e3 and len(ticks) >= 2)
        assert all(lo <= t <= hi for t in ticks) and ticks == sorted(ticks)


def test_expert_load_colours_every_gpu():
    from moesim.plots.routing import expert_load_chart

    chart = expert_load_chart(None, 4096, 8, 256, 32, "zipf:1.2")
    domains = [
        c["scale"]["domain"]
        for c in _walk(chart.to_dict(), "color")
        if c.get("field") == "gpu" and "scale" in c
    ]
    assert domains and all(d == [str(g) for g in range(32)] for d in domains)


def test_html_is_self_contained(tmp_path):
    model, hw = resolve("mixtral-8x7b", "h100-sxm")
    curve = charts.fragmentation_curve(model, hw, [1, 64], routings=("uniform",))
    (html,) = save_chart(charts.dense_vs_moe_chart(curve), tmp_path / "c", formats=("html",))
    text = html.read_text()
    assert "cdn.jsdelivr" not in text and 'src="http' not in text
    assert "vegaEmbed" in text and len(text) > 200_000  # Vega, Vega-Lite and vega-embed inline
