"""One real decoder layer, timed end to end: RMSNorm → attention → RMSNorm → MoE, residuals.

B = batch, L = new tokens per sequence (1 in decode), C = cached context, D = hidden,
H / G = query / KV heads, d = head dim, E = global experts, E_loc = experts on this GPU,
K = top-k, I = expert intermediate size.

Attention is GQA through SDPA with plain (RoPE-free) projections: rotary embeddings cost little
and do not change the shapes. The router is softmax → top-k → renormalise; the experts run
through one of the MoE implementations (Triton kernel on CUDA, grouped_mm, loop). Weights are
random. For DeepSeek-V3 this is a *DeepSeek-V3-shaped* layer: its MoE exactly (256 experts,
top-8, I = 2048, one shared expert, sliced to the 32 experts of one EP8 GPU: choices of other
GPUs' experts contribute nothing here), with a GQA stand-in for MLA (128 query heads, 2 KV
heads of 128: 1024 cache bytes per token, near MLA's 576 latent values = 1152 bytes).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F

from moesim.profile.case import Case, Context
from moesim.profile.harness import bench
from moesim.profile.shapes import MODELS
from moesim.profile.tensors import DTYPES, randn, relative_error

BUDGET_S = {"cuda": 60.0, "cpu": 40.0}


@dataclass(frozen=True)
class LayerDims:
    hidden: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    experts: int  # global routed experts
    local_experts: int
    top_k: int
    intermediate: int  # per routed expert
    shared_intermediate: int = 0  # shared experts' total intermediate size (0: none)
    rms_eps: float = 1e-6

    @classmethod
    def from_dict(cls, cfg: dict[str, int], *, ep: int | None = None) -> LayerDims:
        """From Hugging Face config.json names (dict); ``ep`` slices the experts (EP degree)."""
        experts = int(
            cfg.get("num_local_experts") or cfg.get("n_routed_experts") or cfg.get("num_experts")
        )
        ep = ep or int(cfg.get("ep", 1))
        if experts % ep:
            raise ValueError(f"{experts} experts do not split over EP={ep}")
        hidden, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
        inter = int(cfg.get("moe_intermediate_size") or cfg["intermediate_size"])
        return cls(
            hidden=hidden,
            num_heads=heads,
            num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or hidden // heads),
            experts=experts,
            local_experts=experts // ep,
            top_k=int(cfg["num_experts_per_tok"]),
            intermediate=inter,
            shared_intermediate=int(cfg.get("n_shared_experts") or 0) * inter,
        )

    @classmethod
    def from_spec(cls, spec: Any, *, ep: int = 1) -> LayerDims:
        """From any object with Hugging Face attribute names (a config or a ModelSpec)."""
        names = [
            "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim",
            "num_local_experts", "n_routed_experts", "num_experts", "num_experts_per_tok",
            "moe_intermediate_size", "intermediate_size", "n_shared_experts",
        ]  # fmt: skip
        cfg = {n: getattr(spec, n) for n in names if getattr(spec, n, None) is not None}
        return cls.from_dict(cfg, ep=ep)


def layer_models() -> dict[str, LayerDims]:
    """The three MoE layers profiled (DeepSeek-V3 with its GQA stand-in, see module doc)."""
    dsv3 = {**MODELS["deepseek-v3"], "num_key_value_heads": 2}
    return {
        "mixtral-8x7b": LayerDims.from_dict(MODELS["mixtral-8x7b"]),
        "deepseek-v3-shaped": LayerDims.from_dict(dsv3),
        "qwen3-30b-a3b": LayerDims.from_dict(MODELS["qwen3-30b-a3b"]),
    }


def shrink(dims: LayerDims, factor: int = 16) -> LayerDims:
    """A CPU-sized layer: hidden and intermediate / factor, heads / 8 (d = 64), same experts."""
    heads = max(2, dims.num_heads // 8)
    return replace(
        dims,
        hidden=dims.hidden // factor,
        num_heads=heads,
        num_kv_heads=max(1, dims.num_kv_heads // 8),
        head_dim=64,
        intermediate=dims.intermediate // factor,
        shared_intermediate=dims.shared_intermediate // factor,
    )


def make_weights(dims: LayerDims, dtype: torch.dtype, device: str) -> dict[str, torch.Tensor]:
    """Random weights in (out_features, in_features) layout, scaled by 1/√fan_in."""
    d, hd, i = dims.hidden, dims.head_dim, dims.intermediate

    def lin(n_out: int, n_in: int, *lead: int) -> torch.Tensor:
        return randn(*lead, n_out, n_in, dtype=dtype, device=device, scale=n_in**-0.5)

    w = {
        "norm1": 1 + 0.1 * randn(d, dtype=dtype, device=device),
        "norm2": 1 + 0.1 * randn(d, dtype=dtype, device=device),
        "wq": lin(dims.num_heads * hd, d),
        "wk": lin(dims.num_kv_heads * hd, d),
        "wv": lin(dims.num_kv_heads * hd, d),
        "wo": lin(d, dims.num_heads * hd),
        "router": lin(dims.experts, d),
        "w13": lin(2 * i, d, dims.local_experts),  # [E_loc, 2I, D]
        "w2": lin(d, i, dims.local_experts),  # [E_loc, D, I]
    }
    if dims.shared_intermediate:
        w["shared_w13"] = lin(2 * dims.shared_intermediate, d)
        w["shared_w2"] = lin(d, dims.shared_intermediate)
    return w


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * weight


def route_tokens(h: torch.Tensor, router: torch.Tensor, dims: LayerDims):
    """Softmax over all E experts, top-K, renormalised; non-local choices become -1."""
    probs = (h @ router.t()).float().softmax(-1)  # [T, E]
    weights, ids = probs.topk(dims.top_k, dim=-1)  # [T, K]
    weights = weights / weights.sum(-1, keepdim=True)
    if dims.local_experts < dims.experts:
        ids = torch.where(ids < dims.local_experts, ids, torch.full_like(ids, -1))
    return ids, weights


def decoder_layer(x, w, kv, dims: LayerDims, moe_fn) -> torch.Tensor:
    """x [B, L, D] → [B, L, D]. ``kv`` = (k_cache, v_cache) [B, G, C+1, d] in decode, else None."""
    b, seq, d = x.shape
    h, g, hd = dims.num_heads, dims.num_kv_heads, dims.head_dim
    a = rms_norm(x, w["norm1"], dims.rms_eps)
    q = (a @ w["wq"].t()).view(b, seq, h, hd).transpose(1, 2)  # [B, H, L, d]
    k = (a @ w["wk"].t()).view(b, seq, g, hd).transpose(1, 2)  # [B, G, L, d]
    v = (a @ w["wv"].t()).view(b, seq, g, hd).transpose(1, 2)
    if kv is None:
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    else:
        k_cache, v_cache = kv
        k_cache[:, :, -1:] = k  # the new token's slot; the cache holds C earlier tokens
        v_cache[:, :, -1:] = v
        attn = F.scaled_dot_product_attention(q, k_cache, v_cache, enable_gqa=True)
    x = x + attn.transpose(1, 2).reshape(b, seq, h * hd) @ w["wo"].t()
    m = rms_norm(x, w["norm2"], dims.rms_eps).reshape(b * seq, d)  # [T, D]
    ids, weights = route_tokens(m, w["router"], dims)
    y = moe_fn(m, w["w13"], w["w2"], ids, weights)
    if "shared_w13" in w:
        gu = m @ w["shared_w13"].t()
        si = dims.shared_intermediate
        y = y + (F.silu(gu[:, :si]) * gu[:, si:]) @ w["shared_w2"].t()
    return x + y.view(b, seq, d)


def layer_cost(dims: LayerDims, batch: int, seq: int, ctx_len: int, nbytes: int):
    """(FLOPs, bytes of weights + KV cache read) of one call; prefill has ctx_len = 0.

    Expected active local experts for uniform routing: E_loc·(1 − (1 − K/E)^T).
    """
    d, h, g, hd = dims.hidden, dims.num_heads, dims.num_kv_heads, dims.head_dim
    tokens = batch * seq
    proj = 2 * tokens * d * hd * (2 * h + 2 * g)  # Q, K, V, O projections
    core = 4 * tokens * h * hd * (ctx_len + seq / 2)  # QKᵀ and PV, causal within the new tokens
    local_assign = tokens * dims.top_k * dims.local_experts / dims.experts
    experts = 2 * local_assign * d * dims.intermediate * 3 + 2 * tokens * d * dims.experts
    shared = 2 * tokens * d * dims.shared_intermediate * 3
    active = dims.local_experts * (1 - (1 - dims.top_k / dims.experts) ** tokens)
    weight_bytes = nbytes * (
        d * hd * (2 * h + 2 * g) + dims.experts * d + active * 3 * d * dims.intermediate
        + 3 * d * dims.shared_intermediate
    )  # fmt: skip
    kv_bytes = 2 * batch * g * hd * ctx_len * nbytes
    return int(proj + core + experts + shared), int(weight_bytes + kv_bytes)


def cases(ctx: Context) -> list[Case]:
    dtype = "bf16" if ctx.device == "cuda" else "fp32"
    if ctx.device == "cuda":
        decode = [(1, 1024), (32, 1024)] if ctx.quick else [(1, 4096), (16, 4096), (64, 4096), (256, 4096)]  # fmt: skip
        prefill = [(1, 512)] if ctx.quick else [(1, 2048), (4, 2048)]
        # triton_graph: the same layer replayed as a CUDA graph, as serving engines run decode;
        # the eager rows are bound by host launches of the ~70 torch ops at small batch.
        impls = ("triton_graph", "triton", "grouped_mm", "loop")
    else:
        decode = [(1, 256), (8, 256)] if ctx.quick else [(1, 512), (8, 512), (32, 512)]
        prefill = [(1, 128)] if ctx.quick else [(1, 256), (2, 256)]
        impls = ("grouped_mm", "loop")
    nbytes = DTYPES[dtype].itemsize
    out = []
    for model, dims in layer_models().items():
        if ctx.device != "cuda":
            dims, model = shrink(dims), f"{model}/16"
        runs = [("decode", b, 1, c) for b, c in decode] + [("prefill", b, s, 0) for b, s in prefill]
        for phase, batch, seq, ctx_len in runs:
            tokens = batch * seq
            flops, hbm = layer_cost(dims, batch, seq, ctx_len, nbytes)
            n = f"c{ctx_len}" if phase == "decode" else f"l{seq}"
            params = {
                "model": model, "phase": phase, "batch": batch, "seq_len": seq,
                "context_len": ctx_len, "tokens": tokens, "hidden": dims.hidden,
                "experts": dims.experts, "local_experts": dims.local_experts, "top_k": dims.top_k,
                "intermediate": dims.intermediate, "num_heads": dims.num_heads,
                "num_kv_heads": dims.num_kv_heads, "head_dim": dims.head_dim,
                "flops": flops, "hbm_bytes": hbm, "_dims": dims,
            }  # fmt: skip
            for impl in impls:
                key = f"{model}_{phase}_b{batch}_{n}"
                out.append(Case("layer", impl, dtype, key, params, _run))
    return out


def _run(case: Case, ctx: Context) -> dict[str, Any]:
    from moesim.profile.moe import moe_impl

    p, dev, dtype = case.params, ctx.device, DTYPES[case.dtype]
    dims: LayerDims = p["_dims"]
    moe_fn, path = moe_impl(case.impl, dev)
    ref_fn, _ = moe_impl("loop", dev)
    b, seq, c = p["batch"], p["seq_len"], p["context_len"]
    decode = p["phase"] == "decode"

    def make_inputs():
        x = randn(b, seq, dims.hidden, dtype=dtype, device=dev)
        kv = None
        if decode:
            shape = (b, dims.num_kv_heads, c + 1, dims.head_dim)
            kv = (randn(*shape, dtype=dtype, device=dev), randn(*shape, dtype=dtype, device=dev))
        return x, make_weights(dims, dtype, dev), kv

    def fn(x, w, kv):
        return decoder_layer(x, w, kv, dims, moe_fn)

    def check(out, inputs):
        if case.impl == "loop":  # the reference itself: only require a finite output
            return relative_error(out, out)
        return relative_error(out, decoder_layer(*inputs, dims, ref_fn))

    tol = 1e-3 if dtype == torch.float32 else 2e-2
    graph = case.impl == "triton_graph"
    settings = replace(ctx.settings, graph_below_s=float("inf")) if graph else ctx.settings
    timing = bench(fn, make_inputs, settings, check=check, tol=tol, graphable=graph)
    if graph and timing.timing_method != "cuda_graph":
        raise RuntimeError("CUDA-graph capture of the decoder layer failed")
    return {**timing.as_row(), "impl_path": path}
