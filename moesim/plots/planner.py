"""Planner chart: every plan that fits in memory, output tokens/s per GPU against tokens/s per
user, coloured by how it is served, with the Pareto frontier drawn through and the chosen plan
ringed. Throughput and interactivity trade against each other through the batch size (the
"throughput vs latency" plot of the DistServe and SGLang papers)."""

from __future__ import annotations

import altair as alt
import pandas as pd

from moesim.plots.style import log_axis


def planner_chart(result, max_points: int = 4000) -> alt.LayerChart:
    """Altair chart of a :class:`moesim.plan.planner.PlanResult`."""
    table = result.table
    pts = table[table["fits"] & (table["cap_gpus"] <= result.request.get("max_gpus", float("inf")))]
    pts = pts.sort_values("cap_usd_per_million_output_tokens").head(max_points)
    pts = pd.DataFrame(
        {
            "tokens/s per user": pts["cap_output_tokens_per_s_per_user"].astype(float),
            "output tokens/s per GPU": pts["cap_output_tokens_per_s_per_gpu"].astype(float),
            "mode": pts["mode"] + " / " + pts["hardware"],
            "meets SLO": pts["slo_ok"].map({True: "yes", False: "no"}),
            "layout": "tp"
            + pts["tp"].astype(str)
            + " ep"
            + pts["ep"].astype(str)
            + " pp"
            + pts["pp"].astype(str)
            + " dp"
            + pts["dp"].astype(str)
            + " B"
            + pts["batch"].astype(int).astype(str),
        }
    )
    front = pd.DataFrame(result.pareto)
    req = result.request
    title = (
        f"{req.get('model')}: {req.get('rate')} req/s, in {req.get('input_len')} / out {req.get('output_len')}, "
        f"SLO TTFT {req.get('ttft_slo_s')} s, TPOT {req.get('tpot_slo_s')} s"
    )
    xv, yv = pts["tokens/s per user"], pts["output tokens/s per GPU"]
    if len(front):
        xv = pd.concat([xv, front["output_tokens_per_s_per_user"].astype(float)])
        yv = pd.concat([yv, front["output_tokens_per_s_per_gpu"].astype(float)])
    xs, xa = log_axis(xv, "output tokens/s per user (1 / TPOT)")
    ys, ya = log_axis(yv, "output tokens/s per GPU")
    x = alt.X("tokens/s per user:Q", scale=xs, axis=xa)
    y = alt.Y("output tokens/s per GPU:Q", scale=ys, axis=ya)
    dots = (
        alt.Chart(pts)
        .mark_circle(size=18)
        .encode(
            x=x,
            y=y,
            color=alt.Color("mode:N", title="mode / hardware"),
            opacity=alt.condition(alt.datum["meets SLO"] == "yes", alt.value(0.8), alt.value(0.15)),
            tooltip=["mode", "layout", "meets SLO", "tokens/s per user", "output tokens/s per GPU"],
        )
    )
    layers = [dots]
    if len(front):
        f = pd.DataFrame(
            {
                "tokens/s per user": front["output_tokens_per_s_per_user"],
                "output tokens/s per GPU": front["output_tokens_per_s_per_gpu"],
            }
        )
        layers.append(alt.Chart(f).mark_line(color="black", strokeDash=[4, 3]).encode(x=x, y=y))
    if result.best:
        b = result.best[0]
        lay = f"tp{b['tp']}" + "".join(f"{k}{b[k]}" for k in ("ep", "pp", "dp") if b[k] > 1)
        chosen = pd.DataFrame(
            {
                "tokens/s per user": [b["output_tokens_per_s_per_user"]],
                "output tokens/s per GPU": [b["output_tokens_per_s_per_gpu"]],
                "label": [
                    f"cheapest: {b['hardware']} {b['mode']} {lay} x{b['replicas']}, "
                    f"${b['usd_per_million_output_tokens']:.3f}/Mtok"
                ],
            }
        )
        layers.append(
            alt.Chart(chosen)
            .mark_point(size=220, shape="diamond", color="red", filled=False, strokeWidth=2)
            .encode(x=x, y=y)
        )
        layers.append(
            alt.Chart(chosen)
            .mark_text(align="right", dx=-14, dy=-12, fontSize=11, color="#c00")
            .encode(x=x, y=y, text="label:N")
        )
    slo = (
        pd.DataFrame({"tokens/s per user": [1.0 / req["tpot_slo_s"]]})
        if req.get("tpot_slo_s")
        else None
    )
    if slo is not None:
        layers.append(alt.Chart(slo).mark_rule(color="grey").encode(x="tokens/s per user:Q"))
    return alt.layer(*layers).properties(
        title=alt.Title(
            title,
            subtitle="bright: meets the SLO at the rate; dashed: Pareto frontier; grey rule: "
            "TPOT SLO; red diamond: the cheapest plan",
        ),
        width=520,
        height=360,
    )
