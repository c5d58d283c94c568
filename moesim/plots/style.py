"""Shared look of every chart: one fixed colour per operator kind and memory part, log axes
with ticks at decades (readable at any range), and the sweep axes that must never be merged.
"""

from __future__ import annotations

import math

import altair as alt
import numpy as np
import pandas as pd

# One colour per operator kind, the same in every chart (Tableau 10 order).
KIND_ORDER = ["attention", "moe", "ffn", "norm", "lm_head", "comm", "offload"]
KIND_COLORS = ["#4c78a8", "#f58518", "#54a24b", "#b279a2", "#9d755d", "#e45756", "#72b7b2"]
MEMORY_ORDER = ["weights", "KV cache", "activations"]
MEMORY_COLORS = ["#4c78a8", "#f58518", "#bab0ac"]

# Sweep axes that describe the conditions a point was evaluated under: a chart colours or
# facets by every one that varies, so points of different conditions never share a frontier.
CONDITION_AXES = (
    "model",
    "hardware",
    "routing",
    "capacity_factor",
    "input_len",
    "output_len",
    "phase",
    "kv_dtype",
    "act_dtype",
    "dispatch_dtype",
    "overlap",
    "redundant_experts",
    "offload_fraction",
    "block_m",
    "workload",
)


def kind_color(title: str = "op kind", **legend) -> alt.Color:
    return alt.Color(
        "kind:N",
        title=title,
        scale=alt.Scale(domain=KIND_ORDER, range=KIND_COLORS),
        legend=alt.Legend(**legend) if legend else alt.Undefined,
    )


def memory_color() -> alt.Color:
    return alt.Color(
        "part:N", title="memory", scale=alt.Scale(domain=MEMORY_ORDER, range=MEMORY_COLORS)
    )


def varying(df: pd.DataFrame, axes=CONDITION_AXES) -> list[str]:
    """The axes of ``axes`` present in ``df`` with more than one distinct value."""
    out = []
    for a in axes:
        if a in df.columns and df[a].astype(str).nunique(dropna=False) > 1:
            out.append(a)
    return out


SHORT_NAMES = {
    "redundant_experts": "redundant",
    "dispatch_dtype": "dispatch",
    "capacity_factor": "capacity",
    "offload_fraction": "offload",
    "input_len": "in",
    "output_len": "out",
    "kv_dtype": "KV",
    "act_dtype": "act",
}


def condition_label(df: pd.DataFrame, axes: list[str]) -> pd.Series:
    """'routing=zipf:1.2 · capacity_factor=1.25' per row, from ``axes`` (empty when none);
    missing values read 'none'."""
    if not axes:
        return pd.Series("", index=df.index)

    def text(v) -> str:
        return (
            "none"
            if v is None or (isinstance(v, float) and v != v)
            else f"{v:g}"
            if (isinstance(v, float))
            else str(v)
        )

    cols = [
        df[a].astype(object).map(lambda v, a=a: f"{SHORT_NAMES.get(a, a)}={text(v)}") for a in axes
    ]
    return pd.Series([" · ".join(parts) for parts in zip(*cols, strict=True)], index=df.index)


def decades(lo: float, hi: float) -> list[float]:
    """Log-axis ticks covering [lo, hi] that never collide: powers of ten, or 1-2-5 steps, or
    every integer multiple when the range is narrower (at least three ticks)."""
    lo, hi = max(float(lo), 1e-300), max(float(hi), float(lo) * 1.01)
    a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    for steps in ((1,), (1, 2, 5), tuple(range(1, 10))):
        vals = [m * 10.0**e for e in range(a, b + 1) for m in steps]
        inside = [v for v in vals if lo <= v <= hi]
        if len(inside) >= 3:
            break
    if len(inside) > 8:  # long ranges: every other decade
        inside = inside[:: math.ceil(len(inside) / 8)]
    return inside or vals[:2]


def log_axis(values, title: str, fmt: str = "~s") -> tuple[alt.Scale, alt.Axis]:
    """A log scale spanning ``values`` and an axis with ticks at decades."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    if not len(v):
        return alt.Scale(type="log"), alt.Axis(title=title, format=fmt)
    lo, hi = float(v.min()) / 1.3, float(v.max()) * 1.3
    ticks = decades(lo, hi)
    scale = alt.Scale(type="log", domain=[lo, hi], nice=False)
    return scale, alt.Axis(title=title, format=fmt, values=ticks, grid=True)


def style(chart: alt.TopLevelMixin) -> alt.TopLevelMixin:
    return (
        chart.configure_axis(labelFontSize=11, titleFontSize=12)
        .configure_legend(labelFontSize=11, titleFontSize=12, labelLimit=260)
        .configure_title(fontSize=14, anchor="start", subtitleFontSize=11, subtitleColor="#555")
        .configure_header(labelFontSize=12, titleFontSize=12, labelLimit=0)
    )
