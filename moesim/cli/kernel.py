"""``moesim kernel``: predicted time of a single GEMM or MoE expert layer."""

from __future__ import annotations

import typer

from moesim.spec.limits import (
    MAX_BLOCK_M,
    MAX_CAPACITY_FACTOR,
    MAX_PARALLEL,
    check_real,
)

ORDER = 35
MAX_DIM = 1 << 24  # GEMM and layer dimensions
MAX_LAYER_TOKENS = 1 << 32
MAX_EXPERTS = 1 << 12  # 10x the most experts of any MoE built (384)
MAX_TOP_K = 1 << 8

kernel_app = typer.Typer(
    help="Predict single kernels: a GEMM, or one MoE layer's expert compute.", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    app.add_typer(kernel_app, name="kernel")


def _emit(res: dict, as_json: bool, title: str) -> None:
    from moesim.api import squeeze
    from moesim.cli._common import console, kv_table, print_json, si

    res = squeeze(res)
    if as_json:
        print_json(res)
        return
    rows = []
    for key, value in res.items():
        if key.endswith("_s"):
            rows.append((key, si(float(value), "s")))
        else:
            rows.append((key, value))
    console.print(kv_table(title, rows))


@kernel_app.command("gemm", help="[M, K] x [K, N] GEMM time on a hardware profile.")
def gemm(
    m: int = typer.Option(..., "--m", min=1, max=MAX_DIM, help="Rows (tokens)."),
    n: int = typer.Option(..., "--n", min=1, max=MAX_DIM, help="Output columns."),
    k: int = typer.Option(..., "--k", min=1, max=MAX_DIM, help="Reduction dimension."),
    dtype: str = typer.Option("bf16", "--dtype", help="bf16, fp16, fp8, fp32."),
    hardware: str = typer.Option(
        ..., "--hardware", "-H", help="Hardware profile name or YAML path."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    from moesim.cost.kernel_cost import gemm_cost
    from moesim.spec.hardware import load_hardware

    hw = load_hardware(hardware)
    res = gemm_cost(hw, m, n, k, dtype)
    res = {
        "m": m,
        "n": n,
        "k": k,
        "dtype": dtype,
        "hardware": hw.name,
        "calibration": hw.efficiency.source,
    } | res
    res["achieved_tflops"] = float(res["flops"]) / float(res["latency_s"]) / 1e12
    _emit(res, as_json, f"GEMM {m}x{n}x{k} {dtype} on {hw.name}")


@kernel_app.command(
    "moe",
    help="One MoE layer's expert compute (gate/up GEMM, activation, down GEMM) on the busiest EP rank.",
)
def moe(
    tokens: int = typer.Option(
        ..., "--tokens", min=0, max=MAX_LAYER_TOKENS, help="Tokens entering the layer (EP group)."
    ),
    experts: int = typer.Option(..., "--experts", min=1, max=MAX_EXPERTS, help="Routed experts E."),
    top_k: int = typer.Option(..., "--top-k", min=1, max=MAX_TOP_K, help="Experts per token k."),
    hidden: int = typer.Option(..., "--hidden", min=1, max=MAX_DIM, help="Hidden size h."),
    intermediate: int = typer.Option(
        ..., "--intermediate", min=1, max=MAX_DIM, help="Expert intermediate size I."
    ),
    dtype: str = typer.Option("bf16", "--dtype", help="Weight / compute dtype."),
    hardware: str = typer.Option(
        ..., "--hardware", "-H", help="Hardware profile name or YAML path."
    ),
    ep: int = typer.Option(
        1, "--ep", min=1, max=MAX_PARALLEL, help="Expert-parallel GPUs the experts spread over."
    ),
    routing: str = typer.Option(
        "uniform", "--routing", help="uniform | zipf:S | dirichlet:A | hist:PATH"
    ),
    capacity_factor: float | None = typer.Option(
        None, "--capacity-factor", min=0.0, help="Capacity factor C."
    ),
    block_m: int = typer.Option(
        64,
        "--block-m",
        min=1,
        max=MAX_BLOCK_M,
        help="Block M that each expert's tokens pad to; a profile fitted with "
        "token tiles picks the fastest of its tiles instead (token_tile in the output).",
    ),
    plain: bool = typer.Option(False, "--plain", help="Non-gated FFN (2 matrices instead of 3)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    from moesim.cost.kernel_cost import moe_cost
    from moesim.cost.routing import parse_routing
    from moesim.errors import MoesimError
    from moesim.spec.hardware import load_hardware

    if top_k > experts:
        raise MoesimError(f"--top-k {top_k} exceeds --experts {experts}")
    if capacity_factor is not None:
        check_real("--capacity-factor", capacity_factor, 0, MAX_CAPACITY_FACTOR, lo_open=True)
    hw = load_hardware(hardware)
    res = moe_cost(
        hw,
        tokens,
        experts,
        top_k,
        hidden,
        intermediate,
        dtype,
        ep=ep,
        routing=parse_routing(routing),
        block_m=block_m,
        capacity_factor=capacity_factor,
        gated=not plain,
    )
    res = {
        "tokens": tokens,
        "experts": experts,
        "top_k": top_k,
        "hidden": hidden,
        "intermediate": intermediate,
        "dtype": dtype,
        "ep": ep,
        "routing": routing,
        "hardware": hw.name,
        "calibration": hw.efficiency.source,
    } | res
    lat = float(res["latency_s"])
    res["achieved_tflops"] = float(res["flops"]) / lat / 1e12 if lat > 0 else 0.0
    res["achieved_gbps"] = float(res["hbm_bytes"]) / lat / 1e9 if lat > 0 else 0.0
    _emit(
        res,
        as_json,
        f"MoE layer T={tokens} E={experts} k={top_k} h={hidden} I={intermediate} on {hw.name}",
    )
