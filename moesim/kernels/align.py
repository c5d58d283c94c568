"""Sort token-expert assignments by expert and pad each expert's run to a multiple of BLOCK_M.

The layout a block-aligned MoE kernel walks: every BLOCK_M rows of ``sorted_ids`` belong to one
expert (``block_expert``), so one program multiplies one tile of tokens by one expert's weights.
Same contract as vLLM's ``moe_align_block_size``, written here in plain torch ops with no
device-to-host synchronisation (sizes are upper bounds; the true padded length stays on the
device), so it can be captured in a CUDA graph.

A = T·K assignments, flat index a = t·K + k; E = local experts; BM = BLOCK_M.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class Alignment(NamedTuple):
    sorted_ids: torch.Tensor  # int32 [max_padded]; assignment index, or A where padding
    block_expert: torch.Tensor  # int32 [max_padded // BM]; expert of each block (E past the end)
    num_padded: torch.Tensor  # int32 [1]; Σ_e ceil(n_e / BM) · BM, on the device
    counts: torch.Tensor  # int64 [E]; n_e, assignments per local expert


def max_padded_rows(assignments: int, num_experts: int, block_m: int) -> int:
    """Upper bound of Σ ceil(n_e / BM)·BM: at most min(E, A) experts add < BM padding each."""
    bound = assignments + min(num_experts, assignments) * (block_m - 1)
    return (bound + block_m - 1) // block_m * block_m


def moe_align_block_size(topk_ids: torch.Tensor, num_experts: int, block_m: int) -> Alignment:
    """Group assignments by expert, each group padded to a multiple of ``block_m``.

    ``topk_ids`` is [T, K] with values in [0, E) or -1 (expert not on this GPU: dropped).
    Within an expert, assignments keep their original order (stable sort).
    """
    device = topk_ids.device
    flat = topk_ids.reshape(-1).to(torch.int64)  # [A]
    n_assign = flat.numel()
    # Non-local assignments (-1) get key E and sort to the end, outside every expert's run.
    key = torch.where(flat >= 0, flat, torch.full_like(flat, num_experts))
    order = torch.sort(key, stable=True).indices  # [A]
    sorted_key = key[order]
    counts_all = torch.zeros(num_experts + 1, dtype=torch.int64, device=device)
    counts_all.scatter_add_(0, key, torch.ones_like(key))
    counts = counts_all[:num_experts]
    padded = (counts + block_m - 1) // block_m * block_m  # [E]
    pad_start = torch.cumsum(padded, 0) - padded  # exclusive prefix sums
    raw_start = torch.cumsum(counts_all, 0) - counts_all
    rank = torch.arange(n_assign, device=device) - raw_start[sorted_key]
    max_rows = max_padded_rows(n_assign, num_experts, block_m)
    # Dropped assignments are written to one dump slot past the end, then sliced away.
    pad_start_all = torch.cat([pad_start, pad_start.new_full((1,), max_rows)])
    pos = torch.where(sorted_key < num_experts, pad_start_all[sorted_key] + rank, max_rows)
    sorted_ids = torch.full((max_rows + 1,), n_assign, dtype=torch.int32, device=device)
    sorted_ids.scatter_(0, pos, order.to(torch.int32))
    sorted_ids = sorted_ids[:max_rows]
    block_start = torch.arange(0, max_rows, block_m, device=device)
    block_expert = torch.searchsorted(torch.cumsum(padded, 0), block_start, right=True)
    num_padded = padded.sum().reshape(1).to(torch.int32)
    return Alignment(sorted_ids, block_expert.to(torch.int32), num_padded, counts)
