"""``moesim sweep``: evaluate every point of a scenario and write the results and charts."""

from __future__ import annotations

from pathlib import Path

import typer

from moesim.spec.limits import DEFAULT_MAX_POINTS

ORDER = 85


def register(app: typer.Typer) -> None:
    app.command(
        "sweep",
        help="Evaluate a scenario (vectorised) into results.parquet/csv, manifest.json and charts.",
    )(sweep_cmd)


def sweep_cmd(
    path: Path = typer.Argument(..., help="Scenario YAML file (see: moesim scenario schema)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    workers: int = typer.Option(
        1, "--workers", "-w", min=1, max=256, help="Local processes that share the chunks."
    ),
    scheduler: str | None = typer.Option(
        None, "--scheduler", help="Dask scheduler address, or 'local' for a LocalCluster."
    ),
    limit: int | None = typer.Option(
        None, "--limit", min=1, max=10**12, help="Evaluate only the first N points."
    ),
    charts: bool = typer.Option(
        True, "--charts/--no-charts", help="Draw the charts the scenario asks for."
    ),
    price_usd_per_hour: float | None = typer.Option(
        None, "--price-usd-per-hour", min=0.0, help="Override every hardware's USD per GPU-hour."
    ),
    gpu_memory_utilization: float | None = typer.Option(
        None,
        "--gpu-memory-utilization",
        min=0.01,
        max=1.0,
        help="Override every layout's usable share of GPU memory (vLLM semantics).",
    ),
    max_points: int = typer.Option(
        DEFAULT_MAX_POINTS,
        "--max-points",
        min=1,
        max=10**12,
        help="Refuse a sweep of more points than this before evaluating anything.",
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace an earlier sweep output in --out (whole folder)."
    ),
    csv: bool | None = typer.Option(
        None,
        "--csv/--no-csv",
        help="Write results.csv (default: when the scenario lists it, or for sweeps of at most "
        "250,000 points).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
) -> None:
    from moesim.cli._common import console, print_json
    from moesim.plan.sweep import run_scenario

    overrides = {
        k: v
        for k, v in (
            ("price_usd_per_hour", price_usd_per_hour),
            ("memory_utilization", gpu_memory_utilization),
        )
        if v is not None
    }
    df, manifest = run_scenario(
        path,
        out,
        limit=limit,
        workers=workers,
        scheduler=scheduler,
        progress=not as_json,
        charts=charts,
        overrides=overrides or None,
        max_points=max_points,
        overwrite=overwrite,
        csv=csv,
    )
    if as_json:
        print_json(manifest)
        return
    console.print(
        f"[bold]{manifest['scenario']}[/]: {manifest['points']:,} points "
        f"({manifest['feasible']:,} feasible, {manifest['meets_slo']:,} meet the SLO) in "
        f"{manifest['evaluation_s']:.2f} s ({manifest['configs_per_s'] or 0:,} configs/s) -> {out}",
        soft_wrap=True,
    )
    for name in manifest["files"] + manifest["charts"]:
        console.print(f"  {out / name}")
    if manifest.get("note"):
        console.print(f"note: {manifest['note']}", soft_wrap=True)
    for line in cheapest_summary(df, manifest["slo"]):
        console.print(line, soft_wrap=True, highlight=False)


def _slo_text(slo: dict) -> str:
    names = {"ttft_s": "TTFT", "tpot_s": "TPOT", "e2e_latency_s": "end-to-end"}
    parts = [f"{names[k]} <= {v:g} s" for k, v in slo.items() if v is not None]
    return ", ".join(parts)


def describe_point(row) -> str:
    """Every axis of one sweep point, in words."""
    from moesim.cli._common import fmt

    parts = [f"{row['model']} on {row['hardware']}"]
    family = row.get("layout_family")
    named = family and str(family) not in ("nan", "None") and not str(family).startswith("#")
    lay = f"layout {row['layout']}" + (f" ({family})" if named else "")
    parts.append(f"{lay}, {fmt(row['num_gpus'])} GPUs")
    if int(row.get("replicas", 1)) > 1:
        parts.append(f"{int(row['replicas'])} replicas")
    parts.append(
        f"weights {row['weight_dtype']}, KV {row['kv_dtype']}, activations {row['act_dtype']}"
    )
    if int(row.get("ep", 1)) > 1:
        parts.append(f"dispatch {row['dispatch_dtype']}")
        parts.append(f"redundant experts {int(row['redundant_experts'])}")
    parts.append(f"overlap {row['overlap']}")
    if float(row.get("offload_fraction", 0) or 0) > 0:
        parts.append(f"offload {row['offload_fraction']:g}")
    parts.append(
        f"batch {int(row['batch'])}, in {int(row['input_len'])} / out {int(row['output_len'])}, "
        f"phase {row['phase']}"
    )
    if "routing" in row and str(row["routing"]) not in ("nan", "None"):
        cf = row.get("capacity_factor")
        cap = f", capacity factor {cf:g}" if cf is not None and cf == cf else ""
        parts.append(f"routing {row['routing']}{cap}, block_m {int(row['block_m'])}")
    return "; ".join(parts)


def cheapest_summary(df, slo: dict) -> list[str]:
    """Lines naming the cheapest point that meets every SLO set (never one that violates it)."""

    slo = {k: v for k, v in (slo or {}).items() if v is not None}
    if not len(df) or not df["feasible"].any():
        return ["no feasible point: every point runs out of memory or breaks a layout rule"]
    pool = df[df["meets_slo"]] if slo else df[df["feasible"]]
    if slo and not len(pool):
        ok = df[df["feasible"]]
        row = ok.loc[ok["usd_per_million_output_tokens"].idxmin()]
        return [
            f"[red]no point meets the SLO ({_slo_text(slo)})[/]; the cheapest feasible point "
            f"has TTFT {row['ttft_s']:,.3g} s, TPOT {row['tpot_s'] * 1e3:,.3g} ms: "
            + describe_point(row)
        ]
    row = pool.loc[pool["usd_per_million_output_tokens"].idxmin()]
    head = (
        f"cheapest point meeting the SLO ({_slo_text(slo)})"
        if slo
        else ("cheapest feasible point (the scenario sets no SLO)")
    )
    return [
        f"{head}: ${row['usd_per_million_output_tokens']:,.4f} per million output tokens, "
        f"TTFT {row['ttft_s']:,.3g} s, TPOT {row['tpot_s'] * 1e3:,.3g} ms, "
        f"{row['output_tokens_per_s_per_gpu']:,.0f} tok/s/GPU, "
        f"{row['memory_bytes_per_gpu'] / 1e9:,.1f} GB/GPU",
        "  " + describe_point(row),
    ]
