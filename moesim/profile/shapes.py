"""Real model shapes the sweeps are drawn from (Hugging Face ``config.json`` field names).

Plain dicts, so the profiler depends on nothing else in moesim. GEMM families are the weight
matrices of each model's projections, as (N = output features, K = input features) after a
tensor-parallel split: column-parallel layers (QKV, gate/up) divide N by TP, row-parallel
layers (output projection, down) divide K.
"""

from __future__ import annotations

MODELS: dict[str, dict[str, int]] = {
    # mistralai/Mixtral-8x7B-v0.1 config.json
    "mixtral-8x7b": dict(hidden_size=4096, num_attention_heads=32, num_key_value_heads=8,
                         head_dim=128, intermediate_size=14336, num_local_experts=8,
                         num_experts_per_tok=2, ep=1),
    # deepseek-ai/DeepSeek-V3 config.json; experts sliced to one GPU of EP8 (32 of 256)
    "deepseek-v3": dict(hidden_size=7168, num_attention_heads=128, num_key_value_heads=128,
                        head_dim=128, intermediate_size=18432, moe_intermediate_size=2048,
                        num_local_experts=256, num_experts_per_tok=8, n_shared_experts=1, ep=8),
    # Qwen/Qwen3-30B-A3B config.json
    "qwen3-30b-a3b": dict(hidden_size=2048, num_attention_heads=32, num_key_value_heads=4,
                          head_dim=128, intermediate_size=6144, moe_intermediate_size=768,
                          num_local_experts=128, num_experts_per_tok=8, ep=1),
    # meta-llama/Llama-3.1-70B config.json (dense)
    "llama-70b": dict(hidden_size=8192, num_attention_heads=64, num_key_value_heads=8,
                      head_dim=128, intermediate_size=28672),
}  # fmt: skip

# (family, N, K): one row per distinct weight matrix; held-out splits can drop whole families.
GEMM_FAMILIES: list[tuple[str, int, int]] = [
    # Llama-3.1-70B: qkv N = (64 + 2·8)·128 = 10240; gate_up N = 2·28672
    ("llama70b.qkv.tp1", 10240, 8192),
    ("llama70b.qkv.tp8", 1280, 8192),
    ("llama70b.o.tp1", 8192, 8192),
    ("llama70b.o.tp8", 8192, 1024),
    ("llama70b.gate_up.tp1", 57344, 8192),
    ("llama70b.gate_up.tp4", 14336, 8192),
    ("llama70b.gate_up.tp8", 7168, 8192),
    ("llama70b.down.tp1", 8192, 28672),
    ("llama70b.down.tp8", 8192, 3584),
    # Mixtral-8x7B: qkv N = (32 + 2·8)·128 = 6144; one expert's gate_up N = 2·14336
    ("mixtral.qkv.tp1", 6144, 4096),
    ("mixtral.qkv.tp2", 3072, 4096),
    ("mixtral.o.tp1", 4096, 4096),
    ("mixtral.expert_gate_up.tp1", 28672, 4096),
    ("mixtral.expert_gate_up.tp2", 14336, 4096),
    ("mixtral.expert_down.tp1", 4096, 14336),
    ("mixtral.expert_down.tp2", 4096, 7168),
    # DeepSeek-V3: MLA low-rank projections, experts (I = 2048), dense-layer MLP, LM head
    ("dsv3.q_a", 1536, 7168),
    ("dsv3.q_b", 24576, 1536),  # 128 heads · 192 (nope 128 + rope 64)
    ("dsv3.kv_a", 576, 7168),  # kv_lora_rank 512 + rope 64
    ("dsv3.kv_b", 32768, 512),  # 128 heads · (128 + 128)
    ("dsv3.o", 7168, 16384),
    ("dsv3.expert_gate_up", 4096, 7168),
    ("dsv3.expert_down", 7168, 2048),
    ("dsv3.dense_gate_up.tp8", 4608, 7168),
    ("dsv3.lm_head.tp8", 16160, 7168),
    # Qwen3-30B-A3B: qkv N = (32 + 2·4)·128; o K = 32·128
    ("qwen3moe.qkv", 5120, 2048),
    ("qwen3moe.o", 2048, 4096),
    ("qwen3moe.expert_gate_up", 1536, 2048),
    ("qwen3moe.expert_down", 2048, 768),
    ("qwen3moe.router", 128, 2048),
]

# Token counts per family rotate through three lists so every M range meets every (N, K)
# range somewhere without the full cross product.
GEMM_M_LISTS = (
    [1, 16, 128, 1024, 4096, 16384],
    [2, 32, 256, 2048, 8192, 512],
    [4, 8, 64, 512, 4096, 16384],
)
GEMM_M_QUICK = [1, 16, 128]

MOE_TOKENS = [1, 4, 16, 64, 256, 1024, 4096, 16384]
MOE_MODELS = ("mixtral-8x7b", "deepseek-v3", "qwen3-30b-a3b")


def moe_dims(model: str) -> dict[str, int]:
    """Expert dims of ``model`` on one GPU: E global, E local (= E / ep), top-k, hidden, I."""
    cfg = MODELS[model]
    experts = cfg["num_local_experts"]
    return {
        "global_experts": experts,
        "experts": experts // cfg.get("ep", 1),
        "top_k": cfg["num_experts_per_tok"],
        "hidden": cfg["hidden_size"],
        "intermediate": cfg.get("moe_intermediate_size", cfg["intermediate_size"]),
    }
