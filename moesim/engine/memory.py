"""Memory on one GPU of the fullest stage: weights, KV cache and activations, in bytes."""

from __future__ import annotations

import numpy as np

from moesim.spec.deployment import Layout
from moesim.spec.dtypes import dtype_bytes


def memory_per_gpu(model, hw, layout: Layout, seqs_per_group, context_len, max_tokens_per_step):
    """(weights, kv_cache, activations) bytes on one GPU of the fullest stage."""
    tp, ep, pp = layout.arr("tp"), layout.arr("ep"), layout.arr("pp")
    wb = dtype_bytes(layout.weight_dtype)
    kvb = dtype_bytes(layout.kv_dtype)
    ab = dtype_bytes(layout.act_dtype)
    h, L = model.hidden_size, model.num_hidden_layers
    layers_stage = np.ceil(L / pp)
    frac = layers_stage / L
    if model.is_mla:
        down = h * ((model.q_lora_rank or 0) + model.kv_lora_rank + model.qk_rope_head_dim)
        attn = down + (model.attention_params_per_layer - down) / tp  # vLLM replicates q_a / kv_a
    else:
        d, Hkv = model.attn_head_dim, model.num_key_value_heads
        kv = 2 * h * Hkv * d
        attn = (model.attention_params_per_layer - kv) / tp + kv * np.maximum(1.0 / tp, 1.0 / Hkv)
    n_moe = model.num_moe_layers if model.is_moe else 0
    per_gpu = attn * L + model.norm_params_per_layer * L
    if model.is_moe:
        slots = model.num_experts + np.asarray(layout.redundant_experts, dtype=float)
        resident = 1.0 - np.asarray(layout.offload_fraction, dtype=float)
        experts = slots / ep * model.expert_params / layout.moe_tp * resident
        per_gpu = per_gpu + n_moe * (
            experts + model.router_params_per_layer + model.shared_expert_params_per_layer / tp
        )
        per_gpu = per_gpu + (L - n_moe) * model.dense_ffn_params_per_layer / tp
    else:
        per_gpu = per_gpu + L * model.dense_ffn_params_per_layer / tp
    per_gpu = per_gpu + L * model.dense_residual_params_per_layer / tp
    vocab = model.vocab_size * h / tp
    tables = np.where(pp > 1, 1.0, 1.0 if model.tie_word_embeddings else 2.0)
    weights = (per_gpu * frac + tables * vocab) * wb

    # KV cache: every sequence of this DP group, every layer of the stage; sliding-window layers
    # keep at most `window` tokens; GQA heads split over TP (replicated when tp > H_kv); MLA's
    # latent cache is whole on every TP rank.
    if model.is_mla:
        per_tok_layer = model.kv_cache_elements_per_token_per_layer
    else:
        per_tok_layer = 2.0 * np.maximum(model.num_key_value_heads / tp, 1.0) * model.attn_head_dim
    ctx = np.asarray(context_len, dtype=float)
    n_sliding = model.num_sliding_layers
    full_tokens = (L - n_sliding) * ctx
    sliding_tokens = (
        n_sliding * np.minimum(ctx, model.sliding_window or np.inf) if n_sliding else 0.0
    )
    kv = (
        np.asarray(seqs_per_group, dtype=float)
        * (full_tokens + sliding_tokens)
        * frac
        * per_tok_layer
        * kvb
    )

    # Activations of the largest step: a few hidden-size buffers per token plus the local FFN
    # intermediate (gate and up), and fp32 logits of the last positions (vLLM's profile run
    # measures the same peak).
    tokens = np.asarray(max_tokens_per_step, dtype=float)
    width = max(
        model.intermediate_size
        if not model.is_moe
        else model.expert_intermediate_size * model.top_k,
        model.shared_intermediate_size,
        1,
    )
    act = (
        tokens * (4.0 * h + 2.0 * width / tp) * ab
        + np.asarray(seqs_per_group, dtype=float) * model.vocab_size / tp * 4.0
    )
    return weights, kv, act
