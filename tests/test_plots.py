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
