"""Token permute / unpermute: the dispatch and combine of MoE tokens within one GPU.

T = tokens, K = top-k, D = hidden, A = T·K. ``permute`` gathers each token's hidden state once
per chosen expert, in expert order (``index_select``). ``unpermute`` scales each expert output
by its router weight and adds it back to its token (``index_add_`` into a zeroed [T, D]).
hbm_bytes is the floor, the fewest bytes the operation must move: permute A·D read + A·D
written; unpermute A·D read + T·D written; plus int64 indices (and weights). The eager torch
code moves more (the zero fill, the weighted temporary), which the fitted efficiency absorbs.
"""

from __future__ import annotations

from typing import Any

import torch

from moesim.kernels.routing import route
from moesim.profile.case import Case, Context
from moesim.profile.harness import bench
from moesim.profile.tensors import DTYPES, TOLERANCE, randn, relative_error

BUDGET_S = {"cuda": 20.0, "cpu": 15.0}
EXPERTS = 64


def cases(ctx: Context) -> list[Case]:
    dtype = "bf16" if ctx.device == "cuda" else "fp32"
    nbytes = DTYPES[dtype].itemsize
    if ctx.device == "cuda":
        tokens = [64, 1024, 8192] if ctx.quick else [16, 128, 1024, 4096, 16384, 32768]
        shapes = [(t, h, k) for t in tokens for h, k in ((4096, 2), (7168, 8), (2048, 8))]
    else:
        tokens = [64, 512] if ctx.quick else [64, 512, 4096]
        shapes = [(t, h, k) for t in tokens for h, k in ((512, 2), (1024, 8))]
    out = []
    for t, h, k in shapes:
        a = t * k
        base = {"tokens": t, "hidden": h, "top_k": k, "experts": EXPERTS, "flops": 0}
        key = f"t{t}_h{h}_k{k}"
        perm = {**base, "hbm_bytes": 2 * a * h * nbytes + a * 8}
        unperm = {**base, "hbm_bytes": (a + t) * h * nbytes + a * (8 + nbytes)}
        out.append(Case("permute", "permute_index_select", dtype, key, perm, _run))
        out.append(Case("permute", "unpermute_index_add", dtype, key, unperm, _run))
    return out


def _run(case: Case, ctx: Context) -> dict[str, Any]:
    p, dev, dtype = case.params, ctx.device, DTYPES[case.dtype]
    t, h, k = p["tokens"], p["hidden"], p["top_k"]
    ids, weights = route(t, EXPERTS, k, "uniform", device=dev)
    order = torch.sort(ids.reshape(-1), stable=True).indices  # [A] assignments by expert
    token = order // k  # [A] source token of each sorted row
    w_sorted = weights.reshape(-1)[order].to(dtype)

    if case.impl == "permute_index_select":

        def make_inputs():
            return (randn(t, h, dtype=dtype, device=dev),)

        def fn(x):
            return x.index_select(0, token)  # [A, D]

        def check(out, inputs):
            return relative_error(out, inputs[0].double()[token])

    else:

        def make_inputs():
            return (randn(t * k, h, dtype=dtype, device=dev),)

        def fn(y):
            out = torch.zeros(t, h, dtype=dtype, device=dev)
            return out.index_add_(0, token, y * w_sorted[:, None])  # [T, D]

        def check(out, inputs):
            (y,) = inputs
            ref = torch.zeros(t, h, dtype=torch.float64, device=dev)
            ref.index_add_(0, token, y.double() * w_sorted.double()[:, None])
            return relative_error(out, ref)

    return bench(
        fn, make_inputs, ctx.settings, check=check, tol=TOLERANCE[case.dtype], graphable=True
    ).as_row()
