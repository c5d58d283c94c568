"""MoE experts through torch's grouped GEMM, and which code path that GEMM takes here.

torch ≥ 2.13 exposes ``torch.nn.functional.grouped_mm``; 2.8–2.12 have ``torch._grouped_mm``.
On CUDA the fused CUTLASS kernel runs only for bf16 inputs and output on sm90 / sm100 (Hopper,
Blackwell); everywhere else (CPU, other GPUs, fp16/fp32) ATen falls back to a loop of ``mm``
over groups after copying the offsets to the host (aten/src/ATen/native/cuda/GroupedBlas.cpp,
``_grouped_mm_cuda``: ``use_fast_path``). Rows record the path so the two are never mixed.

T = tokens, D = hidden, I = intermediate, E = local experts, K = top-k, A = local assignments.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def grouped_mm_api() -> tuple[str, object] | None:
    """(name, function) of this torch's grouped GEMM, or None when it has none."""
    fn = getattr(F, "grouped_mm", None)
    if fn is not None:
        return "F.grouped_mm", fn
    fn = getattr(torch, "_grouped_mm", None)
    if fn is not None:
        return "torch._grouped_mm", fn
    return None


def grouped_mm_path(device: torch.device | str, dtype: torch.dtype) -> str:
    """Which implementation ``grouped_mm`` runs for ``dtype`` on ``device``.

    One of ``"none"`` (no API in this torch), ``"fused_cutlass_sm90"``, ``"fused_cutlass_sm100"``,
    ``"fallback_loop_cuda"``, ``"fallback_loop_cpu"`` (or ``fallback_loop_<device type>``).
    """
    if grouped_mm_api() is None:
        return "none"
    device = torch.device(device)
    if device.type != "cuda":
        return f"fallback_loop_{device.type}"
    if getattr(torch.version, "hip", None):
        return "fallback_loop_rocm"
    major, _ = torch.cuda.get_device_capability(device)
    if dtype == torch.bfloat16 and major in (9, 10):
        return f"fused_cutlass_sm{major}0"
    return "fallback_loop_cuda"


def moe_grouped_mm(
    x: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
) -> torch.Tensor:
    """The MoE experts as two grouped GEMMs over expert-sorted tokens (weights as in reference)."""
    api = grouped_mm_api()
    if api is None:
        raise RuntimeError(f"torch {torch.__version__} has no grouped_mm")
    _, grouped_mm = api
    n_tokens, hidden = x.shape
    num_experts, inter = w13.shape[0], w2.shape[-1]
    top_k = topk_ids.shape[1]
    flat = topk_ids.reshape(-1)  # [T·K]
    key = torch.where(flat >= 0, flat, torch.full_like(flat, num_experts))
    order = torch.sort(key, stable=True).indices  # non-local assignments sort last
    counts = torch.zeros(num_experts + 1, dtype=torch.int64, device=x.device)
    counts.scatter_add_(0, key, torch.ones_like(key))
    offs = torch.cumsum(counts[:num_experts], 0).to(torch.int32)  # end row of each expert
    out = torch.zeros(n_tokens, hidden, dtype=torch.float32, device=x.device)  # [T, D]
    n_local = int(offs[-1]) if num_experts else 0  # host sync: rows this GPU computes
    if n_local == 0:
        return out.to(x.dtype)
    order = order[:n_local]
    token = order // top_k
    xs = x.index_select(0, token)  # [A, D]
    gate_up = grouped_mm(xs, w13.transpose(-2, -1), offs=offs)  # [A, 2I]
    h = F.silu(gate_up[:, :inter]) * gate_up[:, inter:]  # [A, I]
    y = grouped_mm(h, w2.transpose(-2, -1), offs=offs)  # [A, D]
    weight = topk_weights.reshape(-1)[order].to(torch.float32)  # [A]
    out.index_add_(0, token, y.float() * weight[:, None])
    return out.to(x.dtype)
