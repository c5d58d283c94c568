"""Synthetic router outputs: which experts each token picks, and with what weight.

T = tokens, E = experts (global), K = top-k. Experts not held by this GPU are marked -1, the
convention every kernel in this package follows.
"""

from __future__ import annotations

import torch

ROUTINGS = ("uniform", "zipf")


def route(
    tokens: int,
    num_experts: int,
    top_k: int,
    routing: str = "uniform",
    *,
    zipf_s: float = 1.2,
    local_experts: int | None = None,
    device: str | torch.device = "cpu",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw top-k expert choices and their weights for ``tokens`` tokens.

    Parameters
    ----------
    routing : "uniform" (every expert equally likely) or "zipf" (expert of popularity rank r
        drawn with probability ∝ r^-zipf_s; ranks shuffled so the hot experts are not 0, 1, …).
    local_experts : experts ``[0, local_experts)`` live on this GPU; the other choices become -1
        (an EP slice, e.g. 32 of DeepSeek-V3's 256 experts on one of 8 GPUs).

    Returns
    -------
    topk_ids : int64 [T, K], distinct experts per token, -1 where not local.
    topk_weights : float32 [T, K], positive, each row sums to 1 over all K choices.
    """
    if routing not in ROUTINGS:
        raise ValueError(f"routing must be one of {ROUTINGS}, got {routing!r}")
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"need 1 <= top_k <= num_experts, got top_k={top_k}, E={num_experts}")
    gen = generator
    if routing == "uniform":
        log_p = torch.zeros(num_experts)
    else:
        ranks = torch.randperm(num_experts, generator=gen).to(torch.float64) + 1.0
        log_p = (-zipf_s * ranks.log()).to(torch.float32)
    # Gumbel top-k draws K distinct experts with probability ∝ p (sampling without replacement).
    u = torch.rand(tokens, num_experts, generator=gen).clamp_(1e-12, 1.0 - 1e-7)
    gumbel = -(-u.log()).log()
    topk_ids = (log_p + gumbel).topk(top_k, dim=-1).indices  # [T, K]
    logits = torch.randn(tokens, top_k, generator=gen)
    topk_weights = logits.softmax(dim=-1)  # [T, K]
    if local_experts is not None and local_experts < num_experts:
        topk_ids = torch.where(topk_ids < local_experts, topk_ids, torch.full_like(topk_ids, -1))
    return topk_ids.to(device), topk_weights.to(device)


def routing_stats(topk_ids: torch.Tensor, num_experts: int, block_m: int) -> dict[str, int]:
    """Realised load of one routing draw on this GPU's ``num_experts`` experts.

    Returns assignments (A, local token-expert pairs), n_active_experts, max_expert_tokens,
    sum_padded_tokens (Σ ceil(n_e / BM) · BM, the rows a block-aligned kernel computes) and
    local_tokens (tokens with at least one local expert).
    """
    ids = topk_ids.reshape(-1).to("cpu")
    local = ids[ids >= 0]
    counts = torch.bincount(local, minlength=num_experts)[:num_experts]
    padded = (counts + block_m - 1) // block_m * block_m
    return {
        "assignments": int(counts.sum()),
        "n_active_experts": int((counts > 0).sum()),
        "max_expert_tokens": int(counts.max()) if counts.numel() else 0,
        "sum_padded_tokens": int(padded.sum()),
        "local_tokens": int((topk_ids.to("cpu") >= 0).any(dim=-1).sum()),
    }
