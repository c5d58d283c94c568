"""Tile configurations of the Triton fused MoE kernel: one table, and the rule that picks from it.

Kept apart from the kernel so that sweeps can name a config without importing Triton.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class TileConfig:
    """Tile shape and launch settings for both kernels (``_up`` = gate/up, ``_down`` = down)."""

    block_m: int
    block_n_up: int
    block_k_up: int
    block_n_down: int
    block_k_down: int
    num_warps: int
    num_stages: int


# The one table to tune on a GPU: keyed by regime of tokens per expert (A / E).
# Decode-sized groups use a small BLOCK_M so padding wastes little (Σ ceil(n_e/BM)·BM);
# large groups use big tiles for reuse. The gate/up kernel keeps two accumulators, so its
# BLOCK_N is half the down kernel's for the same register budget.
TILE_CONFIGS: dict[str, TileConfig] = {
    "decode": TileConfig(16, 64, 128, 128, 128, num_warps=4, num_stages=4),
    "small": TileConfig(32, 64, 128, 128, 64, num_warps=4, num_stages=4),
    "medium": TileConfig(64, 64, 64, 128, 64, num_warps=4, num_stages=3),
    "large": TileConfig(128, 64, 64, 128, 64, num_warps=8, num_stages=3),
}
REGIME_MAX_TOKENS_PER_EXPERT = {"decode": 16, "small": 48, "medium": 192}


def pick_regime(tokens_per_expert: float) -> str:
    """Name of the TILE_CONFIGS entry for a mean load of ``tokens_per_expert``."""
    for name, limit in REGIME_MAX_TOKENS_PER_EXPERT.items():
        if tokens_per_expert <= limit:
            return name
    return "large"


def pick_config(tokens_per_expert: float, n: int, k: int) -> TileConfig:
    """Tile choice from mean tokens per expert, N = intermediate size I and K = hidden size D.

    The regime fixes BLOCK_M and the launch settings; tiles wider than a small N or K (test
    shapes, narrow experts) shrink to the next power of two (≥ 16, the smallest ``tl.dot``).
    """
    cfg = TILE_CONFIGS[pick_regime(tokens_per_expert)]
    n_cap, k_cap = _pow2_at_least(n), _pow2_at_least(k)
    return replace(
        cfg,
        block_n_up=min(cfg.block_n_up, n_cap),
        block_k_up=min(cfg.block_k_up, k_cap),
        block_n_down=min(cfg.block_n_down, k_cap),
        block_k_down=min(cfg.block_k_down, n_cap),
    )


def _pow2_at_least(x: int) -> int:
    return max(16, 1 << max(0, int(x) - 1).bit_length())


def describe(cfg: TileConfig) -> str:
    """Compact id of a config for result rows, e.g. ``bm16_up64x128_down128x128_w4_s4``."""
    return (
        f"bm{cfg.block_m}_up{cfg.block_n_up}x{cfg.block_k_up}"
        f"_down{cfg.block_n_down}x{cfg.block_k_down}_w{cfg.num_warps}_s{cfg.num_stages}"
    )
