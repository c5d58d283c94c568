"""Charts of predictions and sweeps: roofline, latency and memory breakdowns, Pareto frontier,
dense-vs-MoE batching fragmentation (the expert-load histogram is :mod:`moesim.plots.routing`).

Each ``*_chart`` returns an ``alt.Chart`` built from a tidy frame; the frame builders
(:func:`breakdown_frame`, :func:`pareto_frame`, :func:`fragmentation_curve`, ...) are public so
the numbers behind a chart can be read directly. Save with :func:`moesim.plots.save_chart`.
"""

from __future__ import annotations

from pathlib import Path

import altair as alt
import numpy as np
import pandas as pd

from moesim.errors import MoesimError
from moesim.plots._save import save_chart
from moesim.plots.style import (
    KIND_ORDER,
    MEMORY_ORDER,
    condition_label,
    kind_color,
    log_axis,
    memory_color,
    varying,
)
from moesim.plots.style import style as _style

WIDTH, HEIGHT = 520, 320
MEMORY_PARTS = dict(
    zip(("weights_bytes_per_gpu", "kv_cache_bytes_per_gpu", "activation_bytes_per_gpu"),
        MEMORY_ORDER, strict=True)
)  # fmt: skip


# ---------------------------------------------------------------------------- breakdowns
def breakdown_frame(prediction: dict) -> pd.DataFrame:
    """Per-op rows of a ``breakdown=True`` prediction (scalar inputs), one row per phase x op."""
    rows = []
    for phase, ops in prediction["breakdown"].items():
        for op in ops:
            rows.append(
                {"phase": phase}
                | {k: (v.item() if isinstance(v, np.ndarray) else v) for k, v in op.items()}
            )
    return pd.DataFrame(rows)


def roofline_frame(
    hw, dtype: str = "bf16", kernel_class: str = "gemm", intensity=None
) -> pd.DataFrame:
    """Datasheet and calibrated roofs: attainable FLOP/s vs arithmetic intensity (FLOP/byte)."""
    eff = hw.efficiency.for_class(kernel_class)
    peak, bw = hw.peak(dtype), hw.hbm_bandwidth_bytes_per_s
    x = np.geomspace(1e-2, 1e5, 200) if intensity is None else np.asarray(intensity, dtype=float)
    datasheet = np.minimum(peak, x * bw)  # Williams et al., CACM 2009
    calibrated = np.minimum(
        peak * min(eff.compute_eff(dtype), 1.0), x * bw * min(eff.memory_efficiency, 1.0)
    )
    return pd.concat(
        [
            pd.DataFrame(
                {
                    "intensity_flop_per_byte": x,
                    "flops_per_s": datasheet,
                    "roof": f"datasheet {dtype}",
                }
            ),
            pd.DataFrame(
                {
                    "intensity_flop_per_byte": x,
                    "flops_per_s": calibrated,
                    "roof": f"calibrated ({hw.efficiency.source.split(':')[0]})",
                }
            ),
        ],
        ignore_index=True,
    )


def load_measurements(folder: str | Path) -> pd.DataFrame:
    """Measured kernel rows (``moesim profile`` CSVs) with intensity and achieved FLOP/s."""
    frames = []
    for path in sorted(Path(folder).glob("*.csv")):
        df = pd.read_csv(path)
        if not {"flops", "hbm_bytes", "median_s"} <= set(df.columns):
            continue
        if "status" in df.columns:
            df = df[df["status"] == "ok"]
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=["kernel_class", "flops", "hbm_bytes", "median_s"])
    df = pd.concat(frames, ignore_index=True)
    df = df[(df["flops"] > 0) & (df["hbm_bytes"] > 0) & (df["median_s"] > 0)].copy()
    df["intensity_flop_per_byte"] = df["flops"] / df["hbm_bytes"]
    df["flops_per_s"] = df["flops"] / df["median_s"]
    return df


def roofline_chart(
    prediction: dict,
    hw,
    dtype: str = "bf16",
    measured: pd.DataFrame | None = None,
    title: str | None = None,
) -> alt.Chart:
    """Operators of a prediction at their arithmetic intensity and achieved FLOP/s, under the
    hardware's datasheet and calibrated roofs (and measured kernels, when given)."""
    ops = breakdown_frame(prediction)
    ops = ops[(ops["flops"] > 0) & (ops["hbm_bytes"] > 0) & (ops["time_s"] > 0)].copy()
    ops["intensity_flop_per_byte"] = ops["flops"] / ops["hbm_bytes"]
    ops["flops_per_s"] = ops["flops"] / ops["time_s"]
    lo = max(min(ops["intensity_flop_per_byte"].min(), 1.0) / 3, 1e-2)
    hi = max(
        ops["intensity_flop_per_byte"].max() * 3, 3 * hw.peak(dtype) / hw.hbm_bandwidth_bytes_per_s
    )
    roofs = roofline_frame(hw, dtype, intensity=np.geomspace(lo, hi, 200))
    xs, xa = log_axis(roofs["intensity_flop_per_byte"], "arithmetic intensity (FLOP / byte)")
    ys = pd.concat([roofs["flops_per_s"], ops["flops_per_s"]])
    ys, ya = log_axis(ys, "achieved FLOP/s")
    x = alt.X("intensity_flop_per_byte:Q", scale=xs, axis=xa)
    y = alt.Y("flops_per_s:Q", scale=ys, axis=ya)
    lines = (
        alt.Chart(roofs)
        .mark_line(strokeWidth=2)
        .encode(
            x,
            y,
            strokeDash=alt.StrokeDash("roof:N", title="roof"),
            color=alt.value("#444"),
        )
    )
    layers = [lines]
    if measured is not None and len(measured):
        layers.append(
            alt.Chart(measured)
            .mark_point(shape="cross", size=30, opacity=0.35, color="#999")
            .encode(x, y, tooltip=["kernel_class:N", "flops:Q", "hbm_bytes:Q", "median_s:Q"])
        )
    points = (
        alt.Chart(ops)
        .mark_point(filled=True, size=90, opacity=0.9)
        .encode(
            x,
            y,
            color=kind_color(),
            shape=alt.Shape("phase:N", title="phase"),
            tooltip=[
                "phase:N",
                "op:N",
                "kind:N",
                alt.Tooltip("time_s:Q", format=".3~s"),
                alt.Tooltip("flops_per_s:Q", format=".3~s"),
                "bound:N",
            ],
        )
    )
    # label the operators that take most of each step (the rest stay in the tooltip)
    share = ops["time_s"] / ops.groupby("phase")["time_s"].transform("sum")
    label = (
        alt.Chart(ops[share >= 0.05])
        .mark_text(align="left", dx=7, dy=-6, fontSize=10, color="#333")
        .encode(x, y, text="op:N")
    )
    layers += [points, label]
    return alt.layer(*layers).properties(
        width=WIDTH,
        height=HEIGHT,
        title=alt.Title(
            title or f"Roofline on {hw.name}",
            subtitle="points: operators of one prefill / decode step (named when >= 5% of "
            "the step); lines: roofs",
        ),
    )


def latency_breakdown_chart(prediction: dict, title: str | None = None) -> alt.Chart:
    """Step time of prefill and decode, stacked by op kind (ms, whole step on the busiest GPU)."""
    ops = breakdown_frame(prediction)
    by_kind = ops.groupby(["phase", "kind"], as_index=False)["time_s"].sum()
    by_kind["time_ms"] = by_kind["time_s"] * 1e3
    total = by_kind.groupby("phase")["time_ms"].transform("sum")
    by_kind["share"] = by_kind["time_ms"] / total
    by_kind["kind_order"] = by_kind["kind"].map({k: i for i, k in enumerate(KIND_ORDER)})
    by_kind["step"] = (
        by_kind["phase"]
        + " ("
        + total.map(lambda v: f"{v:,.0f} ms" if v >= 100 else f"{v:.3g} ms")
        + ")"
    )
    order = sorted(by_kind["step"].unique(), key=lambda t: 0 if t.startswith("prefill") else 1)
    bars = (
        alt.Chart(by_kind)
        .mark_bar()
        .encode(
            y=alt.Y("step:N", sort=order, title=None),
            x=alt.X(
                "share:Q", stack="normalize", axis=alt.Axis(format="%"), title="share of step time"
            ),
            color=kind_color(orient="bottom", columns=7),
            order=alt.Order("kind_order:Q"),
            tooltip=[
                "phase:N",
                "kind:N",
                alt.Tooltip("time_ms:Q", format=".3f", title="ms"),
                alt.Tooltip("share:Q", format=".1%"),
            ],
        )
    )
    return bars.properties(
        width=WIDTH,
        height=110,
        title=alt.Title(
            title or "Latency breakdown by op kind",
            subtitle="step time summed over all layers (in brackets); comm before overlap",
        ),
    )


# ---------------------------------------------------------------------------- sweeps
def memory_frame(df: pd.DataFrame, max_rows: int = 12) -> pd.DataFrame:
    """Per model x hardware x layout x formats: the largest feasible batch's memory parts
    (long form: one row per part), so no two configurations share a bar."""
    keys = [k for k in ("model", "hardware", "layout", "weight_dtype", "kv_dtype") if k in df]
    # largest feasible batch per configuration; one that never fits shows its smallest batch
    feasible = df["feasible"].astype(bool)
    best = df[feasible].groupby(keys, observed=True)["batch"].idxmax().dropna().astype(int)
    smallest = df[~feasible].groupby(keys, observed=True)["batch"].idxmin().dropna().astype(int)
    fits = set(df.loc[best, keys].itertuples(index=False, name=None))
    smallest = [i for i in smallest if tuple(df.loc[i, keys]) not in fits]
    rows = df.loc[list(best) + smallest].sort_values(keys)
    rows = rows.groupby(["model", "hardware"], observed=True, group_keys=False).head(max_rows)
    long = rows.melt(
        id_vars=[*keys, "batch", "memory_capacity_bytes_per_gpu", "feasible"],
        value_vars=list(MEMORY_PARTS),
        var_name="part",
        value_name="bytes",
    )
    long["stack_order"] = long["part"].map({k: i for i, k in enumerate(MEMORY_PARTS)})
    long["part"] = long["part"].map(MEMORY_PARTS)
    long["GB"] = long["bytes"] / 1e9
    fmt = varying(rows, ("weight_dtype", "kv_dtype"))
    label = long["layout"].astype(str)
    for k in fmt:
        label = label + " " + long[k].astype(str)
    long["label"] = (
        label
        + ", batch "
        + long["batch"].astype(str)
        + np.where(long["feasible"].astype(bool), "", " (does not fit)")
    )
    long["panel"] = long["model"].astype(str) + " on " + long["hardware"].astype(str)
    return long


def memory_breakdown_chart(
    df: pd.DataFrame, title: str | None = None, memory_utilization: float = 0.90
) -> alt.Chart:
    """Weights, KV cache and activations per GPU, one bar per layout (and format), one panel
    per model x hardware; grey tick: HBM capacity, red rule: the usable share the engine may
    fill (capacity x memory_utilization)."""
    long = memory_frame(df)
    long["capacity_GB"] = long["memory_capacity_bytes_per_gpu"] / 1e9
    long["usable_GB"] = long["capacity_GB"] * memory_utilization
    long["usable_text"] = long["usable_GB"].map(lambda v: f"usable {v:.0f} GB")
    y = alt.Y("label:N", title=None, sort=None)
    base = alt.Chart(long)
    bars = base.mark_bar().encode(
        y,
        x=alt.X("GB:Q", title="memory per GPU (GB)", stack="zero"),
        color=memory_color(),
        order=alt.Order("stack_order:Q"),
        tooltip=["label:N", "part:N", alt.Tooltip("GB:Q", format=".1f")],
    )
    cap = base.mark_tick(color="#777", thickness=2, size=20).encode(
        y, x="capacity_GB:Q", tooltip=[alt.Tooltip("capacity_GB:Q", title="capacity GB")]
    )
    usable = base.mark_rule(color="#d62728", strokeWidth=2, strokeDash=[5, 3]).encode(
        x="usable_GB:Q", tooltip=[alt.Tooltip("usable_GB:Q", title="usable GB", format=".1f")]
    )
    usable_text = (
        base.transform_aggregate(usable_GB="max(usable_GB)", usable_text="max(usable_text)")
        .mark_text(align="left", dx=4, dy=-4, baseline="bottom", color="#d62728", fontSize=10)
        .encode(
            x="usable_GB:Q",
            y=alt.value(0),
            text="usable_text:N",
        )
    )
    rows = long.groupby("panel")["label"].nunique().max()
    layered = alt.layer(bars, cap, usable, usable_text).properties(
        width=WIDTH, height=max(26 * rows, 80)
    )
    return layered.facet(row=alt.Row("panel:N", title=None, header=alt.Header(labelAngle=0,
        labelAlign="left", labelAnchor="start", labelOrient="top"))).resolve_scale(
        y="independent"
    ).properties(
        title=alt.Title(
            title or "Memory per GPU",
            subtitle=f"largest feasible batch per layout and format (the smallest when none "
            f"fits); grey tick: HBM capacity; red dashed: usable = capacity x "
            f"{memory_utilization:g}",
        )
    )  # fmt: skip


def pareto_front(per_user: np.ndarray, per_gpu: np.ndarray) -> np.ndarray:
    """Mask of points no other point beats on both tokens/s/user and tokens/s/GPU."""
    order = np.lexsort((-per_gpu, -per_user))  # per_user descending, ties by per_gpu descending
    best = np.maximum.accumulate(per_gpu[order])
    on = np.empty(len(order), dtype=bool)
    on[order] = per_gpu[order] >= np.concatenate([[-np.inf], best[:-1]]) * (1 + 1e-12)
    return on


def pareto_frame(df: pd.DataFrame, color: str = "hardware", max_points: int = 4000) -> pd.DataFrame:
    """Feasible points with a ``frontier`` flag per series (faint points thinned to
    ``max_points``, deterministically; frontier points always kept).

    A series is one value of ``color`` under one combination of every other condition axis
    that varies in the sweep (routing, lengths, KV format, ...: ``style.CONDITION_AXES``);
    those others make the ``panel`` column, so points evaluated under different conditions
    never share a frontier. Layout, weight format and batch are the choices along a frontier
    and are written on its points (``point_label``).
    """
    ok = df[df["feasible"] & np.isfinite(df["output_tokens_per_s_per_user"])].copy()
    if color not in ok.columns:
        raise MoesimError(f"cannot colour by {color!r}: not a column of the sweep")
    panel_axes = [a for a in varying(ok) if a != color]
    ok["panel"] = condition_label(ok, panel_axes)
    ok["series"] = ok[color].astype(str)
    ok["frontier"] = False
    for _, g in ok.groupby(["panel", "series"], observed=True):
        mask = pareto_front(
            g["output_tokens_per_s_per_user"].to_numpy(),
            g["output_tokens_per_s_per_gpu"].to_numpy(),
        )
        ok.loc[g.index[mask], "frontier"] = True
    label = ok["layout"].astype(str).str.replace(" ", "", regex=False)
    if "weight_dtype" in ok:
        label = label + " " + ok["weight_dtype"].astype(str)
    ok["point_label"] = label + " B" + ok["batch"].astype(int).astype(str)
    # name at most 4 points of a frontier (its ends and evenly between) so labels stay legible
    ok["labelled"] = False
    for _, g in ok[ok["frontier"]].groupby(["panel", "series"], observed=True):
        g = g.sort_values("output_tokens_per_s_per_user")
        pick = np.unique(np.linspace(0, len(g) - 1, min(len(g), 4)).round().astype(int))
        ok.loc[g.index[pick], "labelled"] = True
    rest = ok[~ok["frontier"]]
    if len(rest) > max_points:
        rest = rest.iloc[np.linspace(0, len(rest) - 1, max_points).astype(int)]
    keep = pd.concat([rest, ok[ok["frontier"]]])
    cols = [
        color,
        "series",
        "panel",
        "model",
        "hardware",
        "layout",
        "weight_dtype",
        "batch",
        "input_len",
        "output_len",
        "output_tokens_per_s_per_user",
        "output_tokens_per_s_per_gpu",
        "usd_per_million_output_tokens",
        "meets_slo",
        "frontier",
        "point_label",
        "labelled",
    ]
    cols = [c for c in dict.fromkeys(cols) if c in keep.columns]
    out = keep[cols].assign(**{color: lambda d: d[color].astype(str)})
    out.attrs["panel_axes"] = panel_axes
    return out


def pareto_chart(df: pd.DataFrame, color: str = "hardware", title: str | None = None) -> alt.Chart:
    """Throughput per GPU vs per user: every feasible point faint, each series' frontier bold,
    frontier points labelled with layout, weight format and batch; one panel per combination
    of the other condition axes that vary (see :func:`pareto_frame`)."""
    pts = pareto_frame(df, color)
    panel_axes = pts.attrs.get("panel_axes", [])
    xs, xa = log_axis(pts["output_tokens_per_s_per_user"], "output tokens/s per user (1 / TPOT)")
    ys, ya = log_axis(pts["output_tokens_per_s_per_gpu"], "output tokens/s per GPU")
    x = alt.X("output_tokens_per_s_per_user:Q", scale=xs, axis=xa)
    y = alt.Y("output_tokens_per_s_per_gpu:Q", scale=ys, axis=ya)
    c = alt.Color("series:N", title=color, legend=alt.Legend(orient="bottom"))
    tip = [
        "model:N",
        "hardware:N",
        "layout:N",
        "weight_dtype:N",
        "batch:Q",
        "panel:N",
        alt.Tooltip("output_tokens_per_s_per_user:Q", format=".1f"),
        alt.Tooltip("output_tokens_per_s_per_gpu:Q", format=".1f"),
        alt.Tooltip("usd_per_million_output_tokens:Q", format=".3f"),
    ]
    tip = [t for t in tip if (t.shorthand if hasattr(t, "shorthand") else t).split(":")[0] in pts]
    base = alt.Chart()
    quiet = c
    faint = (
        base.transform_filter("!datum.frontier")
        .mark_circle(size=14, opacity=0.18)
        .encode(x, y, quiet, tooltip=tip)
    )
    line = (
        base.transform_filter("datum.frontier")
        .mark_line(strokeWidth=2.5, point=alt.OverlayMarkDef(size=40, filled=True))
        .encode(x, y, c, order="output_tokens_per_s_per_user:Q", tooltip=tip)
    )
    labels = (
        base.transform_filter("datum.labelled")
        .mark_text(align="left", dx=6, dy=-7, fontSize=9)
        .encode(x, y, quiet, text="point_label:N")
    )
    # the line layer first: the legend takes its symbol, not the faint dots
    layered = alt.layer(line, faint, labels, data=pts).properties(
        width=WIDTH if not panel_axes else 380, height=HEIGHT if not panel_axes else 260
    )
    panels = pts["panel"].nunique()
    subtitle = "faint: every feasible point; bold: the Pareto frontier of each series; labels: "
    subtitle += "layout, weight format, batch (up to 4 per frontier; all in the tooltip)"
    if panel_axes:
        layered = layered.facet(
            facet=alt.Facet("panel:N", title=None, header=alt.Header(labelFontSize=11)),
            columns=min(panels, 2),
        )
        subtitle += f"; one panel per {' x '.join(panel_axes)}"
    return layered.properties(
        title=alt.Title(title or "Throughput vs interactivity", subtitle=subtitle)
    )


# ---------------------------------------------------------------------------- dense vs MoE
def fragmentation_curve(
    moe_model,
    hw,
    batches,
    routings=("uniform", "zipf:1.2"),
    *,
    layout=None,
    context_len: int = 2048,
    block_m: int | None = 64,
) -> pd.DataFrame:
    """Decode cost per token vs batch for an MoE model and its ``dense_equivalent()``.

    Rows: model, kind (moe | dense), routing, batch, decode_step_s, step_s_per_token,
    weight_bytes_per_token (weights read per step on one GPU / batch), tokens_per_expert
    (T·k/E) and compute_bound_batch: the batch at which an expert's GEMM reaches the ridge,
    i.e. tokens per expert >= ridge x bytes per param / 2 (a token costs 2 FLOP per weight, a
    weight costs ``bytes per param`` bytes; ridge = peak / bandwidth, Williams et al. 2009).
    The dense model reads its FFN once for the whole batch, the MoE reads each *active* expert,
    each seeing ~T·k/E tokens: this is the batching fragmentation of DESIGN.md.
    """
    from moesim.cost.ops import RoutingOptions
    from moesim.cost.roofline import ridge_intensity
    from moesim.cost.routing import parse_routing
    from moesim.engine import static as serving
    from moesim.spec.deployment import Layout
    from moesim.spec.dtypes import dtype_bytes

    layout = layout or Layout()
    batches = np.asarray(batches, dtype=float)
    wb = dtype_bytes(layout.weight_dtype)
    from moesim.spec.dtypes import compute_dtype

    cdt = compute_dtype(layout.weight_dtype, hw.peak_flops_per_s)
    n_star = ridge_intensity(hw.peak(cdt), hw.hbm_bandwidth_bytes_per_s) * wb / 2.0
    dense = moe_model.dense_equivalent()
    frames = []
    for model, kind in ((moe_model, "moe"), (dense, "dense")):
        for spec in routings if kind == "moe" else ("uniform",):
            ropts = RoutingOptions(dist=parse_routing(spec), block_m=block_m)
            res = serving.predict_phase(
                model,
                hw,
                layout,
                phase="decode",
                batch=batches,
                context_len=context_len,
                routing=ropts,
            )
            weights = np.broadcast_to(res["weights_bytes_per_gpu"], batches.shape).astype(float)
            active = np.broadcast_to(res["active_experts"], batches.shape).astype(float)
            if model.is_moe:
                # Resident expert bytes that a step does not touch: inactive experts are not read.
                idle = (
                    model.num_moe_layers
                    * (model.num_experts - active)
                    * model.expert_params
                    * wb
                    / np.asarray(layout.moe_tp, dtype=float)
                )
                weights = weights - idle
            per_expert = batches * model.top_k / model.num_experts
            frames.append(
                pd.DataFrame(
                    {
                        "model": model.name,
                        "kind": kind,
                        "routing": spec if kind == "moe" else "dense",
                        "batch": batches,
                        "decode_step_s": res["tpot_s"],
                        "step_s_per_token": res["tpot_s"] / batches,
                        "weight_bytes_per_token": weights / batches,
                        "active_experts": active,
                        "tokens_per_expert": per_expert,
                        "compute_bound_batch": n_star * model.num_experts / model.top_k,
                    }
                )
            )
    return pd.concat(frames, ignore_index=True)


def dense_vs_moe_chart(curve: pd.DataFrame, title: str | None = None) -> alt.Chart:
    """Two panels: decode time per token and weight bytes read per token vs batch, MoE (per
    routing) against its dense equivalent; dotted rule: batch where the experts turn compute-bound."""
    curve = curve.assign(
        series=lambda d: np.where(
            d["kind"] == "dense", d["model"], d["model"] + " · " + d["routing"]
        ),
        us_per_token=lambda d: d["step_s_per_token"] * 1e6,
        MB_per_token=lambda d: d["weight_bytes_per_token"] / 1e6,
    )
    bs, ba = log_axis(curve["batch"], "decode batch (sequences)", fmt="~s")
    x = alt.X("batch:Q", scale=bs, axis=ba)
    color = alt.Color("series:N", title=None, legend=alt.Legend(orient="bottom", columns=2))
    rule_data = curve[curve["kind"] == "moe"].drop_duplicates("model")[["compute_bound_batch"]]
    rule_data = rule_data[rule_data["compute_bound_batch"] <= curve["batch"].max()]

    def panel(field: str, ytitle: str) -> alt.LayerChart:
        lines = (
            alt.Chart(curve)
            .mark_line(strokeWidth=2)
            .encode(
                x,
                alt.Y(
                    f"{field}:Q",
                    scale=log_axis(curve[field], ytitle)[0],
                    axis=log_axis(curve[field], ytitle)[1],
                ),
                color,
                tooltip=["series:N", "batch:Q", alt.Tooltip(f"{field}:Q", format=".3~s")],
            )
        )
        rule = (
            alt.Chart(rule_data)
            .mark_rule(strokeDash=[3, 3], color="#666")
            .encode(x=alt.X("compute_bound_batch:Q"))
        )
        return alt.layer(lines, rule).properties(width=330, height=260)

    return alt.hconcat(
        panel("us_per_token", "decode step time per token (µs)"),
        panel("MB_per_token", "weights read per token per GPU (MB)"),
    ).properties(
        title=alt.Title(
            title or "Batching fragmentation: MoE vs dense of equal active size",
            subtitle="dotted: batch at which the experts become compute-bound (uniform routing)",
        )
    )


# ---------------------------------------------------------------------------- expert load
def expert_load_chart(
    model, routing: str = "zipf:1.2", tokens: int = 4096, ep: int = 1
) -> alt.Chart:
    """The expert-load histogram of :func:`moesim.plots.routing.expert_load_chart` for ``model``'s
    experts under ``routing``, ``tokens`` tokens reaching an EP group of ``ep`` GPUs."""
    from moesim.plots.routing import expert_load_chart as routing_chart

    return routing_chart(
        tokens=int(tokens),
        top_k=model.top_k,
        num_experts=model.num_experts,
        ep=int(ep),
        dist=routing,
    )


# ---------------------------------------------------------------------------- from a sweep
def representative_row(df: pd.DataFrame) -> pd.Series:
    """The point a sweep's single-point charts describe: most tokens/s/GPU among those meeting
    the SLO (else feasible, else the first point)."""
    for mask in (df["meets_slo"], df["feasible"]):
        if mask.any():
            sub = df[mask]
            return sub.loc[sub["output_tokens_per_s_per_gpu"].idxmax()]
    return df.iloc[0]


def predict_row(row: pd.Series, loaded, breakdown: bool = True) -> tuple[dict, object, object]:
    """Re-run one sweep row through :func:`moesim.engine.static.predict` (scalar, with breakdown)."""
    from moesim.cost.ops import RoutingOptions
    from moesim.engine import static as serving
    from moesim.spec.deployment import Layout

    model = loaded.models[loaded.model_labels.index(str(row["model"]))]
    hw = loaded.hardware[loaded.hardware_labels.index(str(row["hardware"]))]
    layout = Layout(
        tp=int(row["tp"]),
        ep=int(row["ep"]),
        pp=int(row["pp"]),
        dp=int(row["dp"]),
        replicas=int(row["replicas"]),
        weight_dtype=str(row["weight_dtype"]),
        kv_dtype=str(row["kv_dtype"]),
        act_dtype=str(row["act_dtype"]),
        dispatch_dtype=str(row["dispatch_dtype"]),
        overlap=str(row["overlap"]),
        redundant_experts=int(row["redundant_experts"]),
        offload_fraction=float(row["offload_fraction"]),
    )
    cap = row["capacity_factor"]
    ropts = RoutingOptions(
        dist=loaded.routing[str(row["routing"])],
        block_m=int(row["block_m"]),
        capacity_factor=None if pd.isna(cap) else float(cap),
    )
    res = serving.predict(
        model,
        hw,
        layout,
        batch=int(row["batch"]),
        input_len=int(row["input_len"]),
        output_len=int(row["output_len"]),
        routing=ropts,
        breakdown=breakdown,
    )
    return res, model, hw


def sweep_charts(df: pd.DataFrame, loaded, out_dir: str | Path, formats=None) -> list[Path]:
    """Draw the charts a scenario's ``outputs.charts`` names into ``out_dir``."""
    out_dir = Path(out_dir)
    outputs = loaded.scenario.outputs
    formats = formats or outputs.chart_formats
    written: list[Path] = []
    if not len(df):
        return written
    row = representative_row(df)
    point = f"{row['model']} on {row['hardware']}, {row['layout']}, batch {row['batch']}"
    for name in outputs.charts:
        if name == "pareto":
            chart = pareto_chart(
                df, outputs.color_by, title=f"Throughput vs interactivity: {loaded.scenario.name}"
            )
        elif name == "memory_breakdown":
            share = min(lay.memory_utilization for lay in loaded.scenario.layouts)
            chart = memory_breakdown_chart(df, memory_utilization=share)
        elif name in ("roofline", "latency_breakdown"):
            res, model, hw = predict_row(row, loaded)
            if name == "roofline":
                chart = roofline_chart(
                    res,
                    hw,
                    dtype=str(row["weight_dtype"])
                    if str(row["weight_dtype"]) in hw.peak_flops_per_s
                    else "bf16",
                    title=f"Roofline: {point}",
                )
            else:
                chart = latency_breakdown_chart(res, title=f"Latency breakdown: {point}")
        elif name == "expert_load":
            moe = [m for m in loaded.models if m.is_moe]
            if not moe:
                raise MoesimError("outputs.charts: expert_load needs an MoE model in the scenario")
            # every routing of the sweep, one row each, on the widest EP layout of the sweep
            routings = [str(r) for r in dict.fromkeys(df["routing"].astype(str))]
            ep_rows = df[df["model"].astype(str) == moe[0].name]
            ep = int(ep_rows["ep"].max()) if len(ep_rows) else 1
            tokens = int(row["batch"]) * (
                int(row["input_len"]) if str(row["phase"]) == "prefill" else 1
            )
            chart = alt.vconcat(
                *(expert_load_chart(moe[0], r, tokens=max(tokens, 64), ep=ep) for r in routings[:6])
            )
        elif name == "dense_vs_moe":
            moe = [m for m in loaded.models if m.is_moe]
            if not moe:
                raise MoesimError("outputs.charts: dense_vs_moe needs an MoE model in the scenario")
            routings = list(dict.fromkeys(["uniform", *(str(r) for r in df["routing"].unique())]))[
                :3
            ]
            curve = fragmentation_curve(
                moe[0], loaded.hardware[0], np.unique(np.geomspace(1, 16384, 29).round()), routings
            )
            chart = dense_vs_moe_chart(curve)
        else:
            continue
        written += save_chart(_style(chart), out_dir / name, formats)
    return written
