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
# # Calibration report: how well does a measured profile predict kernels it never saw?
#
# A measured profile (`hwprofiles/<gpu>.measured.yaml`) is fitted by `moesim calibrate` to the
# kernel timings `moesim profile` took on that GPU (`hwprofiles/measurements/<gpu>/`). The fit
# holds out a fixed fifth of the shapes (chosen by a seeded hash). This notebook scores every
# measured profile that ships on exactly those held-out shapes, next to the uncalibrated
# datasheet profile of the same GPU on the same rows, the same numbers
# `moesim validate DIR --profile PROFILE --heldout-only` prints.

# %%
from pathlib import Path

import altair as alt
import pandas as pd

from moesim.calibrate.validate import scored_rows, validate
from moesim.spec.hardware import list_hardware, load_hardware, profile_dirs

alt.renderers.enable("png", scale_factor=1.5)  # charts as images: they show in any viewer

profiles = []  # (profile name, GPU, measurement folder) for every shipped measured profile
for hw_dir in profile_dirs():
    for path in sorted(Path(hw_dir).glob("*.measured.yaml")):
        name = path.name.removesuffix(".yaml")
        gpu = name.split(".")[0]
        folder = Path(hw_dir) / "measurements" / gpu
        if folder.is_dir() and any(folder.glob("*.csv")):
            profiles.append((name, gpu, folder))
print("measured profiles with their measurements:", [p[0] for p in profiles] or "none")

# %% [markdown]
# Held-out error per kernel class, `|predicted - measured| / measured`: the measured profile
# against the datasheet profile it was fitted from.


# %%
def heldout_table(name: str, gpu: str, folder: Path) -> pd.DataFrame:
    held = scored_rows(folder, name, heldout_only=True)
    rows = []
    datasheet = None
    if gpu in list_hardware():
        every = scored_rows(folder, gpu)
        key = ["fit_class", "shape_key", "impl", "dtype"]
        datasheet = held[key].merge(every[[*key, "error"]], on=key, how="left")
    for cls, g in held.groupby("fit_class"):
        row = {
            "profile": name,
            "class": cls,
            "held-out shapes": len(g),
            "median error": g["error"].median(),
            "max error": g["error"].max(),
        }
        if datasheet is not None:
            row["datasheet median error"] = datasheet.loc[
                datasheet["fit_class"] == cls, "error"
            ].median()
        rows.append(row)
    return pd.DataFrame(rows)


tables = [heldout_table(*p) for p in profiles]
summary = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
if len(summary):
    display(  # noqa: F821 (the notebook's display)
        summary.style.format({c: "{:.1%}" for c in summary.columns if "error" in c}).hide(
            axis="index"
        )
    )
else:
    print("No measured profile ships with its measurements; run `moesim profile` first.")

# %% [markdown]
# Whole decoder layers (`layer.csv`: attention + MoE timed end to end) are never part of the
# fit, so every row is a held-out check.

# %%
for name, _, folder in profiles:
    report = validate(folder, name, heldout_only=True)
    if "layers" in report:
        lay = report["layers"]
        print(
            f"{name}: {lay['n']} decoder layers ({lay['impl']}), median error "
            f"{lay['median_abs_error']:.1%}, max {lay['max_abs_error']:.1%}"
        )

# %% [markdown]
# Each held-out kernel on the roofline of its GPU (left) and predicted against measured time
# (right; the grey band is within 20%).

# %%
from moesim.plots.calibration import validation_chart  # noqa: E402

charts = [
    validation_chart(scored_rows(folder, name, heldout_only=True), load_hardware(name))
    for name, _, folder in profiles
]
charts[0] if charts else None
