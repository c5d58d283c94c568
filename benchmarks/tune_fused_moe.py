# ruff: noqa: B023  (closures are timed immediately, inside the loop that binds them)
"""Tune the Triton fused MoE kernel's tile table on a GPU and report how close it gets to the roofs.

Order (Triton tutorials; the device notes' METHOD): measure the two ceilings (device-to-device
copy bytes/s counting read + write; a large bf16 GEMM), check every config against the float32
loop reference on fresh random inputs, then time it with CUDA events (``triton.testing.do_bench``,
median). Two times per case: ``kernels`` = the two Triton launches on a pre-aligned layout (what
the tile table controls), ``e2e`` = ``fused_moe`` with alignment and combine included.

Bytes counted for a case: active experts' weights (3·h·I each) + token rows in, the [A, I]
intermediate written and read, and [A, h] written and read for the combine; FLOPs = 2·Σ padded
rows·h·I·3 counted unpadded (useful work) as 2·A·h·I·3.

    python benchmarks/tune_fused_moe.py --out DIR [--quick]
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import triton
import triton.testing

from moesim.kernels import fused_moe as fm
from moesim.kernels.align import moe_align_block_size
from moesim.kernels.configs import TILE_CONFIGS, TileConfig, describe, pick_regime
from moesim.kernels.reference import moe_loop, relative_error
from moesim.kernels.routing import route, routing_stats

SHAPES = {  # name: (global experts, local experts, top_k, hidden, intermediate)
    "mixtral-8x7b": (8, 8, 2, 4096, 14336),
    "deepseek-v3-ep8": (256, 32, 8, 7168, 2048),
    "qwen3-30b-a3b": (128, 128, 8, 2048, 768),
}
TOKENS = [1, 8, 32, 128, 512, 2048, 8192]


def candidates(regime: str) -> list[TileConfig]:
    bm = {"decode": 16, "small": 32, "medium": 64, "large": 128}[regime]
    out = []
    if regime in ("decode", "small"):
        ups = [(64, 128), (128, 128), (64, 256), (32, 256)]
        downs = [(128, 128), (64, 256), (256, 64), (64, 128)]
        ws = [(4, 4), (4, 5), (4, 3)]
    else:
        ups = [(64, 64), (128, 64), (64, 128), (128, 32)]
        downs = [(128, 64), (256, 64), (128, 128), (64, 64)]
        ws = [(4, 3), (8, 3), (8, 4)]
    for (nu, ku), (nd, kd), (w, s) in itertools.product(ups, downs, ws):
        out.append(TileConfig(bm, nu, ku, nd, kd, w, s))
    base = TILE_CONFIGS[regime]
    return [base] + [c for c in out if c != base]


def ceilings() -> dict:
    n = 2**28
    a, b = torch.randn(n, device="cuda"), torch.empty(n, device="cuda")
    t = triton.testing.do_bench(lambda: b.copy_(a), warmup=50, rep=300, return_mode="median") / 1e3
    copy = 2 * 4 * n / t
    x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    y = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    t = triton.testing.do_bench(lambda: x @ y, warmup=50, rep=300, return_mode="median") / 1e3
    return {"copy_bytes_per_s": copy, "gemm_bf16_flops_per_s": 2 * 8192**3 / t}


def launch_kernels(x, w13, w2, h, y, weights, align, cfg, n_assign, top_k):
    inter, hidden = w2.shape[2], w2.shape[1]
    nb = align.block_expert.numel()
    fm._gate_up_silu_kernel[(nb * triton.cdiv(inter, cfg.block_n_up),)](
        x, w13, h, align.sorted_ids, align.block_expert, align.num_padded, n_assign, inter, hidden,
        x.stride(0), x.stride(1), w13.stride(0), w13.stride(1), w13.stride(2), h.stride(0), h.stride(1),
        TOP_K=top_k, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n_up, BLOCK_K=cfg.block_k_up, FP32_IEEE=False,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    fm._down_weight_kernel[(nb * triton.cdiv(hidden, cfg.block_n_down),)](
        h, w2, y, weights, align.sorted_ids, align.block_expert, align.num_padded, n_assign, hidden, inter,
        h.stride(0), h.stride(1), w2.stride(0), w2.stride(1), w2.stride(2), y.stride(0), y.stride(1),
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n_down, BLOCK_K=cfg.block_k_down, FP32_IEEE=False,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--max-configs", type=int, default=16)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    ceil = ceilings()
    print(
        f"ceilings: copy {ceil['copy_bytes_per_s'] / 1e12:.2f} TB/s, bf16 GEMM {ceil['gemm_bf16_flops_per_s'] / 1e12:.0f} TFLOP/s",
        flush=True,
    )
    rows = []
    f = (out / "tune_fused_moe.csv").open("w", newline="")
    writer = None
    t_start = time.time()
    tokens_list = TOKENS if not args.quick else [1, 32, 512, 4096]
    for name, (e_glob, e_loc, k, hid, inter) in SHAPES.items():
        w13 = torch.randn(e_loc, 2 * inter, hid, device="cuda", dtype=torch.bfloat16) / hid**0.5
        w2 = torch.randn(e_loc, hid, inter, device="cuda", dtype=torch.bfloat16) / inter**0.5
        for tokens in tokens_list:
            for routing in ("uniform", "zipf"):
                if routing == "zipf" and tokens not in (32, 2048, 4096):
                    continue
                gen = torch.Generator().manual_seed(tokens)
                ids, wts = route(
                    tokens, e_glob, k, routing, local_experts=e_loc, device="cuda", generator=gen
                )
                x = torch.randn(tokens, hid, device="cuda", dtype=torch.bfloat16)
                st = routing_stats(ids, e_loc, 16)
                a_local = st["assignments"]
                n_assign = tokens * k
                active = st["n_active_experts"]
                weight_bytes = active * 3 * hid * inter * 2
                io_bytes = a_local * (hid + 2 * inter + inter + 2 * hid) * 2 + tokens * hid * 2 * 2
                useful_flops = 2.0 * a_local * hid * inter * 3
                ref = moe_loop(x, w13, w2, ids, wts, compute_dtype=torch.float32)
                regime = pick_regime(n_assign / max(e_glob, 1))
                best = None
                for cfg in candidates(regime)[: args.max_configs]:
                    cfg = replace(
                        cfg,
                        block_n_up=min(cfg.block_n_up, inter),
                        block_k_down=min(cfg.block_k_down, inter),
                    )
                    try:
                        outp = fm.fused_moe(x, w13, w2, ids, wts, config=cfg)
                        err = relative_error(outp.float(), ref)
                        if not err < 2e-2:
                            raise RuntimeError(f"rel err {err:.3g}")
                        align = moe_align_block_size(ids, e_loc, cfg.block_m)
                        h = torch.empty(n_assign, inter, device="cuda", dtype=torch.bfloat16)
                        y = torch.zeros(n_assign, hid, device="cuda", dtype=torch.bfloat16)
                        wflat = wts.reshape(-1).contiguous()
                        t_k = (
                            triton.testing.do_bench(
                                lambda: launch_kernels(
                                    x, w13, w2, h, y, wflat, align, cfg, n_assign, k
                                ),
                                warmup=10,
                                rep=40,
                                return_mode="median",
                            )
                            / 1e3
                        )
                        t_e = (
                            triton.testing.do_bench(
                                lambda: fm.fused_moe(x, w13, w2, ids, wts, config=cfg),
                                warmup=5,
                                rep=30,
                                return_mode="median",
                            )
                            / 1e3
                        )
                        status = "ok"
                    except (
                        Exception
                    ) as exc:  # a config that does not compile or is wrong is recorded
                        t_k = t_e = float("nan")
                        err = float("nan")
                        status = f"error: {str(exc).splitlines()[0][:120]}"
                    row = {
                        "shape": name,
                        "tokens": tokens,
                        "routing": routing,
                        "regime": regime,
                        "config": describe(cfg),
                        "is_table_config": cfg == candidates(regime)[0],
                        "status": status,
                        "rel_err": err,
                        "active_experts": active,
                        "assignments": a_local,
                        "kernels_s": t_k,
                        "e2e_s": t_e,
                        "weight_bytes": weight_bytes,
                        "bytes": weight_bytes + io_bytes,
                        "flops": useful_flops,
                        "gbps_kernels": (weight_bytes + io_bytes) / t_k / 1e9,
                        "frac_copy_bw": (weight_bytes + io_bytes) / t_k / ceil["copy_bytes_per_s"],
                        "tflops_kernels": useful_flops / t_k / 1e12,
                        "frac_gemm_peak": useful_flops / t_k / ceil["gemm_bf16_flops_per_s"],
                    }
                    if writer is None:
                        writer = csv.DictWriter(f, fieldnames=list(row))
                        writer.writeheader()
                    writer.writerow(row)
                    f.flush()
                    rows.append(row)
                    if status == "ok" and (best is None or t_k < best["kernels_s"]):
                        best = row
                if best:
                    table = next(
                        r
                        for r in rows[::-1]
                        if r["shape"] == name
                        and r["tokens"] == tokens
                        and r["routing"] == routing
                        and r["is_table_config"]
                    )
                    print(
                        f"{name:16s} T={tokens:5d} {routing:7s} {regime:6s} table {table['kernels_s'] * 1e6:8.1f}us  best {best['kernels_s'] * 1e6:8.1f}us e2e {best['e2e_s'] * 1e6:8.1f}us "
                        f"{best['frac_copy_bw']:.2f}xBW {best['frac_gemm_peak']:.2f}xPEAK {best['config']}",
                        flush=True,
                    )
        torch.cuda.empty_cache()
    (out / "tune_ceilings.json").write_text(
        json.dumps(
            ceil
            | {
                "elapsed_s": time.time() - t_start,
                "device": torch.cuda.get_device_name(),
                "torch": torch.__version__,
                "triton": triton.__version__,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
