"""Human-readable tables for predictions, sized to fit 100 columns."""

from __future__ import annotations

from rich.table import Table

from moesim.cli._common import console, si

TABLE_WIDTH = 100  # every table here fits a 100-column terminal

# (key, unit kind, what it means) in display order; keys a result lacks are skipped.
METRICS = (
    ("ttft_s", "s", "time to first token"),
    ("tpot_s", "s", "time per output token (decode step)"),
    ("e2e_latency_s", "s", "TTFT + (output_len - 1) x TPOT"),
    ("ttft_floor_s", "s", "datasheet roofline floor of TTFT"),
    ("tpot_floor_s", "s", "datasheet roofline floor of TPOT"),
    ("queue_delay_s", "s", "waiting for a prefill slot at --rate"),
    ("ttft_with_queue_s", "s", "TTFT including the queue"),
    ("output_tokens_per_s_per_gpu", "tok/s", "batch x output_len / e2e / GPUs"),
    ("output_tokens_per_s_per_user", "tok/s", "1 / TPOT"),
    ("prefill_tokens_per_s_per_gpu", "tok/s", "prompt tokens per second per GPU"),
    ("decode_tokens_per_s_per_gpu", "tok/s", "batch / TPOT / GPUs"),
    ("weights_bytes_per_gpu", "GB", "weights on the fullest GPU"),
    ("kv_cache_bytes_per_gpu", "GB", "KV cache of the batch"),
    ("activation_bytes_per_gpu", "GB", "activations of the largest step"),
    ("memory_bytes_per_gpu", "GB", "weights + KV + activations"),
    ("memory_capacity_bytes_per_gpu", "GB", "HBM capacity (usable = x memory_utilization)"),
    ("max_concurrency", "n", "sequences that fit in memory at this context"),
    ("usd_per_million_output_tokens", "$", "price x GPUs / output tokens"),
    ("usd_per_million_input_tokens", "$", "price x GPUs / prompt tokens"),
    ("power_w", "W", "TDP x GPUs"),
    ("num_gpus", "n", "GPUs of the whole layout"),
    ("prefill_comm_share", "ratio", "share of the prefill step in communication"),
    ("decode_comm_share", "ratio", "share of the decode step in communication"),
    ("max_load_ratio", "ratio", "busiest EP GPU's routed rows / mean (straggler)"),
    ("active_experts", "n", "experts with at least one token per layer"),
    ("padding_overhead", "ratio", "padded / routed rows - 1 (tile padding; was padding_waste)"),
    ("drop_rate", "ratio", "share of routed rows over expert capacity"),
    ("mixed_step_s", "s", "a step carrying a prefill chunk and every running decode"),
    ("decode_step_s", "s", "a decode-only step"),
    ("total_tokens_per_s_per_gpu", "tok/s", "input + output tokens per second per GPU"),
    ("runtime_reserve_bytes_per_gpu", "GB", "CUDA context, graph pool, NCCL/DeepEP, workspace"),
    ("concurrency", "n", "requests in flight (closed loop) or chosen by --max-throughput"),
    ("token_budget", "n", "tokens per engine step (prefill chunk + decodes)"),
    ("max_batch", "n", "engine's cap on running sequences per scheduler"),
    ("running_seqs", "n", "requests holding a slot, whole layout"),
    ("mixed_step_fraction", "ratio", "share of steps that carry a prefill chunk"),
    ("kv_cache_occupancy", "ratio", "live KV tokens / KV capacity"),
    ("speculative_step_s", "s", "one draft + verify step (speculative decoding)"),
    ("draft_s", "s", "the draft passes of a speculative step"),
    ("verify_s", "s", "the verification pass of a speculative step"),
    ("accepted_tokens_per_step", "n", "expected tokens a speculative step emits"),
    ("acceptance_rate", "ratio", "per-token acceptance of drafts"),
)


def _value(key: str, kind: str, value) -> str:
    v = float(value)
    if kind == "s":
        return si(v, "s")
    if kind == "tok/s":
        return f"{v:,.1f} tok/s"
    if kind == "GB":
        return f"{v / 1e9:,.2f} GB"
    if kind == "$":
        return f"${v:,.4f}"
    if kind == "W":
        return f"{v:,.0f} W"
    if kind == "n":
        return f"{v:,.0f}" if v >= 100 or v == int(v) else f"{v:,.2f}"
    return f"{v:.4g}"


def layout_label(lay: dict) -> str:
    """Compact layout string: 'tp2ep8dp4' (tp always; ep/pp/dp when above 1; 'xN' replicas)."""
    text = f"tp{lay.get('tp', 1)}" + "".join(
        f"{k}{lay[k]}" for k in ("ep", "pp", "dp") if int(lay.get(k) or 1) > 1
    )
    reps = int(lay.get("replicas") or 1)
    return text + (f" x{reps}" if reps > 1 else "")


def print_prediction(res: dict, breakdown: bool = False) -> None:
    lay = res.get("layout", {})
    load = (
        f"batch {res.get('batch')}"
        if res.get("batch") is not None
        else f"{res.get('engine')} {res.get('schedule')}, concurrency {res.get('concurrency')}"
    )
    console.print(
        f"[bold]{res.get('model')}[/] on [bold]{res.get('hardware')}[/], {layout_label(lay)}, "
        f"{load}, in {res.get('input_len')} / out {res.get('output_len')}, "
        f"phase {res.get('phase')}",
        width=TABLE_WIDTH,
    )
    if res.get("calibration"):
        console.print(f"calibration: {res.get('calibration')}", width=TABLE_WIDTH, markup=False)
    fmt = res.get("formats") or {}
    if fmt and "error" not in fmt:
        kept = fmt.get("unquantized_parts") or []
        kept_txt = f"; {'/'.join(kept)} in {fmt.get('act_dtype')}" if kept else ""
        console.print(
            f"formats: weights {fmt['weight_dtype']} ({fmt['weight_dtype_origin']}{kept_txt}), "
            f"KV {fmt['kv_dtype']} ({fmt['kv_dtype_origin']}); {fmt['compute_note']}",
            width=TABLE_WIDTH,
        )
    if not res.get("feasible", True):
        console.print(f"[red]infeasible:[/red] {res.get('reason')}")
    table = Table(show_header=True, width=TABLE_WIDTH, header_style="bold")
    table.add_column("metric", style="cyan", no_wrap=True)
    table.add_column("value", justify="right", no_wrap=True)
    table.add_column("what it is", style="dim", overflow="fold")
    for key, kind, what in METRICS:
        if key in res and res[key] is not None:
            table.add_row(key, _value(key, kind, res[key]), what)
    table.add_row("feasible", str(res.get("feasible")), "fits memory and the layout rules")
    table.add_row("calibration", "", str(res.get("calibration")))
    console.print(table, width=TABLE_WIDTH)
    for note in res.get("notes", []):
        console.print(f"[yellow]note:[/yellow] {note}", width=TABLE_WIDTH)
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


_CLASS_SHORT = {
    "attention_prefill": "attn-prefill",
    "attention_decode": "attn-decode",
    "attention_decode_mla": "attn-mla",
    "grouped_gemm": "grouped-gemm",
}


def _compact(value: float) -> str:
    """A count with an SI prefix in at most 5 characters: 1.2P, 255G, 84M, 0."""
    if value == 0:
        return "0"
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.3g}{prefix}"
    return f"{value:.3g}"


def print_breakdown(phase: str, rows: list[dict]) -> None:
    total = sum(float(r["time_s"]) for r in rows) or 1.0
    table = Table(
        title=f"{phase}: per-operator time per step, busiest GPU (floor: datasheet roofline)",
        title_justify="left",
    )
    for col in ("op", "class", "time", "share", "floor", "FLOP", "HBM B", "comm B", "bound"):
        left = col in ("op", "class", "bound")
        table.add_column(col, justify="left" if left else "right", no_wrap=True)
    for r in sorted(rows, key=lambda r: -float(r["time_s"])):
        t = float(r["time_s"])
        if t == 0:
            continue
        table.add_row(
            r["op"],
            _CLASS_SHORT.get(r["kernel_class"], r["kernel_class"]),
            si(t, "s"),
            f"{t / total:.1%}",
            si(float(r["floor_s"]), "s"),
            _compact(float(r["flops"])),
            _compact(float(r["hbm_bytes"])),
            _compact(float(r["comm_bytes"])),
            str(r["bound"]),
        )
    console.print(table, width=TABLE_WIDTH)
