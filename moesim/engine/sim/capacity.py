"""How many tokens of KV cache one engine instance holds: the memory the simulator admits into.

Free memory per GPU of the fullest stage = usable capacity (``hw.hbm_capacity_bytes`` x the
layout's ``memory_utilization``, vLLM's ``gpu_memory_utilization``) - weights - activations of
the largest step, all from :func:`moesim.engine.memory.memory_per_gpu`; divided by the KV bytes
one token takes on that GPU, times the ``dp`` attention-DP groups (each holds its own
sequences). The engine then pages it in blocks of ``block_size`` tokens (vLLM
PagedAttention, Kwon et al. SOSP'23).
"""

from __future__ import annotations

import numpy as np


def kv_cache_tokens(model, hw, layout, *, max_num_batched_tokens: int, max_num_seqs: int) -> int:
    """Tokens of KV cache one instance of ``layout`` holds once its weights and activations are
    placed (0 when they do not fit)."""
    dp = float(np.max(layout.arr("dp")))
    seqs = max(max_num_seqs / dp, 1.0)
    from moesim.engine.memory import memory_per_gpu

    weights, kv, act = memory_per_gpu(model, hw, layout, seqs, 1.0, max_num_batched_tokens / dp)
    per_token = float(np.max(kv)) / seqs  # bytes of one token's KV on one GPU
    usable = hw.hbm_capacity_bytes * layout.memory_utilization
    free = usable - float(np.max(weights)) - float(np.max(act))
    if per_token <= 0 or free <= 0:
        return 0
    return int(np.floor(free / per_token)) * int(dp)


def kv_bytes_per_token(model, hw, layout) -> float:
    """KV bytes one token takes on one GPU of the fullest stage (for occupancy in bytes)."""
    from moesim.engine.memory import memory_per_gpu

    _, kv, _ = memory_per_gpu(model, hw, layout, 1.0, 1.0, 1.0)
    return float(np.max(kv))
