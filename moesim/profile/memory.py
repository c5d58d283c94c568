"""HBM bandwidth: device-to-device copy of 1 MB … 2 GB; bytes counted as read + written."""

from __future__ import annotations

from typing import Any

import torch

from moesim.profile.case import Case, Context
from moesim.profile.harness import bench

BUDGET_S = {"cuda": 20.0, "cpu": 20.0}
MB = 2**20


def sizes_bytes(ctx: Context) -> list[int]:
    if ctx.device == "cuda":
        mbs = [1, 4, 16] if ctx.quick else [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048]
    else:
        mbs = [1, 4, 16, 64] if ctx.quick else [1, 4, 16, 64, 256]
    return [mb * MB for mb in mbs]


def cases(ctx: Context) -> list[Case]:
    return [
        Case(
            "memory",
            "copy",
            "fp32",
            f"b{size}",
            {"bytes": size, "flops": 0, "hbm_bytes": 2 * size},
            _run,
        )  # fmt: skip
        for size in sizes_bytes(ctx)
    ]


def _run(case: Case, ctx: Context) -> dict[str, Any]:
    numel = case.params["bytes"] // 4
    dev = ctx.device

    def make_inputs():
        return torch.randn(numel, device=dev), torch.randn(numel, device=dev)

    def fn(dst, src):
        return dst.copy_(src)

    def check(out, inputs):
        dst, src = inputs
        return 0.0 if torch.equal(dst, src) else float("inf")

    return bench(fn, make_inputs, ctx.settings, check=check, graphable=True).as_row()
