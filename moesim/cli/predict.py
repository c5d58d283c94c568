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


DTYPE_HELP = (
    "Weight format (default: the checkpoint's own, e.g. mxfp4 for gpt-oss, fp8-block for "
    "DeepSeek-V3): bf16, fp16, fp8, fp8-block, int8, mxfp4, nvfp4, fp4 (W4A4, Blackwell), "
    "int4-awq, int4-gptq."
)
KV_DTYPE_HELP = "KV-cache format: bf16, fp16, fp8, int8 (default: the checkpoint's, vLLM 'auto')."
PRICE_HELP = "Override the hardware profile's price, USD per GPU-hour."
GPU_MEMORY_HELP = (
    "Share of GPU memory the engine may use (vLLM --gpu-memory-utilization; default 0.90)."
)
LAYOUT_HELP = (
    "Layouts read like tp2ep8dp4: tensor-parallel 2, expert-parallel 8, data-parallel "
    "attention 4 (pp = pipeline stages, x N = replicas); parts equal to 1 are left out."
)


def with_price(hardware, price_usd_per_hour: float | None):
    """The hardware profile with its price replaced (a name stays a name without one)."""
    if price_usd_per_hour is None:
        return hardware
    from moesim.spec.hardware import load_hardware

    hw = load_hardware(hardware) if isinstance(hardware, str) else hardware
    return hw.model_copy(update={"price_usd_per_hour": float(price_usd_per_hour)})


class Phase(StrEnum):
    both = "both"
    prefill = "prefill"
    decode = "decode"


class Overlap(StrEnum):
    none = "none"
    two_batch = "two-batch"


class Framework(StrEnum):
    trtllm = "trtllm"
    vllm = "vllm"
    sglang = "sglang"


class DpBalance(StrEnum):
    even = "even"
    random = "random"


def register(app: typer.Typer) -> None:
    app.command(
        "predict",
        help="Predict TTFT, TPOT, throughput, memory fit and $/Mtok of a serving setup. "
        + LAYOUT_HELP,
    )(predict_cmd)


def predict_cmd(
    model: str = typer.Option(
        ...,
        "--model",
        "-m",
        help="Preset name (moesim model list) or path to a config.json / preset YAML.",
    ),
    hardware: str = typer.Option(
        ...,
        "--hardware",
        "-H",
        help="Hardware profile name (moesim hw list) or YAML path. A name uses the profile "
        "fitted to the --framework engine's measured kernels where one ships (h100-sxm -> "
        "h100-sxm.trtllm); NAME.datasheet forces the datasheet-only profile.",
    ),
    batch: int | None = typer.Option(
        None,
        "--batch",
        "-b",
        min=1,
        max=MAX_BATCH,
        help="Static batch: sequences prefilled together, then decoded (across the layout).",
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
    dtype: str | None = typer.Option(None, "--dtype", help=DTYPE_HELP),
    kv_dtype: str | None = typer.Option(None, "--kv-dtype", help=KV_DTYPE_HELP),
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
        64,
        "--block-m",
        min=1,
        max=MAX_BLOCK_M,
        help="Grouped-GEMM block M tokens pad to (a profile fitted with token tiles "
        "picks the fastest of its tiles instead).",
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
    price_usd_per_hour: float | None = typer.Option(
        None, "--price-usd-per-hour", min=0.0, help=PRICE_HELP
    ),
    concurrency: int | None = typer.Option(
        None,
        "--concurrency",
        "-c",
        min=1,
        help="In-flight batching: C clients in a closed loop, as benchmark clients run.",
    ),
    max_throughput: bool = typer.Option(
        False,
        "--max-throughput",
        help="In-flight batching at an infinite rate: the best concurrency and token budget "
        "under memory (and --ttft-slo / --tpot-slo, --max-batch), like trtllm-bench.",
    ),
    engine: str | None = typer.Option(
        None,
        "--engine",
        help="Engine whose scheduler and memory defaults to use: vllm (default), sglang, trtllm.",
    ),
    token_budget: int | None = typer.Option(
        None,
        "--token-budget",
        min=1,
        help="Tokens per step (vLLM max_num_batched_tokens, SGLang chunked_prefill_size, "
        "TRT-LLM max_num_tokens); default the engine's.",
    ),
    max_batch: int | None = typer.Option(
        None,
        "--max-batch",
        min=1,
        help="Cap on running sequences per scheduler (vLLM max_num_seqs, SGLang "
        "max_running_requests, TRT-LLM max_batch_size); default the engine's.",
    ),
    ttft_slo: float | None = typer.Option(
        None, "--ttft-slo", min=0.0, help="--max-throughput: time-to-first-token bound, seconds."
    ),
    tpot_slo: float | None = typer.Option(
        None, "--tpot-slo", min=0.0, help="--max-throughput: time-per-output-token bound, seconds."
    ),
    gpu_memory_utilization: float | None = typer.Option(
        None,
        "--gpu-memory-utilization",
        min=0.01,
        max=1.0,
        help="vLLM semantics: share of the GPU memory for weights, activations and KV (0.9).",
    ),
    kv_cache_free_gpu_memory_fraction: float | None = typer.Option(
        None,
        "--kv-cache-free-gpu-memory-fraction",
        min=0.01,
        max=1.0,
        help="TensorRT-LLM semantics: share of the memory left after weights for the KV cache.",
    ),
    input_dist: str | None = typer.Option(
        None,
        "--input-len-dist",
        help="In-flight modes: prompt lengths uniform:LO:HI | normal:MEAN:STD | file:PATH.",
    ),
    output_dist: str | None = typer.Option(
        None,
        "--output-len-dist",
        help="In-flight modes: output lengths uniform:LO:HI | normal:MEAN:STD | file:PATH.",
    ),
    arrivals: str = typer.Option(
        "bunched",
        "--arrivals",
        help="--concurrency with fixed lengths: bunched (clients started together, as benchmark "
        "clients are) or spread (desynchronised).",
    ),
    framework: Framework | None = typer.Option(
        None,
        "--framework",
        help="Serving engine (CUDA-graph sizes, fused all-reduce + RMSNorm): trtllm, vllm, sglang.",
    ),
    dp_balance: DpBalance = typer.Option(
        DpBalance.even,
        "--dp-balance",
        help="How sequences spread over DP-attention ranks: even (round-robin) or random.",
    ),
    context_cv: float = typer.Option(
        0.0,
        "--context-cv",
        min=0.0,
        help="Coefficient of variation of per-sequence context (DP-rank straggler).",
    ),
    mtp: int | None = typer.Option(
        None, "--mtp", min=1, max=16, help="Speculative decoding: N draft tokens from MTP heads."
    ),
    spec_draft: str | None = typer.Option(
        None, "--spec-draft", help="Speculative decoding with this draft model (preset or path)."
    ),
    spec_tokens: int | None = typer.Option(
        None, "--spec-tokens", min=1, max=16, help="Tokens the --spec-draft model drafts per step."
    ),
    acceptance_rate: float | None = typer.Option(
        None,
        "--acceptance-rate",
        min=0.0,
        max=1.0,
        help="Per-token acceptance of drafts (default: MTP 0.875, draft model 0.7; see README).",
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
    in_flight = batch if batch is not None else (concurrency or 1)  # requests holding KV at once
    _check_tokens(in_flight, input_len if context_len is None else context_len, output_len)
    if disaggregate is not None and len(disaggregate) > 1000:
        raise MoesimError("--disaggregate: a spec is at most 1,000 characters")
    from moesim.api import build_layout, run_prediction
    from moesim.spec import resolve
    from moesim.spec.limits import check_memory_scale

    tokens = in_flight * ((input_len if context_len is None else context_len) + output_len)
    if isinstance(hardware, str):  # the engine's measured profile where one ships
        from moesim.spec.hardware import measured_name

        hardware = measured_name(hardware, framework.value if framework is not None else None)
    model, hardware = resolve(model, hardware)  # loaded once, passed on as objects
    check_memory_scale(model, tokens)

    hardware = with_price(hardware, price_usd_per_hour)
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
        gpu_memory_utilization=gpu_memory_utilization,
        kv_cache_free_gpu_memory_fraction=kv_cache_free_gpu_memory_fraction,
        framework=None if framework is None else framework.value,
        dp_balance=dp_balance.value,
        context_cv=context_cv,
    )
    if gpu_memory_utilization is not None:
        layout = layout.with_(memory_utilization=gpu_memory_utilization)
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
        concurrency=concurrency,
        max_throughput=max_throughput,
        engine=engine,
        token_budget=token_budget,
        max_batch=max_batch,
        ttft_slo=ttft_slo,
        tpot_slo=tpot_slo,
        input_dist=input_dist,
        output_dist=output_dist,
        arrivals=arrivals,
        mtp=mtp,
        spec_draft=spec_draft,
        spec_tokens=spec_tokens,
        acceptance_rate=acceptance_rate,
    )
    result["layout"]["memory_utilization"] = layout.memory_utilization
    result["price_usd_per_hour"] = resolve(model, hardware)[1].price_usd_per_hour
    if notes:
        result["notes"] = notes + result.get("notes", [])
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
