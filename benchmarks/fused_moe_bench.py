"""Fused MoE benchmark: our Triton kernel vs torch grouped_mm vs the loop reference.

Triton-tutorial order: each implementation is first checked against the float32 loop
reference (sampled tokens), then timed per shape; throughput is reported as TFLOP/s and GB/s
and as a fraction of two ceilings measured here first: device-to-device copy bandwidth (bytes
read + written) and a large bf16 GEMM (fp32 on CPU).

    python benchmarks/fused_moe_bench.py --device cuda --out results/
    python benchmarks/fused_moe_bench.py --device cpu --quick --out /tmp/bench   # no Triton

Writes ``fused_moe_bench.csv`` (one row per impl and shape) and prints a table.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import torch

from moesim.profile import moe
from moesim.profile.case import Context
from moesim.profile.harness import bench, default_settings
from moesim.profile.runner import _measure
from moesim.profile.telemetry import device_name, snapshot

TOKENS = {"cuda": [1, 16, 128, 1024, 4096, 16384], "cpu": [1, 16, 128]}


def ceilings(device: str, settings) -> tuple[float, float]:
    """(copy bytes/s counting read + write, GEMM FLOP/s) measured on ``device``."""
    n = 2**28 if device == "cuda" else 2**24  # 1 GiB / 64 MiB of fp32
    copy = bench(
        lambda d, s: d.copy_(s),
        lambda: (torch.randn(n, device=device), torch.randn(n, device=device)),
        settings,
    )
    size, dtype = (8192, torch.bfloat16) if device == "cuda" else (1024, torch.float32)
    gemm = bench(
        lambda a, b: a @ b,
        lambda: (
            torch.randn(size, size, device=device, dtype=dtype),
            torch.randn(size, size, device=device, dtype=dtype),
        ),
        settings,
    )
    return 2 * 4 * n / copy.median_s, 2 * size**3 / gemm.median_s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--out", type=Path, default=Path("."))
    ap.add_argument("--quick", action="store_true", help="fewer token counts, uniform routing")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU: use --device cpu", file=sys.stderr)
        return 2
    snap = snapshot(args.device)
    ctx = Context(
        device=args.device,
        quick=False,
        out_dir=args.out,
        settings=default_settings(args.device, quick=args.quick),
        device_name=device_name(snap),
        capability=torch.cuda.get_device_capability() if args.device == "cuda" else None,
    )
    copy_bps, gemm_fps = ceilings(args.device, ctx.settings)
    print(
        f"{ctx.device_name}: copy {copy_bps / 1e9:,.0f} GB/s, GEMM {gemm_fps / 1e12:,.1f} TFLOP/s"
    )

    tokens = TOKENS[args.device][:4] if args.quick else TOKENS[args.device]
    routings = ("uniform",) if args.quick else ("uniform", "zipf")
    cases = [
        c for c in moe.cases(ctx)
        if c.params["tokens"] in tokens and c.params["routing"] in routings
    ]  # fmt: skip
    rows = []
    for case in cases:
        row = _measure(case, ctx)
        if row["status"] == "ok":
            row["tflops"] = row["flops"] / row["median_s"] / 1e12
            row["gbps"] = row["hbm_bytes"] / row["median_s"] / 1e9
            row["frac_copy_bw"] = row["gbps"] * 1e9 / copy_bps
            row["frac_gemm_peak"] = row["tflops"] * 1e12 / gemm_fps
        rows.append(row)
        _print_row(row)

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "fused_moe_bench.csv"
    columns = [
        "model", "tokens", "routing", "impl", "impl_path", "status", "error", "median_s",
        "tflops", "gbps", "frac_copy_bw", "frac_gemm_peak", "rel_err", "n_active_experts",
        "max_expert_tokens", "sum_padded_tokens", "block_m", "tile_config", "flops", "hbm_bytes",
    ]  # fmt: skip
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    _print_table(rows)
    print(f"copy {copy_bps / 1e9:,.0f} GB/s, GEMM {gemm_fps / 1e12:,.1f} TFLOP/s; wrote {path}")
    return 0


def _print_row(row) -> None:
    if row["status"] != "ok":
        print(f"  {row['model']:<22} T={row['tokens']:<6} {row['routing']:<8} {row['impl']:<10} "
              f"{row['status']}: {row.get('error', '')[:80]}")  # fmt: skip


def _print_table(rows) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="fused MoE: median time and fraction of measured ceilings")
    for col in ("model", "T", "routing", "impl", "µs", "TFLOP/s", "GB/s", "%BW", "%peak", "err"):
        table.add_column(col, justify="left" if col in ("model", "routing", "impl") else "right")
    for r in rows:
        if r["status"] != "ok":
            continue
        table.add_row(
            r["model"], str(r["tokens"]), r["routing"], r["impl"],
            f"{r['median_s'] * 1e6:,.1f}", f"{r['tflops']:.3g}", f"{r['gbps']:,.0f}",
            f"{100 * r['frac_copy_bw']:.0f}", f"{100 * r['frac_gemm_peak']:.0f}",
            f"{r['rel_err']:.1e}",
        )  # fmt: skip
    Console(width=140).print(table)


if __name__ == "__main__":
    sys.exit(main())
