"""``moesim plan``: the cheapest layouts that serve a request rate within TTFT/TPOT SLOs."""

from __future__ import annotations

import typer

from moesim.errors import MoesimError
from moesim.spec.limits import MAX_TOKENS

ORDER = 50
MAX_PLAN_GPUS = 4096  # the planner enumerates layouts up to this fleet size

from moesim.cli.predict import (  # noqa: E402 (shared option texts)
    DTYPE_HELP,
    GPU_MEMORY_HELP,
    KV_DTYPE_HELP,
    PRICE_HELP,
    with_price,
)


def register(app: typer.Typer) -> None:
    from moesim.cli.predict import LAYOUT_HELP

    app.command(
        "plan",
        help="Search layouts (TP x EP x PP x DP x batch; aggregated, disaggregated, offload) "
        "for the cheapest that meet the SLOs at a request rate; --emit prints the engine launch "
        "command of the cheapest. " + LAYOUT_HELP,
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
    dtype: str | None = typer.Option(None, "--dtype", help=DTYPE_HELP),
    kv_dtype: str | None = typer.Option(None, "--kv-dtype", help=KV_DTYPE_HELP),
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
    engine: str | None = typer.Option(
        None,
        "--engine",
        help="Engine model of aggregated plans: vllm (default), sglang, trtllm "
        "(token budget, running cap, KV sizing).",
    ),
    chart: str | None = typer.Option(
        None, "--chart", help="Write the throughput/interactivity chart to STEM.html/.svg/.png."
    ),
    price_usd_per_hour: float | None = typer.Option(
        None, "--price-usd-per-hour", min=0.0, help=PRICE_HELP + " Applies to every --hardware."
    ),
    gpu_memory_utilization: float = typer.Option(
        0.90, "--gpu-memory-utilization", min=0.01, max=1.0, help=GPU_MEMORY_HELP
    ),
    emit: str | None = typer.Option(
        None,
        "--emit",
        help="Print the launch command of the cheapest plan for vllm, sglang, trtllm or dynamo "
        "(stdout gets only the script; the plan goes to stderr).",
    ),
    pick: int = typer.Option(1, "--pick", min=1, help="With --emit: the Nth cheapest plan."),
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
    from moesim.plan.emit import ENGINES
    from moesim.plan.planner import plan
    from moesim.spec import resolve
    from moesim.spec.dtypes import resolve_formats

    if emit is not None and emit not in ENGINES:
        raise MoesimError(f"--emit takes one of {', '.join(ENGINES)}, not {emit!r}")
    profiles = [resolve(model, with_price(name, price_usd_per_hour))[1] for name in hardware]
    # Formats: the checkpoint's own unless overridden, checked on every hardware profile.
    formats = [resolve_formats(*resolve(model, hw), dtype, kv_dtype) for hw in profiles]
    fmt = formats[0]
    result = plan(
        model,
        profiles,
        ttft_slo=ttft_slo,
        tpot_slo=tpot_slo,
        rate=rate,
        input_len=input_len,
        output_len=output_len,
        max_gpus=max_gpus,
        dtype=fmt.weight_dtype,
        kv_dtype=fmt.kv_dtype,
        routing=routing_options(routing),
        top=max(top, pick),
        modes=tuple(mode),
        memory_utilization=gpu_memory_utilization,
        engine=engine,
    )
    result.request["formats"] = fmt.to_dict()
    result.request["gpu_memory_utilization"] = gpu_memory_utilization
    result.request["price_usd_per_hour"] = {p.name: p.price_usd_per_hour for p in profiles}
    launch = None
    if emit is not None and result.best:
        if pick > len(result.best):
            raise MoesimError(f"--pick {pick}: only {len(result.best)} plans meet the SLOs")
        launch = emit_launch(model, result, emit, pick, fmt, profiles, gpu_memory_utilization)
    written = []
    if chart:
        from moesim.plots import save_chart
        from moesim.plots.planner import planner_chart

        written = [str(p) for p in save_chart(planner_chart(result), chart)]
    if as_json:
        from moesim.cli._common import print_json

        extra = {"chart": written} if written else {}
        if launch is not None:
            extra["launch"] = launch.to_dict()
        print_json(result.to_dict() | extra)
    elif launch is not None:
        from rich.console import Console

        print_plans(result, console=Console(stderr=True, width=100))
        print(launch.text(), end="")
    else:
        print_plans(result)
        for path in written:
            typer.echo(f"wrote {path}")
    if not result.best:
        raise typer.Exit(3)


def emit_launch(model, result, engine, pick, fmt, profiles, memory_utilization):
    """The launch commands of the ``pick``-th cheapest plan for ``engine``."""
    from moesim.plan.emit import emit
    from moesim.spec.model import list_models, load_model, preset_metadata

    chosen = result.best[pick - 1]
    hw = next(p for p in profiles if p.name == chosen["hardware"].split("+")[-1])
    spec = load_model(model)
    model_id = str(model)
    if model_id in list_models():
        model_id = (preset_metadata(model_id).get("source") or {}).get("hf_repo") or model_id
    req = result.request
    return emit(
        engine,
        chosen,
        model_id=model_id,
        formats=fmt.to_dict(),
        gpus_per_node=hw.gpus_per_node,
        memory_utilization=memory_utilization,
        max_model_len=min(
            int(req["input_len"]) + int(req["output_len"]),
            spec.max_position_embeddings or 10**9,
        ),
    )


def print_plans(result, console=None) -> None:
    from rich.table import Table

    from moesim.cli._common import console as default_console
    from moesim.cli._common import si

    console = console or default_console

    req = result.request
    title = (
        f"{req['model']} at {req['rate']} req/s (in {req['input_len']}, out {req['output_len']}), "
        f"TTFT <= {req['ttft_slo_s']} s, TPOT <= {req['tpot_slo_s']} s, <= {req['max_gpus']} GPUs: "
        f"{result.feasible:,} of {result.evaluated:,} plans meet the SLOs ({result.elapsed_s:.2f} s)"
    )
    if not result.best:
        console.print(f"[red]no plan meets the SLOs[/red] — {title}")
        return
    fmt = req.get("formats") or {}
    if fmt:
        console.print(
            f"formats: weights {fmt['weight_dtype']} ({fmt['weight_dtype_origin']}), KV "
            f"{fmt['kv_dtype']} ({fmt['kv_dtype_origin']}), compute {fmt['compute_dtype']}",
            width=100,
        )
    from rich import box

    table = Table(
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        padding=(0, 1),
        collapse_padding=True,
    )
    columns = (
        ("hardware", "left"),
        ("layout x copies", "left"),
        ("batch", "right"),
        ("GPUs", "right"),
        ("TTFT", "right"),
        ("TPOT", "right"),
        ("tok/s\nper GPU", "right"),
        ("tok/s\nper user", "right"),
        ("$/Mtok", "right"),
        ("bound", "left"),
    )
    for col, justify in columns:
        table.add_column(
            col,
            justify=justify,
            no_wrap=col != "layout x copies",
            min_width=18 if col == "layout x copies" else None,
        )
    for p in result.best:
        lay = _short(p) + f" x{p['replicas']}"
        if p["offload_fraction"]:
            lay += f" offload {p['offload_fraction']:g}"
        if p["mode"] == "disaggregated":
            q = p["prefill"]
            lay = f"P {_short(q)} x{q['replicas']}\nD {lay}"
        similar = p.get("similar_layouts") or []
        if similar:
            lay += f"\n  +{len(similar)} alike"
        table.add_row(
            p["hardware"],
            lay,
            f"{p['batch']:,}",
            f"{p['gpus']:,}",
            si(p["ttft_s"], "s"),
            si(p["tpot_s"], "s"),
            f"{p['output_tokens_per_s_per_gpu']:,.0f}",
            f"{p['output_tokens_per_s_per_user']:,.1f}",
            f"${p['usd_per_million_output_tokens']:,.3f}",
            p["bound"],
        )
    console.print(table, width=100)
    console.print(
        f"Pareto frontier (tok/s/GPU vs tok/s/user): {len(result.pareto)} plans. batch = "
        "sequences per copy (of the decode pool when disaggregated: P = prefill, D = decode "
        "pool); $/Mtok = USD per million output tokens; alike = same GPUs, batch and cost "
        "(1%), TTFT/TPOT within 25% (listed in --json as similar_layouts).",
        width=100,
    )


def _short(p: dict) -> str:
    """'tp1ep32dp32' (pp / dp / ep shown when above 1)."""
    return f"tp{p['tp']}" + "".join(f"{k}{p[k]}" for k in ("ep", "pp", "dp") if p[k] > 1)
