"""End-to-end accuracy: moesim's serving predictions scored against measured deployments.

This is a **report, never a fit**: nothing here feeds back into a profile or a constant. A row
is one measured deployment (model, GPU, engine and version, layout, ISL/OSL, a closed-loop
concurrency or a static batch, measured TTFT / TPOT / output throughput, source); moesim predicts
it with :func:`moesim.engine.inflight.predict_inflight` (concurrency rows, the engine's defaults)
or :func:`moesim.engine.static.predict` (batch rows) and the report gives per-row errors and,
per (model, hardware, engine) group, the median, p90 and max of |predicted / measured - 1|.

The CSV format (SI units; blank where unknown)::

    id,source,model,hardware,engine,engine_version,mode,tp,ep,pp,dp,weight_dtype,kv_dtype,
    isl,osl,concurrency,batch,measured_ttft_s,measured_tpot_s,measured_output_tokens_per_s_per_gpu

:func:`import_aiconfigurator` turns AIConfigurator's ``silicon_sample.csv`` (measured vLLM,
SGLang and TensorRT-LLM deployments, Apache-2.0, in the ``aiconfigurator-core`` wheel) into it.
A closed loop of C clients completes C / e2e requests per second, so where a row has no measured
throughput it is derived as C x OSL / (TTFT + (OSL - 1) TPOT) / GPUs (``throughput_derived``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from moesim.errors import MoesimError

COLUMNS = (
    "id", "source", "model", "hardware", "engine", "engine_version", "mode", "tp", "ep", "pp",
    "dp", "weight_dtype", "kv_dtype", "isl", "osl", "concurrency", "batch", "measured_ttft_s",
    "measured_tpot_s", "measured_output_tokens_per_s_per_gpu",
)  # fmt: skip
METRICS = ("ttft_s", "tpot_s", "output_tokens_per_s_per_gpu")
GROUP = ("model", "hardware", "engine")

# AIConfigurator names -> moesim presets and profiles (the models and GPUs moesim ships).
AIC_MODELS = {
    "meta-llama/Llama-3.1-8B-Instruct": "llama-3.1-8b",
    "nvidia/Llama-3.1-8B-Instruct-FP8": "llama-3.1-8b",
    "meta-llama/Llama-3.1-70B": "llama-3.1-70b",
    "meta-llama/Llama-3.1-70B-Instruct": "llama-3.1-70b",
    "Qwen/Qwen3-235B-A22B": "qwen3-235b-a22b",
    "Qwen/Qwen3-235B-A22B-FP8": "qwen3-235b-a22b",
    "Qwen/Qwen3-30B-A3B": "qwen3-30b-a3b",
    "deepseek-ai/DeepSeek-V3": "deepseek-v3",
    "deepseek-ai/DeepSeek-R1": "deepseek-v3",  # same architecture and config as V3
    "openai/gpt-oss-120b": "gpt-oss-120b",
    "openai/gpt-oss-20b": "gpt-oss-20b",
    "mistralai/Mixtral-8x7B-Instruct-v0.1": "mixtral-8x7b",
}
AIC_SYSTEMS = {"h100_sxm": "h100-sxm", "h200_sxm": "h200"}
AIC_DTYPES = {"fp8": "fp8", "fp8_block": "fp8-block", "nvfp4": "fp4", "mxfp4": "fp4", "fp4": "fp4",
              "bf16": "bf16", "float16": "fp16"}  # fmt: skip


def aiconfigurator_sample_path() -> Path:
    """``silicon_sample.csv`` of the installed ``aiconfigurator-core`` wheel."""
    try:
        import importlib.resources as resources

        path = resources.files("aiconfigurator_core") / "systems" / "silicon_sample.csv"
    except ModuleNotFoundError:
        raise MoesimError(
            "aiconfigurator-core is not installed: pip install aiconfigurator-core"
        ) from None
    return Path(str(path))


def import_aiconfigurator(path=None):
    """AIConfigurator's silicon sample -> (rows in moesim's e2e format, skipped counts by reason).

    Kept: aggregated (one pool) rows of the models moesim ships on H100/H200 with a layout moesim
    can express (tp, attention DP, pp; MoE tensor x expert parallel filling the GPUs of a stage).
    ``batch_size`` is the benchmark's concurrency (the id's ``cN``). The KV-cache dtype is not in
    the sample: fp8 for TensorRT-LLM fp8/fp4 checkpoints (its default for them), else bf16.
    """
    import pandas as pd

    src = pd.read_csv(path or aiconfigurator_sample_path())
    skipped: dict[str, int] = {}

    def skip(mask, why):
        n = int(mask.sum())
        if n:
            skipped[why] = skipped.get(why, 0) + n
        return ~mask

    keep = skip(~src["model_path"].isin(AIC_MODELS), "model not shipped with moesim")
    keep &= skip(keep & ~src["system"].isin(AIC_SYSTEMS), "GPU other than H100/H200")
    keep &= skip(keep & (src["mode"] != "agg"), "disaggregated deployment")
    df = src[keep].copy()
    dp = df["attention_dp_size"].fillna(1.0)
    tp, pp = df["tp_size"], df["pp_size"].fillna(1.0)
    moe_tp, moe_ep = df["moe_tp_size"].fillna(1.0), df["moe_ep_size"].fillna(1.0)
    ok = (moe_tp * moe_ep == tp * dp) | (moe_ep == 1) & (moe_tp == 1)
    df = df[skip(~ok, "MoE tp x ep does not fill the stage")[keep].to_numpy()]
    dp, tp, pp, moe_ep = dp[df.index], tp[df.index], pp[df.index], moe_ep[df.index]
    wdt = df["gemm_quant_mode"].map(AIC_DTYPES).fillna(df["precision"].map(AIC_DTYPES))
    wdt = wdt.fillna("bf16")
    kvdt = np.where((df["backend"] == "trtllm") & wdt.isin(["fp8", "fp4"]), "fp8", "bf16")
    out = pd.DataFrame(
        {
            "id": df["id"],
            "source": "aiconfigurator-core silicon_sample.csv: " + df["silicon_data_source"],
            "model": df["model_path"].map(AIC_MODELS),
            "hardware": df["system"].map(AIC_SYSTEMS),
            "engine": df["backend"],
            "engine_version": df["backend_version"].fillna(""),
            "mode": "agg",
            "tp": tp.astype(int),
            "ep": moe_ep.astype(int),
            "pp": pp.astype(int),
            "dp": dp.astype(int),
            "weight_dtype": wdt,
            "kv_dtype": kvdt,
            "isl": df["isl"].astype(int),
            "osl": df["osl"].astype(int),
            "concurrency": df["batch_size"].astype(int),
            "batch": np.nan,
            "measured_ttft_s": df["silicon_ttft_ms"] / 1e3,
            "measured_tpot_s": df["silicon_tpot_ms"] / 1e3,
            "measured_output_tokens_per_s_per_gpu": np.nan,
        }
    )
    return out.reset_index(drop=True), skipped


def read_e2e(path):
    """Read and check an e2e CSV; errors name the file, row and column."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise MoesimError(f"e2e file not found: {path}")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise MoesimError(f"{path}: not a CSV file ({exc})") from None
    need = ("model", "hardware", "tp", "isl", "osl")
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise MoesimError(
            f"{path}: missing column(s) {', '.join(missing)}; see moesim.calibrate.e2e"
        )
    for col in COLUMNS:
        if col not in df.columns:
            df[col] = np.nan
    for col in ("ep", "pp", "dp"):
        df[col] = df[col].fillna(1)
    df["engine"] = df["engine"].fillna("vllm")
    df["weight_dtype"] = df["weight_dtype"].fillna("bf16")
    df["kv_dtype"] = df["kv_dtype"].fillna("bf16")
    load = df["concurrency"].notna() | df["batch"].notna()
    if not load.all():
        row = int(np.flatnonzero(~load.to_numpy())[0]) + 2
        raise MoesimError(f"{path}:{row}: a row needs a concurrency or a batch")
    measured = df[[f"measured_{m}" for m in METRICS]].notna().any(axis=1)
    if not measured.all():
        row = int(np.flatnonzero(~measured.to_numpy())[0]) + 2
        raise MoesimError(f"{path}:{row}: a row needs at least one measured_* value")
    return df[list(COLUMNS)]


def predict_rows(df, profile=None):
    """Predictions for every row (``predicted_*``, ``feasible``, ``reason``), vectorised over the
    rows that share a model, hardware, engine, dtypes and layout."""
    from moesim.engine import inflight, static
    from moesim.spec import resolve
    from moesim.spec.deployment import Layout
    from moesim.spec.hardware import measured_name

    df = df.copy()
    for m in METRICS:
        df[f"predicted_{m}"] = np.nan
    df["predicted_concurrency"] = np.nan
    df["feasible"] = False
    df["reason"] = ""
    keys = ["model", "hardware", "engine", "weight_dtype", "kv_dtype", "tp", "ep", "pp", "dp"]
    for key, rows in df.groupby(keys, sort=False, dropna=False).groups.items():
        name, hw_name, engine, wdt, kvdt, tp, ep, pp, dp = key
        try:
            # The engine's measured kernels where a fitted profile ships (h100-sxm.trtllm ...)
            fw = str(engine) if str(engine) in ("trtllm", "vllm", "sglang") else None
            model, hw = resolve(name, profile or measured_name(hw_name, fw))
            lay = Layout(tp=int(tp), ep=int(ep), pp=int(pp), dp=int(dp), weight_dtype=wdt,
                         kv_dtype=kvdt, dispatch_dtype="fp8" if wdt in ("fp8", "fp4") else "bf16",
                         framework=fw)  # fmt: skip
        except MoesimError as exc:
            df.loc[rows, "reason"] = str(exc)
            continue
        part = df.loc[rows]
        conc = part["concurrency"].notna().to_numpy()
        for use, idx in ((True, part.index[conc]), (False, part.index[~conc])):
            if not len(idx):
                continue
            sub = df.loc[idx]
            isl, osl = sub["isl"].to_numpy(float), sub["osl"].to_numpy(float)
            try:
                if use:
                    res = inflight.predict_inflight(
                        model, hw, lay, concurrency=sub["concurrency"].to_numpy(float),
                        input_len=isl, output_len=osl, engine=str(engine),
                    )  # fmt: skip
                else:
                    res = static.predict(model, hw, lay, batch=sub["batch"].to_numpy(float),
                                         input_len=isl, output_len=osl, engine=str(engine))  # fmt: skip
            except MoesimError as exc:
                df.loc[idx, "reason"] = str(exc)
                continue
            n = len(idx)
            for m in METRICS:
                df.loc[idx, f"predicted_{m}"] = np.broadcast_to(np.asarray(res[m], float), (n,))
            if use:
                df.loc[idx, "predicted_concurrency"] = sub["concurrency"].to_numpy(float)
            df.loc[idx, "feasible"] = np.broadcast_to(np.asarray(res["feasible"], bool), (n,))
            df.loc[idx, "reason"] = np.broadcast_to(np.asarray(res["reason"], object), (n,))
    return df


def score(df):
    """Add the derived measured throughput and per-metric errors (predicted / measured - 1)."""
    df = df.copy()
    gpus = df["tp"] * df["dp"] * df["pp"]
    load = df["concurrency"].fillna(df["batch"])
    e2e = df["measured_ttft_s"] + (df["osl"] - 1) * df["measured_tpot_s"]
    derived = load * df["osl"] / e2e / gpus
    df["throughput_derived"] = df["measured_output_tokens_per_s_per_gpu"].isna() & derived.notna()
    df["measured_output_tokens_per_s_per_gpu"] = df["measured_output_tokens_per_s_per_gpu"].fillna(
        derived
    )
    for m in METRICS:
        err = df[f"predicted_{m}"] / df[f"measured_{m}"] - 1.0
        df[f"error_{m}"] = np.where(df["feasible"], err, np.nan)
    return df


def _stats(errors) -> dict:
    e = np.abs(np.asarray(errors, dtype=float))
    e = e[np.isfinite(e)]
    if not e.size:
        return {"n": 0, "median": None, "p90": None, "max": None, "signed_median": None}
    signed = np.asarray(errors, dtype=float)
    signed = signed[np.isfinite(signed)]
    return {
        "n": int(e.size),
        "median": float(np.median(e)),
        "p90": float(np.percentile(e, 90)),
        "max": float(e.max()),
        "signed_median": float(np.median(signed)),
    }


def report(scored) -> dict:
    """Per-group and overall error statistics, the rows that could not be predicted, and every
    scored row."""
    groups = []
    for key, part in scored.groupby(list(GROUP), sort=True):
        entry = dict(zip(GROUP, key, strict=True))
        entry["rows"] = int(len(part))
        entry["predicted"] = int(part["feasible"].sum())
        for m in METRICS:
            entry[m] = _stats(part[f"error_{m}"])
        groups.append(entry)
    overall = {m: _stats(scored[f"error_{m}"]) for m in METRICS}
    bad = scored[~scored["feasible"].astype(bool)]
    cols = ["id", *GROUP, "tp", "ep", "pp", "dp", "weight_dtype", "isl", "osl", "concurrency",
            "batch", "feasible", "reason", "throughput_derived"]  # fmt: skip
    for m in METRICS:
        cols += [f"measured_{m}", f"predicted_{m}", f"error_{m}"]
    rows = [{k: _plain(v) for k, v in r.items()} for r in scored[cols].to_dict(orient="records")]
    return {
        "rows_scored": int(scored["feasible"].sum()),
        "rows_total": int(len(scored)),
        "not_predicted": {str(k): int(v) for k, v in bad["reason"].value_counts().items()},
        "groups": groups,
        "overall": overall,
        "rows": rows,
    }


def _plain(v):
    if isinstance(v, (np.generic,)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def validate_e2e(source, profile=None, import_out=None):
    """Score ``source`` (an e2e CSV path, or ``aiconfigurator`` for the installed wheel's sample)
    -> (report dict, scored DataFrame). ``import_out`` writes the imported rows as CSV."""
    skipped = {}
    if str(source).lower() in ("aiconfigurator", "aic"):
        df, skipped = import_aiconfigurator()
        name = str(aiconfigurator_sample_path())
    else:
        df = read_e2e(source)
        name = str(source)
    if import_out:
        write_csv(df, import_out)
    scored = score(predict_rows(df, profile))
    rep = report(scored)
    rep["source"] = name
    rep["profile"] = profile
    if skipped:
        rep["skipped_on_import"] = skipped
    return rep, scored


def write_csv(df, path) -> Path:
    """Write rows in the e2e format, atomically."""
    import os
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    df[list(COLUMNS)].to_csv(tmp, index=False)
    os.replace(tmp, path)
    return path
