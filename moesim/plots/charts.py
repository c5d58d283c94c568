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

WIDTH, HEIGHT = 520, 320
KIND_ORDER = ["attention", "moe", "ffn", "norm", "lm_head", "comm", "offload"]
MEMORY_PARTS = {
    "weights_bytes_per_gpu": "weights",
    "kv_cache_bytes_per_gpu": "KV cache",
    "activation_bytes_per_gpu": "activations",
}


def _style(chart: alt.TopLevelMixin) -> alt.TopLevelMixin:
    return (
        chart.configure_axis(labelFontSize=11, titleFontSize=12)
        .configure_legend(labelFontSize=11, titleFontSize=12, labelLimit=260)
        .configure_title(fontSize=14, anchor="start", subtitleFontSize=11, subtitleColor="#555")
    )


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
    x = alt.X(
        "intensity_flop_per_byte:Q",
        scale=alt.Scale(type="log"),
        title="arithmetic intensity (FLOP / byte)",
    )
    y = alt.Y(
        "flops_per_s:Q", scale=alt.Scale(type="log"), title="FLOP/s", axis=alt.Axis(format="~s")
    )
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
            color=alt.Color("kind:N", sort=KIND_ORDER, title="op kind"),
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
    label = (
        alt.Chart(ops[ops["phase"] == "decode"])
        .mark_text(align="left", dx=7, dy=-6, fontSize=10, color="#333")
        .encode(x, y, text="op:N")
    )
    layers += [points, label]
    return alt.layer(*layers).properties(
        width=WIDTH,
        height=HEIGHT,
        title=alt.Title(
            title or f"Roofline on {hw.name}",
            subtitle="points: operators of one prefill / decode step; lines: roofs",
        ),
    )


def latency_breakdown_chart(prediction: dict, title: str | None = None) -> alt.Chart:
    """Step time of prefill and decode, stacked by op kind (ms, whole step on the busiest GPU)."""
    ops = breakdown_frame(prediction)
    by_kind = ops.groupby(["phase", "kind"], as_index=False)["time_s"].sum()
    by_kind["time_ms"] = by_kind["time_s"] * 1e3
    total = by_kind.groupby("phase")["time_ms"].transform("sum")
    by_kind["share"] = by_kind["time_ms"] / total
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
            color=alt.Color(
                "kind:N",
                sort=KIND_ORDER,
                title="op kind",
                legend=alt.Legend(orient="bottom", columns=7),
            ),
            order=alt.Order("kind:N"),
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
    """Per layout (first model and hardware of ``df``): the largest feasible batch's memory parts."""
    sub = df[(df["model"] == df["model"].iloc[0]) & (df["hardware"] == df["hardware"].iloc[0])]
    ok = sub[sub["feasible"]]
    pick = ok if len(ok) else sub
    idx = pick.groupby("layout", observed=True)["batch"].idxmax()
    rows = pick.loc[idx].head(max_rows)
    long = rows.melt(
        id_vars=["layout", "batch", "memory_capacity_bytes_per_gpu", "feasible"],
        value_vars=list(MEMORY_PARTS),
        var_name="part",
        value_name="bytes",
    )
    long["stack_order"] = long["part"].map({k: i for i, k in enumerate(MEMORY_PARTS)})
    long["part"] = long["part"].map(MEMORY_PARTS)
    long["GB"] = long["bytes"] / 1e9
    long["label"] = long["layout"].astype(str) + ", batch " + long["batch"].astype(str)
    long["model"], long["hardware"] = str(sub["model"].iloc[0]), str(sub["hardware"].iloc[0])
    return long


def memory_breakdown_chart(df: pd.DataFrame, title: str | None = None) -> alt.Chart:
    """Weights, KV cache and activations per GPU against the GPU's capacity, one bar per layout."""
    long = memory_frame(df)
    y = alt.Y("label:N", title=None, sort=None)
    bars = (
        alt.Chart(long)
        .mark_bar()
        .encode(
            y,
            x=alt.X("GB:Q", title="memory per GPU (GB)", stack="zero"),
            color=alt.Color("part:N", sort=list(MEMORY_PARTS.values()), title="memory"),
            order=alt.Order("stack_order:Q"),
            tooltip=["label:N", "part:N", alt.Tooltip("GB:Q", format=".1f")],
        )
    )
    cap = long.drop_duplicates("label").assign(
        cap_GB=lambda d: d["memory_capacity_bytes_per_gpu"] / 1e9
    )
    rule = (
        alt.Chart(cap)
        .mark_tick(color="#c00", thickness=2, size=22)
        .encode(y, x="cap_GB:Q", tooltip=[alt.Tooltip("cap_GB:Q", title="capacity GB")])
    )
    model, hw = long["model"].iloc[0], long["hardware"].iloc[0]
    return alt.layer(bars, rule).properties(
        width=WIDTH,
        height=max(28 * cap.shape[0], 80),
        title=alt.Title(
            title or f"Memory per GPU: {model} on {hw}",
            subtitle="largest feasible batch per layout (the first model and hardware); red tick: HBM capacity",
        ),
    )


def pareto_front(per_user: np.ndarray, per_gpu: np.ndarray) -> np.ndarray:
    """Mask of points no other point beats on both tokens/s/user and tokens/s/GPU."""
    order = np.lexsort((-per_gpu, -per_user))  # per_user descending, ties by per_gpu descending
    best = np.maximum.accumulate(per_gpu[order])
    on = np.empty(len(order), dtype=bool)
    on[order] = per_gpu[order] >= np.concatenate([[-np.inf], best[:-1]]) * (1 + 1e-12)
    return on


def pareto_frame(df: pd.DataFrame, color: str = "hardware", max_points: int = 4000) -> pd.DataFrame:
    """Feasible points with a ``frontier`` flag per ``color`` group (faint points thinned to
    ``max_points``, deterministically; frontier points always kept)."""
    ok = df[df["feasible"] & np.isfinite(df["output_tokens_per_s_per_user"])].copy()
    ok["frontier"] = False
    for _, g in ok.groupby(color, observed=True):
        mask = pareto_front(
            g["output_tokens_per_s_per_user"].to_numpy(),
            g["output_tokens_per_s_per_gpu"].to_numpy(),
        )
        ok.loc[g.index[mask], "frontier"] = True
    rest = ok[~ok["frontier"]]
    if len(rest) > max_points:
        rest = rest.iloc[np.linspace(0, len(rest) - 1, max_points).astype(int)]
    keep = pd.concat([rest, ok[ok["frontier"]]])
    cols = [
        color,
        "model",
        "hardware",
        "layout",
        "batch",
        "input_len",
        "output_len",
        "output_tokens_per_s_per_user",
        "output_tokens_per_s_per_gpu",
        "usd_per_million_output_tokens",
        "meets_slo",
        "frontier",
    ]
    return keep[list(dict.fromkeys(cols))].assign(**{color: lambda d: d[color].astype(str)})


def _log_domain(values: pd.Series) -> alt.Scale:
    v = values[np.isfinite(values) & (values > 0)]
    if not len(v):
        return alt.Scale(type="log")
    return alt.Scale(type="log", domain=[float(v.min()) / 1.25, float(v.max()) * 1.25], nice=False)


def pareto_chart(df: pd.DataFrame, color: str = "hardware", title: str | None = None) -> alt.Chart:
    """Throughput per GPU vs per user: every feasible point faint, each group's frontier bold."""
    pts = pareto_frame(df, color)
    x = alt.X(
        "output_tokens_per_s_per_user:Q",
        scale=_log_domain(pts["output_tokens_per_s_per_user"]),
        title="output tokens/s per user (1 / TPOT)",
    )
    y = alt.Y(
        "output_tokens_per_s_per_gpu:Q",
        scale=_log_domain(pts["output_tokens_per_s_per_gpu"]),
        title="output tokens/s per GPU",
    )
    c = alt.Color(f"{color}:N", title=color)
    tip = [
        "model:N",
        "hardware:N",
        "layout:N",
        "batch:Q",
        alt.Tooltip("output_tokens_per_s_per_user:Q", format=".1f"),
        alt.Tooltip("output_tokens_per_s_per_gpu:Q", format=".1f"),
        alt.Tooltip("usd_per_million_output_tokens:Q", format=".3f"),
    ]
    faint = (
        alt.Chart(pts[~pts["frontier"]])
        .mark_circle(size=14, opacity=0.18)
        .encode(x, y, c, tooltip=tip)
    )
    front = pts[pts["frontier"]].sort_values("output_tokens_per_s_per_user")
    line = (
        alt.Chart(front)
        .mark_line(strokeWidth=2.5, point=alt.OverlayMarkDef(size=40, filled=True))
        .encode(x, y, c, order="output_tokens_per_s_per_user:Q", tooltip=tip)
    )
    return alt.layer(faint, line).properties(
        width=WIDTH,
        height=HEIGHT,
        title=alt.Title(
            title or "Throughput vs interactivity",
            subtitle="faint: every feasible point; bold: the Pareto frontier",
        ),
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
    x = alt.X("batch:Q", scale=_log_domain(curve["batch"]), title="decode batch (sequences)")
    color = alt.Color("series:N", title=None, legend=alt.Legend(orient="bottom", columns=2))
    rule_data = curve[curve["kind"] == "moe"].drop_duplicates("model")[["compute_bound_batch"]]
    rule_data = rule_data[rule_data["compute_bound_batch"] <= curve["batch"].max()]

    def panel(field: str, ytitle: str) -> alt.LayerChart:
        lines = (
            alt.Chart(curve)
            .mark_line(strokeWidth=2)
            .encode(
                x,
                alt.Y(f"{field}:Q", scale=alt.Scale(type="log"), title=ytitle),
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
            chart = memory_breakdown_chart(df)
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
            skewed = [str(r) for r in df["routing"].unique() if str(r) != "uniform"]
            ep = int(row["ep"]) if moe[0].is_moe and row["model"] in [m.name for m in moe] else 1
            tokens = int(row["batch"]) * (
                int(row["input_len"]) if str(row["phase"]) == "prefill" else 1
            )
            chart = expert_load_chart(
                moe[0], skewed[0] if skewed else "uniform", tokens=max(tokens, 64), ep=ep
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
