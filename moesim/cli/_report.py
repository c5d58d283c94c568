"""Human-readable tables for predictions."""

from __future__ import annotations

from rich.table import Table

from moesim.cli._common import console, si

_SECONDS = (
    "ttft_s",
    "tpot_s",
    "e2e_latency_s",
    "ttft_floor_s",
    "tpot_floor_s",
    "queue_delay_s",
    "ttft_with_queue_s",
    "speculative_step_s",
    "draft_s",
    "verify_s",
)
_RATES = (
    "output_tokens_per_s_per_gpu",
    "output_tokens_per_s_per_user",
    "prefill_tokens_per_s_per_gpu",
    "decode_tokens_per_s_per_gpu",
)
_BYTES = (
    "weights_bytes_per_gpu",
    "kv_cache_bytes_per_gpu",
    "activation_bytes_per_gpu",
    "memory_bytes_per_gpu",
    "memory_capacity_bytes_per_gpu",
)
_MONEY = ("usd_per_million_output_tokens", "usd_per_million_input_tokens")
_RATIOS = (
    "prefill_comm_share",
    "decode_comm_share",
    "accepted_tokens_per_step",
    "acceptance_rate",
    "max_load_ratio",
    "active_experts",
    "padding_waste",
    "drop_rate",
    "max_concurrency",
    "power_w",
    "num_gpus",
)


def print_prediction(res: dict, breakdown: bool = False) -> None:
    lay = res.get("layout", {})
    title = (
        f"{res.get('model')} on {res.get('hardware')}  "
        f"tp={lay.get('tp')} ep={lay.get('ep')} pp={lay.get('pp')} dp={lay.get('dp')}  "
        f"{lay.get('dtype')}/{lay.get('kv_dtype')}  batch={res.get('batch')}  "
        f"in={res.get('input_len')} out={res.get('output_len')}  phase={res.get('phase')}"
    )
    if not res.get("feasible", True):
        console.print(f"[red]infeasible:[/red] {res.get('reason')}")
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("metric", style="cyan")
    table.add_column("value", justify="right")
    for key in _SECONDS:
        if key in res:
            table.add_row(key, si(float(res[key]), "s"))
    for key in _RATES:
        if key in res:
            table.add_row(key, f"{float(res[key]):,.1f} tok/s")
    for key in _BYTES:
        if key in res:
            table.add_row(key, f"{float(res[key]) / 1e9:,.2f} GB")
    for key in _MONEY:
        if key in res:
            table.add_row(key, f"${float(res[key]):,.4f}")
    for key in _RATIOS:
        if key in res:
            table.add_row(key, f"{float(res[key]):,.4g}")
    table.add_row("feasible", str(res.get("feasible")))
    table.add_row("calibration", str(res.get("calibration")))
    console.print(table)
    for note in res.get("notes", []):
        console.print(f"[yellow]note:[/yellow] {note}")
    if breakdown and "breakdown" in res:
        for phase, rows in res["breakdown"].items():
            print_breakdown(phase, rows)
        for phase, summary in res.get("overlap", {}).items():
            print_overlap(phase, summary)


def print_overlap(phase: str, summary: dict) -> None:
    """Per MoE layer: compute, communication, and the communication left exposed."""
    if not summary:
        return
    table = Table(
        title=f"{phase}: one MoE layer, compute/communication overlap (busiest GPU)",
        title_justify="left",
        show_header=False,
    )
    table.add_column("quantity", style="cyan")
    table.add_column("value", justify="right")
    labels = {
        "layer_time_s": "layer time",
        "layer_compute_s": "compute",
        "layer_comm_s": "communication",
        "layer_exposed_comm_s": "exposed communication",
        "layer_sm_slowdown_s": "  of which compute slowed by comm SMs",
        "step_exposed_comm_s": "exposed communication, whole step",
    }
    for key, label in labels.items():
        if key in summary:
            table.add_row(label, si(float(summary[key]), "s"))
    if summary.get("eager_launch"):
        table.add_row("launch", "eager (no CUDA graph): host-launch bound where slower")
    console.print(table)


def print_breakdown(phase: str, rows: list[dict]) -> None:
    total = sum(float(r["time_s"]) for r in rows) or 1.0
    table = Table(
        title=f"{phase}: per-operator breakdown (per step, busiest GPU)", title_justify="left"
    )
    for col in ("op", "class", "time", "share", "floor", "GFLOP", "HBM GB", "comm GB", "bound"):
        table.add_column(col, justify="left" if col in ("op", "class", "bound") else "right")
    for r in sorted(rows, key=lambda r: -float(r["time_s"])):
        t = float(r["time_s"])
        if t == 0:
            continue
        table.add_row(
            r["op"],
            r["kernel_class"],
            si(t, "s"),
            f"{t / total:.1%}",
            si(float(r["floor_s"]), "s"),
            f"{float(r['flops']) / 1e9:,.2f}",
            f"{float(r['hbm_bytes']) / 1e9:,.3f}",
            f"{float(r['comm_bytes']) / 1e9:,.3f}",
            str(r["bound"]),
        )
    console.print(table)
