"""``moesim simulate``: replay requests through a model of the engine's scheduler, step by step,
and report TTFT / TPOT / end-to-end percentiles, goodput, throughput and KV occupancy."""

from __future__ import annotations

import json
import os
from enum import StrEnum
from pathlib import Path

import typer

from moesim.errors import MoesimError

ORDER = 35


class Arrival(StrEnum):
    poisson = "poisson"
    gamma = "gamma"
    constant = "constant"


class Engine(StrEnum):
    vllm = "vllm"
    sglang = "sglang"
    trtllm = "trtllm"


class Admission(StrEnum):
    prompt = "prompt"
    reserve = "reserve"


class Schedule(StrEnum):
    mixed = "mixed"
    prefill_first = "prefill-first"


class Overlap(StrEnum):
    none = "none"
    two_batch = "two-batch"


def register(app: typer.Typer) -> None:
    app.command(
        "simulate",
        help="Simulate requests through the engine's scheduler (continuous batching, chunked "
        "prefill, KV admission and preemption): TTFT/TPOT/e2e percentiles, goodput, throughput.",
    )(simulate_cmd)


def simulate_cmd(
    model: str | None = typer.Option(
        None, "--model", "-m", help="Preset name or path to a config.json / preset YAML."
    ),
    hardware: str | None = typer.Option(
        None, "--hardware", "-H", help="Hardware profile name or YAML path."
    ),
    rate: float | None = typer.Option(
        None, "--rate", "--request-rate", min=0.0, help="Open loop: arrival rate, requests/s."
    ),
    concurrency: int | None = typer.Option(
        None,
        "--concurrency",
        "--max-concurrency",
        min=1,
        help="Requests in flight: a closed loop of this many clients, or with --rate a cap.",
    ),
    arrival: Arrival = typer.Option(
        Arrival.poisson, "--arrival", help="Arrival process with --rate."
    ),
    cv: float = typer.Option(
        1.0,
        "--cv",
        min=0.0,
        help="Gamma arrivals: coefficient of variation of the gaps (>1 bursty).",
    ),
    num_requests: int | None = typer.Option(
        None,
        "--num-requests",
        "--num-prompts",
        "-n",
        min=1,
        help="Requests to simulate (default 1000; a trace: all its rows).",
    ),
    input_len: str = typer.Option(
        "1024",
        "--input-len",
        help="Prompt tokens: N, uniform:LO:HI, normal:M:S, exponential:M, lognormal:MEAN:SIGMA.",
    ),
    output_len: str = typer.Option(
        "256", "--output-len", help="Generated tokens (same forms as --input-len)."
    ),
    trace: Path | None = typer.Option(
        None,
        "--trace",
        help="CSV/JSONL trace: arrival times and/or input and output tokens (Azure, ShareGPT column names).",
    ),
    time_unit: str = typer.Option(
        "s", "--time-unit", help="Unit of a trace's numeric times: s, ms, us, ns."
    ),
    rate_scale: float = typer.Option(
        1.0, "--rate-scale", min=0.0, help="Replay a trace this many times faster."
    ),
    ramp_up: float = typer.Option(
        0.0, "--ramp-up", min=0.0, help="Closed loop: seconds over which the clients start."
    ),
    seed: int = typer.Option(0, "--seed", min=0, help="Random seed (same seed, same result)."),
    engine: Engine = typer.Option(Engine.vllm, "--engine", help="Scheduler defaults to imitate."),
    max_num_batched_tokens: int | None = typer.Option(
        None,
        "--max-num-batched-tokens",
        min=1,
        help="Token budget per step (default: the engine's).",
    ),
    max_num_seqs: int | None = typer.Option(
        None, "--max-num-seqs", min=1, help="Most sequences per step (default: the engine's)."
    ),
    block_size: int | None = typer.Option(
        None, "--block-size", min=1, help="Tokens per KV block (default: the engine's)."
    ),
    admission: Admission | None = typer.Option(
        None,
        "--admission",
        help="prompt: reserve the prompt, preempt by recompute; reserve: reserve prompt+output.",
    ),
    schedule: Schedule | None = typer.Option(
        None,
        "--schedule",
        help="mixed: decodes and prefill chunks share a step; prefill-first: SGLang's order.",
    ),
    kv_cache_tokens: int | None = typer.Option(
        None,
        "--kv-cache-tokens",
        min=1,
        help="KV capacity per instance in tokens (default: from memory).",
    ),
    gpu_memory_utilization: float = typer.Option(
        0.9,
        "--gpu-memory-utilization",
        min=0.01,
        max=1.0,
        help="Share of GPU memory the engine may use.",
    ),
    tp: int = typer.Option(1, "--tp", min=1, help="Tensor parallel size."),
    ep: int = typer.Option(1, "--ep", min=1, help="Expert parallel size (divides tp*dp)."),
    pp: int = typer.Option(1, "--pp", min=1, help="Pipeline stages."),
    dp: int = typer.Option(1, "--dp", min=1, help="Attention data-parallel groups per stage."),
    replicas: int = typer.Option(
        1, "--replicas", min=1, help="Engine instances; requests dealt round robin."
    ),
    nodes: int | None = typer.Option(
        None, "--nodes", min=1, help="Nodes (fills --dp as predict does)."
    ),
    gpus_per_node: int | None = typer.Option(None, "--gpus-per-node", min=1, help="GPUs per node."),
    dtype: str = typer.Option("bf16", "--dtype", help="Weight dtype: bf16, fp16, fp8, fp4."),
    kv_dtype: str = typer.Option("bf16", "--kv-dtype", help="KV-cache dtype."),
    dispatch_dtype: str = typer.Option(
        "bf16", "--dispatch-dtype", help="EP dispatch payload dtype."
    ),
    overlap: Overlap = typer.Option(
        Overlap.none, "--overlap", help="Compute/communication overlap."
    ),
    routing: str = typer.Option(
        "uniform", "--routing", help="uniform | zipf:S | dirichlet:A | hist:PATH"
    ),
    capacity_factor: float | None = typer.Option(
        None, "--capacity-factor", min=0.0, help="Expert capacity factor."
    ),
    redundant_experts: int = typer.Option(
        0, "--redundant-experts", min=0, help="Extra expert replicas (EPLB)."
    ),
    block_m: int = typer.Option(
        64,
        "--block-m",
        min=1,
        help="Grouped-GEMM block M (a profile fitted with token tiles picks "
        "the fastest of its tiles instead).",
    ),
    offload: float = typer.Option(
        0.0, "--offload", min=0.0, max=1.0, help="Share of experts kept in host memory."
    ),
    disaggregate: str | None = typer.Option(
        None,
        "--disaggregate",
        help="Separate pools, e.g. 'prefill=tp8,x2;decode=tp8,x4' (see README).",
    ),
    ttft_slo: float | None = typer.Option(
        None, "--ttft-slo", min=0.0, help="TTFT SLO for goodput, seconds."
    ),
    tpot_slo: float | None = typer.Option(
        None, "--tpot-slo", min=0.0, help="TPOT SLO for goodput, seconds."
    ),
    scenario: Path | None = typer.Option(
        None,
        "--scenario",
        help="Run the 'simulate:' section of a scenario YAML (one simulation per point).",
    ),
    workers: int = typer.Option(1, "--workers", "-w", min=1, help="--scenario: local processes."),
    scheduler: str | None = typer.Option(
        None, "--scheduler", help="--scenario: Dask scheduler address, or 'local'."
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        "-o",
        help="Folder for requests.parquet, steps.parquet, summary.json and charts.",
    ),
    charts: bool = typer.Option(
        True, "--charts/--no-charts", help="With --out: draw the latency CDFs and KV occupancy."
    ),
    chart_format: list[str] = typer.Option(
        ["png", "svg"], "--chart-format", help="Chart files to write (png, svg, html); repeat."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    if scenario is not None:
        _scenario(scenario, out, workers, scheduler, as_json)
        return
    if model is None or hardware is None:
        raise MoesimError("--model and --hardware are required (or give --scenario)")
    for fmt in chart_format:
        if fmt not in ("png", "svg", "html"):
            raise MoesimError(f"--chart-format {fmt!r} must be png, svg or html")
    from moesim.api import build_layout, routing_options
    from moesim.engine import traffic as tr
    from moesim.engine.simulate import engine_defaults, simulate, simulate_disaggregated
    from moesim.spec import resolve

    m, hw = resolve(model, hardware)
    if not m.is_moe and (ep > 1 or offload > 0):
        raise MoesimError(f"--ep and --offload need an MoE model; {m.name} is dense")
    layout, notes = build_layout(
        model, hardware, tp=tp, ep=ep, pp=pp, dp=dp, replicas=replicas, nodes=nodes,
        gpus_per_node=gpus_per_node, dtype=dtype, kv_dtype=kv_dtype, dispatch_dtype=dispatch_dtype,
        overlap=overlap.value, redundant_experts=redundant_experts, offload=offload,
    )  # fmt: skip
    layout = layout.with_(memory_utilization=gpu_memory_utilization)
    if rate is not None and rate <= 0:
        raise MoesimError("--rate must be > 0 requests/s")
    if trace is not None:
        traffic = tr.from_trace(
            trace, rate_per_s=rate, concurrency=concurrency, arrival=arrival.value, cv=cv,
            ramp_up_s=ramp_up, seed=seed, time_unit=time_unit, rate_scale=rate_scale,
            num_requests=num_requests,
        )  # fmt: skip
    else:
        if rate is None and concurrency is None:
            raise MoesimError(
                "give --rate (open loop), --concurrency (closed loop), both, or --trace"
            )
        traffic = tr.synthetic(
            num_requests or 1000, rate_per_s=rate, concurrency=concurrency, input_len=input_len,
            output_len=output_len, arrival=arrival.value, cv=cv, ramp_up_s=ramp_up, seed=seed,
        )  # fmt: skip
    overrides = dict(
        max_num_batched_tokens=max_num_batched_tokens,
        max_num_seqs=max_num_seqs,
        block_size=block_size,
        admission=admission.value if admission else None,
        schedule=schedule.value if schedule else None,
        kv_cache_tokens=kv_cache_tokens,
    )
    eng = engine_defaults(engine.value, hw, **overrides)
    ropts = routing_options(routing, capacity_factor, block_m)
    if disaggregate:
        res = simulate_disaggregated(
            m, hw, disaggregate, traffic, engine=eng, routing=ropts, base=layout,
            ttft_slo_s=ttft_slo, tpot_slo_s=tpot_slo,
        )  # fmt: skip
    else:
        res = simulate(
            m,
            hw,
            layout,
            traffic,
            engine=eng,
            routing=ropts,
            ttft_slo_s=ttft_slo,
            tpot_slo_s=tpot_slo,
        )
    res.notes[:0] = notes
    report = {
        "model": m.name,
        "hardware": hw.name,
        "layout": disaggregate or _layout_name(layout),
        "seed": seed,
        **res.summary,
        "notes": res.notes,
        "files": [],
    }
    if out is not None:
        try:
            report["files"] = _write(res, out, report, charts, chart_format)
        except OSError as exc:
            raise MoesimError(f"cannot write to {out}: {exc.strerror or exc}") from None
    from moesim.cli._common import print_json

    if as_json:
        print_json(report)
    else:
        _print(report)


def _layout_name(layout) -> str:
    parts = [
        f"{k}{int(getattr(layout, k))}"
        for k in ("tp", "ep", "pp", "dp", "replicas")
        if k == "tp" or int(getattr(layout, k)) > 1
    ]
    return " ".join(parts).replace("replicas", "x") + f" {layout.weight_dtype}"


# ---------------------------------------------------------------------------- files
def write_atomic(path: Path, write) -> Path:
    """Call ``write(tmp_path)`` and move the result onto ``path`` in one rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _parquet(df, path: Path, meta: dict) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from moesim import __version__

    table = pa.Table.from_pandas(df, preserve_index=False)
    md = dict(table.schema.metadata or {})
    md[b"moesim.version"] = __version__.encode()
    md[b"moesim.simulation"] = json.dumps(meta, default=_json_default).encode()
    return write_atomic(path, lambda p: pq.write_table(table.replace_schema_metadata(md), p))


def _json_default(obj):
    import math

    import numpy as np

    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj if isinstance(obj, (int, float, str, bool)) or obj is None else str(obj)


def _write(res, out: Path, report: dict, charts: bool, formats) -> list[str]:
    from moesim.cli._common import to_jsonable

    out.mkdir(parents=True, exist_ok=True)
    meta = {k: v for k, v in report.items() if k not in ("files",)}
    files = [
        _parquet(res.requests_frame(), out / "requests.parquet", meta),
        _parquet(res.steps_frame(), out / "steps.parquet", meta),
    ]
    if charts:
        from moesim.plots.simulate import save_simulation_charts

        title = f"{report['model']} on {report['hardware']}, {report['layout']}"
        files += save_simulation_charts(res, out / "charts", formats, title)
    names = [str(p.relative_to(out)) for p in files] + ["summary.json"]
    summary = to_jsonable({**report, "files": names})
    write_atomic(out / "summary.json", lambda p: p.write_text(json.dumps(summary, indent=2) + "\n"))
    return names


# ---------------------------------------------------------------------------- display
_ROWS = (
    ("TTFT", "ttft"),
    ("TPOT per request", "tpot"),
    ("TPOT per token (ITL)", "itl"),
    ("end-to-end", "e2e_latency"),
)


def _print(report: dict) -> None:
    from rich.table import Table

    from moesim.cli._common import console, si

    title = (
        f"{report['model']} on {report['hardware']}  {report['layout']}  engine={report['engine']} "
        f"(budget {report['max_num_batched_tokens']}, max seqs {report['max_num_seqs']})  {report['traffic']}"
    )
    console.print(f"[bold]{title}[/bold]", soft_wrap=True)
    table = Table()
    for col in ("latency", "mean", "p50", "p90", "p99"):
        table.add_column(col, justify="left" if col == "latency" else "right")
    for label, key in _ROWS:
        table.add_row(
            label, *(si(float(report[f"{key}_{s}_s"]), "s") for s in ("mean", "p50", "p90", "p99"))
        )
    console.print(table)
    lines = [
        f"requests {report['completed']:,} completed of {report['requests']:,}"
        + (f" ({report['rejected']:,} rejected: KV never fits)" if report["rejected"] else "")
        + f" in {si(report['duration_s'], 's')} simulated",
        f"throughput {report['request_throughput_per_s']:,.3g} req/s, "
        f"{report['output_tokens_per_s_per_gpu']:,.1f} output tok/s/GPU ({report['num_gpus']:g} GPUs)",
        f"KV cache {report['kv_cache_tokens']:,} tokens per instance; occupancy mean "
        f"{report['kv_occupancy_mean']:.1%}, max {report['kv_occupancy_max']:.1%}; "
        f"{report['preemptions']:,} preemptions; mean decode batch {report['mean_decode_batch']:,.1f}",
    ]
    if report.get("slo_attainment") is not None:
        lines.append(
            f"goodput {report['goodput_requests_per_s']:,.3g} req/s; {report['slo_attainment']:.1%} of requests meet "
            f"TTFT <= {report['ttft_slo_s']} s, TPOT <= {report['tpot_slo_s']} s"
        )
    for line in lines:
        console.print(line, soft_wrap=True)
    for note in report.get("notes", []):
        console.print(f"[yellow]note:[/yellow] {note}", soft_wrap=True)
    for name in report.get("files", []):
        console.print(f"  wrote {name}", soft_wrap=True)


# ---------------------------------------------------------------------------- scenarios
def _scenario(
    path: Path, out: Path | None, workers: int, scheduler: str | None, as_json: bool
) -> None:
    from moesim.cli._common import console, print_json
    from moesim.plan.scenario import load_scenario
    from moesim.plan.sweep import run_simulations

    loaded = load_scenario(path)
    if loaded.scenario.simulate is None:
        raise MoesimError(f"{path}: the scenario has no 'simulate:' section")
    df = run_simulations(loaded, workers=workers, scheduler=scheduler)
    files = []
    if out is not None:
        meta = {"scenario": loaded.scenario.name, "scenario_text": loaded.text}
        try:
            out.mkdir(parents=True, exist_ok=True)
            files.append(_parquet(df, out / "simulate.parquet", meta).name)
            files.append(
                write_atomic(out / "simulate.csv", lambda p: df.to_csv(p, index=False)).name
            )
        except OSError as exc:
            raise MoesimError(f"cannot write to {out}: {exc.strerror or exc}") from None
    if as_json:
        print_json(
            {
                "scenario": loaded.scenario.name,
                "points": len(df),
                "files": files,
                "rows": df.to_dict(orient="records"),
            }
        )
        return
    cols = [c for c in ("model", "hardware", "layout", "rate_per_s", "concurrency", "ttft_p50_s", "ttft_p99_s",
                        "tpot_p50_s", "tpot_p99_s", "output_tokens_per_s_per_gpu", "goodput_requests_per_s") if c in df.columns]  # fmt: skip
    console.print(df[cols].to_string(index=False), soft_wrap=True)
    for name in files:
        console.print(f"  wrote {out / name}", soft_wrap=True)
