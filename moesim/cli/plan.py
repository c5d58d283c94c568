"""``moesim plan``: the cheapest layouts that serve a request rate within TTFT/TPOT SLOs."""

from __future__ import annotations

import typer

from moesim.errors import MoesimError
from moesim.spec.limits import MAX_TOKENS

ORDER = 50
MAX_PLAN_GPUS = 4096  # the planner enumerates layouts up to this fleet size


def register(app: typer.Typer) -> None:
    app.command(
        "plan",
        help="Search layouts (TP x EP x PP x DP x batch; aggregated, disaggregated, offload) for the cheapest that meet the SLOs at a request rate.",
    )(plan_cmd)


def plan_cmd(
    model: str = typer.Option(
        ..., "--model", "-m", help="Preset name or path to a config.json / preset YAML."
    ),
    hardware: list[str] = typer.Option(
        ..., "--hardware", "-H", help="Hardware profile; repeat to compare several."
    ),
    ttft_slo: float = typer.Option(
        ..., "--ttft-slo", min=0.0, help="Time-to-first-token SLO, seconds (queueing included)."
    ),
    tpot_slo: float = typer.Option(
        ..., "--tpot-slo", min=0.0, help="Time-per-output-token SLO, seconds."
    ),
    rate: float = typer.Option(..., "--rate", min=0.0, help="Arrival rate to serve, requests/s."),
    input_len: int = typer.Option(
        1024, "--input-len", min=1, max=MAX_TOKENS, help="Prompt tokens per request."
    ),
    output_len: int = typer.Option(
        256, "--output-len", min=1, max=MAX_TOKENS, help="Generated tokens per request."
    ),
    max_gpus: int = typer.Option(
        64, "--max-gpus", min=1, max=MAX_PLAN_GPUS, help="Most GPUs the whole fleet may use."
    ),
    dtype: str = typer.Option("bf16", "--dtype", help="Weight dtype: bf16, fp16, fp8, fp4."),
    kv_dtype: str | None = typer.Option(
        None, "--kv-dtype", help="KV-cache dtype (default: --dtype)."
    ),
    routing: str = typer.Option(
        "uniform", "--routing", help="uniform | zipf:S | dirichlet:A | hist:PATH"
    ),
    mode: list[str] = typer.Option(
        ["aggregated", "offload", "disaggregated"],
        "--mode",
        help="Ways to serve to consider (repeat).",
    ),
    top: int = typer.Option(
        5, "--top", min=1, max=1000, help="How many of the cheapest plans to list."
    ),
    chart: str | None = typer.Option(
        None, "--chart", help="Write the throughput/interactivity chart to STEM.html/.svg/.png."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    from moesim.spec.limits import MAX_RATE_PER_S, check_real

    check_real("--ttft-slo", ttft_slo, 0, 1e6, lo_open=True, unit="s")
    check_real("--tpot-slo", tpot_slo, 0, 1e6, lo_open=True, unit="s")
    check_real("--rate", rate, 0, MAX_RATE_PER_S, unit="requests/s")
    if len(hardware) > 64 or len(mode) > 16:
        raise MoesimError("at most 64 --hardware and 16 --mode options")
    if chart:
        from moesim.outdir import check_out_file

        check_out_file(chart + ".html", what="--chart")
    from moesim.api import routing_options
    from moesim.plan.planner import plan

    result = plan(
        model,
        hardware,
        ttft_slo=ttft_slo,
        tpot_slo=tpot_slo,
        rate=rate,
        input_len=input_len,
        output_len=output_len,
        max_gpus=max_gpus,
        dtype=dtype,
        kv_dtype=kv_dtype,
        routing=routing_options(routing),
        top=top,
        modes=tuple(mode),
    )
    written = []
    if chart:
        from moesim.plots import save_chart
        from moesim.plots.planner import planner_chart

        written = [str(p) for p in save_chart(planner_chart(result), chart)]
    if as_json:
        from moesim.cli._common import print_json

        print_json(result.to_dict() | ({"chart": written} if written else {}))
    else:
        print_plans(result)
        for path in written:
            typer.echo(f"wrote {path}")
    if not result.best:
        raise typer.Exit(3)


def print_plans(result) -> None:
    from rich.console import Console
    from rich.table import Table

    from moesim.cli._common import console, si

    req = result.request
    title = (
        f"{req['model']} at {req['rate']} req/s (in {req['input_len']}, out {req['output_len']}), "
        f"TTFT <= {req['ttft_slo_s']} s, TPOT <= {req['tpot_slo_s']} s, <= {req['max_gpus']} GPUs: "
        f"{result.feasible:,} of {result.evaluated:,} plans meet the SLOs ({result.elapsed_s:.2f} s)"
    )
    if not result.best:
        console.print(f"[red]no plan meets the SLOs[/red] — {title}")
        return
    table = Table(title=title, title_justify="left")
    for col in (
        "hardware",
        "mode",
        "layout x replicas",
        "batch",
        "GPUs",
        "TTFT",
        "TPOT",
        "tok/s/GPU",
        "tok/s/user",
        "$/M out",
        "$/hour",
        "bound",
    ):
        left = col in ("hardware", "mode", "layout x replicas", "bound")
        table.add_column(
            col, justify="left" if left else "right", no_wrap=col != "layout x replicas"
        )
    for p in result.best:
        lay = _short(p) + f" x{p['replicas']}"
        if p["offload_fraction"]:
            lay += f" offload {p['offload_fraction']:g}"
        if p["mode"] == "disaggregated":
            q = p["prefill"]
            lay = f"P {q['hardware']} {_short(q)} x{q['replicas']} / D {lay}"
        table.add_row(
            p["hardware"],
            p["mode"][:6],
            lay,
            f"{p['batch']:,}",
            f"{p['gpus']:,}",
            si(p["ttft_s"], "s"),
            si(p["tpot_s"], "s"),
            f"{p['output_tokens_per_s_per_gpu']:,.0f}",
            f"{p['output_tokens_per_s_per_user']:,.1f}",
            f"${p['usd_per_million_output_tokens']:,.3f}",
            f"${p['usd_per_hour']:,.2f}",
            p["bound"],
        )
    wide = Console(width=max(console.width, 170))  # a plan row is wider than a default terminal
    wide.print(table)
    console.print(
        f"Pareto frontier (tok/s/GPU vs tok/s/user): {len(result.pareto)} plans; batch = sequences per replica (decode pool when disaggregated)"
    )


def _short(p: dict) -> str:
    """'tp1ep32dp32' (pp / dp / ep shown when above 1)."""
    return f"tp{p['tp']}" + "".join(f"{k}{p[k]}" for k in ("ep", "pp", "dp") if p[k] > 1)
