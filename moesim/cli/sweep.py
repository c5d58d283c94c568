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

    df, manifest = run_scenario(
        path,
        out,
        limit=limit,
        workers=workers,
        scheduler=scheduler,
        progress=not as_json,
        charts=charts,
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
    best = df[df["meets_slo"]] if df["meets_slo"].any() else df[df["feasible"]]
    if len(best):
        from moesim.cli._common import fmt

        row = best.loc[best["usd_per_million_output_tokens"].idxmin()]
        console.print(
            f"cheapest point: {row['model']} on {row['hardware']}, {row['layout']}, batch {row['batch']}: "
            f"{fmt(row['usd_per_million_output_tokens'])} $/Mtok out, TPOT {fmt(row['tpot_s'] * 1e3)} ms, "
            f"{fmt(row['output_tokens_per_s_per_gpu'])} tok/s/GPU",
            soft_wrap=True,
        )
