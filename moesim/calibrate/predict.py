"""Model predictions for measured rows, through the same functions users call.

Every kernel row is priced by :mod:`moesim.cost.kernel_cost` (``gemm_cost``, ``copy_cost``,
``permute_cost``, ``moe_cost`` with the row's *realised* routing, ``attention_cost``) and every
collective row by :mod:`moesim.cost.comm`, so calibration fits, and validation measures, exactly the
model that ``moesim predict`` runs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from moesim.cost import comm, kernel_cost
from moesim.errors import MoesimError
from moesim.spec.hardware import normalize_dtype


def _col(df: pd.DataFrame, name: str, default=None) -> np.ndarray:
    if name in df.columns:
        values = pd.to_numeric(df[name], errors="coerce").to_numpy(dtype=float)
        if default is not None:
            values = np.where(np.isfinite(values), values, default)
        return values
    if default is None:
        raise MoesimError(f"{df['kernel_class'].iloc[0]} rows need a {name!r} column")
    return np.full(len(df), float(default))


def _dtype(value: str) -> str:
    d = normalize_dtype(value)
    return "fp8" if d.startswith("fp8") else d


def _bool(value) -> bool:
    return str(value).strip().lower() not in ("false", "0", "no", "", "nan")


# Timing method of calls issued eagerly to an asynchronous device (no CUDA graph): the host may
# bound the time. On a CPU (perf_counter) host and device are one processor: costs add instead.
EAGER_TIMING = ("cuda_event",)


def _eager(df: pd.DataFrame) -> np.ndarray | bool:
    if "timing_method" not in df.columns:
        return False
    return df["timing_method"].astype(str).isin(EAGER_TIMING).to_numpy()


def _fmt(df: pd.DataFrame) -> str:
    """Weight format of a row group (one per group; see :func:`group_rows`), or ""."""
    if "format" not in df.columns or df.empty:
        return ""
    value = df["format"].iloc[0]
    return "" if pd.isna(value) else str(value)


def _act_quant(df: pd.DataFrame) -> np.ndarray | bool:
    """Rows whose measured call also quantised its input (imported fp8 GEMM tables)."""
    if "includes_act_quant" not in df.columns:
        return False
    return df["includes_act_quant"].astype(str).str.lower().isin(("true", "1")).to_numpy()


def group_rows(df: pd.DataFrame) -> list[tuple[str, str, np.ndarray, pd.DataFrame]]:
    """Split kernel rows into (kernel_class, dtype, positions, rows) groups priced in one call."""
    if df.empty:
        return []
    kinds = df["kernel_class"].astype(str).to_numpy()
    dtypes = (
        df["dtype"].astype(str).map(_dtype).to_numpy()
        if "dtype" in df.columns
        else np.full(len(df), "bf16")
    )
    fmts = (
        df["format"].fillna("").astype(str).to_numpy()
        if "format" in df.columns
        else np.full(len(df), "")
    )
    keys = pd.Series([f"{k}|{d}|{f}" for k, d, f in zip(kinds, dtypes, fmts, strict=True)])
    groups = []
    for key, idx in keys.groupby(keys).groups.items():
        kind, dtype, _ = str(key).split("|")
        pos = np.asarray(list(idx))
        groups.append((kind, dtype, pos, df.iloc[pos]))
    return groups


def predict_groups(hw, groups, n_rows: int, efficiency=None) -> np.ndarray:
    """Predicted seconds of pre-split row groups (see :func:`group_rows`)."""
    out = np.full(n_rows, np.nan)
    for kind, dtype, pos, part in groups:
        out[pos] = _predict_group(hw, kind, dtype, part, efficiency)
    return out


def predict_kernel_rows(hw, df: pd.DataFrame, efficiency=None) -> np.ndarray:
    """Predicted seconds of each kernel row of ``df`` (any mix of classes), aligned with its rows.

    ``efficiency`` (an ``Efficiency``) overrides ``hw.efficiency``, as in :mod:`moesim.cost.kernel_cost`.
    """
    return predict_groups(hw, group_rows(df), len(df), efficiency)


def _predict_group(hw, kind: str, dtype: str, df: pd.DataFrame, eff) -> np.ndarray:
    if kind == "gemm":
        res = kernel_cost.gemm_cost(
            hw, _col(df, "m"), _col(df, "n"), _col(df, "k"), dtype, efficiency=eff,
            eager=_eager(df), fmt=_fmt(df), act_quant=_act_quant(df),
        )  # fmt: skip
    elif kind == "memory":
        nbytes = _col(df, "bytes", np.nan)
        if not np.isfinite(nbytes).all():  # copies count bytes read + written (2x)
            nbytes = np.where(np.isfinite(nbytes), nbytes, _col(df, "hbm_bytes") / 2.0)
        res = kernel_cost.copy_cost(hw, nbytes, efficiency=eff, eager=_eager(df))
    elif kind == "permute":
        res = kernel_cost.permute_cost(
            hw,
            _col(df, "tokens"),
            _col(df, "hidden"),
            _col(df, "top_k"),
            dtype,
            efficiency=eff,
            eager=_eager(df),
        )
    elif kind in ("grouped_gemm", "moe"):
        res = _moe(hw, df, dtype, eff)
    elif kind in ("attention_prefill", "attention_decode"):
        return _attention(hw, kind, df, dtype, eff)
    elif kind == "attention_decode_mla":
        kv = df["kv_dtype"].astype(str).map(_dtype).to_numpy() if "kv_dtype" in df.columns else None
        out = np.full(len(df), np.nan)
        for kvd in set(kv) if kv is not None else {dtype}:
            sel = (kv == kvd) if kv is not None else np.ones(len(df), bool)
            part = df[sel]
            res = kernel_cost.mla_decode_cost(
                hw, _col(part, "batch"), _col(part, "context_len"), _col(part, "num_heads"), kvd,
                dtype, efficiency=eff, eager=_eager(part),
            )  # fmt: skip
            out[sel] = np.broadcast_to(res["latency_s"], (int(sel.sum()),))
        return out
    else:
        raise MoesimError(f"no kernel model for kernel_class {kind!r}")
    return np.broadcast_to(res["latency_s"], (len(df),)).astype(float)


def _moe(hw, df: pd.DataFrame, dtype: str, eff) -> dict:
    """One MoE expert layer with the routing the profiler realised (active experts, padded rows).

    ``moe_cost`` charges activation traffic for ``tokens * top_k`` assignments; where the row
    records the assignments this GPU actually computed (an EP slice), tokens = assignments / k,
    while the combine still writes an output row for every token the call was given.
    """
    top_k = _col(df, "top_k")
    tokens = _col(df, "tokens")
    assignments = _col(df, "assignments", np.nan)
    tokens = np.where(np.isfinite(assignments), assignments / top_k, tokens)
    realised = None
    if {"n_active_experts", "sum_padded_tokens"} <= set(df.columns):
        padded = _col(df, "sum_padded_tokens")
        if "impl" in df.columns and np.isfinite(assignments).all():
            # Only the Triton kernel pads each expert's rows to its block M (the row records
            # Σ ceil(n_e/BM)·BM for it); the loop and grouped_mm compute the assignments exactly.
            # Engine kernels (imported tables: fused Triton / CUTLASS grouped GEMMs) tile each
            # expert's rows too; only the profiler's loop and grouped_mm paths do not.
            impl = df["impl"].astype(str)
            pads = (impl.str.startswith("triton") | ~impl.isin(["loop", "grouped_mm"])).to_numpy()
            padded = np.where(pads, padded, assignments)
        else:
            pads = np.ones(len(df), bool)
        realised = {"n_active_experts": _col(df, "n_active_experts"), "sum_padded_tokens": padded}
        # rows padded to each engine token tile, where the import recorded them (aic.convert_moe)
        by_tile = {
            int(c.removeprefix("sum_padded_tokens_t")): np.where(pads, _col(df, c), assignments)
            for c in df.columns
            if c.startswith("sum_padded_tokens_t") and np.isfinite(_col(df, c)).all()
        }
        if by_tile:
            realised["sum_padded_by_tile"] = by_tile
    gated = _bool(df["gated"].iloc[0]) if "gated" in df.columns else True
    experts = _col(df, "experts")
    if realised is None:
        return kernel_cost.moe_cost(
            hw,
            tokens,
            int(experts[0]),
            int(top_k[0]),
            int(_col(df, "hidden")[0]),
            int(_col(df, "intermediate")[0]),
            dtype,
            block_m=int(_col(df, "block_m", 64)[0]),
            gated=gated,
            efficiency=eff,
            eager=_eager(df),
            fmt=_fmt(df),
        )
    launches = None
    if "impl" in df.columns:
        paths = (
            df["impl_path"].astype(str) if "impl_path" in df.columns else pd.Series([""] * len(df))
        )
        # moe_launches is affine in the active experts per (impl, path): one call per pair.
        impls = df["impl"].astype(str).to_numpy()
        paths = np.asarray(paths, dtype=str)
        active = np.broadcast_to(np.asarray(realised["n_active_experts"], float), (len(df),))
        launches = np.empty(len(df))
        for i, p in set(zip(impls, paths, strict=True)):
            sel = (impls == i) & (paths == p)
            launches[sel] = kernel_cost.moe_launches(i, p, active[sel])
    return kernel_cost.moe_cost(
        hw, tokens, experts, top_k, _col(df, "hidden"), _col(df, "intermediate"), dtype,
        realised=realised | {"assignments": tokens * top_k}, gated=gated, launches=launches,
        efficiency=eff, eager=_eager(df), fmt=_fmt(df), tokens_seen=_col(df, "tokens"),
    )  # fmt: skip


def _attention(hw, kind: str, df: pd.DataFrame, dtype: str, eff) -> np.ndarray:
    phase = "prefill" if kind == "attention_prefill" else "decode"
    seq = _col(df, "seq_len", np.nan)
    if phase == "decode":
        ctx = _col(df, "context_len", np.nan)
        seq = np.where(np.isfinite(ctx), ctx, seq)
    causal = (
        df["causal"].map(_bool).to_numpy() if "causal" in df.columns else np.ones(len(df), bool)
    )
    kv = (
        df["kv_dtype"].astype(str).map(_dtype).to_numpy()
        if "kv_dtype" in df.columns
        else np.full(len(df), dtype)
    )
    out = np.full(len(df), np.nan)
    for c in (True, False):
        for kvd in set(kv):
            sel = (causal == c) & (kv == kvd)
            if not sel.any():
                continue
            part = df[sel]
            res = kernel_cost.attention_cost(
                hw, phase, _col(part, "batch"), seq[sel], _col(part, "num_heads"),
                _col(part, "num_kv_heads"), _col(part, "head_dim"), dtype, kvd, causal=c, efficiency=eff,
                eager=_eager(part),
            )  # fmt: skip
            out[sel] = np.broadcast_to(res["latency_s"], (int(sel.sum()),))
    return out


# --- collectives ------------------------------------------------------------------------------


def collective_bytes(df: pd.DataFrame, domain_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(intra, inter) bytes one GPU moves in each all-to-all row.

    Rows may carry ``intra_bytes`` / ``inter_bytes`` (published conversions); otherwise
    ``message_bytes`` is the rank's whole send buffer, of which (n-1)/n leaves the GPU, split
    between the scale-up domain and the network as :func:`moesim.cost.comm.remote_domain_fraction`.
    """
    n = _col(df, "world_size", 1.0)
    if "intra_bytes" in df.columns and "inter_bytes" in df.columns:
        intra, inter = _col(df, "intra_bytes", 0.0), _col(df, "inter_bytes", 0.0)
        given = np.isfinite(pd.to_numeric(df["intra_bytes"], errors="coerce").to_numpy(dtype=float))
    else:
        intra = inter = np.zeros(len(df))
        given = np.zeros(len(df), bool)
    size = _col(df, "message_bytes", 0.0)
    sent = size * (n - 1.0) / np.maximum(n, 1.0)
    frac_out = comm.remote_domain_fraction(n, domain_size)
    return np.where(given, intra, sent * (1.0 - frac_out)), np.where(given, inter, sent * frac_out)


COLLECTIVE_CLASSES = (
    "allreduce", "allgather", "reducescatter", "alltoall", "ep_dispatch", "ep_combine",
)  # fmt: skip
# Engines whose own all-reduce kernel a row's impl may name (custom_allreduce_perf rows).
ENGINE_ALLREDUCE_IMPLS = ("trtllm", "vllm", "sglang")


def deepep_row_bytes(df: pd.DataFrame, domain_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(intra, inter) bytes one GPU sends in each DeepEP dispatch / combine row: tokens (per rank)
    x copies per token (:func:`moesim.cost.fitted_comm.deepep_copies`, uniform routing) x the
    payload of one token (dispatch in the row's ``comm_dtype``, combine in bf16)."""
    from moesim.cost import fitted_comm

    n = len(df)
    intra, inter = np.zeros(n), np.zeros(n)
    ep = _col(df, "ep_size", np.nan)
    ep = np.where(np.isfinite(ep), ep, _col(df, "world_size", 1.0))
    nodes = _col(df, "nodes", np.nan)
    domain = np.where(np.isfinite(nodes) & (nodes > 0), ep / np.maximum(nodes, 1.0), domain_size)
    tokens, hidden = _col(df, "tokens"), _col(df, "hidden")
    top_k, experts = _col(df, "top_k"), _col(df, "global_experts")
    impls = df["impl"].astype(str).to_numpy()
    kinds = df["kernel_class"].astype(str).to_numpy()
    dtypes = (
        df["comm_dtype"].astype(str).map(normalize_dtype).to_numpy()
        if "comm_dtype" in df.columns
        else np.full(n, "bf16")
    )
    dtypes = np.where(kinds == "ep_combine", "bf16", dtypes)
    for impl in set(impls):
        for dt in set(dtypes):
            sel = (impls == impl) & (dtypes == dt)
            if not sel.any():
                continue
            if dt not in fitted_comm.PAYLOAD_BYTES_PER_CHANNEL:
                raise MoesimError(f"no DeepEP payload size for comm_dtype {dt!r}")
            a, b = fitted_comm.deepep_copies(impl, top_k[sel], experts[sel], ep[sel], domain[sel])
            per = tokens[sel] * fitted_comm.deepep_payload_bytes(dt, hidden[sel])
            intra[sel], inter[sel] = a * per, b * per
    return intra, inter


def deepep_row_keys(df: pd.DataFrame) -> np.ndarray:
    """Profile key (``dispatch_fp8``, ``combine_bf16``, ...) of each DeepEP row."""
    from moesim.cost.fitted_comm import deepep_phase_key

    kinds = df["kernel_class"].astype(str).to_numpy()
    dtypes = (
        df["comm_dtype"].astype(str).map(normalize_dtype).to_numpy()
        if "comm_dtype" in df.columns
        else np.full(len(df), "bf16")
    )
    return np.array([
        deepep_phase_key(k.removeprefix("ep_"), "bf16" if k == "ep_combine" else d)
        for k, d in zip(kinds, dtypes, strict=True)
    ])  # fmt: skip


def predict_collective_rows(hw, df: pd.DataFrame, collectives=None) -> np.ndarray:
    """Predicted seconds of collective rows with the profile's network terms.

    Without a fitted block (``efficiency.collectives.fitted``) every row is priced by the
    two-level α-β model of :mod:`moesim.cost.comm` (all-gather / reduce-scatter by
    :func:`~moesim.cost.comm.allgather_time_s`, DeepEP rows by
    :func:`~moesim.cost.comm.alltoall_time_s` of their bytes). With it, rows whose collective
    and group size the block covers are priced by :mod:`moesim.cost.fitted_comm` instead: NCCL
    rows by the fitted NCCL terms, an engine's custom all-reduce rows by its fitted curve,
    DeepEP rows by their (impl, EP size, phase) terms.
    """
    from moesim.cost import fitted_comm

    if collectives is not None:
        hw = hw.with_efficiency(hw.efficiency.model_copy(update={"collectives": collectives}))
    net = comm.Network.from_hardware(hw)
    fitted = net.fitted
    kinds = df["kernel_class"].astype(str).to_numpy()
    impls = df["impl"].astype(str).to_numpy() if "impl" in df.columns else np.full(len(df), "")
    out = np.full(len(df), np.nan)
    ar = kinds == "allreduce"
    if ar.any():
        part = df[ar]
        size, n = _col(part, "message_bytes"), _col(part, "world_size")
        t = comm.allreduce_time_s(size, n, net)
        if fitted is not None:
            f = fitted_comm.nccl_time_s(fitted, "all_reduce", size, n)
            engine = impls[ar]
            for impl in set(engine) & set(fitted.custom_allreduce or {}):
                sel = engine == impl
                f[sel] = fitted_comm.custom_allreduce_time_s(fitted, impl, size[sel], n[sel])
            f[np.isin(engine, ENGINE_ALLREDUCE_IMPLS) & ~np.isin(
                engine, list(fitted.custom_allreduce or {})
            )] = np.nan  # an engine's kernel with no fitted curve: not NCCL's  # fmt: skip
            t = np.where(np.isfinite(f), f, t)
        out[ar] = t
    for cls in ("allgather", "reducescatter"):
        sel = kinds == cls
        if sel.any():
            part = df[sel]
            size, n = _col(part, "message_bytes"), _col(part, "world_size")
            t = comm.allgather_time_s(size, n, net)
            if fitted is not None:
                f = fitted_comm.nccl_time_s(fitted, fitted_comm.NCCL_OP_OF_CLASS[cls], size, n)
                t = np.where(np.isfinite(f), f, t)
            out[sel] = t
    a2a = kinds == "alltoall"
    if a2a.any():
        intra, inter = collective_bytes(df[a2a], net.domain_size)
        t = comm.alltoall_time_s(intra, inter, net)
        if fitted is not None:
            part = df[a2a]
            f = fitted_comm.nccl_time_s(
                fitted, "alltoall", _col(part, "message_bytes", 0.0), _col(part, "world_size", 1.0)
            )
            t = np.where(np.isfinite(f), f, t)
        out[a2a] = t
    ep = np.isin(kinds, ["ep_dispatch", "ep_combine"])
    if ep.any():
        part = df[ep]
        intra, inter = deepep_row_bytes(part, net.domain_size)
        t = comm.alltoall_time_s(intra, inter, net)
        if fitted is not None:
            ep_size = _col(part, "ep_size", np.nan)
            ep_size = np.where(np.isfinite(ep_size), ep_size, _col(part, "world_size", 1.0))
            keys, pimpl = deepep_row_keys(part), impls[ep]
            f = np.full(len(part), np.nan)
            for impl, key in set(zip(pimpl, keys, strict=True)):
                sel = (pimpl == impl) & (keys == key)
                f[sel] = fitted_comm.deepep_time_s(
                    fitted, impl, key, intra[sel], inter[sel], ep_size[sel]
                )
            t = np.where(np.isfinite(f), f, t)
        out[ep] = t
    return out


def predict_rows(hw, df: pd.DataFrame, efficiency=None) -> np.ndarray:
    """Predicted seconds for any measured rows (kernels and collectives)."""
    out = np.full(len(df), np.nan)
    if df.empty:
        return out
    is_coll = df["kernel_class"].isin(list(COLLECTIVE_CLASSES)).to_numpy()
    if (~is_coll).any():
        out[~is_coll] = predict_kernel_rows(hw, df[~is_coll], efficiency)
    if is_coll.any():
        coll = efficiency.collectives if efficiency is not None else None
        out[is_coll] = predict_collective_rows(hw, df[is_coll], coll)
    return out
