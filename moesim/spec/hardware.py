"""Hardware profiles: what one accelerator can do, and where each number comes from.

A profile is read once from ``hwprofiles/<name>.yaml``, where keys carry human units
(``hbm_bandwidth_TBps: 3.35``), and becomes a frozen :class:`HardwareProfile` in SI units
(``hbm_bandwidth_bytes_per_s = 3.35e12``). Below the loader nothing reads files.

Peak FLOP/s are **dense** (no 2:4 sparsity). Bandwidths are **per GPU, per direction**.
``efficiency`` holds the calibration: achievable fractions of the datasheet numbers, launch
overheads and collective α-β terms; datasheet profiles carry published fractions, measured
profiles (``<name>.measured.yaml``) carry fitted ones.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import math
import re
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, ValidationError, field_validator

import moesim
from moesim.errors import MoesimError, unknown_name
from moesim.spec import units

# Tensor-core / matrix-core dtypes a profile may list. "fp32" is plain (non-tensor) FP32;
# "tf32" is FP32 inputs on tensor cores.
DTYPES = ("fp4", "fp8", "int8", "bf16", "fp16", "tf32", "fp32")
DTYPE_ALIASES = {
    "bfloat16": "bf16",
    "float16": "fp16",
    "half": "fp16",
    "float32": "fp32",
    "float": "fp32",
    "e4m3": "fp8",
    "e5m2": "fp8",
    "fp8_e4m3": "fp8",
    "fp8_e5m2": "fp8",
    "float8_e4m3fn": "fp8",
    "float8_e5m2": "fp8",
    "nvfp4": "fp4",
    "mxfp4": "fp4",
}
KERNEL_CLASSES = (
    "gemm", "grouped_gemm", "attention_prefill", "attention_decode", "attention_decode_mla",
    "memory",
)  # fmt: skip

# SI attribute -> the unit suffix its YAML key is written with (and written back in).
HUMAN_UNITS = {
    "hbm_bandwidth_bytes_per_s": "TBps",
    "hbm_capacity_bytes": "GB",
    "l2_bytes": "MB",
    "scaleup_bandwidth_bytes_per_s": "GBps",
    "scaleout_bandwidth_bytes_per_s": "GBps",
    "host_link_bandwidth_bytes_per_s": "GBps",
    "host_memory_bytes": "GB",
    "tdp_w": "W",
    "launch_overhead_s": "us",
    "scaleup_latency_s": "us",
    "scaleout_latency_s": "us",
}
PEAK_UNIT = "TFLOPS"
_PEAK_KEY_RE = re.compile(r"^(?P<dtype>[a-z0-9]+)_dense_(?P<unit>[A-Z]FLOPS)$")
_SI_UNIT_NAMES = {"bytes_per_s": "B/s", "bytes": "B", "s": "s", "w": "W", "flops_per_s": "FLOP/s"}


def normalize_dtype(dtype: str) -> str:
    """Canonical dtype name: ``"bfloat16" -> "bf16"``, ``"float8_e4m3fn" -> "fp8"``."""
    d = str(dtype).lower().replace("torch.", "")
    return DTYPE_ALIASES.get(d, d)


# --- calibration block ----------------------------------------------------------------------


class KernelEfficiency(BaseModel):
    """Achievable fractions of datasheet peaks for one kernel class (roofline terms)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    compute_efficiency: float = Field(0.8, gt=0, le=1)  # of datasheet peak FLOP/s
    memory_efficiency: float = Field(0.85, gt=0, le=1)  # of datasheet HBM bytes/s
    launch_overhead_s: float = Field(4e-6, ge=0)
    # Host (CPU) cost per kernel launch of eagerly-timed measurements: back-to-back eager calls
    # take max(host launch time, device time). Serving runs CUDA graphs and never pays it; it is
    # fitted so that measurements taken without graphs calibrate the device terms correctly.
    host_launch_s: float = Field(0.0, ge=0)
    tile_m: int = Field(1, ge=1)  # wave/tile quantisation (1 = off)
    tile_n: int = Field(1, ge=1)
    ridge_sharpness: float = Field(8.0, gt=0)  # p of (t_c^p + t_m^p)^(1/p); large = hard max
    compute_efficiency_by_dtype: dict[str, float] = {}
    # Shape-aware terms (moesim.cost.roofline; all off by default, so a datasheet block prices
    # exactly as the plain roofline). k_overhead: the K-loop prologue/epilogue of each output
    # tile in elements of the reduction dimension, t_compute x (K + K0) / K. tile_candidates:
    # output tiles (m_t, n_t) a library heuristic picks from (the one with least issued work
    # wins; tile_m x tile_n is used when empty). split_k: tile counts below the SM count are
    # not charged for idle SMs (split-K / stream-K), else a partial wave idles them.
    k_overhead: float = Field(0.0, ge=0, le=65536)
    # Memory-level parallelism: a kernel with few output tiles keeps few bytes in flight, and
    # by Little's law (bandwidth = bytes in flight / latency) streams below the HBM roof:
    # t_memory x (1 + C / ctas), ctas the output tiles at the smallest candidate tile. C (the
    # tile count at which the kernel reaches half its bandwidth) is fitted; 0 = off.
    memory_parallelism_ctas: float = Field(0.0, ge=0, le=4096)
    # Operand traffic of a tile: an m_t x n_t tile loads m_t + n_t operand rows per m_t·n_t
    # MMAs, so small tiles run below the MMA peak: rate x 1 / (1 + a (1/m_t + 1/n_t)). The
    # candidate tile with the most useful work per time wins (0 = all tiles at full rate).
    tile_operand_overhead: float = Field(0.0, ge=0, le=1024)
    # Fixed cost of each wave of output tiles (CTA prologue: loading the resident operand, and
    # epilogue: normalising and storing the output tile), added to t_compute per wave.
    wave_overhead_s: float = Field(0.0, ge=0, le=1e-3)
    # The token passes a fused MoE runs as kernels of their own (TensorRT-LLM expandInputRows,
    # the activation and the output rows; vLLM silu_and_mul + moe_sum; the byte split is
    # kernel_cost.moe_activation_bytes) reach this fraction of the HBM bandwidth and do not
    # overlap the GEMMs: t += gather_bytes / (bandwidth x gather_efficiency). 0: those bytes
    # stay in the roofline.
    gather_efficiency: float = Field(0.0, ge=0, le=1)
    # A grouped GEMM streams an expert's weights once per m-tile of block_m rows of that
    # expert; this share of the repeats (beyond the first) misses L2 and goes to HBM, so a
    # fused MoE reads weights x (1 + r (tiles per active expert - 1)). 0 = weights read once.
    weight_reread: float = Field(0.0, ge=0, le=1)
    # Token tiles a grouped GEMM's autotuner picks from per shape (fused MoE only). The Hopper
    # CUTLASS MoE GEMM of TensorRT-LLM runs D^T = W^T X^T, putting each expert's tokens on the
    # tile's N side (moe_kernels.cu computeStridesTmaWarpSpecializedKernel: "#tokens as the N
    # dimension"; CutlassTileConfigSM90 CtaShape128x{16,32,64,128,256}); vLLM's and SGLang's
    # Triton fused_moe pick BLOCK_SIZE_M from tuned configs per token count. Each expert's rows
    # pad to the tile b, its weights stream once per tile of rows, and a b-wide tile runs its
    # MMAs at 1 / (1 + tile_operand_overhead / b) of the fitted rate (a narrow tile re-reads the
    # weight operand from shared memory for few tokens); the fastest tile wins
    # (kernel_cost.moe_token_tile). Empty: the caller's block_m at full rate.
    token_tiles: list[int] = Field(default_factory=list, max_length=8)
    tile_candidates: list[list[int]] = []
    split_k: bool = True
    # Split-K limit: a grid of fewer tiles than SMs cuts K in at most K / split_k_min_k slices
    # (each slice keeps a K-loop long enough to pipeline; 0 = as many as fill the SMs), and
    # reducing the slices' partial sums costs up to split_k_overhead_s (x (1 - 1 / slices)).
    split_k_min_k: float = Field(0.0, ge=0, le=1 << 20)
    split_k_overhead_s: float = Field(0.0, ge=0, le=1e-3)
    # Decode attention kernel choice of the engine (moesim.cost.roofline.decode_attention_time_s;
    # all off by default: one grouped kernel, one CTA per (sequence, KV head)). TensorRT-LLM
    # runs its grouped XQA kernel only for <= 32 query heads per KV head and only when the work
    # fills the GPU (blocks x 4 >= SMs, blocks = sequences x KV heads x max(1, keys // 128)),
    # unless the KV cache is below 2 bytes per element (fp8), which its fallback, the masked MHA
    # kernel (one CTA per (sequence, query head)), cannot read (decoderXQARunner mayHavePerfGain /
    # shouldUse; decoderXQAImplJIT supportConfigQGMMA / supportConfigHMMA). Split-KV
    # ("multi-block") cuts each sequence's keys in chunks of split_kv_tokens, then shrinks the
    # chunk count until the CTAs fill at most split_kv_target_waves waves
    # (computeMultiBlockCount). These are the engine's dispatch constants, read from its source.
    decode_grouped_max_heads: int = Field(0, ge=0, le=1024)  # 0: every shape grouped
    decode_grouped_min_blocks_per_sm: float = Field(0.0, ge=0, le=64)
    decode_ungrouped_min_kv_bytes: float = Field(0.0, ge=0, le=8)
    decode_split_kv_tokens: int = Field(0, ge=0, le=1 << 20)  # 0: no split-KV
    decode_split_kv_target_waves: float = Field(0.0, ge=0, le=1024)
    # The ungrouped (per query head) kernel's own fitted terms: the cost of each wave of its
    # CTAs, its memory efficiency, and the share of the repeated K/V reads (one per query head
    # of a KV head) that miss L2 and go to HBM.
    decode_ungrouped_wave_overhead_s: float = Field(0.0, ge=0, le=1e-3)
    decode_ungrouped_memory_efficiency: float = Field(0.0, ge=0, le=1)
    decode_ungrouped_kv_reread: float = Field(1.0, ge=0, le=1)
    # Its launch cost, as measured calls see it (masked MHA applies RoPE and appends the new
    # K/V itself; XQA's HMMA kernel runs behind a separate preprocessing kernel); 0: the
    # block's launch_overhead_s.
    decode_ungrouped_launch_overhead_s: float = Field(0.0, ge=0, le=1e-3)
    # Its multi-block mode (keys cut in tiles by roofline.mmha_key_tiles): the cost of reducing
    # the tiles' partial outputs, paid whenever a sequence has more than one tile; 0 = none.
    decode_ungrouped_multi_block_s: float = Field(0.0, ge=0, le=1e-3)
    # A grouped decode CTA serves all g query heads of its KV head; at short contexts its time
    # grows with g (each head's RoPE, softmax row and output, serial within the CTA; the H100
    # and H200 TensorRT-LLM fits give 0.06-0.09 us per head and wave on both XQA kernels).
    # Added per wave to wave_overhead_s as g x this; 0 = off.
    decode_grouped_head_wave_s: float = Field(0.0, ge=0, le=1e-4)
    # Activation quantisation the measured kernel included (a bf16 -> fp8 pass over the m x k
    # input before the GEMM): bytes moved per input element and its launch cost. Fitted so that
    # such rows calibrate the GEMM itself; the step model prices quantisation as its own
    # operator (moesim.cost.ops._act_quant_ops), so these never enter a serving prediction.
    act_quant_bytes_per_element: float = Field(0.0, ge=0, le=64)
    act_quant_launch_s: float = Field(0.0, ge=0, le=1e-3)
    # Per compute format (dtype or weight format, e.g. "bf16", "fp8", "fp8-block"): a whole
    # block for kernels of that format, which are different kernels with their own tiles.
    by_format: dict[str, KernelEfficiency] = {}

    @field_validator("tile_candidates")
    @classmethod
    def _check_tiles(cls, value: list[list[int]]) -> list[list[int]]:
        if len(value) > 16 or any(
            len(t) != 2 or not (1 <= t[0] <= 1024 and 1 <= t[1] <= 1024) for t in value
        ):
            raise ValueError("tile_candidates: at most 16 [m, n] tiles, each side in [1, 1024]")
        return [[int(a), int(b)] for a, b in value]

    @field_validator("token_tiles")
    @classmethod
    def _check_token_tiles(cls, value: list[int]) -> list[int]:
        if any(not 1 <= int(b) <= 1024 for b in value) or len(set(value)) != len(value):
            raise ValueError("token_tiles: distinct tile widths, each in [1, 1024]")
        return sorted(int(b) for b in value)

    @field_validator("by_format")
    @classmethod
    def _check_formats(cls, value: dict[str, KernelEfficiency]) -> dict[str, KernelEfficiency]:
        if any(block.by_format for block in value.values()):
            raise ValueError("by_format blocks cannot nest")
        return {normalize_format(k): v for k, v in value.items()}

    def for_format(self, dtype: str, fmt: str = "") -> KernelEfficiency:
        """The block for kernels of weight format ``fmt`` running ``dtype`` MMAs (else this one)."""
        if self.by_format:
            for key in (normalize_format(fmt), normalize_dtype(dtype)):
                if key and key in self.by_format:
                    return self.by_format[key]
        return self

    @field_validator("compute_efficiency_by_dtype")
    @classmethod
    def _check_by_dtype(cls, value: dict[str, float]) -> dict[str, float]:
        out = {normalize_dtype(k): float(v) for k, v in value.items()}
        bad = {k: v for k, v in out.items() if not 0 < v <= 1}
        if bad:
            raise ValueError(f"efficiencies must be in (0, 1], got {bad}")
        return out

    def compute_eff(self, dtype: str) -> float:
        """Achievable fraction of peak for ``dtype`` (per-dtype override, else the default)."""
        d = normalize_dtype(dtype)
        if d in self.by_format:
            return self.by_format[d].compute_efficiency
        return self.compute_efficiency_by_dtype.get(d, self.compute_efficiency)


KernelEfficiency.model_rebuild()


def normalize_format(name: str) -> str:
    """Canonical name of a compute dtype or weight format key (``fp8_block`` -> ``fp8-block``)."""
    text = str(name).strip()
    if not text:
        return ""
    d = normalize_dtype(text).replace("_", "-")
    return "fp8" if d in ("fp8-e4m3", "fp8-e4m3fn") else d


# Fitted collective terms (:class:`FittedCollectives`): names the tables may use, and the
# physical ranges a fitted α (s) and bandwidth (B/s) must lie in.
NCCL_OPS = ("all_reduce", "all_gather", "reduce_scatter", "alltoall")
NCCL_PROTOCOLS = ("ll", "ll128", "simple", "nvls")  # NCCL src/graph/tuning.cc; nvls: all_reduce
CUSTOM_AR_REGIMES = ("oneshot", "twoshot", "nccl", "nvls")
DEEPEP_IMPLS = ("deepep_ll", "deepep_normal")
DEEPEP_PHASES = ("dispatch_bf16", "dispatch_fp8", "dispatch_fp4", "combine_bf16")
FITTED_ALPHA_RANGE_S = (0.0, 1e-2)
FITTED_BANDWIDTH_RANGE = (1e6, 1e15)


def _check_terms(value: Any, what: str, first: tuple[str, ...] | None, last: dict) -> dict:
    """{first-key: {group size: {regime: [alpha_s, bytes_per_s]}}} with known names, integer
    group sizes >= 2 and finite terms in range; keys normalised to str."""
    if not isinstance(value, dict):
        raise ValueError(f"{what}: expected a mapping")
    out: dict[str, dict[str, dict[str, list[float]]]] = {}
    for key, by_n in value.items():
        key = str(key)
        if first is not None and key not in first:
            raise ValueError(f"{what}: unknown name {key!r}; known: {', '.join(first)}")
        allowed = last.get(key, last.get("*", ()))
        if not isinstance(by_n, dict):
            raise ValueError(f"{what}.{key}: expected a mapping of group size to terms")
        out[key] = {}
        for n, regimes in by_n.items():
            if isinstance(n, bool) or not str(n).isdigit() or int(n) < 2:
                raise ValueError(f"{what}.{key}: group size {n!r} is not an integer >= 2")
            if not isinstance(regimes, dict) or not regimes:
                raise ValueError(f"{what}.{key}.{n}: expected a non-empty mapping of terms")
            terms = {}
            for name, pair in regimes.items():
                if str(name) not in allowed:
                    raise ValueError(
                        f"{what}.{key}.{n}: unknown regime {name!r}; known: {', '.join(allowed)}"
                    )
                ok = isinstance(pair, (list, tuple)) and len(pair) == 2
                vals = [float(v) for v in pair] if ok else []
                lo_a, hi_a = FITTED_ALPHA_RANGE_S
                lo_b, hi_b = FITTED_BANDWIDTH_RANGE
                if not (
                    ok
                    and all(math.isfinite(v) for v in vals)
                    and lo_a <= vals[0] <= hi_a
                    and lo_b <= vals[1] <= hi_b
                ):
                    raise ValueError(
                        f"{what}.{key}.{n}.{name}: expected [alpha_s in [0, 0.01], bytes_per_s "
                        f"in [1e6, 1e15]], got {pair!r}"
                    )
                terms[str(name)] = vals
            out[key][str(int(n))] = terms
    return out


class FittedCollectives(BaseModel):
    """Collective α-β terms fitted per group size to measured tables (``moesim calibrate``).

    Every entry is ``[alpha_s, bytes_per_s]`` of one regime: t = alpha + bytes / bandwidth,
    with the bytes of the regime's bus factor (:mod:`moesim.cost.fitted_comm`), and the time of
    a call is the minimum over the regimes of its group size (NCCL's tuner runs the fastest
    protocol; NCCL ``src/graph/tuning.cc``).

    - ``nccl``: op (all_reduce | all_gather | reduce_scatter | alltoall) -> group size ->
      protocol (ll | ll128 | simple | nvls) -> [alpha_s, bus bytes/s];
    - ``custom_allreduce``: engine (trtllm | vllm | sglang) -> group size -> regime
      (oneshot | twoshot | nccl | nvls) -> [alpha_s, bytes/s];
    - ``deepep``: deepep_ll | deepep_normal -> EP size -> dispatch_<dtype> | combine_bf16 ->
      [t0_s, bytes/s] of the bytes crossing the slowest level.

    Absent (the default): the two-level model of :class:`CollectiveEfficiency` prices everything.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str = ""
    # groups ("deepep.deepep_ll.8.dispatch_fp8") whose fitted bandwidth sits on the line rate:
    # the data asked for more than the link carries, the terms are clamped to it
    at_line_rate: list[str] = []
    nccl: dict[str, dict[str, dict[str, list[float]]]] = {}
    custom_allreduce: dict[str, dict[str, dict[str, list[float]]]] = {}
    deepep: dict[str, dict[str, dict[str, list[float]]]] = {}

    @field_validator("nccl", mode="before")
    @classmethod
    def _check_nccl(cls, value: Any) -> dict:
        nvls = {op: NCCL_PROTOCOLS if op == "all_reduce" else NCCL_PROTOCOLS[:3] for op in NCCL_OPS}
        return _check_terms(value, "nccl", NCCL_OPS, nvls)

    @field_validator("custom_allreduce", mode="before")
    @classmethod
    def _check_custom(cls, value: Any) -> dict:
        return _check_terms(value, "custom_allreduce", None, {"*": CUSTOM_AR_REGIMES})

    @field_validator("deepep", mode="before")
    @classmethod
    def _check_deepep(cls, value: Any) -> dict:
        return _check_terms(value, "deepep", DEEPEP_IMPLS, {"*": DEEPEP_PHASES})


class CollectiveEfficiency(BaseModel):
    """α-β terms of the two network levels and the host link."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    scaleup_bandwidth_efficiency: float = Field(0.8, gt=0, le=1)  # NCCL ~370/450 on H100
    scaleup_latency_s: float = Field(5e-6, ge=0)
    scaleout_bandwidth_efficiency: float = Field(0.85, gt=0, le=1)
    scaleout_latency_s: float = Field(10e-6, ge=0)
    host_link_efficiency: float = Field(0.8, gt=0, le=1)
    # all-reduce busBW with in-switch reduction (NVLS) over busBW without; 1.0 = no gain.
    allreduce_in_switch_speedup: float = Field(1.0, ge=1)
    # Per-group-size, per-protocol terms fitted to measured tables; None = the terms above.
    fitted: FittedCollectives | None = None


class Efficiency(BaseModel):
    """The calibration block: datasheet defaults until measured."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str = Field("datasheet defaults", min_length=1)
    gemm: KernelEfficiency = KernelEfficiency()
    grouped_gemm: KernelEfficiency = KernelEfficiency()
    attention_prefill: KernelEfficiency = KernelEfficiency()
    attention_decode: KernelEfficiency = KernelEfficiency()
    # Multi-head latent attention decode (FlashMLA / TensorRT-LLM MLA generation): every query
    # head of a sequence reads one shared latent cache, so it is compute-bound where GQA decode
    # is memory-bound, and is a kernel of its own. None: priced with attention_decode.
    attention_decode_mla: KernelEfficiency | None = None
    memory: KernelEfficiency = KernelEfficiency()
    collectives: CollectiveEfficiency = CollectiveEfficiency()
    fit_report: dict[str, Any] = {}

    def for_class(self, kernel_class: str) -> KernelEfficiency:
        """The efficiency terms of one kernel class (``"gemm"``, ``"grouped_gemm"``, ...)."""
        if kernel_class not in KERNEL_CLASSES:
            raise unknown_name("kernel class", kernel_class, KERNEL_CLASSES)
        block = getattr(self, kernel_class)
        return self.attention_decode if block is None else block


# --- the profile ----------------------------------------------------------------------------


class HardwareProfile(BaseModel):
    """One accelerator in SI units, with a source for every number."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    description: str = ""
    vendor: str = ""
    peak_flops_per_s: dict[str, PositiveFloat]  # dense, by dtype; absent = no such tensor cores
    hbm_bandwidth_bytes_per_s: PositiveFloat
    hbm_capacity_bytes: PositiveFloat
    num_sms: int = Field(gt=0)  # SMs (NVIDIA) or CUs (AMD)
    l2_bytes: PositiveFloat
    scaleup_domain_size: int = Field(ge=1)  # GPUs per NVLink / xGMI domain
    scaleup_bandwidth_bytes_per_s: PositiveFloat  # per GPU, per direction
    scaleup_in_switch_reduction: bool = False  # NVLink SHARP (NVLS) on NVSwitch
    scaleout_bandwidth_bytes_per_s: PositiveFloat  # per-GPU NIC, per direction
    host_link_bandwidth_bytes_per_s: PositiveFloat  # PCIe, per direction
    host_memory_bytes: PositiveFloat  # this GPU's share of host DRAM
    gpus_per_node: int = Field(8, ge=1)
    tdp_w: PositiveFloat
    price_usd_per_hour: float = Field(ge=0)  # per GPU-hour
    provenance: dict[str, str] = {}
    efficiency: Efficiency = Efficiency()
    measurement: dict[str, Any] = {}  # metadata of the run a measured profile came from

    @field_validator("peak_flops_per_s")
    @classmethod
    def _check_peaks(cls, value: dict[str, float]) -> dict[str, float]:
        out = {normalize_dtype(k): v for k, v in value.items()}
        unknown = sorted(set(out) - set(DTYPES))
        if unknown:
            raise ValueError(f"unknown dtype {unknown[0]!r}; known: {', '.join(DTYPES)}")
        if not out:
            raise ValueError("at least one dtype is needed")
        return out

    def peak(self, dtype: str) -> float:
        """Dense peak FLOP/s for ``dtype``; MoesimError if the chip has no such tensor cores."""
        d = normalize_dtype(dtype)
        if d not in self.peak_flops_per_s:
            have = ", ".join(self.peak_flops_per_s)
            raise MoesimError(f"{self.name} has no {d} tensor cores (it has: {have})")
        return self.peak_flops_per_s[d]

    def with_efficiency(self, efficiency: Efficiency | dict[str, Any]) -> HardwareProfile:
        """A copy with a new calibration block (e.g. fitted by ``moesim calibrate``)."""
        eff = Efficiency.model_validate(efficiency)
        return self.model_copy(update={"efficiency": eff})

    def missing_provenance(self) -> list[str]:
        """Numeric fields with no source in ``provenance`` (empty for a valid profile)."""
        have = set(self.provenance)
        missing = [f for f in numeric_fields(self) if f not in have]
        if "peak_flops_per_s" in have:
            missing = [f for f in missing if not f.startswith("peak_flops_per_s.")]
        return missing

    def to_yaml_dict(self) -> dict[str, Any]:
        """The profile as YAML would hold it: human units in the key names."""
        out: dict[str, Any] = {"name": self.name, "description": self.description}
        out["vendor"] = self.vendor
        for dtype, flops in self.peak_flops_per_s.items():
            out[f"{dtype}_dense_{PEAK_UNIT}"] = units.from_si(flops, PEAK_UNIT)
        for field in _HARDWARE_SCALARS:
            out[yaml_key(field)] = _human_value(field, getattr(self, field))
        out["provenance"] = {yaml_key(k): v for k, v in self.provenance.items()}
        out["efficiency"] = _efficiency_yaml(self.efficiency)
        if self.measurement:
            out["measurement"] = _plain(self.measurement)
        return out

    def save_yaml(self, path: str | Path) -> Path:
        """Write the profile as YAML (human units); returns the path."""
        from ruamel.yaml import YAML

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        yaml = YAML(typ="rt")
        yaml.default_flow_style = False
        yaml.width = 4096
        with path.open("w") as fh:
            yaml.dump(self.to_yaml_dict(), fh)
        return path

    def field_rows(self) -> list[dict[str, Any]]:
        """One row per number: YAML key, human value and unit, SI value and unit, source."""
        rows = []
        for field in numeric_fields(self):
            value_si = _get(self, field)
            key = yaml_key(field)
            base, unit = units.split_key(key)
            if field.startswith("peak_flops_per_s."):
                unit_name, human = PEAK_UNIT, units.from_si(value_si, PEAK_UNIT)
                si_unit = "FLOP/s"
            elif unit is not None:
                unit_name = key[len(base) + 1 :]
                human, si_unit = units.from_si(value_si, unit_name), _SI_UNIT_NAMES[unit.si_suffix]
            else:
                unit_name, human, si_unit = "", value_si, ""
            source = self.provenance.get(field) or self.provenance.get(field.split(".")[0], "")
            rows.append(
                {
                    "field": field,
                    "yaml_key": key,
                    "value": human,
                    "unit": unit_name,
                    "value_si": value_si,
                    "si_unit": si_unit,
                    "source": source,
                }
            )
        return rows


_HARDWARE_SCALARS = (
    "hbm_bandwidth_bytes_per_s",
    "hbm_capacity_bytes",
    "num_sms",
    "l2_bytes",
    "scaleup_domain_size",
    "scaleup_bandwidth_bytes_per_s",
    "scaleup_in_switch_reduction",
    "scaleout_bandwidth_bytes_per_s",
    "host_link_bandwidth_bytes_per_s",
    "host_memory_bytes",
    "gpus_per_node",
    "tdp_w",
    "price_usd_per_hour",
)


def numeric_fields(profile: HardwareProfile) -> list[str]:
    """The fields that need a source: one per peak dtype, then the hardware scalars."""
    return [f"peak_flops_per_s.{d}" for d in profile.peak_flops_per_s] + list(_HARDWARE_SCALARS)


def yaml_key(field: str) -> str:
    """The human-unit YAML key of an SI field: ``"l2_bytes" -> "l2_MB"``."""
    if field.startswith("peak_flops_per_s."):
        return f"{field.split('.', 1)[1]}_dense_{PEAK_UNIT}"
    if field in HUMAN_UNITS:
        base_si = field.removesuffix(units.UNITS[HUMAN_UNITS[field]].si_suffix)
        return f"{base_si}{HUMAN_UNITS[field]}"
    return field


def _get(profile: HardwareProfile, field: str) -> Any:
    if field.startswith("peak_flops_per_s."):
        return profile.peak_flops_per_s[field.split(".", 1)[1]]
    return getattr(profile, field)


def _human_value(field: str, value: Any) -> Any:
    if field not in HUMAN_UNITS:
        return value
    unit = HUMAN_UNITS[field]
    human = units.from_si(value, unit)
    if not isinstance(human, float) or not math.isfinite(human):
        return human
    # The human number that reads back as exactly this SI value (x 1e-6 and x 1e6 are not exact
    # inverses in binary): the shortest of a few roundings, else a neighbour a few ulps away.
    candidates = [float(f"{human:.{d}g}") for d in (12, 15, 16, 17)] + [human]
    step = human
    for _ in range(4):
        step = math.nextafter(step, math.inf)
        candidates.append(step)
    step = human
    for _ in range(4):
        step = math.nextafter(step, -math.inf)
        candidates.append(step)
    for c in candidates:
        if units.to_si(c, unit) == value:
            return c
    return human


def _efficiency_yaml(eff: Efficiency) -> dict[str, Any]:
    out: dict[str, Any] = {"source": eff.source}
    for block in (*KERNEL_CLASSES, "collectives"):
        if getattr(eff, block) is None:  # an optional class the profile does not calibrate
            continue
        values = getattr(eff, block).model_dump()
        out[block] = {
            yaml_key(k): _human_value(k, v)
            for k, v in values.items()
            if (v != {} and v is not None) or k == "source"
        }
    if eff.fit_report:
        out["fit_report"] = _plain(eff.fit_report)
    return out


def _plain(obj: Any) -> Any:
    """Numpy scalars / tuples / ruamel nodes -> plain Python for YAML and JSON."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, bool):
        return bool(obj)
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj)
    if hasattr(obj, "item"):  # numpy scalar
        return obj.item()
    if isinstance(obj, str):
        return str(obj)
    return obj


# --- finding and loading profiles -----------------------------------------------------------


def profile_dirs() -> list[Path]:
    """Where profiles live: package data (wheel installs), else the repo's ``hwprofiles/``."""
    package = Path(moesim.__file__).parent
    bundled = package / "_data" / "hwprofiles"
    return [bundled] if bundled.is_dir() else [package.parent / "hwprofiles"]


def _profile_paths() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder in profile_dirs():
        for path in sorted(folder.glob("*.yaml")):
            found.setdefault(path.name.removesuffix(".yaml"), path)
    return found


def list_hardware() -> list[str]:
    """Names of the shipped profiles (``h100-sxm``, ``h100-sxm.measured``, ...), sorted."""
    return sorted(_profile_paths())


DATASHEET_SUFFIX = ".datasheet"
DEFAULT_FRAMEWORK = "trtllm"


def measured_name(name: str, framework: str | None = None) -> str:
    """The profile a user's ``--hardware NAME`` means: ``NAME.<framework>`` (a profile fitted to
    that engine's measured kernels, e.g. ``h100-sxm.trtllm``) where one ships, else NAME.

    ``NAME.datasheet`` names the datasheet-only profile explicitly; paths and names that already
    carry a suffix are returned unchanged. No framework: the TensorRT-LLM tables, else vLLM,
    else SGLang, whichever ships first.
    """
    text = str(name)
    paths = _profile_paths()
    if text.endswith(DATASHEET_SUFFIX) and text.removesuffix(DATASHEET_SUFFIX) in paths:
        return text.removesuffix(DATASHEET_SUFFIX)
    if text not in paths or "." in text:
        return text
    order = [framework] if framework else [DEFAULT_FRAMEWORK, "vllm", "sglang"]
    for fw in order:
        if f"{text}.{fw}" in paths:
            return f"{text}.{fw}"
    return text


def load_hardware(name_or_path: str | Path | HardwareProfile) -> HardwareProfile:
    """Load a profile by name (``"h100-sxm"``) or from a YAML file path."""
    if isinstance(name_or_path, HardwareProfile):
        return name_or_path
    text = str(name_or_path)
    paths = _profile_paths()
    if text in paths:
        path = paths[text]
    elif isinstance(name_or_path, Path) or text.endswith((".yaml", ".yml")) or "/" in text:
        path = Path(text)
        if not path.is_file():
            raise MoesimError(f"hardware profile file not found: {text}")
    else:
        raise unknown_name("hardware profile", text, paths)
    resolved = path.resolve()
    return _load_file(str(resolved), resolved.stat().st_mtime_ns, _display(path))


@functools.lru_cache(maxsize=64)
def _load_file(path: str, mtime_ns: int, display: str) -> HardwareProfile:
    cached = _parsed_cache(path)
    if cached is not None:
        try:
            plain = json.loads(cached[1].read_text(encoding="utf-8"))
            _check_plain_numbers(plain, plain, display)
            profile = profile_from_yaml(plain, display)
            check_ranges(profile, display, plain)
            return profile
        except (OSError, ValueError, TypeError, KeyError, MoesimError):
            pass  # a stale or damaged entry: parse the file and rewrite it
    from moesim.spec.safe_io import load_yaml_file

    # Bounded, alias- and depth-checked YAML 1.2 (moesim.spec.safe_io); plain values for the
    # checks, the round-trip document for line numbers.
    plain, doc = load_yaml_file(path, what="hardware profile", display=display)
    _check_plain_numbers(plain, doc, display)
    profile = profile_from_yaml(doc, display)
    check_ranges(profile, display, doc)
    if cached is not None:
        _write_parsed(cached[1], plain)
    return profile


def _parsed_cache(path: str) -> tuple[str, Path] | None:
    """(key, file) of the parsed-tree cache of a profile file, or None when the cache is off.

    A measured profile's YAML (tens of kB with its fit report) takes the pure-Python YAML 1.2
    parser ~0.6 s, most of a cold ``moesim predict``. A profile that passed every check is kept
    as its plain tree in JSON under the user cache directory (``$MOESIM_CACHE_DIR``, as the
    routing tables), keyed by the SHA-256 of the file's bytes and of this module's source: an
    edited file or changed checks never read an old entry. The tree still goes through every
    check and the validator; only the YAML parse is skipped.
    """
    from moesim.cachedir import cache_dir

    folder = cache_dir("profiles")
    if folder is None:
        return None
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    h = hashlib.sha256(data)
    h.update(_module_digest().encode())
    key = h.hexdigest()
    return key, folder / f"{key}.json"


@functools.cache
def _module_digest() -> str:
    from moesim.spec import safe_io

    h = hashlib.sha256()
    for mod_path in (Path(__file__), Path(safe_io.__file__)):
        h.update(mod_path.read_bytes())
    return h.hexdigest()[:16]


def _write_parsed(target: Path, plain) -> None:
    import os
    import tempfile

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(_plain(plain), f)
        os.replace(tmp, target)  # atomic: readers never see half a file
    except (OSError, TypeError, ValueError):
        pass  # the cache is an optimisation; any I/O error just skips it


# Physical ranges of the SI fields (per GPU): far outside any accelerator built or announced, so
# only typos and hostile files trip them. A wrong value here is a wrong prediction everywhere.
RANGES: dict[str, tuple[float, float]] = {
    "peak_flops_per_s": (1e9, 1e19),  # 1 GFLOP/s .. 10 EFLOP/s
    "hbm_bandwidth_bytes_per_s": (1e8, 1e15),  # 0.1 GB/s .. 1 PB/s
    "hbm_capacity_bytes": (1e8, 1e14),  # 0.1 GB .. 100 TB
    "num_sms": (1, 1e5),
    "l2_bytes": (1e3, 1e11),
    "scaleup_domain_size": (1, 1e6),
    "scaleup_bandwidth_bytes_per_s": (1e6, 1e15),
    "scaleout_bandwidth_bytes_per_s": (1e6, 1e15),
    "host_link_bandwidth_bytes_per_s": (1e6, 1e15),
    "host_memory_bytes": (1e6, 1e16),
    "gpus_per_node": (1, 1e4),
    "tdp_w": (1, 1e5),
    "price_usd_per_hour": (0, 1e4),
}
MAX_EFFICIENCY_SECONDS = 10.0  # launch overheads and collective latencies are µs, never seconds


def check_ranges(profile: HardwareProfile, display: str = "<profile>", doc: Any = None) -> None:
    """Every number of ``profile`` finite and within :data:`RANGES`; efficiency terms finite and
    their ``*_s`` times in [0, 10 s]. MoesimError naming file, line and YAML key otherwise."""

    def fail(field: str, value: float, lo: float, hi: float) -> None:
        key = yaml_key(field)
        unit = PEAK_UNIT if field.startswith("peak_flops_per_s.") else HUMAN_UNITS.get(field, "")
        line = _line(doc, key) if isinstance(doc, dict) else 1
        shown = [_in_unit(v, unit) for v in (value, lo, hi)]
        raise MoesimError(
            f"{display}:{line}: field {key!r}: {shown[0]:g} is outside the physical range "
            f"[{shown[1]:g}, {shown[2]:g}]{' ' + unit if unit else ''}"
        )

    for dtype, flops in profile.peak_flops_per_s.items():
        lo, hi = RANGES["peak_flops_per_s"]
        if not (math.isfinite(flops) and lo <= flops <= hi):
            fail(f"peak_flops_per_s.{dtype}", flops, lo, hi)
    for field, (lo, hi) in RANGES.items():
        if field == "peak_flops_per_s":
            continue
        value = float(getattr(profile, field))
        if not (math.isfinite(value) and lo <= value <= hi):
            fail(field, value, lo, hi)
    for path, value in _numbers(
        profile.efficiency.model_dump(exclude={"fit_report"}), "efficiency"
    ):
        bad = not math.isfinite(value)
        if path.endswith("_s") and not 0 <= value <= MAX_EFFICIENCY_SECONDS:
            bad = True
        if bad:
            line = _line(doc, "efficiency") if isinstance(doc, dict) else 1
            shown = path.removesuffix("_s") + "_us" if path.endswith("_s") else path
            human = value * 1e6 if path.endswith("_s") else value
            raise MoesimError(
                f"{display}:{line}: field {shown!r}: {human:g} is not a finite number in range"
                + (f" [0, {MAX_EFFICIENCY_SECONDS * 1e6:g}] us" if path.endswith("_s") else "")
            )


def _in_unit(value_si: float, unit: str) -> float:
    if not unit or not math.isfinite(value_si):
        return value_si
    return float(value_si) / float(units.UNITS[unit].factor)


def _check_plain_numbers(node: Any, doc: Any, display: str, top: str = "") -> None:
    """Refuse numbers that cannot be floats (ints of hundreds of digits) and NaN, before the
    unit conversion meets them; the line is that of the top-level key holding the number."""
    if isinstance(node, dict):
        for key, value in node.items():
            _check_plain_numbers(value, doc, display, top or key)
    elif isinstance(node, list):
        for value in node:
            _check_plain_numbers(value, doc, display, top)
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        if (isinstance(node, int) and abs(node) > 1e300) or node != node:
            line = _line(doc, top) if isinstance(doc, dict) else 1
            raise MoesimError(
                f"{display}:{line}: field {top!r}: {node!r:.40} is not a usable number"
            )


def _numbers(node: Any, path: str):
    """(dotted path, float) of every numeric leaf of a plain nested dict."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _numbers(value, f"{path}.{key}")
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        yield path, float(node)


def profile_from_yaml(doc: dict[str, Any], display: str = "<yaml>") -> HardwareProfile:
    """Validate a parsed YAML mapping (human units) into a profile; errors name file:line:field."""
    reader = _Reader(display)
    data = reader.profile(doc)
    try:
        profile = HardwareProfile.model_validate(data, strict=True)
    except ValidationError as exc:
        raise reader.error_from(exc) from None
    missing = profile.missing_provenance()
    if missing:
        key = yaml_key(missing[0])
        raise MoesimError(
            f"{display}:{reader.line_of((missing[0].split('.')[0],), doc)}: field {key!r} has no "
            f"source; add it under 'provenance:' ({len(missing)} field(s) lack one: "
            f"{', '.join(yaml_key(m) for m in missing)})"
        )
    return profile


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


class _Reader:
    """Turns a human-unit YAML tree into SI data, remembering each field's YAML key and line."""

    def __init__(self, display: str):
        self.display = display
        self.where: dict[tuple[str, ...], tuple[str, int]] = {}  # SI loc -> (YAML path, line)

    def profile(self, doc: dict[str, Any]) -> dict[str, Any]:
        data = self.block(doc, HardwareProfile, ())
        if "measured_from" in doc:
            data.setdefault("measurement", {})["measured_from"] = _plain(doc["measured_from"])
        return data

    def block(self, node: Any, model: type[BaseModel], loc: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(node, dict):
            line = self.where.get(loc, ("", 1))[1]
            raise self.fail(loc, line, f"expected a mapping, got {type(node).__name__}")
        out: dict[str, Any] = {}
        for key, value in node.items():
            key = str(key)
            line = _line(node, key)
            if model is HardwareProfile and key == "measured_from":
                continue
            peak = _PEAK_KEY_RE.match(key) if model is HardwareProfile else None
            if peak:
                dtype = normalize_dtype(peak["dtype"])
                if dtype not in DTYPES:
                    message = f"unknown dtype {dtype!r}; known: {', '.join(DTYPES)}"
                    raise MoesimError(f"{self.display}:{line}: field {key!r}: {message}")
                self.where[("peak_flops_per_s", dtype)] = (key, line)
                self.where.setdefault(("peak_flops_per_s",), (key, line))
                number = self.number(value, loc + (key,), line)
                out.setdefault("peak_flops_per_s", {})[dtype] = units.to_si(number, peak["unit"])
                continue
            field = key if key in model.model_fields else units.si_key(key)
            if field not in model.model_fields:
                raise self.unknown(loc, key, line, model)
            self.where[loc + (field,)] = (".".join(loc + (key,)), line)
            nested = model.model_fields[field].annotation
            optional = typing.get_origin(nested) in (typing.Union, types.UnionType)
            if optional and value is not None:  # an optional block (X | None)
                models = [a for a in typing.get_args(nested) if isinstance(a, type)]
                nested = next((a for a in models if issubclass(a, BaseModel)), nested)
            if isinstance(nested, type) and issubclass(nested, BaseModel):
                out[field] = self.block(value, nested, loc + (field,))
            elif field == "provenance":
                out[field] = self.provenance(value, line)
            elif field != key:
                number = self.number(value, loc + (field,), line)
                out[field] = units.to_si(number, key[len(units.split_key(key)[0]) + 1 :])
            else:
                out[field] = _plain(value)
        return out

    def provenance(self, node: Any, line: int) -> dict[str, str]:
        if not isinstance(node, dict):
            raise self.fail(("provenance",), line, "expected a mapping of field: source")
        known = _provenance_keys()
        out = {}
        for key, source in node.items():
            key = str(key)
            field = known.get(key)
            if field is None:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise MoesimError(
                    f"{self.display}:{_line(node, key)}: provenance for unknown field {key!r}{hint}"
                )
            if not isinstance(source, str) or not source.strip():
                raise MoesimError(
                    f"{self.display}:{_line(node, key)}: provenance {key!r}: expected a source text"
                )
            out[field] = str(source)
        return out

    def number(self, value: Any, loc: tuple[str, ...], line: int) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(loc, line, f"expected a number, got {type(value).__name__} {value!r}")
        return float(value)

    def unknown(self, loc: tuple[str, ...], key: str, line: int, model: type[BaseModel]):
        known = _human_keys(model)
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(known)}"
        name = ".".join(loc + (key,))
        return MoesimError(f"{self.display}:{line}: unknown field {name!r}{hint}")

    def fail(self, loc: tuple[str, ...], line: int, message: str) -> MoesimError:
        name = self.where.get(loc, (".".join(loc),))[0]
        return MoesimError(f"{self.display}:{line}: field {name!r}: {message}")

    def error_from(self, exc: ValidationError) -> MoesimError:
        errors = exc.errors()
        first = errors[0]
        loc = tuple(str(p) for p in first["loc"])
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        message = first["msg"] + more
        for n in range(len(loc), 0, -1):
            if loc[:n] in self.where:
                key, line = self.where[loc[:n]]
                if n < len(loc):
                    key = f"{key}.{'.'.join(loc[n:])}"
                return MoesimError(f"{self.display}:{line}: field {key!r}: {message}")
        if first["type"] == "missing":
            key = ".".join(loc[:-1] + (yaml_key(loc[-1]),)) if loc else "?"
            return MoesimError(f"{self.display}:1: field {key!r}: missing (required)")
        return MoesimError(f"{self.display}:1: {'.'.join(loc) or 'profile'}: {message}")

    def line_of(self, loc: tuple[str, ...], doc: dict[str, Any]) -> int:
        return self.where.get(loc, ("", _line(doc, "provenance")))[1]


def _line(node: Any, key: str) -> int:
    """1-based line of ``key`` in a ruamel round-trip mapping (1 if unknown)."""
    try:
        return node.lc.key(key)[0] + 1
    except (AttributeError, KeyError, TypeError):
        return 1


def _human_keys(model: type[BaseModel]) -> list[str]:
    keys = [yaml_key(f) for f in model.model_fields]
    if model is HardwareProfile:
        keys.remove("peak_flops_per_s")
        keys += [f"{d}_dense_{PEAK_UNIT}" for d in DTYPES]
    return keys


@functools.cache
def _provenance_keys() -> dict[str, str]:
    """Every spelling a provenance key may take -> the SI field it documents."""
    fields = ["peak_flops_per_s", *(f"peak_flops_per_s.{d}" for d in DTYPES), *_HARDWARE_SCALARS]
    keys = {f: f for f in fields} | {yaml_key(f): f for f in fields}
    for block in ("efficiency", *(f"efficiency.{b}" for b in (*KERNEL_CLASSES, "collectives"))):
        keys[block] = block
    for text in ("name", "description", "vendor", "measurement"):
        keys[text] = text
    return keys
