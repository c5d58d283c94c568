"""The reference MoE expert computation: a Python loop over experts, in plain PyTorch.

T = tokens, D = hidden, I = expert intermediate size, E = local experts, K = top-k.
Weights use the Hugging Face / vLLM layout (out_features, in_features):
w13 [E, 2I, D] holds gate rows [0, I) and up rows [I, 2I); w2 [E, D, I].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def moe_loop(
    x: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    *,
    compute_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """y[t] = Σ_k w[t,k] · W2[e] (silu(Wg[e] x[t]) ⊙ Wu[e] x[t]), e = topk_ids[t,k] (≠ -1).

    ``compute_dtype`` upcasts each expert's weights as it is used (float64 for a test reference,
    float32 for a cheap check of a bf16 kernel); the result is returned in that dtype.
    """
    dtype = compute_dtype or x.dtype
    n_tokens, hidden = x.shape
    inter = w2.shape[-1]
    out = torch.zeros(n_tokens, hidden, dtype=dtype, device=x.device)  # [T, D]
    xc = x.to(dtype)
    for e in torch.unique(topk_ids[topk_ids >= 0]).tolist():
        tok, slot = torch.nonzero(topk_ids == e, as_tuple=True)  # assignments to expert e
        w13_e = w13[e].to(dtype)
        gate_up = xc[tok] @ w13_e.t()  # [n_e, 2I]
        h = F.silu(gate_up[:, :inter]) * gate_up[:, inter:]  # [n_e, I]
        y = h @ w2[e].to(dtype).t()  # [n_e, D]
        out.index_add_(0, tok, y * topk_weights[tok, slot].to(dtype)[:, None])
    return out.to(dtype)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ in float64; inf when ``out`` holds NaN/inf; 0 when both are empty."""
    out64, ref64 = out.detach().to(torch.float64), ref.detach().to(torch.float64)
    if not torch.isfinite(out64).all():
        return float("inf")
    ref_norm = float(ref64.norm())
    diff = float((out64 - ref64).norm())
    if ref_norm == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / ref_norm
