"""GEMM sweep: y[M, N] = x[M, K] · W[N, K]ᵀ at the projection shapes of real models.

bf16 through ``torch.matmul`` (cuBLAS) and, where the GPU has fp8 tensor cores (sm89+),
float8_e4m3 through ``torch._scaled_mm`` with per-tensor scales and bf16 output; fp32 on CPU.
FLOPs = 2·M·N·K; HBM bytes = each operand read once and the output written once.
"""

from __future__ import annotations

from typing import Any

import torch

from moesim.profile.case import Case, Context, SkipCase
from moesim.profile.harness import bench
from moesim.profile.shapes import GEMM_FAMILIES, GEMM_M_LISTS, GEMM_M_QUICK
from moesim.profile.tensors import DTYPES, TOLERANCE, quantize_fp8, randn, relative_error

BUDGET_S = {"cuda": 120.0, "cpu": 60.0}
ELEMENT_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8_e4m3": 1}


def gemm_dtypes(ctx: Context) -> list[str]:
    if ctx.device != "cuda":
        return ["fp32"]
    fp8 = ctx.capability is not None and ctx.capability >= (8, 9) and hasattr(torch, "_scaled_mm")
    return ["bf16", "fp8_e4m3"] if fp8 and "fp8_e4m3" in DTYPES else ["bf16"]


def gemm_shapes(ctx: Context) -> list[tuple[str, int, int, int]]:
    """(family, M, N, K), each (M, N, K) once; on CPU only shapes a few cores finish quickly."""
    shapes, seen = [], set()
    for i, (family, n, k) in enumerate(GEMM_FAMILIES):
        if ctx.device == "cuda":
            ms = GEMM_M_QUICK if ctx.quick else GEMM_M_LISTS[i % len(GEMM_M_LISTS)]
        else:
            if n * k > (12 if ctx.quick else 40) * 2**20:
                continue
            ms = GEMM_M_QUICK if ctx.quick else [1, 16, 128, 512]
        for m in ms:
            if (m, n, k) not in seen:
                seen.add((m, n, k))
                shapes.append((family, m, n, k))
    return shapes


def cases(ctx: Context) -> list[Case]:
    out = []
    for dtype in gemm_dtypes(ctx):
        in_b = ELEMENT_BYTES[dtype]
        out_b = 2 if dtype == "fp8_e4m3" else in_b
        impl = "scaled_mm" if dtype == "fp8_e4m3" else "matmul"
        for family, m, n, k in gemm_shapes(ctx):
            params = {
                "m": m, "n": n, "k": k, "family": family,
                "scaling": "per_tensor" if dtype == "fp8_e4m3" else "",
                "flops": 2 * m * n * k,
                "hbm_bytes": (m * k + n * k) * in_b + m * n * out_b,
            }  # fmt: skip
            out.append(Case("gemm", impl, dtype, f"m{m}_n{n}_k{k}", params, _run))
    return out


def _run(case: Case, ctx: Context) -> dict[str, Any]:
    m, n, k = case.params["m"], case.params["n"], case.params["k"]
    dev = ctx.device
    if case.dtype == "fp8_e4m3":
        if dev != "cuda":
            raise SkipCase("fp8 GEMMs are measured on GPUs only")

        def make_inputs():
            a8, sa = quantize_fp8(torch.randn(m, k, device=dev))
            w8, sw = quantize_fp8(torch.randn(n, k, device=dev))
            return a8, w8, sa, sw

        def fn(a8, w8, sa, sw):
            # cuBLASLt fp8 wants A row-major and B column-major: pass Wᵀ as a view.
            return torch._scaled_mm(a8, w8.t(), scale_a=sa, scale_b=sw, out_dtype=torch.bfloat16)

        def check(out, inputs):
            a8, w8, sa, sw = inputs
            rows = torch.randperm(m, device=dev)[:64]
            ref = (a8[rows].float() * sa) @ (w8.float() * sw).t()
            return relative_error(out[rows], ref)

    else:
        dtype = DTYPES[case.dtype]

        def make_inputs():
            return randn(m, k, dtype=dtype, device=dev), randn(
                n, k, dtype=dtype, device=dev, scale=k**-0.5
            )

        def fn(a, w):
            return a @ w.t()

        def check(out, inputs):
            a, w = inputs
            rows = torch.randperm(m, device=dev)[:64]
            ref = a[rows].double() @ w.double().t()
            return relative_error(out[rows], ref)

    timing = bench(
        fn, make_inputs, ctx.settings, check=check, tol=TOLERANCE[case.dtype], graphable=True
    )
    return timing.as_row()
