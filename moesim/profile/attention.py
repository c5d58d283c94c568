"""Attention: causal prefill through SDPA, and decode of one query token against a KV cache.

B = batch, L = sequence length (prefill), C = context length (decode), H = query heads,
G = KV heads (GQA), d = head dim.
Prefill FLOPs = 2 matmuls · 2·B·H·L²·d, halved by the causal mask; bytes = Q, K, V read once
and O written once. Decode FLOPs = 4·B·H·C·d; bytes ≈ the K and V caches read once
(2·B·G·C·d) plus Q and O. Prefill records which SDPA backend ran (flash, efficient, cudnn,
math): each is tried in that order, alone, and the first that accepts the inputs is timed.
Decode has two impls: ``sdpa`` (SDPA with enable_gqa) and ``bmm`` (batched matmuls over a
[B, G, C, d] cache, query heads grouped per KV head).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from moesim.profile.case import Case, Context
from moesim.profile.harness import bench
from moesim.profile.tensors import DTYPES, TOLERANCE, randn, relative_error

BUDGET_S = {"cuda": 45.0, "cpu": 30.0}
# (H, G, d): Llama-70B / Mixtral-style GQA per GPU at TP1 and TP8, and Qwen3-30B-A3B.
HEAD_CONFIGS = [(64, 8, 128), (8, 1, 128), (32, 4, 128)]


def cases(ctx: Context) -> list[Case]:
    dtype = "bf16" if ctx.device == "cuda" else "fp32"
    nbytes = DTYPES[dtype].itemsize
    if ctx.device == "cuda":
        prefill = (
            [(1, 512), (1, 2048), (4, 2048)]
            if ctx.quick
            else [(1, 512), (1, 2048), (1, 8192), (4, 1024), (4, 4096), (16, 1024), (16, 2048)]
        )
        decode = (
            [(1, 1024), (32, 4096)]
            if ctx.quick
            else [(b, c) for b in (1, 8, 32, 128) for c in (1024, 4096, 16384) if b * c <= 2**20]
        )
        heads = HEAD_CONFIGS[:1] if ctx.quick else HEAD_CONFIGS
    else:
        prefill = [(1, 128), (2, 256)] if ctx.quick else [(1, 256), (2, 512), (1, 1024)]
        decode = [(1, 512), (8, 1024)] if ctx.quick else [(1, 1024), (8, 2048), (32, 1024)]
        heads = [(8, 2, 64)] if ctx.quick else [(8, 2, 64), (16, 4, 128)]
    out = []
    for h, g, d in heads:
        for b, seq in prefill:
            flops = 4 * b * h * seq * seq * d // 2
            hbm = b * seq * d * (2 * h + 2 * g) * nbytes
            params = _params(b, seq, 0, h, g, d, True, flops, hbm)
            key = f"b{b}_l{seq}_h{h}_g{g}_d{d}_causal"
            out.append(Case("attention_prefill", "sdpa", dtype, key, params, _run_prefill))
        for b, ctx_len in decode:
            flops = 4 * b * h * ctx_len * d
            hbm = (2 * b * g * ctx_len * d + 2 * b * h * d) * nbytes
            params = _params(b, 1, ctx_len, h, g, d, False, flops, hbm)
            key = f"b{b}_c{ctx_len}_h{h}_g{g}_d{d}"
            for impl in ("sdpa", "bmm"):
                out.append(Case("attention_decode", impl, dtype, key, params, _run_decode))
    return out


def _params(b, seq, ctx_len, h, g, d, causal, flops, hbm) -> dict[str, Any]:
    return {
        "batch": b, "seq_len": seq, "context_len": ctx_len, "num_heads": h,
        "num_kv_heads": g, "head_dim": d, "causal": causal, "flops": flops, "hbm_bytes": hbm,
    }  # fmt: skip


def sdpa_backends(device: str) -> list[tuple[str, Any]]:
    """(name, SDPBackend) in the order tried."""
    from torch.nn.attention import SDPBackend

    names = ["FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"]
    if device != "cuda":
        names = ["FLASH_ATTENTION", "MATH"]
    return [(n.lower(), getattr(SDPBackend, n)) for n in names if hasattr(SDPBackend, n)]


def attention_reference(q, k, v, causal: bool) -> torch.Tensor:
    """Softmax(QKᵀ/√d)·V in float64 with KV heads repeated per query group. [B, H, L, d]."""
    h, g = q.shape[1], k.shape[1]
    q64, k64, v64 = q.double(), k.double(), v.double()
    k64 = k64.repeat_interleave(h // g, dim=1)
    v64 = v64.repeat_interleave(h // g, dim=1)
    scores = q64 @ k64.transpose(-2, -1) / math.sqrt(q.shape[-1])  # [B, H, Lq, Lk]
    if causal:
        lq, lk = scores.shape[-2:]
        mask = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril(lk - lq)
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(-1) @ v64


def _check_first(out, inputs, causal: bool, rows: int = 256) -> float:
    """Compare the last ``rows`` queries of batch 0, KV group 0, with the float64 reference."""
    q, k, v = inputs[:3]
    group = q.shape[1] // k.shape[1]
    ref = attention_reference(q[:1, :group, -rows:], k[:1, :1], v[:1, :1], causal)
    return relative_error(out[:1, :group, -rows:], ref)


def _run_prefill(case: Case, ctx: Context) -> dict[str, Any]:
    from torch.nn.attention import sdpa_kernel

    p, dev, dtype = case.params, ctx.device, DTYPES[case.dtype]
    b, seq, h, g, d = p["batch"], p["seq_len"], p["num_heads"], p["num_kv_heads"], p["head_dim"]

    def make_inputs():
        return (
            randn(b, h, seq, d, dtype=dtype, device=dev),
            randn(b, g, seq, d, dtype=dtype, device=dev),
            randn(b, g, seq, d, dtype=dtype, device=dev),
        )

    probe = make_inputs()
    errors = []
    for name, backend in sdpa_backends(dev):

        def fn(q, k, v, backend=backend):
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

        try:
            fn(*probe)
        except RuntimeError as exc:
            errors.append(f"{name}: {str(exc).splitlines()[0][:80]}")
            continue
        del probe
        timing = bench(
            fn, make_inputs, ctx.settings, tol=TOLERANCE[case.dtype], graphable=True,
            check=lambda out, inputs: _check_first(out, inputs, True),
        )  # fmt: skip
        return {**timing.as_row(), "backend": name}
    raise RuntimeError("no SDPA backend accepted the inputs: " + "; ".join(errors))


def decode_bmm(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> torch.Tensor:
    """One query token per sequence against a [B, G, C, d] cache; q [B, H, 1, d] → [B, H, 1, d]."""
    b, h, _, d = q.shape
    g = k_cache.shape[1]
    qg = q.reshape(b, g, h // g, d)  # query heads grouped by the KV head they share
    scores = (qg @ k_cache.transpose(-2, -1)) * d**-0.5  # [B, G, H/G, C]
    probs = scores.float().softmax(-1).to(q.dtype)
    return (probs @ v_cache).reshape(b, h, 1, d)


def _run_decode(case: Case, ctx: Context) -> dict[str, Any]:
    p, dev, dtype = case.params, ctx.device, DTYPES[case.dtype]
    b, c, h, g, d = p["batch"], p["context_len"], p["num_heads"], p["num_kv_heads"], p["head_dim"]

    def make_inputs():
        return (
            randn(b, h, 1, d, dtype=dtype, device=dev),
            randn(b, g, c, d, dtype=dtype, device=dev),
            randn(b, g, c, d, dtype=dtype, device=dev),
        )

    if case.impl == "bmm":
        fn, backend = decode_bmm, "bmm"
    else:

        def fn(q, k, v):
            return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)

        backend = "sdpa_auto"
    timing = bench(
        fn, make_inputs, ctx.settings, tol=TOLERANCE[case.dtype], graphable=True,
        check=lambda out, inputs: _check_first(out, inputs, False),
    )  # fmt: skip
    return {**timing.as_row(), "backend": backend}
