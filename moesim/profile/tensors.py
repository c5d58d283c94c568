"""Small tensor helpers shared by the sweeps: dtype names, random inputs, sampled checks."""

from __future__ import annotations

import torch

from moesim.kernels.reference import relative_error

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}
if hasattr(torch, "float8_e4m3fn"):
    DTYPES["fp8_e4m3"] = torch.float8_e4m3fn

FP8_E4M3_MAX = 448.0  # largest finite float8_e4m3fn value
TOLERANCE = {"fp32": 1e-3, "fp16": 1e-2, "bf16": 1.5e-2, "fp8_e4m3": 2e-2}


def randn(*shape: int, dtype: torch.dtype, device: str, scale: float = 1.0) -> torch.Tensor:
    """Standard-normal values (never zeros), times ``scale``, in ``dtype``."""
    if dtype.is_floating_point and dtype.itemsize >= 2:
        return torch.randn(*shape, device=device, dtype=dtype).mul_(scale)
    return (torch.randn(*shape, device=device) * scale).to(dtype)


def quantize_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor float8_e4m3fn quantisation: (x / s) in fp8 and s (fp32, one element)."""
    scale = (x.abs().amax().float() / FP8_E4M3_MAX).clamp(min=1e-12)
    return (x.float() / scale).to(torch.float8_e4m3fn), scale.reshape(())


def sample_rows(m: int, device: str, count: int = 64) -> torch.Tensor:
    """Up to ``count`` distinct row indices of [0, m): the rows a sampled check recomputes."""
    return torch.randperm(m, device=device)[: min(m, count)]


__all__ = ["DTYPES", "TOLERANCE", "quantize_fp8", "randn", "relative_error", "sample_rows"]
