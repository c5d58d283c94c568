"""Fused MoE experts in Triton: block-aligned tokens, gate/up GEMM + SiLU·mul, down GEMM + weight.

Two launches over the layout of ``align.moe_align_block_size`` (every BLOCK_M sorted rows belong
to one expert):

1. ``_gate_up_silu_kernel``: H[a] = silu(x[t] Wg[e]ᵀ) ⊙ (x[t] Wu[e]ᵀ) for each assignment a = t·K + k,
   both halves accumulated in one program so the activation never leaves the chip;
2. ``_down_weight_kernel``: Y[a] = w[a] · (H[a] W2[e]ᵀ).

The combine back to token order is a deterministic reduction, y[t] = Σ_k Y[t·K + k] (a sum over
a [T, K, D] view, fixed order), not atomics: results are bit-identical run to run.

T = tokens, D = hidden, I = intermediate, E = local experts, K = top-k, A = T·K, BM = BLOCK_M.
Weights use the (out_features, in_features) layout: w13 [E, 2I, D], w2 [E, D, I].

On CPU this only runs through Triton's interpreter: set ``TRITON_INTERPRET=1`` before this
module is imported (the interpreter handles float32/float16; its bfloat16 arithmetic is wrong).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from moesim.kernels.align import moe_align_block_size
from moesim.kernels.configs import TileConfig, pick_config


@triton.jit
def _gate_up_silu_kernel(
    x_ptr, w13_ptr, h_ptr, sorted_ids_ptr, block_expert_ptr, num_padded_ptr,
    n_assign, inter, hidden,
    stride_xt, stride_xd, stride_we, stride_wn, stride_wk, stride_ha, stride_hi,
    TOP_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    FP32_IEEE: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    num_pid_n = tl.cdiv(inter, BLOCK_N)
    pid_m = pid // num_pid_n
    pid_n = pid % num_pid_n
    if pid_m * BLOCK_M >= tl.load(num_padded_ptr):
        return
    expert = tl.load(block_expert_ptr + pid_m).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    assign = tl.load(sorted_ids_ptr + offs_m)  # [BM]; n_assign marks padding
    row_ok = assign < n_assign
    token = (assign // TOP_K).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = offs_n < inter
    offs_k = tl.arange(0, BLOCK_K)
    x_ptrs = x_ptr + token[:, None] * stride_xt + offs_k[None, :] * stride_xd  # [BM, BK]
    w_base = w13_ptr + expert * stride_we + offs_k[:, None] * stride_wk
    wg_ptrs = w_base + offs_n[None, :].to(tl.int64) * stride_wn  # [BK, BN] gate rows
    wu_ptrs = w_base + (offs_n[None, :] + inter).to(tl.int64) * stride_wn  # up rows
    acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, tl.cdiv(hidden, BLOCK_K)):
        k_ok = offs_k < hidden - k0 * BLOCK_K
        xt = tl.load(x_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        wg = tl.load(wg_ptrs, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        wu = tl.load(wu_ptrs, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        if FP32_IEEE:
            acc_g = tl.dot(xt, wg, acc_g, input_precision="ieee")
            acc_u = tl.dot(xt, wu, acc_u, input_precision="ieee")
        else:
            acc_g = tl.dot(xt, wg, acc_g)
            acc_u = tl.dot(xt, wu, acc_u)
        x_ptrs += BLOCK_K * stride_xd
        wg_ptrs += BLOCK_K * stride_wk
        wu_ptrs += BLOCK_K * stride_wk
    h = acc_g * tl.sigmoid(acc_g) * acc_u  # silu(gate) * up, in fp32
    h_ptrs = h_ptr + assign[:, None].to(tl.int64) * stride_ha + offs_n[None, :] * stride_hi
    tl.store(h_ptrs, h.to(h_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _down_weight_kernel(
    h_ptr, w2_ptr, y_ptr, weight_ptr, sorted_ids_ptr, block_expert_ptr, num_padded_ptr,
    n_assign, hidden, inter,
    stride_ha, stride_hi, stride_we, stride_wn, stride_wk, stride_ya, stride_yd,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    FP32_IEEE: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    num_pid_n = tl.cdiv(hidden, BLOCK_N)
    pid_m = pid // num_pid_n
    pid_n = pid % num_pid_n
    if pid_m * BLOCK_M >= tl.load(num_padded_ptr):
        return
    expert = tl.load(block_expert_ptr + pid_m).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    assign = tl.load(sorted_ids_ptr + offs_m)
    row_ok = assign < n_assign
    assign64 = assign.to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = offs_n < hidden
    offs_k = tl.arange(0, BLOCK_K)
    h_ptrs = h_ptr + assign64[:, None] * stride_ha + offs_k[None, :] * stride_hi  # [BM, BK]
    w_ptrs = (
        w2_ptr + expert * stride_we + offs_k[:, None] * stride_wk
        + offs_n[None, :].to(tl.int64) * stride_wn
    )  # [BK, BN]  # fmt: skip
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, tl.cdiv(inter, BLOCK_K)):
        k_ok = offs_k < inter - k0 * BLOCK_K
        ht = tl.load(h_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        wt = tl.load(w_ptrs, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        if FP32_IEEE:
            acc = tl.dot(ht, wt, acc, input_precision="ieee")
        else:
            acc = tl.dot(ht, wt, acc)
        h_ptrs += BLOCK_K * stride_hi
        w_ptrs += BLOCK_K * stride_wk
    weight = tl.load(weight_ptr + assign64, mask=row_ok, other=0.0).to(tl.float32)
    y = acc * weight[:, None]
    y_ptrs = y_ptr + assign64[:, None] * stride_ya + offs_n[None, :] * stride_yd
    tl.store(y_ptrs, y.to(y_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


def interpreter_active() -> bool:
    """True when Triton's interpreter is on (``TRITON_INTERPRET=1`` when the kernels were built)."""
    return type(_gate_up_silu_kernel).__name__ == "InterpretedFunction"


def fused_moe(
    x: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    *,
    config: TileConfig | None = None,
    all_local: bool | None = None,
) -> torch.Tensor:
    """MoE experts for x [T, D] → [T, D] (same contract as ``reference.moe_loop``).

    ``topk_ids`` [T, K] holds local expert ids or -1 (not on this GPU, contributes nothing).
    ``all_local=True`` promises there is no -1, which saves zeroing the [A, D] buffer; when
    None it is checked on CPU and assumed False elsewhere (checking would synchronise).
    On a GPU nothing synchronises with the host, so the call can be captured in a CUDA graph.
    """
    if x.device.type == "cpu" and not interpreter_active():
        raise RuntimeError(
            "the Triton MoE kernel needs a GPU, or TRITON_INTERPRET=1 set before "
            "moesim.kernels.fused_moe is imported"
        )
    n_tokens, hidden = x.shape
    num_experts, two_inter, _ = w13.shape
    inter = two_inter // 2
    top_k = topk_ids.shape[1]
    n_assign = n_tokens * top_k
    if config is None:
        config = pick_config(n_assign / max(num_experts, 1), inter, hidden)
    out_dtype = x.dtype
    if n_assign == 0:
        return torch.zeros_like(x)
    align = moe_align_block_size(topk_ids, num_experts, config.block_m)
    fp32_ieee = x.dtype == torch.float32
    h = torch.empty(n_assign, inter, dtype=x.dtype, device=x.device)  # [A, I]
    # Non-local assignments are never written by the kernels, so Y starts at zero only then.
    if all_local is None:
        all_local = topk_ids.device.type == "cpu" and bool((topk_ids >= 0).all())
    y = (torch.empty if all_local else torch.zeros)(
        n_assign, hidden, dtype=out_dtype, device=x.device
    )  # [A, D]
    n_blocks = align.block_expert.numel()
    grid_up = (n_blocks * triton.cdiv(inter, config.block_n_up),)
    _gate_up_silu_kernel[grid_up](
        x, w13, h, align.sorted_ids, align.block_expert, align.num_padded,
        n_assign, inter, hidden,
        x.stride(0), x.stride(1), w13.stride(0), w13.stride(1), w13.stride(2),
        h.stride(0), h.stride(1),
        TOP_K=top_k, BLOCK_M=config.block_m, BLOCK_N=config.block_n_up,
        BLOCK_K=config.block_k_up, FP32_IEEE=fp32_ieee,
        num_warps=config.num_warps, num_stages=config.num_stages,
    )  # fmt: skip
    weights = topk_weights.reshape(-1).contiguous()
    grid_down = (n_blocks * triton.cdiv(hidden, config.block_n_down),)
    _down_weight_kernel[grid_down](
        h, w2, y, weights, align.sorted_ids, align.block_expert, align.num_padded,
        n_assign, hidden, inter,
        h.stride(0), h.stride(1), w2.stride(0), w2.stride(1), w2.stride(2),
        y.stride(0), y.stride(1),
        BLOCK_M=config.block_m, BLOCK_N=config.block_n_down, BLOCK_K=config.block_k_down,
        FP32_IEEE=fp32_ieee, num_warps=config.num_warps, num_stages=config.num_stages,
    )  # fmt: skip
    # Deterministic combine: fixed-order sum over the K choices of each token.
    return y.view(n_tokens, top_k, hidden).sum(dim=1, dtype=torch.float32).to(out_dtype)
