"""Numeric formats: bytes per stored element (scales included) and the format GEMMs compute in.

A *format* is how a checkpoint stores a weight: element bits plus the amortised bits of its
block or group scales (and zero points). Which tensor-core rate the GEMM runs at depends on the
chip: a format runs natively where the profile lists the MMA type it needs (``fp8``, ``fp4``),
else it is dequantised in the GEMM and run in bf16 (weight-only: the memory traffic is the
format's, the math is bf16's), or it is refused where no engine has such a kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.errors import MoesimError, unknown_name


@dataclass(frozen=True)
class Format:
    """One stored number format.

    element_bits : bits of one value
    scale_bits : bits of scale and zero-point metadata per value (amortised over its block)
    native : tensor-core type the chip must list for the native path (None: always native)
    compute : peak the native path runs at (W x A of the kernel engines use)
    fallback : peak used where ``native`` is missing (weight-only dequantisation), or None when
        no engine runs the format on such a chip (refused)
    layout : one line on the encoding; source : where the numbers come from
    """

    name: str
    element_bits: float
    scale_bits: float
    native: str | None
    compute: str
    fallback: str | None
    layout: str
    source: str

    @property
    def bytes_per_element(self) -> float:
        return (self.element_bits + self.scale_bits) / 8.0


_VLLM_FP8 = (
    "vLLM FP8 docs (docs.vllm.ai/en/stable/features/quantization/fp8): W8A8 on compute "
    "capability >= 8.9 (Ada, Hopper, Blackwell), weight-only W8A16 through FP8 Marlin below"
)
_FP4_MARLIN = (
    "vLLM marlin_utils_fp4: without native FP4 'weight-only FP4 compression will be used "
    "leveraging the Marlin kernel'; TensorRT-LLM gpt-oss deployment guide: H200 runs MXFP4 "
    "MoE weights with BF16 activations (Triton backend)"
)
_INT4 = (
    "AWQ (Lin et al., arXiv:2306.00978) / GPTQ (Frantar et al., arXiv:2210.17323) group-128 "
    "checkpoints run W4A16 in Marlin kernels (Frantar et al., arXiv:2408.11743): int4 weights "
    "dequantised into fp16/bf16 tensor-core MMAs"
)

FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("fp32", 32, 0, None, "fp32", None, "IEEE binary32", "IEEE 754"),
        Format("bf16", 16, 0, None, "bf16", None, "bfloat16", "IEEE 754 / bfloat16"),
        Format("fp16", 16, 0, None, "fp16", None, "binary16", "IEEE 754"),
        Format(
            "fp8",
            8,
            0,
            "fp8",
            "fp8",
            "bf16",
            "e4m3 with per-tensor or per-channel fp32 scales (negligible bytes)",
            _VLLM_FP8,
        ),
        Format(
            "fp8-block",
            8,
            32 / (128 * 128),
            "fp8",
            "fp8",
            "bf16",
            "e4m3 with one fp32 scale per 128x128 weight block (DeepSeek-V3 weight_block_size)",
            "DeepSeek-V3 report arXiv:2412.19437 section 3.3 and its config.json "
            "quantization_config; DeepGEMM block-scaled fp8 GEMMs on Hopper. " + _VLLM_FP8,
        ),
        Format(
            "int8",
            8,
            0,
            "int8",
            "int8",
            "bf16",
            "int8 with per-channel scales (SmoothQuant W8A8)",
            "SmoothQuant (Xiao et al., arXiv:2211.10438): W8A8 on int8 tensor cores",
        ),
        Format(
            "mxfp4",
            4,
            8 / 32,
            "fp4",
            "fp8",
            "bf16",
            "e2m1 with one e8m0 scale per 32 values (OCP MX v1.0): 4.25 bits",
            "OCP Microscaling Formats spec v1.0 (2023); TensorRT-LLM gpt-oss deployment guide: "
            "Blackwell runs MXFP4 MoE weights with MXFP8 activations (fp8 MMA rate). "
            + _FP4_MARLIN,
        ),
        Format(
            "nvfp4",
            4,
            8 / 16,
            "fp4",
            "fp4",
            "bf16",
            "e2m1 with one fp8 (e4m3) scale per 16 values plus one fp32 per tensor: 4.5 bits",
            "NVIDIA Blackwell NVFP4 (TensorRT Model Optimizer NVFP4, W4A4 on fp4 tensor "
            "cores). " + _FP4_MARLIN,
        ),
        Format(
            "fp4",
            4,
            8 / 32,
            "fp4",
            "fp4",
            None,
            "W4A4: fp4 weights and activations on fp4 tensor cores, MX-scaled (4.25 bits)",
            "OCP Microscaling Formats spec v1.0; fp4 MMAs exist on Blackwell only",
        ),
        Format(
            "int4-awq",
            4,
            (16 + 4) / 128,
            None,
            "bf16",
            None,
            "int4 with one fp16 scale and one 4-bit zero per group of 128 (W4A16)",
            _INT4,
        ),
        Format(
            "int4-gptq",
            4,
            (16 + 4) / 128,
            None,
            "bf16",
            None,
            "int4 with one fp16 scale and one packed 4-bit zero per group of 128 (W4A16)",
            _INT4,
        ),
    )
}

# Bytes per stored element, scales included (kept for callers that only need the size).
DTYPE_BYTES: dict[str, float] = {name: f.bytes_per_element for name, f in FORMATS.items()}

# Spellings users and config files use for the same formats.
ALIASES = {
    "bfloat16": "bf16",
    "float16": "fp16",
    "float32": "fp32",
    "e4m3": "fp8",
    "fp8_e4m3": "fp8",
    "fp8-e4m3": "fp8",
    "fp8_block": "fp8-block",
    "fp8-block128": "fp8-block",
    "awq": "int4-awq",
    "gptq": "int4-gptq",
    "w4a16": "int4-awq",
}

# What serving engines store the KV cache in (vLLM --kv-cache-dtype auto|fp8|fp8_e4m3|fp8_e5m2;
# TensorRT-LLM kv_cache_config.dtype and INT8 KV; SGLang --kv-cache-dtype auto|fp8_e4m3|fp8_e5m2).
KV_DTYPES = ("bf16", "fp16", "fp32", "fp8", "int8")
# What the EP all-to-all carries (DeepEP: bf16, or fp8 with 1x128 scales in dispatch).
DISPATCH_DTYPES = ("bf16", "fp16", "fp8")
ACT_DTYPES = ("bf16", "fp16", "fp32")

# Parts of a model whose weights a checkpoint may keep unquantised (HF modules_to_not_convert).
WEIGHT_COMPONENTS = (
    "attention",
    "router",
    "experts",
    "shared_experts",
    "dense_ffn",
    "embedding",
    "lm_head",
)


def canonical_dtype(name: str) -> str:
    """The canonical format name of ``name`` (aliases resolved; unknown names raise)."""
    text = str(name).strip().lower()
    text = ALIASES.get(text, text)
    if text not in FORMATS:
        raise unknown_name("dtype", name, FORMATS)
    return text


def dtype_bytes(dtype: str) -> float:
    """Bytes per element of ``dtype``, scales included; unknown names raise a one-line error."""
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise unknown_name("dtype", dtype, DTYPE_BYTES) from None


def kept_parts(model, layout) -> tuple[str, ...]:
    """Parts whose weights stay in ``layout.act_dtype``: those the checkpoint keeps unquantised
    when the model is served in its own format (gpt-oss: attention, router, embedding and LM
    head in bf16 beside MXFP4 experts); none when another format is chosen."""
    try:
        native = model.native_format
    except (AttributeError, MoesimError):
        return ()
    return native.unquantized if native.weight_dtype == layout.weight_dtype else ()


def weight_dtype_of(model, layout, part: str) -> str:
    """Format the weights of ``part`` (one of :data:`WEIGHT_COMPONENTS`) are stored in."""
    return layout.act_dtype if part in kept_parts(model, layout) else layout.weight_dtype


def weight_bytes_per_param(model, layout, part: str) -> float:
    """Bytes one parameter of ``part`` takes under ``layout`` (scales included)."""
    return dtype_bytes(weight_dtype_of(model, layout, part))


@dataclass(frozen=True)
class ComputeChoice:
    """The peak a format's GEMMs run at on one chip, and why."""

    dtype: str
    weight_only: bool
    note: str


def compute_choice(weight_dtype: str, peaks: dict[str, float], hardware: str = "") -> ComputeChoice:
    """Where weights stored as ``weight_dtype`` run on a chip with ``peaks``; raises a one-line
    :class:`MoesimError` when no engine runs the format there."""
    fmt = FORMATS.get(weight_dtype)
    if fmt is None:
        raise unknown_name("dtype", weight_dtype, FORMATS)
    chip = hardware or "this GPU"
    if fmt.native is None or fmt.native in peaks:
        compute = fmt.compute if fmt.compute in peaks else _best_16bit(peaks)
        return ComputeChoice(compute, False, f"{fmt.name} runs {compute} MMAs on {chip}")
    if fmt.fallback is None:
        has = ", ".join(d for d in peaks if d not in ("tf32", "fp32")) or "none"
        raise MoesimError(
            f"dtype {fmt.name} ({fmt.layout}) needs {fmt.native} tensor cores; {chip} has "
            f"{has}. For 4-bit weights there use mxfp4, nvfp4, int4-awq or int4-gptq "
            "(weight-only, computed in bf16)"
        )
    compute = fmt.fallback if fmt.fallback in peaks else _best_16bit(peaks)
    return ComputeChoice(
        compute,
        True,
        f"{chip} has no {fmt.native} tensor cores: {fmt.name} weights are dequantised in the "
        f"GEMM and run {compute} MMAs (weight-only)",
    )


def compute_dtype(weight_dtype: str, peaks: dict[str, float]) -> str:
    """Peak the GEMMs of ``weight_dtype`` weights run at on a chip with ``peaks``.

    Never raises (sweeps evaluate every point): a format no engine runs on the chip is costed
    as bf16 (the CLI refuses it before, with :func:`compute_choice`'s reason).
    """
    try:
        return compute_choice(weight_dtype, peaks).dtype
    except MoesimError:
        return _best_16bit(peaks)


def _best_16bit(peaks: dict[str, float]) -> str:
    for name in ("bf16", "fp16", "fp32"):
        if name in peaks:
            return name
    return "bf16"


def check_kv_dtype(kv_dtype: str) -> None:
    """Refuse KV-cache formats no serving engine stores."""
    if kv_dtype not in KV_DTYPES:
        raise MoesimError(
            f"kv_dtype {kv_dtype!r} is not a KV-cache format engines support; use one of "
            f"{', '.join(KV_DTYPES)} (vLLM/SGLang --kv-cache-dtype, TensorRT-LLM "
            "kv_cache_config.dtype)"
        )


@dataclass(frozen=True)
class FormatChoice:
    """The formats one prediction runs in, where each came from, and how the GEMMs run."""

    weight_dtype: str
    kv_dtype: str
    kept: tuple[str, ...]  # parts left in the activation dtype
    act_dtype: str
    compute: ComputeChoice
    weight_origin: str  # "checkpoint" or "--dtype"
    kv_origin: str  # "checkpoint" or "--kv-dtype"
    source: str

    def describe(self) -> str:
        """One line for tables: 'weights mxfp4 (checkpoint; attention/... bf16), KV bf16 ...'."""
        kept = f"; {'/'.join(self.kept)} {self.act_dtype}" if self.kept else ""
        return (
            f"weights {self.weight_dtype} ({self.weight_origin}{kept}), KV {self.kv_dtype} "
            f"({self.kv_origin}), compute {self.compute.dtype}"
            + (" weight-only" if self.compute.weight_only else "")
        )

    def to_dict(self) -> dict:
        return {
            "weight_dtype": self.weight_dtype,
            "weight_dtype_origin": self.weight_origin,
            "kv_dtype": self.kv_dtype,
            "kv_dtype_origin": self.kv_origin,
            "unquantized_parts": list(self.kept),
            "act_dtype": self.act_dtype,
            "compute_dtype": self.compute.dtype,
            "weight_only": self.compute.weight_only,
            "compute_note": self.compute.note,
            "checkpoint": self.source,
        }


def resolve_formats(model, hw, dtype: str | None = None, kv_dtype: str | None = None):
    """Formats a prediction of ``model`` on ``hw`` uses: the checkpoint's own unless ``dtype`` /
    ``kv_dtype`` override them. Refuses (one-line :class:`MoesimError`) a weight format no
    engine runs on the chip and a KV format no engine stores."""
    native = model.native_format
    weight = native.weight_dtype if dtype is None else canonical_dtype(dtype)
    kv = native.kv_dtype if kv_dtype is None else canonical_dtype(kv_dtype)
    check_kv_dtype(kv)
    compute = compute_choice(weight, hw.peak_flops_per_s, hw.name)
    kept = native.unquantized if weight == native.weight_dtype else ()
    return FormatChoice(
        weight_dtype=weight,
        kv_dtype=kv,
        kept=kept,
        act_dtype=native.act_dtype,
        compute=compute,
        weight_origin="checkpoint" if dtype is None else "--dtype",
        kv_origin="checkpoint" if kv_dtype is None else "--kv-dtype",
        source=native.source,
    )


def as_array(x) -> np.ndarray:
    """Float array view of a scalar or array input (no copy when already float)."""
    return np.asarray(x, dtype=float)
