"""``moesim scenario``: validate a scenario file, export its JSON Schema."""

from __future__ import annotations

from pathlib import Path

import typer

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
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    from moesim.plan.scenario import build_plan, load_scenario

    loaded = load_scenario(path)
    plan = build_plan(loaded)
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

    from moesim.plan.scenario import json_schema

    text = json.dumps(json_schema(), indent=2) + "\n"
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        typer.echo(f"wrote {out}")
