"""Scheduler settings of the engines the simulator imitates, and their defaults.

- vLLM (V1 engine): chunked prefill always on; ``max_num_batched_tokens`` 8192 and
  ``max_num_seqs`` 1024 on GPUs with >= 70 GiB that are not A100s, else 2048 and 256 (OpenAI
  server defaults, ``EngineArgs.get_batch_defaults``); 16-token KV blocks; admission by the
  prompt's blocks, preemption by recompute.
- SGLang: ``chunked_prefill_size`` 8192 on GPUs of 35-160 GiB, 16384 above, 2048 below
  (``ServerArgs``); prefill batches run before decode batches (no mixing without
  ``--enable-mixed-chunk``); ``page_size`` 1; running requests bounded by the KV pool
  (``max_running_requests`` unset), taken here as 4096.
- TensorRT-LLM: ``max_num_tokens`` 8192 and ``max_batch_size`` 2048 (``BuildConfig``);
  in-flight batching mixes context chunks and generation; 32 tokens per KV block
  (``KvCacheConfig.tokens_per_block``); the default capacity scheduler,
  GUARANTEED_NO_EVICT, admits a request only if its whole KV fits, so it never preempts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from moesim.errors import MoesimError

ADMISSIONS = ("prompt", "reserve")
SCHEDULES = ("mixed", "prefill-first")
ENGINES = ("vllm", "sglang", "trtllm")
GIB = 1024**3


@dataclass(frozen=True)
class EngineConfig:
    """How one engine instance schedules.

    max_num_batched_tokens : token budget of one step (decode tokens plus prefill chunks)
    max_num_seqs : sequences scheduled at once (decoding plus prefilling)
    block_size : tokens per KV-cache block
    admission : 'prompt' (reserve the prompt's blocks, grow on demand, preempt by recompute)
        or 'reserve' (reserve prompt + output blocks, never preempt)
    schedule : 'mixed' (decodes and prefill chunks share a step) or 'prefill-first'
    kv_cache_tokens : KV capacity of one instance in tokens; None: from memory
    """

    name: str = "vllm"
    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 1024
    block_size: int = 16
    admission: str = "prompt"
    schedule: str = "mixed"
    kv_cache_tokens: int | None = None

    def __post_init__(self) -> None:
        for field in ("max_num_batched_tokens", "max_num_seqs", "block_size"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise MoesimError(f"{field} must be a positive integer, got {value!r}")
        if self.admission not in ADMISSIONS:
            raise MoesimError(
                f"admission {self.admission!r} must be one of {', '.join(ADMISSIONS)}"
            )
        if self.schedule not in SCHEDULES:
            raise MoesimError(f"schedule {self.schedule!r} must be one of {', '.join(SCHEDULES)}")
        if self.schedule == "mixed" and self.max_num_batched_tokens < self.max_num_seqs:
            raise MoesimError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= max_num_seqs "
                f"({self.max_num_seqs}): every decode takes a token of the step's budget"
            )
        if self.kv_cache_tokens is not None and self.kv_cache_tokens < 1:
            raise MoesimError(f"kv_cache_tokens must be >= 1, got {self.kv_cache_tokens}")

    def with_(self, **changes) -> EngineConfig:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def engine_config(name: str = "vllm", hw=None, **overrides) -> EngineConfig:
    """The defaults of engine ``name`` on hardware ``hw`` (they depend on its memory), with
    ``overrides`` (None values ignored)."""
    name = name.lower()
    mem = getattr(hw, "hbm_capacity_bytes", 80e9) if hw is not None else 80e9
    hw_name = (getattr(hw, "name", "") or "").lower()
    if name == "vllm":
        big = mem >= 70 * GIB and "a100" not in hw_name
        base = EngineConfig("vllm", 8192 if big else 2048, 1024 if big else 256, 16)
    elif name == "sglang":
        chunk = 2048 if mem < 35 * GIB else 8192 if mem < 160 * GIB else 16384
        base = EngineConfig("sglang", chunk, 4096, 1, "prompt", "prefill-first")
    elif name == "trtllm":
        base = EngineConfig("trtllm", 8192, 2048, 32, "reserve", "mixed")
    else:
        raise MoesimError(f"unknown engine {name!r}; use one of {', '.join(ENGINES)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(given) - set(asdict(base))
    if unknown:
        raise MoesimError(f"unknown engine setting(s) {', '.join(sorted(unknown))}")
    fields = asdict(base) | given
    # A smaller budget than the preset's sequence cap lowers the cap with it (vLLM refuses
    # max_num_seqs > max_num_batched_tokens).
    if "max_num_seqs" not in given and fields["schedule"] == "mixed":
        fields["max_num_seqs"] = min(fields["max_num_seqs"], fields["max_num_batched_tokens"])
    return EngineConfig(**fields)
