# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Calibration report: measured vs predicted kernel times
#
# Loads a measurement folder written by `moesim profile` (the first of
# `hwprofiles/measurements/*`, else `tests/data/measurements_cpu/`), predicts every measured
# kernel with the matching hardware profile's calibrated roofline, and plots one against the other.

# %%
from pathlib import Path

import numpy as np

from moesim.plots.charts import load_measurements

root = Path.cwd()
while not (root / "pyproject.toml").exists() and root != root.parent:
    root = root.parent
candidates = sorted(p for p in (root / "hwprofiles" / "measurements").glob("*") if p.is_dir())
candidates += [root / "tests" / "data" / "measurements_cpu"]
folder = next((p for p in candidates if p.is_dir() and any(p.glob("*.csv"))), None)
measured = load_measurements(folder) if folder else None
if measured is None or measured.empty:
    print("No measurements found (run `moesim profile` on a device first); nothing to report.")
else:
    print(f"{len(measured)} measured kernels from {folder}")

# %%
if measured is not None and not measured.empty:
    import altair as alt

    from moesim.cost.roofline import RooflineParams, op_time_s
    from moesim.spec.hardware import list_hardware, load_hardware

    name = folder.name if folder.name in list_hardware() else "h100-sxm"
    hw = load_hardware(name)
    dtype = (
        measured["dtype"].where(measured["dtype"].isin(list(hw.peak_flops_per_s)), "bf16")
        if "dtype" in measured
        else "bf16"
    )
    measured["dtype"] = dtype
    predicted = []
    for (kclass, dt), g in measured.groupby(["kernel_class", "dtype"]):
        known = kclass in (
            "gemm",
            "grouped_gemm",
            "attention_prefill",
            "attention_decode",
            "memory",
        )
        params = RooflineParams.from_efficiency(
            hw.efficiency.for_class(kclass if known else "memory"), dt
        )
        t = op_time_s(
            g["flops"],
            g["hbm_bytes"],
            peak_flops_per_s=hw.peak(dt),
            hbm_bytes_per_s=hw.hbm_bandwidth_bytes_per_s,
            params=params,
        )
        predicted.append(g.assign(predicted_s=np.asarray(t)))
    report = __import__("pandas").concat(predicted)
    report["error_pct"] = (report["predicted_s"] / report["median_s"] - 1) * 100
    print(
        report.groupby("kernel_class")["error_pct"]
        .agg(lambda e: np.mean(np.abs(e)))
        .rename("mean |error| %")
        .round(1)
    )
    lim = [
        float(min(report["median_s"].min(), report["predicted_s"].min())) / 1.5,
        float(max(report["median_s"].max(), report["predicted_s"].max())) * 1.5,
    ]
    diag = (
        alt.Chart(__import__("pandas").DataFrame({"x": lim, "y": lim}))
        .mark_line(color="#888", strokeDash=[4, 4])
        .encode(x="x:Q", y="y:Q")
    )
    pts = (
        alt.Chart(report)
        .mark_circle(size=40, opacity=0.7)
        .encode(
            x=alt.X("median_s:Q", scale=alt.Scale(type="log", domain=lim), title="measured (s)"),
            y=alt.Y(
                "predicted_s:Q",
                scale=alt.Scale(type="log", domain=lim),
                title=f"predicted on {hw.name} (s)",
            ),
            color="kernel_class:N",
            tooltip=["kernel_class:N", "shape_key:N", "median_s:Q", "predicted_s:Q"]
            if "shape_key" in report
            else ["kernel_class:N"],
        )
    )
    chart = alt.layer(diag, pts).properties(
        width=420, height=360, title="Measured vs predicted kernel time"
    )
else:
    chart = None
chart  # noqa: B018 (the notebook displays it)
