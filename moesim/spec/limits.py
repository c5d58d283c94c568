"""Sane ceilings of every count a user gives, checked once at the boundary (CLI, scenario, Layout).

The cost path is vectorised numpy: an integer past int64, or a product of counts past 2**63,
would wrap around silently into a negative GPU count or a negative memory need. These ceilings
are far above any deployment that exists (the largest GPU clusters hold ~10**5 GPUs) and far
below where float64 or int64 arithmetic on them loses meaning, so a value beyond one is a typo
or a hostile input, refused with a message that names the field, the value and the range.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from moesim.errors import MoesimError

MAX_PARALLEL = 1 << 16  # tp, ep, pp, dp: GPUs along one parallel dimension
MAX_REPLICAS = 1 << 20  # independent copies of a layout
MAX_GPUS = 1 << 24  # tp * dp * pp * replicas
MAX_REDUNDANT_EXPERTS = 1 << 12  # EPLB replicas (DeepSeek-V3 serves 32 of 256 experts twice)
MAX_BATCH = 1 << 24  # concurrent sequences of one layout
MAX_TOKENS = 1 << 24  # input_len, output_len, context_len of one sequence (16.7 M tokens)
# batch * (input_len + output_len): bounds KV-cache and activation bytes well inside int64.
MAX_TOKENS_IN_FLIGHT = 10**10
MAX_BLOCK_M = 1 << 16  # grouped-GEMM tile rows
MAX_CAPACITY_FACTOR = 1e6  # beyond E/k every token fits; larger values change nothing
MAX_RATE_PER_S = 1e9  # arrival rate, requests per second
MAX_GPUS_PER_NODE = 1 << 12
MAX_AXIS_VALUES = 1_000_000  # values of one sweep axis
DEFAULT_MAX_POINTS = 5_000_000  # points of one sweep (a frame of ~2 GB); --max-points raises it

INT_LIMITS: dict[str, tuple[int, int]] = {
    "tp": (1, MAX_PARALLEL),
    "ep": (1, MAX_PARALLEL),
    "pp": (1, MAX_PARALLEL),
    "dp": (1, MAX_PARALLEL),
    "replicas": (1, MAX_REPLICAS),
    "redundant_experts": (0, MAX_REDUNDANT_EXPERTS),
    "batch": (1, MAX_BATCH),
    "input_len": (1, MAX_TOKENS),
    "output_len": (1, MAX_TOKENS),
    "context_len": (1, MAX_TOKENS),
    "block_m": (1, MAX_BLOCK_M),
    "nodes": (1, MAX_GPUS),
    "gpus_per_node": (1, MAX_GPUS_PER_NODE),
    "concurrency": (1, MAX_BATCH),
    "token_budget": (1, MAX_TOKENS),
    "max_batch": (1, MAX_BATCH),
}


def check_int(name: str, value: Any, lo: int | None = None, hi: int | None = None) -> int:
    """``value`` as an int in [lo, hi] (defaults from :data:`INT_LIMITS`), else MoesimError."""
    lo_d, hi_d = INT_LIMITS.get(name, (lo, hi))
    lo = lo_d if lo is None else lo
    hi = hi_d if hi is None else hi
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and value == int(value):
        value, ok = int(value), True
    if not ok or not lo <= int(value) <= hi:
        raise MoesimError(f"{name} must be an integer in [{lo:,}, {hi:,}], got {_show(value)}")
    return int(value)


def check_int_array(name: str, value: Any, lo: int | None = None, hi: int | None = None) -> None:
    """Every entry of ``value`` (scalar or array) an integer in [lo, hi]; MoesimError else."""
    lo_d, hi_d = INT_LIMITS.get(name, (lo, hi))
    lo = lo_d if lo is None else lo
    hi = hi_d if hi is None else hi
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError, OverflowError):
        raise MoesimError(
            f"{name} must be integers in [{lo:,}, {hi:,}], got {_show(value)}"
        ) from None
    bad = ~np.isfinite(arr) | (arr < lo) | (arr > hi) | (arr != np.floor(arr))
    if np.any(bad):
        first = arr[bad].flat[0] if arr.ndim else arr
        raise MoesimError(f"{name} must be integers in [{lo:,}, {hi:,}], got {_show(first)}")


def check_real(
    name: str, value: Any, lo: float, hi: float, *, lo_open: bool = False, unit: str = ""
) -> float:
    """``value`` as a finite float in [lo, hi] (or (lo, hi] with ``lo_open``), else MoesimError."""
    try:
        v = float(value)
    except (TypeError, ValueError, OverflowError):
        v = math.nan
    above = v > lo if lo_open else v >= lo
    if isinstance(value, bool) or not (math.isfinite(v) and above and v <= hi):
        left = "(" if lo_open else "["
        suffix = f" {unit}" if unit else ""
        raise MoesimError(
            f"{name} must be a finite number in {left}{lo:g}, {hi:g}]{suffix}, got {_show(value)}"
        )
    return v


def check_tokens_in_flight(batch: Any, input_len: Any, output_len: Any) -> None:
    """batch * (input_len + output_len) within :data:`MAX_TOKENS_IN_FLIGHT`."""
    tokens = float(np.max(batch)) * (float(np.max(input_len)) + float(np.max(output_len)))
    if tokens > MAX_TOKENS_IN_FLIGHT:
        raise MoesimError(
            f"batch x (input_len + output_len) = {tokens:,.0f} tokens in flight; the limit is "
            f"{MAX_TOKENS_IN_FLIGHT:,} (lower batch or the lengths)"
        )


# Bytes one GPU may be asked to hold: far beyond any memory (1e17 B = 100 PB), and below where
# the engine's reason text (need and weights in 0.1 GB units packed in one int64) would wrap.
MAX_BYTES_PER_GPU = 1e17


def check_memory_scale(model: Any, tokens_in_flight: float, where: str = "") -> None:
    """KV cache of ``tokens_in_flight`` tokens (fp32, the widest dtype) and the weights within
    :data:`MAX_BYTES_PER_GPU`, even on one GPU: a bigger request is a typo, not a deployment."""
    kv = float(model.kv_cache_bytes_per_token(4.0)) * float(tokens_in_flight)
    weights = float(model.total_params) * 4.0
    if max(kv, weights) > MAX_BYTES_PER_GPU:
        what = "KV cache" if kv >= weights else "weights"
        raise MoesimError(
            f"{where}{model.name}: {what} of {max(kv, weights):.3g} bytes; the limit is "
            f"{MAX_BYTES_PER_GPU:.0e} (lower batch, the lengths or the model size)"
        )


def _show(value: Any) -> str:
    text = repr(value.item() if isinstance(value, np.generic) else value)
    return text if len(text) <= 40 else text[:37] + "..."
