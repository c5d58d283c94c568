"""How a model is laid out on GPUs, and whether that layout is possible.

One *replica* of the model spans ``pp`` pipeline stages; each stage has ``tp * dp`` GPUs:
attention runs tensor-parallel over ``tp`` GPUs in each of ``dp`` data-parallel groups
(DP attention, as DeepSeek and SGLang deploy MoE models), and the MoE experts of the stage
are split ``ep`` ways (expert parallel), each expert further tensor-parallel over
``moe_tp = tp * dp / ep`` GPUs. ``tp=8`` alone is plain Megatron TP (Shoeybi et al. 2019);
``tp=1, dp=ep=32`` is DeepSeek-V3's decode layout (arXiv:2412.19437 section 3.4).
``replicas`` copies of that serve independent traffic. All integer fields broadcast as arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from moesim.errors import MoesimError
from moesim.spec.dtypes import (
    ACT_DTYPES,
    DISPATCH_DTYPES,
    DTYPE_BYTES,
    check_kv_dtype,
)
from moesim.spec.limits import MAX_GPUS, check_int, check_int_array

OVERLAP_MODES = ("none", "two-batch")
# Serving engines whose kernels and schedules differ (CUDA-graph capture sizes, fused
# all-reduce + RMSNorm, activation-quantisation fusion); None = a generic engine.
FRAMEWORKS = ("trtllm", "vllm", "sglang")
# How requests are placed on attention-DP ranks (moesim.cost.straggler).
DP_BALANCE_MODES = ("even", "random")


@dataclass(frozen=True)
class Layout:
    """A deployment layout. Integer fields may be numpy arrays (one entry per scenario)."""

    tp: object = 1
    ep: object = 1
    pp: object = 1
    dp: object = 1
    replicas: object = 1
    weight_dtype: str = "bf16"
    kv_dtype: str = "bf16"
    act_dtype: str = "bf16"
    dispatch_dtype: str = "bf16"
    overlap: str = "none"
    redundant_experts: object = 0
    offload_fraction: object = 0.0  # share of each GPU's routed experts kept in host memory
    memory_utilization: float = 0.90  # vLLM's default gpu_memory_utilization
    # TensorRT-LLM's KV sizing instead: this share of the memory free after weights, activations
    # and runtime buffers (None: size the KV cache by memory_utilization or the engine's rule).
    kv_cache_free_gpu_memory_fraction: float | None = None
    gpus_per_node: int | None = None  # None: the hardware profile's value
    framework: str | None = None  # trtllm | vllm | sglang; None = generic engine
    dp_balance: str = "even"  # placement of sequences on DP ranks: even | random
    context_cv: float = 0.0  # coefficient of variation of per-sequence context (DP straggler)
    extras: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("weight_dtype", "kv_dtype", "act_dtype", "dispatch_dtype"):
            value = getattr(self, name)
            if value not in DTYPE_BYTES:
                raise MoesimError(f"{name} {value!r} is not one of {', '.join(DTYPE_BYTES)}")
        check_kv_dtype(self.kv_dtype)
        if self.act_dtype not in ACT_DTYPES:
            raise MoesimError(
                f"act_dtype {self.act_dtype!r} must be one of {', '.join(ACT_DTYPES)}"
            )
        if self.dispatch_dtype not in DISPATCH_DTYPES:
            raise MoesimError(
                f"dispatch_dtype {self.dispatch_dtype!r} must be one of {', '.join(DISPATCH_DTYPES)}"
            )
        if self.overlap not in OVERLAP_MODES:
            raise MoesimError(f"overlap {self.overlap!r} must be one of {', '.join(OVERLAP_MODES)}")
        # Integers within sane ceilings (moesim.spec.limits): past them int64 and float64
        # arithmetic on GPU counts and bytes would wrap or lose meaning.
        for name in ("tp", "ep", "pp", "dp", "replicas", "redundant_experts"):
            check_int_array(name, getattr(self, name))
        gpus = float(np.max(self.num_gpus))
        if gpus > MAX_GPUS:
            raise MoesimError(f"tp*dp*pp*replicas = {gpus:.3g} GPUs; the limit is {MAX_GPUS:,}")
        frac = np.asarray(self.offload_fraction, dtype=float)
        if np.any(~np.isfinite(frac) | (frac < 0) | (frac > 1)):
            raise MoesimError("offload_fraction must be in [0, 1]")
        if not 0 < self.memory_utilization <= 1:
            raise MoesimError("memory_utilization must be in (0, 1]")
        free = self.kv_cache_free_gpu_memory_fraction
        if free is not None and not 0 < free <= 1:
            raise MoesimError("kv_cache_free_gpu_memory_fraction must be in (0, 1]")
        if self.framework is not None and self.framework not in FRAMEWORKS:
            raise MoesimError(
                f"framework {self.framework!r} must be one of {', '.join(FRAMEWORKS)}"
            )
        if self.dp_balance not in DP_BALANCE_MODES:
            raise MoesimError(
                f"dp_balance {self.dp_balance!r} must be one of {', '.join(DP_BALANCE_MODES)}"
            )
        if not np.isfinite(self.context_cv) or self.context_cv < 0:
            raise MoesimError("context_cv must be a finite number >= 0")
        if self.gpus_per_node is not None:
            check_int("gpus_per_node", self.gpus_per_node)

    def arr(self, name: str) -> np.ndarray:
        return np.asarray(getattr(self, name), dtype=float)

    @property
    def gpus_per_stage(self) -> np.ndarray:
        return self.arr("tp") * self.arr("dp")

    @property
    def gpus_per_replica(self) -> np.ndarray:
        return self.gpus_per_stage * self.arr("pp")

    @property
    def num_gpus(self) -> np.ndarray:
        return self.gpus_per_replica * self.arr("replicas")

    @property
    def moe_tp(self) -> np.ndarray:
        return self.gpus_per_stage / self.arr("ep")

    def with_(self, **changes) -> Layout:
        return replace(self, **changes)


def check_layout(model, layout: Layout) -> tuple[np.ndarray, np.ndarray]:
    """Divisibility checks of ``layout`` for ``model``: (possible, reason) arrays.

    reason is '' where possible. Rules follow what serving engines enforce: attention heads split
    evenly over TP (Megatron); KV heads either split evenly or replicate (TP a multiple of them,
    vLLM's QKVParallelLinear); EP divides the GPUs of a stage and the expert slots (experts plus
    redundant replicas, (E + R) % ep == 0 — the redundant ones need not split evenly); PP no
    deeper than the layer count.
    """
    tp, ep, pp, dp = (layout.arr(n) for n in ("tp", "ep", "pp", "dp"))
    shape = np.broadcast_shapes(
        tp.shape, ep.shape, pp.shape, dp.shape, np.shape(layout.redundant_experts)
    )
    reason = np.full(shape, "", dtype=object)

    def fail(mask, message):
        mask = np.broadcast_to(mask, shape)
        reason[mask & (reason == "")] = message

    heads = model.num_attention_heads
    kv = model.num_key_value_heads
    fail(heads % tp != 0, f"tp does not divide the {heads} attention heads")
    if not model.is_mla:
        fail((kv % tp != 0) & (tp % kv != 0), f"tp and the {kv} KV heads do not divide one another")
    gpus_stage = tp * dp
    fail(gpus_stage % ep != 0, "ep must divide tp*dp (the GPUs of a stage)")
    slots = model.num_experts + np.asarray(layout.redundant_experts, dtype=float)
    if model.is_moe:
        fail(
            slots % ep != 0,
            f"ep does not divide the {model.num_experts} experts (+ redundant slots)",
        )
        fail(ep > slots, "ep exceeds the number of expert slots")
        # Only the slot count must divide: EPLB places the E + R replicas so that every GPU holds
        # (E + R)/ep slots, however the R redundant ones fall (DeepSeek's production layouts:
        # 256 + 32 = 288 slots on EP72 and EP144; github.com/deepseek-ai/EPLB, open-infra-index
        # day 6 inference overview).
    else:
        fail(ep > 1, "ep > 1 needs an MoE model")
    fail(pp > model.num_hidden_layers, f"pp exceeds the {model.num_hidden_layers} layers")
    return reason == "", reason
