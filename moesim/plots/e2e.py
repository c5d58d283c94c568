"""Predicted vs measured serving metrics of an end-to-end validation (``moesim validate --e2e``)."""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from moesim.calibrate.e2e import GROUP, METRICS

TITLES = {
    "ttft_s": "TTFT (s)",
    "tpot_s": "TPOT (s)",
    "output_tokens_per_s_per_gpu": "output tokens/s per GPU",
}


def e2e_chart(scored: pd.DataFrame) -> alt.HConcatChart:
    """One log-log panel per metric: measured (x) against predicted (y), coloured by model,
    shaped by engine, with the y = x line and the +-25 % band."""
    frames = []
    for m in METRICS:
        part = scored[scored["feasible"].astype(bool)].copy()
        part = part.assign(
            metric=TITLES[m], measured=part[f"measured_{m}"], predicted=part[f"predicted_{m}"]
        )
        part = part[(part["measured"] > 0) & (part["predicted"] > 0)]
        frames.append(part[[*GROUP, "id", "isl", "osl", "concurrency", "metric", "measured",
                            "predicted"]])  # fmt: skip
    df = pd.concat(frames, ignore_index=True)
    panels = []
    for m in METRICS:
        sub = df[df["metric"] == TITLES[m]]
        lo = float(min(sub["measured"].min(), sub["predicted"].min())) if len(sub) else 1e-3
        hi = float(max(sub["measured"].max(), sub["predicted"].max())) if len(sub) else 1.0
        x = np.geomspace(lo * 0.8, hi * 1.25, 20)
        guide = pd.DataFrame(
            {"measured": np.tile(x, 3), "predicted": np.concatenate([x, 1.25 * x, 0.8 * x]),
             "line": np.repeat(["y = x", "+25 %", "-25 %"], len(x))}
        )  # fmt: skip
        log = alt.Scale(type="log", domain=[lo * 0.8, hi * 1.25])
        points = (
            alt.Chart(sub)
            .mark_point(filled=True, size=28, opacity=0.6)
            .encode(
                x=alt.X("measured:Q", scale=log, title=f"measured {TITLES[m]}"),
                y=alt.Y("predicted:Q", scale=log, title=f"predicted {TITLES[m]}"),
                color=alt.Color("model:N"),
                shape=alt.Shape("engine:N"),
                tooltip=[
                    "id",
                    "model",
                    "hardware",
                    "engine",
                    "isl",
                    "osl",
                    "concurrency",
                    "measured",
                    "predicted",
                ],  # fmt: skip
            )
        )
        lines = (
            alt.Chart(guide)
            .mark_line(color="#555555", strokeWidth=1)
            .encode(
                x="measured:Q",
                y="predicted:Q",
                strokeDash=alt.StrokeDash(
                    "line:N",
                    title=None,
                    scale=alt.Scale(
                        domain=["y = x", "+25 %", "-25 %"], range=[[1, 0], [4, 3], [4, 3]]
                    ),
                ),  # fmt: skip
                detail="line:N",
            )
        )
        panels.append((lines + points).properties(width=300, height=300, title=TITLES[m]))
    return alt.hconcat(*panels).resolve_scale(color="shared", shape="shared")
