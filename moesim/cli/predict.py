"""``moesim predict``: serving cost of one model, on one hardware profile, in one layout."""

from __future__ import annotations

from enum import StrEnum

import typer

from moesim.errors import MoesimError
from moesim.spec.limits import (
    MAX_BATCH,
    MAX_BLOCK_M,
    MAX_GPUS,
    MAX_GPUS_PER_NODE,
    MAX_PARALLEL,
    MAX_REDUNDANT_EXPERTS,
    MAX_REPLICAS,
    MAX_TOKENS,
)

ORDER = 30


class Phase(StrEnum):
    both = "both"
    prefill = "prefill"
    decode = "decode"


class Overlap(StrEnum):
    none = "none"
    two_batch = "two-batch"


def register(app: typer.Typer) -> None:
    app.command(
        "predict", help="Predict TTFT, TPOT, throughput, memory fit and $/Mtok of a serving setup."
    )(predict_cmd)


def predict_cmd(
    model: str = typer.Option(
        ...,
        "--model",
        "-m",
        help="Preset name (moesim model list) or path to a config.json / preset YAML.",
    ),
    hardware: str = typer.Option(
        ..., "--hardware", "-H", help="Hardware profile name (moesim hw list) or YAML path."
    ),
    batch: int = typer.Option(
        ..., "--batch", "-b", min=1, max=MAX_BATCH, help="Concurrent sequences across the layout."
    ),
    input_len: int = typer.Option(
        1024, "--input-len", min=1, max=MAX_TOKENS, help="Prompt tokens per request."
    ),
    output_len: int = typer.Option(
        256, "--output-len", min=1, max=MAX_TOKENS, help="Generated tokens per request."
    ),
    context_len: int | None = typer.Option(
        None,
        "--context-len",
        min=1,
        max=MAX_TOKENS,
        help="Decode phase: tokens of context per sequence (default input+output/2).",
    ),
    phase: Phase = typer.Option(
        Phase.both,
        "--phase",
        help="both: a static batch end to end; decode / prefill: one pool's steady state.",
    ),
    tp: int = typer.Option(
        1,
        "--tp",
        min=1,
        max=MAX_PARALLEL,
        help="Tensor parallel size (attention; experts unless --ep).",
    ),
    ep: int = typer.Option(
        1, "--ep", min=1, max=MAX_PARALLEL, help="Expert parallel size (divides tp*dp)."
    ),
    pp: int = typer.Option(1, "--pp", min=1, max=MAX_PARALLEL, help="Pipeline stages."),
    dp: int = typer.Option(
        1, "--dp", min=1, max=MAX_PARALLEL, help="Attention data-parallel groups per stage."
    ),
    replicas: int = typer.Option(
        1, "--replicas", min=1, max=MAX_REPLICAS, help="Independent copies of the whole layout."
    ),
    nodes: int | None = typer.Option(
        None,
        "--nodes",
        min=1,
        max=MAX_GPUS,
        help="Nodes; with --gpus-per-node, unset --dp fills them with DP attention.",
    ),
    gpus_per_node: int | None = typer.Option(
        None,
        "--gpus-per-node",
        min=1,
        max=MAX_GPUS_PER_NODE,
        help="GPUs per node (default: the profile's).",
    ),
    dtype: str = typer.Option("bf16", "--dtype", help="Weight dtype: bf16, fp16, fp8, fp4."),
    kv_dtype: str = typer.Option("bf16", "--kv-dtype", help="KV-cache dtype: bf16, fp16, fp8."),
    dispatch_dtype: str = typer.Option(
        "bf16", "--dispatch-dtype", help="EP dispatch payload: bf16 or fp8 (DeepEP)."
    ),
    overlap: Overlap = typer.Option(
        Overlap.none, "--overlap", help="Compute/communication overlap: none or two-batch."
    ),
    routing: str = typer.Option(
        "uniform", "--routing", help="uniform | zipf:S | dirichlet:A | hist:PATH"
    ),
    capacity_factor: float | None = typer.Option(
        None,
        "--capacity-factor",
        min=0.0,
        help="Expert capacity factor C (tokens over C*T*k/E are dropped).",
    ),
    redundant_experts: int = typer.Option(
        0,
        "--redundant-experts",
        min=0,
        max=MAX_REDUNDANT_EXPERTS,
        help="Extra expert replicas (EPLB) spread over the EP group.",
    ),
    block_m: int = typer.Option(
        64, "--block-m", min=1, max=MAX_BLOCK_M, help="Grouped-GEMM block M tokens pad to."
    ),
    offload: float = typer.Option(
        0.0,
        "--offload",
        min=0.0,
        max=1.0,
        help="Fraction of each GPU's routed experts kept in host memory.",
    ),
    disaggregate: str | None = typer.Option(
        None,
        "--disaggregate",
        help="Separate pools, e.g. 'prefill=tp8;decode=tp1,dp16,ep16[,hw=h200]' (see README).",
    ),
    rate: float | None = typer.Option(
        None,
        "--rate",
        min=0.0,
        help="Arrival rate (requests/s) for queueing delay and pool sizing.",
    ),
    prefix_cache_hit_rate: float = typer.Option(
        0.0,
        "--prefix-cache-hit-rate",
        min=0.0,
        max=1.0,
        help="Share of each prompt served from the prefix cache (phase both).",
    ),
    breakdown: bool = typer.Option(False, "--breakdown", help="Show the per-operator breakdown."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    from moesim.spec.limits import MAX_CAPACITY_FACTOR, MAX_RATE_PER_S, check_real
    from moesim.spec.limits import check_tokens_in_flight as _check_tokens

    if capacity_factor is not None:
        check_real("--capacity-factor", capacity_factor, 0, MAX_CAPACITY_FACTOR, lo_open=True)
    if rate is not None:
        check_real("--rate", rate, 0, MAX_RATE_PER_S, unit="requests/s")
    check_real("--offload", offload, 0, 1)
    check_real("--prefix-cache-hit-rate", prefix_cache_hit_rate, 0, 1)
    _check_tokens(batch, input_len if context_len is None else context_len, output_len)
    if disaggregate is not None and len(disaggregate) > 1000:
        raise MoesimError("--disaggregate: a spec is at most 1,000 characters")
    from moesim.api import build_layout, run_prediction
    from moesim.spec import resolve
    from moesim.spec.limits import check_memory_scale

    tokens = batch * ((input_len if context_len is None else context_len) + output_len)
    model, hardware = resolve(model, hardware)  # loaded once, passed on as objects
    check_memory_scale(model, tokens)

    layout, notes = build_layout(
        model,
        hardware,
        tp=tp,
        ep=ep,
        pp=pp,
        dp=dp,
        replicas=replicas,
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        dtype=dtype,
        kv_dtype=kv_dtype,
        dispatch_dtype=dispatch_dtype,
        overlap=overlap.value,
        redundant_experts=redundant_experts,
        offload=offload,
    )
    result = run_prediction(
        model,
        hardware,
        layout,
        batch=batch,
        input_len=input_len,
        output_len=output_len,
        context_len=context_len,
        phase=phase.value,
        routing=routing,
        capacity_factor=capacity_factor,
        block_m=block_m,
        breakdown=breakdown,
        disaggregate=disaggregate,
        rate=rate,
        prefix_cache_hit_rate=prefix_cache_hit_rate,
    )
    if notes:
        result["notes"] = notes
    from moesim.cli._common import print_json
    from moesim.cli._report import print_prediction

    feasible = bool(result.get("feasible", True))
    if feasible:
        _refuse_impossible_numbers(result)
    if as_json:
        print_json(result)
    elif feasible:
        print_prediction(result, breakdown=breakdown)
    if not feasible:
        typer.secho(f"error: infeasible layout: {result.get('reason')}", fg="red", err=True)
        raise typer.Exit(2)


def _refuse_impossible_numbers(result: dict, where: str = "") -> None:
    """A feasible prediction holding an infinite, NaN or negative number is not printed: the
    inputs took the model outside the range it stands behind (never a silent wrong number)."""
    import math

    from moesim.errors import MoesimError

    for key, value in result.items():
        if key in ("breakdown", "notes", "layout"):
            continue
        if isinstance(value, dict):
            _refuse_impossible_numbers(value, f"{where}{key}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value) or value < 0:
                raise MoesimError(
                    f"the model gives {where}{key} = {value} for these inputs, which no real "
                    "deployment has; refusing to report it (are the inputs in range?)"
                )
