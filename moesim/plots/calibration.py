"""Charts of a validation run: measured kernels over the roofline, predicted vs measured."""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from moesim.calibrate.predict import _dtype
from moesim.plots.style import log_axis


def roofline_chart(scored: pd.DataFrame, hw) -> alt.Chart:
    """Measured points (x = FLOP/byte, y = achieved FLOP/s, log-log) under the datasheet roof
    and the calibrated GEMM roof of the main measured dtype (Williams et al., CACM 2009)."""
    df = scored.copy()
    flops = pd.to_numeric(df.get("flops"), errors="coerce")
    hbm = pd.to_numeric(df.get("hbm_bytes"), errors="coerce")
    df["intensity"] = flops / hbm
    df["achieved_flops_per_s"] = flops / df["median_s"]
    df = df[(flops > 0) & (hbm > 0)]
    df = df[
        [
            "fit_class",
            "shape_key",
            "impl",
            "dtype",
            "median_s",
            "predicted_s",
            "intensity",
            "achieved_flops_per_s",
        ]
    ]
    df = df[np.isfinite(df["intensity"]) & np.isfinite(df["achieved_flops_per_s"])]
    dtypes = df.loc[df["fit_class"] == "gemm", "dtype"].map(_dtype)
    dtype = dtypes.mode().iloc[0] if len(dtypes) else next(iter(hw.peak_flops_per_s))
    peak, bw = hw.peak(dtype), hw.hbm_bandwidth_bytes_per_s
    eff = hw.efficiency.gemm
    lo = float(max(df["intensity"].min() / 2, 1e-2)) if len(df) else 0.1
    hi = float(df["intensity"].max() * 2) if len(df) else 1e4
    x = np.geomspace(lo, hi, 80)
    roofs = pd.concat([
        pd.DataFrame({"intensity": x, "flops_per_s": np.minimum(peak, x * bw), "roof": f"datasheet {dtype}"}),
        pd.DataFrame({
            "intensity": x,
            "flops_per_s": np.minimum(peak * eff.compute_eff(dtype), x * bw * eff.memory_efficiency),
            "roof": f"calibrated gemm {dtype}",
        }),
    ])  # fmt: skip
    xs, xa = log_axis(roofs["intensity"], "arithmetic intensity (FLOP/byte)")
    ys, ya = log_axis(
        pd.concat([roofs["flops_per_s"], df["achieved_flops_per_s"]]), "achieved FLOP/s"
    )
    lines = (
        alt.Chart(roofs)
        .mark_line(color="#444444")
        .encode(
            x=alt.X("intensity:Q", scale=xs, axis=xa),
            y=alt.Y("flops_per_s:Q", scale=ys, axis=ya),
            strokeDash=alt.StrokeDash("roof:N", title="roof"),
        )
    )
    points = (
        alt.Chart(df)
        .mark_point(filled=True, opacity=0.75, size=35)
        .encode(
            x=alt.X("intensity:Q", scale=xs, axis=xa),
            y=alt.Y("achieved_flops_per_s:Q", scale=ys, axis=ya),
            color=alt.Color("fit_class:N", title="class"),
            tooltip=["fit_class", "shape_key", "impl", "dtype", "median_s", "predicted_s"],
        )
    )
    return (lines + points).properties(
        title=f"{hw.name}: measured kernels over the roofline", width=380, height=300
    )


def predicted_vs_measured_chart(scored: pd.DataFrame) -> alt.Chart:
    """Predicted against measured seconds (log-log) with the y = x line."""
    df = scored[
        ["fit_class", "shape_key", "impl", "dtype", "median_s", "predicted_s", "error"]
    ].copy()
    df = df[(df["predicted_s"] > 0) & (df["median_s"] > 0) & np.isfinite(df["predicted_s"])]
    lo = float(min(df["median_s"].min(), df["predicted_s"].min()) / 1.5) if len(df) else 1e-6
    hi = float(max(df["median_s"].max(), df["predicted_s"].max()) * 1.5) if len(df) else 1.0
    diag = pd.DataFrame({"t": [lo, hi]})
    log, _ = log_axis([lo, hi], "")
    measured_axis = log_axis([lo, hi], "measured (s)")[1]
    predicted_axis = log_axis([lo, hi], "predicted (s)")[1]
    band = pd.DataFrame({"t": [lo, hi], "lo": [lo / 1.2, hi / 1.2], "hi": [lo * 1.2, hi * 1.2]})
    line = (
        alt.Chart(diag)
        .mark_line(color="#888888")
        .encode(x=alt.X("t:Q", scale=log), y=alt.Y("t:Q", scale=log))
    ) + (
        alt.Chart(band)
        .mark_area(opacity=0.12, color="#888888")
        .encode(x=alt.X("t:Q", scale=log), y=alt.Y("lo:Q", scale=log), y2="hi:Q")
    )
    points = (
        alt.Chart(df)
        .mark_point(filled=True, opacity=0.7, size=30)
        .encode(
            x=alt.X("median_s:Q", scale=log, axis=measured_axis),
            y=alt.Y("predicted_s:Q", scale=log, axis=predicted_axis),
            color=alt.Color("fit_class:N", title="class"),
            tooltip=[
                "fit_class",
                "shape_key",
                "impl",
                "dtype",
                "median_s",
                "predicted_s",
                alt.Tooltip("error:Q", format=".1%"),
            ],
        )
    )
    return (line + points).properties(
        title=alt.Title("predicted vs measured", subtitle="grey band: within 20%"),
        width=300,
        height=300,
    )


def validation_chart(scored: pd.DataFrame, hw) -> alt.HConcatChart:
    """The roofline chart and the predicted-vs-measured scatter, side by side."""
    return alt.hconcat(roofline_chart(scored, hw), predicted_vs_measured_chart(scored))
