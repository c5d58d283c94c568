"""MoE expert sweep: loop reference vs torch grouped GEMM vs our Triton fused kernel.

impls: ``loop`` (reference), ``grouped_mm`` (``impl_path`` says which API and whether the fused
CUTLASS kernel or ATen's fallback loop ran), ``triton`` (eager, CUDA events: includes the launch
gaps of its ~15 small alignment ops) and, on CUDA, ``triton_graph`` (the same, CUDA-graph replay).

Real model shapes on one GPU (Mixtral-8x7B whole; DeepSeek-V3's 256 experts sliced to the 32
of one EP8 GPU, top-8 routed over all 256; Qwen3-30B-A3B whole), tokens from 1 to 16384,
uniform and Zipf routing. On CPU the same models with hidden and intermediate sizes divided
by 16, fp32; the Triton kernel gets a ``skipped`` row there: Triton's interpreter runs it
correctly (the tests use it) but its timings say nothing about a GPU.

Each row records the realised routing: n_active_experts, max_expert_tokens and
sum_padded_tokens = Σ ceil(n_e / BM)·BM. FLOPs = 2·A·D·I·3 (gate, up, down) with A the local
assignments; weight_bytes_read = active experts · 3·D·I · bytes; hbm_bytes adds the local
tokens' activations read and written (2 · local_tokens · D · bytes).
"""

from __future__ import annotations

import zlib
from dataclasses import replace
from typing import Any

import torch

from moesim.kernels.configs import describe, pick_config
from moesim.kernels.routing import ROUTINGS, route, routing_stats
from moesim.profile.case import Case, Context, SkipCase
from moesim.profile.harness import bench
from moesim.profile.shapes import MOE_MODELS, MOE_TOKENS, moe_dims
from moesim.profile.tensors import DTYPES, TOLERANCE, randn, relative_error

BUDGET_S = {"cuda": 110.0, "cpu": 80.0}
# triton_graph: the same Triton kernel, timed by CUDA-graph replay (it never synchronises with
# the host, so it can be captured, as serving engines do in decode); the others cannot be.
IMPLS = ("loop", "grouped_mm", "triton", "triton_graph")
CPU_SHRINK = 16  # CPU sweeps divide hidden and intermediate sizes by this


def moe_shapes(ctx: Context) -> list[tuple[str, dict[str, int], list[int]]]:
    """(model label, dims, token counts) for this device."""
    out = []
    for model in MOE_MODELS:
        dims = moe_dims(model)
        if ctx.device == "cuda":
            tokens = [1, 16, 256] if ctx.quick else MOE_TOKENS
            out.append((model, dims, tokens))
        else:
            small = {
                **dims,
                "hidden": dims["hidden"] // CPU_SHRINK,
                "intermediate": dims["intermediate"] // CPU_SHRINK,
            }
            tokens = [1, 16, 128] if ctx.quick else [1, 4, 16, 64, 256, 1024]
            out.append((f"{model}/{CPU_SHRINK}", small, tokens))
    return out


def cases(ctx: Context) -> list[Case]:
    dtype = "bf16" if ctx.device == "cuda" else "fp32"
    nbytes = DTYPES[dtype].itemsize
    out = []
    for model, dims, token_counts in moe_shapes(ctx):
        e, e_glob, k = dims["experts"], dims["global_experts"], dims["top_k"]
        hidden, inter = dims["hidden"], dims["intermediate"]
        for tokens in token_counts:
            for routing in ROUTINGS:
                key = f"{model}_t{tokens}_{routing}"
                seed = zlib.crc32(key.encode())
                ids, _ = _routing(tokens, dims, routing, seed)
                # Same block size for every impl, so sum_padded_tokens is comparable across rows.
                stats0 = routing_stats(ids, e, 16)
                cfg = pick_config(stats0["assignments"] / e, inter, hidden)
                stats = routing_stats(ids, e, cfg.block_m)
                weight_bytes = stats["n_active_experts"] * 3 * hidden * inter * nbytes
                params = {
                    "model": model, "tokens": tokens, "experts": e, "global_experts": e_glob,
                    "top_k": k, "hidden": hidden, "intermediate": inter, "routing": routing,
                    "block_m": cfg.block_m, **stats,
                    "flops": 2 * stats["assignments"] * hidden * inter * 3,
                    "weight_bytes_read": weight_bytes,
                    "hbm_bytes": weight_bytes + 2 * stats["local_tokens"] * hidden * nbytes,
                    "tile_config": describe(cfg), "_seed": seed,
                }  # fmt: skip
                shape_key = f"{model}_e{e}of{e_glob}_k{k}_h{hidden}_i{inter}_t{tokens}_{routing}"
                for impl in IMPLS if ctx.device == "cuda" else IMPLS[:3]:
                    p = dict(params) if "triton" in impl else {**params, "tile_config": ""}
                    out.append(Case("grouped_gemm", impl, dtype, shape_key, p, _run))
    return out


def _routing(tokens: int, dims: dict[str, int], routing: str, seed: int):
    gen = torch.Generator().manual_seed(seed)
    return route(
        tokens, dims["global_experts"], dims["top_k"], routing,
        local_experts=dims["experts"], generator=gen,
    )  # fmt: skip


def moe_impl(impl: str, device: str):
    """(function, path description) of one MoE implementation on ``device``."""
    if impl == "loop":
        from moesim.kernels.reference import moe_loop

        return moe_loop, "torch_loop"
    if impl == "grouped_mm":
        from moesim.kernels.grouped import grouped_mm_api, moe_grouped_mm

        api = grouped_mm_api()
        if api is None:
            raise SkipCase(f"torch {torch.__version__} has no grouped_mm")
        return moe_grouped_mm, api[0]
    if impl in ("triton", "triton_graph"):
        if device != "cuda":
            raise SkipCase(
                "Triton kernel timed on GPUs only: the CPU interpreter checks correctness "
                "(tests) but its timings are not representative"
            )
        from moesim.kernels.fused_moe import fused_moe

        return fused_moe, "triton"
    raise ValueError(f"unknown MoE impl {impl!r}")


def _run(case: Case, ctx: Context) -> dict[str, Any]:
    p, dev = case.params, ctx.device
    dtype = DTYPES[case.dtype]
    fn, path = moe_impl(case.impl, dev)
    if case.impl == "grouped_mm":
        from moesim.kernels.grouped import grouped_mm_path

        path = f"{path}:{grouped_mm_path(dev, dtype)}"
    dims = {k: p[k] for k in ("experts", "global_experts", "top_k", "hidden", "intermediate")}
    ids, weights = _routing(p["tokens"], dims, p["routing"], p["_seed"])
    ids, weights = ids.to(dev), weights.to(dev)
    e, hidden, inter, tokens = p["experts"], p["hidden"], p["intermediate"], p["tokens"]
    kwargs: dict[str, Any] = {}
    if case.impl in ("triton", "triton_graph"):
        kwargs["config"] = pick_config(p["assignments"] / e, inter, hidden)
        kwargs["all_local"] = p["assignments"] == tokens * p["top_k"]

    def make_inputs():
        x = randn(tokens, hidden, dtype=dtype, device=dev)
        w13 = randn(e, 2 * inter, hidden, dtype=dtype, device=dev, scale=hidden**-0.5)
        w2 = randn(e, hidden, inter, dtype=dtype, device=dev, scale=inter**-0.5)
        return x, w13, w2

    def call(x, w13, w2):
        return fn(x, w13, w2, ids, weights, **kwargs)

    def check(out, inputs):
        from moesim.kernels.reference import moe_loop

        x, w13, w2 = inputs
        rows = torch.randperm(tokens, device=dev)[:64]
        ref = moe_loop(x[rows], w13, w2, ids[rows], weights[rows], compute_dtype=torch.float32)
        if ref.norm() == 0:  # no local expert among the sampled tokens: compare exactly
            return 0.0 if bool((out[rows] == 0).all()) else float("inf")
        return relative_error(out[rows], ref)

    settings, graph = ctx.settings, case.impl == "triton_graph"
    if graph:
        settings = replace(settings, graph_below_s=float("inf"))
    timing = bench(
        call, make_inputs, settings, check=check, tol=TOLERANCE[case.dtype], graphable=graph
    )
    if graph and timing.timing_method != "cuda_graph":
        raise RuntimeError("CUDA-graph capture of the Triton kernel failed")
    return {**timing.as_row(), "impl_path": path}
