"""What an engine's scheduler and memory manager are set to: token budget per step, cap on
running sequences, KV block size, and how it sizes the KV cache — with each engine's real defaults.

- vLLM (``vllm serve``, the OpenAI API server that ``vllm bench serve`` drives):
  ``EngineArgs.get_batch_defaults`` in vllm/engine/arg_utils.py gives
  ``max_num_batched_tokens`` 8192 and ``max_num_seqs`` 1024 on GPUs with >= 70 GiB that are not
  A100s ("For GPUs like H100 and MI300x, use larger default values"), else 2048 and 256;
  ``block_size`` 16; ``gpu_memory_utilization`` 0.9 of the total the runtime reports, which
  weights, activations and non-torch buffers share with the KV cache (CUDA graphs use the rest).
- SGLang (``python -m sglang.launch_server``): ``chunked_prefill_size`` 2048 below 35 GiB of GPU
  memory, 8192 below 160 GiB (H100, H200, A100, H20), 16384 above (B200, MI300), from
  ``ServerArgs`` in sglang/srt/server_args.py; ``max_running_requests`` unset, so the model
  runner takes ``min(max(kv_tokens / context_len * 512, 2048), 4096)`` (and at most half the
  KV tokens) per DP worker; ``page_size`` 1; ``mem_fraction_static`` (weights + KV pool as a
  share of the total) 0.88 when it cannot size it from the GPU; NCCL NVLS off
  (sgl-project/sglang#631).
- TensorRT-LLM (``trtllm-serve`` / ``trtllm-bench`` / the LLM API): ``max_num_tokens`` 8192 and
  ``max_batch_size`` 2048 (``BaseLlmArgs`` in tensorrt_llm/llmapi/llm_args.py);
  ``tokens_per_block`` 32; ``kv_cache_free_gpu_memory_fraction`` 0.9 of the memory free after
  weights, activations and buffers ("TensorRT LLM will try to allocate 90% of free GPU memory for
  KV cache", docs examples/kvcacheconfig); the default ``GUARANTEED_NO_EVICT`` capacity scheduler
  admits a request only when its KV cache at full length fits (docs, useful runtime flags).

Every field can be overridden: ``engine_preset("trtllm", hw, token_budget=16384)``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from moesim.errors import MoesimError

GiB = 2**30
ENGINES = ("vllm", "sglang", "trtllm")
DEFAULT_ENGINE = "vllm"
MEMORY_MODES = (
    "gpu_memory_utilization",
    "kv_cache_free_gpu_memory_fraction",
    "mem_fraction_static",
)


@dataclass(frozen=True)
class EngineConfig:
    """The scheduler and memory settings of one serving engine.

    token_budget : most tokens one step processes (prefill chunk + one per running decode)
    max_batch : most running sequences per scheduler (per DP group); None: the engine's own rule
    kv_block_tokens : tokens per paged-KV block
    memory_mode : how the KV cache is sized (one of ``MEMORY_MODES``)
    memory_fraction : the fraction that mode takes; None: the layout's ``memory_utilization``
    nvls : whether NCCL's NVLink SHARP buffers are allocated (where the hardware has NVLS)
    """

    name: str
    token_budget: int
    max_batch: int | None
    kv_block_tokens: int
    memory_mode: str
    memory_fraction: float | None = None
    nvls: bool = True

    def __post_init__(self) -> None:
        if self.token_budget < 1:
            raise MoesimError(f"token budget must be >= 1, got {self.token_budget}")
        if self.max_batch is not None and self.max_batch < 1:
            raise MoesimError(f"max batch must be >= 1, got {self.max_batch}")
        if self.kv_block_tokens < 1:
            raise MoesimError(f"KV block size must be >= 1 token, got {self.kv_block_tokens}")
        if self.memory_mode not in MEMORY_MODES:
            raise MoesimError(
                f"memory mode {self.memory_mode!r} is not one of {', '.join(MEMORY_MODES)}"
            )
        if self.memory_fraction is not None and not 0 < self.memory_fraction <= 1:
            raise MoesimError(f"memory fraction must be in (0, 1], got {self.memory_fraction}")

    def with_(self, **changes) -> EngineConfig:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def engine_preset(name: str | EngineConfig | None = None, hw=None, **overrides) -> EngineConfig:
    """The defaults of engine ``name`` (vllm | sglang | trtllm) on hardware ``hw`` (its memory
    picks vLLM's and SGLang's budgets), with ``overrides`` (None values ignored)."""
    if isinstance(name, EngineConfig):
        return name.with_(**overrides)
    name = (name or DEFAULT_ENGINE).lower()
    gib = (hw.hbm_capacity_bytes / GiB) if hw is not None else 80.0
    big = gib >= 70 and "a100" not in (getattr(hw, "name", "") or "").lower()
    if name == "vllm":
        cfg = EngineConfig(
            "vllm", 8192 if big else 2048, 1024 if big else 256, 16, "gpu_memory_utilization"
        )
    elif name == "sglang":
        budget = 2048 if gib < 35 else 8192 if gib < 160 else 16384
        cfg = EngineConfig("sglang", budget, None, 1, "mem_fraction_static", 0.88, nvls=False)
    elif name in ("trtllm", "tensorrt-llm", "trt-llm"):
        cfg = EngineConfig("trtllm", 8192, 2048, 32, "kv_cache_free_gpu_memory_fraction", 0.9)
    else:
        from moesim.errors import unknown_name

        raise unknown_name("engine", name, ENGINES)
    return cfg.with_(**overrides)


def sglang_max_running(kv_tokens, context_len: int):
    """SGLang's default cap on running requests per DP worker (model_runner.py):
    min(max(kv_tokens / context_len * 512, 2048), 4096), and at most half the KV tokens."""
    import numpy as np

    kv_tokens = np.asarray(kv_tokens, dtype=float)
    est = np.clip(np.floor(kv_tokens / max(context_len, 1) * 512.0), 2048.0, 4096.0)
    return np.minimum(est, np.floor(kv_tokens / 2.0))
