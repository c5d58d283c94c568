"""Expert-load chart: expected load per expert and per GPU, with the mean and expected-max lines."""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from moesim.cost.routing import (
    UNIFORM,
    RoutingDistribution,
    histogram,
    parse_routing,
    routing_stats,
)
from moesim.cost.routing.stats import layer_routing


def expert_load_chart(
    stats_or_probs=None,
    tokens: int = 4096,
    top_k: int = 2,
    num_experts: int = 64,
    ep: int = 1,
    dist: RoutingDistribution | str = UNIFORM,
    sort: bool = True,
    placement=None,
) -> alt.Chart:
    """Two panels: expected assignments per expert (T·π_e; sorted hottest first, or by index)
    and per GPU, with rules at the mean GPU load and the expected maximum (the EP straggler).

    ``stats_or_probs`` may be per-expert routing weights ``[E]`` (used instead of ``dist``) or
    None; ``dist`` may be a spec string such as ``"zipf:1.2"``.
    """
    dist = parse_routing(dist) if isinstance(dist, str) else dist
    if stats_or_probs is not None and not hasattr(stats_or_probs, "max_gpu_load"):
        dist = histogram(np.asarray(stats_or_probs, dtype=float), source="probs")
        num_experts = int(np.asarray(stats_or_probs).shape[-1])
    p = dist.probs(num_experts)
    p = p.mean(axis=0) if p.ndim == 2 else p
    model = layer_routing(p, top_k, ep, placement)
    per_expert = tokens * model.pi
    gpu_of_expert = np.repeat(np.arange(ep), num_experts // ep) if placement is None else None
    experts = pd.DataFrame({"expert": np.arange(num_experts), "load": per_expert})
    if gpu_of_expert is not None:
        experts["gpu"] = gpu_of_expert.astype(str)
    experts["rank"] = experts["load"].rank(ascending=False, method="first").astype(int) - 1
    x_field = "rank" if sort else "expert"
    stats = (
        stats_or_probs
        if hasattr(stats_or_probs, "max_gpu_load")
        else routing_stats(tokens, top_k, num_experts, ep, dist, placement=placement)
    )
    mean_load, max_load = float(stats.mean_gpu_load), float(stats.max_gpu_load)
    gpu_load = tokens * model.q_gpu.sum(axis=1)
    gpus = pd.DataFrame({"gpu": np.arange(ep).astype(str), "load": gpu_load})
    gpus["hottest"] = gpus["load"] >= gpus["load"].max() * (1 - 1e-9)
    title = alt.TitleParams(
        f"{dist.name}: T={tokens:,} tokens, top-{top_k} of {num_experts} experts, EP={ep}",
        subtitle="bar colour: the GPU holding the expert (as in the per-GPU panel)",
        anchor="start",
    )
    # One colour per GPU, the same in both panels: the per-GPU panel is the legend.
    domain = [str(g) for g in range(ep)]
    scheme = "tableau10" if ep <= 10 else "tableau20" if ep <= 20 else "turbo"
    gpu_color = alt.Color("gpu:N", scale=alt.Scale(domain=domain, scheme=scheme), legend=None)
    color = gpu_color if gpu_of_expert is not None else alt.value("#4c78a8")
    bars = (
        alt.Chart(experts, title=title)
        .mark_bar()
        .encode(
            x=alt.X(
                f"{x_field}:O",
                title="expert (hottest first)" if sort else "expert index",
                axis=alt.Axis(labels=num_experts <= 64),
            ),
            y=alt.Y("load:Q", title="expected assignments per expert"),
            color=color,
            tooltip=["expert", "gpu:N", alt.Tooltip("load:Q", format=",.1f")]
            if gpu_of_expert is not None
            else ["expert", "load"],
        )
        .properties(width=460, height=260)
    )
    lines = pd.DataFrame(
        {"what": ["mean GPU load", "expected max (straggler)"], "load": [mean_load, max_load]}
    )
    gpu_bars = (
        alt.Chart(gpus)
        .mark_bar(strokeWidth=2)
        .encode(
            x=alt.X("gpu:O", title="GPU", sort=domain, axis=alt.Axis(labels=ep <= 64)),
            y=alt.Y("load:Q", title="expected assignments per GPU"),
            color=gpu_color,
            stroke=alt.value("black"),
            strokeWidth=alt.condition("datum.hottest", alt.value(2.5), alt.value(0)),
            tooltip=["gpu", alt.Tooltip("load:Q", format=",.1f")],
        )
    )
    rules = (
        alt.Chart(lines)
        .mark_rule(strokeWidth=2)
        .encode(
            y="load:Q",
            color=alt.Color(
                "what:N",
                title=None,
                scale=alt.Scale(
                    domain=["mean GPU load", "expected max (straggler)"],
                    range=["#333333", "#e45756"],
                ),
                legend=alt.Legend(orient="bottom"),
            ),
            strokeDash=alt.condition(
                alt.datum.what == "mean GPU load", alt.value([4, 3]), alt.value([1, 0])
            ),
            tooltip=["what", alt.Tooltip("load:Q", format=",.1f")],
        )
    )
    per_gpu = (
        (gpu_bars + rules)
        .resolve_scale(color="independent")
        .properties(width=260, height=260, title="per GPU (black outline: most loaded)")
    )
    return alt.hconcat(bars, per_gpu).resolve_scale(color="independent")
