"""Charts of a request-level simulation: latency CDFs and KV-cache occupancy over time.

The frame builders (:func:`latency_cdf_frame`, :func:`occupancy_frame`) are public so the numbers
behind a chart can be read directly; each is thinned to a few thousand points (quantiles for the
CDFs, time bins for occupancy) so a million-request run still draws quickly.
"""

from __future__ import annotations

from pathlib import Path

import altair as alt
import numpy as np
import pandas as pd

from moesim.plots._save import save_chart

WIDTH, HEIGHT = 260, 200
CDF_POINTS = 1000
OCCUPANCY_BINS = 1500
METRICS = {
    "ttft_s": "TTFT",
    "tpot_s": "TPOT (per request)",
    "itl_s": "TPOT (per token)",
    "e2e_latency_s": "end-to-end latency",
}


def latency_cdf_frame(result) -> pd.DataFrame:
    """Long frame (metric, latency_s, cumulative_share) of the latency distributions: TTFT, TPOT
    per request and per token (each step weighted by its decode tokens), end-to-end latency."""
    req = result.requests
    ok = ~np.asarray(req["rejected"], dtype=bool)
    q = np.linspace(0.0, 1.0, CDF_POINTS + 1)
    rows = []
    for key in ("ttft_s", "tpot_s", "e2e_latency_s"):
        x = np.asarray(req[key])[ok]
        x = x[np.isfinite(x)]
        if x.size:
            rows.append(
                pd.DataFrame(
                    {"metric": METRICS[key], "latency_s": np.quantile(x, q), "cumulative_share": q}
                )
            )
    dts = np.concatenate(
        [s["step_s"] for s in result.steps] + [s["resume_gaps_s"] for s in result.steps]
    )
    w = np.concatenate(
        [s["step_decode_seqs"] for s in result.steps]
        + [np.ones(s["resume_gaps_s"].size, dtype=np.int64) for s in result.steps]
    ).astype(float)
    if w.sum() > 0:
        order = np.argsort(dts, kind="stable")
        cum = np.cumsum(w[order]) / w.sum()
        idx = np.minimum(np.searchsorted(cum, q[1:], side="left"), cum.size - 1)
        rows.append(
            pd.DataFrame(
                {
                    "metric": METRICS["itl_s"],
                    "latency_s": np.concatenate([[dts[order][0]], dts[order][idx]]),
                    "cumulative_share": q,
                }
            )
        )
    return (
        pd.concat(rows, ignore_index=True)
        if rows
        else pd.DataFrame(columns=["metric", "latency_s", "cumulative_share"])
    )


def occupancy_frame(result) -> pd.DataFrame:
    """KV-cache occupancy (share of blocks in use) and running decodes over time, per instance,
    averaged over time bins (busy steps only)."""
    rows = []
    for s in result.steps:
        end, dt = s["step_end_s"], s["step_s"]
        if end.size == 0:
            continue
        occ = s["step_kv_blocks"] / max(s["kv_blocks"], 1)
        edges = np.linspace(end[0] - dt[0], end[-1], min(OCCUPANCY_BINS, end.size) + 1)
        b = np.clip(np.searchsorted(edges, end, side="left") - 1, 0, edges.size - 2)
        busy = np.bincount(b, weights=dt, minlength=edges.size - 1)
        keep = busy > 0
        occ_b = np.bincount(b, weights=occ * dt, minlength=edges.size - 1)[keep] / busy[keep]
        dec_b = (
            np.bincount(b, weights=s["step_decode_seqs"] * dt, minlength=edges.size - 1)[keep]
            / busy[keep]
        )
        rows.append(
            pd.DataFrame(
                {
                    "instance": f"{s['pool']} {s['instance']}",
                    "time_s": (edges[:-1] + edges[1:])[keep] / 2.0,
                    "kv_occupancy": occ_b,
                    "decode_seqs": dec_b,
                }
            )
        )
    return (
        pd.concat(rows, ignore_index=True)
        if rows
        else pd.DataFrame(columns=["instance", "time_s", "kv_occupancy", "decode_seqs"])
    )


def latency_cdf_chart(result, title: str | None = None) -> alt.Chart:
    """Four panels of latency CDFs (log time axis), with rules at p50, p90 and p99."""
    df = latency_cdf_frame(result)
    marks = []
    for metric, group in df.groupby("metric", sort=False):
        for p in (0.5, 0.9, 0.99):
            i = int(np.searchsorted(group["cumulative_share"].to_numpy(), p))
            marks.append(
                {
                    "metric": metric,
                    "latency_s": group["latency_s"].iloc[min(i, len(group) - 1)],
                    "p": f"p{int(p * 100)}",
                }
            )
    marks = pd.DataFrame(marks)
    summary = result.summary
    subtitle = (
        f"{summary['completed']:,} requests; p99 TTFT {summary['ttft_p99_s'] * 1e3:,.0f} ms, "
        f"p99 TPOT {summary['tpot_p99_s'] * 1e3:,.1f} ms/token, "
        f"{summary['output_tokens_per_s_per_gpu']:,.0f} output tok/s/GPU"
    )
    return _facet(df, marks, title or "Latency distributions", subtitle)


def _facet(df: pd.DataFrame, marks: pd.DataFrame, title: str, subtitle: str) -> alt.Chart:
    panels = []
    for metric in METRICS.values():
        d, m = df[df["metric"] == metric], marks[marks["metric"] == metric]
        if d.empty:
            continue
        x = alt.X(
            "latency_s:Q",
            scale=alt.Scale(type="log", nice=False),
            title=f"{metric} (s)",
            axis=alt.Axis(format="~s"),
        )
        line = (
            alt.Chart(d)
            .mark_line(strokeWidth=2, color="#1f77b4", interpolate="step-after")
            .encode(
                x,
                y=alt.Y("cumulative_share:Q", title="cumulative share", axis=alt.Axis(format="%")),
            )
        )
        rules = alt.Chart(m).mark_rule(strokeDash=[3, 3], color="#d62728").encode(x="latency_s:Q")
        text = (
            alt.Chart(m)
            .mark_text(align="left", dx=3, fontSize=10, color="#d62728")
            .encode(x="latency_s:Q", y=alt.value(10), text="p:N")
        )
        panels.append(
            alt.layer(line, rules, text).properties(width=WIDTH, height=HEIGHT, title=metric)
        )
    rows = [alt.hconcat(*panels[i : i + 2]) for i in range(0, len(panels), 2)]
    return alt.vconcat(*rows).properties(title=alt.Title(title, subtitle=subtitle))


def occupancy_chart(result, title: str | None = None) -> alt.Chart:
    """KV-cache occupancy over time (top) and running decodes (bottom), one line per instance."""
    df = occupancy_frame(result)
    x = alt.X("time_s:Q", title="simulated time (s)")
    color = alt.Color(
        "instance:N",
        title="instance",
        legend=alt.Legend(orient="bottom") if df["instance"].nunique() > 1 else None,
    )
    kv = (
        alt.Chart(df)
        .mark_line(strokeWidth=1.2)
        .encode(
            x,
            y=alt.Y(
                "kv_occupancy:Q",
                title="KV blocks in use",
                axis=alt.Axis(format="%"),
                scale=alt.Scale(domain=[0, 1]),
            ),
            color=color,
        )
        .properties(width=2 * WIDTH + 40, height=HEIGHT)
    )
    dec = (
        alt.Chart(df)
        .mark_line(strokeWidth=1.2)
        .encode(x, y=alt.Y("decode_seqs:Q", title="decoding sequences"), color=color)
        .properties(width=2 * WIDTH + 40, height=HEIGHT * 0.7)
    )
    s = result.summary
    subtitle = (
        f"mean occupancy {s['kv_occupancy_mean']:.0%} (max {s['kv_occupancy_max']:.0%}) of "
        f"{s['kv_cache_tokens']:,} tokens per instance; {s['preemptions']:,} preemptions"
    )
    return alt.vconcat(kv, dec).properties(
        title=alt.Title(title or "KV-cache occupancy", subtitle=subtitle)
    )


def save_simulation_charts(
    result, out_dir: str | Path, formats=("png", "svg"), title: str | None = None
) -> list[Path]:
    """Write ``latency_cdf.<fmt>`` and ``kv_occupancy.<fmt>`` under ``out_dir``."""
    import os
    import tempfile

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    charts = {
        "latency_cdf": latency_cdf_chart(result, title),
        "kv_occupancy": occupancy_chart(result, title and f"{title}: KV cache"),
    }
    written = []
    # Rendered into a scratch folder beside the target, then moved into place file by file, so
    # a reader never sees a half-written chart.
    with tempfile.TemporaryDirectory(dir=out, prefix=".charts-") as tmp:
        for stem, chart in charts.items():
            for path in save_chart(chart, Path(tmp) / stem, formats):
                target = out / path.name
                os.replace(path, target)
                written.append(target)
    return written
