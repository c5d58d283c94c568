"""Numeric formats: bytes per element and which format the tensor cores compute in."""

from __future__ import annotations

import numpy as np

from moesim.errors import unknown_name

# Bytes per stored element. fp4 follows OCP MXFP4 (4-bit E2M1 + one 8-bit scale per 32
# elements = 4.25 bits; OCP Microscaling Formats spec v1.0, 2023), as gpt-oss ships its experts.
DTYPE_BYTES: dict[str, float] = {
    "fp32": 4.0,
    "bf16": 2.0,
    "fp16": 2.0,
    "fp8": 1.0,
    "int8": 1.0,
    "fp4": 4.25 / 8,
}


def dtype_bytes(dtype: str) -> float:
    """Bytes per element of ``dtype``; unknown names raise a one-line error."""
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise unknown_name("dtype", dtype, DTYPE_BYTES) from None


def compute_dtype(weight_dtype: str, peaks: dict[str, float]) -> str:
    """Format the matrix units run in for weights stored as ``weight_dtype``.

    fp8 weights run fp8 GEMMs (W8A8) where the chip has fp8 tensor cores, else they are
    up-cast and run in bf16 (weight-only quantisation, e.g. A100). fp4 runs fp4 where the
    chip lists it (Blackwell), else the best of fp8/bf16 it has.
    """
    if weight_dtype in peaks:
        return weight_dtype
    for fallback in ("fp8", "bf16", "fp16", "fp32"):
        if fallback in peaks and DTYPE_BYTES[fallback] >= DTYPE_BYTES.get(weight_dtype, 0):
            return fallback
    return "bf16"


def as_array(x) -> np.ndarray:
    """Float array view of a scalar or array input (no copy when already float)."""
    return np.asarray(x, dtype=float)
