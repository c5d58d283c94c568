"""Measurement directories as tidy frames, and the held-out split of their shapes.

A directory written by ``moesim profile`` holds one CSV per kernel family (``gemm.csv``,
``memory.csv``, ``moe.csv``, ``attention.csv``, ``permute.csv``, ``collectives.csv``,
``layer.csv``) plus ``run.json`` and ``telemetry.json``. :func:`read_measurements` returns every
usable row (``status == ok``, positive ``median_s``) as one frame with a ``fit_class`` column:
the calibration block it informs (``gemm``, ``grouped_gemm``, ``attention_prefill``,
``attention_decode``, ``memory`` — copies and token permutes — or ``collectives``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from moesim.errors import MoesimError

CSV_FILES = ("gemm", "memory", "moe", "attention", "permute", "collectives")
KERNEL_FIT_CLASSES = (
    "gemm", "grouped_gemm", "attention_prefill", "attention_decode", "attention_decode_mla",
    "memory",
)  # fmt: skip
FIT_CLASSES = (*KERNEL_FIT_CLASSES, "collectives")
# kernel_class column value -> calibration block it is fitted into
FIT_CLASS_OF = {
    "gemm": "gemm",
    "grouped_gemm": "grouped_gemm",
    "moe": "grouped_gemm",
    "attention_prefill": "attention_prefill",
    "attention_decode": "attention_decode",
    "attention_decode_mla": "attention_decode_mla",
    "memory": "memory",
    "permute": "memory",
    "allreduce": "collectives",
    "alltoall": "collectives",
    "allgather": "collectives",
    "reducescatter": "collectives",
    "ep_dispatch": "collectives",
    "ep_combine": "collectives",
}
REQUIRED_COLUMNS = ("kernel_class", "shape_key", "median_s")
# Preference order of the MoE implementations a grouped_gemm block represents: the fused Triton
# kernel the project ships, torch's grouped GEMM, then the per-expert loop reference.
GROUPED_IMPL_PREFERENCE = ("triton", "grouped_mm", "loop")


def read_measurements(directory: str | Path, include_layers: bool = False) -> pd.DataFrame:
    """All ``status == ok`` rows of a measurement directory, with a ``fit_class`` column.

    Raises :class:`MoesimError` for a missing directory, one with no measurement CSV, a CSV
    pandas cannot parse or one lacking the required columns, and a directory with no usable row.
    """
    folder = Path(directory)
    if not folder.is_dir():
        raise MoesimError(f"measurement directory not found: {folder}")
    names = list(CSV_FILES) + (["layer"] if include_layers else [])
    frames = []
    for name in names:
        path = folder / f"{name}.csv"
        if path.is_file():
            frames.append(_read_csv(path))
    if not frames:
        wanted = ", ".join(f"{n}.csv" for n in CSV_FILES)
        raise MoesimError(f"{folder}: no measurement CSV found (expected one of {wanted})")
    df = (
        pd.concat([f for f in frames if len(f)], ignore_index=True)
        if any(len(f) for f in frames)
        else frames[0]
    )
    df = usable_rows(df)
    if df.empty:
        raise MoesimError(
            f"{folder}: no usable measurement (every row has status != ok or no median_s)"
        )
    return df


# A full profile run writes a few thousand rows per class; the bounds refuse a wrong or hostile
# file before pandas parses it and the fit spends minutes on it.
MAX_ROWS_PER_CSV = 200_000


def _read_csv(path: Path) -> pd.DataFrame:
    import io

    from moesim.spec.safe_io import MAX_CSV_BYTES, decode_text, read_bytes

    data = read_bytes(path, what="measurement CSV", max_bytes=MAX_CSV_BYTES)
    rows = data.count(b"\n")
    if rows > MAX_ROWS_PER_CSV + 1:
        raise MoesimError(
            f"{path}: {rows:,} lines; a measurement CSV holds at most {MAX_ROWS_PER_CSV:,} rows"
        )
    text = decode_text(data, str(path))
    try:
        df = pd.read_csv(io.StringIO(text), low_memory=False)
    except pd.errors.EmptyDataError:
        return pd.DataFrame(columns=list(REQUIRED_COLUMNS))
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MoesimError(f"{path}: not a readable CSV ({first})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise MoesimError(
            f"{path}: missing column(s) {', '.join(missing)}; is it a moesim profile CSV?"
        )
    return df


def usable_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows that were measured (status ok, finite positive median) with normalised text columns."""
    df = df.copy()
    for col, default in (("status", "ok"), ("impl", ""), ("dtype", "bf16"), ("device_name", "")):
        if col not in df.columns:
            df[col] = default
        df[col] = df[col].fillna(default).astype(str)
    df["kernel_class"] = df["kernel_class"].astype(str)
    df["shape_key"] = df["shape_key"].astype(str)
    df["median_s"] = pd.to_numeric(df["median_s"], errors="coerce")
    keep = (df["status"] == "ok") & np.isfinite(df["median_s"]) & (df["median_s"] > 0)
    # Unpermute by index_add is an atomic scatter (~200 GB/s on an H200), bound by atomics rather
    # than bandwidth; serving engines combine expert outputs with a gather-sum (vLLM moe_sum),
    # which the permute rows (index_select) represent. It stays in the CSV, out of the model.
    keep &= ~df["impl"].str.contains("index_add", regex=False)
    df = df[keep].copy()
    df["fit_class"] = df["kernel_class"].map(lambda c: FIT_CLASS_OF.get(c, c))
    return df.reset_index(drop=True)


def read_run_metadata(directory: str | Path) -> dict[str, Any]:
    """``run.json`` and ``telemetry.json`` merged as {"run": ..., "telemetry": ...} (empty if absent)."""
    folder = Path(directory)
    out: dict[str, Any] = {}
    for name in ("run", "telemetry"):
        path = folder / f"{name}.json"
        if path.is_file():
            try:
                out[name] = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise MoesimError(
                    f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})"
                ) from None
    return out


def choose_grouped_impl(impls: list[str]) -> str | None:
    """The MoE implementation a grouped_gemm block is fitted to (see GROUPED_IMPL_PREFERENCE)."""
    for want in GROUPED_IMPL_PREFERENCE:
        for impl in sorted(impls):
            if impl == want or impl.startswith(want):
                return impl
    return sorted(impls)[0] if impls else None


# --- held-out split ---------------------------------------------------------------------------

HELDOUT_RULE = (
    "rank the class's distinct shape_keys by sha256('<seed>:<shape_key>') and hold out the first "
    "floor(fraction * n_shapes + 0.5); every dtype and impl of a shape goes with it"
)


def shape_hash(shape_key: str, seed: int) -> int:
    """Deterministic 64-bit hash of a shape (independent of PYTHONHASHSEED and row order)."""
    digest = hashlib.sha256(f"{seed}:{shape_key}".encode()).hexdigest()
    return int(digest[:16], 16)


def heldout_shapes(shape_keys, fraction: float, seed: int) -> list[str]:
    """The held-out shape_keys of one class: a fixed fraction, chosen by :data:`HELDOUT_RULE`."""
    if not 0 <= fraction < 1:
        raise MoesimError(f"held-out fraction must be in [0, 1), got {fraction}")
    shapes = sorted(set(map(str, shape_keys)))
    n_out = int(np.floor(fraction * len(shapes) + 0.5))
    n_out = min(n_out, max(len(shapes) - 1, 0))  # always keep one shape to fit on
    ranked = sorted(shapes, key=lambda s: (shape_hash(s, seed), s))
    return sorted(ranked[:n_out])


def split_mask(df: pd.DataFrame, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of held-out rows of one class's frame."""
    out = set(heldout_shapes(df["shape_key"], fraction, seed))
    return df["shape_key"].astype(str).isin(out).to_numpy()


def error_stats(predicted, measured) -> dict[str, float]:
    """median / mean / max of |pred - meas| / meas, and n (NaN stats when n == 0)."""
    p = np.asarray(predicted, dtype=float)
    m = np.asarray(measured, dtype=float)
    if p.size == 0:
        nan = float("nan")
        return {"median_abs_error": nan, "mean_abs_error": nan, "max_abs_error": nan, "n": 0}
    err = np.abs(p - m) / m
    return {
        "median_abs_error": float(np.median(err)),
        "mean_abs_error": float(np.mean(err)),
        "max_abs_error": float(np.max(err)),
        "n": int(p.size),
    }
