"""``moesim scenario``: validate a scenario file, export its JSON Schema."""

from __future__ import annotations

from pathlib import Path

import typer

from moesim.spec.limits import DEFAULT_MAX_POINTS

ORDER = 80


def register(app: typer.Typer) -> None:
    group = typer.Typer(
        help="Scenario files: check one without running it, export the JSON Schema.",
        no_args_is_help=True,
    )
    group.command("check", help="Validate a scenario and print how many points it would evaluate.")(
        check_cmd
    )
    group.command(
        "schema", help="Print (or write) the scenario JSON Schema, for editor completion."
    )(schema_cmd)
    app.add_typer(group, name="scenario")


def check_cmd(
    path: Path = typer.Argument(..., help="Scenario YAML file."),
    max_points: int = typer.Option(
        DEFAULT_MAX_POINTS,
        "--max-points",
        min=1,
        max=10**12,
        help="Fail when the scenario has more points than this (the limit moesim sweep applies).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    from moesim.plan.scenario import build_plan, check_points, load_scenario

    loaded = load_scenario(path)
    plan = build_plan(loaded)
    check_points(plan, max_points)  # a scenario that sweep would refuse is not "ok"
    summary = {
        "scenario": loaded.scenario.name,
        "file": str(path),
        "points": plan.size,
        "models": loaded.model_labels,
        "hardware": loaded.hardware_labels,
        "blocks": [
            {
                "layout": b.layout_index,
                "workload": b.workload_index,
                "points": b.size,
                "axes": {"+".join(d): len(b.axes[d[0]]) for d in b.dims},
            }
            for b in plan.blocks
        ],
        "charts": list(loaded.scenario.outputs.charts),
    }
    if as_json:
        from moesim.cli._common import print_json

        print_json(summary)
        return
    axes = "; ".join(
        " x ".join(f"{k}[{v}]" for k, v in blk["axes"].items()) or "one point"
        for blk in summary["blocks"]
    )
    typer.echo(f"{path}: ok — scenario {loaded.scenario.name!r}, {plan.size:,} points ({axes})")


def schema_cmd(
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Write the schema to this file instead of stdout."
    ),
) -> None:
    import json

    from moesim.outdir import atomic_write_text, check_out_file
    from moesim.plan.scenario import json_schema

    if out is not None:
        check_out_file(out)
    text = json.dumps(json_schema(), indent=2) + "\n"
    if out is None:
        typer.echo(text, nl=False)
    else:
        atomic_write_text(out, text)
        typer.echo(f"wrote {out}")
