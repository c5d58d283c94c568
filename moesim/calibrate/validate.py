"""How well a hardware profile predicts a set of measurements: per kernel class, overall, and
for whole decoder layers.

Kernel and collective rows are priced by :mod:`moesim.calibrate.predict` (the functions
``moesim predict`` uses); the error of a row is |pred - meas| / meas. With ``heldout_only`` only
the shapes the profile's ``fit_report`` held out of its fit are scored. A grouped_gemm block
represents one MoE implementation (``fit_report.classes.grouped_gemm.impl``); only rows of that
implementation are scored against it.

Layer check (``layer.csv``: a real decoder layer — RMSNorm, attention, RMSNorm, router, MoE —
timed end to end): the prediction for a row is the sum over the operators that
:func:`moesim.cost.ops.step_ops` lists for a one-layer model of the row's dimensions (tp = ep = 1),
timed by :func:`moesim.cost.step.evaluate_ops`, without the embedding, LM head and communication
operators. The routed experts are priced by :func:`moesim.cost.kernel_cost.moe_cost` with the
expected routing of the GPU's slice: a layer profiled with E_loc of E experts (DeepSeek-V3's
32 of 256 on one EP8 GPU) computes the expected share E_loc/E of the assignments, active experts
and padded rows of uniform top-k routing (:func:`moesim.cost.routing.routing_stats`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from moesim.calibrate.measurements import (
    FIT_CLASSES,
    error_stats,
    read_measurements,
    usable_rows,
)
from moesim.calibrate.predict import predict_rows
from moesim.errors import MoesimError
from moesim.spec.hardware import load_hardware

WORST_N = 10


def scored_rows(directory_or_frame, profile, heldout_only: bool = False) -> pd.DataFrame:
    """Measured rows with ``predicted_s`` and ``error`` (|pred - meas| / meas)."""
    hw = load_hardware(profile)
    if isinstance(directory_or_frame, pd.DataFrame):
        df = usable_rows(directory_or_frame)
    else:
        df = read_measurements(directory_or_frame)
    df = df[df["fit_class"].isin(FIT_CLASSES)]
    classes = (hw.efficiency.fit_report or {}).get("classes", {})
    grouped_impl = (classes.get("grouped_gemm") or {}).get("impl")
    if grouped_impl and grouped_impl != "all":
        df = df[(df["fit_class"] != "grouped_gemm") | (df["impl"] == grouped_impl)]
    world = pd.to_numeric(
        df.get("world_size", pd.Series(1.0, index=df.index)), errors="coerce"
    ).fillna(1.0)
    df = df[(df["fit_class"] != "collectives") | (world > 1)]
    if heldout_only:
        if not classes:
            raise MoesimError(
                f"profile {hw.name!r} has no fit_report with held-out shapes; run without --heldout-only"
            )
        keep = np.zeros(len(df), bool)
        for cls, report in classes.items():
            held = set(report.get("heldout_shape_keys") or [])
            keep |= ((df["fit_class"] == cls) & df["shape_key"].isin(held)).to_numpy()
        df = df[keep]
    df = df.reset_index(drop=True)
    if df.empty:
        raise MoesimError("no measurement rows to validate (after filtering)")
    df["predicted_s"] = predict_rows(hw, df)
    df["error"] = np.abs(df["predicted_s"] - df["median_s"]) / df["median_s"]
    return df


def validate(directory, profile, heldout_only: bool = False) -> dict[str, Any]:
    """The validation report: ``overall``, ``classes``, ``worst`` and (with layer.csv) ``layers``."""
    hw = load_hardware(profile)
    df = scored_rows(directory, hw, heldout_only)
    report: dict[str, Any] = {
        "profile": hw.name,
        "calibration": hw.efficiency.source,
        "heldout_only": heldout_only,
        "overall": error_stats(df["predicted_s"], df["median_s"]),
        "classes": {
            cls: error_stats(part["predicted_s"], part["median_s"])
            for cls, part in df.groupby("fit_class", sort=True)
        },
        "worst": worst_rows(df),
    }
    layer_csv = Path(directory) / "layer.csv" if not isinstance(directory, pd.DataFrame) else None
    if layer_csv is not None and layer_csv.is_file():
        report["layers"] = layer_report(layer_csv, hw)
    return report


def worst_rows(df: pd.DataFrame, n: int = WORST_N) -> list[dict[str, Any]]:
    worst = df.sort_values("error", ascending=False).head(n)
    return [
        {
            "class": r.fit_class,
            "shape_key": r.shape_key,
            "impl": r.impl,
            "dtype": r.dtype,
            "measured_s": float(r.median_s),
            "predicted_s": float(r.predicted_s),
            "error": float(r.error),
        }  # fmt: skip
        for r in worst.itertuples()
    ]


# --- layer check ------------------------------------------------------------------------------


def layer_report(path: Path, hw) -> dict[str, Any]:
    """Error stats of whole-layer predictions (rows of the calibrated MoE impl) and every row."""
    raw = pd.read_csv(path)
    df = usable_rows(raw)
    if df.empty:
        return error_stats([], []) | {"impl": None, "rows": []}
    df = df.reset_index(drop=True)
    df["predicted_s"] = predict_layer_rows(hw, df)
    df["error"] = np.abs(df["predicted_s"] - df["median_s"]) / df["median_s"]
    classes = (hw.efficiency.fit_report or {}).get("classes", {})
    impl = (classes.get("grouped_gemm") or {}).get("impl")
    scored = df[df["impl"] == impl] if impl in set(df["impl"]) else df
    rows = [
        {
            "shape_key": r.shape_key,
            "impl": r.impl,
            "phase": r.phase,
            "batch": int(r.batch),
            "tokens": int(r.tokens),
            "measured_s": float(r.median_s),
            "predicted_s": float(r.predicted_s),
            "error": float(r.error),
        }  # fmt: skip
        for r in df.itertuples()
    ]
    by_impl = {i: error_stats(p["predicted_s"], p["median_s"]) for i, p in df.groupby("impl")}
    return error_stats(scored["predicted_s"], scored["median_s"]) | {
        "impl": impl if impl in set(df["impl"]) else "all",
        "by_impl": by_impl,
        "rows": rows,
    }


def _shared_intermediate(row) -> float:
    """Shared-expert width: the row's column, else the profiled model's config (shapes.MODELS)."""
    value = getattr(row, "shared_intermediate", None)
    if value is not None and np.isfinite(float(value)):
        return float(value)
    from moesim.profile.shapes import MODELS

    name = str(row.model).split("/")[0].replace("-shaped", "")
    cfg = MODELS.get(name, {})
    shrink = int(str(row.model).split("/")[1]) if "/" in str(row.model) else 1
    inter = cfg.get("moe_intermediate_size") or cfg.get("intermediate_size") or 0
    return float(cfg.get("n_shared_experts", 0) * inter // shrink) if inter else 0.0


# Torch ops one eager call of moesim.profile.layer.decoder_layer launches besides the experts:
# two RMSNorms (float, pow, mean, add, rsqrt, mul, cast, scale: 8 each), q/k/v and o GEMMs, the
# SDPA call, the head transpose copy, two residual adds, the router (GEMM, cast, softmax, top-k,
# sum, divide); decode adds the two KV-cache slot writes, an EP slice masks non-local experts
# (where, full_like) and a shared expert adds GEMM, SiLU, mul, GEMM, add.
EAGER_LAYER_OPS = 30
EAGER_DECODE_OPS, EAGER_EP_SLICE_OPS, EAGER_SHARED_OPS = 2, 2, 5
EAGER_TIMING = ("cuda_event",)


def eager_layer_launches(row) -> float:
    """Host launches of one eager decoder-layer call (see EAGER_LAYER_OPS), experts included."""
    from moesim.cost.kernel_cost import moe_launches

    n = EAGER_LAYER_OPS
    n += EAGER_DECODE_OPS if str(row.phase) == "decode" else 0
    n += EAGER_EP_SLICE_OPS if int(row.local_experts) < int(row.experts) else 0
    n += EAGER_SHARED_OPS if _shared_intermediate(row) else 0
    active = min(
        int(row.local_experts),
        int(row.batch) * int(getattr(row, "seq_len", 1) or 1) * int(row.top_k),
    )
    return float(n + moe_launches(str(row.impl), str(getattr(row, "impl_path", "")), active))


def predict_layer_rows(hw, df: pd.DataFrame) -> np.ndarray:
    """Predicted seconds of one decoder layer per row (see module docstring)."""
    from moesim.cost.kernel_cost import moe_cost, moe_launches
    from moesim.cost.ops import RoutingOptions, step_ops
    from moesim.cost.routing import routing_stats
    from moesim.engine.static import evaluate_ops
    from moesim.spec.deployment import Layout
    from moesim.spec.dtypes import compute_dtype
    from moesim.spec.model import ModelSpec

    out = np.full(len(df), np.nan)
    for i, r in enumerate(df.itertuples()):
        dtype = "fp8" if str(r.dtype).startswith("fp8") else str(r.dtype)
        E, E_loc, k = int(r.experts), int(r.local_experts), int(r.top_k)
        h, inter = int(r.hidden), int(r.intermediate)
        shared = _shared_intermediate(r)
        spec = ModelSpec(
            name=str(r.model), hidden_size=h, num_hidden_layers=1, num_attention_heads=int(r.num_heads),
            num_key_value_heads=int(r.num_kv_heads), head_dim=int(r.head_dim), vocab_size=1,
            intermediate_size=inter, num_local_experts=E, num_experts_per_tok=k,
            moe_intermediate_size=inter,
            shared_expert_intermediate_size=int(shared) if E > 1 else 0,
        )  # fmt: skip
        layout = Layout(weight_dtype=dtype, act_dtype=dtype, kv_dtype=dtype)
        block_m = 64 if str(r.impl).startswith("triton") else None
        decode = str(r.phase) == "decode"
        new = 1 if decode else int(r.seq_len)
        ctx = int(r.context_len) if decode else 0
        ops, _ = step_ops(
            spec, hw, layout, str(r.phase), int(r.batch), new, ctx, RoutingOptions(block_m=block_m)
        )
        ops = [
            op for op in ops if not op.is_comm and op.kind != "lm_head" and op.name != "moe.experts"
        ]
        t = sum(float(np.sum(o.time_s)) for o in evaluate_ops(ops, hw, layout))
        tokens = int(r.batch) * new
        stats = routing_stats(tokens, k, E, block_m=block_m)
        share = E_loc / E
        realised = {
            "n_active_experts": float(np.asarray(stats.active_experts)) * share,
            "sum_padded_tokens": float(np.asarray(stats.padded_assignments)) * share,
        }
        cdt = compute_dtype(dtype, hw.peak_flops_per_s)
        t += float(
            np.asarray(
                moe_cost(
                    hw,
                    tokens * share,
                    E,
                    k,
                    h,
                    inter,
                    cdt,
                    realised=realised,
                    launches=moe_launches(
                        str(r.impl), str(getattr(r, "impl_path", "")), realised["n_active_experts"]
                    ),
                )["latency_s"]
            )
        )
        # Eagerly timed layers (no CUDA graph) take max(device time, host launch time): the host
        # enqueues ~70 small ops per call and at small batch cannot keep the GPU busy.
        host_s = hw.efficiency.grouped_gemm.host_launch_s
        method = str(getattr(r, "timing_method", ""))
        if method in EAGER_TIMING and host_s > 0:
            t = max(t, eager_layer_launches(r) * host_s)
        elif method == "perf_counter":
            # On a CPU every eager op runs in turn: the ops the layer issues beyond the modelled
            # serving kernels each add their launch cost.
            modelled = sum(float(np.max(o.launches)) for o in ops) + moe_launches(
                str(r.impl), str(getattr(r, "impl_path", "")), realised["n_active_experts"]
            )
            extra = max(eager_layer_launches(r) - float(modelled), 0.0)
            t += extra * hw.efficiency.memory.launch_overhead_s
        out[i] = t
    return out
